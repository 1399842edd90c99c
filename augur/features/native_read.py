"""The read path through augur.features._native's C loops: the same results as `PythonRead`.

One `NativeRead` per plan. A read of a few rows is decoded and assembled in one C call
(`read_few`), its commands from a template where it is one entity of int64 ids, its keys
deduplicated in a dict; a read of more rows is deduplicated and its commands built in C per
group, then decoded and assembled by the same one call. Replies that call does not take
(an outdated vector, a reply of another shape) are decoded per group instead, Feast's fields
read for the outdated entities; a few rows go to the Python path, the reference, which reads
them again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from augur.features import commands, rows
from augur.features.entities import GroupKeys
from augur.features.fetch import Fetcher
from augur.features.native import native
from augur.features.python_read import PythonRead
from augur.features.rows import FeatureRows

# `FEW_VIEW_READS` of augur.features.python_read for the C: its one-call read of a few rows
# against its columnar path, whose numpy arrays per group cost a fixed few dozen calls:
# fraud plan (3 views), vs the Redis floor in the same run, 1.52x / 1.69x at 4 rows, 1.59x /
# 1.72x at 8, 1.71x both at 16, 1.70x / 1.60x at 32.
FEW_VIEW_READS = 48


class NativeRead:
    """Reads of one plan in C, with `python` (the same plan's PythonRead) where C cannot."""

    def __init__(
        self,
        python: PythonRead,
        keys: Sequence[GroupKeys],
        fetcher: Fetcher,
        clock: Callable[[], float],
    ):
        plan = python.plan
        self.plan = plan
        self._python = python
        self._keys = keys
        # per group: its distinct keys in C where its ids are all int64, else numpy's
        self._distinct = [k.native if k.int64 else k.many for k in keys]
        self._fetcher = fetcher
        self._clock = clock
        views = len(plan.views)
        self._few_up_to = FEW_VIEW_READS // views if views else 0
        # a one-entity read of int64 ids (the commonest read): commands and read_few's spec
        self._template = (
            commands.OneEntityTemplate(plan.groups, [k.encoder for k in keys])
            if plan.int64_keys
            else None
        )
        self._one_spec = [g.native_one for g in plan.groups]

    def read(
        self,
        entities: Mapping[str, Sequence],
        n: int,
        enforce_ttl: bool,
        timeout_s: float | None,
    ) -> FeatureRows:
        if 0 < n <= self._few_up_to:
            return self._read_few(entities, n, enforce_ttl, timeout_s)
        plan, fetcher = self.plan, self._fetcher
        work = [distinct(entities, n) for distinct in self._distinct]
        fetches = [fetcher.group(g, k) for g, (k, _) in zip(plan.groups, work, strict=True)]
        replies = None
        if fetcher.every_packed(plan):
            # the usual read: decoded and assembled in one C call, as read_few does (a numpy
            # array per group and step cost more than the C, each one's code cold in a server)
            count = sum(len(keys) for keys, _ in work)
            payload = b"".join(f.payload() for f in fetches)
            replies = fetcher.trip(payload, count, timeout_s, raw=True)
            if isinstance(replies, bytearray):
                spec = [
                    (len(keys), g.native_views, len(g.columns), inverse, *g.native_assembly)
                    for g, (keys, inverse) in zip(plan.groups, work, strict=True)
                ]
                got = self._whole(replies, spec, n, count, enforce_ttl)
                if got is not None:
                    return got
            # an outdated vector, or a reply of another shape: the same replies, per group
        fetcher.fetch(fetches, timeout_s, raw=True, replies=replies)
        return rows.assemble_native(plan, n, work, fetches, self._clock(), enforce_ttl)

    def _whole(
        self, replies: bytearray, spec: list, n: int, count: int, enforce_ttl: bool
    ) -> FeatureRows | None:
        """The rows from every group's replies, decoded and assembled by read_few; None
        when an entity needs Feast's fields or a reply is of another shape."""
        plan = self.plan
        values, missing, stale, event_ts = rows.outputs(plan, n)
        defaults = plan.defaults if plan.has_defaults else None
        end, fallbacks, *totals = native.read_few(
            replies, 0, spec, self._clock(), enforce_ttl, defaults, values, missing, stale, event_ts
        )
        if end == len(replies) and not fallbacks:
            return FeatureRows(values, missing, stale, event_ts, count, totals=tuple(totals))
        return None

    def _read_few(
        self,
        entities: Mapping[str, Sequence],
        n: int,
        enforce_ttl: bool,
        timeout_s: float | None,
    ) -> FeatureRows:
        """The replies decoded and assembled in one C call (augur.features._native.read_few)
        when every group is read from vectors. An entity whose vector is outdated, or a reply
        the C does not expect, sends the read to `PythonRead.read_few`, which reads again and
        takes Feast's fields where needed."""
        plan = self.plan
        if not self._fetcher.every_packed(plan):
            return self._python.read_few(entities, n, enforce_ttl, timeout_s)
        if n == 1 and self._template is not None:
            payload, spec, count = self._template.fill(entities), self._one_spec, len(plan.groups)
        else:
            work = [keys.few(entities, n) for keys in self._keys]
            payload = b"".join(
                commands.for_group(group, keys, True, False)
                for group, (keys, _) in zip(plan.groups, work, strict=True)
            )
            count = sum(len(keys) for keys, _ in work)
            spec = [
                (len(keys), g.native_views, len(g.columns), inverse, *g.native_assembly)
                for g, (keys, inverse) in zip(plan.groups, work, strict=True)
            ]
        got = self._fetcher.trip(payload, count, timeout_s, raw=True)
        if isinstance(got, bytearray):
            whole = self._whole(got, spec, n, count, enforce_ttl)
            if whole is not None:
                return whole
        return self._python.read_few(entities, n, enforce_ttl, timeout_s)
