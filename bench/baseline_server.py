"""The baseline a user would build today: Predict calls Feast, then LightGBM, per request.

    python -m bench.baseline_server --feature-repo R --model-repo M --model NAME \
        --redis HOST:PORT --port PORT

An augur.v1.Predictor (so the same load generator drives it) whose Predict does what the
Feast documentation shows: `FeatureStore.get_online_features(feature_service, entity_rows,
full_feature_names=True).to_dict()`, then a float32 matrix in the model's input order
(declared defaults filled in for missing values, as the model was trained), then
`booster.predict` with one thread, like Augur's `server.model_threads: 1`. The model is the
same published version Augur serves. Same gRPC server options as Augur (8 handler threads);
health reports NAME as SERVING once the first call has warmed Feast up. Not Augur code.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import threading
from concurrent import futures

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from augur.api.v1 import predictor_pb2 as pb
from augur.api.v1 import predictor_pb2_grpc as pb_grpc
from augur.modelrepo.repository import ModelRepository


class FeastPredictor(pb_grpc.PredictorServicer):
    def __init__(self, feature_repo: str, model_repo: str, model: str):
        import lightgbm as lgb
        from feast import FeatureStore

        version = ModelRepository(model_repo).resolve(model)
        self.model, self.version = model, version.version
        self.store = FeatureStore(repo_path=feature_repo)
        self.service = self.store.get_feature_service(version.spec.feature_service)
        self.booster = lgb.Booster(model_file=str(version.artifact))
        self.inputs = version.features
        self.request_features = set(version.metadata.get("request_features", ()))
        self.defaults = {
            f"{p.name}__{f.name}": float(f.tags["default"])
            for p in self.service.feature_view_projections
            for f in p.features
            if "default" in (f.tags or {})
        }

    def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        entities = {
            name: list(getattr(column, column.WhichOneof("values")).values)
            for name, column in request.entities.items()
        }
        rows = len(next(iter(entities.values())))
        online = self.store.get_online_features(
            features=self.service, entity_rows=entities, full_feature_names=True
        ).to_dict()
        batch = np.empty((rows, len(self.inputs)), np.float32)
        for i, name in enumerate(self.inputs):
            if name in self.request_features:
                batch[:, i] = request.request_features[name].values
            else:
                batch[:, i] = np.array(online[name], np.float64)  # None -> NaN
                default = self.defaults.get(name, math.nan)
                if not math.isnan(default):
                    column = batch[:, i]
                    column[np.isnan(column)] = default
        scores = self.booster.predict(batch, num_threads=1)
        return pb.PredictResponse(
            model=self.model, version=self.version, rows=rows, outputs=1, scores=scores.tolist()
        )


def serve(args: argparse.Namespace) -> None:
    os.environ["AUGUR_REDIS"] = args.redis  # feature_store.yaml reads the address from it
    os.environ.setdefault("FEAST_USAGE", "False")
    status = health.HealthServicer()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="baseline"),
        options=[
            ("grpc.max_receive_message_length", 16 << 20),
            ("grpc.max_send_message_length", 16 << 20),
        ],
    )
    servicer = FeastPredictor(args.feature_repo, args.model_repo, args.model)
    pb_grpc.add_PredictorServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    if not server.add_insecure_port(f"127.0.0.1:{args.port}"):
        raise RuntimeError(f"cannot listen on 127.0.0.1:{args.port}")
    server.start()
    _warm_up(servicer, args.warm_entity)
    for name in ("", args.model):
        status.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(1.0).wait()


def _warm_up(servicer: FeastPredictor, entity: str) -> None:
    """One real call: Feast loads its registry and online store client on first use."""
    columns = {}
    for item in entity.split(","):
        key, value = item.split("=")
        columns[key] = pb.EntityColumn(int64s=pb.Int64List(values=[int(value)]))
    extra = {k: pb.DoubleList(values=[1.0]) for k in servicer.request_features}
    servicer.Predict(pb.PredictRequest(entities=columns, request_features=extra), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feature-repo", required=True)
    parser.add_argument("--model-repo", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--redis", required=True, help="HOST:PORT of the online store")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--warm-entity", required=True, help="join key values for the warm-up call, e.g. a=1,b=2"
    )
    args = parser.parse_args(argv)
    serve(args)


if __name__ == "__main__":
    main()
