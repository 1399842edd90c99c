"""CatBoost from its own .cbm model file (no pickle), scored by CatBoost's evaluator; a
binary classifier gives the positive class's probability, as predict_proba[:, 1] does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from catboost import CatBoost

# Losses whose scores are probabilities; their models answer predict_proba.
_CLASSIFIERS = ("Logloss", "CrossEntropy", "MultiClass", "MultiClassOneVsAll")


class CatBoostRuntime:
    device = "cpu"

    def __init__(self, path: Path, threads: int = 1):
        self.threads = threads
        self.model = CatBoost()
        self.model.load_model(str(path), format="cbm")
        loss = str(self.model.get_all_params().get("loss_function", "RMSE")).split(":")[0]
        self.prediction_type = "Probability" if loss in _CLASSIFIERS else "RawFormulaVal"
        self.binary = loss in ("Logloss", "CrossEntropy")
        self.n_features = len(self.model.feature_names_)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        scores = self.model.predict(
            batch, prediction_type=self.prediction_type, thread_count=self.threads
        )
        scores = np.asarray(scores, np.float32)
        if self.binary:
            scores = scores[:, 1]
        return scores.reshape(len(batch), -1)
