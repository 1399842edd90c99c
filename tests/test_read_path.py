"""The read path's seams: how a plan is read is chosen once and gives the reference's answers,
a read waits for Redis through the Waiting it was handed, and every command's bytes come
from one builder, the writer's included."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable

import numpy as np
import pytest

from augur.features.commands import around_key, for_keys, resp_commands
from augur.features.connection import connect
from augur.features.entities import GroupKeys
from augur.features.fetch import Fetcher
from augur.features.keys import KeyEncoder
from augur.features.native import native
from augur.features.native_read import NativeRead
from augur.features.python_read import PythonRead
from augur.features.ragged import Ragged
from augur.features.reader import OnlineReader
from augur.features.repo import build_plan
from augur.features.row_cache import RowCache
from augur.features.waiting import BLOCKING


@pytest.fixture(scope="module")
def plan(fraud_repo):
    return build_plan(fraud_repo.store, "fraud_lgbm")


def _entities(n: int, seed: int) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 500, n).tolist()  # some past the generator's users: unknown
    merchants = rng.integers(0, 100, n).tolist()
    return {"user_id": users, "merchant_id": merchants}


@pytest.mark.skipif(native is None, reason="augur.features._native is not built")
@pytest.mark.parametrize("n", [1, 2, 5, 16, 40, 100])
def test_the_c_strategy_reads_what_the_python_reference_reads(fraud_repo, plan, n):
    """Both strategies on the same entities (known, unknown, repeated), at today's clock and
    at one that puts every value past its view's TTL, with TTL enforced and not."""
    fetcher = Fetcher(connect(fraud_repo.address), BLOCKING, vectors=True, hgetall_from=64)
    keys = [GroupKeys(plan, g) for g in plan.groups]
    entities = _entities(n, seed=n)
    entities["user_id"][-1] = entities["user_id"][0]  # a repeated entity

    for clock, enforce_ttl in itertools.product((time.time, lambda: 4e9), (True, False)):
        python = PythonRead(plan, keys, fetcher, clock)
        c = NativeRead(python, keys, fetcher, clock)
        want = python.read(entities, n, enforce_ttl, None)
        got = c.read(entities, n, enforce_ttl, None)
        np.testing.assert_array_equal(got.values, want.values)
        np.testing.assert_array_equal(got.event_ts, want.event_ts)
        assert got.missing.tolist() == want.missing.tolist()
        assert got.stale.tolist() == want.stale.tolist()
        assert got.distinct_keys == want.distinct_keys


def test_a_reader_picks_one_strategy_per_plan_and_keeps_it(fraud_repo, plan):
    client = connect(fraud_repo.address)
    entities = _entities(3, seed=0)
    plain = OnlineReader(client, use_native=False)
    cached = OnlineReader(client, cache=RowCache(100, ttl_ms=1_000))

    plain.read(plan, entities)
    chosen = plain._strategies[id(plan)]
    plain.read(plan, _entities(80, seed=1))

    assert plain._strategies[id(plan)] is chosen and isinstance(chosen, PythonRead)
    cached.read(plan, entities)  # the row cache is the Python path's
    assert isinstance(cached._strategies[id(plan)], PythonRead)
    if native is not None:
        c = OnlineReader(client)
        c.read(plan, entities)
        assert isinstance(c._strategies[id(plan)], NativeRead)


class _Recording:
    """A Waiting that notes each wait and each piece of work, then blocks as BLOCKING does."""

    def __init__(self) -> None:
        self.waits: list[socket.socket] = []
        self.elsewhere = 0

    def wait_readable(self, sock: socket.socket) -> None:
        self.waits.append(sock)

    def run_elsewhere(self, work: Callable[[], object]) -> object:
        self.elsewhere += 1
        return work()


@pytest.mark.parametrize("use_native", [True, False])
@pytest.mark.parametrize("n", [1, 100])
def test_a_read_waits_for_redis_through_the_waiting_it_was_given(fraud_repo, plan, use_native, n):
    waiting = _Recording()
    client = connect(fraud_repo.address)
    reader = OnlineReader(client, use_native=use_native, waiting=waiting)
    entities = _entities(n, seed=7)

    first = reader.read(plan, entities)
    again = reader.read(plan, entities)

    assert waiting.elsewhere == 1  # the new connection's handshake, once
    assert len(waiting.waits) >= 2 and all(isinstance(s, socket.socket) for s in waiting.waits)
    want = OnlineReader(client, use_native=use_native).read(plan, entities)
    for got in (first, again):
        np.testing.assert_array_equal(got.values, want.values)


def test_the_writers_commands_are_the_bytes_a_reads_builder_makes():
    encoder = KeyEncoder(["user_id"], ["int64"], "fraud")
    keys = [encoder.key([u]) for u in (1, -5, 2**40)]
    field = b"_ts:user_stats"

    batch = resp_commands([b"HMGET", Ragged.from_bytes(keys), field], len(keys))

    assert batch == for_keys(*around_key(b"HMGET", (field,)), keys)
