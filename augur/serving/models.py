"""Serving models: a published version, its read plan and runtime, and how inputs are assembled.

Loading validates before a model takes traffic: the artifact's checksum, that every input
exists in the Feast registry or is a declared request feature, and a finite warm-up batch;
the artifact is first loaded and warmed in a probe process (probe.py) when asked.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from augur.features.odfv import OnDemandViews, request_values
from augur.features.plan import ReadPlan, Transform
from augur.features.reader import FeatureRows
from augur.features.typed import is_numeric
from augur.modelrepo.repository import REMOTE, ModelRepository, ModelVersion, RepositoryError
from augur.serving import metrics, probe
from augur.serving.runtimes import Runtime, load_runtime

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    pass


class ArtifactRejected(ModelLoadError):
    """The artifact crashed, hung or failed its warm-up in the probe process: the same
    bytes will do so again, so the version is bad until its files change."""


# Widening within a family (Int32 -> Int64, Float32 -> Float64) keeps a model's meaning;
# crossing families (a count that became a float ratio, a flag that became a count) does not.
DTYPE_FAMILY = {
    "Int32": "integer",
    "Int64": "integer",
    "UnixTimestamp": "integer",
    "Float32": "float",
    "Float64": "float",
    "Bool": "bool",
}


@dataclass(frozen=True)
class ServingModel:
    version: ModelVersion
    plan: ReadPlan
    runtime: Runtime
    store_columns: np.ndarray  # plan column feeding each store input
    store_inputs: np.ndarray  # model input position of each store input
    request_inputs: tuple[tuple[str, int], ...]  # request feature -> model input position
    # on-demand feature views feeding inputs, and (their output, model input position)
    transforms: tuple[Transform, ...] = ()
    transform_inputs: tuple[tuple[str, int], ...] = ()
    on_demand: OnDemandViews | None = None
    # scored on other servers (kind remote): its wait runs off the thread that runs calls
    off_thread: bool = False
    # store_inputs / store_columns as slices where consecutive (the usual model, whose inputs
    # are its service's columns in order): a slice copies in a fraction of fancy indexing's time
    _store_to: slice | np.ndarray = field(init=False, repr=False, compare=False)
    _store_from: slice | np.ndarray = field(init=False, repr=False, compare=False)
    _n_inputs: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_store_to", _as_slice(self.store_inputs))
        object.__setattr__(self, "_store_from", _as_slice(self.store_columns))
        object.__setattr__(self, "_n_inputs", len(self.version.features))

    def infer(self, batch: np.ndarray, deadline: float | None) -> np.ndarray:
        """Scores of an assembled batch; `deadline` (monotonic) bounds a remote model's
        attempts, a local model runs to the end."""
        if self.off_thread:
            return self.runtime.predict(batch, deadline)  # type: ignore[call-arg]
        return self.runtime.predict(batch)

    @property
    def name(self) -> str:
        return self.version.spec.name

    @property
    def n_inputs(self) -> int:
        return len(self.version.features)

    def assemble(self, rows: FeatureRows, request: Mapping[str, np.ndarray]) -> np.ndarray:
        """The float32 batch in the model's feature order."""
        batch = np.empty((len(rows.values), self._n_inputs), np.float32)
        batch[:, self._store_to] = rows.values[:, self._store_from]
        for name, position in self.request_inputs:
            batch[:, position] = request[name]
        if self.transforms:
            self._transform(batch, rows, request)
        return batch

    def _transform(
        self, batch: np.ndarray, rows: FeatureRows, request: Mapping[str, np.ndarray]
    ) -> None:
        """Compute the on-demand inputs from the read's columns and the request data, as
        Feast does on its read; their cost is the model's "transform" stage."""
        started = time.perf_counter()
        n = len(batch)
        inputs: dict[str, list] = {
            c.full_name: _python(rows.values[:, i]) for i, c in enumerate(self.plan.columns)
        }
        for transform in self.transforms:
            for name, dtype in transform.request:
                inputs[name] = [request_values(v, dtype) for v in request[name].tolist()]
        computed: dict[str, list] = {}
        for transform in self.transforms:
            assert self.on_demand is not None
            computed.update(self.on_demand.compute(transform, inputs, n))
        for name, position in self.transform_inputs:
            batch[:, position] = [math.nan if v is None else float(v) for v in computed[name]]
        metrics.STAGE.labels(self.name, "transform").observe(time.perf_counter() - started)


def _as_slice(positions: np.ndarray) -> slice | np.ndarray:
    """`positions` as the slice it equals when consecutive and rising, else as it is."""
    if len(positions) and np.array_equal(
        positions, np.arange(positions[0], positions[0] + len(positions))
    ):
        return slice(int(positions[0]), int(positions[0]) + len(positions))
    return positions


def _python(column: np.ndarray) -> list:
    return [None if v != v else v for v in column.tolist()]  # NaN: no value, as Feast's None


def load_model(
    repo: ModelRepository,
    name: str,
    plans: Mapping[str, ReadPlan],
    threads: int = 1,
    version: str = "",
    compile_cache: Path | None = None,
    probe_timeout_s: float | None = None,
) -> ServingModel:
    """`probe_timeout_s`: load and warm the artifact in a probe process first, within that
    many seconds (None: only in this process, for tools that load a trusted artifact)."""
    try:
        resolved = repo.resolve(name, version)
    except RepositoryError as e:
        raise ModelLoadError(str(e)) from e
    spec = resolved.spec
    plan = plans.get(spec.feature_service)
    if plan is None:
        raise ModelLoadError(
            f"model {name}: feature service {spec.feature_service!r} is not "
            f"in the Feast registry (have: {', '.join(sorted(plans))})"
        )
    columns = {n: i for i, n in enumerate(plan.feature_names)}
    on_demand = {f.full_name: (t, f.dtype) for t in plan.transforms for f in t.features}
    transforms: dict[str, Transform] = {}
    transform_pos = []
    trained_types = resolved.metadata.get("feature_dtypes", {})
    store_cols, store_pos, request_pos = [], [], []
    for position, feature in enumerate(resolved.features):
        if feature in columns:
            served = plan.columns[columns[feature]].dtype
            _check_numeric(name, resolved.version, feature, served)
            trained = trained_types.get(feature, served)
            if DTYPE_FAMILY.get(trained) != DTYPE_FAMILY.get(served):
                raise ModelLoadError(
                    f"model {name}@{resolved.version}: input {feature!r} was trained as "
                    f"{trained} but the registry now declares {served}"
                )
            store_cols.append(columns[feature])
            store_pos.append(position)
        elif feature in spec.request_features:
            request_pos.append((feature, position))
        elif feature in on_demand:
            transform, dtype = on_demand[feature]
            _check_numeric(name, resolved.version, feature, dtype)
            lacking = [r for r, _ in transform.request if r not in spec.request_features]
            if lacking:
                raise ModelLoadError(
                    f"model {name}@{resolved.version}: input {feature!r} is computed from "
                    f"request data {', '.join(lacking)}; declare them in model.yaml's "
                    f"request_features"
                )
            transforms[transform.name] = transform
            transform_pos.append((feature, position))
        else:
            raise ModelLoadError(
                f"model {name}@{resolved.version}: input {feature!r} is neither "
                f"in feature service {spec.feature_service!r} nor a request "
                f"feature of model.yaml"
            )
    if spec.kind == REMOTE:
        return _load_remote(
            repo,
            resolved,
            plan,
            (store_cols, store_pos, request_pos),
            plans,
            threads,
            compile_cache,
            probe_timeout_s,
        )
    if probe_timeout_s is not None:
        try:
            took = probe.vet_once(resolved, compile_cache, probe_timeout_s)
        except probe.ProbeFailed as e:
            raise ArtifactRejected(f"model {name}@{resolved.version}: {e}") from e
        if took is not None:
            log.info("probed %s@%s in a child process in %.2fs", name, resolved.version, took)
    try:
        # the bytes the probe loaded: it checked them against resolved.metadata, as this does
        runtime = load_runtime(resolved, threads, compile_cache)
    except Exception as e:
        raise ModelLoadError(f"model {name}@{resolved.version}: {e}") from e
    model = ServingModel(
        resolved,
        plan,
        runtime,
        np.array(store_cols, np.intp),
        np.array(store_pos, np.intp),
        tuple(request_pos),
        tuple(transforms.values()),
        tuple(transform_pos),
        _on_demand_views(plan, transforms),
    )
    _warm_up(model)
    _watch_compile(runtime, name, resolved.version)
    log.info(
        "loaded model %s@%s (%s, %d inputs, device %s)",
        name,
        resolved.version,
        spec.kind,
        model.n_inputs,
        runtime.device,
    )
    return model


def _check_numeric(model: str, version: str, feature: str, dtype: str) -> None:
    if not is_numeric(dtype):
        raise ModelLoadError(
            f"model {model}@{version}: input {feature!r} has Feast type {dtype}; a model "
            f"input must be numeric or bool (Int32, Int64, Float32, Float64, Bool, "
            f"UnixTimestamp): drop it from the model's features or train on a numeric one"
        )


def _on_demand_views(plan: ReadPlan, used: Mapping[str, Transform]) -> OnDemandViews | None:
    """Feast's UDFs decoded at load, only where the model takes on-demand inputs."""
    if not used:
        return None
    views = OnDemandViews()
    views.prepare(plan)
    return views


def _watch_compile(runtime: Runtime, name: str, version: str) -> None:
    """Export whether a `compile: auto` model scores with its compiled forest yet."""
    from augur.serving.runtimes.tiered_runtime import TieredTreeRuntime

    if not isinstance(runtime, TieredTreeRuntime):
        return
    gauge = metrics.MODEL_COMPILED.labels(name, version)
    gauge.set(1 if runtime.compiled else 0)
    runtime.on_compiled = lambda: gauge.set(1)


def _warm_up(model: ServingModel) -> None:
    try:
        probe.warm_up(model.runtime, model.n_inputs, len(model.version.spec.outputs))
    except probe.WarmUpError as e:
        raise ModelLoadError(f"model {model.name}@{model.version.version}: {e}") from e
    except Exception as e:
        raise ModelLoadError(
            f"model {model.name}@{model.version.version}: warm-up failed: {e}"
        ) from e


def _load_remote(
    repo: ModelRepository,
    resolved: ModelVersion,
    plan: ReadPlan,
    inputs: tuple[list, list, list],
    plans: Mapping[str, ReadPlan],
    threads: int,
    compile_cache: Path | None,
    probe_timeout_s: float | None,
) -> ServingModel:
    """A `kind: remote` model: its backends' channels and its fallback, loaded as any local
    model is. No warm-up call: backends down at start are for the breakers to find."""
    from augur.serving.runtimes.remote import load_remote

    spec = resolved.spec
    assert spec.remote is not None
    fallback = None
    if spec.remote.fallback:
        if spec.remote.fallback == spec.name:
            raise ModelLoadError(f"model {spec.name}: remote.fallback names the model itself")
        fallback = load_model(
            repo, spec.remote.fallback, plans, threads, "", compile_cache, probe_timeout_s
        )
    try:
        runtime = load_remote(resolved, fallback)
    except ValueError as e:
        raise ModelLoadError(f"model {spec.name}: {e}") from e
    store_cols, store_pos, request_pos = inputs
    log.info(
        "loaded remote model %s (%d inputs; backends %s; fallback %s)",
        spec.name,
        len(resolved.features),
        ", ".join(b.address for b in spec.remote.backends),
        spec.remote.fallback or "none",
    )
    return ServingModel(
        resolved,
        plan,
        runtime,
        np.array(store_cols, np.intp),
        np.array(store_pos, np.intp),
        tuple(request_pos),
        off_thread=True,
    )
