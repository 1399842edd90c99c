"""The gRPC handler pool: calls run as greenlets on gRPC's own polling thread, so that a
call waiting for its request, for its batch or for Redis holds no thread, and no call is
handed from one thread to another.

gRPC's synchronous server has one thread polling its completion queue, which hands each
call to a handler run by the executor it is given. On a thread pool a call holds its thread
from start to end: waiting for its request message, for its batch and for Redis. So a pool
needs a thread per call waiting, and on two cores those threads, and the hand-over of each
call between threads (a wake-up and a turn of the GIL each), cost more than they overlap
(README, Benchmarks). Here each call runs in a greenlet of its own, on a loop (the `Hub`)
that takes the calls gRPC queued. A call that waits parks: it switches back to the hub,
which takes the next call. The hub runs what parked calls wait for (their batch,
`Hub.defer`, itself in a greenlet of its own) once no call is queued and none is still
receiving its request, or when the batch's delay is up, and then resumes the calls it
answered.

`GreenPool(0)`, as the server builds it, runs the hub on gRPC's polling thread itself
(`patch_grpc` gives `grpc._server._serve` a loop that runs the hub between the queue's
events): one thread receives, runs and answers every call. `GreenPool(n)` runs n hubs on
threads of their own, fed by the polling thread: what the pool falls back to should a gRPC
release lay its server out differently.

The request wait is gRPC's: each call's state has a `threading.Condition` that its handler
waits on until the polling thread has the request. `patch_grpc` gives that state a
`GreenCondition` instead, which parks a call on a hub rather than blocking its thread and
behaves as `threading.Condition` everywhere else. Both patches replace private parts of
`grpc._server`, checked at start: should a gRPC release change them, the pool still serves
(on a hub thread; and if the call state changed too, with calls waiting for their requests
on that thread, in smaller batches), and the log says so.

The Redis wait is augur.features.resp's: on the polling thread a round trip parks its call
until its socket is readable (`wait_readable`), each call on a connection of its own, and
the hub looks at those sockets (`select`, for at most `_SOCKETS_POLL_S`) and at the
completion queue in turns, so a call arriving meanwhile waits at most that long. A new
connection's handshake, read by redis-py's own parser, and other slow work (`off_thread`:
an Admin change loading a model) run on a thread of their own while their call parks. On a
hub thread of the pool's own these block the thread, as on a thread pool.

Greenlets switch only where a call parks, never inside a lock, so the code a call runs
needs nothing of this beyond what the read path does. The server's streaming calls park
too: reflection's waits for its requests on gRPC's condition, and health's Watch sends its
answers from callbacks, never waiting in its handler.
"""

from __future__ import annotations

import logging
import math
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

import greenlet

from augur.features import resp

log = logging.getLogger(__name__)
T = TypeVar("T")
_STOP = object()
_RESUME = object()
_local = threading.local()
# How long the polling thread blocks at most while calls are parked: a call woken from
# another thread (none of gRPC's own wakes is) goes on within this, not the next event.
_PARKED_POLL_S = 0.05
_IDLE_POLL_S = 1.0  # as grpc._server._serve: a deallocated server is noticed within it
# A look at the completion queue that does not wait. gRPC rounds a deadline up to its next
# millisecond, so a deadline of now waits for events up to a millisecond (1.1 ms median,
# measured); one already past looks once and returns (2 us).
_NO_WAIT = 0.0
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


class Hub:
    """One thread's loop over its calls, and the work its parked calls wait for."""

    def __init__(self, queue: SimpleQueue) -> None:
        self._queue = queue
        self._greenlet = greenlet.getcurrent()
        self._ready: deque[greenlet.greenlet] = deque()
        # key -> (due, run): work that answers parked calls, run once nothing more is on its
        # way or at `due` (perf_counter). A key deferred again before it ran keeps its due.
        self._deferred: dict[object, tuple[float, Callable[[], None]]] = {}
        self.receiving = 0  # calls parked until gRPC hands them their request
        self.parked = 0  # calls parked, for whatever reason
        # sockets of calls parked until Redis answers: socket -> (call, due or None); only
        # a hub that looks at them (the polling thread's) parks its calls' reads
        self.readers: dict[socket.socket, tuple[greenlet.greenlet, float | None]] = {}
        self.polls_sockets = False
        self.working = 0  # calls parked until their work on another thread is done
        self._timed_out: set[greenlet.greenlet] = set()

    def park(self) -> None:
        """Suspend the calling greenlet until it is resumed; its thread takes other calls."""
        self.parked += 1
        try:
            self._greenlet.switch()
        finally:
            self.parked -= 1

    def resume(self, waiter: greenlet.greenlet) -> None:
        """On this hub's thread: let a parked call go on once the current work is done."""
        self._ready.append(waiter)

    def wake(self, waiter: greenlet.greenlet) -> None:
        """From any thread: let a call parked on this hub go on."""
        self._queue.put((_RESUME, waiter))

    def wait_readable(self, sock: socket.socket) -> None:
        """Park the calling call until `sock` has something to read; TimeoutError once the
        socket's timeout has passed."""
        timeout = sock.gettimeout()
        me = greenlet.getcurrent()
        self.readers[sock] = (me, None if timeout is None else time.perf_counter() + timeout)
        self.park()
        if me in self._timed_out:
            self._timed_out.discard(me)
            raise TimeoutError("timed out")

    def poll_sockets(self, timeout: float) -> None:
        """Wait up to `timeout` for a parked read's socket to be readable; resume the calls
        whose sockets are, and those whose sockets' timeouts have passed."""
        readers = self.readers
        try:
            readable, _, _ = select.select(list(readers), (), (), max(timeout, 0.0))
        except (OSError, ValueError):  # a socket closed under its call: its read says why
            readable = list(readers)
        for sock in readable:
            self._ready.append(readers.pop(sock)[0])
        if len(readers):
            now = time.perf_counter()
            for sock, (waiter, due) in list(readers.items()):
                if due is not None and due <= now:
                    del readers[sock]
                    self._timed_out.add(waiter)
                    self._ready.append(waiter)

    def defer(self, key: object, due: float, run: Callable[[], None]) -> None:
        """Run `run` on this hub once no call is queued or receiving, or at `due`."""
        if key not in self._deferred:
            self._deferred[key] = (due, run)

    def cancel(self, key: object) -> None:
        self._deferred.pop(key, None)

    def loop(self) -> None:
        """A hub thread's loop: calls and wakes come from its queue."""
        queue, ready, deferred = self._queue, self._ready, self._deferred
        while True:
            while ready:
                ready.popleft().switch()
            if not deferred:
                item = queue.get()
            else:
                try:
                    item = queue.get_nowait()
                except Empty:
                    item = self._next_or_run(queue)
                    if item is None:
                        continue
                else:
                    self._run_deferred(time.perf_counter())  # what waited out its delay
            if item is _STOP:
                self._drain()
                return
            self._take(item)

    def run_pending(self) -> None:
        """Run, without waiting, every call queued or woken until none is left."""
        queue, ready = self._queue, self._ready
        while True:
            while ready:
                ready.popleft().switch()
            try:
                item = queue.get_nowait()
            except Empty:
                return
            if item is not _STOP:  # on the polling thread the server's stop ends the loop
                self._take(item)

    def _take(self, item: Any) -> None:
        if item[0] is _RESUME:
            item[1].switch()
        else:
            greenlet.greenlet(_run_item, parent=self._greenlet).switch(item)

    def _drain(self) -> None:
        """At shutdown (the server stopped, its calls ended or cancelled): answer what still
        waits, and let calls still told of their end by gRPC finish."""
        while True:
            self._run_deferred(None)
            while self._ready:
                self._ready.popleft().switch()
            if self.readers:
                self.poll_sockets(_PARKED_POLL_S)
                continue
            if self.receiving <= 0 and not self._deferred and self.working <= 0:
                return
            try:
                item = self._queue.get(timeout=1.0)
            except Empty:
                return  # a call gRPC never woke: nothing is left to answer it
            if item is not _STOP:  # a call item is not expected after the stop: run it anyway
                self._take(item)

    def _next_or_run(self, queue: SimpleQueue) -> Any:
        """Nothing queued: wait for a call still receiving its request (it is on its way to
        the batch) until the first deferred work is due, else run the deferred work now."""
        if self.receiving > 0:
            wait = self.first_due() - time.perf_counter()
            if wait > 0:
                try:
                    return queue.get(timeout=wait)
                except Empty:
                    pass
        self._run_deferred(None)
        return None

    def first_due(self) -> float:
        return min(due for due, _ in self._deferred.values())

    def _run_deferred(self, now: float | None) -> None:
        """Run the deferred work due by `now` (None: all of it)."""
        for key, (due, run) in list(self._deferred.items()):
            if now is None or due <= now:
                del self._deferred[key]
                # a greenlet of its own: work that waits for Redis parks, as a call does
                greenlet.greenlet(_run_work, parent=self._greenlet).switch(run)


def _run_work(run: Callable[[], None]) -> None:
    try:
        run()
    except Exception:  # the work answers its own calls: a failure here is a bug
        log.exception("work deferred on the green pool failed")


def hub() -> Hub | None:
    """The hub running the current call, or None outside a green pool's calls."""
    here = getattr(_local, "hub", None)
    if here is None or greenlet.getcurrent() is here._greenlet:
        return None
    return here


def wait_readable(sock: socket.socket) -> None:
    """augur.features.resp's wait for Redis: on the polling thread a call parks until its
    socket is readable, and the thread runs other calls meanwhile; elsewhere it returns at
    once, and the read blocks its thread."""
    here = hub()
    if here is None or not here.polls_sockets or sock.fileno() >= _FD_SETSIZE:
        return
    pending = getattr(sock, "pending", None)  # TLS: bytes decrypted already, none on the wire
    if pending is None or not pending():
        here.wait_readable(sock)


def off_thread(work: Callable[[], T]) -> T:
    """`work()`, run on a thread of its own where the current call runs on a green pool, its
    call parked meanwhile: slow work (a model version loading) would hold every call its
    hub runs. Elsewhere it runs here."""
    here = hub()
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


def _run_item(item: tuple[futures.Future, Callable[..., Any], tuple, dict]) -> None:
    future, fn, args, kwargs = item
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args, **kwargs)
    except BaseException as e:
        future.set_exception(e)
    else:
        future.set_result(result)


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
        here = hub()
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


def patch_grpc() -> bool:
    """Give each gRPC call's state a GreenCondition, and gRPC's polling loop the hub of a
    pool built to run on it (see the module's docstring). False, and a warning, where this
    gRPC's server is not laid out as expected: then a GreenPool(0) runs a hub thread."""
    from grpc import _server

    if getattr(_server._serve, "green", False):
        return True
    base = getattr(_server, "_RPCState", None)
    try:
        laid_out = isinstance(base().condition, threading.Condition)  # type: ignore[misc]
        laid_out = laid_out and all(
            callable(getattr(_server, name, None))
            for name in ("_serve", "_process_event_and_continue", "_begin_shutdown_once")
        )
        timeout = _server.cygrpc.CompletionType.queue_timeout
    except Exception:
        laid_out = False
    if not laid_out:
        log.warning(
            "this grpcio's server is not the one the green pool knows: its calls run on a "
            "thread of their own, and wait for their request there, in smaller batches"
        )
        return False

    class _GreenRPCState(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.condition = GreenCondition()

    plain = _server._serve

    def _serve(state: Any) -> None:
        pool = state.thread_pool
        if not (isinstance(pool, GreenPool) and pool.on_polling_thread):
            return plain(state)
        _serve_green(state, pool, timeout)

    _serve.green = True  # type: ignore[attr-defined]
    _server._RPCState = _GreenRPCState
    _server._serve = _serve
    return True


def _serve_green(state: Any, pool: GreenPool, timeout: Any) -> None:
    """grpc._server._serve, running the pool's hub between the completion queue's events:
    calls queued or woken by an event run once it is handled; deferred work runs once a
    look at the queue finds nothing (and no call is receiving) or once it is due."""
    from grpc import _server

    _local.hub = hub = Hub(pool._queues[0])
    hub.polls_sockets = True
    deferred, readers, queue = hub._deferred, hub.readers, state.completion_queue
    sockets_due = 0.0
    while True:
        hub.run_pending()
        if deferred:
            hub._run_deferred(time.perf_counter())  # what waited out its delay
        if readers or deferred:
            if readers and time.perf_counter() >= sockets_due:  # however busy the queue
                hub.poll_sockets(0.0)
                sockets_due = time.perf_counter() + _SOCKETS_EVERY_S
                if hub._ready:
                    continue
            event = queue.poll(_NO_WAIT)  # take what has arrived first
            if event.completion_type == timeout:
                if deferred and hub.receiving <= 0:
                    hub._run_deferred(None)  # no call is on its way to the batch
                    continue
                due = hub.first_due() - time.perf_counter() if deferred else math.inf
                if readers:  # look at their sockets a while, then at the queue again
                    hub.poll_sockets(min(_SOCKETS_POLL_S, due))
                    continue
                if due > 0:  # calls receiving: wait for them, up to the first due
                    event = queue.poll(time.time() + due)
                if event.completion_type == timeout:
                    hub._run_deferred(None)
                    continue
        else:
            wait = _IDLE_POLL_S
            if hub.parked:
                wait = _WORK_POLL_S if hub.working else _PARKED_POLL_S
            event = queue.poll(time.time() + wait)
        if state.server_deallocated:
            _server._begin_shutdown_once(state)
        if event.completion_type != timeout and not _server._process_event_and_continue(
            state, event
        ):
            hub._drain()
            return
        # as gRPC's loop: let go of the event (and any call it holds) before polling again
        event = None


class GreenPool(futures.Executor):
    """An executor for `grpc.server`: with `threads` 0, the server's polling thread runs the
    calls (one pool per server); else `threads` hubs of their own, calls handed to them in
    turn."""

    def __init__(self, threads: int, name: str = "augur-green") -> None:
        patched = patch_grpc()  # hub threads, too, park their calls' request waits
        self.on_polling_thread = threads == 0 and patched
        if self.on_polling_thread:
            resp.take_turns(wait_readable, off_thread)
        # a hub's queue each; on the polling thread one, and no thread of the pool's own
        self._queues: list[SimpleQueue] = [SimpleQueue() for _ in range(max(threads, 1))]
        self._turn = 0
        self._lock = threading.Lock()
        self._shutdown = False
        self._threads = [
            threading.Thread(target=_work, args=(queue,), name=f"{name}_{i}", daemon=True)
            for i, queue in enumerate(self._queues)
            if not self.on_polling_thread
        ]
        for thread in self._threads:
            thread.start()

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
                queue.put(_STOP)
        if wait:
            for thread in self._threads:
                thread.join()


def _work(queue: SimpleQueue) -> None:
    _local.hub = hub = Hub(queue)
    hub.loop()
