"""A model's lane through the server: its admission (admission.py) and its dynamic batcher,
kept per model. A call the lane admits is decoded, then scored alone (a large one in chunks,
chunks.py) or in a batch; the scoring itself is augur/serving/scoring.py's."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

log = logging.getLogger(__name__)
# A call's inputs for the version that answers it: (entity columns, request features, rows)
Decode = Callable[[ServingModel], tuple[dict, dict, int]]


class ModelLane:
    """One model's admission and batcher."""

    def __init__(self, name: str, lanes: Lanes) -> None:
        self.name = name
        self.admission = Admission(name, lanes.admission, lanes.turns)
        self._counted = metrics.for_model(name)
        self._lanes = lanes  # the server's settings, shared by every lane
        self._batcher: Batcher | None = None
        self._lock = threading.Lock()

    def predict(self, route: Route, request: pb.PredictRequest, context) -> Scored:
        """A Predict call: admitted, decoded and scored (`score`)."""
        lanes = self._lanes
        owner = f"model {self.name}"
        return self.score(
            route,
            request.version,
            lambda model: decode_inputs(request, model, lanes.max_rows, owner),
            context,
        )

    def score(self, route: Route, version: str, decode: Decode, context) -> Scored:
        """Admit a call (Predict's, or an OIP ModelInfer's), decode it with `decode` for the
        version it names (`version`, empty: the stable one, canary split) and score it:
        alone, or in the model's next batch; counted in flight meanwhile (the autoscaling
        signal, metrics.IN_FLIGHT)."""
        in_flight = self._counted.in_flight
        in_flight.inc()
        try:
            return self._score(route, version, decode, context)
        finally:
            in_flight.dec()

    def _score(self, route: Route, version: str, decode: Decode, context) -> Scored:
        deadline = deadline_of(context, self.name, "admission")
        try:
            ticket = self.admission.enter(deadline)
        except RequestError as e:
            if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self._counted.shed.inc()
            raise
        with ticket:
            lanes = self._lanes
            model = route.pinned(version) if version else route.stable
            batcher = None if version else self.batcher(route)
            if batcher is None:
                entities, extra, n = decode(model)
                # the canary may answer rows of a call naming no version (and naming entities)
                split = not version and bool(entities)
                score, counted = lanes.scorer.score, self._counted
                with _rows_in_flight(counted, n):
                    return Scored.joined(
                        [  # a large call in chunks, other calls running between them
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
                        if n > chunks.CHUNK_ROWS
                        else [score(route, model, entities, extra, deadline, split, counted)]
                    )
            arrival = batcher.arrival()  # announced before decoding: a batch waits for it
            try:
                entities, extra, n = decode(model)
            except BaseException:
                arrival.withdraw()
                raise
            with _rows_in_flight(self._counted, n):
                return arrival.submit(Call(entities, extra, n, deadline, route))

    def batcher(self, route: Route) -> Batcher | None:
        """The model's batcher, or None when its calls are scored alone: model.yaml's
        `batching` where it has one, else the server's batch_max_rows / batch_max_delay_us."""
        lanes = self._lanes
        own = route.batching
        if own is None:
            rows, delay_s = lanes.batch_max_rows, lanes.batch_max_delay_s
        else:
            rows = own.max_batch_size
            delay_us = own.max_queue_delay_us
            delay_s = lanes.batch_max_delay_s if delay_us is None else delay_us / 1e6
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
                    self._batcher = batcher
                    lanes.check_threads(self.name, rows)
        elif batcher.max_rows != rows or batcher.max_delay_s != delay_s:
            # model.yaml changed while serving: the batches that close from now on follow it
            if batcher.max_rows != rows:
                lanes.check_threads(self.name, rows)
            batcher.max_rows, batcher.max_delay_s = rows, delay_s
        return batcher


@contextmanager
def _rows_in_flight(counted: metrics.ModelMetrics, rows: int) -> Iterator[None]:
    counted.rows_in_flight.inc(rows)
    try:
        yield
    finally:
        counted.rows_in_flight.dec(rows)


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
    ) -> None:
        self.scorer = scorer
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
