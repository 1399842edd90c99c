"""Dynamic batching: concurrent calls for one model share one feature read and model call.

A batch closes when it holds `max_rows` rows, when its first call has waited `max_delay_s`
(Triton's max batch size and max queue delay), or as soon as no other call is on its way, so
a lone caller never waits out the delay and under load a batch takes what queued while the
one before it ran. The calls wait in one of two ways, by where they run.

On the green pool (augur/serving/green.py, the gRPC server's pool unless server.handlers says
threads) each call is a greenlet on gRPC's polling thread (or on a hub thread of the pool's
own), and the pool's `Turns`, handed to the batcher, gives the call a `Parking` (its hub). A
call joins its thread's open batch and parks; the thread takes the next call, and runs the
batch once no call is queued or still receiving its request, or once the delay is up. A
waiting call holds no thread; nor does a batch waiting for Redis, so the thread fills the next
batch meanwhile.

Anywhere else (a thread pool, in-process callers) there is no batching thread either: the
calls' own threads take turns leading. A call that finds no batch running leads, takes what
has queued and runs it, and once its own call is answered hands the lead to the oldest call
still queued, whose thread goes on. Every other call blocks once on its own lock, released
when its batch is done or when it is handed the lead. A call announces itself (`arrival`)
before it decodes its request, and the leader waits only for calls it knows are coming.
Each waiting call holds a thread there, and on two cores those threads cost what batching
saves (bench/README.md): the reason for the green pool.

With an `SloController` (slo.py, a model's `slo` in model.yaml) the window and cap are the
controller's, retuned as it measures; a call with a deadline closes its batch early enough
for the batch to run before that deadline.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from augur.serving.slo import SloController


def _held() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


class Parking(Protocol):
    """Where a call takes turns with others on one thread (a green pool's hub)."""

    def current(self) -> Any:
        """The calling call, as `resume` takes it."""

    def park(self) -> None:
        """Suspend the calling call until it is resumed; its thread runs other calls."""

    def resume(self, waiter: Any) -> None:
        """Let a parked call go on once the current work yields."""

    def wake(self, waiter: Any) -> None:
        """Let a parked call go on, from another thread."""

    def defer(self, key: object, due: float, run: Callable[[], None]) -> None:
        """Run `run` once no call is on its way, or at `due` (perf_counter)."""

    def cancel(self, key: object) -> None:
        """Forget the work deferred under `key`."""

    def rank(self, priority: int) -> None:
        """The calling call is of a tenant of `priority` (a hub may run higher ones first)."""

    def take_turn(self) -> None:
        """Let calls of higher priority than the calling call's go first (a ranked hub)."""


class Turns(Protocol):
    def parking(self) -> Parking | None:
        """The calling call's Parking; None where it has a thread of its own."""


class _Threads:
    """Plain threads: no call takes turns; a waiting call blocks its thread."""

    def parking(self) -> Parking | None:
        return None


THREADS: Turns = _Threads()


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
    answered: bool = False
    waiter: Any = None  # on a green pool: the call, parked until answered
    # On threads, released once: when the call's batch is done, or when the call is handed
    # the lead (held from its submit; a parked call on a green pool needs none). A bare lock,
    # not an Event: Event's wait and set go through a Condition in Python, several times a
    # lock's cost, once per call.
    done: threading.Lock | None = None


class Batcher:
    def __init__(
        self,
        run: Callable[[list[Call]], None],
        max_rows: int,
        max_delay_s: float,
        turns: Turns = THREADS,
        depth: Any = None,
        slo: SloController | None = None,
    ):
        """`run` scores a batch, setting each call's result; `turns`: how calls wait (the
        green pool's, or THREADS); `depth`: a gauge set to the calls left waiting whenever a
        batch closes; `slo`: the controller that sets the window and cap, if any."""
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.slo = slo
        if slo is not None:
            self.max_rows, self.max_delay_s = slo.max_rows, slo.window_s
        self._run = run
        self._turns = turns
        self._depth = depth
        self._lock = threading.Lock()  # guards everything below
        self._queued: deque[Call] = deque()
        self._arriving = 0  # calls announced and not yet queued
        self._leading = False  # a thread is running batches
        self._woken: threading.Lock | None = None  # held by a leader waiting for arrivals
        self._open: dict[Parking, _Open] = {}  # on a green pool: each hub's open batch

    def arrival(self) -> Arrival:
        """Announce a call before decoding its request; submit it through what this returns,
        used as a context manager (leaving it unsubmitted withdraws the announcement)."""
        with self._lock:
            self._arriving += 1
        return Arrival(self)

    def waiting(self) -> int:
        """Calls queued and not yet taken into a batch."""
        return len(self._queued) + sum(len(b.calls) for b in list(self._open.values()))

    def _submit(self, call: Call) -> Any:
        call.queued = time.perf_counter()
        if self.slo is not None:
            self.slo.arrived(call.rows)
        hub = self._turns.parking()
        if hub is not None:
            return self._park(hub, call)
        call.done = _held()
        with self._lock:
            self._arriving -= 1
            self._queued.append(call)
            lead = not self._leading
            self._leading = True
            self._wake()
        if not lead:
            call.done.acquire()
        if not call.answered:  # the lead, found or handed over
            self._lead(call)
        if call.error is not None:
            raise call.error
        return call.result

    def _park(self, hub: Parking, call: Call) -> Any:
        """On a green pool: join this thread's open batch and park until it has run. The
        hub runs the batch once no call is on its way or its delay is up; a call that fills
        it runs it at once."""
        with self._lock:
            self._arriving -= 1
            self._wake()
        batch = self._open.get(hub)
        if batch is not None and batch.rows + call.rows > self.max_rows:
            self._close(hub)  # full without this call: it runs now, on this call's greenlet
            batch = None
        if batch is None:
            batch = self._open[hub] = _Open()
            hub.defer(self, self._closes(call), lambda: self._close(hub))
        batch.calls.append(call)
        batch.rows += call.rows
        call.waiter = hub.current()
        if batch.rows >= self.max_rows:
            self._close(hub)
        else:
            hub.park()
        if call.error is not None:
            raise call.error
        return call.result

    def _closes(self, first: Call) -> float:
        """When a batch opened by `first` closes at the latest (perf_counter): its window
        after `first` queued, and with a controller early enough to run before `first`'s
        deadline."""
        closes = first.queued + self.max_delay_s
        slo = self.slo
        if slo is not None and first.deadline is not None and self.max_delay_s > 0:
            # the deadline is monotonic time; the batch's run takes about its predicted cost
            left = first.deadline - time.monotonic() - slo.batch_cost_s(self.max_rows)
            closes = min(closes, time.perf_counter() + max(left, 0.0))
        return closes

    def _score(self, batch: list[Call]) -> None:
        """Run one batch; a failure is every caller's of the batch."""
        if self._depth is not None:
            self._depth.set(self.waiting())
        began = time.perf_counter()
        try:
            self._run(batch)
        except BaseException as e:
            for call in batch:
                call.error = e
        slo = self.slo
        if slo is not None:
            done = time.perf_counter()
            slo.ran(
                sum(c.rows for c in batch), done - began, [done - c.queued for c in batch], done
            )
            self.max_rows, self.max_delay_s = slo.max_rows, slo.window_s

    def _close(self, hub: Parking) -> None:
        """Run the hub's open batch, and let its parked calls go on once the greenlet
        running this yields to the hub (the hub's own: once its deferred work is done)."""
        hub.cancel(self)
        batch = self._open.pop(hub).calls
        self._score(batch)
        here = hub.current()
        for call in batch:
            call.answered = True
            if call.waiter is not here:
                hub.resume(call.waiter)

    def _withdraw(self) -> None:
        with self._lock:
            self._arriving -= 1
            self._wake()

    def _wake(self) -> None:
        """With the lock held: let a leader waiting for arrivals look again."""
        if self._woken is not None:
            self._woken.release()
            self._woken = None

    def _lead(self, own: Call) -> None:
        """Run batches until `own` is answered, then hand the lead on."""
        while not own.answered:
            batch = self._collect()
            self._score(batch)
            for call in batch:
                call.answered = True
                if call is not own:
                    call.done.release()
        with self._lock:
            if self._queued:
                self._queued[0].done.release()  # its thread leads next
            else:
                self._leading = False

    def _collect(self) -> list[Call]:
        batch: list[Call] = []
        rows = 0
        closes = None
        while True:
            with self._lock:
                while self._queued and (not batch or rows + self._queued[0].rows <= self.max_rows):
                    call = self._queued.popleft()
                    batch.append(call)
                    rows += call.rows
                if closes is None:
                    closes = self._closes(batch[0])
                left = closes - time.perf_counter()
                if rows >= self.max_rows or self._arriving <= 0 or left <= 0 or self._queued:
                    self._woken = None
                    return batch
                woken = self._woken = _held()
            # Released by the next call queued or withdrawn; the timeout bounds the batch's
            # wait by the delay, whatever those announced calls do.
            woken.acquire(timeout=left)


@dataclass
class _Open:
    """A batch a hub is filling: its calls and their rows."""

    calls: list[Call] = field(default_factory=list)
    rows: int = 0


class Arrival:
    """One announced call: `submit` it, or `withdraw` it (as leaving a `with` block that did
    not submit it does)."""

    __slots__ = ("_batcher", "_pending")

    def __init__(self, batcher: Batcher):
        self._batcher = batcher
        self._pending = True

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *exc: object) -> None:
        self.withdraw()

    def withdraw(self) -> None:
        """The call will not be submitted (it failed before): a batch no longer waits for it."""
        if self._pending:
            self._pending = False
            self._batcher._withdraw()

    def submit(self, call: Call) -> Any:
        """Queue the call and wait for its batch; its result, or the batch's error."""
        self._pending = False
        return self._batcher._submit(call)
