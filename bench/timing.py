"""Timing helpers the benchmarks share: repeat calls and time them (several functions in
alternating turns), summarise milliseconds.

Only arithmetic on timings; nothing here starts servers or builds data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

WARMUP_S = 0.5  # warm-up calls stop once they have taken this long (at least one runs)
BLOCKS = 10  # timed_together's turns per function


def timed(fn: Callable[[], object], repeats: int) -> np.ndarray:
    """Milliseconds of `repeats` calls of `fn`, after a few untimed warm-up calls (`_warm`)."""
    return timed_together({"fn": fn}, repeats, blocks=1)["fn"]


def timed_together(
    fns: Mapping[str, Callable[[], object]], repeats: int, blocks: int = BLOCKS
) -> dict[str, np.ndarray]:
    """Milliseconds of `repeats` calls of each of `fns`, each warmed up first, taken in
    `blocks` turns that alternate their order (A B C, then C B A): a slow stretch of the
    machine, which on these shared cores lasts seconds and can triple a call's time, falls
    on every function alike instead of on whichever series it met, so their ratios hold."""
    for fn in fns.values():
        _warm(fn, repeats)
    names = list(fns)
    out = {name: np.empty(repeats) for name in names}
    edges = np.linspace(0, repeats, max(min(blocks, repeats), 1) + 1).astype(int)
    for k, name in enumerate(paired_order(names, len(edges) - 1)):
        fn, ms, turn = fns[name], out[name], k // len(names)
        for i in range(edges[turn], edges[turn + 1]):
            start = time.perf_counter()
            fn()
            ms[i] = time.perf_counter() - start
    return {name: ms * 1e3 for name, ms in out.items()}


def paired_order(names: list[str], rounds: int) -> list[str]:
    """Turns in alternating order: forward in even rounds, backward in odd ones (A B, B A,
    ...), so that a machine speeding up or slowing down at a steady pace over the rounds
    costs each the same. The load generator's paired steps take their turns so, too."""
    return [n for r in range(rounds) for n in (names if r % 2 == 0 else names[::-1])]


def _warm(fn: Callable[[], object], repeats: int) -> None:
    """Untimed calls: up to max(3, repeats / 20), fewer once they have taken WARMUP_S. What a
    warm-up is for (lazy imports and caches, the first call's set-up) is done by the first;
    more only steady the caches, which a call slower than WARMUP_S does not need (Feast reads
    1,000 wide rows in 3 s)."""
    began = time.perf_counter()
    for _ in range(max(3, repeats // 20)):
        fn()
        if time.perf_counter() - began > WARMUP_S:
            break


def stats(ms: np.ndarray) -> dict:
    """Median and 99th percentile of milliseconds."""
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
    }
