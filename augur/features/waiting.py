"""How a Redis round trip waits for its replies: the seam between the read path and whatever
runs the calls.

The read path never knows who runs it. A server whose calls take turns on one thread (the
green pool in augur.serving) hands the reader a `Waiting` that parks the call until its socket
is readable and runs other calls meanwhile; everyone else (pipelines, tests, the thread-pool
server) gets `BLOCKING`, where a read simply blocks its thread.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Waiting(Protocol):
    def wait_readable(self, sock: socket.socket) -> None:
        """Return once `sock` has bytes to read (or at once, letting the read block). Raises
        TimeoutError once the socket's own timeout has passed."""

    def run_elsewhere(self, work: Callable[[], T]) -> T:
        """`work()`, run where blocking holds no other call (a new connection's handshake,
        read by redis-py's own parser)."""


class Blocking:
    """Plain threads: a read blocks its thread, and work runs here."""

    def wait_readable(self, sock: socket.socket) -> None:
        return None

    def run_elsewhere(self, work: Callable[[], T]) -> T:
        return work()


BLOCKING: Waiting = Blocking()
