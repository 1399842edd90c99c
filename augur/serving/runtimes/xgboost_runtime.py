"""XGBoost from its own JSON or UBJSON model file (no pickle), predicting in place on the
float32 batch with the native Booster; not a trainer (augur/pipelines/train.py trains)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xgboost as xgb


class XGBoostRuntime:
    device = "cpu"

    def __init__(self, path: Path, threads: int = 1):
        self.threads = threads
        self.booster = xgb.Booster(model_file=str(path))
        # nthread is XGBoost's OpenMP team per call; left unset it takes every core, and
        # its pool then spins against LightGBM's and torch's (see docs/runtimes.md)
        self.booster.set_param({"nthread": threads})
        self.n_features = self.booster.num_features()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        # inplace_predict reads the array as it is: no DMatrix built per call (a 1-row
        # DMatrix costs more than the trees); NaN is missing, as in training
        scores = self.booster.inplace_predict(batch, missing=np.nan)
        return np.asarray(scores, np.float32).reshape(len(batch), -1)
