"""Feast `ValueProto` bytes <-> numbers, without building protobuf objects.

The dtype table is the one place that maps Feast value types to their wire tags. A
scalar `feast.types.Value` is a oneof, so its encoding is one tag and one payload.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from augur.features.ragged import Ragged, concat

_F64 = struct.Struct("<d")
_F32 = struct.Struct("<f")


@dataclass(frozen=True)
class DType:
    name: str  # the Feast type name, e.g. "Float64"
    tag: int  # the protobuf tag byte of the oneof field in feast.types.Value
    wire: str  # "varint" | "fixed64" | "fixed32"


DTYPES: dict[str, DType] = {
    "Int32": DType("Int32", (3 << 3) | 0, "varint"),
    "Int64": DType("Int64", (4 << 3) | 0, "varint"),
    "Float64": DType("Float64", (5 << 3) | 1, "fixed64"),
    "Float32": DType("Float32", (6 << 3) | 5, "fixed32"),
    "Bool": DType("Bool", (7 << 3) | 0, "varint"),
    "UnixTimestamp": DType("UnixTimestamp", (8 << 3) | 0, "varint"),
}
_BY_TAG = {d.tag: d for d in DTYPES.values()}


def _varint(buf: bytes, pos: int) -> int:
    result = shift = 0
    while True:
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            break
        shift += 7
    # int32/int64 negatives are sign-extended to 64 bits on the wire.
    return result - (1 << 64) if result >= 1 << 63 else result


def decode_number(raw: bytes | None) -> float:
    """One stored value as a float; NaN when absent, null, or not a numeric scalar."""
    if not raw:
        return math.nan
    tag = raw[0]
    if tag == 0x29:
        return _F64.unpack_from(raw, 1)[0]
    if tag == 0x35:
        return _F32.unpack_from(raw, 1)[0]
    if tag in (0x18, 0x20, 0x38, 0x40):
        return float(_varint(raw, 1))
    return math.nan


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def encode_number(value: float | int | bool | None, dtype: str) -> bytes:
    """The bytes Feast writes for `value` of Feast type `dtype`; b"" for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return b""
    d = DTYPES[dtype]
    if d.wire == "fixed64":
        return bytes((d.tag,)) + _F64.pack(float(value))
    if d.wire == "fixed32":
        return bytes((d.tag,)) + _F32.pack(float(value))
    return bytes((d.tag,)) + _encode_varint(int(value))


def decode_timestamp(raw: bytes | None) -> float:
    """A serialized google.protobuf.Timestamp as epoch seconds; NaN when absent (None).

    b"" is a present timestamp of 0: protobuf writes no bytes for default fields."""
    if raw is None:
        return math.nan
    seconds, nanos = timestamp_parts(raw)
    return seconds + nanos / 1e9


def timestamp_parts(raw: bytes) -> tuple[int, int]:
    """The (seconds, nanos) fields of a serialized google.protobuf.Timestamp."""
    seconds = nanos = 0
    pos = 0
    while pos < len(raw):
        tag = raw[pos]
        pos += 1
        start = pos
        while raw[pos] & 0x80:
            pos += 1
        pos += 1
        value = _varint(raw[start:pos], 0)
        if tag == 0x08:
            seconds = value
        elif tag == 0x10:
            nanos = value
    return seconds, nanos


def encode_timestamp(epoch_seconds: float) -> bytes:
    """Serialize epoch seconds as google.protobuf.Timestamp, as Feast stores `_ts:<view>`."""
    whole = math.floor(epoch_seconds)
    nanos = round((epoch_seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    out = b""
    if whole:
        out += b"\x08" + _encode_varint(whole)
    if nanos:
        out += b"\x10" + _encode_varint(nanos)
    return out


def is_supported(dtype: str) -> bool:
    return dtype in DTYPES


_TAG_F64, _TAG_F32 = 0x29, 0x35
_VARINT_TAGS = np.array([0x18, 0x20, 0x38, 0x40], np.uint8)


def decode_column(raws: Sequence[bytes | None]) -> np.ndarray:
    """Many stored values at once, as float32 (NaN where absent): the same numbers as
    `decode_number` on each. Doubles, floats and one-byte varints (small counts, flags) are
    gathered with numpy; anything else takes the per-value path."""
    raws = [r or b"" for r in raws]
    n = len(raws)
    out = np.full(n, np.nan, np.float32)
    if not n:
        return out
    lengths = np.fromiter(map(len, raws), np.int64, n)
    buf = np.frombuffer(b"".join(raws), np.uint8)
    starts = np.zeros(n, np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    tags = np.zeros(n, np.uint8)
    present = lengths > 0
    tags[present] = buf[starts[present]]
    done = ~present

    f64 = present & (tags == _TAG_F64) & (lengths == 9)
    if f64.any():
        at = starts[f64][:, None] + np.arange(1, 9)
        out[f64] = buf[at].copy().view("<f8").ravel()
        done |= f64
    f32 = present & (tags == _TAG_F32) & (lengths == 5)
    if f32.any():
        at = starts[f32][:, None] + np.arange(1, 5)
        out[f32] = buf[at].copy().view("<f4").ravel()
        done |= f32
    small = present & np.isin(tags, _VARINT_TAGS) & (lengths == 2)
    if small.any():
        byte = buf[starts[small] + 1]
        ok = byte < 0x80  # a one-byte varint; a continuation bit means more bytes
        idx = np.flatnonzero(small)[ok]
        out[idx] = byte[ok]
        done[idx] = True
    for i in np.flatnonzero(~done):
        out[i] = decode_number(raws[i])
    return out


def encode_column(values: np.ndarray, present: np.ndarray, dtype: str) -> Ragged:
    """Many values of Feast type `dtype` at once: row i is `encode_number(values[i], dtype)`,
    or b"" where not `present` (Feast writes an empty ValueProto for a null)."""
    d = DTYPES[dtype]
    n = len(values)
    if d.wire == "varint":
        payload = _varints(values.astype(np.int64))
        head = np.full((n, 1), d.tag, np.uint8)
        data = np.concatenate([head, payload.data], axis=1)
        lengths = np.where(present, payload.lengths + 1, 0)
        data[~present] = 0
        return Ragged(data, lengths)
    wire = "<f8" if d.wire == "fixed64" else "<f4"
    record = np.empty(n, [("tag", "u1"), ("value", wire)])
    record["tag"] = d.tag
    record["value"] = values
    data = record.view(np.uint8).reshape(n, record.dtype.itemsize).copy()
    data[~present] = 0
    return Ragged.fixed(data, present)


def encode_timestamps(seconds: np.ndarray, nanos: np.ndarray) -> Ragged:
    """Many google.protobuf.Timestamps at once, byte-identical to `encode_timestamp`'s."""
    parts = []
    for tag, field in ((0x08, seconds), (0x10, nanos)):
        payload = _varints(np.asarray(field, np.int64))
        data = np.concatenate([np.full((len(field), 1), tag, np.uint8), payload.data], axis=1)
        set_ = np.asarray(field) != 0  # protobuf omits fields at their default
        data[~set_] = 0
        parts.append(Ragged(data, np.where(set_, payload.lengths + 1, 0)))
    return concat(parts)


def _varints(ints: np.ndarray) -> Ragged:
    """Protobuf varints of int64s (negatives as their 64-bit two's complement, 10 bytes)."""
    u = ints.astype(np.int64).view(np.uint64)
    shifted = u[:, None] >> (np.uint64(7) * np.arange(10, dtype=np.uint64))
    groups = (shifted & np.uint64(0x7F)).astype(np.uint8)
    lengths = np.maximum(1, (shifted != 0).sum(1))
    groups[np.arange(10) < lengths[:, None] - 1] |= 0x80
    return Ragged(groups, lengths.astype(np.int64))
