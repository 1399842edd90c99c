"""The gRPC servicer: each call's route from request to answer - resolve the model, hand the
call to its lane (admit, decode, read features, score), encode the answer - and its outcome
turned into a status code and counted. The stages are the modules named below, each entered
once; this file holds none of them."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import grpc

from augur.api.v1 import predictor_pb2 as pb
from augur.api.v1 import predictor_pb2_grpc as pb_grpc
from augur.features.breaker import CircuitBreaker
from augur.features.connection import UNAVAILABLE_ERRORS
from augur.features.plan import ReadPlan
from augur.features.reader import OnlineReader
from augur.features.waiting import BLOCKING, Waiting
from augur.serving import metrics
from augur.serving.admission import AdmissionPolicy
from augur.serving.batcher import THREADS, Turns
from augur.serving.codec import decode_entities, features_response, predict_response
from augur.serving.deadlines import deadline_of
from augur.serving.errors import RequestError, invalid, not_found, shown
from augur.serving.feature_read import GuardedReader
from augur.serving.lanes import Lanes
from augur.serving.lifecycle import ModelManager
from augur.serving.scoring import Scorer
from augur.serving.shadow import ShadowScorer

log = logging.getLogger(__name__)
_OK = grpc.StatusCode.OK


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
        turns: Turns = THREADS,
        waiting: Waiting = BLOCKING,
    ):
        self.manager = manager
        self.plans = dict(plans)
        self.max_rows = max_rows
        self.features = GuardedReader(reader, breaker)
        self.shadow = shadow or ShadowScorer()
        scorer = Scorer(self.features, self.shadow, manager.trip, waiting)
        self.lanes = Lanes(
            scorer,
            max_rows,
            admission,
            batch_max_rows,
            batch_max_delay_us,
            turns,
            handler_threads,
        )

    @property
    def breaker(self) -> CircuitBreaker:
        return self.features.breaker

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext):
        started = time.perf_counter()
        route = self.manager.route(request.model)
        model = route.name if route is not None else "unknown"
        versions: list[str] = []
        code = _OK
        try:
            if route is None:
                raise self._unknown_model(request.model)
            scored = self.lanes.of(route).predict(route, request, context)
            versions = scored.versions
            return predict_response(route.name, request.options, scored, versions)
        except Exception as e:
            code, message = _status(e, "Predict", model)
            context.abort(code, message)
        finally:
            _count("Predict", model, "+".join(versions), code, started)

    def GetOnlineFeatures(
        self, request: pb.GetOnlineFeaturesRequest, context: grpc.ServicerContext
    ):
        started = time.perf_counter()
        plan = self.plans.get(request.feature_service)
        service = request.feature_service if plan is not None else "unknown"
        code = _OK
        try:
            if plan is None:
                raise not_found(
                    f"feature service {shown(request.feature_service)!r} is not in the "
                    f"registry; have: {', '.join(sorted(self.plans))}"
                )
            entities, n = decode_entities(
                request.entities, plan, self.max_rows, f"feature service {plan.service}"
            )
            deadline = deadline_of(context, plan.service, "features")
            rows, _ = self.features.read(plan, entities, deadline, None)
            metrics.ROWS.labels("GetOnlineFeatures", plan.service).inc(n)
            return features_response(plan, rows)
        except Exception as e:
            code, message = _status(e, "GetOnlineFeatures", service)
            context.abort(code, message)
        finally:
            _count("GetOnlineFeatures", service, "", code, started)

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
                    outputs=spec.outputs,
                )
            )
        return pb.ListModelsResponse(models=models)

    def _unknown_model(self, name: str) -> RequestError:
        if not name:
            return invalid("model: required; ListModels shows what this server serves")
        return not_found(
            f"model {shown(name)!r} is not served here; serving: "
            f"{', '.join(sorted(self.manager.routes)) or 'none'}"
        )


def _status(error: Exception, method: str, model: str) -> tuple[grpc.StatusCode, str]:
    """The status a failed call ends with: the request's own refusal, UNAVAILABLE when the
    online store is unreachable, else INTERNAL (logged, with its traceback)."""
    if isinstance(error, RequestError):
        return error.code, error.message
    if isinstance(error, UNAVAILABLE_ERRORS):
        return grpc.StatusCode.UNAVAILABLE, f"online store unreachable: {error}"
    log.exception("%s failed for %s", method, model)
    return grpc.StatusCode.INTERNAL, f"internal error in {method}; the server log has the details"


def _count(method: str, model: str, version: str, code: grpc.StatusCode, started: float) -> None:
    """Count and time one call by outcome. A split answer is labelled by both versions
    ("v1+v2"): still a small, bounded set."""
    requests, latency = metrics.call_outcome(method, model, version, code.name)
    requests.inc()
    latency.observe(time.perf_counter() - started)
