"""An example Augur runtime plugin: a logistic model kept as JSON (linear.json: weights,
bias and a fill value per input for missing ones), scored with numpy. It shows the plugin
interface (docs/runtimes.md), not a model family worth serving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ARTIFACT = "linear.json"


class LinearModel:
    outputs = ("score",)
    threads = 1  # numpy's matrix-vector product on one row batch; no pool of its own

    def __init__(self, weights: np.ndarray, bias: float, fill: np.ndarray):
        self.weights = weights
        self.bias = bias
        self.fill = fill

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = np.where(np.isnan(batch), self.fill, batch)
        z = x.astype(np.float64) @ self.weights + self.bias
        return (1.0 / (1.0 + np.exp(-z))).reshape(-1, 1)


def load(folder: Path, inputs: tuple[str, ...], threads: int, device: str) -> LinearModel:
    """Augur's entry point: the version in `folder`, fed `inputs` in this order."""
    if device != "cpu":
        raise ValueError(f"linear_json runs on cpu only, not {device!r}")
    raw = json.loads((Path(folder) / ARTIFACT).read_text())
    weights = np.asarray(raw["weights"], np.float64)
    fill = np.asarray(raw.get("fill", [0.0] * len(weights)), np.float32)
    if len(weights) != len(inputs) or len(fill) != len(inputs):
        raise ValueError(
            f"{ARTIFACT} has {len(weights)} weights and {len(fill)} fill values for "
            f"{len(inputs)} inputs ({', '.join(inputs[:3])}, ...)"
        )
    return LinearModel(weights, float(raw.get("bias", 0.0)), fill)


def reference(raw: dict, batch: np.ndarray) -> np.ndarray:
    """The scores written out longhand, to check a served model against."""
    out = []
    for row in batch:
        z = raw.get("bias", 0.0)
        for value, weight, fill in zip(row, raw["weights"], raw["fill"], strict=True):
            z += weight * (fill if np.isnan(value) else float(value))
        out.append(1.0 / (1.0 + np.exp(-z)))
    return np.asarray(out).reshape(-1, 1)
