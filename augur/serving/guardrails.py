"""Canary guardrails: error rate, p99 latency, score drift (PSI against stable) and feature
drift (PSI of the canary's live inputs against its own training distribution) over a recent
window.

A `CanaryGuard` watches one canary version. It trips once; the model manager then rolls
the canary back and records the reason.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence

import numpy as np

from augur.modelrepo import monitoring
from augur.modelrepo.repository import Guardrails

log = logging.getLogger(__name__)
_SCORE_SAMPLES = 5_000  # per side: enough for stable deciles, bounded memory
_INPUT_ROWS = 5_000  # the canary's most recent input rows kept for feature drift
_MIN_INPUT_ROWS = 200  # fewer say too little of a distribution to judge it
_DRIFT_EVERY = 32  # canary calls between feature-drift checks (each bins every input)


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `actual` against `expected`, on expected's quantiles."""
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:  # a constant reference: any other value is a shift
        edges = np.array([expected[0] - 1e-9, expected[0] + 1e-9])
    edges[0], edges[-1] = -np.inf, np.inf
    e = np.histogram(expected, edges)[0] / len(expected)
    a = np.histogram(actual, edges)[0] / len(actual)
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


class CanaryGuard:
    def __init__(
        self,
        version: str,
        limits: Guardrails,
        features: Sequence[str] = (),
        training: dict | None = None,
    ):
        """`features`: the canary's inputs in order; `training`: its metadata.json
        `training_distribution`, what max_feature_psi compares its live inputs with."""
        self.version = version
        self.limits = limits
        self._calls: deque[tuple[bool, float]] = deque(maxlen=limits.window)
        self._canary_scores: deque[float] = deque(maxlen=_SCORE_SAMPLES)
        self._stable_scores: deque[float] = deque(maxlen=_SCORE_SAMPLES)
        self._lock = threading.Lock()
        self.tripped: str | None = None
        self._features = tuple(features)
        self._training = training or {}
        self._inputs: np.ndarray | None = None  # ring of the latest input rows
        self._input_rows = 0  # rows ever recorded; the ring's next slot is this mod its size
        self._drift: tuple[float, str] | None = None  # the latest check: worst PSI, feature
        self._calls_to_check = _DRIFT_EVERY
        if limits.max_feature_psi is not None:
            if not self._training:
                log.warning(
                    "canary %s has no training_distribution in metadata.json (trained before "
                    "Augur recorded one): its max_feature_psi guardrail is off; retrain it",
                    version,
                )
            else:
                self._inputs = np.empty((_INPUT_ROWS, len(self._features)), np.float32)

    def record_inputs(self, batch: np.ndarray) -> None:
        """The inputs the canary just scored (its feature order), for the feature drift check."""
        ring = self._inputs
        if ring is None:
            return
        size = len(ring)
        batch = batch[-size:]
        start = self._input_rows % size
        first = min(len(batch), size - start)
        ring[start : start + first] = batch[:first]
        ring[: len(batch) - first] = batch[first:]
        self._input_rows += len(batch)

    def record_stable(self, scores: np.ndarray) -> None:
        if self.limits.max_psi is not None:
            self._stable_scores.extend(scores[:, 0].tolist())

    def record_canary(
        self, ok: bool, seconds: float, scores: np.ndarray | None
    ) -> tuple[str, str] | None:
        """Count one canary call; (guardrail, reason) when this call trips one."""
        self._calls.append((ok, seconds))
        if scores is not None and self.limits.max_psi is not None:
            self._canary_scores.extend(scores[:, 0].tolist())
        verdict = self._verdict()
        if verdict is None:
            return None
        with self._lock:  # only one caller reports the trip
            if self.tripped:
                return None
            self.tripped = verdict[1]
        return verdict

    def stats(self, fresh_drift: bool = True) -> dict[str, float]:
        """The window's figures; `fresh_drift` False: feature drift as last checked."""
        calls = list(self._calls)
        if not calls:
            return {"calls": 0}
        errors = sum(1 for ok, _ in calls if not ok)
        latencies = [s for ok, s in calls if ok]
        out = {"calls": len(calls), "error_rate": errors / len(calls)}
        if latencies:
            out["p99_ms"] = float(np.percentile(latencies, 99) * 1e3)
        if len(self._canary_scores) >= 50 and len(self._stable_scores) >= 50:
            out["psi"] = psi(np.array(self._stable_scores), np.array(self._canary_scores))
        drift = self._feature_drift() if fresh_drift else self._drift
        if drift is not None:
            out["feature_psi"] = drift[0]
        return out

    def _feature_drift(self) -> tuple[float, str] | None:
        """The largest PSI of one input against training, and that input's name."""
        ring = self._inputs
        if ring is None or self._input_rows < _MIN_INPUT_ROWS:
            return None
        seen = ring[: min(self._input_rows, len(ring))]
        worst = None
        for j, name in enumerate(self._features):
            reference = self._training.get(name)
            if reference is None:
                continue
            value = monitoring.psi(reference, seen[:, j])
            if worst is None or value > worst[0]:
                worst = (value, name)
        self._drift = worst
        return worst

    def _verdict(self) -> tuple[str, str] | None:
        limits = self.limits
        if self.tripped or len(self._calls) < limits.min_requests:
            return None
        if self._inputs is not None:  # binning every input is costly: every few calls
            self._calls_to_check -= 1
            if self._calls_to_check <= 0 or self._drift is None:
                self._calls_to_check = _DRIFT_EVERY
                self._feature_drift()
        stats = self.stats(fresh_drift=False)
        if limits.max_error_rate is not None and stats["error_rate"] > limits.max_error_rate:
            return "error_rate", (
                f"error rate {stats['error_rate']:.1%} over the last {stats['calls']} calls "
                f"exceeds max_error_rate {limits.max_error_rate:.1%}"
            )
        if limits.max_p99_ms is not None and stats.get("p99_ms", 0.0) > limits.max_p99_ms:
            return "latency", (
                f"p99 latency {stats['p99_ms']:.1f} ms exceeds max_p99_ms {limits.max_p99_ms:g} ms"
            )
        if limits.max_psi is not None and stats.get("psi", 0.0) > limits.max_psi:
            return "drift", (
                f"score drift: PSI {stats['psi']:.3f} against stable exceeds max_psi "
                f"{limits.max_psi:g}"
            )
        drift = self._drift
        if limits.max_feature_psi is not None and drift and drift[0] > limits.max_feature_psi:
            return "feature_drift", (
                f"feature drift: PSI {drift[0]:.3f} of input {drift[1]} against "
                f"{self.version}'s training distribution exceeds max_feature_psi "
                f"{limits.max_feature_psi:g}"
            )
        return None
