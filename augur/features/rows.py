"""Assembling a read's result: each group's decoded distinct entities -> FeatureRows.

Rows are put back in request order (each row's index among its group's distinct keys),
values past their view's TTL blanked and counted as stale, missing values counted, and
declared defaults filled in: in numpy, merged with the process-level row cache where there
is one, or in one C call (augur.features._native.assemble).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from augur.features.decode import expire
from augur.features.native import native
from augur.features.plan import KeyGroup, ReadPlan
from augur.features.row_cache import RowCache

if TYPE_CHECKING:
    from augur.features.fetch import GroupFetch


# slots, not frozen: made on every read, and a frozen dataclass's __init__ sets each field
# through object.__setattr__ (4-5x the time of a plain one); nothing assigns to one after
@dataclass(slots=True)
class FeatureRows:
    """Features for n request rows in the plan's column order."""

    values: np.ndarray  # float32 (n, features)
    missing: np.ndarray  # int32 (n,): features with no value (absent, null, or past TTL)
    stale: np.ndarray  # int32 (n,): of those, how many had a value older than its view's TTL
    event_ts: np.ndarray  # float64 (n, views): the view's event time, NaN when absent
    distinct_keys: int  # distinct entity keys needed, after deduplication
    cache_hits: int = 0  # of those, served from the process-level row cache
    # the sums of missing and stale where the C assembly kept them (None: sum the arrays)
    totals: tuple[int, int] | None = None

    def missing_and_stale(self) -> tuple[int, int]:
        """How many values are missing among the rows, and how many of those were stale."""
        if self.totals is not None:
            return self.totals
        # count_nonzero first: a sum sets up a reduction, and most reads have nothing missing
        missing = int(self.missing.sum()) if np.count_nonzero(self.missing) else 0
        return missing, int(self.stale.sum()) if np.count_nonzero(self.stale) else 0

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


def outputs(plan: ReadPlan, n: int) -> tuple[np.ndarray, ...]:
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


_F32, _F64, _I64 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int64)


def _as_c(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`array` as C-contiguous `dtype` for the C assembly, converted only where it is not
    already (it usually is): a numpy call skipped is some microseconds of cold code a read."""
    if array.dtype == dtype and array.flags.c_contiguous:
        return array
    return np.ascontiguousarray(array, dtype)


def assemble_native(
    plan: ReadPlan,
    n: int,
    work: Sequence[tuple],
    fetches: Sequence[GroupFetch],
    now: float,
    enforce_ttl: bool,
) -> FeatureRows:
    """The result from each group's distinct keys and per-row index (`work`) and decoded
    entities (`fetches`), assembled in C: `assemble`'s numpy and `with_defaults` in one call."""
    values, missing, stale, event_ts = outputs(plan, n)
    groups = [
        (
            _as_c(fetch.vals, _F32),
            _as_c(fetch.ts, _F64),
            _as_c(inverse, _I64),
            *group.native_assembly,
        )
        for group, (_, inverse), fetch in zip(plan.groups, work, fetches, strict=True)
    ]
    defaults = plan.defaults if plan.has_defaults else None
    totals = native.assemble(groups, now, enforce_ttl, defaults, values, missing, stale, event_ts)
    distinct = sum(len(k) for k, _ in work)
    return FeatureRows(values, missing, stale, event_ts, distinct, totals=totals)


def assemble(
    plan: ReadPlan,
    n: int,
    work: Sequence[tuple],
    fetches: Sequence[GroupFetch],
    now: float,
    enforce_ttl: bool,
    cache: RowCache | None = None,
    found: Sequence[list] | None = None,
) -> FeatureRows:
    """`assemble_native` in numpy; with a row cache, each group's cache hits (`found`, per
    distinct key: None when it was fetched) merged with its fresh reads, which are kept."""
    width = len(plan.columns)
    values = np.empty((n, width), np.float32)
    stale_mask = np.zeros((n, width), bool)
    event_ts = np.full((n, len(plan.views)), np.nan)
    hits = 0
    for i, (group, (keys, inverse), fetch) in enumerate(
        zip(plan.groups, work, fetches, strict=True)
    ):
        vals, ts = fetch.vals, fetch.ts
        if cache is not None and found is not None:
            if len(fetch.keys) != len(keys):  # merge cache hits and fresh reads in key order
                vals, ts = _merge(cache, group, keys, found[i], vals, ts)
                hits += len(keys) - len(fetch.keys)
            else:
                for j, key in enumerate(keys):
                    cache.put((group.cache_id, key), vals[j].copy(), ts[j].copy())
        cols = group.column_index
        if enforce_ttl:
            stale_mask[:, cols] = expire(group, vals, ts, now)[inverse]
        values[:, cols] = vals[inverse]
        event_ts[:, group.positions] = ts[inverse]
    stale = stale_mask.sum(1, dtype=np.int32)
    return with_defaults(plan, values, stale, event_ts, sum(len(k) for k, _ in work), hits)


def cached(cache: RowCache, group: KeyGroup, keys: Sequence[bytes]) -> list:
    """Per distinct key of `group`, its cached (values, event times), else None."""
    return [cache.get((group.cache_id, key)) for key in keys]


def _merge(cache: RowCache, group: KeyGroup, keys, found, fresh_vals, fresh_ts):
    vals = np.empty((len(keys), fresh_vals.shape[1]), np.float32)
    ts = np.empty((len(keys), fresh_ts.shape[1]), np.float64)
    j = 0
    for i, (key, hit) in enumerate(zip(keys, found, strict=True)):
        if hit is None:
            vals[i], ts[i] = fresh_vals[j], fresh_ts[j]
            cache.put((group.cache_id, key), fresh_vals[j].copy(), fresh_ts[j].copy())
            j += 1
        else:
            vals[i], ts[i] = hit
    return vals, ts


def with_defaults(plan, values, stale, event_ts, distinct_keys, cache_hits) -> FeatureRows:
    """The result of a read from its assembled values (NaN where missing or past TTL):
    missing values counted, then declared defaults filled in."""
    absent = np.isnan(values)
    if plan.has_defaults:
        values = np.where(absent, plan.defaults, values)
    return FeatureRows(
        values, absent.sum(1, dtype=np.int32), stale, event_ts, distinct_keys, cache_hits
    )
