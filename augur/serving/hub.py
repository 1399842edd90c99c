"""One thread's loop over the calls it runs as greenlets (the `Hub`): a call that waits parks,
and the thread takes the next call; the work parked calls wait for (their batch) runs once no
call is on its way, or when it is due. With tenants, a `RankedHub` runs its ready calls by
their tenant's priority (`RunQueue`). The green pool (augur/serving/green.py) runs hubs;
nothing here knows gRPC.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from queue import Empty, SimpleQueue
from typing import Any

import greenlet

log = logging.getLogger(__name__)
STOP = object()  # queued by the pool's shutdown: the hub answers what waits, then ends
_RESUME = object()
# The rank of a call whose tenant is not known yet (a call just taken, or reading its request):
# those turns are short and say whose call it is, so they go before any tenant's.
_UNRANKED = 1 << 30
# How long the hub waits on its parked reads' sockets at shutdown before looking again.
_DRAIN_POLL_S = 0.05
# Greenlets that ran a call and wait for the next, kept at most: a new greenlet per call cost
# 13-16 us here (its frames' first stack chunk is an mmap, its end a munmap), a kept one 1 us.
_IDLE_WORKERS = 64


class Hub:
    """One thread's loop over its calls, and the work its parked calls wait for."""

    def __init__(self, queue: SimpleQueue) -> None:
        self._queue = queue
        self.greenlet = greenlet.getcurrent()  # the hub's own: calls switch back to it
        self._ready: deque[greenlet.greenlet] = deque()
        # key -> (due, run): work that answers parked calls, run once nothing more is on its
        # way or at `due` (perf_counter). A key deferred again before it ran keeps its due.
        self.deferred: dict[object, tuple[float, Callable[[], None]]] = {}
        self.receiving = 0  # calls parked until gRPC hands them their request
        self.parked = 0  # calls parked, for whatever reason
        # sockets of calls parked until Redis answers: socket -> (call, due or None); only
        # a hub that looks at them (the polling thread's) parks its calls' reads
        self.readers: dict[socket.socket, tuple[greenlet.greenlet, float | None]] = {}
        self.polls_sockets = False
        self.working = 0  # calls parked until their work on another thread is done
        self._timed_out: set[greenlet.greenlet] = set()
        self._idle: list[greenlet.greenlet] = []  # workers between calls (`_work`)

    def current(self) -> greenlet.greenlet:
        """The calling call, as `resume` and `wake` take it."""
        return greenlet.getcurrent()

    def park(self) -> None:
        """Suspend the calling greenlet until it is resumed; its thread takes other calls."""
        self.parked += 1
        try:
            self.greenlet.switch()
        finally:
            self.parked -= 1

    def resume(self, waiter: greenlet.greenlet) -> None:
        """On this hub's thread: let a parked call go on once the current work is done."""
        self._ready.append(waiter)

    def wake(self, waiter: greenlet.greenlet) -> None:
        """From any thread: let a call parked on this hub go on."""
        self._queue.put((_RESUME, waiter))

    def rank(self, priority: int) -> None:
        """The calling call is of a tenant of `priority`: a plain hub runs its calls in the
        order they became ready, whoever they are for (a `RankedHub` does not)."""

    def take_turn(self) -> None:
        """A ranked call's point to let calls of higher priority go first: none on a plain
        hub."""

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

    @property
    def ready(self) -> bool:
        """Whether a call is ready to run on again."""
        return bool(self._ready)

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
        if key not in self.deferred:
            self.deferred[key] = (due, run)

    def cancel(self, key: object) -> None:
        self.deferred.pop(key, None)

    def loop(self) -> None:
        """A hub thread's loop: calls and wakes come from its queue."""
        queue, ready, deferred = self._queue, self._ready, self.deferred
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
                    self.run_deferred(time.perf_counter())  # what waited out its delay
            if item is STOP:
                self.drain()
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
            if item is not STOP:  # on the polling thread the server's stop ends the loop
                self._take(item)

    def _take(self, item: Any) -> None:
        if item[0] is _RESUME:
            item[1].switch()
            return
        idle = self._idle
        if idle:
            worker = idle.pop()
            worker.gr_context = None  # the empty context a new greenlet starts in
        else:
            worker = greenlet.greenlet(self._work, parent=self.greenlet)
        worker.switch(item)

    def _work(self, item: Any) -> None:
        """A worker greenlet: runs each call it is given to its end, then waits among the
        idle workers for the next, as a new greenlet would run it (its attributes, such as a
        ranked call's `rank`, cleared; its context emptied by `_take`)."""
        me, idle, hub = greenlet.getcurrent(), self._idle, self.greenlet
        while True:
            if _run_item(item) or len(idle) >= _IDLE_WORKERS:
                return
            item = None  # the call's request and gRPC state are not kept while it idles
            if me.__dict__:
                me.__dict__.clear()
            idle.append(me)
            item = hub.switch()

    def drain(self) -> None:
        """At shutdown (the server stopped, its calls ended or cancelled): answer what still
        waits, and let calls still told of their end by gRPC finish."""
        while True:
            self.run_deferred(None)
            while self._ready:
                self._ready.popleft().switch()
            if self.readers:
                self.poll_sockets(_DRAIN_POLL_S)
                continue
            if self.receiving <= 0 and not self.deferred and self.working <= 0:
                self._idle.clear()  # each ends here (GreenletExit), on its own thread
                return
            try:
                item = self._queue.get(timeout=1.0)
            except Empty:
                self._idle.clear()
                return  # a call gRPC never woke: nothing is left to answer it
            if item is not STOP:  # a call item is not expected after the stop: run it anyway
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
        self.run_deferred(None)
        return None

    def first_due(self) -> float:
        return min(due for due, _ in self.deferred.values())

    def run_deferred(self, now: float | None) -> None:
        """Run the deferred work due by `now` (None: all of it)."""
        for key, (due, run) in list(self.deferred.items()):
            if now is None or due <= now:
                del self.deferred[key]
                # a greenlet of its own: work that waits for Redis parks, as a call does
                greenlet.greenlet(_run_work, parent=self.greenlet).switch(run)


class RankedHub(Hub):
    """A hub whose ready calls run by their tenant's priority, highest first (in the order
    they became ready within one priority): a call of a flooding tenant of lower priority
    waits while a call of a higher one is ready. A call runs unranked (before any tenant's)
    until `rank` names its priority. The pool builds it only where tenants are configured."""

    def __init__(self, queue: SimpleQueue) -> None:
        super().__init__(queue)
        self._ready = RunQueue()  # type: ignore[assignment]
        self._top = -_UNRANKED  # the highest priority ranked so far

    def rank(self, priority: int) -> None:
        """The calling call is of a tenant of `priority`: from now on it runs after the ready
        calls of higher priority, which it lets go first now (its turn so far was unranked);
        a call of the highest priority seen goes on, as nothing would go before it."""
        me = greenlet.getcurrent()
        me.rank = priority
        if priority >= self._top:  # no call ranks above it: it goes on
            self._top = priority
            return
        self._ready.append(me)
        self.park()

    def take_turn(self) -> None:
        """A point in a ranked call's work (between its read and its model call) where the
        calls of higher priority that became ready meanwhile go first; an unranked call, or one
        of the highest priority, goes on. So a flooding tenant's call holds the thread for
        half its work at a time."""
        me = greenlet.getcurrent()
        if getattr(me, "rank", self._top) < self._top:
            self._ready.append(me)
            self.park()

    def run_turn(self) -> bool:
        """Start the calls queued (each parks at once, for its request, or goes on as woken),
        then run the ready call of highest priority until it parks; False when none was
        ready."""
        queue = self._queue
        while True:
            try:
                item = queue.get_nowait()
            except Empty:
                break
            if item is not STOP:  # on the polling thread the server's stop ends the loop
                self._take(item)
        if not self._ready:
            return False
        self._ready.popleft().switch()
        return True


class RunQueue:
    """Ready calls by rank (a greenlet's `rank`, the priority of its tenant; unranked first),
    first ready first within a rank: the deque operations a hub uses, on a heap."""

    __slots__ = ("_heap", "_order")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, greenlet.greenlet]] = []
        self._order = itertools.count()

    def append(self, call: greenlet.greenlet) -> None:
        heapq.heappush(self._heap, (-getattr(call, "rank", _UNRANKED), next(self._order), call))

    def popleft(self) -> greenlet.greenlet:
        return heapq.heappop(self._heap)[2]

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __len__(self) -> int:
        return len(self._heap)


def _run_work(run: Callable[[], None]) -> None:
    try:
        run()
    except Exception:  # the work answers its own calls: a failure here is a bug
        log.exception("work deferred on the green pool failed")


def _run_item(item: tuple[futures.Future, Callable[..., Any], tuple, dict]) -> bool:
    """Run a call; True when its greenlet was told to end (GreenletExit: it is being
    collected), which ends the worker too."""
    future, fn, args, kwargs = item
    if not future.set_running_or_notify_cancel():
        return False
    try:
        result = fn(*args, **kwargs)
    except greenlet.GreenletExit as e:
        future.set_exception(e)
        return True
    except BaseException as e:
        future.set_exception(e)
    else:
        future.set_result(result)
    return False
