"""Request columns -> numpy, checked against what the model or feature service expects, and
what was scored or read -> the response.

Every refusal names the field, the value and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from augur.api.v1 import predictor_pb2 as pb
from augur.features.native import native
from augur.features.odfv import request_values
from augur.features.plan import ReadPlan
from augur.serving.errors import invalid, shown
from augur.serving.typed_columns import float_matrix, typed_column
from augur.serving.wire import Options, WireRequest, wire

if TYPE_CHECKING:  # for the hints only: decoding needs none of the server's parts
    from augur.serving.models import ServingModel
    from augur.serving.scoring import Scored

# The smallest double that float32 rounds to infinity: its largest finite value plus half a
# unit in the last place (a tie, which rounds to even: infinity).
_FLOAT32_LIMIT = float(np.finfo(np.float32).max) + 2.0**103
# Request features of up to this many rows are checked in a Python loop, not numpy.
_CHECKED_IN_PYTHON = 16


def decode_inputs(
    request: pb.PredictRequest | WireRequest, model: ServingModel, max_rows: int, owner: str
) -> tuple[dict, dict[str, np.ndarray], int]:
    """A Predict call's entity columns, request features and row count, for `model`: from the
    message, or from a WireRequest's lists (wire.py), with the same checks."""
    entities, n = decode_entities(request.entities, model.plan, max_rows, owner)
    wanted = model.version.spec.request_features
    return entities, decode_request_features(request.request_features, wanted, n, owner), n


def predict_response(
    model: str, options: pb.PredictOptions | Options, scored: Scored, versions: list[str]
) -> pb.PredictResponse | bytes:
    """The answer to a Predict call: its scores, the version(s) that answered (`versions`,
    scored.versions), and what its options ask for (feature status counts, the features).
    The usual answer (one version, no options) is written to bytes in one C call where
    augur.serving.wire has it: the message's fields, its classes and a list of the scores,
    each cold in a server, cost some 10 us more."""
    scores = scored.scores
    if (
        wire is not None
        and len(versions) == 1
        and not (options.return_features or options.return_feature_status)
        and scores.dtype.char in "fd"
        and scores.dtype.isnative
        and scores.flags.c_contiguous
    ):
        return wire.predict_response(
            model, versions[0], len(scored.batch), scores.shape[1], scores, scored.degraded
        )
    response = pb.PredictResponse(
        model=model,
        version=versions[0] if len(versions) == 1 else "",
        rows=len(scored.batch),
        outputs=scored.scores.shape[1],
        scores=scored.scores.ravel().tolist(),
        degraded=scored.degraded,
    )
    if len(versions) > 1:
        response.row_versions.extend(scored.row_versions)
    rows = scored.rows
    if options.return_feature_status:
        present = len(scored.model.plan.columns) - rows.missing
        response.feature_status.extend(feature_status(present, rows.missing, rows.stale))
    if options.return_features:
        response.features.names.extend(scored.model.version.features)
        response.features.values.extend(scored.batch.ravel().tolist())
    return response


def features_response(
    plan: ReadPlan, values: Mapping[str, Sequence], stale: np.ndarray, n: int
) -> pb.GetOnlineFeaturesResponse:
    """GetOnlineFeatures' answer from every served feature's values (Python values, None
    where missing) by full name: typed columns, the back-compat float matrix, the status."""
    served = plan.served
    columns = [(c.full_name, c.dtype, values[c.full_name], c.default) for c in served]
    missing = np.zeros(n, np.int32)
    for _, _, column, _ in columns:
        missing += np.fromiter((v is None for v in column), bool, n)
    return pb.GetOnlineFeaturesResponse(
        features=pb.FeatureMatrix(
            names=[c.full_name for c in served], values=float_matrix(columns, n).ravel().tolist()
        ),
        feature_status=feature_status(len(served) - missing, missing, stale),
        columns=[typed_column(name, dtype, column) for name, dtype, column, _ in columns],
    )


def decode_request_data(columns, plan: ReadPlan, n: int, owner: str) -> dict[str, list]:
    """GetOnlineFeatures' request data for the service's on-demand feature views, each value
    as its declared Feast type."""
    dtypes = {name: dtype for t in plan.transforms for name, dtype in t.request}
    doubles = decode_request_features(columns, plan.request_fields, n, owner, as_float32=False)
    return {
        name: [request_values(v, dtypes[name]) for v in values] for name, values in doubles.items()
    }


def decode_entities(columns, plan: ReadPlan, max_rows: int, owner: str) -> tuple[dict, int]:
    """Entity columns as lists keyed by join key, and the row count."""
    expected = plan.entity_types
    if not columns:
        raise invalid(f"entities: empty; {owner} expects columns {', '.join(sorted(expected))}")
    for name in columns:
        if name not in expected:
            raise invalid(
                f"entities.{shown(name)}: not an entity of {owner}; "
                f"expected {', '.join(sorted(expected))}"
            )
    out: dict[str, Sequence] = {}
    n = None
    first = None
    for name in sorted(expected):
        if name not in columns:
            raise invalid(f"entities.{name}: missing; {owner} needs it")
        column = columns[name]
        if column.__class__ is tuple:  # a WireRequest's: (oneof, its list)
            which, values = column
        else:
            which = column.WhichOneof("values")
            values = None if which is None else getattr(column, which).values
        want = "int64s" if expected[name] == "int64" else "strings"
        if which is None:
            raise invalid(f"entities.{name}: no values; expected {want}")
        if which != want:
            raise invalid(f"entities.{name}: expected {want}, got {which}")
        if n is None:
            n, first = len(values), name
        elif len(values) != n:
            raise invalid(
                f"entities.{name}: {len(values)} values, but entities.{first} has {n}; "
                f"every column needs one value per row"
            )
        # a list: a WireRequest's own, or a copy of the message's (list() of it costs 3x)
        out[name] = values if values.__class__ is list else values[:]
    if not n:
        raise invalid(f"entities.{first}: no rows")
    if n > max_rows:
        raise invalid(
            f"entities.{first}: {n} rows exceeds the limit of {max_rows} per request "
            f"(server.max_rows)"
        )
    return out, n


def decode_request_features(
    columns, wanted: Sequence[str], n: int, owner: str, as_float32: bool = True
) -> dict[str, np.ndarray]:
    # Every wanted column is required, so as many columns as wanted leave no room for one
    # not wanted unless one is missing: the usual call skips a walk of the protobuf map.
    if len(columns) != len(wanted):
        _refuse_unwanted(columns, wanted, owner)
    out = {}
    for name in wanted:
        if name not in columns:
            _refuse_unwanted(columns, wanted, owner)
            raise invalid(f"request_features.{name}: missing; {owner} needs it for every row")
        column = columns[name]
        values = column if column.__class__ is list else column.values  # a WireRequest's list
        if len(values) != n:
            raise invalid(f"request_features.{name}: {len(values)} values for {n} entity rows")
        out[name] = _float32_column(name, values, n) if as_float32 else list(values)
    return out


def _refuse_unwanted(columns, wanted: Sequence[str], owner: str) -> None:
    for name in columns:
        if name not in wanted:
            raise invalid(
                f"request_features.{shown(name)}: not a request feature of {owner}; expected "
                f"{', '.join(wanted) or 'none'}"
            )


def _float32_column(name: str, raw: Sequence[float], n: int) -> np.ndarray:
    """Request feature `name`'s doubles as float32. Models take float32: a finite double
    beyond its range would reach them as inf (and come back as NaN scores), so it is
    refused like inf itself. Checked on the doubles (NaN fails the comparison too), so the
    cast never overflows; in one C call where the read path's loops are built (numpy's six
    calls, their code cold on every call in a server, cost 20-30 us for 100 values), else a
    few values in Python, where numpy's calls would cost more."""
    if native is not None:
        out = np.empty(n, np.float32)
        bad = native.float32s(raw, out, _FLOAT32_LIMIT)
        if bad < 0:
            return out
    elif n <= _CHECKED_IN_PYTHON:
        raw = list(raw)
        bad = next((i for i, v in enumerate(raw) if not abs(v) < _FLOAT32_LIMIT), None)
        if bad is None:
            return np.array(raw, np.float32)
    else:
        values = np.array(raw, np.float64)
        beyond = np.flatnonzero(~(np.abs(values) < _FLOAT32_LIMIT))
        if not len(beyond):
            return values.astype(np.float32)
        bad = int(beyond[0])
    value = raw[bad]
    problem = (
        "is beyond the float32 range models take (±3.4e38)"
        if math.isfinite(value)
        else "is not a finite number"
    )
    raise invalid(f"request_features.{name}[{bad}]: {value} {problem}")


def feature_status(
    present: np.ndarray, missing: np.ndarray, stale: np.ndarray
) -> list[pb.FeatureStatus]:
    return [
        pb.FeatureStatus(present=int(p), missing=int(m), stale=int(s))
        for p, m, s in zip(present, missing, stale, strict=True)
    ]
