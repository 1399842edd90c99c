"""The model repository on disk: models/<name>/model.yaml and immutable versions beside it.

    models/<name>/model.yaml         kind, feature service, request features, outputs, device,
                                     aliases (e.g. stable: v2)
    models/<name>/<version>/         model.txt (LightGBM) or model.pt (TorchScript),
                                     metadata.json (feature order, window, metrics, sha256)

Publishing writes a version into a temporary folder and renames it into place, so a reader
never sees half a version. Versions are named v1, v2, ... in publishing order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

KINDS = {"lightgbm": "model.txt", "torch": "model.pt"}
_VERSION = re.compile(r"^v(\d+)$")


class RepositoryError(ValueError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str
    feature_service: str
    request_features: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ("score",)
    device: str = "cpu"
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelVersion:
    spec: ModelSpec
    version: str
    path: Path
    metadata: dict

    @property
    def artifact(self) -> Path:
        return self.path / KINDS[self.spec.kind]

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.metadata["features"])

    def verify(self) -> None:
        """Refuse an artifact whose bytes differ from what was published."""
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
        path = self.root / name / "model.yaml"
        if not path.is_file():
            raise RepositoryError(f"no model {name!r} in {self.root}")
        raw = yaml.safe_load(path.read_text()) or {}
        kind = raw.get("kind")
        if kind not in KINDS:
            raise RepositoryError(f"{path}: kind must be one of {sorted(KINDS)}, got {kind!r}")
        if not raw.get("feature_service"):
            raise RepositoryError(f"{path}: feature_service is required")
        return ModelSpec(
            name,
            kind,
            raw["feature_service"],
            tuple(raw.get("request_features") or ()),
            tuple(raw.get("outputs") or ("score",)),
            raw.get("device", "cpu"),
            dict(raw.get("aliases") or {}),
        )

    def versions(self, name: str) -> list[str]:
        model_dir = self.root / name
        found = (
            [p.name for p in model_dir.iterdir() if _VERSION.match(p.name)]
            if model_dir.is_dir()
            else []
        )
        return sorted(found, key=lambda v: int(v[1:]))

    def resolve(self, name: str, version: str = "") -> ModelVersion:
        """A version by id or alias; the default is the `stable` alias, else the newest."""
        spec = self.spec(name)
        versions = self.versions(name)
        if not versions:
            raise RepositoryError(f"model {name!r} has no published version")
        wanted = version or spec.aliases.get("stable") or versions[-1]
        wanted = spec.aliases.get(wanted, wanted)
        if wanted not in versions:
            raise RepositoryError(
                f"model {name!r} has no version or alias {version!r}; "
                f"versions: {', '.join(versions)}"
            )
        path = self.root / name / wanted
        metadata = json.loads((path / "metadata.json").read_text())
        return ModelVersion(spec, wanted, path, metadata)

    def publish(self, spec: ModelSpec, artifact: Path, metadata: dict) -> ModelVersion:
        """Copy `artifact` in as the next version of `spec.name`, with its metadata."""
        model_dir = self.root / spec.name
        model_dir.mkdir(parents=True, exist_ok=True)
        self._write_spec(spec)
        staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=model_dir))
        try:
            target = staging / KINDS[spec.kind]
            shutil.copyfile(artifact, target)
            metadata = {
                **metadata,
                "name": spec.name,
                "kind": spec.kind,
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
        return self.resolve(spec.name, version)

    def _write_spec(self, spec: ModelSpec) -> None:
        path = self.root / spec.name / "model.yaml"
        aliases = spec.aliases
        if path.is_file():  # aliases belong to the operator; publishing keeps them
            aliases = (yaml.safe_load(path.read_text()) or {}).get("aliases") or aliases
        body = {
            "kind": spec.kind,
            "feature_service": spec.feature_service,
            "request_features": list(spec.request_features),
            "outputs": list(spec.outputs),
            "device": spec.device,
        }
        if aliases:
            body["aliases"] = dict(aliases)
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(body, sort_keys=False))
        os.replace(tmp, path)
