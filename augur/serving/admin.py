"""The Admin gRPC service: operators change routing through the model repository.

Each call writes model.yaml (so the change outlives this process and reaches every replica
watching the repository), then refreshes this server before answering with the new state.
A version a change routes to is loaded and warmed first: one this server cannot serve is
refused (FAILED_PRECONDITION, with the reason) and nothing is written.
"""

from __future__ import annotations

import math

import grpc

from augur.api.v1 import admin_pb2 as pb
from augur.api.v1 import admin_pb2_grpc as pb_grpc
from augur.features.waiting import BLOCKING, Waiting
from augur.modelrepo.repository import RepositoryError
from augur.modelrepo.spec import OperatorInputError, check_operator_text
from augur.serving.errors import RequestError, invalid, not_found
from augur.serving.lifecycle import ModelManager
from augur.serving.models import ModelLoadError


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, manager: ModelManager, waiting: Waiting = BLOCKING):
        self.manager = manager
        self.repo = manager.repo
        self._waiting = waiting  # the green pool's runs a change off the thread its calls share

    def ModelStatus(self, request: pb.ModelStatusRequest, context: grpc.ServicerContext):
        return self._call(context, request.model, None)

    def Promote(self, request: pb.PromoteRequest, context: grpc.ServicerContext):
        return self._call(
            context,
            request.model,
            lambda: self.repo.promote(request.model, _required(request.version)),
            routes_to=request.version,
            version=request.version,
        )

    def SetCanary(self, request: pb.SetCanaryRequest, context: grpc.ServicerContext):
        version = request.version or "stable"
        return self._call(
            context,
            request.model,
            lambda: self.repo.set_canary(request.model, version, request.weight),
            routes_to=version if request.weight > 0 else "",
            version=request.version,
        )

    def SetShadow(self, request: pb.SetShadowRequest, context: grpc.ServicerContext):
        return self._call(
            context,
            request.model,
            lambda: self.repo.set_shadow(request.model, request.version),
            routes_to=request.version,
            version=request.version,
        )

    def Rollback(self, request: pb.RollbackRequest, context: grpc.ServicerContext):
        reason = request.reason or "operator rollback"
        return self._call(
            context,
            request.model,
            lambda: self.repo.rollback(request.model, reason),
            reason=request.reason,
        )

    def Reload(self, request: pb.ReloadRequest, context: grpc.ServicerContext):
        def reload() -> None:  # nothing to write: the refresh is the point
            pass

        return self._call(context, "", reload)

    def _call(
        self,
        context: grpc.ServicerContext,
        model: str,
        change,
        routes_to: str = "",
        **texts: str,
    ) -> pb.ModelStatusResponse:
        """Apply `change` to the repository (None: only report), refresh, report the state.
        `routes_to`: the version (or alias) the change sends traffic to, loaded first."""
        try:
            for name, value in {"model": model, **texts}.items():
                check_operator_text(name, value)
            mutating = change is not None and change.__name__ != "reload"
            if mutating and not model:
                raise invalid("model: required")
            if model and model not in self.repo.names():
                raise not_found(
                    f"model {model!r} is not in the repository; have: "
                    f"{', '.join(self.repo.names()) or 'none'}"
                )
            if change is not None:
                self._waiting.run_elsewhere(lambda: self._apply(change, model, routes_to))
            return status(self.manager, model)
        except OperatorInputError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except (RepositoryError, ModelLoadError) as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except RequestError as e:
            context.abort(e.code, e.message)

    def _apply(self, change, model: str, routes_to: str) -> None:
        """Load what the change routes to, then write it and refresh: on the green pool, off
        the thread its calls run on, since a model version may take seconds to load."""
        if routes_to:
            # resolved as model.yaml would (an alias or an id); raises before any write
            self.manager.prepare(model, self.repo.resolve(model, routes_to).version)
        change()
        self.manager.refresh()


def _required(version: str) -> str:
    if not version:
        raise invalid("version: required, e.g. v2")
    return version


def status(manager: ModelManager, only: str = "") -> pb.ModelStatusResponse:
    repo = manager.repo
    states = []
    for name in repo.names():
        if only and name != only:
            continue
        spec = repo.spec(name)
        route = manager.route(name)
        state = pb.ModelState(
            name=name,
            aliases=spec.aliases,
            published=repo.versions(name),
            error=manager.errors.get(name, ""),
        )
        if spec.last_rollback:
            r = spec.last_rollback
            state.last_rollback = f"{r.get('version')}: {r.get('reason')} ({r.get('at')})"
        if route is not None:
            state.stable = route.stable.version.version
            state.loaded.extend(route.loaded)
            if route.canary is not None:
                stats = route.guard.stats() if route.guard else {}
                state.canary.CopyFrom(
                    pb.CanaryStatus(
                        version=route.canary.version.version,
                        weight=route.canary_weight,
                        sticky_key=route.sticky_key,
                        calls=int(stats.get("calls", 0)),
                        error_rate=stats.get("error_rate", 0.0),
                        # NaN: not measured (no calls yet, or no max_psi guardrail)
                        p99_ms=stats.get("p99_ms", math.nan),
                        psi=stats.get("psi", math.nan),
                    )
                )
            if route.shadow is not None:
                state.shadow.CopyFrom(
                    pb.ShadowStatus(
                        version=route.shadow.version.version, threshold=route.shadow_threshold
                    )
                )
        states.append(state)
    return pb.ModelStatusResponse(models=states)
