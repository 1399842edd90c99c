"""Timing helpers the benchmarks share: repeat a call and time it, summarise milliseconds.

Only arithmetic on timings; nothing here starts servers or builds data.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

WARMUP_S = 0.5  # warm-up calls stop once they have taken this long (at least one runs)


def timed(fn: Callable[[], object], repeats: int) -> np.ndarray:
    """Milliseconds of `repeats` calls of `fn`, after a few untimed warm-up calls: up to
    max(3, repeats / 20), fewer once they have taken WARMUP_S. What a warm-up is for (lazy
    imports and caches, the first call's set-up) is done by the first; more only steady the
    caches, which a call slower than WARMUP_S does not need (Feast reads 1,000 wide rows in
    3 s)."""
    began = time.perf_counter()
    for _ in range(max(3, repeats // 20)):
        fn()
        if time.perf_counter() - began > WARMUP_S:
            break
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
