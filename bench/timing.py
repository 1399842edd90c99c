"""Timing helpers the benchmarks share: repeat a call and time it, summarise milliseconds.

Only arithmetic on timings; nothing here starts servers or builds data.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def timed(fn: Callable[[], object], repeats: int) -> np.ndarray:
    """Milliseconds of `repeats` calls of `fn`, after a few untimed warm-up calls."""
    for _ in range(max(3, repeats // 20)):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - start
    return out * 1e3


def stats(ms: np.ndarray) -> dict:
    """Median and 99th percentile of milliseconds."""
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
    }
