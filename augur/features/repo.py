"""The Feast side: open a feature repo against a Redis address and compile read plans.

The only module of `augur.features` that imports Feast (slow to import), and only when called.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from augur.features.plan import ENTITY_TYPES, FeatureColumn, ReadPlan, ViewRead
from augur.features.values import is_supported
from augur.features.writer import ViewSchema

if TYPE_CHECKING:
    from feast import FeatureStore

REDIS_ENV = "AUGUR_REDIS"  # feature_store.yaml reads the online store address from it


class PlanError(ValueError):
    """A feature service that Augur cannot serve (unsupported type, unknown view)."""


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
    service = store.get_feature_service(service_name)
    entity_types: dict[str, str] = {}
    views = []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        join_keys = tuple(c.name for c in view.entity_columns)
        for column in view.entity_columns:
            kind = str(column.dtype).lower()
            if kind not in ENTITY_TYPES:
                raise PlanError(
                    f"join key {column.name!r} of view {view.name!r} has type "
                    f"{column.dtype}; Augur serves int64 and string keys"
                )
            entity_types[column.name] = kind
        features = []
        for f in projection.features:
            dtype = str(f.dtype)
            if not is_supported(dtype):
                raise PlanError(
                    f"feature {view.name}:{f.name} has type {dtype}; a model "
                    f"input must be numeric or bool"
                )
            default = float(f.tags["default"]) if "default" in (f.tags or {}) else math.nan
            features.append(FeatureColumn(view.name, f.name, dtype, default))
        ttl = view.ttl.total_seconds() if view.ttl else 0.0
        stored = [f.name for f in view.features]
        try:
            layout = view_schema(store, view.name).layout
        except PlanError:  # a non-numeric feature elsewhere in the view: no packed vectors
            layout = 0
        views.append(
            ViewRead(
                view.name,
                join_keys,
                ttl,
                tuple(features),
                layout,
                len(stored),
                tuple(stored.index(f.name) for f in features),
            )
        )
    return ReadPlan(service.name, store.project, entity_types, tuple(views))


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


def build_plans(store: FeatureStore) -> dict[str, ReadPlan]:
    """A plan for every feature service in the registry."""
    return {s.name: build_plan(store, s.name) for s in store.list_feature_services()}


def online_address(store: FeatureStore) -> str:
    return store.config.online_store.connection_string
