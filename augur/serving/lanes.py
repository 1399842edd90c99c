"""A model's lane through the server: its admission (admission.py) and its dynamic batcher,
kept per model. A call the lane admits is decoded, then scored alone (a large one in chunks,
chunks.py) or in a batch; the scoring itself is augur/serving/scoring.py's."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial

import grpc

from augur.api.v1 import predictor_pb2 as pb
from augur.serving import chunks, metrics
from augur.serving.admission import Admission, AdmissionPolicy
from augur.serving.batcher import THREADS, Batcher, Call, Turns
from augur.serving.codec import decode_inputs
from augur.serving.deadlines import deadline_of
from augur.serving.errors import RequestError
from augur.serving.models import ServingModel
from augur.serving.routing import Route
from augur.serving.scoring import Scored, Scorer
from augur.serving.slo import SloController
from augur.serving.tenants import Tenant, TenantTable
from augur.serving.tracing import StageMarks

log = logging.getLogger(__name__)
# A call's inputs for the version that answers it: (entity columns, request features, rows)
Decode = Callable[[ServingModel], tuple[dict, dict, int]]
# The most rows an SLO-tuned batch holds where neither model.yaml's batching nor the server's
# batch_max_rows says: the controller picks a cap up to it that fits the objective
SLO_ROWS = 64


class ModelLane:
    """One model's admission and batcher."""

    def __init__(self, name: str, lanes: Lanes) -> None:
        self.name = name
        self.admission = Admission(name, lanes.admission, lanes.turns, lanes.tenants)
        self._counted = metrics.for_model(name)
        self._lanes = lanes  # the server's settings, shared by every lane
        self._batcher: Batcher | None = None
        # (rows, delay, objective) the batcher was last set to from model.yaml / the server
        self._configured: tuple = (0, 0.0, None)
        self._lock = threading.Lock()

    def predict(
        self,
        route: Route,
        request: pb.PredictRequest,
        context,
        marks: StageMarks | None = None,
        tenant: Tenant | None = None,
    ) -> Scored:
        """A Predict call: admitted, decoded and scored (`score`)."""
        lanes = self._lanes
        owner = f"model {self.name}"
        return self.score(
            route,
            request.version,
            lambda model: decode_inputs(request, model, lanes.max_rows, owner),
            context,
            marks,
            tenant,
        )

    def score(
        self,
        route: Route,
        version: str,
        decode: Decode,
        context,
        marks: StageMarks | None = None,
        tenant: Tenant | None = None,
    ) -> Scored:
        """Admit a call (Predict's, or an OIP ModelInfer's), decode it with `decode` for the
        version it names (`version`, empty: the stable one, canary split) and score it:
        alone, or in the model's next batch; counted in flight meanwhile (the autoscaling
        signal, metrics.IN_FLIGHT). `marks`: a traced call's, given the times of its
        stages; `tenant`: whose call it is (with tenants configured)."""
        in_flight = self._counted.in_flight
        in_flight.inc()
        try:
            return self._score(route, version, decode, context, marks, tenant)
        finally:
            in_flight.dec()

    def _score(self, route, version, decode, context, marks, tenant) -> Scored:
        deadline = deadline_of(context, self.name, "admission")
        try:
            ticket = self.admission.enter(deadline, tenant)
        except RequestError as e:
            if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self._counted.shed.inc()
                if tenant is not None:
                    metrics.TENANT_SHED.labels(self.name, tenant.name).inc()
            raise
        with ticket:
            if marks is not None:
                marks.admitted = time.perf_counter()
            lanes = self._lanes
            model = route.pinned(version) if version else route.stable
            batcher = None if version else self.batcher(route)
            if batcher is None:
                entities, extra, n = decode(model)
                # the canary may answer rows of a call naming no version (and naming entities)
                split = not version and bool(entities)
                score, counted = lanes.scorer.score, self._counted
                with _RowsInFlight(counted, n):
                    if n <= chunks.CHUNK_ROWS:
                        scored = score(route, model, entities, extra, deadline, split, counted)
                    else:  # a large call in chunks, other calls running between them
                        scored = Scored.joined(
                            [
                                score(
                                    route,
                                    model,
                                    chunks.entities_of(entities, rows),
                                    chunks.arrays_of(extra, rows),
                                    deadline,
                                    split,
                                    counted,
                                )
                                for rows in chunks.slices(n, lanes.turns)
                            ]
                        )
                if marks is not None:
                    marks.scored = scored
                return scored
            arrival = batcher.arrival()  # announced before decoding: a batch waits for it
            try:
                entities, extra, n = decode(model)
            except BaseException:
                arrival.withdraw()
                raise
            call = Call(entities, extra, n, deadline, route)
            with _RowsInFlight(self._counted, n):
                scored = arrival.submit(call)
            if marks is not None:
                marks.queued, marks.scored = call.queued, scored
            return scored

    def batcher(self, route: Route) -> Batcher | None:
        """The model's batcher, or None when its calls are scored alone: model.yaml's
        `batching` where it has one, else the server's batch_max_rows / batch_max_delay_us;
        with model.yaml's `slo`, a controller (slo.py) tunes the window and cap, the cap up
        to those rows (SLO_ROWS when neither sets any)."""
        lanes = self._lanes
        own = route.batching
        if own is None:
            rows, delay_s = lanes.batch_max_rows, lanes.batch_max_delay_s
        else:
            rows = own.max_batch_size
            delay_us = own.max_queue_delay_us
            delay_s = lanes.batch_max_delay_s if delay_us is None else delay_us / 1e6
        objective = route.slo
        if objective is not None and own is None and rows <= 0:
            rows = SLO_ROWS  # an objective turns batching on; `max_batch_size: 0` keeps it off
        if rows <= 0:
            return None
        batcher = self._batcher
        if batcher is None:
            with self._lock:
                batcher = self._batcher
                if batcher is None:
                    # the model's metrics bound into its batches' run (no Python layer per batch)
                    run = partial(lanes.scorer.score_calls, counted=self._counted)
                    depth = self._counted.batch_queue
                    batcher = Batcher(run, rows, delay_s, lanes.turns, depth)
                    self._configured = (rows, delay_s, None)
                    self._batcher = batcher
                    lanes.check_threads(self.name, rows)
        if self._configured != (rows, delay_s, objective):
            # model.yaml changed while serving: the batches that close from now on follow it
            with self._lock:
                self._configure(batcher, rows, delay_s, objective)
        return batcher

    def _configure(self, batcher: Batcher, rows: int, delay_s: float, objective) -> None:
        """With the lock held: apply model.yaml's batching and objective to the batcher."""
        if self._configured[0] != rows:
            self._lanes.check_threads(self.name, rows)
        self._configured = (rows, delay_s, objective)
        if objective is None:
            batcher.slo = None
            batcher.max_rows, batcher.max_delay_s = rows, delay_s
            return
        slo = batcher.slo
        if slo is None:
            slo = SloController(objective.p99_ms / 1e3, rows, metrics.slo_gauges(self.name))
        else:  # what it learnt of the model's costs stands; the bounds change
            slo.objective_s, slo.most_rows = objective.p99_ms / 1e3, rows
            slo.max_rows = min(slo.max_rows, rows)
        batcher.max_rows, batcher.max_delay_s = slo.max_rows, slo.window_s
        batcher.slo = slo


class _RowsInFlight:
    """Counts a call's rows in flight while its block runs (a class: contextlib's generator
    costs some 2 us a call more)."""

    __slots__ = ("_gauge", "_rows")

    def __init__(self, counted: metrics.ModelMetrics, rows: int) -> None:
        self._gauge, self._rows = counted.rows_in_flight, rows

    def __enter__(self) -> None:
        self._gauge.inc(self._rows)

    def __exit__(self, *exc: object) -> None:
        self._gauge.dec(self._rows)


class Lanes:
    """Every model's lane, made on its first call, and the settings they share."""

    def __init__(
        self,
        scorer: Scorer,
        max_rows: int,
        admission: AdmissionPolicy | None = None,
        batch_max_rows: int = 0,
        batch_max_delay_us: int = 500,
        turns: Turns = THREADS,
        handler_threads: int = 0,
        tenants: TenantTable | None = None,
    ) -> None:
        self.scorer = scorer
        self.tenants = tenants  # each model's admission shares itself among them
        self.max_rows = max_rows
        self.admission = admission or AdmissionPolicy()
        self.model_queue = self.admission.max_calls
        self.batch_max_rows = batch_max_rows  # 0: each call is scored on its own
        self.batch_max_delay_s = batch_max_delay_us / 1e6
        self.turns = turns  # how a call waits for its batch (the green pool's, or threads)
        # gRPC handler threads when a thread pool sized at start for the batches then
        # configured (0: the green pool, server.workers set them, or unknown): a batch
        # turned on later may outgrow them
        self.handler_threads = handler_threads
        self._lanes: dict[str, ModelLane] = {}
        self._lock = threading.Lock()

    def of(self, route: Route) -> ModelLane:
        lane = self._lanes.get(route.name)
        if lane is None:
            with self._lock:
                lane = self._lanes.get(route.name)
                if lane is None:
                    lane = self._lanes[route.name] = ModelLane(route.name, self)
        return lane

    def check_threads(self, model: str, rows: int) -> None:
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
