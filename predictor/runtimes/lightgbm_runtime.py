"""LightGBM from its text model format (no pickle), predicting through the C API."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np


class LightGBMRuntime:
    device = "cpu"

    def __init__(self, path: Path, threads: int = 1):
        self.booster = lgb.Booster(model_file=str(path))
        self.threads = threads
        self.n_features = self.booster.num_feature()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        scores = self.booster.predict(batch, num_threads=self.threads)
        return np.asarray(scores, np.float32).reshape(len(batch), -1)
