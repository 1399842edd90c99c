"""Feature values in their Feast types -> augur.v1 `TypedColumn`s (GetOnlineFeatures' answer).

One table says which field of the column carries each Feast type; augur.client.columns reads
them back into what Feast's `to_dict()` gives. Not the decoding of stored bytes: that is
augur.features.typed's.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np

from augur.api.v1 import predictor_pb2 as pb

# Feast element type -> (TypedColumn field, the zero value a missing row holds, convert)
_CARRIER: dict[str, tuple[str, Any]] = {
    "Int32": ("int64s", 0),
    "Int64": ("int64s", 0),
    "UnixTimestamp": ("int64s", 0),
    "Float32": ("doubles", 0.0),
    "Float64": ("doubles", 0.0),
    "Bool": ("bools", False),
    "String": ("strings", ""),
    "Bytes": ("bytes", b""),
}


def element_type(dtype: str) -> tuple[str, bool]:
    """(the element's Feast type, whether `dtype` is an array of it)."""
    if dtype.startswith("Array(") and dtype.endswith(")"):
        return dtype[6:-1], True
    return dtype, False


def _carrier(element: str) -> tuple[str, Any]:
    return _CARRIER.get(element, ("strings", ""))  # Map, Json, Struct(...): JSON text


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _element(value: Any, element: str) -> Any:
    if element == "UnixTimestamp":
        return 0 if value is None else int(value.timestamp())
    if element in _CARRIER:
        return value
    return json.dumps(value, default=_json_default)


def typed_column(name: str, dtype: str, values: Sequence[Any]) -> pb.TypedColumn:
    element, is_array = element_type(dtype)
    field, zero = _carrier(element)
    column = pb.TypedColumn(name=name, dtype=dtype)
    column.present.extend(v is not None for v in values)
    out: list = []
    if is_array:
        lengths = [0 if v is None else len(v) for v in values]
        column.lengths.extend(lengths)
        for v in values:
            if v is not None:
                out.extend(_element(x, element) for x in v)
    else:
        out = [zero if v is None else _element(v, element) for v in values]
    getattr(column, field).values.extend(out)
    return column


def as_float(value: Any, dtype: str) -> float:
    """A value as the float the back-compat FeatureMatrix carries: NaN if not a number."""
    if value is None:
        return math.nan
    if dtype == "UnixTimestamp":
        return float(value.timestamp())
    if dtype in ("Int32", "Int64", "Float32", "Float64", "Bool"):
        return float(value)
    return math.nan


def float_matrix(columns: Sequence[tuple[str, str, Sequence, float]], n: int) -> np.ndarray:
    """(name, dtype, values, declared default) per column -> float32 (n, columns), with the
    default (else NaN) where a value is missing."""
    out = np.empty((n, len(columns)), np.float32)
    for j, (_, dtype, values, default) in enumerate(columns):
        out[:, j] = [default if v is None else as_float(v, dtype) for v in values]
    return out
