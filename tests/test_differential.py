"""Augur's online reader returns exactly what Feast's `get_online_features` returns.

Same Redis, same random entities (known, unknown, composite user x merchant keys), read each
way Augur can: from its packed vectors, from Feast's per-feature fields with HMGET, and
with HGETALL. Rows written by Feast itself (no vector, or an outdated one) are read from
Feast's fields. Where
Feast finds nothing Augur serves the feature's declared default (else NaN). Past-TTL
values differ by design: Feast's online read ignores TTL and returns them; Augur treats
them as missing and counts them as stale, and returns Feast's values when TTL is off.
"""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from augur.features.connection import connect
from augur.features.reader import EntityError, OnlineReader
from augur.features.repo import build_plan

STALE_USERS = [900_001, 900_002, 900_003]  # ids the generator never makes


def _feast_matrix(store, plan, users, merchants) -> np.ndarray:
    rows = [
        {"user_id": int(u), "merchant_id": int(m)} for u, m in zip(users, merchants, strict=True)
    ]
    got = store.get_online_features(
        features=store.get_feature_service(plan.service), entity_rows=rows, full_feature_names=True
    ).to_dict()
    return np.array(
        [
            [np.nan if got[n][i] is None else float(got[n][i]) for n in plan.feature_names]
            for i in range(len(rows))
        ],
        np.float32,
    )


def _entities(fraud_repo, n=300, seed=1):
    rng = np.random.default_rng(seed)
    pairs = pd.read_parquet(fraud_repo.data / "user_merchant_stats.parquet")
    known = pairs.sample(n // 2, random_state=seed)
    users = np.concatenate([known["user_id"], rng.integers(0, 450, n - n // 2)])
    merchants = np.concatenate([known["merchant_id"], rng.integers(0, 90, n - n // 2)])
    users[::17] = users[-1] = users[0]  # repeated entities within one request
    merchants[::17] = merchants[-1] = merchants[0]
    return users.astype(np.int64), merchants.astype(np.int64)


@pytest.fixture(scope="module")
def plan(fraud_repo):
    return build_plan(fraud_repo.store, "fraud_lgbm")


# Reads of many entities are decoded and assembled in C where augur.features._native is built
# (the default), else in numpy: both are checked against Feast.
READ_PATHS = {
    "vectors": {},
    "vectors-numpy": {"use_native": False},
    "fields": {"vectors": False},
    "fields-numpy": {"vectors": False, "use_native": False},
    "hgetall": {"vectors": False, "hgetall_from": 1},
}


@pytest.fixture(scope="module", params=sorted(READ_PATHS))
def reader(fraud_repo, request):
    return OnlineReader(connect(fraud_repo.address), **READ_PATHS[request.param])


@pytest.fixture(scope="module")
def stale_rows(fraud_repo):
    """Rows Feast itself writes for new users, with an event time past user_stats' 2-day TTL."""
    old = pd.Timestamp(dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    users = pd.read_parquet(fraud_repo.data / "user_stats.parquet").tail(len(STALE_USERS))
    frame = users.assign(user_id=STALE_USERS, event_timestamp=old).reset_index(drop=True)
    fraud_repo.store.write_to_online_store("user_stats", frame)
    return frame


# A few rows are decoded in Python scalars, a few dozen an entity at a time into numpy, and
# more in columnar numpy passes (augur.features.python_read, augur.features.decode).
@pytest.mark.parametrize("n", [5, 40, 300])
def test_equal_to_feast_on_materialized_data(fraud_repo, plan, reader, n):
    users, merchants = _entities(fraud_repo, n)
    expected = _feast_matrix(fraud_repo.store, plan, users, merchants)
    defaults = np.array([c.default for c in plan.columns], np.float32)
    expected = np.where(np.isnan(expected), defaults, expected)

    rows = reader.read(plan, {"user_id": users.tolist(), "merchant_id": merchants.tolist()})

    np.testing.assert_array_equal(rows.values, expected)
    assert rows.values.shape == (len(users), len(plan.columns))
    # The sample has unknown users and never-seen pairs, so both paths are exercised.
    assert (rows.missing > 0).any() and (rows.missing == 0).any()
    assert rows.stale.sum() == 0
    assert rows.distinct_keys < 3 * len(users)  # repeated entities were read once


@pytest.mark.parametrize("n", [1, 2, 3])  # with the C loops, one C call (read_few)
def test_a_few_known_entities_equal_feast(fraud_repo, plan, reader, n):
    pairs = pd.read_parquet(fraud_repo.data / "user_merchant_stats.parquet").sample(
        n, random_state=n
    )
    users, merchants = pairs["user_id"].to_numpy(np.int64), pairs["merchant_id"].to_numpy(np.int64)
    expected = _feast_matrix(fraud_repo.store, plan, users, merchants)
    defaults = np.array([c.default for c in plan.columns], np.float32)

    rows = reader.read(plan, {"user_id": users.tolist(), "merchant_id": merchants.tolist()})

    np.testing.assert_array_equal(rows.values, np.where(np.isnan(expected), defaults, expected))
    assert (rows.missing < len(plan.columns)).all() and not np.isnan(rows.event_ts).all()


def test_missing_values_are_counted_per_row(fraud_repo, plan, reader):
    rows = reader.read(plan, {"user_id": [999_999], "merchant_id": [999_999]})
    assert rows.missing.tolist() == [len(plan.columns)]
    served = dict(zip(plan.feature_names, rows.values[0], strict=True))
    assert served["user_merchant_stats__txn_count_total"] == 0.0  # declared default
    assert np.isnan(served["user_stats__txn_count_7d"])  # no default declared
    assert np.isnan(rows.event_ts).all()


def test_past_ttl_values_are_stale_and_missing(fraud_repo, plan, reader, stale_rows):
    users = [*STALE_USERS, 1]
    merchants = [1, 2, 3, 1]
    feast = _feast_matrix(fraud_repo.store, plan, users, merchants)
    user_cols = [i for i, c in enumerate(plan.columns) if c.view == "user_stats"]
    # Feast still serves the expired rows...
    assert not np.isnan(feast[:3, user_cols]).all()

    strict = reader.read(plan, {"user_id": users, "merchant_id": merchants})
    assert np.isnan(strict.values[:3][:, user_cols]).all()
    expected_stale = (~np.isnan(feast[:3, user_cols])).sum(1)
    assert strict.stale[:3].tolist() == expected_stale.tolist()
    assert strict.stale[3] == 0

    # ...and with TTL enforcement off, Augur returns exactly Feast's values.
    loose = reader.read(plan, {"user_id": users, "merchant_id": merchants}, enforce_ttl=False)
    defaults = np.array([c.default for c in plan.columns], np.float32)
    np.testing.assert_array_equal(loose.values, np.where(np.isnan(feast), defaults, feast))
    assert loose.stale.sum() == 0


def test_event_timestamps_are_the_views_event_times(fraud_repo, plan, reader, stale_rows):
    rows = reader.read(plan, {"user_id": [STALE_USERS[0]], "merchant_id": [0]})
    user_view = [v.name for v in plan.views].index("user_stats")
    expected = stale_rows["event_timestamp"].iloc[0].timestamp()
    assert rows.event_ts[0, user_view] == pytest.approx(expected, abs=1e-6)


def test_string_and_missing_entity_columns_are_refused(plan, reader):
    with pytest.raises(EntityError) as missing:
        reader.read(plan, {"user_id": [1]})
    assert missing.value.field == "merchant_id"
    with pytest.raises(EntityError) as ragged:
        reader.read(plan, {"user_id": [1, 2], "merchant_id": [1]})
    assert "2" in str(ragged.value) or "1" in str(ragged.value)


def _user_key(fraud_repo, plan, user: int) -> bytes:
    from augur.features.keys import KeyEncoder

    return KeyEncoder(["user_id"], ["int64"], plan.project).key([user])


def test_a_reader_builds_each_plans_keys_for_that_plan(fraud_repo, plan):
    """A one-entity read's commands come from templates a reader keeps per plan: a plan
    like another but for its project (another Feast repo on the same Redis) reads its own
    keys, none of which exist here, even right after the first plan's read."""
    import dataclasses

    pairs = pd.read_parquet(fraud_repo.data / "user_merchant_stats.parquet").head(1)
    entity = {"user_id": pairs["user_id"].tolist(), "merchant_id": pairs["merchant_id"].tolist()}
    other = dataclasses.replace(plan, project="another_project")
    reader = OnlineReader(connect(fraud_repo.address))

    here, elsewhere, again = (reader.read(p, entity) for p in (plan, other, plan))

    assert (here.missing < len(plan.columns)).all()
    assert np.isnan(elsewhere.event_ts).all() and elsewhere.distinct_keys == len(plan.groups)
    np.testing.assert_array_equal(again.values, here.values)


def test_vectors_are_read_when_present(fraud_repo, plan):
    """With a view's feature fields gone but its vector and _ts intact, the vector path still
    serves every value and the fields path none: proof that vectors are what is read."""
    from augur.features.keys import feature_field

    client = connect(fraud_repo.address)
    user = int(pd.read_parquet(fraud_repo.data / "user_stats.parquet")["user_id"].iloc[-1])
    key = _user_key(fraud_repo, plan, user)
    view = next(v for v in plan.views if v.name == "user_stats")
    fields = [feature_field(view.name, f.name) for f in view.features]
    cols = [i for i, c in enumerate(plan.columns) if c.view == view.name]
    entity = {"user_id": [user], "merchant_id": [0]}
    before = OnlineReader(client, vectors=False).read(plan, entity, enforce_ttl=False)
    saved = dict(zip(fields, client.hmget(key, fields), strict=True))
    client.hdel(key, *fields)
    try:
        packed = OnlineReader(client).read(plan, entity, enforce_ttl=False)
        plain = OnlineReader(client, vectors=False).read(plan, entity, enforce_ttl=False)
    finally:
        client.hset(key, mapping=saved)
    assert not np.isnan(before.values[0, cols]).all()
    np.testing.assert_array_equal(packed.values[0, cols], before.values[0, cols])
    assert np.isnan(plain.values[0, cols]).all()


def test_feast_writes_newer_than_the_vector_are_served(fraud_repo, plan):
    """Augur's push writes a vector; a later plain Feast write replaces the fields and _ts but
    not the vector; the reader notices and serves Feast's newer values."""
    from augur.pipelines.push import push

    user = 900_200  # an id the generator never makes
    template = pd.read_parquet(fraud_repo.data / "user_stats.parquet").tail(1)
    now = pd.Timestamp(dt.datetime.now(dt.UTC))
    older = template.assign(user_id=user, event_timestamp=now - pd.Timedelta("1min"))
    push(fraud_repo.path, fraud_repo.address, "user_stats", older.assign(txn_count_7d=1))
    fraud_repo.store.write_to_online_store(
        "user_stats", older.assign(event_timestamp=now, txn_count_7d=2).reset_index(drop=True)
    )
    column = plan.feature_names.index("user_stats__txn_count_7d")
    known_users, known_merchants = _entities(fraud_repo, n=120)
    # a few entities are decoded one at a time, many at once (in C, or in numpy)
    for many, use_native in ((False, True), (True, True), (True, False)):
        users = [user] * 3 + (known_users.tolist() if many else [])
        merchants = [0, 1, 2] + (known_merchants.tolist() if many else [])
        rows = OnlineReader(connect(fraud_repo.address), use_native=use_native).read(
            plan, {"user_id": users, "merchant_id": merchants}
        )
        assert rows.values[:3, column].tolist() == [2.0] * 3
        expected = _feast_matrix(fraud_repo.store, plan, users, merchants)
        defaults = np.array([c.default for c in plan.columns], np.float32)
        np.testing.assert_array_equal(rows.values, np.where(np.isnan(expected), defaults, expected))
