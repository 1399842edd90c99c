"""What tracing costs a 1-row Predict: Augur as it was before tracing (a git revision),
Augur now with tracing off (its default), and with tracing on, every call sampled and its
spans exported over OTLP to a collector in this process, in alternating rounds.

    python -m bench.tracing [--base main] [--rounds 3] [--seconds 3] [--callers 1]

Each server serves the fraud scenario's LightGBM model (compiled by lleaves) with batching
off; bench/load.py sends 1-row Predicts from `--callers` closed-loop callers. "before" runs
the code of `--base` (git archive of that revision, this tree's built C extension beside
it). The servers alternate within each round and the table gives each one's median calls/s,
p50 and p99, and calls/s against "before" per round. Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import yaml

from augur.features.redis_server import EmbeddedRedis, free_port
from bench import scenarios, targets
from bench.harness import _subprocess

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("before", "off", "on")


class Collector:
    """An OTLP/gRPC trace sink on loopback: counts the spans it is sent."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2 as pb,
        )
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2_grpc as pb_grpc,
        )

        self.spans = 0
        self._lock = threading.Lock()
        collector = self

        class _Sink(pb_grpc.TraceServiceServicer):
            def Export(self, request, context):
                with collector._lock:
                    collector.spans += sum(
                        len(s.spans) for r in request.resource_spans for s in r.scope_spans
                    )
                return pb.ExportTraceServiceResponse()

        self.port = free_port()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_TraceServiceServicer_to_server(_Sink(), self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        self._server.start()

    def stop(self) -> None:
        self._server.stop(1.0)


def run(base: str, rounds: int, seconds: float, callers: int, quick: bool) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="augur-tracing-") as tmp:
        work = Path(tmp)
        before = _checkout(base, work / "before")
        collector = Collector()
        try:
            with EmbeddedRedis(data_dir=work / "redis") as redis:
                scenario = scenarios.build("fraud", work, redis.address, quick)
                scenarios.set_compile(scenario, "lleaves")
                pool = scenarios.requests(scenario, 1, 256)
                for round_ in range(rounds):
                    order = SERVERS if round_ % 2 == 0 else SERVERS[::-1]
                    for name in order:
                        row = _measure(
                            name, scenario, pool, callers, seconds, work, before, collector
                        )
                        rows.append({"round": round_, "server": name, **row})
                        print(f"[round {round_ + 1}] {name}: {row}", file=sys.stderr, flush=True)
        finally:
            collector.stop()
        print(f"spans exported: {collector.spans}", file=sys.stderr)
    return rows


def _checkout(revision: str, dest: Path) -> Path:
    """The package as of `revision`, with this tree's built C extension."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", revision], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for built in (ROOT / "augur" / "features").glob("_native*.so"):
        (dest / "augur" / "features" / built.name).write_bytes(built.read_bytes())
    return dest


def _measure(name, scenario, pool, callers, seconds, work, before: Path, collector) -> dict:
    port = free_port()
    config = {
        "feature_repo": str(scenario.feature_repo),
        "model_repo": str(scenario.model_repo),
        "redis": {"address": scenario.redis_address},
        "server": {**targets.AUGUR_SERVER, "port": port},
    }
    if name == "on":
        config["tracing"] = {
            "enabled": True,
            "sample_ratio": 1.0,
            "endpoint": f"127.0.0.1:{collector.port}",
        }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    serve = [sys.executable, "-m", "augur.cli.main", "serve", "--config", str(path)]
    if name == "before":  # run from the old tree: its package shadows this one
        serve = ["bash", "-c", f"cd {shlex.quote(str(before))} && exec {shlex.join(serve)}"]
    server = targets.start(name, serve, port, scenario.model, work)
    try:
        step = {
            "rows": 1,
            "mode": "closed",
            "concurrency": callers,
            "max_requests": 10**6,
            "max_seconds": seconds,
        }
        plan = targets.load_plan({name: server}, scenario.model, {"1": pool}, [step])
        (measured,) = json.loads(_subprocess("bench.load", plan, work / f"load-{name}", 600))
    finally:
        server.stop()
    return {k: measured[k] for k in ("throughput_rps", "p50_ms", "p99_ms")}


def table(rows: list[dict]) -> str:
    before = {r["round"]: r["throughput_rps"] for r in rows if r["server"] == "before"}
    lines = [
        "| server | calls/s | vs before (per round) | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in SERVERS:
        mine = [r for r in rows if r["server"] == name]
        ratios = ", ".join(f"{r['throughput_rps'] / before[r['round']]:.3f}x" for r in mine)
        med = {k: statistics.median(r[k] for r in mine) for k in ("throughput_rps", "p50_ms")}
        p99 = statistics.median(r["p99_ms"] for r in mine)
        lines.append(
            f"| {name} | {med['throughput_rps']:.0f} | {ratios} | {med['p50_ms']:.3f} | {p99:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="the revision before tracing (main)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="load per server (3 s)")
    parser.add_argument("--callers", type=int, default=1, help="closed-loop callers (1)")
    parser.add_argument("--quick", action="store_true", help="a toy scenario")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    rows = run(args.base, args.rounds, args.seconds, args.callers, args.quick)
    print(table(rows))
    print(f"({time.perf_counter() - began:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
