"""A small Python client for the Predictor service, used by the demo and the tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from augur.api.v1 import admin_pb2, admin_pb2_grpc
from augur.api.v1 import predictor_pb2 as pb
from augur.api.v1 import predictor_pb2_grpc as pb_grpc
from augur.client.channel import client_channel
from augur.client.entities import encode_entities


@dataclass(frozen=True)
class Prediction:
    model: str
    version: str
    scores: np.ndarray  # float32 (rows, outputs)
    present: np.ndarray  # int (rows,), empty unless feature status was asked for
    missing: np.ndarray
    stale: np.ndarray
    feature_names: tuple[str, ...]
    features: np.ndarray  # float32 (rows, features), empty unless asked for
    row_versions: tuple[str, ...] = ()  # per row, when a canary split the rows

    def version_of(self, row: int) -> str:
        return self.row_versions[row] if self.row_versions else self.version


class PredictorClient:
    """Plaintext by default; TLS with `tls` or tls_ca (the CA to trust), mutual TLS with
    tls_cert + tls_key, and `authorization: Bearer <token>` on every call with `token`."""

    def __init__(
        self,
        address: str,
        timeout: float = 2.0,
        *,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        token: str | None = None,
    ):
        self.address = address
        self.timeout = timeout
        self.channel = client_channel(
            address, tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token
        )
        self.stub = pb_grpc.PredictorStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def predict(
        self,
        model: str,
        entities: Mapping[str, Sequence],
        request_features: Mapping[str, Sequence[float]] | None = None,
        *,
        version: str = "",
        return_features: bool = False,
        return_feature_status: bool = True,
        timeout: float | None = None,
    ) -> Prediction:
        request = pb.PredictRequest(
            model=model,
            version=version,
            entities=encode_entities(entities),
            request_features={
                k: pb.DoubleList(values=list(map(float, v)))
                for k, v in (request_features or {}).items()
            },
            options=pb.PredictOptions(
                return_features=return_features, return_feature_status=return_feature_status
            ),
        )
        reply = self.stub.Predict(request, timeout=timeout or self.timeout)
        return _prediction(reply)

    def online_features(
        self, feature_service: str, entities: Mapping[str, Sequence], timeout: float | None = None
    ) -> tuple[tuple[str, ...], np.ndarray]:
        reply = self.stub.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(
                feature_service=feature_service, entities=encode_entities(entities)
            ),
            timeout=timeout or self.timeout,
        )
        names = tuple(reply.features.names)
        return names, np.asarray(reply.features.values, np.float32).reshape(-1, len(names))

    def list_models(self, timeout: float | None = None) -> list[pb.ModelInfo]:
        return list(
            self.stub.ListModels(pb.ListModelsRequest(), timeout=timeout or self.timeout).models
        )

    def health(self, service: str = "", timeout: float | None = None) -> str:
        reply = self.health_stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout or self.timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_ready(self, timeout: float = 60.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def wait_serving(
        self, models: Sequence[str], timeout: float = 120.0, process: subprocess.Popen | None = None
    ) -> None:
        """Block until health reports every model SERVING; fail early if `process` (the
        server, when we started it) exits, and with TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode}")
            try:
                if all(self.health(m, timeout=1) == "SERVING" for m in models):
                    return
            except grpc.RpcError:
                pass  # not listening yet, or still loading
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{', '.join(models)} not SERVING on {self.address} after {timeout:.0f}s"
                )
            time.sleep(0.2)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> PredictorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prediction(reply: pb.PredictResponse) -> Prediction:
    scores = np.asarray(reply.scores, np.float32).reshape(reply.rows, reply.outputs)
    status = reply.feature_status
    names = tuple(reply.features.names)
    features = (
        np.asarray(reply.features.values, np.float32).reshape(reply.rows, len(names))
        if names
        else np.empty((reply.rows, 0), np.float32)
    )
    return Prediction(
        reply.model,
        reply.version,
        scores,
        np.array([s.present for s in status]),
        np.array([s.missing for s in status]),
        np.array([s.stale for s in status]),
        names,
        features,
        tuple(reply.row_versions),
    )


class AdminClient:
    """The operator API of a running server (Admin service)."""

    def __init__(
        self,
        address: str,
        timeout: float = 60.0,
        *,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        token: str | None = None,
    ):
        # The same TLS and token options as PredictorClient: Admin shares the port.
        self.channel = client_channel(
            address, tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token
        )
        self.stub = admin_pb2_grpc.AdminStub(self.channel)
        self.timeout = timeout

    def status(self, model: str = "") -> list[admin_pb2.ModelState]:
        return list(
            self.stub.ModelStatus(
                admin_pb2.ModelStatusRequest(model=model), timeout=self.timeout
            ).models
        )

    def promote(self, model: str, version: str) -> list[admin_pb2.ModelState]:
        return list(
            self.stub.Promote(
                admin_pb2.PromoteRequest(model=model, version=version), timeout=self.timeout
            ).models
        )

    def canary(self, model: str, version: str, weight: float) -> list[admin_pb2.ModelState]:
        request = admin_pb2.SetCanaryRequest(model=model, version=version, weight=weight)
        return list(self.stub.SetCanary(request, timeout=self.timeout).models)

    def shadow(self, model: str, version: str) -> list[admin_pb2.ModelState]:
        request = admin_pb2.SetShadowRequest(model=model, version=version)
        return list(self.stub.SetShadow(request, timeout=self.timeout).models)

    def rollback(self, model: str, reason: str = "") -> list[admin_pb2.ModelState]:
        request = admin_pb2.RollbackRequest(model=model, reason=reason)
        return list(self.stub.Rollback(request, timeout=self.timeout).models)

    def reload(self) -> list[admin_pb2.ModelState]:
        return list(self.stub.Reload(admin_pb2.ReloadRequest(), timeout=self.timeout).models)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
