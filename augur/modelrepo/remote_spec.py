"""model.yaml's `remote`: where and how a `kind: remote` model is scored on other Open
Inference Protocol servers (augur/serving/runtimes/remote.py runs it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from augur.modelrepo.errors import RepositoryError


@dataclass(frozen=True)
class BackendSpec:
    """One OIP server a remote model may be scored on."""

    address: str  # host:port of its gRPC endpoint
    model: str = ""  # the model's name there; "": this model's name
    version: str = ""  # the version to ask for there; "": the backend's default


@dataclass(frozen=True)
class RemoteSpec:
    """Where and how a `kind: remote` model is scored (model.yaml `remote`)."""

    features: tuple[str, ...]  # the tensor's columns, in order
    backends: tuple[BackendSpec, ...]  # tried in order; the next after a retryable failure
    input: str = "input-0"  # the name of the one [rows, features] FP32 input tensor
    output: str = ""  # the backend's output to read; "": its first
    # an attempt's timeout when the caller set no deadline (with one: the share of what is
    # left, split among the backends still to try)
    attempt_timeout_ms: int = 1000
    hedge_after_ms: float | None = None  # ask the next backend too if no answer by then
    hedge_percentile: float | None = None  # ... or by this percentile of recent answers
    breaker_failures: int = 3  # consecutive failures that open a backend's circuit
    breaker_cooldown_ms: int = 1000  # how long it stays open before one probe call
    fallback: str = ""  # a local model of this repository that answers when no backend can


_REMOTE_KEYS = {f for f in RemoteSpec.__dataclass_fields__}


def parse_remote(raw: object, path: Path) -> RemoteSpec:
    if not isinstance(raw, dict):
        raise RepositoryError(
            f"{path}: kind remote needs `remote`, a mapping with features and backends"
        )
    unknown = sorted(set(raw) - _REMOTE_KEYS)
    if unknown:
        raise RepositoryError(
            f"{path}: remote.{unknown[0]} is not an option; remote takes "
            f"{', '.join(sorted(_REMOTE_KEYS))}"
        )
    features = raw.get("features")
    if not isinstance(features, list) or not features:
        raise RepositoryError(f"{path}: remote.features must list the tensor's columns in order")
    backends = []
    for i, entry in enumerate(raw.get("backends") or ()):
        entry = {"address": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not entry.get("address"):
            raise RepositoryError(
                f"{path}: remote.backends[{i}] must be host:port or a mapping with address"
            )
        try:
            backends.append(BackendSpec(**{k: str(v) for k, v in entry.items()}))
        except TypeError:
            raise RepositoryError(
                f"{path}: remote.backends[{i}] takes address, model and version"
            ) from None
    if not backends:
        raise RepositoryError(f"{path}: remote.backends must name at least one OIP server")
    options = {k: v for k, v in raw.items() if k not in ("features", "backends")}
    for key in ("attempt_timeout_ms", "breaker_failures", "breaker_cooldown_ms"):
        value = options.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise RepositoryError(
                f"{path}: remote.{key} must be a whole number >= 1, got {value!r}"
            )
    for key in ("hedge_after_ms", "hedge_percentile"):
        value = options.get(key)
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            raise RepositoryError(f"{path}: remote.{key} must be a number > 0, got {value!r}")
    if options.get("hedge_percentile") is not None and options["hedge_percentile"] >= 100:
        raise RepositoryError(f"{path}: remote.hedge_percentile must be below 100")
    return RemoteSpec(tuple(str(f) for f in features), tuple(backends), **options)
