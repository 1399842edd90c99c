"""Model runtimes: a loaded artifact that maps a float32 (rows, features) batch to scores.

Each runtime module imports its framework only when a model of its kind is loaded.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from predictor.repository import ModelVersion


class Runtime(Protocol):
    device: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 (rows, features) -> float32 (rows, outputs)."""
        ...


def load_runtime(version: ModelVersion, threads: int = 1) -> Runtime:
    version.verify()
    if version.spec.kind == "lightgbm":
        from predictor.runtimes.lightgbm_runtime import LightGBMRuntime

        return LightGBMRuntime(version.artifact, threads)
    from predictor.runtimes.torch_runtime import TorchRuntime

    return TorchRuntime(version.artifact, version.spec.device, threads)
