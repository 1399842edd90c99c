"""The gRPC handler pool: calls run as greenlets on gRPC's own polling thread, so that a
call waiting for its request, for its batch or for Redis holds no thread, and no call is
handed from one thread to another.

gRPC's synchronous server has one thread polling its completion queue, which hands each
call to a handler run by the executor it is given. On a thread pool a call holds its thread
from start to end: waiting for its request message, for its batch and for Redis. So a pool
needs a thread per call waiting, and on two cores those threads, and the hand-over of each
call between threads (a wake-up and a turn of the GIL each), cost more than they overlap
(bench/README.md). Here each call runs in a greenlet of its own on a `Hub`
(augur/serving/hub.py), which parks a waiting call and takes the next one.

`GreenPool(0)`, as the server builds it, runs its hub on gRPC's polling thread, between the
completion queue's events (`run_polling_loop`): one thread receives, runs and answers every
call. `GreenPool(n)` runs n hubs on threads of their own, fed by the polling thread: what the
pool falls back to should a gRPC release lay its server out differently. The only private
parts of gRPC touched, to get the polling thread and to park a call waiting for its request
(`GreenCondition` in each call's state), are in augur/serving/grpc_patch.py, checked at start.

Everything else waits through `GreenWaiting`, handed to whoever waits: the batcher parks its
calls on their hub, the read path parks a call until its Redis socket is readable (on the
polling thread, each call on a connection of its own; the loop looks at those sockets and at
the completion queue in turns, yielding its core between looks rather than sleeping: see
`_poll`), and slow work
(a new connection's handshake, an Admin change loading a model) runs on a thread of its own
while its call parks. On a hub thread of the pool's own, reads block the thread, as on a
thread pool. Greenlets switch only where a call parks, never inside a lock.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from queue import SimpleQueue
from typing import Any, TypeVar

import greenlet

from augur.serving import grpc_patch
from augur.serving.hub import STOP, Hub, RankedHub

log = logging.getLogger(__name__)
T = TypeVar("T")
_local = threading.local()  # .hub: the hub this thread runs, where it runs one
# How long the polling thread blocks at most while calls are parked: a call woken from
# another thread (none of gRPC's own wakes is) goes on within this, not the next event.
_PARKED_POLL_S = 0.05
_IDLE_POLL_S = 1.0  # as grpc._server._serve: a deallocated server is noticed within it
# ...and while calls wait for work on another thread (off_thread), which wakes them: the
# queue's own rounding makes it a millisecond or two.
_WORK_POLL_S = 0.001
# How long the polling thread waits on the sockets of calls waiting for Redis before it
# looks at the completion queue again: what a call arriving meanwhile may wait at most.
_SOCKETS_POLL_S = 0.0001
# ...and how often it looks at them at least, however busy the queue: while events keep
# arriving (calls refused at once and retried, say) the queue never comes up empty, and
# calls waiting for Redis would wait for a lull: whole seconds under overload.
_SOCKETS_EVERY_S = 0.0005
_FD_SETSIZE = 1024  # select's limit: a socket numbered above it blocks its thread instead
# At stop, how long the polling thread takes calls that have arrived at most before it begins
# gRPC's shutdown: callers with one call each are done within it; an endless stream is cut.
_CLOSE_MATCH_S = 0.2
# ...and how long the completion queue must stay quiet before it does: a caller answered just
# before the stop sends its next call within it (a millisecond or two on a loaded box), and
# gRPC's core would cancel that call, not refuse it, once its shutdown has begun.
_CLOSE_QUIET_S = 0.02
# With tenants (a ranked pool), the events the polling thread takes at most between two turns
# of its calls: what has arrived is taken before the next turn, so that a call of a higher
# priority is seen and run next, but a stream of arrivals cannot hold the turns off.
_EVENTS_PER_TURN = 64
# ...and the turns it runs at most before it goes back to the loop's other duties (deferred
# work due, a stop asked for), as arrivals taken between turns may keep calls ready for ever.
_TURNS_PER_PASS = 64


def _hub() -> Hub | None:
    """The hub running the current call, or None outside a green pool's calls."""
    here = getattr(_local, "hub", None)
    if here is None or greenlet.getcurrent() is here.greenlet:
        return None
    return here


class GreenWaiting:
    """How a call on a green pool waits: augur.features.waiting's `Waiting` for the read path
    (wait_readable, run_elsewhere) and the batcher's `Turns` (parking). Outside a green pool's
    calls each does what a plain thread would."""

    def parking(self) -> Hub | None:
        """The hub the calling call can park on; None where it runs on a thread of its own."""
        return _hub()

    def wait_readable(self, sock: socket.socket) -> None:
        """On the polling thread: park the call until `sock` is readable, the thread running
        other calls meanwhile. Elsewhere return at once, and the read blocks its thread."""
        here = _hub()
        if here is None or not here.polls_sockets or sock.fileno() >= _FD_SETSIZE:
            return
        pending = getattr(sock, "pending", None)  # TLS: bytes decrypted already, none on the wire
        if pending is None or not pending():
            here.wait_readable(sock)

    def run_elsewhere(self, work: Callable[[], T]) -> T:
        return off_thread(work)


def off_thread(work: Callable[[], T]) -> T:
    """`work()`, run on a thread of its own where the current call runs on a green pool, its
    call parked meanwhile: slow work (a model version loading) would hold every call its
    hub runs. Elsewhere it runs here."""
    here = _hub()
    if here is None:
        return work()
    me = greenlet.getcurrent()
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["result"] = work()
        except BaseException as e:
            done["error"] = e
        here.wake(me)  # handled once this call has parked: the hub runs one greenlet at a time

    threading.Thread(target=run, name="augur-green-work", daemon=True).start()
    here.working += 1
    try:
        here.park()
    finally:
        here.working -= 1
    if "error" in done:
        raise done["error"]
    return done["result"]


class _Waiter:
    """A parked call in a Condition's list of waiters: notify releases it, from any thread."""

    __slots__ = ("_greenlet", "_hub", "_released")

    def __init__(self, hub: Hub, waiter: greenlet.greenlet) -> None:
        self._hub, self._greenlet, self._released = hub, waiter, False

    def release(self) -> None:
        if self._released:  # as a lock's: Condition.notify skips a waiter already released
            raise RuntimeError("release unlocked lock")
        self._released = True
        self._hub.wake(self._greenlet)


class GreenCondition(threading.Condition):
    """A `threading.Condition` whose untimed wait, in a call on a green pool, parks the call
    instead of blocking its thread."""

    def wait(self, timeout: float | None = None) -> bool:
        here = _hub()
        if timeout is not None or here is None:
            return super().wait(timeout)
        if not self._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError("cannot wait on un-acquired lock")
        self._waiters.append(_Waiter(here, greenlet.getcurrent()))  # type: ignore[attr-defined]
        saved = self._release_save()  # type: ignore[attr-defined]
        here.receiving += 1
        try:
            here.park()
        finally:
            here.receiving -= 1
            self._acquire_restore(saved)  # type: ignore[attr-defined]
        return True


class GreenPool(futures.Executor):
    """An executor for `grpc.server`: with `threads` 0, the server's polling thread runs the
    calls (one pool per server); else `threads` hubs of their own, calls handed to them in
    turn. `waiting` is how its calls wait, for the collaborators that wait for them.
    `ranked` (tenants configured): calls run by their tenant's priority (hub.RankedHub), and
    the polling thread takes what has arrived between any two turns."""

    def __init__(self, threads: int, name: str = "augur-green", ranked: bool = False) -> None:
        patched = grpc_patch.install(GreenCondition)  # hub threads park request waits too
        if not patched:
            log.warning(
                "this grpcio's server is not the one the green pool knows: its calls run on "
                "a thread of their own, and wait for their request there, in smaller batches"
            )
        self.runs_polling_loop = threads == 0 and patched
        self.waiting = GreenWaiting()
        self._hub_type = RankedHub if ranked else Hub
        # a hub's queue each; on the polling thread one, and no thread of the pool's own
        self._queues: list[SimpleQueue] = [SimpleQueue() for _ in range(max(threads, 1))]
        self._turn = 0
        self._lock = threading.Lock()
        self._shutdown = False
        # stop_taking_calls: asked (_closing), done (_closed); _idle while the polling thread
        # waits with no call in progress, when there is nothing for it to match first
        self._closing = False
        self._closed = threading.Event()
        self._idle = False
        self._threads = [
            threading.Thread(
                target=_work, args=(self._hub_type, queue), name=f"{name}_{i}", daemon=True
            )
            for i, queue in enumerate(self._queues)
            if not self.runs_polling_loop
        ]
        for thread in self._threads:
            thread.start()

    @property
    def on_polling_thread(self) -> bool:
        """Whether gRPC's polling thread runs the calls (else hub threads of the pool's)."""
        return self.runs_polling_loop

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            future: futures.Future = futures.Future()
            self._turn = (self._turn + 1) % len(self._queues)
            self._queues[self._turn].put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop once the calls queued so far have run (a server's calls have ended when it
        has stopped); queued calls run even with `cancel_futures`. On the polling thread the
        calls end with the server's loop, which `wait` does not wait for."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            for queue in self._queues:
                queue.put(STOP)
        if wait:
            for thread in self._threads:
                thread.join()

    def stop_taking_calls(self, timeout: float) -> None:
        """From another thread, before the server's stop: have the polling thread take every
        call that reaches the server until none has come for a while, holding their answers,
        then begin gRPC's shutdown, so that the stop drains them. Returns once done, or after
        `timeout`.

        Why: gRPC's core cancels (CANCELLED, which no client retries) every call it holds
        unmatched when its shutdown begins, and every call whose headers reach it after that,
        until the client has read the GOAWAY the shutdown sends. On a busy green pool the
        first are most callers' calls (the core holds a call that arrives while the polling
        thread runs calls until the thread asks for the next one). The second are calls on
        their way: a caller answered just before the shutdown sends its next call at once.
        So no call runs, and none is answered, until the queue has been quiet for
        `_CLOSE_QUIET_S`: a caller waiting for its answer sends nothing, and a caller's call on
        its way arrives within it; the answers then follow the GOAWAY on each connection, and
        each caller's next call goes to a server still taking calls (a client that keeps
        sending without waiting for answers can still meet the core's cancel: it is cut off
        at `_CLOSE_MATCH_S`)."""
        if not self.runs_polling_loop:
            return
        with self._lock:
            self._closing = True
            idle = self._idle
        if idle:  # no call in progress: a caller answered last may send its next one now
            time.sleep(_CLOSE_QUIET_S)
            with self._lock:
                if self._idle:  # none came: the server's stop begins the shutdown
                    return
        self._closed.wait(timeout)

    def _take_arrived_and_close(self, events: grpc_patch.ServerEvents) -> bool:
        """Take the calls that arrive until the queue has been quiet for `_CLOSE_QUIET_S`
        (handing each to the hub, which runs them once this returns), then begin gRPC's
        shutdown; False if the server stopped meanwhile."""
        self._closing = False
        now = time.perf_counter()
        give_up, quiet = now + _CLOSE_MATCH_S, now + _CLOSE_QUIET_S
        while now < give_up:
            event = events.wait(min(quiet, give_up) - now)
            if event is None:
                break
            if not events.handle(event):
                return False
            event = None
            now = time.perf_counter()
            quiet = now + _CLOSE_QUIET_S
        events.begin_shutdown()
        self._closed.set()
        return True

    def run_polling_loop(self, events: grpc_patch.ServerEvents) -> None:
        """gRPC's polling loop, running this pool's hub between the completion queue's
        events: calls queued or woken by an event run once it is handled; deferred work runs
        once a look at the queue finds nothing (and no call is receiving) or once it is due."""
        try:
            self._poll(events)
        finally:
            self._closed.set()  # whoever waits for stop_taking_calls waits no longer

    def _poll(self, events: grpc_patch.ServerEvents) -> None:
        _local.hub = hub = self._hub_type(self._queues[0])
        hub.polls_sockets = True
        deferred, readers = hub.deferred, hub.readers
        ranked = isinstance(hub, RankedHub)
        sockets_due = 0.0
        while True:
            if self._closing and not self._take_arrived_and_close(events):
                hub.drain()
                return
            if not ranked:
                hub.run_pending()
            elif not _run_turns(hub, events):
                hub.drain()
                return
            elif hub.ready:  # turns left at its bound: the work due first, then more turns
                if deferred:
                    hub.run_deferred(time.perf_counter())
                continue
            if deferred:
                hub.run_deferred(time.perf_counter())  # what waited out its delay
            if readers or deferred:
                if readers and time.perf_counter() >= sockets_due:  # however busy the queue
                    hub.poll_sockets(0.0)
                    sockets_due = time.perf_counter() + _SOCKETS_EVERY_S
                    if hub.ready:
                        continue
                event = events.look()  # take what has arrived first
                if event is None:
                    if deferred and hub.receiving <= 0:
                        hub.run_deferred(None)  # no call is on its way to the batch
                        continue
                    due = hub.first_due() - time.perf_counter() if deferred else math.inf
                    if hub.parked == 1 and len(readers) == 1:
                        # The one call there is waits for Redis (a quiet server): look at its
                        # socket, then at the queue again, yielding the core between looks. A
                        # round trip is tens of microseconds, and a thread that sleeps through
                        # it wakes late on a core whose caches others have used meanwhile:
                        # the one-caller 1-row p50 falls 7% (bench.versus), at less CPU a
                        # call. Not with other calls parked (waiting for Redis, a batch, their
                        # request): on a busy box a spinning thread keeps a core from Redis
                        # and the callers (batching on 64 callers served 1.39x off instead of
                        # 1.62x; fewer calls served under overload).
                        hub.poll_sockets(0.0)
                        if not hub.ready:
                            os.sched_yield()
                        continue
                    if readers:  # look at their sockets a while, then at the queue again
                        hub.poll_sockets(min(_SOCKETS_POLL_S, due))
                        continue
                    if due > 0:  # calls receiving: wait for them, up to the first due
                        event = events.wait(due)
                    if event is None:
                        hub.run_deferred(None)
                        continue
            else:
                if hub.parked:
                    event = events.wait(_WORK_POLL_S if hub.working else _PARKED_POLL_S)
                else:
                    with self._lock:
                        if self._closing:
                            continue
                        self._idle = True
                    event = events.wait(_IDLE_POLL_S)
                    self._idle = False
            if not events.handle(event):
                hub.drain()
                return
            # as gRPC's loop: let go of the event (and any call it holds) before polling again
            event = None


def _run_turns(hub: RankedHub, events: grpc_patch.ServerEvents) -> bool:
    """The ranked polling thread's turns: run ready calls, highest priority first, and between
    two turns take the events that have arrived and look at the parked reads' sockets, so that
    a call of higher priority that became ready meanwhile runs next, before the rest of the
    lower priority's calls; at most `_TURNS_PER_PASS` turns. False once the server has shut
    down."""
    readers = hub.readers
    for _ in range(_TURNS_PER_PASS):
        if not hub.run_turn():
            break
        for _ in range(_EVENTS_PER_TURN):
            event = events.look()
            if event is None:
                break
            if not events.handle(event):
                return False
            event = None  # as gRPC's loop: let go of the event before polling again
        if readers:
            hub.poll_sockets(0.0)
    return True


def _work(hub_type: type[Hub], queue: SimpleQueue) -> None:
    _local.hub = hub = hub_type(queue)  # built here: its greenlet is this thread's
    hub.loop()
