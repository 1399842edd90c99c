"""The process-level row cache: bounded, served at most ttl_ms after a read, same answers."""

import datetime as dt
import time

import numpy as np
import pandas as pd

from augur.features.connection import connect
from augur.features.reader import OnlineReader
from augur.features.repo import build_plan
from augur.features.row_cache import RowCache
from augur.pipelines.push import push

USER = 900_200  # an id the generator never makes


def _push(fraud_repo, txn_count: int) -> None:
    row = pd.read_parquet(fraud_repo.data / "user_stats.parquet").tail(1)
    push(
        fraud_repo.path,
        fraud_repo.address,
        "user_stats",
        row.assign(
            user_id=USER,
            txn_count_7d=txn_count,
            event_timestamp=pd.Timestamp(dt.datetime.now(dt.UTC)),
        ),
    )


def test_cached_rows_are_served_until_their_ttl_then_reread(fraud_repo):
    plan = build_plan(fraud_repo.store, "fraud_lgbm")
    column = plan.feature_names.index("user_stats__txn_count_7d")
    reader = OnlineReader(connect(fraud_repo.address), cache=RowCache(1_000, ttl_ms=400))
    entities = {"user_id": [USER, USER, 1], "merchant_id": [1, 1, 2]}

    _push(fraud_repo, 5)
    first = reader.read(plan, entities)
    assert first.values[0, column] == 5 and first.cache_hits == 0

    _push(fraud_repo, 6)  # newer in Redis; the cached row is at most 400 ms old
    second = reader.read(plan, entities)
    assert second.values[0, column] == 5
    assert second.cache_hits == second.distinct_keys > 0

    time.sleep(0.5)
    third = reader.read(plan, entities)
    assert third.values[0, column] == 6 and third.cache_hits == 0


def test_cache_is_bounded_and_answers_equal_uncached_reads(fraud_repo):
    plan = build_plan(fraud_repo.store, "fraud_lgbm")
    cache = RowCache(max_entries=25, ttl_ms=60_000)
    cached = OnlineReader(connect(fraud_repo.address), cache=cache)
    plain = OnlineReader(connect(fraud_repo.address))
    rng = np.random.default_rng(4)
    for _ in range(5):
        entities = {
            "user_id": rng.integers(0, 60, 40).tolist(),
            "merchant_id": rng.integers(0, 20, 40).tolist(),
        }
        got, want = cached.read(plan, entities), plain.read(plan, entities)
        np.testing.assert_array_equal(got.values, want.values)
        np.testing.assert_array_equal(got.missing, want.missing)
        np.testing.assert_array_equal(got.event_ts, want.event_ts)
        assert len(cache) <= 25
    assert got.cache_hits > 0  # repeated hot entities came from the cache


def test_view_ttl_still_applies_to_cached_rows(fraud_repo):
    plan = build_plan(fraud_repo.store, "fraud_lgbm")
    clock = [time.time()]
    reader = OnlineReader(
        connect(fraud_repo.address), clock=lambda: clock[0], cache=RowCache(100, ttl_ms=60_000)
    )
    entities = {"user_id": [1], "merchant_id": [2]}
    fresh = reader.read(plan, entities)
    assert fresh.stale[0] == 0
    clock[0] += 3 * 86_400  # three days later: past user_stats' 2-day TTL
    later = reader.read(plan, entities)
    assert later.cache_hits == later.distinct_keys  # served from the cache...
    assert later.stale[0] > 0  # ...but judged stale as Redis values would be
