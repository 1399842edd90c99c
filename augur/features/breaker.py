"""A circuit breaker for the online store: stop hammering a Redis that is down, probe it.

Closed: calls go through. After `failures` consecutive failures it opens: calls fail at
once for `cooldown_s`. Then one call is let through as a probe (half-open): success closes
the circuit, failure opens it for another cooldown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitOpenError(ConnectionError):
    """Raised instead of calling Redis while the circuit is open."""


class CircuitBreaker:
    def __init__(
        self,
        failures: int = 5,
        cooldown_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.state = CLOSED

    def before_call(self) -> None:
        """Raise CircuitOpenError unless this call may go to Redis."""
        with self._lock:
            if self.state == CLOSED:
                return
            if self.state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
                self.state = HALF_OPEN
            if self.state == HALF_OPEN and not self._probing:
                self._probing = True  # this caller is the probe
                return
            wait = max(self.cooldown_s - (self._clock() - self._opened_at), 0.0)
            raise CircuitOpenError(
                f"circuit open after {self._failures} consecutive failures; next probe in "
                f"{wait * 1000:.0f} ms"
            )

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._probing = False
            self.state = CLOSED

    def abandoned(self) -> None:
        """The call failed for a reason of its own, not Redis's: no verdict, but a probe's
        slot is free again (else the circuit would wait for a probe that never reports)."""
        with self._lock:
            self._probing = False

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            self._probing = False
            if self.state == HALF_OPEN or self._failures >= self.threshold:
                self.state = OPEN
                self._opened_at = self._clock()
