"""The gRPC servicer: validate, read features, assemble, score, answer - and count each stage."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
import numpy as np
from google.protobuf.message import Message

from augur.api.v1 import predictor_pb2 as pb
from augur.api.v1 import predictor_pb2_grpc as pb_grpc
from augur.features.breaker import CircuitBreaker, CircuitOpenError
from augur.features.connection import UNAVAILABLE_ERRORS
from augur.features.plan import ReadPlan
from augur.features.reader import FeatureRows, OnlineReader
from augur.serving import chunks, metrics
from augur.serving.admission import Admission, AdmissionPolicy
from augur.serving.batcher import Batcher, Call
from augur.serving.codec import decode_entities, decode_request_features, feature_status
from augur.serving.errors import RequestError, deadline_exceeded, invalid, not_found, shown
from augur.serving.lifecycle import ModelManager
from augur.serving.models import ServingModel
from augur.serving.routing import Route
from augur.serving.shadow import ShadowScorer

log = logging.getLogger(__name__)
_age_due: dict[str, float] = {}  # feature service -> when its next call is observed


@dataclass(frozen=True)
class Scored:
    """What scoring produced for a set of rows: one call's, or a batch's before it splits."""

    rows: FeatureRows
    batch: np.ndarray  # the model's inputs
    scores: np.ndarray
    row_versions: list[str]
    degraded: bool

    @property
    def versions(self) -> list[str]:
        return sorted(set(self.row_versions))

    @classmethod
    def joined(cls, parts: list[Scored]) -> Scored:
        """One call's chunks (chunks.py), scored in turn, as one."""
        return cls(
            chunks.joined_rows([p.rows for p in parts]),
            np.concatenate([p.batch for p in parts]),
            np.concatenate([p.scores for p in parts]),
            [v for p in parts for v in p.row_versions],
            any(p.degraded for p in parts),
        )

    def part(self, rows: slice) -> Scored:
        return Scored(
            self.rows.take(rows),
            self.batch[rows],
            self.scores[rows],
            self.row_versions[rows],
            self.degraded,
        )


class PredictorServicer(pb_grpc.PredictorServicer):
    def __init__(
        self,
        manager: ModelManager,
        plans: Mapping[str, ReadPlan],
        reader: OnlineReader,
        max_rows: int,
        shadow: ShadowScorer | None = None,
        breaker: CircuitBreaker | None = None,
        admission: AdmissionPolicy | None = None,
        batch_max_rows: int = 0,
        batch_max_delay_us: int = 500,
        handler_threads: int = 0,
    ):
        self.manager = manager
        self.plans = dict(plans)
        self.reader = reader
        self.max_rows = max_rows
        self.shadow = shadow or ShadowScorer()
        self.breaker = breaker or CircuitBreaker()
        self.admission = admission or AdmissionPolicy()
        self.model_queue = self.admission.max_calls
        self._admissions: dict[str, Admission] = {}
        self.batch_max_rows = batch_max_rows  # 0: each call is scored on its own
        self.batch_max_delay_s = batch_max_delay_us / 1e6
        self._batchers: dict[str, Batcher] = {}
        self._batchers_lock = threading.Lock()
        # gRPC handler threads when a thread pool sized at start for the batches then
        # configured (0: the green pool, server.workers set them, or unknown): a batch
        # turned on later may outgrow them
        self.handler_threads = handler_threads

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext):
        route = self.manager.route(request.model)
        answered: list[str] = []  # filled by _predict: the version(s) that answered
        return _answer(
            "Predict",
            request.model if route else "unknown",
            answered,
            context,
            lambda: self._admitted(request, context, route, answered),
        )

    def _admitted(self, request, context, route: Route | None, answered: list[str]):
        """Per-model admission (admission.py): compute now, queue, or refuse at once."""
        if route is None:
            return self._predict(request, context, route, answered)
        admission = self._admissions.get(route.name)
        if admission is None:
            admission = self._admissions.setdefault(
                route.name, Admission(route.name, self.admission)
            )
        remaining = context.time_remaining()
        try:
            ticket = admission.enter(None if remaining is None else time.monotonic() + remaining)
        except RequestError as e:
            if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                metrics.SHED.labels(route.name).inc()
            raise
        with ticket:
            return self._predict(request, context, route, answered)

    def _predict(
        self,
        request: pb.PredictRequest,
        context: grpc.ServicerContext,
        route: Route | None,
        answered: list[str],
    ) -> pb.PredictResponse:
        if not request.model:
            raise invalid("model: required; ListModels shows what this server serves")
        if route is None:
            raise not_found(
                f"model {shown(request.model)!r} is not served here; serving: "
                f"{', '.join(sorted(self.manager.routes)) or 'none'}"
            )
        model = route.stable
        if request.version:
            model = route.named(request.version)
            if model is None:
                raise not_found(
                    f"model {route.name} version {shown(request.version)!r} is not loaded; loaded: "
                    f"{', '.join(route.loaded)}; aliases: "
                    f"{', '.join(f'{k}={v}' for k, v in route.aliases.items()) or 'none'}"
                )
        batcher = self._batcher(route) if not request.version else None
        if batcher is None:
            entities, extra, n, deadline = self._inputs(request, context, route, model)
            mask = route.canary_rows(entities) if not request.version else None
            parts = [  # a large call in chunks, other calls running between them
                self._score(
                    route,
                    model,
                    chunks.entities_of(entities, rows),
                    chunks.arrays_of(extra, rows),
                    None if mask is None else mask[rows],
                    deadline,
                )
                for rows in chunks.slices(n)
            ]
            scored = parts[0] if len(parts) == 1 else Scored.joined(parts)
        else:
            with batcher.arrival() as arrival:  # announced before decoding: a batch waits for it
                entities, extra, n, deadline = self._inputs(request, context, route, model)
                scored = arrival.submit(Call(entities, extra, n, deadline, route))
        answered.extend(scored.versions)

        response = pb.PredictResponse(
            model=route.name,
            version=scored.versions[0] if len(scored.versions) == 1 else "",
            rows=n,
            outputs=scored.scores.shape[1],
            scores=scored.scores.ravel().tolist(),
            degraded=scored.degraded,
        )
        if len(scored.versions) > 1:
            response.row_versions.extend(scored.row_versions)
        options = request.options
        rows = scored.rows
        if options.return_feature_status:
            present = len(model.plan.columns) - rows.missing
            response.feature_status.extend(feature_status(present, rows.missing, rows.stale))
        if options.return_features:
            response.features.names.extend(model.version.features)
            response.features.values.extend(scored.batch.ravel().tolist())
        return response

    def _inputs(
        self,
        request: pb.PredictRequest,
        context: grpc.ServicerContext,
        route: Route,
        model: ServingModel,
    ) -> tuple[dict[str, list], dict[str, np.ndarray], int, float | None]:
        """The call's entity columns, request features, row count and deadline (monotonic)."""
        owner = f"model {route.name}"
        spec = model.version.spec
        entities, n = decode_entities(request.entities, model.plan, self.max_rows, owner)
        extra = decode_request_features(request.request_features, spec.request_features, n, owner)
        _check_deadline(context, route.name, "features")
        remaining = context.time_remaining()
        return entities, extra, n, None if remaining is None else time.monotonic() + remaining

    def _score(
        self,
        route: Route,
        model: ServingModel,
        entities: Mapping[str, list],
        extra: Mapping[str, np.ndarray],
        canary_mask: np.ndarray | None,
        deadline: float | None,
    ) -> Scored:
        """Read, assemble and score rows (one call's, or a batch's): the request path."""
        name = route.name
        t0 = time.perf_counter()
        rows, degraded = self._features(model.plan, entities, deadline, route)
        t1 = time.perf_counter()
        if deadline is not None and time.monotonic() > deadline:
            metrics.DEADLINE_DROPPED.labels(name, "inference").inc()
            raise deadline_exceeded("deadline passed before the inference stage")
        batch = model.assemble(rows, extra)
        t2 = time.perf_counter()
        if canary_mask is None or not canary_mask.any():
            scores = chunks.predict(model.runtime, batch)  # a large one off this thread
            row_versions = [model.version.version] * len(batch)
            if canary_mask is not None and route.guard is not None:
                route.guard.record_stable(scores)  # the reference for the canary's drift
        else:
            scores, row_versions = self._split(route, rows, extra, batch, canary_mask)
        t3 = time.perf_counter()

        counted = metrics.for_model(name)
        counted.features.observe(t1 - t0)
        counted.assemble.observe(t2 - t1)
        counted.inference.observe(t3 - t2)
        counted.rows.inc(len(batch))
        _count_features(counted, model.plan, rows)
        if route.shadow is not None and model is route.stable and not degraded:
            self.shadow.submit(
                name,
                model.version.version,
                route.shadow,
                route.shadow_threshold,
                rows,
                extra,
                scores,
            )
        return Scored(rows, batch, scores, row_versions, degraded)

    def _batcher(self, route: Route) -> Batcher | None:
        """The model's batcher, or None when its calls are scored alone: model.yaml's
        `batching` where it has one, else the server's batch_max_rows / batch_max_delay_us."""
        own = route.batching
        if own is None:
            rows, delay_s = self.batch_max_rows, self.batch_max_delay_s
        else:
            rows = own.max_batch_size
            delay_us = own.max_queue_delay_us
            delay_s = self.batch_max_delay_s if delay_us is None else delay_us / 1e6
        if rows <= 0:
            return None
        batcher = self._batchers.get(route.name)
        if batcher is None:
            with self._batchers_lock:
                batcher = self._batchers.get(route.name)
                if batcher is None:
                    batcher = Batcher(self._score_calls, rows, delay_s)
                    self._batchers[route.name] = batcher
                    self._check_threads(route.name, rows)
        elif batcher.max_rows != rows or batcher.max_delay_s != delay_s:
            # model.yaml changed while serving: the batches that close from now on follow it
            if batcher.max_rows != rows:
                self._check_threads(route.name, rows)
            batcher.max_rows, batcher.max_delay_s = rows, delay_s
        return batcher

    def _check_threads(self, model: str, rows: int) -> None:
        """Say so when a model batches more calls than this server has handler threads for:
        each call waiting for its batch holds one, so they cap the calls a batch can take."""
        if 0 < self.handler_threads < min(rows, self.model_queue):
            log.warning(
                "model %s batches up to %d rows, but this server runs its calls on a "
                "thread pool sized at start (%d threads) and a call waiting for its batch "
                "holds one: a batch takes at most %d calls; restart the server (its pool is "
                "sized for the batches set at start) or serve on the green pool, where a "
                "waiting call holds no thread (server.handlers: green, the default)",
                model,
                rows,
                self.handler_threads,
                self.handler_threads,
            )

    def _score_calls(self, calls: list[Call]) -> None:
        """One batch: calls routed alike share one read and one model call, then split."""
        began = time.perf_counter()
        groups: dict[int, list[Call]] = {}
        for call in calls:
            groups.setdefault(id(call.route), []).append(call)
        name = calls[0].route.name  # one batcher per model: every call is for this model
        queue = metrics.for_model(name).queue
        for call in calls:
            queue.observe(began - call.queued)
        metrics.BATCH_QUEUE.labels(name).set(self._batchers[name].waiting())
        for group in groups.values():
            route = group[0].route
            if len(group) == 1:  # the usual batch at light load: nothing to merge or split
                entities, extra, deadline = group[0].entities, group[0].extra, group[0].deadline
            else:
                keys = group[0].entities.keys()
                entities = {k: [v for c in group for v in c.entities[k]] for k in keys}
                extra = {k: np.concatenate([c.extra[k] for c in group]) for k in group[0].extra}
                deadlines = [c.deadline for c in group]
                deadline = None if None in deadlines else max(deadlines)
            try:
                scored = self._score(
                    route, route.stable, entities, extra, route.canary_rows(entities), deadline
                )
            except BaseException as e:
                for call in group:
                    call.error = e
                continue
            metrics.BATCH_ROWS.labels(route.name).observe(len(scored.batch))
            metrics.BATCH_CALLS.labels(route.name).observe(len(group))
            if len(group) == 1:
                group[0].result = scored
                continue
            start = 0
            for call in group:
                part = slice(start, start + call.rows)
                start += call.rows
                call.result = scored.part(part)

    def _features(
        self,
        plan: ReadPlan,
        entities: Mapping[str, list],
        deadline: float | None,
        route: Route | None,
    ) -> tuple[FeatureRows, bool]:
        """Read features within the call's deadline, through the circuit breaker. On failure:
        UNAVAILABLE, or declared defaults (flagged degraded) where the model's policy says so
        (`route` None: no model, no policy)."""
        # Keep a fifth of what is left for scoring and answering: a reply after the caller's
        # deadline is wasted work, an UNAVAILABLE before it lets the caller fall back.
        budget = None if deadline is None else max(deadline - time.monotonic(), 0.0) * 0.8
        try:
            self.breaker.before_call()
            try:
                rows = self.reader.read(plan, entities, timeout_s=budget)
            except BaseException:  # any failure: a probe must not hold the probe slot forever
                self.breaker.failed()
                raise
            self.breaker.succeeded()
            if self.reader.cache is not None:
                metrics.ROW_CACHE.labels("hit").inc(rows.cache_hits)
                metrics.ROW_CACHE.labels("miss").inc(rows.distinct_keys - rows.cache_hits)
            return rows, False
        except UNAVAILABLE_ERRORS as e:
            kind = "circuit_open" if isinstance(e, CircuitOpenError) else type(e).__name__
            metrics.STORE_ERRORS.labels(kind).inc()
            metrics.BREAKER_OPEN.set(self.breaker.state != "closed")
            if route is None or route.on_feature_store_error != "serve_defaults":
                raise
            metrics.DEGRADED.labels(route.name).inc()
            return FeatureRows.unavailable(plan, len(next(iter(entities.values())))), True
        finally:
            if self.breaker.state == "closed":
                metrics.BREAKER_OPEN.set(0)

    def _split(
        self,
        route: Route,
        rows: FeatureRows,
        extra: Mapping[str, np.ndarray],
        stable_batch: np.ndarray,
        canary_mask: np.ndarray,
    ) -> tuple[np.ndarray, list[str]]:
        """Score canary rows with the canary and the rest with stable; a failing canary call
        is answered by stable instead (and counted against the canary's guardrails)."""
        stable, canary = route.stable, route.canary
        scores = np.empty((len(canary_mask), len(stable.version.spec.outputs)), np.float32)
        versions = np.full(len(canary_mask), stable.version.version, dtype=object)
        keep = ~canary_mask
        if keep.any():
            scores[keep] = stable.runtime.predict(stable_batch[keep])
            if route.guard is not None:
                route.guard.record_stable(scores[keep])
        began = time.perf_counter()
        try:
            picked = {k: v[canary_mask] for k, v in extra.items()}
            theirs = canary.runtime.predict(canary.assemble(rows.take(canary_mask), picked))
            if not np.isfinite(theirs).all():
                raise ValueError("non-finite canary scores")
            scores[canary_mask] = theirs
            versions[canary_mask] = canary.version.version
            ok, seen = True, theirs
        except Exception as e:
            metrics.CANARY_FALLBACKS.labels(route.name, canary.version.version).inc()
            log.debug(
                "canary %s@%s failed, stable answers: %s", route.name, canary.version.version, e
            )
            scores[canary_mask] = stable.runtime.predict(stable_batch[canary_mask])
            ok, seen = False, None
        if route.guard is not None:
            verdict = route.guard.record_canary(ok, time.perf_counter() - began, seen)
            if verdict is not None:
                self.manager.trip(route, *verdict)
        return scores, versions.tolist()

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext):
        models = []
        for name, route in sorted(self.manager.routes.items()):
            stable = route.stable
            spec = stable.version.spec
            models.append(
                pb.ModelInfo(
                    name=name,
                    version=stable.version.version,
                    kind=spec.kind,
                    feature_service=spec.feature_service,
                    features=stable.version.features,
                    request_features=spec.request_features,
                    entities=sorted(stable.plan.entity_types),
                    device=stable.runtime.device,
                    versions=self.manager.repo.versions(name),
                )
            )
        return pb.ListModelsResponse(models=models)

    def GetOnlineFeatures(
        self, request: pb.GetOnlineFeaturesRequest, context: grpc.ServicerContext
    ):
        label = request.feature_service if request.feature_service in self.plans else "unknown"
        return _answer(
            "GetOnlineFeatures", label, "", context, lambda: self._online(request, context)
        )

    def _online(
        self, request: pb.GetOnlineFeaturesRequest, context: grpc.ServicerContext
    ) -> pb.GetOnlineFeaturesResponse:
        plan = self.plans.get(request.feature_service)
        if plan is None:
            raise not_found(
                f"feature service {shown(request.feature_service)!r} is not in the "
                f"registry; have: {', '.join(sorted(self.plans))}"
            )
        entities, n = decode_entities(
            request.entities, plan, self.max_rows, f"feature service {plan.service}"
        )
        _check_deadline(context, plan.service, "features")
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        rows, _ = self._features(plan, entities, deadline, None)
        metrics.ROWS.labels("GetOnlineFeatures", plan.service).inc(n)
        present = len(plan.columns) - rows.missing
        return pb.GetOnlineFeaturesResponse(
            features=pb.FeatureMatrix(
                names=plan.feature_names, values=rows.values.ravel().tolist()
            ),
            feature_status=feature_status(present, rows.missing, rows.stale),
        )


def _answer(
    method: str,
    model: str,
    version: str | list[str],
    context: grpc.ServicerContext,
    work: Callable[[], Message],
) -> Message:
    """Run one call: turn failures into status codes, and count and time it by outcome."""
    start = time.perf_counter()
    code = grpc.StatusCode.OK
    try:
        return work()
    except RequestError as e:
        code = e.code
        context.abort(code, e.message)
    except UNAVAILABLE_ERRORS as e:
        code = grpc.StatusCode.UNAVAILABLE
        context.abort(code, f"online store unreachable: {e}")
    except Exception:
        code = grpc.StatusCode.INTERNAL
        log.exception("%s failed for %s", method, model)
        context.abort(code, f"internal error in {method}; the server log has the details")
    finally:
        elapsed = time.perf_counter() - start
        # A split answer is labelled by both versions ("v1+v2"): still a small, bounded set.
        label = version if isinstance(version, str) else "+".join(version)
        requests, latency = metrics.call_outcome(method, model, label, code.name)
        requests.inc()
        latency.observe(elapsed)


def _check_deadline(context: grpc.ServicerContext, model: str, stage: str) -> None:
    """Drop a call whose caller has given up, rather than compute for nobody."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        metrics.DEADLINE_DROPPED.labels(model, stage).inc()
        raise deadline_exceeded(f"deadline passed before the {stage} stage")


def _count_features(counted: metrics.ModelMetrics, plan: ReadPlan, rows: FeatureRows) -> None:
    missing = int(rows.missing.sum())
    if missing:
        counted.missing.inc(missing)
    stale = int(rows.stale.sum())
    if stale:
        counted.stale.inc(stale)
    # The oldest row served per view: one observation per view and call keeps this off the
    # per-row path, and the oldest value is what freshness alerts care about. Observed for
    # at most metrics.AGE_SAMPLES_PER_S calls a second per feature service: an observation costs
    # about 1.5 us and a wide service has dozens of views, while a freshness quantile needs
    # samples, not every call. fmin skips NaN (no row) unless the whole column is NaN.
    now = time.time()
    if now < _age_due.get(plan.service, 0.0):
        return
    _age_due[plan.service] = now + 1 / metrics.AGE_SAMPLES_PER_S
    oldest = np.fmin.reduce(rows.event_ts, axis=0).tolist()
    for view, event_time in zip(plan.views, oldest, strict=True):
        if event_time == event_time:  # not NaN
            metrics.feature_age(view.name).observe(now - event_time)
