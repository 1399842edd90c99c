"""Decoding one key group's replies into float32 rows: from Augur's packed vectors, or from
Feast's per-feature fields (HMGET or HGETALL replies), and blanking values past their TTL.

augur.features.fetch fetches; this module turns bytes into numbers. Each path
has a per-entity form for a few entities and a numpy form for many, because numpy's fixed
cost per call dominates small reads.
"""

from __future__ import annotations

import itertools
import math
import operator
import struct

import numpy as np

from augur.features.packed import HEADER_BYTES, MAGIC, STAMP_BYTES, packed_row
from augur.features.packed import unpack as unpack_vectors
from augur.features.plan import KeyGroup, ViewRead
from augur.features.ragged import Ragged
from augur.features.values import decode_column, decode_number, decode_timestamp

# One numpy pass over a group's values beats one Python call per value from about 40
# entities (measured on the fraud plan: 1.3x faster at 100 entities, 1.6x at 1,000, 0.8x
# at 16); below that numpy's fixed cost per call dominates.
_COLUMNAR_FROM = 48
_VECTOR_HEAD = struct.Struct("<2sIqiB")  # augur.features.packed.HEADER up to the stamp
_STAMP_AT = _VECTOR_HEAD.size
_STAMP_COLUMNS = np.arange(STAMP_BYTES)


def decode_vectors(group: KeyGroup, replies: list):
    """HMGET replies of `group.vector_fields`: (values, event times, a mask of the entities
    whose vectors are absent or outdated and need Feast's fields, how many entities have
    data in any view)."""
    if len(replies) >= _COLUMNAR_FROM:
        return _vectors_columnar(group, replies)
    return _vectors_one_by_one(group, replies)


def hgetall_as_fields(reply, fields: tuple[bytes, ...]) -> list:
    """HGETALL's reply (a flat RESP2 list or a RESP3 map) as an HMGET reply for `fields`."""
    stored = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
    return [stored.get(f) for f in fields]


def decode_fields(group: KeyGroup, replies: list) -> tuple[np.ndarray, np.ndarray]:
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


def _vectors_columnar(group: KeyGroup, replies: list):
    """Vectors of many entities, a few numpy passes per view: (values, event times, the
    entities needing Feast's fields, how many entities have data). A vector is current when
    the stamp it carries is byte-equal to `_ts:<view>`."""
    n, n_views = len(replies), len(group.views)
    vals = np.full((n, len(group.columns)), np.nan, np.float32)
    ts = np.full((n, n_views), np.nan)
    fallback = np.zeros(n, bool)
    with_data = np.zeros(n, bool)
    start = 0
    for j, view in enumerate(group.views):
        width = len(view.features)
        vectors = list(map(operator.itemgetter(j), replies))
        stamps = list(map(operator.itemgetter(n_views + j), replies))
        rows = _all_current(vectors, stamps, view)
        if rows is not None:
            vals[:, start : start + width] = rows["values"][:, group.packed_index[j]]
            ts[:, j] = rows["seconds"] + rows["nanos"] / 1e9
            with_data[:] = True
            start += width
            continue
        have = np.fromiter((raw is not None for raw in stamps), bool, n)
        ok, rows = unpack_vectors(vectors, view.layout, view.width)
        stored = Ragged.from_bytes([raw or b"" for raw in stamps])
        valid = ok & have & (rows["stamp_size"] == stored.lengths)
        if stored.data.shape[1] <= STAMP_BYTES:
            carried = rows["stamp"][:, : stored.data.shape[1]]
            valid &= (carried == stored.data).all(axis=1)
        else:  # no stamp Augur writes is this long
            valid &= False
        vals[valid, start : start + width] = rows["values"][valid][:, group.packed_index[j]]
        ts[valid, j] = rows["seconds"][valid] + rows["nanos"][valid] / 1e9
        fallback |= have & ~valid  # their event times come with the fields
        with_data |= have
        start += width
    return vals, ts, fallback, int(with_data.sum())


def _all_current(vectors: list, stamps: list, view: ViewRead) -> np.ndarray | None:
    """Every entity's vector of `view`, decoded, if all are present and current (the common
    case: a store Augur's writer keeps): a handful of whole-array checks, where the general
    path makes a pass per check and pads the stamps; else None."""
    try:
        blob, stored = b"".join(vectors), b"".join(stamps)
    except TypeError:  # an absent value: the general path
        return None
    row = packed_row(view.width)
    if len(blob) != len(vectors) * row.itemsize or len(set(map(len, vectors))) != 1:
        return None
    rows = np.frombuffer(blob, row)
    sizes = np.fromiter(map(len, stamps), np.intp, len(stamps))
    if not (
        (rows["magic"] == MAGIC).all()
        and (rows["layout"] == view.layout).all()
        and (rows["stamp_size"] == sizes).all()
        # every carried stamp, cut to its size and concatenated, equals every `_ts`
        and rows["stamp"][sizes[:, None] > _STAMP_COLUMNS].tobytes() == stored
    ):
        return None
    return rows


def _vectors_one_by_one(group: KeyGroup, replies: list):
    """The same as `_vectors_columnar`, an entity at a time in Python scalars: cheaper for a
    few entities."""
    n = len(replies)
    values, times, fallback, with_data = [], [], np.zeros(n, bool), 0
    for i, reply in enumerate(replies):
        parts, at, fallback[i], seen = entity_from_vectors(group, reply)
        values += parts
        times += at
        with_data += seen
    flat = np.fromiter(itertools.chain.from_iterable(values), np.float32, n * len(group.columns))
    ts = np.array(times, np.float64).reshape(n, len(group.views))
    return flat.reshape(n, len(group.columns)), ts, fallback, with_data


def entity_from_vectors(group: KeyGroup, reply: list) -> tuple[list, list, bool, bool]:
    """One entity's HMGET reply of `group.vector_fields` in Python scalars, for reads of a
    few entities: (per view, the plan's features as a tuple of floats; per view, the event
    time; whether a vector is absent or outdated while `_ts` is there, so Feast's fields are
    needed; whether any view has data)."""
    n_views = len(group.views)
    values: list[tuple] = []
    times: list[float] = []
    fallback = seen = False
    for j, view in enumerate(group.scalar):
        stamp = reply[n_views + j]
        if stamp is not None:
            seen = True
            raw = reply[j]
            if raw is not None and len(raw) == view.size:
                magic, layout, seconds, nanos, size = _VECTOR_HEAD.unpack_from(raw)
                if (
                    magic == MAGIC
                    and layout == view.layout
                    and size == len(stamp)
                    and raw[_STAMP_AT : _STAMP_AT + size] == stamp
                ):
                    values.append(view.pick(view.values.unpack_from(raw, HEADER_BYTES)))
                    times.append(seconds + nanos / 1e9)
                    continue
            fallback = True  # its values and event time come with the fields
        values.append(view.absent)
        times.append(math.nan)
    return values, times, fallback, seen


def entity_from_fields(group: KeyGroup, reply: list) -> tuple[list, list]:
    """One entity's HMGET reply of `group.fields` in Python scalars: (per view, its features
    as a tuple of floats; per view, the event time)."""
    n_feat = len(group.fields) - len(group.views)
    numbers = [decode_number(raw) for raw in reply[:n_feat]]
    values = [tuple(numbers[view.fields]) for view in group.scalar]
    return values, [decode_timestamp(raw) for raw in reply[n_feat:]]


def expire_entity(group: KeyGroup, values: list, times: list, now: float) -> int:
    """`expire` for one entity's scalars: blank (in place) the views older than their TTL;
    how many values that blanked."""
    stale = 0
    for j, view in enumerate(group.scalar):
        if now - times[j] > view.ttl:  # NaN age: False
            stale += sum(v == v for v in values[j])  # v != v only for NaN
            values[j] = view.absent
    return stale


def fill_entity(group: KeyGroup, values: list) -> int:
    """Count one entity's missing values (NaN: absent, null or blanked past TTL) and put
    the declared defaults in their place (in place); how many were missing. A view's sum
    finds the rare view with a gap, so the common one costs one C call, not a loop."""
    missing = 0
    for j, view in enumerate(group.scalar):
        part = values[j]
        total = sum(part)
        if total != total:  # NaN somewhere (or inf - inf, which counts none below)
            gaps = sum(v != v for v in part)
            missing += gaps
            if gaps and view.defaults is not None:
                values[j] = tuple(
                    d if v != v else v for v, d in zip(part, view.defaults, strict=True)
                )
    return missing


def expire(group: KeyGroup, vals: np.ndarray, ts: np.ndarray, now: float) -> np.ndarray:
    """Blank values older than their view's TTL (in place); the mask of those blanked."""
    expired = (now - ts[:, group.view_of_column]) > group.ttl_of_column  # NaN age: False
    stale = expired & ~np.isnan(vals)
    vals[expired] = np.nan
    return stale
