"""The online read path's public face: entity columns -> one pipelined Redis round trip ->
float32 matrix, per read plan.

plan (augur.features.plan) -> keys (entities, keys) -> commands -> fetch (fetch, resp)
-> decode (decode, or the C loops) -> assemble (rows). How a plan is read, in C
(native_read) or in Python (python_read, the reference), is chosen once per plan, when the
reader first reads it, and kept: a read only calls it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import redis

from augur.features.entities import EntityError, GroupKeys, row_count
from augur.features.fetch import HGETALL_FROM, Fetcher
from augur.features.native import native
from augur.features.native_read import NativeRead
from augur.features.plan import ReadPlan
from augur.features.python_read import PythonRead
from augur.features.row_cache import RowCache
from augur.features.rows import FeatureRows
from augur.features.typed_read import TypedRows, read_typed
from augur.features.waiting import BLOCKING, Waiting

__all__ = ["HGETALL_FROM", "EntityError", "FeatureRows", "OnlineReader", "ReadStrategy"]

_PLANS_KEPT = 64  # plans whose read strategies a reader keeps (a few per model)


class ReadStrategy(Protocol):
    """How one plan is read: `PythonRead` or `NativeRead`, built once per plan."""

    plan: ReadPlan

    def read(
        self,
        entities: Mapping[str, Sequence],
        n: int,
        enforce_ttl: bool,
        timeout_s: float | None,
    ) -> FeatureRows: ...


class OnlineReader:
    def __init__(
        self,
        client: redis.Redis,
        clock: Callable[[], float] = time.time,
        cache: RowCache | None = None,
        *,
        vectors: bool = True,
        hgetall_from: int = HGETALL_FROM,
        use_native: bool = True,
        waiting: Waiting = BLOCKING,
    ):
        """`vectors`: read Augur's packed vectors where present (else only Feast's fields);
        `hgetall_from`: read a group with HGETALL from this many fields, not HMGET;
        `use_native`: read in C where augur.features._native is built and there is no row
        cache (False: the numpy and hiredis paths, which give the same results);
        `waiting`: how a round trip waits for Redis (a green pool's parks its call)."""
        self._native = use_native and native is not None and cache is None
        self._fetcher = Fetcher(client, waiting, vectors=vectors, hgetall_from=hgetall_from)
        self._clock = clock
        self._strategies: dict[int, ReadStrategy] = {}  # id(plan) -> its strategy
        self.cache = cache

    def read(
        self,
        plan: ReadPlan,
        entities: Mapping[str, Sequence],
        *,
        enforce_ttl: bool = True,
        timeout_s: float | None = None,
    ) -> FeatureRows:
        """Features for the entity rows; `timeout_s` bounds the Redis round trip (a caller's
        remaining deadline), else the client's configured socket timeout applies."""
        n = row_count(plan, entities)
        strategy = self._strategies.get(id(plan))
        if strategy is None or strategy.plan is not plan:
            strategy = self._strategy(plan)
        return strategy.read(entities, n, enforce_ttl, timeout_s)

    def read_typed(
        self,
        plan: ReadPlan,
        entities: Mapping[str, Sequence],
        *,
        timeout_s: float | None = None,
    ) -> TypedRows:
        """`read`'s rows in each feature's Feast type (see augur.features.typed_read)."""
        n = row_count(plan, entities)
        return read_typed(self._fetcher, plan, entities, n, self._clock(), timeout_s)

    def _strategy(self, plan: ReadPlan) -> ReadStrategy:
        """How this reader reads `plan`, built and kept for its next reads."""
        if len(self._strategies) >= _PLANS_KEPT:  # plans a reload has replaced
            self._strategies.clear()
        keys = [GroupKeys(plan, group) for group in plan.groups]
        strategy: ReadStrategy = PythonRead(plan, keys, self._fetcher, self._clock, self.cache)
        if self._native:
            strategy = NativeRead(strategy, keys, self._fetcher, self._clock)
        self._strategies[id(plan)] = strategy
        return strategy
