"""Tenants: who a call is for (its authenticated caller, else its `tenant` metadata header),
each with a share of every model's admission and a priority, and the fair queue admission
keeps per model when tenants are configured. Not admission's limit (admission.py).

A tenant's calls wait in a queue of its own; when a model frees a place, the waiting tenant
using least of its share goes next (weighted fair queueing over places held). While another
tenant is active (a call of its within ACTIVE_S), a tenant holds at most its share of the
places (at least one), even with places free: a running call costs the others CPU on these
cores, so borrowing a place another tenant may need next is what a flood must not do. A
tenant alone uses every place. A tenant may hold queued calls up
to its share of server.model_queue; beyond that its calls are refused at once, not queued in
front of others. When the model's queue is full, a call of higher priority takes the place of
the newest queued call of the lowest priority below it, which is refused: under overload,
lower priority is shed first. Tenant names come from augur.yaml only, so metric labels stay
bounded; a call naming an unknown tenant is the default tenant's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from augur.config import ConfigError
from augur.serving import security

DEFAULT = "default"
HEADER = "tenant"  # the metadata key a caller without its own identity names its tenant in
_MIN_DEFAULT_SHARE = 0.05  # what calls of no tenant get when the configured shares fill 1
ACTIVE_S = 1.0  # a tenant with a call this recent is active: the others keep to their shares


@dataclass(frozen=True)
class Tenant:
    name: str
    share: float  # of each model's admission places (and of its queue)
    priority: int  # higher is served first under overload; lower is shed first
    index: int  # its place in the table (a fair queue's lists are indexed by it)


class TenantTable:
    """The configured tenants, and which one a call is for."""

    def __init__(self, tenants: list[Tenant], callers: Mapping[str, Tenant]) -> None:
        self.tenants = tenants
        self._by_name = {t.name: t for t in tenants}
        self._by_caller = dict(callers)
        self.default = self._by_name[DEFAULT]

    def of(self, context: Any) -> Tenant:
        """The tenant of the call `context` serves: its authenticated caller's, else the one
        its `tenant` header names, else the default."""
        caller = security.current_caller()
        if caller:
            own = self._by_caller.get(caller)
            if own is not None:
                return own
        for key, value in context.invocation_metadata() or ():
            if key == HEADER:
                return self._by_name.get(value, self.default)
        return self.default

    def named(self, name: str) -> Tenant:
        return self._by_name[name]


def table_of(raw: Mapping[str, Any]) -> TenantTable | None:
    """The `tenants` section of augur.yaml, e.g. {fraud: {share: 0.5, priority: 2, callers:
    [fraud-svc]}}; None when it is empty (no tenants: one queue, first come first served)."""
    if not raw:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError("tenants: expected a mapping of tenant name to {share, priority}")
    tenants: list[Tenant] = []
    callers: dict[str, Tenant] = {}
    for name, spec in raw.items():
        where = f"tenants.{name}"
        spec = spec or {}
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected a mapping (share, priority, callers)")
        unknown = sorted(set(spec) - {"share", "priority", "callers"})
        if unknown:
            raise ConfigError(
                f"{where}.{unknown[0]}: not an option; a tenant takes share, priority and callers"
            )
        share = spec.get("share", 0.0 if name != DEFAULT else None)
        if share is not None and (
            isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1
        ):
            raise ConfigError(f"{where}.share: expected a share within (0, 1], got {share!r}")
        priority = spec.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ConfigError(f"{where}.priority: expected a whole number, got {priority!r}")
        tenant = Tenant(str(name), float(share or 0.0), priority, len(tenants))
        tenants.append(tenant)
        for caller in spec.get("callers") or ():
            if str(caller) in callers:
                raise ConfigError(
                    f"{where}.callers: {caller!r} is tenant {callers[str(caller)].name}'s already"
                )
            callers[str(caller)] = tenant
    total = sum(t.share for t in tenants)
    if total > 1.0 + 1e-9:
        raise ConfigError(f"tenants: the shares add up to {total:g}; at most 1")
    names = [t.name for t in tenants]
    if DEFAULT not in names:
        tenants.append(Tenant(DEFAULT, max(1.0 - total, _MIN_DEFAULT_SHARE), 0, len(tenants)))
    else:  # a default without a share gets what the others leave
        i = names.index(DEFAULT)
        if tenants[i].share == 0.0:
            tenants[i] = Tenant(
                DEFAULT, max(1.0 - total, _MIN_DEFAULT_SHARE), tenants[i].priority, i
            )
    return TenantTable(tenants, callers)


class FairQueue:
    """One model's waiting calls, a queue per tenant, and the places each tenant holds. Used
    by admission under its lock; a waiter has `tenant` (a Tenant) and `expired(now)`."""

    def __init__(self, table: TenantTable) -> None:
        self.table = table
        self._queues: list[deque] = [deque() for _ in table.tenants]
        self.running = [0] * len(table.tenants)
        self.latency = [0.0] * len(table.tenants)  # each tenant's smoothed call latency, s
        self._active_until = [0.0] * len(table.tenants)  # time.monotonic
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator:
        for queue in self._queues:
            yield from queue

    def queued(self, tenant: Tenant) -> int:
        return len(self._queues[tenant.index])

    def append(self, waiter: Any) -> None:
        self._queues[waiter.tenant.index].append(waiter)
        self._count += 1

    def remove(self, waiter: Any) -> None:
        self._queues[waiter.tenant.index].remove(waiter)
        self._count -= 1

    def seen(self, tenant: Tenant, now: float) -> None:
        """A call of `tenant` arrived (time.monotonic): it is active for ACTIVE_S."""
        self._active_until[tenant.index] = now + ACTIVE_S

    def may_run(self, tenant: Tenant, limit: int, now: float) -> bool:
        """Whether `tenant` may take one more of the model's `limit` places now."""
        i = tenant.index
        if self.running[i] + 1 <= max(1, round(tenant.share * limit)):
            return True
        until = self._active_until
        return not any(until[j] > now for j in range(len(until)) if j != i)

    def popleft(self, limit: int = 0, now: float = 0.0) -> Any:
        """The next call to let in: the oldest of the waiting tenant that holds least of its
        share (ties: higher priority, then the table's order), among those that may take a
        place (`limit` 0: any); None when no waiting tenant may."""
        best, key = None, None
        for tenant in self.table.tenants:
            if self._queues[tenant.index] and (not limit or self.may_run(tenant, limit, now)):
                held = self.running[tenant.index] / tenant.share
                k = (held, -tenant.priority)
                if key is None or k < key:
                    best, key = tenant, k
        if best is None:
            return None
        self._count -= 1
        return self._queues[best.index].popleft()

    def learn(self, tenant: Tenant, latency_s: float, smoothing: float) -> None:
        own = self.latency[tenant.index]
        self.latency[tenant.index] = (
            latency_s if own <= 0.0 else own + smoothing * (latency_s - own)
        )

    def over_share(self, tenant: Tenant, max_calls: int) -> bool:
        """Whether the tenant already queues its share of the model's queue."""
        return len(self._queues[tenant.index]) >= max(1, int(tenant.share * max_calls))

    def lower_than(self, tenant: Tenant) -> Any:
        """The newest queued call of the lowest priority below `tenant`'s, to shed for it;
        None when every queued call is of its priority or above."""
        waiting = [
            t for t in self.table.tenants if t.priority < tenant.priority and self._queues[t.index]
        ]
        lowest = min(waiting, key=lambda t: t.priority, default=None)
        if lowest is None:
            return None
        self._count -= 1
        return self._queues[lowest.index].pop()
