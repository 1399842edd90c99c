"""The gRPC handler pool for dynamic batching: a few threads, each running its calls as
greenlets, so that a call waiting for its batch, or for its request to arrive, holds no
thread.

gRPC's synchronous server runs each call in a handler from the executor it is given. On a
thread pool a call holds its thread from start to end: twice over, waiting for its request
message and waiting for its batch. So a batching server needs a thread per call a batch may
take, and on two cores those threads cost as much as batching saves (README, Benchmarks).
Here each pool thread runs a loop (the `Hub`) that takes the next call gRPC queued and runs
it in a greenlet of its own. A call that waits parks: it switches back to the hub, which
takes the next call. The hub runs what parked calls wait for (their batch, `Hub.defer`)
once no call is queued and none is still receiving its request, or when the batch's delay
is up, and then resumes the calls it answered.

The request wait is gRPC's: each call's state has a `threading.Condition` that its handler
waits on until gRPC's polling thread has the request. `patch_grpc` gives that state a
`GreenCondition` instead, which parks a call on a hub rather than blocking its thread and
behaves as `threading.Condition` everywhere else. It replaces a private class of
`grpc._server`, checked at start: should a gRPC release change it, the pool still serves,
its calls waiting for their requests on their thread (smaller batches), and the log says so.

Greenlets switch only where a call parks, never inside a lock or a socket read, so the code
a call runs needs nothing of this: a blocking read blocks its thread, as on a thread pool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from queue import Empty, SimpleQueue
from typing import Any

import greenlet

log = logging.getLogger(__name__)
_STOP = object()
_RESUME = object()
_local = threading.local()


class Hub:
    """One pool thread's loop over its calls, and the work its parked calls wait for."""

    def __init__(self, queue: SimpleQueue) -> None:
        self._queue = queue
        self._greenlet = greenlet.getcurrent()
        self._ready: deque[greenlet.greenlet] = deque()
        # key -> (due, run): work that answers parked calls, run once nothing more is on its
        # way or at `due` (perf_counter). A key deferred again before it ran keeps its due.
        self._deferred: dict[object, tuple[float, Callable[[], None]]] = {}
        self.receiving = 0  # calls parked until gRPC hands them their request

    def park(self) -> None:
        """Suspend the calling greenlet until it is resumed; its thread takes other calls."""
        self._greenlet.switch()

    def resume(self, waiter: greenlet.greenlet) -> None:
        """On this hub's thread: let a parked call go on once the current work is done."""
        self._ready.append(waiter)

    def wake(self, waiter: greenlet.greenlet) -> None:
        """From any thread: let a call parked on this hub go on."""
        self._queue.put((_RESUME, waiter))

    def defer(self, key: object, due: float, run: Callable[[], None]) -> None:
        """Run `run` on this hub once no call is queued or receiving, or at `due`."""
        if key not in self._deferred:
            self._deferred[key] = (due, run)

    def cancel(self, key: object) -> None:
        self._deferred.pop(key, None)

    def loop(self) -> None:
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
            if self.receiving <= 0 and not self._deferred:
                return
            try:
                item = self._queue.get(timeout=1.0)
            except Empty:
                return  # a call gRPC never woke: nothing is left to answer it
            if item is _STOP:
                continue
            if item[0] is _RESUME:
                item[1].switch()
            else:  # not expected: calls are queued before the stop; run it all the same
                greenlet.greenlet(_run_item, parent=self._greenlet).switch(item)

    def _next_or_run(self, queue: SimpleQueue) -> Any:
        """Nothing queued: wait for a call still receiving its request (it is on its way to
        the batch) until the first deferred work is due, else run the deferred work now."""
        if self.receiving > 0:
            wait = min(due for due, _ in self._deferred.values()) - time.perf_counter()
            if wait > 0:
                try:
                    return queue.get(timeout=wait)
                except Empty:
                    pass
        self._run_deferred(None)
        return None

    def _run_deferred(self, now: float | None) -> None:
        """Run the deferred work due by `now` (None: all of it)."""
        for key, (due, run) in list(self._deferred.items()):
            if now is None or due <= now:
                del self._deferred[key]
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
    """Give each gRPC call's state a GreenCondition (see the module's docstring); False,
    and a warning, where this gRPC's server is not laid out as expected."""
    from grpc import _server

    base = getattr(_server, "_RPCState", None)
    if getattr(base, "green", False):
        return True
    try:
        laid_out = isinstance(base().condition, threading.Condition)  # type: ignore[misc]
    except Exception:
        laid_out = False
    if not laid_out:
        log.warning(
            "this grpcio's server state is not the one the green pool knows: calls wait for "
            "their request on their thread, and batches take fewer calls"
        )
        return False

    class _GreenRPCState(base):  # type: ignore[misc, valid-type]
        green = True

        def __init__(self) -> None:
            super().__init__()
            self.condition = GreenCondition()

    _server._RPCState = _GreenRPCState
    return True


class GreenPool(futures.Executor):
    """An executor for `grpc.server`: `threads` hubs, calls handed to them in turn."""

    def __init__(self, threads: int, name: str = "augur-green") -> None:
        patch_grpc()
        self._queues: list[SimpleQueue] = [SimpleQueue() for _ in range(threads)]
        self._turn = 0
        self._lock = threading.Lock()
        self._shutdown = False
        self._threads = [
            threading.Thread(target=_work, args=(queue,), name=f"{name}_{i}", daemon=True)
            for i, queue in enumerate(self._queues)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future:
        future: futures.Future = futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._turn = (self._turn + 1) % len(self._queues)
            self._queues[self._turn].put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop once the calls queued so far have run (a server's calls have ended when it
        has stopped); queued calls run even with `cancel_futures`."""
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
