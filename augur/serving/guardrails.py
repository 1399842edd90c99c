"""Canary guardrails: error rate, p99 latency and score drift (PSI) over a recent window.

A `CanaryGuard` watches one canary version. It trips once; the model manager then rolls
the canary back and records the reason.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from augur.modelrepo.repository import Guardrails

_SCORE_SAMPLES = 5_000  # per side: enough for stable deciles, bounded memory


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
    def __init__(self, version: str, limits: Guardrails):
        self.version = version
        self.limits = limits
        self._calls: deque[tuple[bool, float]] = deque(maxlen=limits.window)
        self._canary_scores: deque[float] = deque(maxlen=_SCORE_SAMPLES)
        self._stable_scores: deque[float] = deque(maxlen=_SCORE_SAMPLES)
        self._lock = threading.Lock()
        self.tripped: str | None = None

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

    def stats(self) -> dict[str, float]:
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
        return out

    def _verdict(self) -> tuple[str, str] | None:
        limits = self.limits
        if self.tripped or len(self._calls) < limits.min_requests:
            return None
        stats = self.stats()
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
        return None
