"""The gRPC servicer: each call's route from request to answer - resolve the model, hand the
call to its lane (admit, decode, read features, score), encode the answer - and its outcome
turned into a status code and counted. The stages are the modules named below, each entered
once; this file holds none of them. `add_to_server` registers it taking each request's bytes
raw, parsed here after auth: grpcio's own parse of bad bytes logs a traceback and keeps
memory (about 16 KB a call), before any interceptor has looked at the caller. A Predict's
request is read, and its answer written, in C where augur.serving.wire has it: the request
is then a wire.WireRequest, which the codec reads as it reads the message."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import grpc

from augur.api.v1 import predictor_pb2 as pb
from augur.api.v1 import predictor_pb2_grpc as pb_grpc
from augur.features.breaker import CircuitBreaker
from augur.features.connection import UNAVAILABLE_ERRORS
from augur.features.odfv import OnDemandViews
from augur.features.plan import ReadPlan
from augur.features.reader import OnlineReader
from augur.features.waiting import BLOCKING, Waiting
from augur.serving import metrics
from augur.serving.admission import AdmissionPolicy
from augur.serving.batcher import THREADS, Turns
from augur.serving.codec import (
    decode_entities,
    decode_request_data,
    features_response,
    predict_response,
)
from augur.serving.deadlines import deadline_of
from augur.serving.errors import RequestError, invalid, not_found, shown
from augur.serving.feature_read import GuardedReader
from augur.serving.lanes import Lanes
from augur.serving.lifecycle import ModelManager
from augur.serving.parsing import add_parsed
from augur.serving.scoring import Scorer
from augur.serving.shadow import ShadowScorer
from augur.serving.tenants import TenantTable
from augur.serving.tracing import StageMarks, Tracing
from augur.serving.wire import parse_predict

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
        tracing: Tracing | None = None,
        tenants: TenantTable | None = None,
    ):
        self.manager = manager
        self.tracing = tracing  # None: tracing off, and Predict pays one check for it
        self.plans = dict(plans)
        self.refused: dict[str, str] = dict(getattr(plans, "refused", {}))
        # Feast's UDFs, decoded on a service's first call: a server whose models take no
        # on-demand input starts without importing Feast
        self.on_demand = OnDemandViews()
        self.max_rows = max_rows
        self.features = GuardedReader(reader, breaker)
        self.shadow = shadow or ShadowScorer()
        ranked = turns if tenants is not None else None  # calls take turns by priority
        scorer = Scorer(self.features, self.shadow, manager.trip, waiting, ranked=ranked)
        self.feature_log = scorer.feature_log  # the server writes what is left at its stop
        self.lanes = Lanes(
            scorer,
            max_rows,
            admission,
            batch_max_rows,
            batch_max_delay_us,
            turns,
            handler_threads,
            tenants,
        )
        self.tenants = tenants  # None: no tenants, and Predict pays one check for it

    @property
    def breaker(self) -> CircuitBreaker:
        return self.features.breaker

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext):
        if self.tracing is None:
            return self._predict(request, context, None)
        return self.tracing.predict(self._predict, request, context)

    def _predict(self, request: pb.PredictRequest, context, marks: StageMarks | None):
        """A Predict; `marks` (a traced call's) collects its stages' times for its spans."""
        started = time.perf_counter()
        route = self.manager.route(request.model)
        model = route.name if route is not None else "unknown"
        versions: list[str] = []
        code = _OK
        try:
            if route is None:
                raise self._unknown_model(request.model)
            tenant = None if self.tenants is None else self.tenants.of(context)
            if marks is not None and tenant is not None:
                marks.tenant = tenant.name
            scored = self.lanes.of(route).predict(route, request, context, marks, tenant)
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
                raise self._unknown_service(request.feature_service)
            owner = f"feature service {plan.service}"
            entities, n = decode_entities(request.entities, plan, self.max_rows, owner)
            data = decode_request_data(request.request_features, plan, n, owner)
            deadline = deadline_of(context, plan.service, "features")
            typed = self.features.read_typed(plan, entities, deadline)
            values = self._on_demand(plan, {**entities, **data, **typed.columns}, n)
            metrics.ROWS.labels("GetOnlineFeatures", plan.service).inc(n)
            return features_response(plan, values, typed.stale, n)
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

    def ListFeatureServices(
        self, request: pb.ListFeatureServicesRequest, context: grpc.ServicerContext
    ):
        services = [
            pb.FeatureServiceInfo(
                name=name,
                served=True,
                features=[c.full_name for c in plan.served],
                dtypes=[c.dtype for c in plan.served],
                entities=sorted(plan.entity_types),
                request_features=plan.request_fields,
            )
            for name, plan in self.plans.items()
        ]
        services += [
            pb.FeatureServiceInfo(name=name, served=False, error=reason)
            for name, reason in self.refused.items()
        ]
        return pb.ListFeatureServicesResponse(services=sorted(services, key=lambda s: s.name))

    def _on_demand(self, plan: ReadPlan, inputs: dict, n: int) -> dict:
        """The read's columns with the service's on-demand features computed from `inputs`
        (its entities, request data and read columns); their cost is the "transform" stage."""
        if not plan.transforms:
            return inputs
        started = time.perf_counter()
        out = dict(inputs)
        for transform in plan.transforms:
            out.update(self.on_demand.compute(transform, inputs, n))
        metrics.STAGE.labels(plan.service, "transform").observe(time.perf_counter() - started)
        return out

    def _unknown_service(self, name: str) -> RequestError:
        if name in self.refused:
            return RequestError(
                f"feature service {shown(name)!r} is not served: {self.refused[name]}",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        return not_found(
            f"feature service {shown(name)!r} is not in the registry; have: "
            f"{', '.join(sorted(self.plans))}"
        )

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


def add_to_server(servicer: PredictorServicer, server: grpc.Server) -> None:
    """Register `augur.v1.Predictor`, each request parsed after auth (serving/parsing.py), a
    Predict's by augur.serving.wire where it takes the bytes."""
    service = pb.DESCRIPTOR.services_by_name["Predictor"]
    add_parsed(service, pb, servicer, server, readers={"Predict": parse_predict})
