"""The model repository on disk: models/<name>/model.yaml and immutable versions beside it.

    models/<name>/model.yaml    what the model is (kind, feature service, request features,
                                outputs), how it runs (device, compile, batching) and how
                                it is served:
                                aliases (stable: v2), canary (version, weight, guardrails),
                                shadow, last rollback
    models/<name>/<version>/    the artifact (model.txt LightGBM, model.pt2 torch.export or
                                model.pt TorchScript, model.ubj/.json XGBoost, model.cbm
                                CatBoost, model.onnx ONNX, a plugin's own file), metadata.json
                                (feature order and dtypes, window, metrics, artifact, sha256)

Publishing writes a version into a temporary folder and renames it into place, so a reader
never sees half a version; versions are v1, v2, ... in publishing order and never change.
The first version becomes `stable`; later ones take traffic only once promoted or canaried.
model.yaml is the one source of truth for serving: operators and the server's guardrails
change it with small read-modify-write operations, each an atomic file replace. The
schema of model.yaml is augur/modelrepo/spec.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from augur.modelrepo.formats import artifact_name, check_artifact
from augur.modelrepo.spec import (  # noqa: F401  (importers of the schema from here)
    ARTIFACTS,
    COMPILERS,
    KINDS,
    REMOTE,
    BatchingSpec,
    CanarySpec,
    Guardrails,
    ModelSpec,
    RepositoryError,
    ShadowSpec,
    check_operator_text,
    parse_spec,
)

_VERSION = re.compile(r"^v(\d+)$")
_WRITE_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelVersion:
    spec: ModelSpec
    version: str
    path: Path
    metadata: dict

    @property
    def artifact(self) -> Path:
        """The file metadata.json names (versions published before it did: the kind's file
        that exists, model.pt for TorchScript)."""
        named = self.metadata.get("artifact")
        allowed = ARTIFACTS.get(self.spec.kind)
        if isinstance(named, str) and (named in allowed if allowed else Path(named).name == named):
            return self.path / named
        for name in allowed or ():
            if (self.path / name).exists():
                return self.path / name
        return self.path / KINDS.get(self.spec.kind, "model")

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.metadata["features"])

    def verify(self) -> None:
        """Refuse an artifact whose bytes differ from what was published."""
        if self.spec.kind == REMOTE:
            return  # nothing on disk: model.yaml is the whole of it
        expected = self.metadata.get("sha256")
        actual = sha256_of(self.artifact)
        if expected != actual:
            raise RepositoryError(
                f"{self.artifact}: sha256 {actual} does not match "
                f"metadata.json ({expected}); refusing to load it"
            )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelRepository:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "model.yaml").is_file())

    def spec(self, name: str) -> ModelSpec:
        return parse_spec(name, self._raw(name), self.root / name / "model.yaml")

    def versions(self, name: str) -> list[str]:
        model_dir = self.root / name
        found = (
            [p.name for p in model_dir.iterdir() if _VERSION.match(p.name)]
            if model_dir.is_dir()
            else []
        )
        return sorted(found, key=lambda v: int(v[1:]))

    def default_version(self, spec: ModelSpec) -> str:
        """The `stable` alias, else the newest version."""
        if spec.kind == REMOTE:
            return REMOTE
        versions = self.versions(spec.name)
        if not versions:
            raise RepositoryError(f"model {spec.name!r} has no published version")
        return spec.aliases.get("stable") or versions[-1]

    def resolve(self, name: str, version: str = "") -> ModelVersion:
        """A version by id or alias; the default is the `stable` alias, else the newest."""
        spec = self.spec(name)
        if spec.kind == REMOTE and spec.remote is not None:
            if spec.aliases.get(version, version) not in ("", REMOTE):
                raise RepositoryError(
                    f"model {name!r} is remote: its one version is {REMOTE!r}, not {version!r}"
                )
            features = {"features": list(spec.remote.features)}
            return ModelVersion(spec, REMOTE, self.root / name, features)
        versions = self.versions(name)
        wanted = version or self.default_version(spec)
        wanted = spec.aliases.get(wanted, wanted)
        if wanted not in versions:
            raise RepositoryError(
                f"model {name!r} has no version or alias {version or wanted!r}; "
                f"versions: {', '.join(versions) or 'none'}"
            )
        path = self.root / name / wanted
        metadata = json.loads((path / "metadata.json").read_text())
        return ModelVersion(spec, wanted, path, metadata)

    def publish(self, spec: ModelSpec, artifact: Path, metadata: dict) -> ModelVersion:
        """Copy `artifact` in as the next version of `spec.name`, with its metadata."""
        name = artifact_name(spec.kind, Path(artifact))
        check_artifact(spec.kind, Path(artifact))  # before anything is written
        model_dir = self.root / spec.name
        model_dir.mkdir(parents=True, exist_ok=True)
        self._write_identity(spec)
        staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=model_dir))
        try:
            target = staging / name
            shutil.copyfile(artifact, target)
            metadata = {
                **metadata,
                "name": spec.name,
                "kind": spec.kind,
                "artifact": name,
                "feature_service": spec.feature_service,
                "sha256": sha256_of(target),
            }
            while True:
                existing = self.versions(spec.name)
                version = f"v{int(existing[-1][1:]) + 1 if existing else 1}"
                metadata["version"] = version
                (staging / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
                try:
                    os.rename(staging, model_dir / version)  # fails if another publisher won
                    break
                except OSError:
                    if not (model_dir / version).exists():
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        # A model's first version serves at once; later ones wait for promote or a canary,
        # so publishing never changes what callers get.
        if "stable" not in self.spec(spec.name).aliases:
            self.set_alias(spec.name, "stable", version)
        return self.resolve(spec.name, version)

    # Serving policy: each operation is one read-modify-write of model.yaml.

    def promote(self, name: str, version: str) -> ModelSpec:
        """Make `version` stable; a canary of that version has done its job and ends."""

        def change(raw: dict) -> None:
            raw.setdefault("aliases", {})["stable"] = self._existing(name, version)
            if (raw.get("canary") or {}).get("version") == raw["aliases"]["stable"]:
                raw.pop("canary")

        return self._update(name, change)

    def set_alias(self, name: str, alias: str, version: str) -> ModelSpec:
        def change(raw: dict) -> None:
            raw.setdefault("aliases", {})[alias] = self._existing(name, version)

        return self._update(name, change)

    def set_canary(
        self, name: str, version: str, weight: float, guardrails: dict | None = None
    ) -> ModelSpec:
        if not 0.0 <= weight <= 1.0:
            raise RepositoryError(f"canary weight must be within [0, 1], got {weight}")

        def change(raw: dict) -> None:
            if weight == 0:
                raw.pop("canary", None)
                return
            canary = raw.get("canary") or {}
            if guardrails is not None:
                canary["guardrails"] = guardrails
            canary.update(version=self._existing(name, version), weight=weight)
            raw["canary"] = canary

        return self._update(name, change)

    def set_shadow(self, name: str, version: str | None, threshold: float = 0.5) -> ModelSpec:
        def change(raw: dict) -> None:
            if not version:
                raw.pop("shadow", None)
            else:
                raw["shadow"] = {"version": self._existing(name, version), "threshold": threshold}

        return self._update(name, change)

    def rollback(self, name: str, reason: str) -> ModelSpec:
        """End the canary, sending all traffic back to stable, and record why."""
        check_operator_text("reason", reason)

        def change(raw: dict) -> None:
            canary = raw.pop("canary", None)
            if canary is None:
                raise RepositoryError(f"model {name} has no canary to roll back")
            raw["last_rollback"] = {
                "version": canary["version"],
                "reason": reason,
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }

        return self._update(name, change)

    def start_experiment(
        self, name: str, experiment: str, arms: dict[str, float], sticky_key: str = ""
    ) -> ModelSpec:
        """Split `name`'s traffic between versions at fixed shares (sticky per entity) until
        stopped; a running experiment of the model is replaced."""

        def change(raw: dict) -> None:
            resolved = {self._existing(name, v): w for v, w in arms.items()}
            if len(resolved) != len(arms):
                raise RepositoryError(f"experiment {experiment}: two arms name one version")
            raw["experiment"] = {"name": experiment, "arms": resolved}
            if sticky_key:
                raw["experiment"]["sticky_key"] = sticky_key

        return self._update(name, change)

    def stop_experiment(self, name: str) -> ModelSpec:
        """End `name`'s experiment: calls that name no version go to stable again. Its
        definition stays as `last_experiment`."""

        def change(raw: dict) -> None:
            experiment = raw.pop("experiment", None)
            if experiment is None:
                raise RepositoryError(f"model {name} runs no experiment")
            # kept for `augur experiments report`, which assigns outcomes to arms by it
            at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            raw["last_experiment"] = {**experiment, "stopped_at": at}

        return self._update(name, change)

    def _existing(self, name: str, version: str) -> str:
        spec = self.spec(name)
        resolved = spec.aliases.get(version, version)
        if resolved not in self.versions(name):
            raise RepositoryError(
                f"model {name} has no version {version!r}; "
                f"versions: {', '.join(self.versions(name)) or 'none'}"
            )
        return resolved

    def _raw(self, name: str) -> dict:
        path = self.root / name / "model.yaml"
        if not path.is_file():
            raise RepositoryError(f"no model {name!r} in {self.root}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise RepositoryError(f"{path}: expected a mapping")
        return raw

    def _update(self, name: str, change: Callable[[dict], None]) -> ModelSpec:
        with _WRITE_LOCK:
            raw = self._raw(name)
            change(raw)
            spec = parse_spec(name, raw, self.root / name / "model.yaml")  # validate first
            self._write(name, raw)
        return spec

    def _write(self, name: str, raw: dict) -> None:
        path = self.root / name / "model.yaml"
        tmp = path.with_suffix(f".yaml.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
        os.replace(tmp, path)

    def _write_identity(self, spec: ModelSpec) -> None:
        """Write what the model is; what serves (aliases, canary, ...) stays the operator's."""
        path = self.root / spec.name / "model.yaml"
        with _WRITE_LOCK:
            raw = self._raw(spec.name) if path.is_file() else {}
            raw.update(
                kind=spec.kind,
                feature_service=spec.feature_service,
                request_features=list(spec.request_features),
                outputs=list(spec.outputs),
                device=raw.get("device", spec.device),  # how it runs stays the operator's
            )
            if spec.compile != "auto":  # the default goes unwritten
                raw.setdefault("compile", spec.compile)
            if spec.aliases and "aliases" not in raw:
                raw["aliases"] = dict(spec.aliases)
            self._write(spec.name, raw)
