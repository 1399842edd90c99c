"""The Feast side: open a feature repo against a Redis address and compile read plans.

The only module of `augur.features` that imports Feast (slow to import), and only when called.
"""

from __future__ import annotations

import base64
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from augur.features.plan import (
    ENTITY_TYPES,
    FeatureColumn,
    PlanError,
    PlanSet,
    ReadPlan,
    Transform,
    ViewRead,
)
from augur.features.typed import is_served
from augur.features.values import is_supported
from augur.features.writer import ViewSchema

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)
REDIS_ENV = "AUGUR_REDIS"  # feature_store.yaml reads the online store address from it


def open_store(repo_path: Path | str, redis_address: str | None = None) -> FeatureStore:
    """A Feast FeatureStore for `repo_path`, its online store pointed at `redis_address`."""
    if redis_address:
        os.environ[REDIS_ENV] = redis_address
    os.environ.setdefault("FEAST_USAGE", "False")
    from feast import FeatureStore

    return FeatureStore(repo_path=str(repo_path))


def is_cluster(store: FeatureStore) -> bool:
    """Whether the repo's online store is a Redis Cluster (`redis_type: redis_cluster`): its
    writers must split keys by node even when the address names one seed."""
    return str(getattr(store.config.online_store, "redis_type", "redis")).endswith("cluster")


def build_plan(store: FeatureStore, service_name: str) -> ReadPlan:
    """The read plan of one feature service; PlanError (with the reason) when Augur cannot
    serve it."""
    service = store.get_feature_service(service_name)
    entity_types: dict[str, str] = {}
    reads: dict[str, tuple] = {}  # stored view -> (view, selected feature names)
    transforms = []
    for projection in service.feature_view_projections:
        odfv = _on_demand_view(store, projection.name)
        if odfv is not None and not odfv.write_to_online_store:
            for source in odfv.source_feature_view_projections.values():
                _select(store, reads, source.name, (f.name for f in source.features), False)
            transforms.append(_transform(odfv, projection))
            continue
        names = (f.name for f in projection.features)
        _select(store, reads, projection.name, names, True, odfv)
    views, hidden = [], []
    for view, wanted in reads.values():
        views.append(_view_read(store, view, wanted, entity_types))
        hidden += [f"{view.name}__{name}" for name, shown in wanted.items() if not shown]
    return ReadPlan(
        service.name, store.project, entity_types, tuple(views), tuple(transforms), tuple(hidden)
    )


def _on_demand_view(store: FeatureStore, name: str):
    from feast.errors import FeatureViewNotFoundException, OnDemandFeatureViewNotFoundException

    try:
        store.get_feature_view(name)
        return None
    except FeatureViewNotFoundException:
        pass
    try:
        return store.get_on_demand_feature_view(name)
    except OnDemandFeatureViewNotFoundException:
        raise PlanError(f"view {name!r} is neither a feature view nor an on-demand one") from None


def _select(store, reads: dict, name: str, features, shown: bool, odfv=None) -> None:
    """Add `features` of stored view `name` to what the plan reads; `shown`: the service
    selects them (else they are only an on-demand view's inputs)."""
    if name not in reads:
        reads[name] = (odfv if odfv is not None else store.get_feature_view(name), {})
    wanted = reads[name][1]
    for feature in features:
        wanted[feature] = wanted.get(feature, False) or shown


def _view_read(store, view, wanted: dict[str, bool], entity_types: dict[str, str]) -> ViewRead:
    join_keys = _join_keys(store, view)
    for key, dtype in join_keys:
        if dtype not in ENTITY_TYPES:
            raise PlanError(
                f"join key {key!r} of view {view.name!r} has type {dtype}; Augur serves "
                f"int64 and string keys"
            )
        entity_types[key] = dtype
    by_name = {f.name: f for f in view.features}
    features = []
    for name in wanted:
        f = by_name[name]
        dtype = str(f.dtype)
        if not is_served(dtype):
            raise PlanError(
                f"feature {view.name}:{f.name} has type {dtype}, which Augur does not serve"
            )
        default = float(f.tags["default"]) if "default" in (f.tags or {}) else math.nan
        features.append(FeatureColumn(view.name, f.name, dtype, default))
    ttl = view.ttl.total_seconds() if getattr(view, "ttl", None) else 0.0
    stored = [f.name for f in view.features]
    try:
        layout = view_schema(store, view.name).layout
    except Exception:  # a non-numeric feature, or an on-demand view: no packed vectors
        layout = 0
    return ViewRead(
        view.name,
        tuple(k for k, _ in join_keys),
        ttl,
        tuple(features),
        layout,
        len(stored),
        tuple(stored.index(f.name) for f in features),
    )


def _join_keys(store, view) -> list[tuple[str, str]]:
    """A view's join keys and their types; an on-demand view written to the store is keyed
    by its declared entities, else by those of its sources (as Feast writes it)."""
    keys = [(c.name, str(c.dtype).lower()) for c in view.entity_columns if c.name != "__dummy_id"]
    if keys or not hasattr(view, "source_feature_view_projections"):
        return keys
    seen: dict[str, str] = {}
    for source in view.source_feature_view_projections.values():
        for name, dtype in _join_keys(store, store.get_feature_view(source.name)):
            seen.setdefault(name, dtype)
    return list(seen.items())


def _transform(odfv, projection) -> Transform:
    """An on-demand feature view as plain data: what it reads, what it gives, its definition."""
    mode = odfv.mode
    if mode not in ("pandas", "python"):
        raise PlanError(
            f"on-demand feature view {odfv.name!r} has mode {mode}; Augur computes pandas "
            f"and python ones"
        )
    if odfv.aggregations:
        raise PlanError(
            f"on-demand feature view {odfv.name!r} aggregates; Augur computes row-wise ones"
        )
    name = projection.name_to_use()
    outputs = []
    for f in projection.features:
        if not is_served(str(f.dtype)):
            raise PlanError(
                f"feature {name}:{f.name} has type {f.dtype}, which Augur does not serve"
            )
        outputs.append(FeatureColumn(name, f.name, str(f.dtype)))
    sources = tuple(
        f"{p.name}__{f.name}"
        for p in odfv.source_feature_view_projections.values()
        for f in p.features
    )
    request = tuple(
        (f.name, str(f.dtype)) for r in odfv.source_request_sources.values() for f in r.schema
    )
    definition = base64.b64encode(_definition(odfv)).decode()
    return Transform(name, mode, tuple(outputs), sources, request, definition)


def _definition(odfv) -> bytes:
    """The view's proto without the times Feast stamps on each serialization (its own and
    its sources'), so the same registry gives the same plan."""
    proto = odfv.to_proto()
    _drop_meta(proto)
    return proto.SerializeToString(deterministic=True)


def _drop_meta(message) -> None:
    if "meta" in message.DESCRIPTOR.fields_by_name:
        message.ClearField("meta")
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for item in value.values():
                    _drop_meta(item)
        elif field.is_repeated:
            for item in value:
                _drop_meta(item)
        else:
            _drop_meta(value)


def view_schema(store: FeatureStore, view_name: str) -> ViewSchema:
    """What Augur's writer needs of a feature view: keys, key types, features and dtypes."""
    view = store.get_feature_view(view_name)
    for f in view.features:
        if not is_supported(str(f.dtype)):
            raise PlanError(
                f"feature {view.name}:{f.name} has type {f.dtype}; Augur writes numeric "
                f"and bool features (use feast materialize for this view)"
            )
    return ViewSchema(
        view.name,
        tuple(c.name for c in view.entity_columns),
        tuple(str(c.dtype).lower() for c in view.entity_columns),
        tuple((f.name, str(f.dtype)) for f in view.features),
    )


def build_plans(store: FeatureStore) -> PlanSet:
    """A plan for every feature service in the registry that Augur can serve; the others are
    logged and kept, with the reason, in the result's `refused`."""
    plans = PlanSet()
    for service in store.list_feature_services():
        try:
            plans[service.name] = build_plan(store, service.name)
        except PlanError as e:
            log.warning("feature service %s is not served: %s", service.name, e)
            plans.refused[service.name] = str(e)
    return plans


def online_address(store: FeatureStore) -> str:
    return store.config.online_store.connection_string
