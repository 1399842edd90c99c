"""The gRPC floor: an augur.v1.Predictor whose Predict answers at once with a canned reply.

    python -m bench.echo_server --port PORT --model NAME [--redis ADDRESS --plan PLAN.json]

The reply has the size of a real one (the request's row count, one score per row), built
once per row count, so a call costs what Python gRPC itself costs: parse the request,
serialise the reply, two trips through the loopback. Same server options as `augur serve`
(a thread pool of 8 handlers), health reporting NAME as SERVING. Not a model server.

With `--redis` and `--plan`, each call first makes the Redis round trip a read of its
entities needs (HMGET of each distinct key's packed vectors, as the in-process floor),
decoding nothing; the commands are packed once per distinct request. That is the floor of
any server that must read the features before it answers: gRPC plus one round trip, with
the handler thread waiting on Redis mid-call.
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from augur.api.v1 import predictor_pb2 as pb
from augur.api.v1 import predictor_pb2_grpc as pb_grpc


class EchoPredictor(pb_grpc.PredictorServicer):
    def __init__(self, floor: RedisFloor | None = None) -> None:
        self._replies: dict[tuple[str, int], pb.PredictResponse] = {}
        self._floor = floor

    def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        if self._floor is not None:
            self._floor.round_trip(request)
        rows = row_count(request)
        reply = self._replies.get((request.model, rows))
        if reply is None:
            reply = pb.PredictResponse(
                model=request.model, version="v1", rows=rows, outputs=1, scores=[0.5] * rows
            )
            self._replies[(request.model, rows)] = reply
        return reply


class RedisFloor:
    """The Redis round trip of a request's keys, packed once per distinct request."""

    def __init__(self, address: str, plan_path: Path):
        from augur.features.connection import connect
        from augur.features.plan import ReadPlan
        from augur.features.resp import OwnConnections
        from bench.inprocess import floor_payloads, floor_transport

        self._round_trip = floor_transport()  # imported here: the plain echo floor needs none
        self._client = connect(address)
        self._own = OwnConnections(self._client)
        self._pack = floor_payloads(ReadPlan.from_json(plan_path.read_text()), "vectors")
        self._packed: dict[bytes, tuple[bytes, int]] = {}

    def round_trip(self, request: pb.PredictRequest) -> tuple[list | bytearray, int]:
        """The replies of the request's keys' HMGETs, undecoded, and how many there are."""
        seen = request.SerializeToString(deterministic=True)
        packed = self._packed.get(seen)
        if packed is None:
            entities = {
                name: list(getattr(column, column.WhichOneof("values")).values)
                for name, column in request.entities.items()
            }
            packed = self._packed.setdefault(seen, self._pack(entities))
        return self._round_trip(self._client, *packed, own=self._own), packed[1]


def row_count(request: pb.PredictRequest) -> int:
    """Rows of a request: the length of its first entity column."""
    for column in request.entities.values():
        which = column.WhichOneof("values")
        return len(getattr(column, which).values) if which else 0
    return 0


def serve(port: int, model: str, workers: int = 8, floor: RedisFloor | None = None) -> None:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="echo"),
        options=[
            ("grpc.max_receive_message_length", 16 << 20),
            ("grpc.max_send_message_length", 16 << 20),
        ],
    )
    pb_grpc.add_PredictorServicer_to_server(EchoPredictor(floor), server)
    status = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    if not server.add_insecure_port(f"127.0.0.1:{port}"):
        raise RuntimeError(f"cannot listen on 127.0.0.1:{port}")
    server.start()
    for name in ("", model):
        status.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(1.0).wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--redis", help="make each call's Redis round trip on this server...")
    parser.add_argument("--plan", type=Path, help="...for the keys of this read plan (JSON)")
    args = parser.parse_args(argv)
    if (args.redis is None) != (args.plan is None):
        parser.error("--redis and --plan go together")
    floor = RedisFloor(args.redis, args.plan) if args.redis else None
    serve(args.port, args.model, args.workers, floor)


if __name__ == "__main__":
    main()
