"""The gRPC floor: an augur.v1.Predictor whose Predict answers at once with a canned reply.

    python -m bench.echo_server --port PORT --model NAME [--server sync|aio|green]
        [--workers N] [--redis ADDRESS --plan PLAN.json]

The reply has the size of a real one (the request's row count, one score per row), built
once per row count, so a call costs what Python gRPC itself costs: parse the request,
serialise the reply, two trips through the loopback. Health reports NAME as SERVING. Not a
model server.

Which Python gRPC server is fastest for one caller is measured, not assumed (bench/compare.py
takes the fastest as the floor): `sync` is `grpc.server` on a pool of `--workers` handler
threads (each call handed from the polling thread to a handler thread); `aio` is
`grpc.aio` (the call runs as a coroutine on the event loop's thread); `green` is Augur's own
green pool (augur/serving/green.py) with `--workers 0`: the call runs on gRPC's polling
thread, as `augur serve` runs it.

With `--redis` and `--plan`, each call first makes the Redis round trip a read of its
entities needs (HMGET of each distinct key's packed vectors, as the in-process floor),
decoding nothing; the commands are packed once per distinct request. That is the floor of
any server that must read the features before it answers: gRPC plus one round trip, waiting
on Redis mid-call as each server waits: a blocked handler thread (`sync`), an awaited
socket read (`aio`, replies parsed by hiredis), a parked greenlet (`green`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from augur.api.v1 import predictor_pb2 as pb
from augur.api.v1 import predictor_pb2_grpc as pb_grpc

OPTIONS = [
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.max_send_message_length", 16 << 20),
]
SERVERS = ("sync", "aio", "green")


class Replies:
    """The canned reply for each (model, row count), built once."""

    def __init__(self) -> None:
        self._replies: dict[tuple[str, int], pb.PredictResponse] = {}

    def get(self, request: pb.PredictRequest) -> pb.PredictResponse:
        rows = row_count(request)
        reply = self._replies.get((request.model, rows))
        if reply is None:
            reply = pb.PredictResponse(
                model=request.model, version="v1", rows=rows, outputs=1, scores=[0.5] * rows
            )
            self._replies[(request.model, rows)] = reply
        return reply


class EchoPredictor(pb_grpc.PredictorServicer):
    def __init__(self, floor: RedisFloor | None = None, waiting=None) -> None:
        self._replies = Replies()
        self._floor = floor
        self._waiting = waiting

    def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        if self._floor is not None:
            self._floor.round_trip(request, self._waiting)
        return self._replies.get(request)


class AioEchoPredictor(pb_grpc.PredictorServicer):
    def __init__(self, floor: RedisFloor | None = None) -> None:
        self._replies = Replies()
        self._floor = floor

    async def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        if self._floor is not None:
            await self._floor.round_trip_async(request)
        return self._replies.get(request)


class RedisFloor:
    """The Redis round trip of a request's keys, packed once per distinct request."""

    def __init__(self, address: str, plan_path: Path):
        from augur.features.connection import connect
        from augur.features.plan import ReadPlan
        from augur.features.resp import OwnConnections
        from bench.inprocess import floor_payloads, floor_transport

        self._round_trip = floor_transport()  # imported here: the plain echo floor needs none
        self._address = address
        self._client = connect(address)
        self._own = OwnConnections(self._client)
        self._pack = floor_payloads(ReadPlan.from_json(plan_path.read_text()), "vectors")
        self._packed: dict[bytes, tuple[bytes, int]] = {}
        self._streams: asyncio.Queue | None = None  # aio: idle (reader, writer) pairs

    def packed(self, request: pb.PredictRequest) -> tuple[bytes, int]:
        """The request's pipeline of commands, and how many there are."""
        seen = request.SerializeToString(deterministic=True)
        packed = self._packed.get(seen)
        if packed is None:
            entities = {
                name: list(getattr(column, column.WhichOneof("values")).values)
                for name, column in request.entities.items()
            }
            packed = self._packed.setdefault(seen, self._pack(entities))
        return packed

    def round_trip(self, request: pb.PredictRequest, waiting=None) -> tuple[list | bytearray, int]:
        """The replies of the request's keys' HMGETs, undecoded, and how many there are; a
        green pool's call parks on the socket (`waiting`), a thread's blocks."""
        extra = {} if waiting is None else {"waiting": waiting}
        packed = self.packed(request)
        return self._round_trip(self._client, *packed, own=self._own, **extra), packed[1]

    async def round_trip_async(self, request: pb.PredictRequest) -> list:
        """The same round trip on an asyncio stream of this loop's, parsed by hiredis."""
        import hiredis

        if self._streams is None:
            self._streams = asyncio.Queue()
        if self._streams.empty():
            host, _, port = self._address.rpartition(":")
            self._streams.put_nowait(await asyncio.open_connection(host, int(port)))
        reader, writer = self._streams.get_nowait()
        payload, count = self.packed(request)
        writer.write(payload)
        parser, replies = hiredis.Reader(), []
        while len(replies) < count:
            parser.feed(await reader.read(1 << 16))
            while (reply := parser.gets()) is not False:
                replies.append(reply)
        self._streams.put_nowait((reader, writer))
        return replies


def row_count(request: pb.PredictRequest) -> int:
    """Rows of a request: the length of its first entity column."""
    for column in request.entities.values():
        which = column.WhichOneof("values")
        return len(getattr(column, which).values) if which else 0
    return 0


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _health(server, model: str) -> None:
    status = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    for name in ("", model):
        status.set(name, health_pb2.HealthCheckResponse.SERVING)


def serve(
    port: int, model: str, workers: int = 8, floor: RedisFloor | None = None, kind: str = "sync"
) -> None:
    """Serve until SIGTERM on the `kind` of server (see the module's docstring)."""
    if kind == "aio":
        asyncio.run(_serve_aio(port, model, floor))
        return
    waiting = None
    if kind == "green":
        from augur.serving.green import GreenPool

        pool: futures.Executor = GreenPool(workers, "echo")
        waiting = pool.waiting if pool.on_polling_thread else None
    else:
        pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="echo")
    server = grpc.server(pool, options=OPTIONS)
    pb_grpc.add_PredictorServicer_to_server(EchoPredictor(floor, waiting), server)
    if not server.add_insecure_port(f"127.0.0.1:{port}"):
        raise RuntimeError(f"cannot listen on 127.0.0.1:{port}")
    _health(server, model)
    server.start()
    _stop_event().wait()
    server.stop(1.0).wait()


async def _serve_aio(port: int, model: str, floor: RedisFloor | None) -> None:
    server = grpc.aio.server(options=OPTIONS)
    pb_grpc.add_PredictorServicer_to_server(AioEchoPredictor(floor), server)
    if not server.add_insecure_port(f"127.0.0.1:{port}"):
        raise RuntimeError(f"cannot listen on 127.0.0.1:{port}")
    status = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    for name in ("", model):
        await status.set(name, health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--server", choices=SERVERS, default="sync", help="see the docstring")
    parser.add_argument(
        "--workers", type=int, default=8, help="sync: handler threads; green: 0 = polling thread"
    )
    parser.add_argument("--redis", help="make each call's Redis round trip on this server...")
    parser.add_argument("--plan", type=Path, help="...for the keys of this read plan (JSON)")
    args = parser.parse_args(argv)
    if (args.redis is None) != (args.plan is None):
        parser.error("--redis and --plan go together")
    floor = RedisFloor(args.redis, args.plan) if args.redis else None
    serve(args.port, args.model, args.workers, floor, args.server)


if __name__ == "__main__":
    main()
