"""A process-level cache of decoded feature rows for hot entities (off by default).

Bounded (least recently used out first) and short-lived: an entry is served for at most
`ttl_ms` after it was read from Redis, so a cached answer is at most that much older than
the online store. TTL staleness of the values themselves is still judged at read time.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np


class RowCache:
    def __init__(
        self, max_entries: int, ttl_ms: float, clock: Callable[[], float] = time.monotonic
    ):
        self.max_entries = max_entries
        self.ttl_s = ttl_ms / 1000
        self._clock = clock
        self._rows: OrderedDict[Hashable, tuple[float, np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: Hashable) -> tuple[np.ndarray, np.ndarray] | None:
        """(values, event times) of a fresh entry, else None."""
        with self._lock:
            entry = self._rows.get(key)
            if entry is None:
                return None
            if self._clock() - entry[0] > self.ttl_s:
                del self._rows[key]
                return None
            self._rows.move_to_end(key)
            return entry[1], entry[2]

    def put(self, key: Hashable, values: np.ndarray, event_ts: np.ndarray) -> None:
        with self._lock:
            self._rows[key] = (self._clock(), values, event_ts)
            self._rows.move_to_end(key)
            while len(self._rows) > self.max_entries:
                self._rows.popitem(last=False)
