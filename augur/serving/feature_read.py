"""A serving call's feature read: the online reader within the call's deadline, behind the
circuit breaker, and what a failed read does (UNAVAILABLE, or the model's declared defaults,
flagged degraded). A read whose time the caller's own deadline cut short and ran out ends
DEADLINE_EXCEEDED, not counted against Redis. Not the read itself: augur.features.reader's."""

from __future__ import annotations

import time
from collections.abc import Mapping

from augur.features.breaker import CircuitBreaker, CircuitOpenError
from augur.features.cluster import NodesDown, PartialRead, accepting_partial
from augur.features.connection import UNAVAILABLE_ERRORS
from augur.features.plan import ReadPlan
from augur.features.reader import FeatureRows, OnlineReader
from augur.features.resp import DeadlineTimeout
from augur.features.typed_read import TypedRows
from augur.serving import metrics
from augur.serving.errors import deadline_exceeded
from augur.serving.metric_children import value_child
from augur.serving.routing import Route

# The share of a call's remaining time its read may take: the rest is kept for scoring and
# answering. A reply after the caller's deadline is wasted work, an UNAVAILABLE before it
# lets the caller fall back.
_READ_SHARE = 0.8


_NOTHING_LOST = PartialRead()
# set on every read while the circuit is closed: one step, not prometheus_client's checks
_BREAKER_OPEN = value_child(metrics.BREAKER_OPEN)


class GuardedReader:
    """OnlineReader behind a CircuitBreaker, with the serve-defaults policy."""

    def __init__(self, reader: OnlineReader, breaker: CircuitBreaker | None = None) -> None:
        self.reader = reader
        self.breaker = breaker or CircuitBreaker()
        # bound once: a read with the row cache on counts its hits and misses
        self._hits = metrics.ROW_CACHE.labels("hit")
        self._misses = metrics.ROW_CACHE.labels("miss")

    def read(
        self,
        plan: ReadPlan,
        entities: Mapping[str, list],
        deadline: float | None,
        route: Route | None,
    ) -> tuple[FeatureRows, bool]:
        """The rows, and whether they are defaults served because the store failed (the
        route's `on_feature_store_error: serve_defaults`; `route` None: no model, no policy,
        the failure raises)."""
        budget = None if deadline is None else max(deadline - time.monotonic(), 0.0) * _READ_SHARE
        breaker = self.breaker
        partial = route is not None and route.on_feature_store_error == "serve_defaults"
        try:
            breaker.before_call()
            try:
                if partial:  # on a cluster, a failed node's rows get defaults, not the call
                    with accepting_partial() as lost:
                        rows = self.reader.read(plan, entities, timeout_s=budget)
                else:
                    lost = _NOTHING_LOST
                    rows = self.reader.read(plan, entities, timeout_s=budget)
            except DeadlineTimeout as e:  # the caller's time ran out, not Redis's health
                breaker.abandoned()
                metrics.DEADLINE_DROPPED.labels(
                    route.name if route is not None else plan.service, "features"
                ).inc()
                raise deadline_exceeded(f"deadline passed during the features stage: {e}") from None
            except NodesDown:  # a cluster node's own breaker counts it, not the store's
                breaker.abandoned()
                raise
            except UNAVAILABLE_ERRORS:
                breaker.failed()
                raise
            except BaseException:
                breaker.abandoned()
                raise
            breaker.succeeded()
            if self.reader.cache is not None:
                self._hits.inc(rows.cache_hits)
                self._misses.inc(rows.distinct_keys - rows.cache_hits)
            if lost.keys:  # rows of failed cluster nodes: defaults, each row's status says
                metrics.STORE_ERRORS.labels("NodesDown").inc()
                metrics.for_model(route.name).degraded.inc()
                return rows, True
            return rows, False
        except UNAVAILABLE_ERRORS as e:
            kind = "circuit_open" if isinstance(e, CircuitOpenError) else type(e).__name__
            metrics.STORE_ERRORS.labels(kind).inc()
            metrics.BREAKER_OPEN.set(breaker.state != "closed")
            if route is None or route.on_feature_store_error != "serve_defaults":
                raise
            metrics.for_model(route.name).degraded.inc()
            return FeatureRows.unavailable(plan, len(next(iter(entities.values())))), True
        finally:
            if breaker.state == "closed":
                _BREAKER_OPEN.set(0)

    def read_typed(
        self, plan: ReadPlan, entities: Mapping[str, list], deadline: float | None
    ) -> TypedRows:
        """The reader's typed read (GetOnlineFeatures), behind the same breaker; a failed
        store raises (no model, so no serve-defaults policy)."""
        budget = None if deadline is None else max(deadline - time.monotonic(), 0.0) * _READ_SHARE
        breaker = self.breaker
        try:
            breaker.before_call()
            try:
                rows = self.reader.read_typed(plan, entities, timeout_s=budget)
            except UNAVAILABLE_ERRORS:
                breaker.failed()
                raise
            except BaseException:
                breaker.abandoned()
                raise
            breaker.succeeded()
            return rows
        except UNAVAILABLE_ERRORS as e:
            kind = "circuit_open" if isinstance(e, CircuitOpenError) else type(e).__name__
            metrics.STORE_ERRORS.labels(kind).inc()
            metrics.BREAKER_OPEN.set(breaker.state != "closed")
            raise
        finally:
            if breaker.state == "closed":
                _BREAKER_OPEN.set(0)
