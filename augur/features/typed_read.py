"""The typed read: a plan's stored features as the Python values Feast's `to_dict()` gives
(strings, lists, maps, timestamps...), in one pipelined round trip of HMGETs of Feast's fields.

What GetOnlineFeatures answers; models read float32 through augur.features.reader's fast
path instead. A value older than its view's TTL is served as missing and counted as stale,
as that path does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from augur.features.commands import for_group
from augur.features.entities import GroupKeys
from augur.features.fetch import Fetcher
from augur.features.plan import ReadPlan
from augur.features.typed import to_python
from augur.features.values import decode_timestamp


@dataclass(frozen=True)
class TypedRows:
    """n rows of a plan's stored columns, by full name ("<view>__<feature>")."""

    columns: dict[str, list]  # one Python value per row; None where missing or past TTL
    stale: np.ndarray  # int32 (n,): values blanked because older than their view's TTL


def read_typed(
    fetcher: Fetcher,
    plan: ReadPlan,
    entities: Mapping[str, Sequence],
    n: int,
    now: float,
    timeout_s: float | None,
) -> TypedRows:
    work = []
    payload, count = [], 0
    for group in plan.groups:
        keys, inverse = GroupKeys(plan, group).few(entities, n)
        payload.append(for_group(group, keys, packed=False, hgetall=False))
        work.append((group, len(keys), inverse))
        count += len(keys)
    replies = fetcher.trip(b"".join(payload), count, timeout_s)
    columns: dict[str, list] = {}
    stale = np.zeros(n, np.int32)
    at = 0
    for group, size, inverse in work:
        decoded = [_entity(group, reply, now) for reply in replies[at : at + size]]
        at += size
        names = [plan.columns[c].full_name for c in group.columns]
        for j, name in enumerate(names):
            columns[name] = [decoded[i][0][j] for i in inverse]
        stale += np.array([decoded[i][1] for i in inverse], np.int32)
    return TypedRows(columns, stale)


def _entity(group, reply: list, now: float) -> tuple[list, int]:
    """One entity's values of `group` (None past TTL) and how many were blanked so."""
    n_feat = len(group.fields) - len(group.views)
    values = [to_python(raw) for raw in reply[:n_feat]]
    stale = 0
    for j, view in enumerate(group.scalar):
        if now - decode_timestamp(reply[n_feat + j]) > view.ttl:  # NaN age: False
            part = values[view.fields]
            stale += sum(v is not None for v in part)
            values[view.fields] = [None] * len(part)
    return values, stale
