"""Model runtimes: a loaded artifact that maps a float32 (rows, features) batch to scores.

Each runtime module imports its framework only when a model of its kind is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

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
    """`compile_cache`: where `compile: lleaves` models keep their native code; by default
    <model repository>/.compiled (server.compile_cache)."""
    version.verify()
    if version.spec.compile == "lleaves":
        from augur.serving.runtimes.compiled_runtime import CompiledTreeRuntime

        cache = compile_cache or version.path.parent.parent / COMPILE_CACHE
        # verify() has just matched the recorded sha256 to the artifact's bytes
        return CompiledTreeRuntime(version.artifact, version.metadata["sha256"], cache, threads)
    if version.spec.kind == "lightgbm":
        from augur.serving.runtimes.lightgbm_runtime import LightGBMRuntime

        return LightGBMRuntime(version.artifact, threads)
    from augur.serving.runtimes.torch_runtime import TorchRuntime

    return TorchRuntime(version.artifact, version.spec.device, threads, len(version.features))
