"""Model runtimes: a loaded artifact that maps a float32 (rows, features) batch to scores.

`load_runtime` is the one place a kind is dispatched to its runtime. Each runtime module
imports its framework only when a model of its kind is loaded; a plugin runtime comes from
an installed package's `augur.runtimes` entry point (plugins.py), never from the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from augur.modelrepo.formats import check_artifact, check_version_folder
from augur.modelrepo.repository import ModelVersion

COMPILE_CACHE = ".compiled"  # under the model repository; no model.yaml, so not a model


class Runtime(Protocol):
    device: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 (rows, features) -> float32 (rows, outputs)."""
        ...


def load_runtime(
    version: ModelVersion, threads: int = 1, compile_cache: Path | None = None
) -> Runtime:
    """`compile_cache`: where compiled LightGBM models keep their native code; by default
    <model repository>/.compiled (server.compile_cache). Refuses, before any framework
    parses it, an artifact whose bytes differ from metadata.json's sha256, a file of the
    wrong kind and any pickle in the version's folder."""
    version.verify()
    check_version_folder(version.path)
    kind, artifact = version.spec.kind, version.artifact
    check_artifact(kind, artifact)
    cache = compile_cache or version.path.parent.parent / COMPILE_CACHE
    # verify() has just matched the recorded sha256 to the artifact's bytes
    sha256 = version.metadata["sha256"]
    if version.spec.compile == "lleaves":
        from augur.serving.runtimes.compiled_runtime import CompiledTreeRuntime

        return CompiledTreeRuntime(artifact, sha256, cache, threads)
    if kind == "lightgbm" and version.spec.compile == "auto":
        from augur.serving.runtimes.tiered_runtime import TieredTreeRuntime

        label = f"model {version.spec.name}@{version.version}"
        return TieredTreeRuntime(artifact, sha256, cache, threads, label)
    if kind == "lightgbm":
        from augur.serving.runtimes.lightgbm_runtime import LightGBMRuntime

        return LightGBMRuntime(artifact, threads)
    if kind == "xgboost":
        from augur.serving.runtimes.xgboost_runtime import XGBoostRuntime

        return XGBoostRuntime(artifact, threads)
    if kind == "catboost":
        from augur.serving.runtimes.catboost_runtime import CatBoostRuntime

        return CatBoostRuntime(artifact, threads)
    if kind == "onnx":
        from augur.serving.runtimes.onnx_runtime import OnnxRuntime

        return OnnxRuntime(artifact, version.spec.device, threads, version.features)
    if kind == "torch":
        from augur.serving.runtimes.torch_runtime import TorchRuntime

        return TorchRuntime(artifact, version.spec.device, threads, len(version.features))
    from augur.serving.runtimes.plugins import load_plugin

    return load_plugin(version, threads)
