"""Feast `ValueProto` bytes -> the Python values Feast's `OnlineResponse.to_dict()` returns, for
every type GetOnlineFeatures serves (strings, bytes, lists, maps, JSON, structs, timestamps).

A small protobuf wire reader, so serving needs no Feast import; `augur.features.values` is the
numeric fast path that models read through, this is the typed one. Not a general protobuf
parser: it knows `feast.types.Value` and the messages it nests.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

NULL_TIMESTAMP = -(1 << 63)  # feast.type_map.NULL_TIMESTAMP_INT_VALUE: a null in a timestamp list
_F64 = struct.Struct("<d")
_F32 = struct.Struct("<f")

SCALARS = ("Bytes", "String", "Int32", "Int64", "Float32", "Float64", "Bool", "UnixTimestamp")
_COMPLEX = ("Map", "Json")  # and Struct(...), Array(Map), Array(Json), Array(Struct(...))


def is_served(dtype: str) -> bool:
    """Whether GetOnlineFeatures serves a feature of Feast type `dtype` (its str())."""
    inner = dtype[6:-1] if dtype.startswith("Array(") else dtype
    return inner in SCALARS or inner in _COMPLEX or inner.startswith("Struct(")


def is_numeric(dtype: str) -> bool:
    """Whether a model may take a feature of this type as an input (a float32 column)."""
    return dtype in ("Int32", "Int64", "Float32", "Float64", "Bool", "UnixTimestamp")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return result, pos
        shift += 7


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field of a message: varints as ints, fixed
    widths and length-delimited fields as their bytes."""
    out, pos, end = [], 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unexpected protobuf wire type {wire} in a Feast value")
        out.append((number, wire, value))
    return out


def _packed_varints(fields, signed: bool) -> list[int]:
    """A repeated varint field `val = 1`, packed (proto3's default) or not."""
    out: list[int] = []
    for _, wire, value in fields:
        if wire == 0:
            out.append(_signed(value) if signed else value)
            continue
        pos = 0
        while pos < len(value):
            v, pos = _varint(value, pos)
            out.append(_signed(v) if signed else v)
    return out


def _packed_fixed(fields, form: struct.Struct) -> list[float]:
    out: list[float] = []
    for _, _, value in fields:
        out.extend(v for (v,) in form.iter_unpack(value))
    return out


def _timestamp(seconds: int) -> datetime | None:
    return None if seconds == NULL_TIMESTAMP else datetime.fromtimestamp(seconds, tz=UTC)


def _map(buf: bytes) -> dict[str, Any]:
    """feast.types.Map: `map<string, Value> val = 1`, each entry a (key = 1, value = 2)."""
    out: dict[str, Any] = {}
    for _, _, entry in _fields(buf):
        key, value = "", None
        for number, _, part in _fields(entry):
            if number == 1:
                key = part.decode()
            elif number == 2:
                value = to_python(part)
        out[key] = value
    return out


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # Feast returns the text when it is not JSON
        return text


def _strings(buf: bytes) -> list[str]:
    return [v.decode() for _, _, v in _fields(buf)]


# feast.types.Value's oneof, by field number: how its payload becomes Feast's Python value.
_DECODE: dict[int, Callable[[Any], Any]] = {
    1: bytes,
    2: lambda v: v.decode(),
    3: _signed,
    4: _signed,
    5: lambda v: _F64.unpack(v)[0],
    6: lambda v: _F32.unpack(v)[0],
    7: bool,
    8: lambda v: _timestamp(_signed(v)),
    11: lambda v: [bytes(x) for _, _, x in _fields(v)],
    12: _strings,
    13: lambda v: _packed_varints(_fields(v), True),
    14: lambda v: _packed_varints(_fields(v), True),
    15: lambda v: _packed_fixed(_fields(v), _F64),
    16: lambda v: _packed_fixed(_fields(v), _F32),
    17: lambda v: [bool(x) for x in _packed_varints(_fields(v), False)],
    18: lambda v: [_timestamp(x) for x in _packed_varints(_fields(v), True)],
    19: lambda v: None,  # null_val
    20: _map,
    21: lambda v: [_map(m) for _, _, m in _fields(v)],
    32: lambda v: _json(v.decode()),
    33: lambda v: [_json(s) for s in _strings(v)],
    34: _map,
    35: lambda v: [_map(m) for _, _, m in _fields(v)],
}


def to_python(raw: bytes | None) -> Any:
    """One stored value as Feast's `to_dict()` gives it; None when absent or null. Raises
    ValueError for a value kind GetOnlineFeatures does not serve (sets, UUIDs, decimals)."""
    if not raw:
        return None
    fields = _fields(raw)
    if not fields:
        return None
    number, _, value = fields[-1]  # a oneof: the last one written wins
    decode = _DECODE.get(number)
    if decode is None:
        raise ValueError(f"feast.types.Value field {number} is not served by Augur")
    return decode(value)
