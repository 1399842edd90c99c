"""The read path in Python (numpy and hiredis): the reference the C path is held equal to.

One `PythonRead` per plan. A read of many rows is decoded a group at a time into numpy and
assembled there (merged with the row cache where there is one); a read of a few rows is
decoded into Python scalars and enters numpy once, to build its result.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from augur.features import commands, rows
from augur.features.decode import (
    entity_from_fields,
    entity_from_vectors,
    expire_entity,
    fill_entity,
)
from augur.features.entities import DistinctKeys, GroupKeys
from augur.features.fetch import Fetcher, as_fields
from augur.features.plan import ReadPlan
from augur.features.row_cache import RowCache
from augur.features.rows import FeatureRows

# Up to this many rows times views a read is decoded in Python scalars and enters numpy
# once, to build its result (`read_few`): its cost grows with each entity's views, the
# columnar path's hardly. Measured against the columnar path: the fraud plan (3 views) 0.66x
# its time at 1 row, 0.91x at 32 rows; the wide one (25 views) 0.89x at 1 row, 0.98x at 3,
# 1.01x at 4, 1.06-1.14x from 6 to 32.
FEW_VIEW_READS = 96


class PythonRead:
    """Reads of one plan in Python: `read_few` for a few rows (never with a row cache), the
    columnar numpy path for more."""

    def __init__(
        self,
        plan: ReadPlan,
        keys: Sequence[GroupKeys],
        fetcher: Fetcher,
        clock: Callable[[], float],
        cache: RowCache | None = None,
    ):
        self.plan = plan
        self._keys = keys  # per group of the plan
        self._fetcher = fetcher
        self._clock = clock
        self._cache = cache
        views = len(plan.views)
        # the most rows read by `read_few`: n * views <= FEW_VIEW_READS
        self._few_up_to = FEW_VIEW_READS // views if views and cache is None else 0

    def read(
        self,
        entities: Mapping[str, Sequence],
        n: int,
        enforce_ttl: bool,
        timeout_s: float | None,
    ) -> FeatureRows:
        if 0 < n <= self._few_up_to:
            return self.read_few(entities, n, enforce_ttl, timeout_s)
        plan, fetcher, cache = self.plan, self._fetcher, self._cache
        work = [keys.many(entities, n) for keys in self._keys]
        if cache is None:
            found = None
            fetches = [fetcher.group(g, k) for g, (k, _) in zip(plan.groups, work, strict=True)]
        else:
            found = [rows.cached(cache, g, k) for g, (k, _) in zip(plan.groups, work, strict=True)]
            fetches = [
                fetcher.group(
                    g, DistinctKeys(k for k, hit in zip(keys, hits, strict=True) if hit is None)
                )
                for g, (keys, _), hits in zip(plan.groups, work, found, strict=True)
            ]
        fetcher.fetch(fetches, timeout_s, raw=False)
        return rows.assemble(plan, n, work, fetches, self._clock(), enforce_ttl, cache, found)

    def read_few(
        self,
        entities: Mapping[str, Sequence],
        n: int,
        enforce_ttl: bool,
        timeout_s: float | None,
    ) -> FeatureRows:
        """`read` for a few rows, without the row cache: each distinct entity is decoded into
        Python scalars and numpy is entered once, for the result. A one-entity read through
        the columnar path makes some 40 numpy calls of about 1 us each: most of its cost."""
        plan, fetcher = self.plan, self._fetcher
        groups = plan.groups
        work = [keys.few(entities, n) for keys in self._keys]
        packed = [fetcher.packed(g) for g in groups]
        payload = b"".join(
            commands.for_group(group, keys, vectors, fetcher.hgetall(group))
            for group, (keys, _), vectors in zip(groups, work, packed, strict=True)
        )
        count = sum(len(keys) for keys, _ in work)
        replies = iter(fetcher.trip(payload, count, timeout_s))

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
                fetcher.learn(group, True, len(outdated), with_data)
            else:
                mine = as_fields(group, mine, fetcher.hgetall(group))
                out, outdated = [entity_from_fields(group, reply) for reply in mine], []
                fetcher.learn(group, False, 0, 0)
            decoded.append(out)
            again.append(outdated)
        count = sum(len(a) for a in again)
        if count:  # vectors a plain Feast write has outdated: read those entities' fields
            payload = b"".join(
                commands.for_group(group, DistinctKeys(keys[i] for i in outdated), False, False)
                for group, (keys, _), outdated in zip(groups, work, again, strict=True)
            )
            replies = iter(fetcher.trip(payload, count, timeout_s))
            for group, out, outdated in zip(groups, decoded, again, strict=True):
                for i in outdated:
                    out[i] = entity_from_fields(group, next(replies))
        return _few_rows(plan, n, work, decoded, self._clock(), enforce_ttl)


def _few_rows(
    plan: ReadPlan, n: int, work: list, decoded: list[list], now: float, enforce_ttl: bool
) -> FeatureRows:
    """`read_few`'s result from each group's decoded entities: TTL and defaults applied to
    each distinct entity, then rows put together in request order."""
    groups = plan.groups
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
