"""Read plans: which Redis keys and hash fields a model's features live in, as plain data.

A plan is compiled from the Feast registry (see `augur.features.repo`) and holds no Feast
objects, so serving a request needs no Feast import. Views keyed by the same join keys
share one Redis hash per entity, so they form one `KeyGroup` read with one HMGET.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from augur.features.keys import feature_field, timestamp_field
from augur.features.packed import HEADER_BYTES, vector_field

ENTITY_TYPES = ("int64", "string")


class PlanError(ValueError):
    """A feature service that Augur cannot serve (unsupported type, unknown view)."""


class PlanSet(dict):
    """Read plans by feature service, and the services that have none: `refused` maps each
    to the reason, for ListFeatureServices and the logs."""

    def __init__(self, plans=(), refused: dict[str, str] | None = None):
        super().__init__(plans)
        self.refused: dict[str, str] = dict(refused or {})


@dataclass(frozen=True)
class FeatureColumn:
    view: str
    name: str
    dtype: str  # Feast type name: Int64, Float32, Float64, Bool, ...
    default: float = math.nan  # served when the value is missing or past TTL

    @property
    def full_name(self) -> str:
        return f"{self.view}__{self.name}"


@dataclass(frozen=True)
class ViewRead:
    name: str
    join_keys: tuple[str, ...]
    ttl_seconds: float  # 0: values never expire
    features: tuple[FeatureColumn, ...]
    # The view's packed vector (augur.features.packed): its layout id (0: none known), how
    # many features it holds, and where each of `features` sits in it.
    layout: int = 0
    width: int = 0
    packed: tuple[int, ...] = ()


@dataclass(frozen=True)
class Transform:
    """An on-demand feature view a service selects, computed on the request path (see
    augur.features.odfv): plain data, its Feast definition kept as serialized bytes."""

    name: str  # as the service names it (its projection's name)
    mode: str  # "pandas" | "python"
    features: tuple[FeatureColumn, ...]  # the outputs the service selects
    sources: tuple[str, ...]  # plan columns ("<view>__<feature>") it reads
    request: tuple[tuple[str, str], ...]  # request data it reads: (field, Feast type)
    definition: str = ""  # base64 of the OnDemandFeatureView proto, decoded when first used


class ScalarView:
    """What reading one view of one entity in Python scalars needs (augur.features.decode's
    per-entity path), worked out once per plan."""

    __slots__ = ("absent", "defaults", "fields", "layout", "pick", "size", "ttl", "values")

    def __init__(self, view: ViewRead, fields: slice):
        self.layout = view.layout
        self.size = HEADER_BYTES + 4 * view.width  # a whole vector of this layout, in bytes
        self.values = struct.Struct(f"<{view.width}f")  # its values, from HEADER_BYTES on
        self.pick: Callable[[tuple], tuple] = _picker(view.packed)  # the plan's features
        self.ttl = view.ttl_seconds or math.inf
        self.absent = (math.nan,) * len(view.features)
        # What a missing feature is served as: its declared default; None when none has one.
        declared = tuple(float(np.float32(f.default)) for f in view.features)
        self.defaults = None if all(math.isnan(d) for d in declared) else declared
        self.fields = fields  # the view's features within the group's HMGET of `fields`


def _picker(positions: tuple[int, ...]) -> Callable[[tuple], tuple]:
    if not positions:  # no vector layout known: never read from a vector
        return lambda values: ()
    if len(positions) == 1:
        (only,) = positions
        return lambda values: (values[only],)
    return operator.itemgetter(*positions)


@dataclass(frozen=True)
class KeyGroup:
    """Views stored under the same entity key: one HMGET fetches them all."""

    join_keys: tuple[str, ...]
    views: tuple[ViewRead, ...]
    columns: tuple[int, ...]  # plan column of each feature, views in order
    positions: tuple[int, ...] = ()  # plan position of each of `views`
    fields: tuple[bytes, ...] = field(init=False)  # all feature fields, then one _ts per view
    vector_fields: tuple[bytes, ...] = field(init=False)  # one _av per view, then one _ts
    cache_id: int = field(init=False)  # names this field set in the row cache
    # Per feature of the group: its view's position and TTL (inf: never expires), so that
    # expiry is two numpy operations per read rather than a loop over views.
    view_of_column: np.ndarray = field(init=False, compare=False, repr=False)
    ttl_of_column: np.ndarray = field(init=False, compare=False, repr=False)
    column_index: np.ndarray = field(init=False, compare=False, repr=False)  # `columns`
    # Per view: where its features sit in the view's packed vector (a slice when in order).
    packed_index: tuple = field(init=False, compare=False, repr=False)
    scalar: tuple[ScalarView, ...] = field(init=False, compare=False, repr=False)
    # Every view has a known vector layout, so the group can be read from vectors.
    packable: bool = field(init=False, compare=False, repr=False)
    # Per view, what augur.features._native's decode_vectors needs: (layout, stored width,
    # first group column, int32 position in the vector of each of its features); and what
    # its assemble needs: plan column, view and TTL per feature, plan position per view.
    native_views: tuple = field(init=False, compare=False, repr=False)
    native_assembly: tuple = field(init=False, compare=False, repr=False)
    # read_few's whole spec of the group for a one-entity read, built once
    native_one: tuple = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        stamps = [timestamp_field(v.name) for v in self.views]
        fields = [feature_field(v.name, f.name) for v in self.views for f in v.features]
        object.__setattr__(self, "fields", (*fields, *stamps))
        vectors = [vector_field(v.name) for v in self.views]
        object.__setattr__(self, "vector_fields", (*vectors, *stamps))
        object.__setattr__(self, "cache_id", hash(self.fields))
        positions = [j for j, v in enumerate(self.views) for _ in v.features]
        ttls = [v.ttl_seconds or math.inf for v in self.views for _ in v.features]
        object.__setattr__(self, "view_of_column", np.array(positions, np.intp))
        object.__setattr__(self, "ttl_of_column", np.array(ttls, np.float64))
        object.__setattr__(self, "column_index", np.array(self.columns, np.intp))
        object.__setattr__(self, "packed_index", tuple(_index(v.packed) for v in self.views))
        starts = [0, *itertools.accumulate(len(v.features) for v in self.views)]
        scalar = tuple(
            ScalarView(v, slice(starts[j], starts[j + 1])) for j, v in enumerate(self.views)
        )
        object.__setattr__(self, "scalar", scalar)
        object.__setattr__(self, "packable", all(v.layout for v in self.views))
        native = tuple(
            (v.layout, v.width, starts[j], np.array(v.packed, np.int32))
            for j, v in enumerate(self.views)
        )
        object.__setattr__(self, "native_views", native)
        assembly = (  # the arrays above, as the int64 the C reads (the same objects on 64-bit)
            np.asarray(self.column_index, np.int64),
            np.asarray(self.view_of_column, np.int64),
            self.ttl_of_column,
            np.array(self.positions, np.int64),
        )
        object.__setattr__(self, "native_assembly", assembly)
        one = (1, native, len(self.columns), [0], *assembly)
        object.__setattr__(self, "native_one", one)


def _index(positions: tuple[int, ...]) -> slice | np.ndarray:
    if positions and positions == tuple(range(positions[0], positions[0] + len(positions))):
        return slice(positions[0], positions[0] + len(positions))
    return np.array(positions, np.intp)


@dataclass(frozen=True)
class ReadPlan:
    service: str
    project: str
    entity_types: dict[str, str]  # join key -> "int64" | "string"
    views: tuple[ViewRead, ...]
    transforms: tuple[Transform, ...] = ()  # on-demand feature views, after the stored ones
    hidden: tuple[str, ...] = ()  # stored columns read only as inputs of `transforms`
    groups: tuple[KeyGroup, ...] = field(init=False)
    columns: tuple[FeatureColumn, ...] = field(init=False, compare=False, repr=False)
    defaults: np.ndarray = field(init=False, compare=False, repr=False)  # float32, NaN: none
    has_defaults: bool = field(init=False, compare=False, repr=False)
    int64_keys: bool = field(init=False, compare=False, repr=False)  # every join key int64
    packable: bool = field(init=False, compare=False, repr=False)  # every group's `packable`

    def __post_init__(self) -> None:
        by_keys: dict[tuple[str, ...], list[ViewRead]] = {}
        for view in self.views:
            by_keys.setdefault(tuple(sorted(view.join_keys)), []).append(view)
        starts, col = {}, 0
        for view in self.views:
            starts[view.name] = col
            col += len(view.features)
        groups = []
        for keys, views in by_keys.items():
            cols = tuple(starts[v.name] + i for v in views for i in range(len(v.features)))
            positions = tuple(self.views.index(v) for v in views)
            groups.append(KeyGroup(keys, tuple(views), cols, positions))
        object.__setattr__(self, "groups", tuple(groups))
        columns = tuple(f for v in self.views for f in v.features)
        object.__setattr__(self, "columns", columns)
        defaults = np.array([c.default for c in columns], np.float32)
        object.__setattr__(self, "defaults", defaults)
        object.__setattr__(self, "has_defaults", not np.isnan(defaults).all())
        int64_keys = all(kind == "int64" for kind in self.entity_types.values())
        object.__setattr__(self, "int64_keys", int64_keys)
        object.__setattr__(self, "packable", all(g.packable for g in groups))

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.full_name for f in self.columns)

    @property
    def served(self) -> tuple[FeatureColumn, ...]:
        """What GetOnlineFeatures answers: the service's stored features, then its on-demand
        ones (not the columns read only as their inputs)."""
        hidden = set(self.hidden)
        stored = tuple(c for c in self.columns if c.full_name not in hidden)
        return stored + tuple(f for t in self.transforms for f in t.features)

    @property
    def request_fields(self) -> tuple[str, ...]:
        """Request data the service's on-demand feature views need, in first-use order."""
        return tuple(dict.fromkeys(name for t in self.transforms for name, _ in t.request))

    def to_json(self) -> str:
        return json.dumps(
            {
                "service": self.service,
                "project": self.project,
                "entity_types": self.entity_types,
                "views": [asdict(v) for v in self.views],
                "transforms": [asdict(t) for t in self.transforms],
                "hidden": list(self.hidden),
            },
            allow_nan=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ReadPlan:
        raw = json.loads(text)
        views = tuple(
            ViewRead(
                v["name"],
                tuple(v["join_keys"]),
                v["ttl_seconds"],
                tuple(FeatureColumn(**f) for f in v["features"]),
                v.get("layout", 0),
                v.get("width", 0),
                tuple(v.get("packed", ())),
            )
            for v in raw["views"]
        )
        transforms = tuple(
            Transform(
                t["name"],
                t["mode"],
                tuple(FeatureColumn(**f) for f in t["features"]),
                tuple(t["sources"]),
                tuple((name, dtype) for name, dtype in t["request"]),
                t.get("definition", ""),
            )
            for t in raw.get("transforms", ())
        )
        return cls(
            raw["service"],
            raw["project"],
            raw["entity_types"],
            views,
            transforms,
            tuple(raw.get("hidden", ())),
        )
