"""LightGBM from its text model format (no pickle), predicting through the C API: a batch
through LightGBM's own predictor, one row through its single-row "fast" entry points."""

from __future__ import annotations

import ctypes
import threading
import weakref
from pathlib import Path

import lightgbm as lgb
import numpy as np

_LIB = lgb.basic._LIB
_check_call = lgb.basic._safe_call  # LightGBMError with the library's message


class LightGBMRuntime:
    device = "cpu"

    def __init__(self, path: Path, threads: int = 1):
        self.booster = lgb.Booster(model_file=str(path))
        self.threads = threads
        self.n_features = self.booster.num_feature()
        # Booster.predict builds and tears down this predictor on every call: ~18 us of a
        # 1-row call's ~50 us (lightgbm 4.7, pinned). Same C call, same handle, built once.
        self._predictor = lgb.basic._InnerPredictor.from_booster(
            self.booster, {"num_threads": threads}
        )
        self._one = _OneRow(self.booster, threads, self.n_features)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 1:
            scores = self._one.predict(batch)
            if scores is not None:
                return scores
        scores = self._predictor.predict(batch)
        return np.asarray(scores, np.float32).reshape(len(batch), -1)


class _OneRow:
    """One row scored through LGBM_BoosterPredictForMatSingleRowFast: the batch predictor
    parses its parameter string into a Config on every call and its Python wrapper checks
    and converts the input, some 45% of a 1-row call's instructions (callgrind, lightgbm
    4.7); the fast config is parsed once, and the row and the scores go through buffers
    whose addresses are taken once. The same C predictor, so the same scores."""

    def __init__(self, booster: lgb.Booster, threads: int, n_features: int):
        handle = ctypes.c_void_p()
        self._call = _LIB.LGBM_BoosterPredictForMatSingleRowFast
        _check_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(lgb.basic._C_API_PREDICT_NORMAL),
                ctypes.c_int(0),  # start iteration
                ctypes.c_int(-1),  # every iteration, as the batch predictor's default
                ctypes.c_int(lgb.basic._C_API_DTYPE_FLOAT32),
                ctypes.c_int32(n_features),
                f"num_threads={threads}".encode(),
                ctypes.byref(handle),
            )
        )
        self._handle = handle
        self._booster = booster  # the fast config points into it
        self._row = np.zeros(n_features, np.float32)
        self._scores = np.zeros(booster.num_model_per_iteration(), np.float64)
        self._length = ctypes.c_int64(0)
        self._row_at = ctypes.c_void_p(self._row.ctypes.data)
        self._scores_at = ctypes.c_void_p(self._scores.ctypes.data)
        self._length_at = ctypes.pointer(self._length)
        # the buffers are this object's: a second thread (handlers: threads) takes the batch
        # predictor instead of waiting
        self._lock = threading.Lock()
        weakref.finalize(self, _LIB.LGBM_FastConfigFree, handle)

    def predict(self, batch: np.ndarray) -> np.ndarray | None:
        """The row's scores (1 x outputs, float32); None while another thread uses this."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            self._row[:] = batch[0]
            _check_call(self._call(self._handle, self._row_at, self._length_at, self._scores_at))
            return self._scores[: self._length.value].astype(np.float32).reshape(1, -1)
        finally:
            self._lock.release()
