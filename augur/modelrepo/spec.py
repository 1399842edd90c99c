"""The one schema of a model entry: what a model is (kind: a built-in or an installed runtime
plugin's; feature service, request features, outputs), how it runs (device, compile,
batching) and how it is served (aliases, canary, shadow). model.yaml in the model repository
and each entry of a feature repo's models.yaml are parsed here; the folders and versions are
augur/modelrepo/repository.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from augur.modelrepo.errors import RepositoryError
from augur.modelrepo.experiment_spec import ExperimentSpec, parse_experiment
from augur.modelrepo.remote_spec import RemoteSpec, parse_remote

# importers of the schema from here keep working
__all__ = ["ExperimentSpec", "RemoteSpec", "RepositoryError", "parse_experiment"]

# The artifact file a version of each built-in kind holds; ARTIFACTS lists every name a
# kind reads, the first being what publishing names an artifact of no other suffix.
# torch: model.pt2 (torch.export) is current, model.pt (TorchScript) is read for one release.
KINDS = {
    "lightgbm": "model.txt",
    "torch": "model.pt2",
    "xgboost": "model.ubj",
    "catboost": "model.cbm",
    "onnx": "model.onnx",
}
ARTIFACTS = {
    "lightgbm": ("model.txt",),
    "torch": ("model.pt2", "model.pt"),
    "xgboost": ("model.ubj", "model.json"),
    "catboost": ("model.cbm",),
    "onnx": ("model.onnx",),
}
# Runtimes an operator installs (pip) register under this entry point group; a model.yaml
# `kind:` may name one. Their code comes from the environment, never from the repository.
PLUGIN_GROUP = "augur.runtimes"
# A model scored on other Open Inference Protocol servers (augur/serving/runtimes/remote.py):
# no artifact, and one version, named so, described wholly by model.yaml's `remote`.
REMOTE = "remote"
# `compile`: how a LightGBM model runs; "none" is LightGBM's own predict, "lleaves" native
# code compiled from model.txt at load (augur/serving/runtimes/compiled_runtime.py), "auto"
# (the default) LightGBM's predict until the model is busy and its code is compiled aside
# (tiered_runtime.py); for other kinds "auto" is "none"
COMPILERS = ("auto", "none", "lleaves")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Guardrails:
    """Limits a canary must stay within over its most recent `window` calls."""

    max_error_rate: float | None = None
    max_p99_ms: float | None = None
    max_psi: float | None = None  # population stability index of scores vs stable
    # PSI of any one input of the canary's live traffic vs the version's training
    # distribution (metadata.json `training_distribution`)
    max_feature_psi: float | None = None
    window: int = 500
    min_requests: int = 50


@dataclass(frozen=True)
class CanarySpec:
    version: str
    weight: float  # share of entities (by sticky key hash) routed to the canary
    sticky_key: str = ""  # entity column to hash; default: the first view's first join key
    guardrails: Guardrails = field(default_factory=Guardrails)


@dataclass(frozen=True)
class ShadowSpec:
    version: str
    threshold: float = 0.5  # scores on the same side of it count as agreeing


@dataclass(frozen=True)
class BatchingSpec:
    """A model's own dynamic batching (model.yaml `batching`), in Triton's terms; it
    overrides server.batch_max_rows and server.batch_max_delay_us for this model."""

    max_batch_size: int  # rows a batch closes at; 0: this model's calls are scored alone
    max_queue_delay_us: int | None = None  # None: the server's batch_max_delay_us


@dataclass(frozen=True)
class LoggingSpec:
    """Served-feature logging (model.yaml `logging`): the share of rows whose inputs, score
    and version are written, in Feast's feature-log layout, to `path` (a folder)."""

    sample_rate: float
    path: str  # absolute once parsed; default <model repo>/<model>/feature_log
    flush_interval_s: float = 30.0  # a log file is written at least this often


@dataclass(frozen=True)
class SkewThresholds:
    """Limits of the training/serving skew report (model.yaml `skew`): `augur skew` exits
    non-zero, and `augur models promote` refuses, beyond them."""

    max_mismatch: float = 0.01  # share of rows whose served value differs from offline
    max_psi: float = 0.25  # PSI of a feature's served distribution vs training


@dataclass(frozen=True)
class SloSpec:
    """A model's latency objective (model.yaml `slo`): its batcher picks the window and cap
    that serve the most calls while a call's p99 queue wait and batch run stay within it
    (augur/serving/slo.py); batching's max_batch_size, where set, caps the batch."""

    p99_ms: float


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str
    feature_service: str
    request_features: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ("score",)
    device: str = "cpu"
    aliases: dict[str, str] = field(default_factory=dict)
    canary: CanarySpec | None = None
    shadow: ShadowSpec | None = None
    last_rollback: dict | None = None
    # "unavailable" (answer UNAVAILABLE) or "serve_defaults" (score on declared defaults,
    # flagged `degraded`) when the online store cannot be read
    on_feature_store_error: str = "unavailable"
    compile: str = "auto"
    batching: BatchingSpec | None = None  # None: the server's batching settings
    experiment: ExperimentSpec | None = None
    logging: LoggingSpec | None = None  # None: model.yaml asks for no served-feature log
    skew: SkewThresholds | None = None  # None: promote is not gated on a skew report
    remote: RemoteSpec | None = None  # kind remote only
    slo: SloSpec | None = None  # None: batching as `batching` says, fixed


@cache
def plugin_kinds() -> frozenset[str]:
    """The kinds installed runtime plugins register (names only: nothing is imported)."""
    from importlib.metadata import entry_points

    return frozenset(ep.name for ep in entry_points(group=PLUGIN_GROUP)) - set(KINDS)


def parse_spec(name: str, raw: dict, path: Path) -> ModelSpec:
    kind = raw.get("kind")
    if kind not in KINDS and kind != REMOTE and kind not in plugin_kinds():
        raise RepositoryError(
            f"{path}: kind must be one of {sorted(KINDS)} or an installed runtime plugin "
            f"({', '.join(sorted(plugin_kinds())) or f'none in entry point group {PLUGIN_GROUP}'}"
            f"), got {kind!r} (or {REMOTE} in model.yaml: scored on Open Inference Protocol "
            f"servers)"
        )
    if not raw.get("feature_service"):
        raise RepositoryError(f"{path}: feature_service is required")
    canary = None
    if raw.get("canary"):
        c = raw["canary"]
        try:
            guard = Guardrails(**(c.get("guardrails") or {}))
            canary = CanarySpec(
                str(c["version"]), float(c.get("weight", 0.0)), c.get("sticky_key", ""), guard
            )
        except (KeyError, TypeError, ValueError) as e:
            raise RepositoryError(f"{path}: canary: {e}") from None
        if not 0.0 <= canary.weight <= 1.0:
            raise RepositoryError(f"{path}: canary.weight must be within [0, 1]")
    policy = raw.get("on_feature_store_error", "unavailable")
    if policy not in ("unavailable", "serve_defaults"):
        raise RepositoryError(
            f"{path}: on_feature_store_error must be unavailable or serve_defaults, got {policy!r}"
        )
    device = raw.get("device", "cpu")
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise RepositoryError(f"{path}: device must be cpu, cuda or cuda:<index>, got {device!r}")
    compiler = raw.get("compile", "auto")
    compiler = "auto" if compiler is None else compiler  # `compile:` left empty
    if compiler not in COMPILERS:
        raise RepositoryError(
            f"{path}: compile must be one of {', '.join(COMPILERS)}, got {compiler!r}"
        )
    if compiler == "lleaves" and kind != "lightgbm":
        raise RepositoryError(
            f"{path}: compile: {compiler} applies to kind lightgbm only, not {kind}"
        )
    shadow = None
    if raw.get("shadow"):
        s = raw["shadow"]
        shadow = ShadowSpec(str(s["version"]), float(s.get("threshold", 0.5)))
    batching = _parse_batching(raw.get("batching"), path)
    experiment = parse_experiment(raw.get("experiment"), path)
    if experiment is not None and canary is not None:
        raise RepositoryError(
            f"{path}: a model runs a canary or an experiment, not both: end the canary "
            "(promote or rollback) or stop the experiment first"
        )
    slo = _parse_slo(raw.get("slo"), path)
    return ModelSpec(
        name,
        kind,
        raw["feature_service"],
        tuple(raw.get("request_features") or ()),
        tuple(raw.get("outputs") or ("score",)),
        device,
        {str(k): str(v) for k, v in (raw.get("aliases") or {}).items()},
        canary,
        shadow,
        raw.get("last_rollback"),
        policy,
        compiler,
        batching,
        experiment,
        remote=parse_remote(raw.get("remote"), path) if kind == REMOTE else None,
        logging=_parse_logging(raw.get("logging"), path),
        skew=_parse_skew(raw.get("skew"), path),
        slo=slo,
    )


def _parse_logging(raw: object, path: Path) -> LoggingSpec | None:
    if raw is None:
        return None
    values = _numbers(raw, "logging", ("sample_rate", "flush_interval_s"), path)
    rate = values.get("sample_rate")
    if rate is None or not 0.0 <= rate <= 1.0:
        raise RepositoryError(f"{path}: logging.sample_rate must be within [0, 1], got {rate!r}")
    if values.get("flush_interval_s", 1.0) <= 0:
        raise RepositoryError(f"{path}: logging.flush_interval_s must be > 0")
    where = raw.get("path") or "feature_log"  # relative: to the model's folder
    if not isinstance(where, str):
        raise RepositoryError(f"{path}: logging.path must be a folder path, got {where!r}")
    folder = Path(where) if Path(where).is_absolute() else path.parent / where
    return LoggingSpec(rate, str(folder), values.get("flush_interval_s", 30.0))


def _parse_skew(raw: object, path: Path) -> SkewThresholds | None:
    if raw is None:
        return None
    values = _numbers(raw, "skew", ("max_mismatch", "max_psi"), path)
    return SkewThresholds(**values)


def _numbers(raw: object, block: str, keys: tuple[str, ...], path: Path) -> dict[str, float]:
    """A model.yaml block of numbers >= 0 (and `path`, for logging), by key."""
    if not isinstance(raw, dict):
        raise RepositoryError(f"{path}: {block} must be a mapping of {', '.join(keys)}")
    allowed = {*keys, "path"} if block == "logging" else set(keys)
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise RepositoryError(
            f"{path}: {block}.{unknown[0]} is not an option; {block} takes "
            f"{', '.join(sorted(allowed))}"
        )
    out = {}
    for key in keys:
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise RepositoryError(f"{path}: {block}.{key} must be a number >= 0, got {value!r}")
        out[key] = float(value)
    return out


def _parse_slo(raw: object, path: Path) -> SloSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"p99_ms"}:
        raise RepositoryError(
            f"{path}: slo must be a mapping with p99_ms alone, e.g. slo: {{p99_ms: 5}}; got {raw!r}"
        )
    value = raw["p99_ms"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 60_000:
        raise RepositoryError(
            f"{path}: slo.p99_ms must be a number of milliseconds in (0, 60000], got {value!r}"
        )
    return SloSpec(float(value))


def _parse_batching(raw: object, path: Path) -> BatchingSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RepositoryError(
            f"{path}: batching must be a mapping (max_batch_size, max_queue_delay_us), got {raw!r}"
        )
    unknown = sorted(set(raw) - {"max_batch_size", "max_queue_delay_us"})
    if unknown:
        raise RepositoryError(
            f"{path}: batching.{unknown[0]} is not an option; batching takes "
            f"max_batch_size and max_queue_delay_us"
        )
    values = {}
    for key in ("max_batch_size", "max_queue_delay_us"):
        value = raw.get(key)
        if value is None and key == "max_queue_delay_us":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RepositoryError(
                f"{path}: batching.{key} must be a whole number >= 0, got {value!r}"
            )
        values[key] = value
    return BatchingSpec(**values)


# What a model is and how it runs: the keys a training entry (models.yaml) may set, which
# publishing writes into model.yaml; the rest of model.yaml (aliases, canary, shadow,
# batching, rollbacks) is the operator's.
IDENTITY_KEYS = ("kind", "feature_service", "request_features", "outputs", "device", "compile")


def parse_identity(name: str, raw: dict, path: Path) -> ModelSpec:
    """A model entry that says only what the model is (a models.yaml entry, less `params`)."""
    if not isinstance(raw, dict):
        raise RepositoryError(f"{path}: model {name}: expected a mapping, got {raw!r}")
    unknown = sorted(set(raw) - set(IDENTITY_KEYS))
    if unknown:
        raise RepositoryError(
            f"{path}: model {name}: {unknown[0]} is not an option here; a model entry takes "
            f"{', '.join(IDENTITY_KEYS)}"
        )
    if raw.get("kind") == REMOTE:
        raise RepositoryError(
            f"{path}: model {name}: kind {REMOTE} is not trained; write its model.yaml in the "
            f"model repository instead"
        )
    return parse_spec(name, raw, path)


# Bounds on what operators send (Admin calls, `augur models`): model.yaml must stay small
# enough to read and to answer in one gRPC message.
OPERATOR_TEXT_LIMITS = {"model": 128, "version": 64, "reason": 1024}


class OperatorInputError(ValueError):
    """An operator's string beyond its bound; `field` names it."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


def check_operator_text(field_name: str, value: str) -> str:
    limit = OPERATOR_TEXT_LIMITS[field_name]
    if len(value) > limit:
        raise OperatorInputError(
            field_name, f"{field_name}: {len(value):,} characters; at most {limit:,}"
        )
    return value
