"""Augur's writer stores exactly Feast's bytes (plus its packed vector), and Augur reads a
store that only Feast wrote exactly as Feast does.

A private Redis and a small copy of the example repo: the same window materialized by
Feast's engine and by Augur's, the same rows pushed by Feast's online write and by Augur's,
with nulls and repeated entities, each compared key by key and field by field.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import redis

from augur.features.connection import connect
from augur.features.packed import vector_field
from augur.features.reader import OnlineReader
from augur.features.redis_server import EmbeddedRedis
from augur.features.repo import build_plan, open_store
from augur.pipelines.materialize import materialize
from augur.pipelines.push import push
from examples.fraud.scaffold import feast_apply
from tests.conftest import make_repo

START = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
VECTOR = b"_av:"

Dump = dict[bytes, dict[bytes, bytes]]


@pytest.fixture(scope="module")
def store_repo(tmp_path_factory):
    with EmbeddedRedis() as server:
        path = make_repo(tmp_path_factory.mktemp("writer") / "feature_repo", server.address)
        yield server, path, open_store(path, server.address)


def _dump(client: redis.Redis) -> Dump:
    return {key: client.hgetall(key) for key in client.scan_iter(count=10_000)}


def _feasts_part(dump: Dump) -> Dump:
    return {
        key: {f: v for f, v in fields.items() if not f.startswith(VECTOR)}
        for key, fields in dump.items()
    }


def _materialized_both_ways(address: str, path) -> tuple[Dump, Dump, dict]:
    """The whole history materialized into an empty Redis by Feast's engine, then by
    Augur's: both stores' contents, and what Augur's run reported per view."""
    client = connect(address)
    end = dt.datetime.now(dt.UTC)
    client.flushall()
    materialize(path, address, start=START, end=end, engine="feast", progress=False)
    feast = _dump(client)
    client.flushall()
    runs = materialize(path, address, start=START, end=end, engine="augur", progress=False)
    return feast, _dump(client), runs


def test_materialize_writes_feasts_exact_bytes(store_repo):
    server, path, _ = store_repo
    feast, augur, _ = _materialized_both_ways(server.address, path)

    assert len(feast) > 1_000
    assert _feasts_part(augur) == feast
    for fields in augur.values():  # a vector beside every view's _ts
        stamps = {f[4:] for f in fields if f.startswith(b"_ts:")}
        assert {f[4:] for f in fields if f.startswith(VECTOR)} == stamps


def test_a_store_written_only_by_feast_reads_as_feast_reads_it(store_repo):
    server, path, store = store_repo
    client = connect(server.address)
    client.flushall()
    materialize(path, server.address, start=START, engine="feast", progress=False)
    assert not any(f.startswith(VECTOR) for h in _dump(client).values() for f in h)
    plan = build_plan(store, "fraud_lgbm")
    pairs = pd.read_parquet(path / "data" / "user_merchant_stats.parquet").sample(
        80, random_state=3
    )
    users, merchants = pairs["user_id"].tolist(), pairs["merchant_id"].tolist()
    got = store.get_online_features(
        features=store.get_feature_service("fraud_lgbm"),
        entity_rows=[
            {"user_id": u, "merchant_id": m} for u, m in zip(users, merchants, strict=True)
        ],
        full_feature_names=True,
    ).to_dict()
    feast = np.array(
        [[np.nan if v is None else v for v in got[name]] for name in plan.feature_names],
        np.float32,
    ).T
    defaults = np.array([c.default for c in plan.columns], np.float32)
    expected = np.where(np.isnan(feast), defaults, feast)

    reader = OnlineReader(client)
    for _ in range(3):  # the first read finds no vectors; later ones go to the fields at once
        rows = reader.read(plan, {"user_id": users, "merchant_id": merchants}, enforce_ttl=False)
        np.testing.assert_array_equal(rows.values, expected)


def _awkward_rows(template: pd.DataFrame) -> pd.DataFrame:
    """Nulls of every type, and entities repeated with older, newer and equal event times."""
    now = pd.Timestamp(dt.datetime.now(dt.UTC)).floor("us")
    rows = template.head(6).reset_index(drop=True).copy()
    rows["user_id"] = [910_001, 910_002, 910_001, 910_003, 910_003, 910_001]
    rows["event_timestamp"] = [
        now - pd.Timedelta("1h"),
        now,
        now,  # newer than the first row of 910_001: wins
        now,
        now,  # the same time as the row before: the first one stays
        now - pd.Timedelta("2h"),  # older: skipped
    ]
    rows["txn_count_7d"] = pd.array([1, None, 3, 4, 5, 6], dtype="Int64")
    rows["amount_sum_7d"] = [1.5, np.nan, 3.5, 4.5, 5.5, 6.5]
    rows["amount_std_30d"] = pd.array([np.nan, 0.25, 0.5, 1.0, 2.0, 3.0], dtype="float32")
    rows["is_verified"] = pd.array([True, None, False, True, False, True], dtype="boolean")
    return rows


def test_push_matches_feasts_online_write(store_repo):
    server, path, store = store_repo
    client = connect(server.address)
    rows = _awkward_rows(pd.read_parquet(path / "data" / "user_stats.parquet"))
    client.flushall()
    store.write_to_online_store("user_stats", rows)
    feast = _dump(client)
    client.flushall()
    stats = push(path, server.address, "user_stats", rows)
    augur = _dump(client)

    assert (stats.written, stats.skipped) == (3, 3)
    assert _feasts_part(augur) == feast
    assert all(vector_field("user_stats") in fields for fields in augur.values())
    # A second push of the same rows changes nothing: none is newer than what is stored.
    assert push(path, server.address, "user_stats", rows).written == 0
    assert _dump(client) == augur


SEGMENTS = """
from feast import FeatureView, Field
from feast.types import String

from features import _source, user

user_segments = FeatureView(
    name="user_segments",
    entities=[user],
    ttl=None,
    schema=[Field(name="segment", dtype=String)],
    source=_source("user_segments"),
    online=True,
)
"""


def test_a_view_augur_cannot_write_takes_feasts_engine_in_the_same_run(store_repo):
    """A String feature is Feast's engine's to write; the numeric views in the same run are
    Augur's, their offline queries running beside it. Every byte is still Feast's."""
    server, path, _ = store_repo
    users = pd.read_parquet(path / "data" / "user_stats.parquet")[["user_id", "event_timestamp"]]
    segments = users.assign(segment=[f"segment-{i % 7}" for i in range(len(users))])
    segments.to_parquet(path / "data" / "user_segments.parquet", index=False)
    (path / "segments.py").write_text(SEGMENTS)
    feast_apply(path, server.address)
    feast, augur, runs = _materialized_both_ways(server.address, path)

    assert runs["user_segments"].rows is None  # Feast's engine wrote it
    assert runs["user_stats"].rows > 0  # Augur's writer wrote these
    assert _feasts_part(augur) == feast
    assert any(b"_ts:user_segments" in fields for fields in augur.values())
    assert not any(vector_field("user_segments") in fields for fields in augur.values())
