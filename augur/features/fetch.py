"""The round trips of a read: which commands each key group sends, and its replies decoded.

Every group goes into one pipeline (augur.features.resp's `round_trip`). A group is read from
Augur's packed vectors (augur.features.packed) where it can be; an entity whose vector a plain
Feast write has outdated is read again from Feast's fields in a second round trip, and a
group whose vectors mostly fail (a store only Feast wrote) is read from the fields for a
while (HGETALL when it is wide). Decoding is augur.features.decode's (and the C loops').
"""

from __future__ import annotations

import numpy as np
import redis

from augur.features import commands
from augur.features.cluster import ClusterStore
from augur.features.decode import decode_fields, decode_vectors, hgetall_as_fields
from augur.features.entities import DistinctKeys
from augur.features.native import native
from augur.features.plan import KeyGroup, ReadPlan
from augur.features.resp import OwnConnections, parse, round_trip
from augur.features.waiting import Waiting

# Past this many fields one HGETALL costs Redis less than an HMGET naming each (measured on
# the wide benchmark scenario, 275 fields: 5.6x less at 100 entities).
HGETALL_FROM = 64
# Reads of a group from fields, after its vectors mostly failed, before vectors are retried.
_FIELDS_READS = 200


class Fetcher:
    """A reader's way to Redis: one pipelined round trip on connections its threads keep,
    waiting as its Waiting says, and which groups are read from vectors (learnt per group,
    shared by every plan the reader reads)."""

    def __init__(
        self,
        client: redis.Redis | ClusterStore,
        waiting: Waiting,
        *,
        vectors: bool,
        hgetall_from: int,
    ):
        self._client = client
        self._waiting = waiting
        if isinstance(client, ClusterStore):
            # the same contract, per node: set once here, so one node's reads pay nothing
            self.trip = client.trips(waiting).trip  # type: ignore[method-assign]
        else:
            self._own = OwnConnections(client)
        self._vectors = vectors
        self._hgetall_from = hgetall_from
        # key groups read from Feast's fields instead of vectors: reads left until a retry
        self._fields_mode: dict[int, int] = {}

    def trip(
        self, payload: bytes, count: int, timeout_s: float | None, raw: bool = False
    ) -> list | bytearray:
        """resp.round_trip on this reader's connections, waiting as its Waiting says. (A
        method, not a functools.partial with keywords: that costs 0.6 us more a call.)"""
        return round_trip(
            self._client, payload, count, timeout_s, self._own, raw=raw, waiting=self._waiting
        )

    def hgetall(self, group: KeyGroup) -> bool:
        """Whether the group's fields are read with HGETALL rather than an HMGET naming each."""
        return len(group.fields) >= self._hgetall_from

    def packed(self, group: KeyGroup) -> bool:
        """Whether this read takes `group` from its packed vectors."""
        return self._vectors and group.packable and group.cache_id not in self._fields_mode

    def every_packed(self, plan: ReadPlan) -> bool:
        """Whether this read takes every group of `plan` from its vectors (the usual case
        answered by one look)."""
        if not self._fields_mode and self._vectors and plan.packable:
            return True
        return all(self.packed(g) for g in plan.groups)

    def learn(self, group: KeyGroup, packed: bool, fallbacks: int, with_data: int) -> None:
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

    def group(self, group: KeyGroup, keys: DistinctKeys) -> GroupFetch:
        """`group`'s part of a read of `keys`, sending what this read takes it from."""
        return GroupFetch(group, keys, self.packed(group), self.hgetall(group))

    def fetch(
        self,
        fetches: list[GroupFetch],
        timeout_s: float | None,
        raw: bool,
        replies: list | bytearray | None = None,
    ) -> None:
        """Every group's replies, decoded into its fetch: one round trip, and a second for
        entities whose vectors are outdated. `raw`: the first round trip's replies are
        decoded in C (augur.features._native) where their shape allows. `replies`: those of
        the first round trip, made already (a read in one C call that found it could not)."""
        count = sum(len(f.keys) for f in fetches)
        if count:
            if replies is None:
                payload = b"".join(f.payload() for f in fetches)
                replies = self.trip(payload, count, timeout_s, raw=raw)
            offset = 0
            if isinstance(replies, bytearray):
                for f in fetches:
                    offset = f.decode_raw(replies, offset)
            else:
                for f in fetches:
                    offset = f.decode(replies, offset)
        count = sum(len(f.fallback) for f in fetches)
        if count:  # entities whose vectors a plain Feast write has outdated: read the fields
            payload = b"".join(f.fallback_payload() for f in fetches)
            replies = self.trip(payload, count, timeout_s)
            offset = 0
            for f in fetches:
                offset = f.decode_fallback(replies, offset)
        for f in fetches:
            self.learn(f.group, f.packed, f.fallbacks, f.with_data)


class GroupFetch:
    """One key group's part of a read: the commands it sends and the rows it decodes."""

    def __init__(self, group: KeyGroup, keys: DistinctKeys, packed: bool, hgetall: bool):
        self.group = group
        self.keys = keys
        self.packed = packed
        self.hgetall = hgetall
        self.vals = np.empty((0, len(group.columns)), np.float32)
        self.ts = np.empty((0, len(group.views)))
        self.fallback: np.ndarray = np.empty(0, np.intp)
        self.fallbacks = 0  # entities whose vectors were outdated or absent
        self.with_data = 0  # entities with a value in at least one view

    def payload(self) -> bytes:
        return commands.for_group(self.group, self.keys, self.packed, self.hgetall)

    def decode(self, replies: list, offset: int) -> int:
        mine = replies[offset : offset + len(self.keys)]
        if not self.packed:
            mine = as_fields(self.group, mine, self.hgetall)
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
        if self.packed:
            group = self.group
            vals = np.empty((count, len(group.columns)), np.float32)
            ts = np.empty((count, len(group.views)))
            flags = np.empty(count, np.uint8)
            done, fallbacks, with_data = native.decode_vectors(
                data, offset, count, group.native_views, len(group.columns), vals, ts, flags
            )
            if done >= 0:  # all `count` replies, each of the expected shape: their end
                self.vals, self.ts = vals, ts
                if fallbacks:
                    self.fallback = np.flatnonzero(flags & 1)
                self.fallbacks, self.with_data = fallbacks, with_data
                return done
        end, _ = native.scan(data, offset, count)
        self.decode(parse(data, offset, end, count), 0)
        return end

    def fallback_payload(self) -> bytes:
        keys = DistinctKeys(self.keys[i] for i in self.fallback)
        return commands.for_group(self.group, keys, False, False)

    def decode_fallback(self, replies: list, offset: int) -> int:
        if not len(self.fallback):
            return offset
        mine = replies[offset : offset + len(self.fallback)]
        self.vals[self.fallback], self.ts[self.fallback] = decode_fields(self.group, mine)
        return offset + len(self.fallback)


def as_fields(group: KeyGroup, replies: list, hgetall: bool) -> list:
    """Replies of a group's commands for its fields, each as an HMGET reply of
    `group.fields`."""
    if hgetall:
        return [hgetall_as_fields(reply, group.fields) for reply in replies]
    return replies
