"""The online read path: entity columns -> one pipelined Redis round trip -> float32 matrix.

For each key group of the plan the request's entities are deduplicated (request-level
cache), each distinct entity costs one HMGET, and every group goes into one pipeline. The
HMGET asks for each view's packed vector and `_ts` (augur.features.packed); an entity whose
vector a plain Feast write has outdated is read again from Feast's fields in a second
round trip, and a group whose vectors mostly fail (a store only Feast wrote) is read from
the fields for a while (HGETALL when it is wide). Values are decoded straight into numpy
(augur.features.decode), or, for a read of a few rows, into Python scalars with numpy
entered once for the result; missing or expired values become NaN or the feature's
declared default, and are counted per row.
"""

from __future__ import annotations

import functools
import itertools
import math
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import redis

from augur.features.decode import (
    decode_fields,
    decode_vectors,
    entity_from_fields,
    entity_from_vectors,
    expire,
    expire_entity,
    fill_entity,
    hgetall_as_fields,
)
from augur.features.keys import KeyEncoder
from augur.features.native import native
from augur.features.plan import KeyGroup, ReadPlan
from augur.features.resp import OwnConnections, command_args, parse, round_trip
from augur.features.row_cache import RowCache

# Past this many fields one HGETALL costs Redis less than an HMGET naming each (measured on
# the wide benchmark scenario, 275 fields: 5.6x less at 100 entities).
HGETALL_FROM = 64
# Reads of a group from fields, after its vectors mostly failed, before vectors are retried.
_FIELDS_READS = 200
# Keys of int64 entities built and deduplicated in numpy from this many rows (a dict and
# one struct pack per key below it, where numpy's fixed costs dominate).
_VECTORISED_KEYS_FROM = 32
# Up to this many rows times views a read is decoded in Python scalars and enters numpy
# once, to build its result (`OnlineReader._read_few`): its cost grows with each entity's
# views, the columnar path's hardly. Measured against the columnar path: the fraud plan
# (3 views) 0.66x its time at 1 row, 0.91x at 32 rows; the wide one (25 views) 0.89x at 1
# row, 0.98x at 3, 1.01x at 4, 1.06-1.14x from 6 to 32.
_FEW_VIEW_READS = 96
# The same bound where augur.features._native is built, for its one-call read of a few rows
# (`_read_few_native`) against its columnar path, whose numpy arrays per group cost a fixed
# few dozen calls: fraud plan (3 views), vs the Redis floor in the same run, 1.52x / 1.69x
# at 4 rows, 1.59x / 1.72x at 8, 1.71x both at 16, 1.70x / 1.60x at 32.
_FEW_VIEW_READS_NATIVE = 48
_I64 = struct.Struct("<q")
_PLANS_KEPT = 64  # plans whose one-entity templates a reader keeps (a few per model)


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
        defaults = plan.defaults
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
        *,
        vectors: bool = True,
        hgetall_from: int = HGETALL_FROM,
        use_native: bool = True,
    ):
        """`vectors`: read Augur's packed vectors where present (else only Feast's fields);
        `hgetall_from`: read a group with HGETALL from this many fields, not HMGET;
        `use_native`: decode reads of many entities in C where augur.features._native is built
        (False: the numpy and hiredis paths, which give the same results)."""
        self._client = client
        self._native = use_native and native is not None
        self._own = OwnConnections(client)
        self._vectors = vectors
        self._hgetall_from = hgetall_from
        self._clock = clock
        self._encoders: dict[tuple, KeyEncoder] = {}
        # id(plan) -> (plan, `_one_entity`'s templates and spec)
        self._one_entity_plans: dict[int, tuple] = {}
        # key groups read from Feast's fields instead of vectors: reads left until a retry
        self._fields_mode: dict[int, int] = {}
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
        few = _FEW_VIEW_READS_NATIVE if self._native else _FEW_VIEW_READS
        if 0 < n * len(plan.views) <= few and self.cache is None:
            if self._native:
                return self._read_few_native(plan, entities, n, enforce_ttl, timeout_s)
            return self._read_few(plan, entities, n, enforce_ttl, timeout_s)
        work = [self._keys(plan, g, entities, n) for g in plan.groups]
        cached = [self._cached(g, keys) for g, (keys, _) in zip(plan.groups, work, strict=True)]
        fetches = [
            _Fetch(
                group,
                keys
                if self.cache is None
                else [k for k, hit in zip(keys, hits, strict=True) if hit is None],
                self._hgetall(group),
            )
            for group, (keys, _), hits in zip(plan.groups, work, cached, strict=True)
        ]
        for fetch in fetches:
            fetch.packed = self._packed(fetch.group)
        count = sum(len(f.keys) for f in fetches)
        if count:
            payload = b"".join(f.payload() for f in fetches)
            raw = self._native and self.cache is None
            replies = round_trip(self._client, payload, count, timeout_s, self._own, raw=raw)
        else:
            replies = []
        offset = 0
        decode = _Fetch.decode_raw if isinstance(replies, bytearray) else _Fetch.decode
        for fetch in fetches:
            offset = decode(fetch, replies, offset)
        count = sum(len(f.fallback) for f in fetches)
        if count:  # entities whose vectors a plain Feast write has outdated: read the fields
            payload = b"".join(f.fallback_payload() for f in fetches)
            replies = round_trip(self._client, payload, count, timeout_s, self._own)
            offset = 0
            for fetch in fetches:
                offset = fetch.decode_fallback(replies, offset)
        for fetch in fetches:
            self._learn(fetch.group, fetch.packed, fetch.fallbacks, fetch.with_data)

        now = self._clock()
        if self._native and self.cache is None:
            return _assemble(plan, n, work, fetches, now, enforce_ttl)
        width = len(plan.columns)
        values = np.empty((n, width), np.float32)
        stale_mask = np.zeros((n, width), bool)
        event_ts = np.full((n, len(plan.views)), np.nan)
        hits = 0
        for group, (keys, inverse), found, fetch in zip(
            plan.groups, work, cached, fetches, strict=True
        ):
            vals, ts = fetch.vals, fetch.ts
            if len(fetch.keys) != len(keys):  # merge cache hits and fresh reads in key order
                vals, ts = self._merge(group, keys, found, vals, ts)
                hits += len(keys) - len(fetch.keys)
            elif self.cache is not None:
                for i, key in enumerate(keys):
                    self.cache.put((group.cache_id, key), vals[i].copy(), ts[i].copy())
            cols = group.column_index
            if enforce_ttl:
                stale_mask[:, cols] = expire(group, vals, ts, now)[inverse]
            values[:, cols] = vals[inverse]
            event_ts[:, group.positions] = ts[inverse]

        return _rows(
            plan,
            values,
            stale_mask.sum(1, dtype=np.int32),
            event_ts,
            sum(len(k) for k, _ in work),
            hits,
        )

    def _read_few(
        self,
        plan: ReadPlan,
        entities: Mapping[str, Sequence],
        n: int,
        enforce_ttl: bool,
        timeout_s: float | None,
    ) -> FeatureRows:
        """`read` for a few rows, without the row cache: each distinct entity is decoded into
        Python scalars and numpy is entered once, for the result. A one-entity read through
        the columnar path makes some 40 numpy calls of about 1 us each: most of its cost."""
        groups = plan.groups
        work = [self._few_keys(plan, g, entities, n) for g in groups]
        packed = [self._packed(g) for g in groups]
        payload = b"".join(
            _group_commands(group, keys, vectors, self._hgetall(group))
            for group, (keys, _), vectors in zip(groups, work, packed, strict=True)
        )
        count = sum(len(keys) for keys, _ in work)
        replies = iter(round_trip(self._client, payload, count, timeout_s, self._own))

        decoded: list[list] = []  # per group, per distinct key: [values per view, times]
        again: list[list[int]] = []  # per group, the keys whose vectors are outdated
        for group, (keys, _), vectors in zip(groups, work, packed, strict=True):
            mine = [next(replies) for _ in keys]
            if vectors:
                out, outdated, with_data = [], [], 0
                for i, reply in enumerate(mine):
                    values, times, fallback, seen = entity_from_vectors(group, reply)
                    out.append((values, times))
                    with_data += seen
                    if fallback:
                        outdated.append(i)
                self._learn(group, True, len(outdated), with_data)
            else:
                mine = _as_fields(group, mine, self._hgetall(group))
                out, outdated = [entity_from_fields(group, reply) for reply in mine], []
                self._learn(group, False, 0, 0)
            decoded.append(out)
            again.append(outdated)
        count = sum(len(a) for a in again)
        if count:  # vectors a plain Feast write has outdated: read those entities' fields
            payload = [
                _commands(b"HMGET", [keys[i] for i in outdated], group.fields)
                for group, (keys, _), outdated in zip(groups, work, again, strict=True)
            ]
            replies = iter(round_trip(self._client, b"".join(payload), count, timeout_s, self._own))
            for group, out, outdated in zip(groups, decoded, again, strict=True):
                for i in outdated:
                    out[i] = entity_from_fields(group, next(replies))

        now = self._clock()
        counted = [  # per group, per distinct key: (values blanked past TTL, values missing)
            [
                (expire_entity(g, values, times, now) if enforce_ttl else 0, fill_entity(g, values))
                for values, times in out
            ]
            for g, out in zip(groups, decoded, strict=True)
        ]
        n_views, width = len(plan.views), len(plan.columns)
        flat: list[tuple] = []  # every row's views' values, rows and views in plan order
        event_ts: list[float] = []
        stale_rows: list[int] = []
        missing_rows: list[int] = []
        for row in range(n):
            parts: list[tuple] = [()] * n_views
            times_of_row = [math.nan] * n_views
            blanked = gaps = 0
            for group, (_, index), out, counts in zip(groups, work, decoded, counted, strict=True):
                i = index[row]
                values, times = out[i]
                stale, missing = counts[i]
                blanked += stale
                gaps += missing
                for position, part, at in zip(group.positions, values, times, strict=True):
                    parts[position] = part
                    times_of_row[position] = at
            flat += parts
            event_ts += times_of_row
            stale_rows.append(blanked)
            missing_rows.append(gaps)
        # Defaults are in and gaps counted already: numpy is entered only to hold the result,
        # each call costing several us here, just after the round trip has left the caches cold.
        values = np.fromiter(itertools.chain.from_iterable(flat), np.float32, n * width)
        return FeatureRows(
            values.reshape(n, width),
            np.array(missing_rows, np.int32),
            np.array(stale_rows, np.int32),
            np.array(event_ts, np.float64).reshape(n, n_views),
            sum(len(keys) for keys, _ in work),
        )

    def _read_few_native(
        self,
        plan: ReadPlan,
        entities: Mapping[str, Sequence],
        n: int,
        enforce_ttl: bool,
        timeout_s: float | None,
    ) -> FeatureRows:
        """`_read_few` with the replies decoded and assembled in one C call
        (augur.features._native.read_few) when every group is read from vectors. An entity
        whose vector is outdated, or a reply the C does not expect, sends the read to
        `_read_few`, which reads again and takes Feast's fields where needed."""
        groups = plan.groups
        every_packed = not self._fields_mode and self._vectors and plan.packable  # the usual
        if not (every_packed or all(self._packed(g) for g in groups)):
            return self._read_few(plan, entities, n, enforce_ttl, timeout_s)
        if n == 1 and plan.int64_keys:  # the commonest read: its commands from templates
            payload, spec = self._one_entity(plan, entities)
            count = len(groups)
        else:
            work = [self._few_keys(plan, g, entities, n) for g in groups]
            payload = b"".join(
                _group_commands(group, keys, True, False)
                for group, (keys, _) in zip(groups, work, strict=True)
            )
            count = sum(len(keys) for keys, _ in work)
            spec = [
                (len(keys), g.native_views, len(g.columns), inverse, *g.native_assembly)
                for g, (keys, inverse) in zip(groups, work, strict=True)
            ]
        got = round_trip(self._client, payload, count, timeout_s, self._own, raw=True)
        if isinstance(got, bytearray):
            values, missing, stale, event_ts = _native_outputs(plan, n)
            defaults = plan.defaults if plan.has_defaults else None
            end, fallbacks = native.read_few(
                got, 0, spec, self._clock(), enforce_ttl, defaults, values, missing, stale, event_ts
            )
            if end == len(got) and not fallbacks:
                return FeatureRows(values, missing, stale, event_ts, count)
        return self._read_few(plan, entities, n, enforce_ttl, timeout_s)

    def _one_entity(self, plan: ReadPlan, entities: Mapping[str, Sequence]) -> tuple[bytes, list]:
        """The commands (HMGET of each group's vectors) and read_few's spec of a read of one
        entity, every join key int64: the bytes `_group_commands` builds, from templates
        built once per plan that leave only the ids to pack. Built per read, a key and its
        command were about a fifth of such a read's own time."""
        kept = self._one_entity_plans.get(id(plan))
        if kept is None or kept[0] is not plan:
            if len(self._one_entity_plans) >= _PLANS_KEPT:  # plans a reload has replaced
                self._one_entity_plans.clear()
            kept = (plan, self._one_entity_template(plan), [g.native_one for g in plan.groups])
            self._one_entity_plans[id(plan)] = kept
        _, (first, rest), spec = kept
        parts = [first]
        for name, after in rest:
            parts += (_I64.pack(entities[name][0]), after)
        return b"".join(parts), spec

    def _one_entity_template(self, plan: ReadPlan) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The RESP of every group's HMGET of its vectors, as the bytes before the first id
        and, per id in order, its join key and the bytes after it up to the next id."""
        texts, names = [b""], []
        for group in plan.groups:
            encoder = self._encoder(plan, group)
            head, tail = _command_parts(b"HMGET", group.vector_fields)
            before, part, after = _around_int64_ids(encoder, head, tail)
            texts[-1] += before
            for i in encoder.order:
                texts[-1] += part
                names.append(group.join_keys[i])
                texts.append(b"")
            texts[-1] += after
        return texts[0], list(zip(names, texts[1:], strict=True))

    def _hgetall(self, group: KeyGroup) -> bool:
        """Whether the group's fields are read with HGETALL rather than an HMGET naming each."""
        return len(group.fields) >= self._hgetall_from

    def _packed(self, group: KeyGroup) -> bool:
        """Whether this read takes `group` from its packed vectors."""
        return self._vectors and group.packable and group.cache_id not in self._fields_mode

    def _learn(self, group: KeyGroup, packed: bool, fallbacks: int, with_data: int) -> None:
        """Read a group from Feast's fields for a while when its vectors mostly fail (a store
        written by plain `feast materialize`), then try vectors again."""
        cache_id = group.cache_id
        if packed:
            if fallbacks * 2 > with_data:
                self._fields_mode[cache_id] = _FIELDS_READS
        elif cache_id in self._fields_mode:
            left = self._fields_mode.get(cache_id, 1) - 1
            if left <= 0:
                self._fields_mode.pop(cache_id, None)
            else:
                self._fields_mode[cache_id] = left

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

    def _keys(
        self, plan: ReadPlan, group: KeyGroup, entities: Mapping[str, Sequence], n: int
    ) -> tuple[list[bytes], np.ndarray]:
        """Distinct Redis keys of the group and, per request row, its index among them."""
        encoder = self._encoder(plan, group)
        columns = [entities[k] for k in group.join_keys]
        if self._native and self.cache is None and all(t == "int64" for t in encoder.types):
            return _NativeKeys.build(encoder, columns, n)
        if n >= _VECTORISED_KEYS_FROM and all(t == "int64" for t in encoder.types):
            if len(columns) == 1:
                distinct, inverse = np.unique(np.asarray(columns[0], np.int64), return_inverse=True)
                built = encoder.keys([distinct])
            else:  # each row's ids as one opaque value: sorted by bytes, 2.5x a dict's speed
                rows = np.ascontiguousarray(np.array(columns, np.int64).T)
                distinct, inverse = np.unique(
                    rows.view(f"V{rows.shape[1] * 8}").ravel(), return_inverse=True
                )
                distinct = distinct.view(np.int64).reshape(len(distinct), rows.shape[1])
                built = encoder.keys([distinct[:, i] for i in range(len(columns))])
            raw, width = built.tobytes(), built.shape[1]
            keys = _Keys(raw[i : i + width] for i in range(0, len(raw), width))
            keys.matrix = built
            return keys, inverse.ravel()
        keys, inverse = self._few_keys(plan, group, entities, n)
        return keys, np.array(inverse, np.intp)

    def _few_keys(
        self, plan: ReadPlan, group: KeyGroup, entities: Mapping[str, Sequence], n: int
    ) -> tuple[list[bytes], list[int]]:
        """`_keys` in plain lists: a dict and one key built per distinct entity."""
        encoder = self._encoder(plan, group)
        if n == 1:  # the commonest read of all: nothing to deduplicate
            return [encoder.key([entities[k][0] for k in group.join_keys])], [0]
        index: dict[tuple, int] = {}
        rows = zip(*(entities[k] for k in group.join_keys), strict=True)
        inverse = [index.setdefault(key, len(index)) for key in rows]
        return [encoder.key(k) for k in index], inverse

    def _encoder(self, plan: ReadPlan, group: KeyGroup) -> KeyEncoder:
        encoder = self._encoders.get((plan.project, group.join_keys))
        if encoder is None:
            types = [plan.entity_types[k] for k in group.join_keys]
            encoder = KeyEncoder(group.join_keys, types, plan.project)
            self._encoders[(plan.project, group.join_keys)] = encoder
        return encoder


def _native_outputs(plan: ReadPlan, n: int) -> tuple[np.ndarray, ...]:
    """The arrays augur.features._native's assembly fills for `n` rows: values, missing and
    stale counts, and each view's event time (NaN where no row of it was found)."""
    event_ts = np.empty((n, len(plan.views)))
    event_ts.fill(math.nan)  # np.full's Python wrapper costs more than the fill at these sizes
    return (
        np.empty((n, len(plan.columns)), np.float32),
        np.empty(n, np.int32),
        np.empty(n, np.int32),
        event_ts,
    )


def _assemble(plan: ReadPlan, n: int, work: list, fetches: list, now: float, enforce_ttl: bool):
    """The result of a read from its groups' distinct entities, assembled in C
    (augur.features._native): `read`'s numpy assembly and `_rows` in one call."""
    values, missing, stale, event_ts = _native_outputs(plan, n)
    groups = [
        (
            np.ascontiguousarray(fetch.vals, np.float32),
            np.ascontiguousarray(fetch.ts, np.float64),
            np.ascontiguousarray(inverse, np.int64),
            *group.native_assembly,
        )
        for group, (_, inverse), fetch in zip(plan.groups, work, fetches, strict=True)
    ]
    defaults = plan.defaults if plan.has_defaults else None
    native.assemble(groups, now, enforce_ttl, defaults, values, missing, stale, event_ts)
    return FeatureRows(values, missing, stale, event_ts, sum(len(k) for k, _ in work))


def _rows(plan, values, stale, event_ts, distinct_keys, cache_hits) -> FeatureRows:
    """The result of a read from its assembled values (NaN where missing or past TTL):
    missing values counted, then declared defaults filled in."""
    absent = np.isnan(values)
    if plan.has_defaults:
        values = np.where(absent, plan.defaults, values)
    return FeatureRows(
        values, absent.sum(1, dtype=np.int32), stale, event_ts, distinct_keys, cache_hits
    )


class _Fetch:
    """One key group's part of a read: the commands it sends and the rows it decodes."""

    def __init__(self, group: KeyGroup, keys: list[bytes], hgetall: bool):
        self.group = group
        self.keys = keys
        self.hgetall = hgetall
        self.packed = False
        self.vals = np.empty((0, len(group.columns)), np.float32)
        self.ts = np.empty((0, len(group.views)))
        self.fallback: np.ndarray = np.empty(0, np.intp)
        self.fallbacks = 0  # entities whose vectors were outdated or absent
        self.with_data = 0  # entities with a value in at least one view

    def payload(self) -> bytes:
        return _group_commands(self.group, self.keys, self.packed, self.hgetall)

    def decode(self, replies: list, offset: int) -> int:
        mine = replies[offset : offset + len(self.keys)]
        if not self.packed:
            mine = _as_fields(self.group, mine, self.hgetall)
            self.vals, self.ts = decode_fields(self.group, mine)
        else:
            self.vals, self.ts, fallback, self.with_data = decode_vectors(self.group, mine)
            self.fallback = np.flatnonzero(fallback)
            self.fallbacks = len(self.fallback)
        return offset + len(self.keys)

    def decode_raw(self, data: bytearray, offset: int) -> int:
        """`decode` from the bytes received (round_trip's `raw`): vectors checked and
        decoded in C; any other replies (Feast's fields, or a shape the C does not expect)
        parsed and decoded as `decode` does."""
        count = len(self.keys)
        end, _ = native.scan(data, offset, count)
        if self.packed:
            group = self.group
            vals = np.empty((count, len(group.columns)), np.float32)
            ts = np.empty((count, len(group.views)))
            flags = np.empty(count, np.uint8)
            done, fallbacks, with_data = native.decode_vectors(
                data, offset, count, group.native_views, len(group.columns), vals, ts, flags
            )
            if done == end:
                self.vals, self.ts = vals, ts
                if fallbacks:
                    self.fallback = np.flatnonzero(flags & 1)
                self.fallbacks, self.with_data = fallbacks, with_data
                return end
        self.decode(parse(data, offset, end, count), 0)
        return end

    def fallback_payload(self) -> bytes:
        return _commands(b"HMGET", [self.keys[i] for i in self.fallback], self.group.fields)

    def decode_fallback(self, replies: list, offset: int) -> int:
        if not len(self.fallback):
            return offset
        mine = replies[offset : offset + len(self.fallback)]
        self.vals[self.fallback], self.ts[self.fallback] = decode_fields(self.group, mine)
        return offset + len(self.fallback)


def _group_commands(group: KeyGroup, keys: list[bytes], packed: bool, hgetall: bool) -> bytes:
    """A group's commands for its keys: HMGET of the vectors, else HGETALL or HMGET of the
    fields."""
    if packed:
        return _commands(b"HMGET", keys, group.vector_fields)
    if hgetall:
        return _commands(b"HGETALL", keys, ())
    return _commands(b"HMGET", keys, group.fields)


def _as_fields(group: KeyGroup, replies: list, hgetall: bool) -> list:
    """Replies of `_group_commands` for the fields, each as an HMGET reply of `group.fields`."""
    if hgetall:
        return [hgetall_as_fields(reply, group.fields) for reply in replies]
    return replies


@functools.lru_cache(maxsize=1024)
def _command_parts(name: bytes, fields: tuple[bytes, ...]) -> tuple[bytes, bytes]:
    """The RESP before and after the key of `name key *fields`: built once per field set."""
    head = b"*%d\r\n" % (2 + len(fields)) + command_args(name)
    return head, command_args(*fields)


class _NativeKeys:
    """Distinct int64 entities of a group, numbered in C (augur.features._native), whose
    commands are built in C too; a key's bytes are built only when asked for (entities whose
    vectors are outdated)."""

    __slots__ = ("_encoder", "columns", "first")

    def __init__(self, encoder: KeyEncoder, columns: list[np.ndarray], first: np.ndarray):
        self._encoder = encoder
        self.columns = columns  # in key order: int64 arrays or lists of ints
        self.first = first  # per distinct entity, the request row it first appears in

    @classmethod
    def build(cls, encoder: KeyEncoder, columns: list, n: int) -> tuple[_NativeKeys, np.ndarray]:
        """The group's distinct keys and, per request row, its index among them."""
        ordered = [  # lists (the request decoder's) go to C as they are
            c if isinstance(c, list | tuple) else np.ascontiguousarray(c, np.int64)
            for c in (columns[i] for i in encoder.order)
        ]
        inverse, first = np.empty(n, np.int64), np.empty(n, np.int64)
        distinct = native.dedupe_int64(ordered, inverse, first)
        return cls(encoder, ordered, first[:distinct]), inverse

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, i: int) -> bytes:
        head, part, tail = self._encoder.int64_parts()
        row = self.first[i]
        values = (int(c[row]).to_bytes(8, "little", signed=True) for c in self.columns)
        return head + b"".join(part + v for v in values) + tail

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def commands(self, head: bytes, tail: bytes) -> bytes:
        """`head` + the key as a bulk string + `tail`, per key."""
        before, part, after = _around_int64_ids(self._encoder, head, tail)
        return native.commands_int64(self.columns, self.first, len(self), before, part, after)


def _around_int64_ids(encoder: KeyEncoder, head: bytes, tail: bytes) -> tuple[bytes, bytes, bytes]:
    """`head` + a key of `encoder` (int64 join keys) as a bulk string + `tail`, in the parts
    around the key's 8-byte ids: the bytes before the ids, what precedes each id, and the
    bytes after the last."""
    key_head, part, key_tail = encoder.int64_parts()
    size = len(key_head) + len(encoder.order) * (len(part) + 8) + len(key_tail)
    return head + b"$%d\r\n" % size + key_head, part, key_tail + b"\r\n" + tail


class _Keys(list):
    """Distinct keys of a group, built at once as the rows of a uint8 `matrix` (int64 join
    keys: every key the same width), so their commands can be built at once too."""

    matrix: np.ndarray


def _commands(name: bytes, keys: list[bytes], fields: tuple[bytes, ...]) -> bytes:
    head, tail = _command_parts(name, fields)
    if isinstance(keys, _NativeKeys):
        return keys.commands(head, tail)
    matrix = getattr(keys, "matrix", None)
    if matrix is not None and len(matrix) == len(keys):
        width = matrix.shape[1]
        before = np.frombuffer(head + b"$%d\r\n" % width, np.uint8)
        after = np.frombuffer(b"\r\n" + tail, np.uint8)
        out = np.empty((len(keys), len(before) + width + len(after)), np.uint8)
        out[:, : len(before)] = before
        out[:, len(before) : len(before) + width] = matrix
        out[:, len(before) + width :] = after
        return out.tobytes()
    return b"".join(b"%s$%d\r\n%s\r\n%s" % (head, len(k), k, tail) for k in keys)


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
