"""Every touch of gRPC's private server parts (`grpc._server`), walled off here: the green pool
(augur/serving/green.py) asks `install` for two changes and gets its polling thread's events
through `ServerEvents`; nothing else in Augur reads or replaces a private part of gRPC.

The two changes, checked at start against the server this grpcio has: each call's state gets
the pool's condition (so a call waiting for its request parks rather than blocking a thread),
and gRPC's polling loop hands the polling thread to a pool that asks for it (`runs_polling_loop`)
so the pool runs its calls between the completion queue's events. Should a gRPC release lay its
server out differently, `install` changes nothing and says no: the pool then runs its calls on
a thread of its own (tests/test_green.py serves Predict that way).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

# The names this module reads or replaces in grpc._server; a release without one is refused.
_USED = ("_RPCState", "_serve", "_process_event_and_continue", "_begin_shutdown_once")


class ServerEvents:
    """One server's completion queue as its polling thread sees it: look for the next event,
    and hand each event back to gRPC. gRPC's own loop (grpc._server._serve) is these two in
    turn; a pool running calls between them keeps gRPC's order."""

    __slots__ = ("_begin_shutdown", "_poll", "_process", "_state", "_timeout")

    def __init__(self, state: Any) -> None:
        from grpc import _server

        self._state = state
        self._poll = state.completion_queue.poll
        self._timeout = _server.cygrpc.CompletionType.queue_timeout
        self._process = _server._process_event_and_continue
        self._begin_shutdown = _server._begin_shutdown_once

    def look(self) -> Any:
        """The event that has arrived already, or None, without waiting. (gRPC rounds a
        deadline up to its next millisecond, so a deadline of now would wait up to one (1.1 ms
        median, measured); one already past looks once and returns, in about 2 us.)"""
        event = self._poll(0.0)
        return None if event.completion_type == self._timeout else event

    def wait(self, timeout_s: float) -> Any:
        """The next event within `timeout_s`, or None."""
        event = self._poll(time.time() + timeout_s)
        return None if event.completion_type == self._timeout else event

    def handle(self, event: Any) -> bool:
        """Let gRPC act on `event` (None: only notice a server deallocated meanwhile, as its
        loop does after each poll); False once the server has shut down."""
        if self._state.server_deallocated:
            self._begin_shutdown(self._state)
        return event is None or self._process(self._state, event)

    def begin_shutdown(self) -> None:
        """Begin gRPC's shutdown (as `server.stop` does first): new calls are refused, and
        calls gRPC's core holds unmatched, not yet handed to this process, are cancelled."""
        self._begin_shutdown(self._state)


def install(condition: type[threading.Condition]) -> bool:
    """Build each gRPC call's state with `condition`, and let a thread pool whose
    `runs_polling_loop` is true run the polling loop: `pool.run_polling_loop(ServerEvents)`.
    Once per process; False, changing nothing, where this gRPC's server is not laid out as
    expected."""
    from grpc import _server

    if getattr(_server._serve, "green", False):
        return True
    try:
        laid_out = all(callable(getattr(_server, name, None)) for name in _USED)
        laid_out = laid_out and isinstance(_server._RPCState().condition, threading.Condition)
        _server.cygrpc.CompletionType.queue_timeout  # noqa: B018 - ServerEvents reads it
    except Exception:
        laid_out = False
    if not laid_out:
        return False

    base = _server._RPCState

    class _RPCState(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.condition = condition()

    plain: Callable[[Any], None] = _server._serve

    def _serve(state: Any) -> None:
        pool = state.thread_pool
        if not getattr(pool, "runs_polling_loop", False):
            return plain(state)
        pool.run_polling_loop(ServerEvents(state))

    _serve.green = True  # type: ignore[attr-defined]
    _server._RPCState = _RPCState
    _server._serve = _serve
    return True
