"""Dynamic batching: concurrent calls for one model share one feature read and model call.

One thread per model takes queued calls; a batch closes when it holds `max_rows` rows, when
the first call has waited `max_delay_s` (Triton's max batch size and max queue delay), or
as soon as no other call is on its way: a call announces itself (`arrival`) before it
decodes its request, and a batch waits only for calls it knows are coming. So a lone caller
never waits out the delay, and under load a batch takes what has queued meanwhile. Each
caller blocks on its own call until the batch that carried it is done.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _held() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass
class Call:
    entities: dict[str, list]
    extra: dict[str, Any]
    rows: int
    deadline: float | None  # monotonic time the caller gives up, None: no deadline
    route: Any
    queued: float = 0.0  # perf_counter when it joined the queue
    result: Any = None
    error: BaseException | None = None
    # Released when the call's batch is done. A bare lock, not an Event: Event's wait and
    # set go through a Condition in Python, several times a lock's cost, once per call.
    done: threading.Lock = field(default_factory=_held)


class Batcher:
    def __init__(
        self, name: str, run: Callable[[list[Call]], None], max_rows: int, max_delay_s: float
    ):
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self._run = run
        self._queue: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._arriving = 0  # calls announced and not yet queued
        self._count = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"augur-batch-{name}", daemon=True)
        self._thread.start()

    def arrival(self) -> Arrival:
        """Announce a call before decoding its request; submit it through what this returns,
        used as a context manager (leaving it unsubmitted withdraws the announcement)."""
        with self._count:
            self._arriving += 1
        return Arrival(self)

    def waiting(self) -> int:
        """Calls queued and not yet taken into a batch."""
        return self._queue.qsize()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(5)

    def _submit(self, call: Call) -> Any:
        call.queued = time.perf_counter()
        self._queue.put(call)  # queued before it stops counting as arriving: never neither
        self._arrived()
        call.done.acquire()
        if call.error is not None:
            raise call.error
        return call.result

    def _arrived(self) -> None:
        with self._count:
            self._arriving -= 1

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stopping = self._collect(first)
            try:
                self._run(batch)
            except BaseException as e:  # every caller of the batch gets the same failure
                for call in batch:
                    call.error = e
            finally:
                for call in batch:
                    call.done.release()
            if stopping:
                return

    def _collect(self, first: Call) -> tuple[list[Call], bool]:
        batch, rows = [first], first.rows
        closes = time.monotonic() + self.max_delay_s
        while rows < self.max_rows:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                left = closes - time.monotonic()
                if self._arriving <= 0 or left <= 0:
                    break
                try:
                    # Short waits: an announced call may yet fail validation and never come.
                    nxt = self._queue.get(timeout=min(left, 0.0002))
                except queue.Empty:
                    continue
            if nxt is None:
                return batch, True
            batch.append(nxt)
            rows += nxt.rows
        return batch, False


class Arrival:
    """One announced call: `submit` it, or leave the `with` block to withdraw it."""

    __slots__ = ("_batcher", "_pending")

    def __init__(self, batcher: Batcher):
        self._batcher = batcher
        self._pending = True

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pending:
            self._pending = False
            self._batcher._arrived()

    def submit(self, call: Call) -> Any:
        """Queue the call and wait for its batch; its result, or the batch's error."""
        self._pending = False
        return self._batcher._submit(call)
