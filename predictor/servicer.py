"""The gRPC servicer: validate, read features, assemble, score, answer - and count each stage."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import grpc
import numpy as np
from google.protobuf.message import Message

from featurestore.connection import UNAVAILABLE_ERRORS
from featurestore.plan import ReadPlan
from featurestore.reader import FeatureRows, OnlineReader
from predictor import metrics
from predictor.codec import decode_entities, decode_request_features, feature_status
from predictor.errors import RequestError, deadline_exceeded, invalid, not_found
from predictor.models import ServingModel
from proto.augur.v1 import predictor_pb2 as pb
from proto.augur.v1 import predictor_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class PredictorServicer(pb_grpc.PredictorServicer):
    def __init__(
        self,
        models: Mapping[str, ServingModel],
        plans: Mapping[str, ReadPlan],
        reader: OnlineReader,
        max_rows: int,
        versions: Mapping[str, list[str]],
    ):
        self.models = dict(models)
        self.plans = dict(plans)
        self.reader = reader
        self.max_rows = max_rows
        self.versions = versions

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext):
        model = self.models.get(request.model)
        return _answer(
            "Predict",
            request.model if model else "unknown",
            model.version.version if model else "",
            context,
            lambda: self._predict(request, context, model),
        )

    def _predict(
        self, request: pb.PredictRequest, context: grpc.ServicerContext, model: ServingModel | None
    ) -> pb.PredictResponse:
        if not request.model:
            raise invalid("model: required; ListModels shows what this server serves")
        if model is None:
            raise not_found(
                f"model {request.model!r} is not served here; serving: "
                f"{', '.join(sorted(self.models)) or 'none'}"
            )
        version = model.version
        if request.version and request.version not in (version.version, *version.spec.aliases):
            raise not_found(
                f"model {model.name} version {request.version!r} is not loaded; "
                f"serving {version.version}"
            )
        owner = f"model {model.name}"
        entities, n = decode_entities(request.entities, model.plan, self.max_rows, owner)
        extra = decode_request_features(
            request.request_features, version.spec.request_features, n, owner
        )
        _check_deadline(context)

        t0 = time.perf_counter()
        rows = self.reader.read(model.plan, entities)
        t1 = time.perf_counter()
        batch = model.assemble(rows, extra)
        t2 = time.perf_counter()
        scores = model.runtime.predict(batch)
        t3 = time.perf_counter()

        name = model.name
        metrics.STAGE.labels(name, "features").observe(t1 - t0)
        metrics.STAGE.labels(name, "assemble").observe(t2 - t1)
        metrics.STAGE.labels(name, "inference").observe(t3 - t2)
        metrics.ROWS.labels("Predict", name).inc(n)
        _count_features(name, model.plan, rows)

        response = pb.PredictResponse(
            model=name,
            version=version.version,
            rows=n,
            outputs=scores.shape[1],
            scores=scores.ravel().tolist(),
        )
        options = request.options
        if options.return_feature_status:
            present = len(model.plan.columns) - rows.missing
            response.feature_status.extend(feature_status(present, rows.missing, rows.stale))
        if options.return_features:
            response.features.names.extend(version.features)
            response.features.values.extend(batch.ravel().tolist())
        return response

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
                f"feature service {request.feature_service!r} is not in the "
                f"registry; have: {', '.join(sorted(self.plans))}"
            )
        entities, n = decode_entities(
            request.entities, plan, self.max_rows, f"feature service {plan.service}"
        )
        _check_deadline(context)
        rows = self.reader.read(plan, entities)
        metrics.ROWS.labels("GetOnlineFeatures", plan.service).inc(n)
        present = len(plan.columns) - rows.missing
        return pb.GetOnlineFeaturesResponse(
            features=pb.FeatureMatrix(
                names=plan.feature_names, values=rows.values.ravel().tolist()
            ),
            feature_status=feature_status(present, rows.missing, rows.stale),
        )

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext):
        models = []
        for name, model in sorted(self.models.items()):
            spec = model.version.spec
            models.append(
                pb.ModelInfo(
                    name=name,
                    version=model.version.version,
                    kind=spec.kind,
                    feature_service=spec.feature_service,
                    features=model.version.features,
                    request_features=spec.request_features,
                    entities=sorted(model.plan.entity_types),
                    device=model.runtime.device,
                    versions=self.versions.get(name, []),
                )
            )
        return pb.ListModelsResponse(models=models)


def _answer(
    method: str,
    model: str,
    version: str,
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
        metrics.REQUESTS.labels(method, model, version, code.name).inc()
        metrics.LATENCY.labels(method, model, version, code.name).observe(elapsed)


def _check_deadline(context: grpc.ServicerContext) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise deadline_exceeded("deadline passed before features were read")


def _count_features(model: str, plan: ReadPlan, rows: FeatureRows) -> None:
    missing = int(rows.missing.sum())
    if missing:
        metrics.FEATURES_MISSING.labels(model).inc(missing)
    stale = int(rows.stale.sum())
    if stale:
        metrics.FEATURES_STALE.labels(model).inc(stale)
    # The oldest row served per view: one observation per view and call keeps this off the
    # per-row path, and the oldest value is what freshness alerts care about.
    now = time.time()
    for j, view in enumerate(plan.views):
        column = rows.event_ts[:, j]
        if not np.isnan(column).all():
            metrics.FEATURE_AGE.labels(view.name).observe(now - np.nanmin(column))
