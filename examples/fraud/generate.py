"""Seeded generator of the fraud scenario's offline sources (parquet).

Writes transactions (with labels and the request-time amount) and daily feature snapshots
for users, merchants and user x merchant pairs into a feature repo's `data/` folder. Each
snapshot at day D aggregates only transactions before D, so point-in-time joins are honest.
Labels come from a hidden rule over latent traits the features observe only noisily.
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DAY = 86_400


@dataclass(frozen=True)
class Scale:
    users: int = 10_000
    merchants: int = 2_000
    transactions: int = 200_000
    days: int = 30


_EPOCH = pd.Timestamp(0, tz="UTC")


def default_end() -> dt.datetime:
    """Today's midnight UTC: the same seed gives the same data all day, and fresh snapshots."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def generate(
    out_dir: Path, scale: Scale = Scale(), seed: int = 7, end: dt.datetime | None = None
) -> dict[str, int]:
    """Write the four parquet files into `out_dir`; return their row counts."""
    end = end or default_end()
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    start_s = int(end.timestamp()) - scale.days * DAY

    users = _users(rng, scale)
    merchants = _merchants(rng, scale)
    txns = _transactions(rng, scale, users, merchants, start_s)

    frames = {
        "transactions": txns,
        "user_stats": _user_snapshots(txns, users, scale, start_s),
        "merchant_stats": _merchant_snapshots(txns, merchants, scale, start_s),
        "user_merchant_stats": _pair_snapshots(txns, start_s),
    }
    for name, frame in frames.items():
        # Microseconds: duckdb (Feast's offline store here) cannot cast TIMESTAMPTZ_NS.
        frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us, UTC]")
        frame.to_parquet(out_dir / f"{name}.parquet", index=False)
    return {name: len(frame) for name, frame in frames.items()}


def _users(rng: np.random.Generator, s: Scale) -> dict[str, np.ndarray]:
    fraudster = rng.random(s.users) < 0.03
    return {
        "fraudster": fraudster,
        "activity": rng.gamma(0.8, 1.0, s.users),  # a few users make most transactions
        "spend": rng.lognormal(3.3, 0.9, s.users),  # typical ticket, heavily skewed
        "account_age": np.where(
            fraudster, rng.integers(1, 60, s.users), rng.integers(30, 3_000, s.users)
        ),
        "verified": rng.random(s.users) < np.where(fraudster, 0.3, 0.85),
        "country_risk": np.clip(rng.beta(2, 8, s.users) + 0.25 * fraudster, 0, 1),
        "favorites": rng.integers(0, s.merchants, (s.users, 5)),
    }


def _merchants(rng: np.random.Generator, s: Scale) -> dict[str, np.ndarray]:
    popularity = rng.zipf(1.6, s.merchants).astype(float)
    category = rng.integers(0, 12, s.merchants)
    return {
        "risky": rng.random(s.merchants) < 0.05,
        "popularity": popularity / popularity.sum(),
        "category": category,
        "ticket": np.array([0.4, 0.7, 1.0, 1.3, 2.0, 0.5, 3.5, 1.1, 0.9, 6.0, 1.6, 0.8])[category],
        "online": rng.random(s.merchants) < 0.4,
        "onboarded": rng.integers(5, 2_000, s.merchants),
    }


def _transactions(
    rng: np.random.Generator, s: Scale, u: dict, m: dict, start_s: int
) -> pd.DataFrame:
    n = s.transactions
    user = rng.choice(s.users, n, p=u["activity"] / u["activity"].sum())
    from_favorite = rng.random(n) < 0.7
    merchant = np.where(
        from_favorite,
        u["favorites"][user, rng.integers(0, 5, n)],
        rng.choice(s.merchants, n, p=m["popularity"]),
    )
    ts = start_s + rng.integers(0, s.days * DAY, n)
    # Bursts: some transactions land minutes after the user's previous one.
    burst = rng.random(n) < 0.06
    ts = np.where(burst, np.roll(ts, 1) + rng.integers(10, 600, n), ts)
    ts = np.minimum(ts, start_s + s.days * DAY - 1)
    user = np.where(burst, np.roll(user, 1), user)

    fraud_user = u["fraudster"][user]
    amount = (
        u["spend"][user]
        * m["ticket"][merchant]
        * rng.lognormal(0, 0.6, n)
        * np.where(fraud_user & (rng.random(n) < 0.5), 4.0, 1.0)
    )
    amount = np.round(amount, 2) + 0.5

    order = np.lexsort((ts, user))
    pair_seen = np.zeros(n, bool)
    pair_key = user.astype(np.int64) * s.merchants + merchant
    _, first_idx = np.unique(pair_key[order], return_index=True)
    pair_seen[order] = True
    pair_seen[order[first_idx]] = False
    new_pair = ~pair_seen

    logit = (
        -5.6
        + 3.2 * fraud_user
        + 2.4 * m["risky"][merchant]
        + 1.1 * np.log(amount / u["spend"][user])
        + 1.2 * burst
        + 0.7 * new_pair
        + 0.9 * u["country_risk"][user]
        - 0.6 * u["verified"][user]
        + rng.normal(0, 1.0, n)
    )
    label = rng.random(n) < 1 / (1 + np.exp(-logit))

    frame = pd.DataFrame(
        {
            "transaction_id": np.arange(n, dtype=np.int64),
            "user_id": user.astype(np.int64),
            "merchant_id": merchant.astype(np.int64),
            "event_timestamp": pd.to_datetime(ts, unit="s", utc=True),
            "amount": amount.astype(np.float64),
            "declined": rng.random(n) < np.where(fraud_user, 0.25, 0.03),
            "is_fraud": label.astype(np.int64),
        }
    )
    return frame.sort_values("event_timestamp", kind="stable").reset_index(drop=True)


def _grid(
    ids: np.ndarray, days: np.ndarray, n_ids: int, n_days: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Per (id, day) sums of `weights` (counts when None)."""
    flat = np.bincount(ids * n_days + days, weights=weights, minlength=n_ids * n_days)
    return flat.reshape(n_ids, n_days)


def _window(daily: np.ndarray, width: int) -> np.ndarray:
    """Sum over the `width` days before each snapshot day: column D covers days [D-width, D)."""
    n_ids, n_days = daily.shape
    cum = np.zeros((n_ids, n_days + 1))
    cum[:, 1:] = np.cumsum(daily, axis=1)
    hi = np.arange(n_days + 1)
    lo = np.maximum(hi - width, 0)
    return cum[:, hi] - cum[:, lo]


def _seconds(times: pd.Series) -> np.ndarray:
    """Whole epoch seconds (floored) of a UTC datetime column, whatever its unit: pandas 3
    keeps microseconds where pandas 2 had nanoseconds, so its raw int64s cannot be trusted."""
    return ((times - _EPOCH) // pd.Timedelta(1, "s")).to_numpy(np.int64)


def _snapshot_times(days: int, start_s: int) -> pd.DatetimeIndex:
    return pd.to_datetime(start_s + np.arange(days + 1) * DAY, unit="s", utc=True)


def _long(
    ids: np.ndarray, id_col: str, times: pd.DatetimeIndex, columns: dict[str, np.ndarray]
) -> pd.DataFrame:
    """Turn (id, snapshot) grids into one row per id per snapshot."""
    n_ids, n_snap = len(ids), len(times)
    frame = pd.DataFrame(
        {
            id_col: np.repeat(ids, n_snap).astype(np.int64),
            "event_timestamp": np.tile(times.values, n_ids),
        }
    )
    frame["event_timestamp"] = (
        frame["event_timestamp"].dt.tz_localize("UTC")
        if frame["event_timestamp"].dt.tz is None
        else frame["event_timestamp"]
    )
    for name, grid in columns.items():
        frame[name] = grid.reshape(-1)
    return frame


def _user_snapshots(t: pd.DataFrame, u: dict, s: Scale, start_s: int) -> pd.DataFrame:
    ids = t["user_id"].to_numpy()
    secs = _seconds(t["event_timestamp"]) - start_s
    day = (secs // DAY).astype(np.int64)
    amount = t["amount"].to_numpy()
    nd = s.days
    count = _grid(ids, day, s.users, nd)
    amt = _grid(ids, day, s.users, nd, amount)
    amt2 = _grid(ids, day, s.users, nd, amount**2)
    night = _grid(ids, day, s.users, nd, ((secs % DAY) < 6 * 3600).astype(float))
    declined = _grid(ids, day, s.users, nd, t["declined"].to_numpy().astype(float))
    c30, a30, q30 = _window(count, 30), _window(amt, 30), _window(amt2, 30)
    c7 = _window(count, 7)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg30 = np.where(c30 > 0, a30 / c30, np.nan)
        std30 = np.where(c30 > 1, np.sqrt(np.maximum(q30 / c30 - avg30**2, 0)), np.nan)
        night30 = np.where(c30 > 0, _window(night, 30) / c30, np.nan)
        declined7 = np.where(c7 > 0, _window(declined, 7) / c7, np.nan)
        gap_h = np.where(c30 > 1, 30 * 24 / c30, np.nan)

    daily_max = np.zeros((s.users, nd))
    np.maximum.at(daily_max, (ids, day), amount)
    max30 = np.concatenate([np.zeros((s.users, 1)), np.maximum.accumulate(daily_max, 1)], 1)

    pair_first = t.groupby(["user_id", "merchant_id"])["event_timestamp"].min()
    first_day = (_seconds(pair_first) - start_s) // DAY
    pair_user = pair_first.index.get_level_values(0).to_numpy()
    distinct = _window(_grid(pair_user, first_day.astype(np.int64), s.users, nd), nd + 1)

    snaps = np.arange(nd + 1)
    age = u["account_age"][:, None] - (nd - snaps)[None, :]
    rng = np.random.default_rng(11)
    chargebacks = rng.poisson(np.where(u["fraudster"], 1.5, 0.05)[:, None], (s.users, nd + 1))
    cols = {
        "txn_count_1d": _window(count, 1).astype(np.int64),
        "txn_count_3d": _window(count, 3).astype(np.int64),
        "txn_count_7d": c7.astype(np.int64),
        "txn_count_30d": c30.astype(np.int64),
        "amount_sum_1d": _window(amt, 1),
        "amount_sum_7d": _window(amt, 7),
        "amount_sum_30d": a30,
        "amount_avg_30d": avg30,
        "amount_std_30d": std30.astype(np.float32),
        "amount_max_30d": max30.astype(np.float32),
        "distinct_merchants_30d": distinct.astype(np.int64),
        "night_txn_ratio_30d": night30.astype(np.float32),
        "declined_ratio_7d": declined7.astype(np.float32),
        "avg_hours_between_txn": gap_h,
        "account_age_days": np.maximum(age, 0).astype(np.int64),
        "is_verified": np.repeat(u["verified"][:, None], nd + 1, 1),
        "chargeback_count_90d": chargebacks.astype(np.int64),
        "country_risk_score": np.repeat(u["country_risk"][:, None], nd + 1, 1).astype(np.float32),
    }
    return _long(np.arange(s.users), "user_id", _snapshot_times(nd, start_s), cols)


def _merchant_snapshots(t: pd.DataFrame, m: dict, s: Scale, start_s: int) -> pd.DataFrame:
    ids = t["merchant_id"].to_numpy()
    secs = _seconds(t["event_timestamp"]) - start_s
    day = (secs // DAY).astype(np.int64)
    amount = t["amount"].to_numpy()
    nd = s.days
    count = _grid(ids, day, s.merchants, nd)
    c30 = _window(count, 30)
    a30 = _window(_grid(ids, day, s.merchants, nd, amount), 30)
    q30 = _window(_grid(ids, day, s.merchants, nd, amount**2), 30)
    fraud30 = _window(_grid(ids, day, s.merchants, nd, t["is_fraud"].to_numpy() * 1.0), 30)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg30 = np.where(c30 > 0, a30 / c30, np.nan)
        std30 = np.where(c30 > 1, np.sqrt(np.maximum(q30 / c30 - avg30**2, 0)), np.nan)
        # Fraud reports arrive late and partially: a noisy, lagged view of merchant risk.
        reports = np.where(c30 > 0, 0.5 * fraud30 / np.maximum(c30, 1), np.nan)

    pair_first = t.groupby(["merchant_id", "user_id"])["event_timestamp"].min()
    first_day = (_seconds(pair_first) - start_s) // DAY
    pair_m = pair_first.index.get_level_values(0).to_numpy()
    distinct = _window(_grid(pair_m, first_day.astype(np.int64), s.merchants, nd), nd + 1)

    rng = np.random.default_rng(13)
    refund = np.clip(rng.beta(2, 40, (s.merchants, 1)) + 0.05 * m["risky"][:, None], 0, 1)
    snaps = np.arange(nd + 1)
    cols = {
        "txn_count_1d": _window(count, 1).astype(np.int64),
        "txn_count_7d": _window(count, 7).astype(np.int64),
        "txn_count_30d": c30.astype(np.int64),
        "amount_avg_30d": avg30,
        "amount_std_30d": std30.astype(np.float32),
        "distinct_users_30d": distinct.astype(np.int64),
        "fraud_report_rate_30d": reports.astype(np.float32),
        "refund_ratio_30d": np.repeat(refund, nd + 1, 1).astype(np.float32),
        "category": np.repeat(m["category"][:, None], nd + 1, 1).astype(np.int64),
        "is_online": np.repeat(m["online"][:, None], nd + 1, 1),
        "days_since_onboarding": (m["onboarded"][:, None] - (nd - snaps)[None, :]).astype(np.int64),
        "chargeback_rate_90d": np.clip(
            rng.normal(0.002 + 0.02 * m["risky"], 0.003)[:, None].repeat(nd + 1, 1), 0, 1
        ),
    }
    return _long(np.arange(s.merchants), "merchant_id", _snapshot_times(nd, start_s), cols)


def _pair_snapshots(t: pd.DataFrame, start_s: int) -> pd.DataFrame:
    """One row per pair per day after a day with activity: the pair's running history."""
    secs = _seconds(t["event_timestamp"]) - start_s
    frame = pd.DataFrame(
        {
            "user_id": t["user_id"].to_numpy(),
            "merchant_id": t["merchant_id"].to_numpy(),
            "day": secs // DAY,
            "amount": t["amount"].to_numpy(),
            "declined": t["declined"].to_numpy().astype(np.int64),
        }
    )
    daily = (
        frame.groupby(["user_id", "merchant_id", "day"], sort=True)
        .agg(n=("amount", "size"), amt=("amount", "sum"), dec=("declined", "sum"))
        .reset_index()
    )
    g = daily.groupby(["user_id", "merchant_id"], sort=False)
    daily["txn_count_total"] = g["n"].cumsum().astype(np.int64)
    daily["amount_sum_total"] = g["amt"].cumsum()
    daily["declined_count_total"] = g["dec"].cumsum().astype(np.int64)
    daily["first_day"] = g["day"].transform("min")
    snap_day = daily["day"] + 1
    out = pd.DataFrame(
        {
            "user_id": daily["user_id"].astype(np.int64),
            "merchant_id": daily["merchant_id"].astype(np.int64),
            "event_timestamp": pd.to_datetime(start_s + snap_day * DAY, unit="s", utc=True),
            "txn_count_total": daily["txn_count_total"],
            "amount_sum_total": daily["amount_sum_total"],
            "amount_avg": (daily["amount_sum_total"] / daily["txn_count_total"]).astype(np.float32),
            "declined_count_total": daily["declined_count_total"],
            "days_known": (snap_day - daily["first_day"]).astype(np.int64),
            "active_days": g.cumcount().astype(np.int64) + 1,
            "is_repeat": daily["txn_count_total"] > 1,
        }
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Generate the fraud scenario's parquet sources (deterministic for a seed "
        "and end date)."
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "feature_repo" / "data")
    parser.add_argument("--users", type=int, default=Scale.users)
    parser.add_argument("--merchants", type=int, default=Scale.merchants)
    parser.add_argument("--transactions", type=int, default=Scale.transactions)
    parser.add_argument("--days", type=int, default=Scale.days)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    counts = generate(
        args.out, Scale(args.users, args.merchants, args.transactions, args.days), args.seed
    )
    for name, rows in counts.items():
        print(f"{name:22s} {rows:>9,d} rows")


if __name__ == "__main__":
    main()
