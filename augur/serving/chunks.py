"""Large calls in bounded chunks: a call of many rows is read and scored a chunk at a time,
the thread serving other calls between chunks and while a large model call runs off it, so
one caller's 10k-row calls do not hold everyone else's 1-row calls for the whole of theirs
(head-of-line blocking). Not batching.

On a green pool (the `Turns` handed in) every call runs on one thread and switches only
where it parks: a chunk's Redis read parks, but its key building, decoding and assembling
do not. Between chunks the call parks until the thread has nothing queued, or for at
most `TURN_S`. Elsewhere (a thread pool) threads take turns anyway, and chunks run on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

import numpy as np

from augur.features.reader import FeatureRows
from augur.serving.batcher import Turns

CHUNK_ROWS = 1024  # a few milliseconds of reading and decoding on one core
TURN_S = 0.002  # how long the other calls may run between two chunks, at most
# A model call of this many rows runs on a thread of its own (scoring.py), its call parked
# meanwhile: LightGBM, lleaves and torch release the GIL while they compute (12 us a row
# for the fraud model on one thread, so 12 ms a chunk), and the polling thread serves
# other calls.
OFF_THREAD_ROWS = 256


def slices(n: int, turns: Turns, rows: int = CHUNK_ROWS) -> Iterator[slice]:
    """The chunks of n rows, in order; between two, the calling call takes a turn."""
    for start in range(0, n, rows):
        if start:
            take_turn(turns)
        yield slice(start, min(start + rows, n))


def take_turn(turns: Turns) -> None:
    """On a green pool: let the thread run the other calls a while (until none is queued,
    or `TURN_S`), then go on. Elsewhere nothing: other threads take turns already."""
    hub = turns.parking()
    if hub is None:
        return
    me = hub.current()
    hub.defer(me, time.perf_counter() + TURN_S, lambda: hub.resume(me))
    hub.park()


def entities_of(entities: Mapping[str, list], rows: slice) -> dict[str, list]:
    return {k: v[rows] for k, v in entities.items()}


def arrays_of(columns: Mapping[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in columns.items()}


def joined_rows(parts: list[FeatureRows]) -> FeatureRows:
    """One FeatureRows of the chunks' rows, in order."""
    return FeatureRows(
        np.concatenate([p.values for p in parts]),
        np.concatenate([p.missing for p in parts]),
        np.concatenate([p.stale for p in parts]),
        np.concatenate([p.event_ts for p in parts]),
        sum(p.distinct_keys for p in parts),
        sum(p.cache_hits for p in parts),
    )
