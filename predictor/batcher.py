"""Dynamic batching: concurrent calls for one model share one feature read and model call.

One thread per model takes queued calls; a batch closes when it holds `max_rows` rows or
the first call has waited `max_delay_s` (Triton's max batch size and max queue delay).
Each caller blocks on its own call until the batch that carried it is done.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Call:
    entities: dict[str, list]
    extra: dict[str, Any]
    rows: int
    deadline: float | None  # monotonic time the caller gives up, None: no deadline
    route: Any
    result: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Batcher:
    def __init__(
        self, name: str, run: Callable[[list[Call]], None], max_rows: int, max_delay_s: float
    ):
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self._run = run
        self._queue: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"augur-batch-{name}", daemon=True)
        self._thread.start()

    def submit(self, call: Call) -> Any:
        self._queue.put(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(5)

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
                    call.done.set()
            if stopping:
                return

    def _collect(self, first: Call) -> tuple[list[Call], bool]:
        batch, rows = [first], first.rows
        closes = time.monotonic() + self.max_delay_s
        while rows < self.max_rows:
            left = closes - time.monotonic()
            if left <= 0:
                break
            try:
                nxt = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if nxt is None:
                return batch, True
            batch.append(nxt)
            rows += nxt.rows
        return batch, False
