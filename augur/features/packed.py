"""Packed feature vectors: one view's features as one binary hash field, beside Feast's.

Augur's writer stores, in the same Redis hash as Feast's per-feature fields, a field
`_av:<view>` holding every feature of the view as float32 in schema order, the view's layout
id and the event time it was written with, both as numbers and as the exact bytes it wrote
to `_ts:<view>`. A reader trusts a vector only when its layout is the plan's and those
bytes equal `_ts:<view>`: a later plain `feast materialize` or Feast write replaces the
fields and `_ts` but not the vector, and the mismatch sends the reader back to Feast's
fields. Missing values are NaN.

    offset  0  b"AV"
            2  layout id   u32   (mmh3 of the view's "name:dtype" list: a schema change
                                  makes old vectors unreadable rather than misread)
            6  seconds     i64   event time, as in the google.protobuf.Timestamp of _ts
           14  nanos       i32
           18  stamp size  u8    the serialized Timestamp written to _ts, and its bytes
           19  stamp       20 bytes, zero-padded (a Timestamp takes at most 17)
           39  values      f32 x features
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import mmh3
import numpy as np

from augur.features.ragged import Ragged

MAGIC = b"AV"
STAMP_BYTES = 20
HEADER = np.dtype(
    [
        ("magic", "S2"),
        ("layout", "<u4"),
        ("seconds", "<i8"),
        ("nanos", "<i4"),
        ("stamp_size", "u1"),
        ("stamp", "u1", (STAMP_BYTES,)),
    ]
)
HEADER_BYTES = HEADER.itemsize  # 39


def vector_field(view: str) -> bytes:
    return f"_av:{view}".encode()


def layout_id(view: str, features: Sequence[tuple[str, str]]) -> int:
    """Names the vector layout of `view`: its (feature, Feast dtype) pairs in schema order."""
    text = view + "|" + ",".join(f"{name}:{dtype}" for name, dtype in features)
    return mmh3.hash(text, signed=False)


def pack(
    layout: int, seconds: np.ndarray, nanos: np.ndarray, stamps: Ragged, values: np.ndarray
) -> Ragged:
    """One vector per row of `values` (float32 (n, features), NaN where absent); `stamps`
    are the rows' `_ts:<view>` bytes."""
    n, width = values.shape
    out = np.zeros(n, packed_row(width))
    out["magic"] = MAGIC
    out["layout"] = layout
    out["seconds"] = seconds
    out["nanos"] = nanos
    out["stamp_size"] = stamps.lengths
    out["stamp"][:, : stamps.data.shape[1]] = stamps.data
    out["values"] = values
    return Ragged.fixed(out.view(np.uint8).reshape(n, out.dtype.itemsize))


def unpack(raws: Sequence[bytes | None], layout: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode n stored vectors at once: (ok, rows). `ok` marks vectors of `layout`; `rows` is
    a structured array of the header fields and values (float32 (n, width)), meaningful
    only where ok. Whether a vector is current (its stamp equals `_ts:<view>`) is the
    reader's to judge."""
    row = packed_row(width)
    blank = bytes(row.itemsize)  # fails the magic check: stands in for absent vectors
    size = row.itemsize
    rows = np.frombuffer(
        b"".join(r if r is not None and len(r) == size else blank for r in raws), row, len(raws)
    )
    return (rows["magic"] == MAGIC) & (rows["layout"] == layout), rows


@functools.lru_cache(maxsize=256)
def packed_row(width: int) -> np.dtype:
    """The structured dtype of a stored vector of `width` features."""
    return np.dtype([*HEADER.descr, ("values", "<f4", (width,))])
