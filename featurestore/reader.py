"""The online read path: entity columns -> one pipelined Redis round trip -> float32 matrix.

For each key group of the plan the request's entities are deduplicated (request-level
cache), each distinct entity costs one HMGET, and every group goes into one pipeline.
Values are decoded straight from Feast's bytes into numpy; missing or expired values
become NaN or the feature's declared default, and are counted per row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import redis

from featurestore.keys import KeyEncoder
from featurestore.plan import KeyGroup, ReadPlan
from featurestore.row_cache import RowCache
from featurestore.values import decode_column, decode_number, decode_timestamp


@dataclass(frozen=True)
class FeatureRows:
    """Features for n request rows in the plan's column order."""

    values: np.ndarray  # float32 (n, features)
    missing: np.ndarray  # int32 (n,): features with no value (absent, null, or past TTL)
    stale: np.ndarray  # int32 (n,): of those, how many had a value older than its view's TTL
    event_ts: np.ndarray  # float64 (n, views): the view's event time, NaN when absent
    distinct_keys: int  # distinct entity keys needed, after deduplication
    cache_hits: int = 0  # of those, served from the process-level row cache

    @classmethod
    def unavailable(cls, plan: ReadPlan, n: int) -> FeatureRows:
        """Every feature missing, so declared defaults (else NaN) serve: the degraded answer."""
        defaults = np.array([c.default for c in plan.columns], np.float32)
        return cls(
            np.tile(defaults, (n, 1)),
            np.full(n, len(defaults), np.int32),
            np.zeros(n, np.int32),
            np.full((n, len(plan.views)), np.nan),
            0,
        )

    def take(self, rows: np.ndarray) -> FeatureRows:
        """The subset of rows selected by an index or boolean mask."""
        return FeatureRows(
            self.values[rows],
            self.missing[rows],
            self.stale[rows],
            self.event_ts[rows],
            self.distinct_keys,
        )


class EntityError(ValueError):
    """Entity columns that do not fit the plan; `field` names the offending column."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class OnlineReader:
    def __init__(
        self,
        client: redis.Redis,
        clock: Callable[[], float] = time.time,
        cache: RowCache | None = None,
    ):
        self._client = client
        self._clock = clock
        self._encoders: dict[tuple, KeyEncoder] = {}
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
        n = _row_count(plan, entities)
        work = [self._keys(plan, g, entities, n) for g in plan.groups]
        cached = [self._cached(g, keys) for g, (keys, _) in zip(plan.groups, work, strict=True)]
        commands = [
            ("HMGET", key, *group.fields)
            for group, (keys, _), hits in zip(plan.groups, work, cached, strict=True)
            for key, hit in zip(keys, hits, strict=True)
            if hit is None
        ]
        replies = self._round_trip(commands, timeout_s) if commands else []

        now = self._clock()
        columns = plan.columns
        values = np.empty((n, len(columns)), np.float32)
        stale_mask = np.zeros((n, len(columns)), bool)
        event_ts = np.full((n, len(plan.views)), np.nan)
        view_index = {v.name: i for i, v in enumerate(plan.views)}
        offset = 0
        hits = 0
        for group, (keys, inverse), found in zip(plan.groups, work, cached, strict=True):
            missing = sum(1 for f in found if f is None)
            vals, ts = _decode_replies(group, replies[offset : offset + missing])
            offset += missing
            if len(found) != missing:  # merge cache hits and fresh reads in key order
                vals, ts = self._merge(group, keys, found, vals, ts)
                hits += len(found) - missing
            elif self.cache is not None:
                for i, key in enumerate(keys):
                    self.cache.put((group.cache_id, key), vals[i].copy(), ts[i].copy())
            stale = _expire(group, vals, ts, now) if enforce_ttl else np.zeros(vals.shape, bool)
            cols = np.asarray(group.columns)
            values[:, cols] = vals[inverse]
            stale_mask[:, cols] = stale[inverse]
            for j, view in enumerate(group.views):
                event_ts[:, view_index[view.name]] = ts[inverse, j]

        absent = np.isnan(values)
        defaults = np.array([c.default for c in columns], np.float32)
        if not np.isnan(defaults).all():
            values = np.where(absent, defaults, values)
        return FeatureRows(
            values,
            absent.sum(1, dtype=np.int32),
            stale_mask.sum(1, dtype=np.int32),
            event_ts,
            sum(len(k) for k, _ in work),
            hits,
        )

    def _cached(self, group: KeyGroup, keys: list[bytes]) -> list:
        if self.cache is None:
            return [None] * len(keys)
        return [self.cache.get((group.cache_id, key)) for key in keys]

    def _merge(self, group, keys, found, fresh_vals, fresh_ts):
        vals = np.empty((len(keys), fresh_vals.shape[1]), np.float32)
        ts = np.empty((len(keys), fresh_ts.shape[1]), np.float64)
        j = 0
        for i, (key, hit) in enumerate(zip(keys, found, strict=True)):
            if hit is None:
                vals[i], ts[i] = fresh_vals[j], fresh_ts[j]
                self.cache.put((group.cache_id, key), fresh_vals[j].copy(), fresh_ts[j].copy())
                j += 1
            else:
                vals[i], ts[i] = hit
        return vals, ts

    def _round_trip(self, commands: list[tuple], timeout_s: float | None) -> list:
        """Send every command at once on one pooled connection, read every reply.

        A connection found dead (Redis restarted since it was pooled) is replaced once; any
        failure disconnects it, so a late reply can never be read by the next caller."""
        pool = self._client.connection_pool
        for attempt in (0, 1):
            conn = pool.get_connection()
            try:
                conn.connect()
                if timeout_s is not None:
                    limit = min(timeout_s, conn.socket_timeout or timeout_s)
                    conn.update_current_socket_timeout(max(limit, 0.001))
                conn.send_packed_command(conn.pack_commands(commands))
                replies = [conn.read_response() for _ in commands]
                if timeout_s is not None:
                    conn.update_current_socket_timeout(-1)  # back to the configured timeout
                return replies
            except redis.ConnectionError:
                conn.disconnect()
                if attempt:
                    raise
            except BaseException:
                conn.disconnect()
                raise
            finally:
                pool.release(conn)
        raise AssertionError("unreachable")

    def _keys(
        self, plan: ReadPlan, group: KeyGroup, entities: Mapping[str, Sequence], n: int
    ) -> tuple[list[bytes], np.ndarray]:
        """Distinct Redis keys of the group and, per request row, its index among them."""
        encoder = self._encoders.get((plan.project, group.join_keys))
        if encoder is None:
            types = [plan.entity_types[k] for k in group.join_keys]
            encoder = KeyEncoder(group.join_keys, types, plan.project)
            self._encoders[(plan.project, group.join_keys)] = encoder
        columns = [entities[k] for k in group.join_keys]
        index: dict[tuple, int] = {}
        inverse = np.empty(n, np.intp)
        for row, key in enumerate(zip(*columns, strict=True)):
            inverse[row] = index.setdefault(key, len(index))
        return [encoder.key(k) for k in index], inverse


# One numpy pass over a group's values beats one Python call per value from about 40
# entities (measured on the fraud plan: 1.3x faster at 100 entities, 1.6x at 1,000, 0.8x
# at 16); below that numpy's fixed cost per call dominates.
_COLUMNAR_FROM = 48


def _decode_replies(group: KeyGroup, replies: list) -> tuple[np.ndarray, np.ndarray]:
    n_views = len(group.views)
    n_feat = len(group.fields) - n_views
    if len(replies) >= _COLUMNAR_FROM:
        flat = [raw for reply in replies for raw in reply[:n_feat]]
        vals = decode_column(flat).reshape(len(replies), n_feat)
    else:
        vals = np.array(
            [[decode_number(raw) for raw in reply[:n_feat]] for reply in replies], np.float32
        ).reshape(len(replies), n_feat)
    ts = np.array(
        [[decode_timestamp(raw) for raw in reply[n_feat:]] for reply in replies], np.float64
    ).reshape(len(replies), n_views)
    return vals, ts


def _expire(group: KeyGroup, vals: np.ndarray, ts: np.ndarray, now: float) -> np.ndarray:
    """Blank values older than their view's TTL (in place); the mask of those blanked."""
    stale = np.zeros(vals.shape, bool)
    start = 0
    for j, view in enumerate(group.views):
        width = len(view.features)
        if view.ttl_seconds > 0:
            expired = (now - ts[:, j]) > view.ttl_seconds
            block = vals[:, start : start + width]
            stale[:, start : start + width] = expired[:, None] & ~np.isnan(block)
            block[expired] = np.nan
        start += width
    return stale


def _row_count(plan: ReadPlan, entities: Mapping[str, Sequence]) -> int:
    n = None
    for key, kind in plan.entity_types.items():
        if key not in entities:
            raise EntityError(
                key, f"entity column {key!r} is required by feature service {plan.service!r}"
            )
        length = len(entities[key])
        if n is None:
            n = length
        elif length != n:
            raise EntityError(
                key, f"entity column {key!r} has {length} values; other columns have {n}"
            )
        del kind
    return n or 0
