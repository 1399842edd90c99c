"""augur.v1 `TypedColumn`s -> Python values, the same as Feast's `OnlineResponse.to_dict()`
gives: ints, floats, bools, strings, bytes, UTC datetimes, lists, and dicts for Map, Json
and Struct. The client's side of augur.serving.typed_columns."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from augur.api.v1 import predictor_pb2 as pb


def column_values(column: pb.TypedColumn) -> list[Any]:
    """One Python value per row; None where the row has no value."""
    dtype = column.dtype
    is_array = dtype.startswith("Array(") and dtype.endswith(")")
    element = dtype[6:-1] if is_array else dtype
    which = column.WhichOneof("values")
    raw = list(getattr(column, which).values) if which else []
    convert = _converter(element)
    if not is_array:
        return [convert(v) if p else None for v, p in zip(raw, column.present, strict=False)]
    out: list[Any] = []
    at = 0
    for present, length in zip(column.present, column.lengths, strict=True):
        part = raw[at : at + length]
        at += length
        out.append([convert(v) for v in part] if present else None)
    return out


def columns_dict(columns) -> dict[str, list[Any]]:
    """Every column of a GetOnlineFeaturesResponse by name, as `column_values` gives it."""
    return {c.name: column_values(c) for c in columns}


def _converter(element: str):
    if element == "UnixTimestamp":
        return lambda v: datetime.fromtimestamp(v, tz=UTC)
    if element in ("Int32", "Int64", "Float32", "Float64", "Bool", "String", "Bytes"):
        return lambda v: v
    return json.loads  # Map, Json, Struct(...)
