"""The Open Inference Protocol (KServe v2, `inference.GRPCInferenceService`) beside augur.v1 on
the same port: liveness, readiness, metadata, ModelInfer through the same lanes as Predict
(admission, batching, scoring), statistics, and the repository extension on Augur's model
repository. What inputs mean is oip_inputs.py's; tensors are oip_tensors.py's.
"""

from __future__ import annotations

import time

import grpc
import numpy as np

from augur.api.oip import open_inference_pb2 as oip
from augur.api.oip import open_inference_pb2_grpc as oip_grpc
from augur.features.waiting import BLOCKING, Waiting
from augur.serving.errors import RequestError, invalid, not_found, shown
from augur.serving.lanes import Lanes
from augur.serving.lifecycle import ModelManager
from augur.serving.oip_inputs import decode_infer
from augur.serving.oip_statistics import model_statistics
from augur.serving.oip_tensors import FEAST_DATATYPES, write_output
from augur.serving.parsing import add_parsed
from augur.serving.routing import Route
from augur.serving.scoring import Scored
from augur.serving.servicer import _count, _status

SERVICE = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
EXTENSIONS = ("model_repository", "statistics", "augur_feature_aware")
_OK = grpc.StatusCode.OK
_Tensor = oip.ModelMetadataResponse.TensorMetadata


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    """OIP calls on the models the manager serves, scored by the servicer's lanes."""

    def __init__(
        self, manager: ModelManager, lanes: Lanes, version: str, waiting: Waiting = BLOCKING
    ) -> None:
        self.manager = manager
        self.lanes = lanes
        self.version = version
        self._waiting = waiting  # where loading a model runs (it takes seconds)

    def ServerLive(self, request, context):
        return oip.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return oip.ServerReadyResponse(ready=bool(self.manager.routes))

    def ModelReady(self, request, context):
        route = self.manager.route(request.name)
        ready = route is not None and (not request.version or bool(route.named(request.version)))
        return oip.ModelReadyResponse(ready=ready)

    def ServerMetadata(self, request, context):
        return oip.ServerMetadataResponse(name="augur", version=self.version, extensions=EXTENSIONS)

    def ModelMetadata(self, request, context):
        try:
            route = self._route(request.name)
            model = route.pinned(request.version) if request.version else route.stable
        except RequestError as e:
            context.abort(e.code, e.message)
        spec = model.version.spec
        dtypes = {c.name: c.dtype for c in model.plan.columns}
        inputs = [
            _Tensor(name=f, datatype=FEAST_DATATYPES.get(dtypes.get(f, ""), "FP32"), shape=[-1])
            for f in model.version.features
        ]
        return oip.ModelMetadataResponse(
            name=route.name,
            # a remote model has no version folders: its one version is named by model.yaml
            versions=self.manager.repo.versions(route.name) or [route.stable.version.version],
            platform=f"augur_{spec.kind}",
            inputs=inputs,
            outputs=[_Tensor(name=o, datatype="FP32", shape=[-1]) for o in spec.outputs],
        )

    def ModelInfer(self, request: oip.ModelInferRequest, context: grpc.ServicerContext):
        started = time.perf_counter()
        route = self.manager.route(request.model_name)
        model = route.name if route is not None else "unknown"
        versions: list[str] = []
        code = _OK
        try:
            if route is None:
                raise self._unknown(request.model_name)
            lanes = self.lanes
            scored = lanes.of(route).score(
                route,
                request.model_version,
                lambda m: decode_infer(request, m, lanes.max_rows),
                context,
            )
            versions = scored.versions
            return _infer_response(request, route, scored, versions)
        except Exception as e:
            code, message = _status(e, "ModelInfer", model)
            context.abort(code, message)
        finally:
            _count("ModelInfer", model, "+".join(versions), code, started)

    def ModelStatistics(self, request, context):
        names = [request.name] if request.name else sorted(self.manager.routes)
        stats = []
        for name in names:
            route = self.manager.route(name)
            if route is None:
                context.abort(grpc.StatusCode.NOT_FOUND, self._unknown(name).message)
            version = request.version or route.stable.version.version
            if route.named(version) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"model {name} has no version {version!r}")
            stats.append(model_statistics(name, version))
        return oip.ModelStatisticsResponse(model_stats=stats)

    def RepositoryIndex(self, request, context):
        models = []
        for name in self.manager.repo.names():
            route = self.manager.route(name)
            if route is not None:
                entry = {"state": "READY", "version": route.stable.version.version}
            elif name in self.manager.unloaded:
                entry = {"state": "UNAVAILABLE", "reason": "unloaded"}
            else:
                entry = {"state": "UNAVAILABLE", "reason": self.manager.errors.get(name, "")}
            if request.ready and entry["state"] != "READY":
                continue
            models.append(oip.RepositoryIndexResponse.ModelIndex(name=name, **entry))
        return oip.RepositoryIndexResponse(models=models)

    def RepositoryModelLoad(self, request, context):
        name = request.model_name
        if name not in self.manager.repo.names():
            context.abort(grpc.StatusCode.NOT_FOUND, self._unknown(name).message)
        self._waiting.run_elsewhere(lambda: self.manager.load(name))
        if self.manager.route(name) is None:
            reason = self.manager.errors.get(name, "see the server log")
            context.abort(grpc.StatusCode.INTERNAL, f"model {name} failed to load: {reason}")
        return oip.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):
        name = request.model_name
        if name not in self.manager.repo.names():
            context.abort(grpc.StatusCode.NOT_FOUND, self._unknown(name).message)
        self._waiting.run_elsewhere(lambda: self.manager.unload(name))
        return oip.RepositoryModelUnloadResponse()

    def _route(self, name: str) -> Route:
        route = self.manager.route(name)
        if route is None:
            raise self._unknown(name)
        return route

    def _unknown(self, name: str) -> RequestError:
        if not name:
            return invalid("model_name: required; RepositoryIndex lists the models")
        return not_found(
            f"model {shown(name)!r} is not served here; serving: "
            f"{', '.join(sorted(self.manager.routes)) or 'none'}"
        )


def _infer_response(
    request: oip.ModelInferRequest, route: Route, scored: Scored, versions: list[str]
) -> oip.ModelInferResponse:
    """The scores as one FP32 tensor per output ([rows]), in the encoding the call used; only
    the outputs it asked for when it named any."""
    outputs = route.stable.version.spec.outputs
    wanted = [o.name for o in request.outputs] or list(outputs)
    raw = bool(request.raw_input_contents)
    response = oip.ModelInferResponse(
        model_name=route.name, model_version="+".join(versions), id=request.id
    )
    scores: np.ndarray = scored.scores
    for name in wanted:
        if name not in outputs:
            raise invalid(
                f"outputs.{shown(name)}: not an output of model {route.name}; "
                f"it has {', '.join(outputs)}"
            )
        write_output(response, name, scores[:, outputs.index(name)], raw)
    return response  # its rows are counted where they are scored, as Predict's


def add_to_server(predictor, server: grpc.Server, waiting: Waiting = BLOCKING) -> None:
    """Serve OIP on `server` through the augur.v1 servicer's (`predictor`) lanes and models."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        release = installed("augur")
    except PackageNotFoundError:
        release = "0"
    servicer = InferenceServicer(predictor.manager, predictor.lanes, release, waiting)
    # request bytes parsed after auth, as augur.v1's (serving/parsing.py)
    add_parsed(oip.DESCRIPTOR.services_by_name["GRPCInferenceService"], oip, servicer, server)
