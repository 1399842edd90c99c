"""On-demand feature views computed on the request path: a plan's `Transform`s run on the
features just read and the call's request data, as Feast's `get_online_features` runs them.

The transformation is Feast's own (its UDF, from the registry), fed the same columns Feast
feeds it, so the values are Feast's. Feast (and pandas) are imported only here, when a plan
that has on-demand views is first prepared: a server whose services have none never imports
them. Not the read: augur.features.reader fetches the stored features this module reads.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any

from augur.features.plan import ReadPlan, Transform

_INTEGER = ("Int32", "Int64", "UnixTimestamp")


class OnDemandViews:
    """Feast's OnDemandFeatureView object per `Transform`, built from its definition once."""

    def __init__(self) -> None:
        self._views: dict[str, Any] = {}  # definition -> OnDemandFeatureView

    def prepare(self, plan: ReadPlan) -> None:
        """Decode `plan`'s views now (at start), so that no call pays Feast's import."""
        for transform in plan.transforms:
            self._view(transform)

    def compute(
        self, transform: Transform, columns: Mapping[str, Sequence], n: int
    ) -> dict[str, list]:
        """`transform`'s output features ("<view>__<feature>" -> one Python value per row,
        None where it has none) from `columns`: the join keys, the plan's columns by full
        name and the request data, as Python values."""
        view = self._view(transform)
        inputs = {name: list(columns[name]) for name in _inputs(transform, columns)}
        wanted = {f.name: f for f in transform.features}
        if transform.mode == "python":
            got = view.transform_dict(inputs)
            out = {name: got[name] for name in wanted}
        else:
            import pyarrow as pa

            table = view.transform_arrow(pa.Table.from_pydict(inputs), True)
            out = {name: table[f"{transform.name}__{name}"].to_pylist() for name in wanted}
        return {
            f"{transform.name}__{name}": _typed(values, wanted[name].dtype, n)
            for name, values in out.items()
        }

    def _view(self, transform: Transform):
        view = self._views.get(transform.definition)
        if view is None:
            from feast.on_demand_feature_view import OnDemandFeatureView
            from feast.protos.feast.core.OnDemandFeatureView_pb2 import (
                OnDemandFeatureView as OnDemandFeatureViewProto,
            )

            proto = OnDemandFeatureViewProto.FromString(base64.b64decode(transform.definition))
            view = OnDemandFeatureView.from_proto(proto)
            self._views[transform.definition] = view
        return view


def _inputs(transform: Transform, columns: Mapping[str, Sequence]) -> list[str]:
    """What Feast hands the UDF: entity keys, its sources' features, its request data (and
    nothing of the other views: Feast drops those too)."""
    wanted = set(transform.sources) | {name for name, _ in transform.request}
    return [name for name in columns if name in wanted or "__" not in name]


def _typed(values: Sequence, dtype: str, n: int) -> list:
    """The UDF's outputs as the declared Feast type gives them back (NaN and None: no value)."""
    if len(values) != n:
        raise ValueError(f"an on-demand feature view returned {len(values)} rows for {n}")
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif dtype in _INTEGER:
            out.append(int(v))
        elif dtype in ("Float32", "Float64"):
            out.append(float(v))
        elif dtype == "Bool":
            out.append(bool(v))
        else:
            out.append(v)
    return out


def request_values(value: float, dtype: str) -> Any:
    """A request datum sent as a double, as the Python value of its declared Feast type."""
    if math.isnan(value):
        return None
    if dtype in _INTEGER:
        return int(value)
    if dtype == "Bool":
        return bool(value)
    return float(value)
