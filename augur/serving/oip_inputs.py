"""What an OIP ModelInfer's inputs mean for a model, in the (entities, request features, rows)
that Predict's calls decode to: entity keys named by join key (Augur reads the features,
feature-aware), or the model's features themselves (one [rows, features] tensor, or a tensor
per feature). Reading tensors is oip_tensors.py's; scoring is the lanes'.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from augur.features.reader import FeatureRows
from augur.serving.codec import _FLOAT32_LIMIT
from augur.serving.errors import invalid, shown
from augur.serving.oip_tensors import read_tensor

if TYPE_CHECKING:
    from augur.api.oip import open_inference_pb2 as oip
    from augur.features.plan import ReadPlan
    from augur.serving.models import ServingModel

_INTEGER = ("INT64", "INT32", "INT16", "INT8", "UINT32", "UINT16", "UINT8")


def decode_infer(
    request: oip.ModelInferRequest, model: ServingModel, max_rows: int
) -> tuple[dict, dict[str, np.ndarray], int]:
    """A ModelInfer call's entity columns (empty when it gives the features), its float32
    columns by name (request features, or every model input) and its row count."""
    if not request.inputs:
        raise invalid(f"inputs: empty; {_expected(model)}")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise invalid(
            f"raw_input_contents: {len(raw)} entries for {len(request.inputs)} inputs; "
            f"give one per input, or typed contents only"
        )
    tensors = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in tensors:
            raise invalid(f"inputs[{i}].name: {shown(tensor.name)!r} is given twice")
        tensors[tensor.name] = read_tensor(tensor, raw[i] if raw else None, f"inputs.{tensor.name}")
    if model.plan.entity_types.keys() & tensors.keys():
        entities, extra, n = _by_entity(tensors, model)
    else:
        entities, extra, n = {}, _by_feature(tensors, model), 0
        n = len(next(iter(extra.values())))
    if not n:
        raise invalid(f"inputs.{request.inputs[0].name}: no rows")
    if n > max_rows:
        raise invalid(
            f"inputs.{request.inputs[0].name}: {n} rows exceeds the limit of {max_rows} per "
            f"request (server.max_rows)"
        )
    return entities, extra, n


def _by_entity(tensors: dict[str, np.ndarray], model: ServingModel) -> tuple[dict, dict, int]:
    """Feature-aware: every join key and request feature, one value per row."""
    expected = model.plan.entity_types
    wanted = model.version.spec.request_features
    for name in tensors:
        if name not in expected and name not in wanted:
            raise invalid(
                f"inputs.{shown(name)}: not an entity or request feature; {_expected(model)}"
            )
    n = None
    entities: dict[str, list] = {}
    for name in sorted(expected):
        values = _column(tensors, name, model)
        if expected[name] == "int64":
            if values.dtype.kind not in "iu":
                raise invalid(f"inputs.{name}: entity {name} takes INT64 keys")
            entities[name] = values.astype(np.int64).tolist()
        else:
            if values.dtype != object:
                raise invalid(f"inputs.{name}: entity {name} takes BYTES keys (UTF-8)")
            entities[name] = [v.decode() for v in values.tolist()]
        n = _same_rows(n, name, len(values))
    extra = {}
    for name in wanted:
        column = _column(tensors, name, model)
        n = _same_rows(n, name, len(column))
        extra[name] = _float32(name, column)
    return entities, extra, n or 0


def _by_feature(tensors: dict[str, np.ndarray], model: ServingModel) -> dict[str, np.ndarray]:
    """The model's inputs themselves: one [rows, inputs] tensor in feature order, or one
    tensor per feature, named by feature."""
    features = model.version.features
    if len(tensors) == 1:
        ((name, only),) = tensors.items()
        if only.ndim == 2 and only.shape[1] == len(features) and name not in features:
            batch = _float32(name, only, missing_ok=True)
            return {f: batch[:, i] for i, f in enumerate(features)}
    n = None
    extra = {}
    for name in tensors:
        if name not in features:
            raise invalid(f"inputs.{shown(name)}: not an input of the model; {_expected(model)}")
    for name in features:
        column = _column(tensors, name, model)
        n = _same_rows(n, name, len(column))
        extra[name] = _float32(name, column, missing_ok=True)
    return extra


def _column(tensors: dict[str, np.ndarray], name: str, model: ServingModel) -> np.ndarray:
    if name not in tensors:
        raise invalid(f"inputs.{name}: missing; {_expected(model)}")
    values = tensors[name]
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise invalid(f"inputs.{name}: shape {list(values.shape)}; expected [rows] or [rows, 1]")
    return values


def _same_rows(n: int | None, name: str, rows: int) -> int:
    if n is not None and rows != n:
        raise invalid(f"inputs.{name}: {rows} rows, but other inputs have {n}")
    return rows


def _float32(name: str, values: np.ndarray, missing_ok: bool = False) -> np.ndarray:
    """A numeric input as float32; refused when a value is infinite or beyond float32, or NaN
    unless `missing_ok` (a given feature: NaN is a missing value, as a read serves it)."""
    if values.dtype == object:
        raise invalid(f"inputs.{name}: BYTES; a feature takes FP32, FP64, INT64 or BOOL")
    if values.dtype.kind == "f":
        magnitude = np.abs(values.astype(np.float64))
        bad = ~(magnitude < _FLOAT32_LIMIT)
        if missing_ok:
            bad &= ~np.isnan(magnitude)
        beyond = np.flatnonzero(bad)
        if len(beyond):
            at = tuple(int(i) for i in np.unravel_index(beyond[0], values.shape))
            value = float(values[at])
            problem = "is beyond the float32 range" if math.isfinite(value) else "is not finite"
            raise invalid(f"inputs.{name}{list(at)}: {value} {problem}")
    return values.astype(np.float32)


def _expected(model: ServingModel) -> str:
    keys = sorted(model.plan.entity_types)
    asks = [*keys, *model.version.spec.request_features]
    return (
        f"model {model.name} takes its entity keys ({', '.join(asks)}) or its features "
        f"({len(model.version.features)}, as ModelMetadata lists them)"
    )


def given_rows(plan: ReadPlan, columns: dict[str, np.ndarray]) -> FeatureRows:
    """The plan's columns filled from a call's given features (NaN where a column is not
    the model's), so that assembly, canary and shadow see them as if read."""
    n = len(next(iter(columns.values())))
    values = np.full((n, len(plan.columns)), np.nan, np.float32)
    for i, name in enumerate(plan.feature_names):
        column = columns.get(name)
        if column is not None:
            values[:, i] = column
    return FeatureRows(
        values,
        np.zeros(n, np.int32),
        np.zeros(n, np.int32),
        np.full((n, len(plan.views)), np.nan),
        0,
    )
