"""Admission per model: how many calls compute at once, and which calls wait or are refused.

A concurrency limit, tuned from the latency of the calls it lets through (TCP Vegas, as
Netflix's concurrency-limits does it), lets calls compute; the rest wait in a first-come
queue for a call to leave. A call that cannot be served within its own deadline, given the
calls queued ahead of it and how fast calls leave, is refused at once (RESOURCE_EXHAUSTED,
saying why) rather than queued to be computed for nobody; one whose deadline passes while
it waits is answered DEADLINE_EXCEEDED. So an overload queues what the model can finish in
time and serves it at full rate, instead of refusing at a fixed count: a refused caller
that retries at once costs the server a call for nothing. Not metrics, not batching.

On a green pool (the `Turns` handed in) a waiting call parks and holds no thread; elsewhere
it blocks its thread, up to its deadline. With tenants configured (tenants.py) the queue is a
fair queue: each tenant's share of the places, and lower priority shed first.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

import grpc

from augur.config import ServerConfig
from augur.serving.batcher import THREADS, Parking, Turns
from augur.serving.errors import RequestError
from augur.serving.tenants import FairQueue, Tenant, TenantTable

# Vegas' bounds on the calls it lets queue inside the model (beyond what the no-load latency
# says it can serve): below ALPHA the limit grows, above BETA it shrinks; both scale with
# log10 of the limit, as in concurrency-limits.
_ALPHA, _BETA = 3, 6
# The no-load latency is the least latency seen, drifting up this much a second: under
# sustained load no call sees an empty server, and a model that became slower (a new
# version) must not be held to the old one's latency forever.
_NOLOAD_DRIFT_PER_S = 0.05
_SMOOTHING = 0.2  # weight of a call's latency in the latency the limit is tuned from
_EXPIRED_SWEEP_S = 0.01  # how often a leaving call answers queued calls past their deadline
# A queued call is let in only with this long left before its deadline (the usual latency
# times _ROOM, plus _ROOM_S): one let in with less would likely time out in its Redis read,
# whose budget is what is left, on a thread busy with the overload: work for nobody, and a
# failure the circuit breaker counts against Redis.
_ROOM = 3.0
_ROOM_S = 0.01


@dataclass(frozen=True)
class AdmissionPolicy:
    """What a model's admission may do: `limit` calls computing at once (0: adaptive, between
    `min_limit` and `max_limit`), at most `max_calls` computing and queued together."""

    limit: int = 0
    min_limit: int = 16
    max_limit: int = 64
    max_calls: int = 512
    initial_limit: int = 16

    @classmethod
    def of(cls, server: ServerConfig) -> AdmissionPolicy:
        """The policy server.admission_* and server.model_queue describe."""
        most = max(server.admission_max_limit, 1)
        return cls(
            limit=min(server.admission_limit, server.model_queue),
            min_limit=max(min(server.admission_min_limit, most), 1),
            max_limit=min(most, server.model_queue),
            max_calls=server.model_queue,
            initial_limit=min(max(16, server.admission_min_limit), most, server.model_queue),
        )


class Admission:
    """One model's admission: `enter(deadline)` admits, queues or refuses a call."""

    def __init__(
        self,
        name: str,
        policy: AdmissionPolicy = AdmissionPolicy(),
        turns: Turns = THREADS,
        tenants: TenantTable | None = None,
    ):
        self.name = name
        self.policy = policy
        self._turns = turns  # how a queued call waits: parked on its hub, or blocked
        fixed = policy.limit > 0
        self.limit = float(policy.limit if fixed else policy.initial_limit)
        self._adaptive = not fixed
        self.running = 0
        # with tenants, a queue per tenant and the places each holds; without, one queue
        self._fair = FairQueue(tenants) if tenants is not None else None
        self._queue: deque[_Waiter] | FairQueue = self._fair or deque()
        self._lock = threading.Lock()  # calls on other threads (a thread pool) share this
        self._latency = 0.0  # smoothed latency of the calls let through, seconds
        self._noload = math.inf  # least latency seen (drifting up), seconds
        self._noload_at = time.monotonic()
        self._sweep_due = 0.0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def enter(self, deadline: float | None, tenant: Tenant | None = None) -> Ticket:
        """Admit a call now, or queue it until a call leaves; `deadline` is when its caller
        gives up (time.monotonic), None for never; `tenant`: whose call it is, with tenants
        configured. RequestError RESOURCE_EXHAUSTED when it cannot be served in time, too
        many calls (or too many of its tenant's) are here, or a call of higher priority took
        its place; DEADLINE_EXCEEDED when its deadline passes while it waits."""
        if tenant is not None:
            hub = self._turns.parking()
            if hub is not None:  # from here on its turns go by its tenant's priority
                hub.rank(tenant.priority)
        now = time.monotonic()
        with self._lock:
            fair = self._fair
            if tenant is None or fair is None:
                if self.running < int(self.limit) and not self._queue:
                    self._check_late(now, deadline)
                    self.running += 1
                    return Ticket(self, now)
            else:
                fair.seen(tenant, now)
                limit = int(self.limit)
                if (
                    self.running < limit
                    and not fair.queued(tenant)
                    and fair.may_run(tenant, limit, now)
                ):
                    self._check_late(now, deadline)
                    self.running += 1
                    fair.running[tenant.index] += 1
                    return Ticket(self, now, tenant)
            self._check_room(now, deadline, tenant)
            waiter = _Waiter(deadline, self._turns.parking(), tenant)
            self._queue.append(waiter)
        if not waiter.wait():  # blocked past its deadline: leave the queue, unless admitted
            with self._lock:
                if not waiter.admitted:
                    self._queue.remove(waiter)
        if waiter.shed:
            raise RequestError(
                f"model {self.name}: shed for calls of higher priority while queued (tenant "
                f"{tenant.name if tenant else '-'}); retry with backoff",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
        if not waiter.admitted:
            raise RequestError(
                f"model {self.name}: the deadline passed after "
                f"{(time.monotonic() - now) * 1e3:.0f} ms in the admission queue",
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        return Ticket(self, time.monotonic(), tenant)

    def _check_late(self, now: float, deadline: float | None) -> None:
        """With the lock held: refuse a call that would be let in at once but has less time
        left than a call takes now, which it would spend for nobody.

        Under overload calls also queue in front of the server (in gRPC, before a handler
        sees them), where admission's own queue cannot refuse them, and some arrive with
        less time left than any call takes. What a call takes now is the smoothed latency,
        but at most the no-load latency once for each call computing and this one: one large
        call just answered lifts the smoothed latency, and must not refuse the small calls
        after it. No more room than that is asked (as a queued call is asked, `_ROOM`): a
        caller with a deadline of a few milliseconds is let in whenever it can be served."""
        if deadline is None or self._latency <= 0.0:
            return
        takes = min(self._latency, (self.running + 1) * self._noload)
        left = deadline - now
        if left < takes:
            raise RequestError(
                f"model {self.name}: the call arrived with {max(left, 0.0) * 1e3:.1f} ms "
                f"left of its deadline, and calls take about {takes * 1e3:.1f} ms now; retry "
                f"with backoff or a longer deadline",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )

    def _check_room(self, now: float, deadline: float | None, tenant: Tenant | None) -> None:
        """With the lock held: refuse a call that would overfill the model's queue (or its
        tenant's share of it) or that would wait past its deadline."""
        here = self.running + len(self._queue)
        fair = self._fair
        if tenant is not None and fair is not None:
            if fair.over_share(tenant, self.policy.max_calls):
                raise RequestError(
                    f"model {self.name}: tenant {tenant.name} already queues "
                    f"{fair.queued(tenant)} calls, its share ({tenant.share:g}) of "
                    f"server.model_queue; retry with backoff",
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                )
            if here >= self.policy.max_calls:
                shed = fair.lower_than(tenant)  # lower priority gives way
                if shed is not None:
                    shed.shed = True
                    shed.wake(self._turns.parking())
                    here -= 1
        if here >= self.policy.max_calls:
            raise RequestError(
                f"model {self.name}: {here} calls already in flight or queued "
                f"(server.model_queue); retry with backoff",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
        latency = self._latency
        if tenant is not None and fair is not None and fair.latency[tenant.index] > 0.0:
            latency = fair.latency[tenant.index]  # its own calls', not another tenant's
        if deadline is None or latency <= 0.0:
            return
        # Calls leave about `limit` per latency: the ones ahead, then this one, in turns (with
        # tenants: its tenant's calls ahead, at its share of the places).
        if tenant is not None and fair is not None:
            turns = (fair.queued(tenant) + 1) / max(self.limit * tenant.share, 1.0)
        else:
            turns = (len(self._queue) + 1) / max(self.limit, 1.0)
        wait = turns * latency
        left = deadline - now
        if wait + _ROOM * latency + _ROOM_S > left:
            raise RequestError(
                f"model {self.name}: {len(self._queue)} calls queued ahead, about "
                f"{wait * 1e3:.0f} ms to wait and {latency * 1e3:.0f} ms to serve, "
                f"but the deadline leaves {max(left, 0.0) * 1e3:.0f} ms; retry with backoff "
                f"or a longer deadline",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )

    def _leave(self, latency_s: float | None, tenant: Tenant | None) -> None:
        now = time.monotonic()
        with self._lock:
            if latency_s is not None:
                self._learn(latency_s, now)
            self.running -= 1
            fair = self._fair
            if tenant is not None and fair is not None:
                fair.running[tenant.index] -= 1
                if latency_s is not None:
                    fair.learn(tenant, latency_s, _SMOOTHING)
            queue = self._queue
            if queue and now >= self._sweep_due:
                self._sweep_due = now + _EXPIRED_SWEEP_S
                for waiter in [w for w in queue if w.expired(now)]:
                    queue.remove(waiter)
                    waiter.wake(self._turns.parking())
            while queue and self.running < int(self.limit):
                if fair is not None:  # the fair queue's pick; None: no tenant may take one
                    waiter = fair.popleft(int(self.limit), now)
                    if waiter is None:
                        break
                else:
                    waiter = queue.popleft()
                if not waiter.expired(now + _ROOM * self._latency + _ROOM_S):
                    waiter.admitted = True
                    self.running += 1
                    if waiter.tenant is not None and fair is not None:
                        fair.running[waiter.tenant.index] += 1
                waiter.wake(self._turns.parking())

    def _learn(self, latency_s: float, now: float) -> None:
        """With the lock held: tune the limit from one call's latency (Vegas)."""
        self._latency = (
            latency_s
            if self._latency <= 0.0
            else self._latency + _SMOOTHING * (latency_s - self._latency)
        )
        drifted = self._noload * (1 + _NOLOAD_DRIFT_PER_S * (now - self._noload_at))
        self._noload, self._noload_at = min(drifted, latency_s), now
        if not self._adaptive:
            return
        limit = self.limit
        # calls queued inside the model beyond what it serves at its no-load latency
        inside = limit * (1 - self._noload / self._latency) if self._latency > 0 else 0.0
        scale = math.log10(max(limit, 10.0))
        if inside > _BETA * scale:
            limit -= scale
        elif inside < _ALPHA * scale and self.running * 2 >= limit:  # only when it is used
            limit += scale
        self.limit = min(max(limit, self.policy.min_limit), self.policy.max_limit)


class Ticket:
    """An admitted call's place: `leave()` once it is answered (or use it as a context
    manager), which lets the next queued call in and tunes the limit."""

    __slots__ = ("_admission", "_began", "_left", "_tenant")

    def __init__(self, admission: Admission, began: float, tenant: Tenant | None = None):
        self._admission, self._began, self._left = admission, began, False
        self._tenant = tenant

    def leave(self, latency_s: float | None = None) -> None:
        """The call is answered: its latency (by default, since it was admitted) tunes the
        limit."""
        if not self._left:
            self._left = True
            latency = time.monotonic() - self._began if latency_s is None else latency_s
            self._admission._leave(latency, self._tenant)

    def drop(self) -> None:
        """The call failed: its place goes to the next call, and its latency, which says
        nothing of the model's (a bad request fails in microseconds), tunes nothing."""
        if not self._left:
            self._left = True
            self._admission._leave(None, self._tenant)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:
            self.leave()
        else:
            self.drop()


class _Waiter:
    """A queued call: parked on its hub (a green pool's) or blocked on a lock of its own."""

    __slots__ = ("_call", "_hub", "_lock", "admitted", "deadline", "shed", "tenant")

    def __init__(self, deadline: float | None, hub: Parking | None, tenant: Tenant | None = None):
        self.deadline = deadline
        self.admitted = False
        self.shed = False  # refused for a call of higher priority (tenants)
        self.tenant = tenant
        self._hub = hub
        self._call = hub.current() if hub is not None else None
        self._lock: threading.Lock | None = None
        if hub is None:
            self._lock = threading.Lock()
            self._lock.acquire()

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def wait(self) -> bool:
        """Until woken (True), or on a thread until the deadline passes (False). A parked
        call has no timer: a call leaving wakes it, or a sweep of expired calls."""
        if self._hub is not None:
            self._hub.park()
            return True
        assert self._lock is not None
        timeout = -1.0 if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)
        return self._lock.acquire(timeout=timeout)

    def wake(self, here: Parking | None) -> None:
        """Let the call go on; `here` is the waking call's own hub (None: a thread's)."""
        if self._hub is None:
            assert self._lock is not None
            self._lock.release()
        elif self._hub is here:
            self._hub.resume(self._call)
        else:  # a call on another hub's thread
            self._hub.wake(self._call)
