"""The training/serving skew report (`augur skew`): a model's served-feature log joined with
what Feast's `get_historical_features` returns for the same entities at the same times.

Per feature: the share of rows whose served value differs from the offline one, their mean
absolute difference, the missing rate online and offline, and the PSI of the served values
against the training distribution stored in the version's metadata.json. Not the log writer
(augur/serving/feature_log.py) nor the plot (augur/pipelines/skew_plot.py).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from augur.modelrepo import monitoring as names
from augur.modelrepo.repository import ModelRepository
from augur.modelrepo.spec import SkewThresholds

MAX_ROWS = 50_000  # logged rows joined offline at most (a uniform sample beyond)
_RTOL = 1e-6  # float32 values read from the same source row agree to within rounding


class SkewError(ValueError):
    """No report can be made (no log, no rows in the window): the message says what to do."""


@dataclass(frozen=True)
class FeatureSkew:
    feature: str
    mismatch: float  # share of rows served a value other than offline's (NaN: request feature)
    mean_abs_diff: float  # over rows with a value on both sides
    missing_online: float
    missing_offline: float  # NaN: a request feature, not looked up offline
    psi: float  # served distribution vs training; NaN: no training distribution


@dataclass(frozen=True)
class SkewReport:
    model: str
    version: str  # whose training distribution the PSI compares with
    served_by: str  # the version whose logged rows were compared, or "any version"
    rows: int
    logged_rows: int  # in the window, before sampling down to MAX_ROWS
    first: dt.datetime
    last: dt.datetime
    log_path: Path
    thresholds: SkewThresholds
    features: tuple[FeatureSkew, ...]

    def exceeded(self) -> list[str]:
        """One line per feature and threshold it exceeds; empty: within them all."""
        out = []
        limits = self.thresholds
        for f in self.features:
            if f.mismatch > limits.max_mismatch:
                out.append(
                    f"{f.feature}: {f.mismatch:.1%} of served values differ from offline "
                    f"(max_mismatch {limits.max_mismatch:.1%})"
                )
            if f.psi > limits.max_psi:
                out.append(
                    f"{f.feature}: PSI {f.psi:.3f} against {self.version}'s training "
                    f"distribution (max_psi {limits.max_psi:g})"
                )
        return out

    def table(self) -> str:
        limits = self.thresholds
        lines = [
            f"{self.model}: {self.rows:,} served rows (of {self.logged_rows:,} logged "
            f"{_when(self.first)} .. {_when(self.last)}, served by {self.served_by}) from "
            f"{self.log_path}",
            "offline: get_historical_features for the same entities at the same times; "
            f"PSI against {self.model}@{self.version}'s training distribution",
            "",
            f"{'feature':44} {'mismatch':>9} {'mean |diff|':>12} {'missing online':>15} "
            f"{'offline':>8} {'PSI':>7}",
        ]
        for f in self.features:
            flag = " <" if f.mismatch > limits.max_mismatch or f.psi > limits.max_psi else ""
            lines.append(
                f"{f.feature:44} {_share(f.mismatch):>9} {_number(f.mean_abs_diff):>12} "
                f"{_share(f.missing_online):>15} {_share(f.missing_offline):>8} "
                f"{_number(f.psi, 3):>7}{flag}"
            )
        lines.append("")
        bad = self.exceeded()
        if bad:
            lines.append(f"beyond thresholds ({len(bad)}):")
            lines += [f"  {b}" for b in bad]
        else:
            lines.append(
                f"within thresholds: mismatch <= {limits.max_mismatch:.1%}, "
                f"PSI <= {limits.max_psi:g} for every feature"
            )
        return "\n".join(lines)


def skew_report(
    feature_repo: Path,
    model_repo: Path,
    redis_address: str,
    model: str,
    version: str = "",
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    thresholds: SkewThresholds | None = None,
    max_rows: int = MAX_ROWS,
    store=None,
) -> SkewReport:
    """The report for `model` (its `version`, default stable) over logs in [since, until)."""
    repo = ModelRepository(model_repo)
    spec = repo.spec(model)
    target = repo.resolve(model, version)
    stable = repo.resolve(model)
    where = names.log_spec(spec.logging, stable.metadata) or names.log_spec(
        spec.logging, target.metadata
    )
    if where is None:
        raise SkewError(
            f"model {model} logs no served features: add `logging: {{sample_rate: 0.01}}` "
            f"to {repo.root / model / 'model.yaml'} (or a logging_config to feature service "
            f"{spec.feature_service}), serve traffic, then run this again"
        )
    logged = read_log(Path(where.path), model, since, until)
    logged_rows = len(logged)
    served_by = "any version"
    if version:
        own = logged[logged[names.VERSION_COLUMN] == target.version]
        if len(own):
            logged, served_by = own, target.version
    if len(logged) > max_rows:
        logged = logged.sample(max_rows, random_state=7)
    logged = logged.reset_index(drop=True)
    if store is None:
        from augur.features.repo import open_store

        store = open_store(feature_repo, redis_address)
    offline = _offline(store, spec.feature_service, logged)
    training = target.metadata.get("training_distribution") or {}
    features = tuple(
        _compare(name, logged, offline, training.get(name)) for name in target.features
    )
    stamps = pd.to_datetime(logged[names.LOG_TIMESTAMP], utc=True)
    return SkewReport(
        model,
        target.version,
        served_by,
        len(logged),
        logged_rows,
        stamps.min().to_pydatetime(),
        stamps.max().to_pydatetime(),
        Path(where.path),
        thresholds or spec.skew or SkewThresholds(),
        features,
    )


def read_log(
    folder: Path, model: str, since: dt.datetime | None, until: dt.datetime | None
) -> pd.DataFrame:
    """The model's logged rows in [since, until) from a Feast-layout log folder."""
    import pyarrow.dataset as ds

    if not folder.is_dir() or not any(folder.rglob("*.parquet")):
        raise SkewError(
            f"no served-feature log in {folder} yet: serve {model} traffic (the server writes "
            f"its samples every logging.flush_interval_s, and at its stop)"
        )
    data = ds.dataset(folder, format="parquet")
    where = ds.field(names.MODEL_COLUMN) == model
    if since is not None:
        where &= ds.field(names.LOG_TIMESTAMP) >= pd.Timestamp(since).tz_convert("UTC")
    if until is not None:
        where &= ds.field(names.LOG_TIMESTAMP) < pd.Timestamp(until).tz_convert("UTC")
    frame = data.to_table(filter=where).to_pandas()
    if frame.empty:
        window = f" since {since.isoformat()}" if since else ""
        window += f" until {until.isoformat()}" if until else ""
        raise SkewError(f"no logged rows of {model} in {folder}{window}")
    return frame


def _offline(store, service: str, logged: pd.DataFrame) -> pd.DataFrame:
    """What the offline store returns for each logged row's entities at its log time."""
    from augur.features.repo import build_plan

    plan = build_plan(store, service)
    keys = sorted(plan.entity_types)
    entity_df = logged[keys].copy()
    entity_df["event_timestamp"] = pd.to_datetime(logged[names.LOG_TIMESTAMP], utc=True).astype(
        "datetime64[us, UTC]"  # duckdb (Feast's offline store here) cannot cast ns
    )
    entity_df["_row"] = np.arange(len(entity_df))
    joined = store.get_historical_features(
        entity_df=entity_df,
        features=store.get_feature_service(service),
        full_feature_names=True,
    ).to_df()
    joined = joined.sort_values("_row").reset_index(drop=True)
    if len(joined) != len(entity_df):
        raise SkewError(
            f"the offline store returned {len(joined)} rows for {len(entity_df)} logged rows; "
            "use an offline store that keeps every entity row (the example repo uses duckdb)"
        )
    # as training saw them (training_set.py): declared defaults in, then float32
    out = {}
    for column in plan.columns:
        raw = pd.to_numeric(joined[column.full_name], errors="coerce").astype(np.float64)
        out[column.full_name] = raw
        out[f"{column.full_name}__default"] = raw.fillna(column.default)
    return pd.DataFrame(out)


def _compare(
    name: str, logged: pd.DataFrame, offline: pd.DataFrame, training: dict | None
) -> FeatureSkew:
    served = _floats(logged[name])
    status = names.status_column(name)
    if status in logged:
        missing_online = float((logged[status].to_numpy() != names.PRESENT).mean())
    else:
        missing_online = float(np.isnan(served).mean())
    psi = names.psi(training, served) if training else math.nan
    if name not in offline:  # a request feature: served as the caller sent it
        return FeatureSkew(name, math.nan, math.nan, missing_online, math.nan, psi)
    raw = offline[name].to_numpy()
    want = offline[f"{name}__default"].to_numpy().astype(np.float32).astype(np.float64)
    both = ~np.isnan(served) & ~np.isnan(want)
    same = (np.isnan(served) & np.isnan(want)) | np.isclose(served, want, rtol=_RTOL, atol=0)
    diff = np.abs(served[both] - want[both])
    return FeatureSkew(
        name,
        float((~same).mean()),
        float(diff.mean()) if len(diff) else math.nan,
        missing_online,
        float(np.isnan(raw).mean()),
        psi,
    )


def _floats(column: pd.Series) -> np.ndarray:
    return pd.to_numeric(column, errors="coerce").astype(np.float64).to_numpy()


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def _number(value: float, digits: int = 4) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _when(at: dt.datetime) -> str:
    return at.isoformat(timespec="seconds")
