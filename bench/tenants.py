"""Tenant isolation against the machine's own floor: an interactive tenant's p99 alone, beside
a flood of another tenant on the same server, and beside the same flood on another server
process (what the best isolation, a process of its own, could give on the same cores).

    python -m bench.tenants [--rounds 5] [--calls 300] [--flood-callers 32] [--full]

Builds the fraud scenario (quick unless `--full`) on an embedded Redis and starts two
identical `augur serve` processes (the defaults, plus tenants `interactive` share 0.5
priority 10 and `batch` share 0.1 priority 0, as tests/test_tenants.py configures). The
victim, this process, sends 1-row Predicts as tenant `interactive` at 250 a second (100 ms
deadline) to server A, in three cases per round, in alternating order: alone; beside a
closed-loop flood of 32-row Predicts as tenant `batch` from a process of its own at server
A; beside the same flood at server B. The flood's client, B and Valkey share the cores with
A in the third case as in the second: the difference between them is what sharing A's
serving thread costs, the rest is the machine. Prints the medians over rounds of the
victim's p99 and goodput per case and their ratios to alone. Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import yaml

from augur.api.v1 import predictor_pb2_grpc as pb_grpc
from augur.features.redis_server import EmbeddedRedis, free_port
from bench import scenarios, targets
from bench.load import request

TENANTS = {
    "interactive": {"share": 0.5, "priority": 10},
    "batch": {"share": 0.1, "priority": 0},
}
VICTIM_EVERY_S = 0.004  # 250 calls a second
DEADLINE_S = 0.1
FLOOD_ROWS = 32
CASES = ("alone", "flood on the same server", "flood on another server")


def victim(address: str, requests: list, calls: int) -> tuple[float, float]:
    """(goodput: calls answered OK a second, p99 ms) of `calls` paced 1-row Predicts."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.PredictorStub(channel)
        latencies = []
        started = time.perf_counter()
        for k in range(calls):
            time.sleep(max(started + k * VICTIM_EVERY_S - time.perf_counter(), 0.0))
            began = time.perf_counter()
            try:
                stub.Predict(
                    requests[k % len(requests)],
                    timeout=DEADLINE_S,
                    metadata=[("tenant", "interactive")],
                )
            except grpc.RpcError:
                continue
            latencies.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - started
    p99 = float(np.percentile(latencies, 99)) * 1e3 if latencies else float("nan")
    return len(latencies) / elapsed, p99


def flood(address: str, model: str, seconds: float, callers: int, raw: list[dict]) -> None:
    """Closed-loop callers of tenant `batch` resending at once until `seconds` are up (run
    in a process of its own: `--flood`)."""
    requests = [request(model, r) for r in raw]
    end = time.monotonic() + seconds

    def caller(i: int) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.PredictorStub(channel)
            k = i
            while time.monotonic() < end:
                with contextlib.suppress(grpc.RpcError):
                    stub.Predict(
                        requests[k % len(requests)], timeout=0.2, metadata=[("tenant", "batch")]
                    )
                k += callers

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run(rounds: int, calls: int, flood_callers: int, quick: bool) -> dict[str, list]:
    """Case -> one (goodput, p99 ms) a round; every process started is gone on return."""
    measured: dict[str, list] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory(prefix="augur-tenants-") as tmp:
        work = Path(tmp)
        with EmbeddedRedis(data_dir=work / "redis") as redis:
            scenario = scenarios.build("fraud", work, redis.address, quick)
            spec = work / "flood.yaml"
            spec.write_text(yaml.safe_dump(scenarios.requests(scenario, FLOOD_ROWS, 64)))
            mine = [request(scenario.model, r) for r in scenarios.requests(scenario, 1, 256)]
            servers = []
            try:
                for name in ("A", "B"):
                    port = free_port()
                    config = work / f"{name}.yaml"
                    command = targets.augur_command(scenario, config, port, {})
                    raw = yaml.safe_load(config.read_text())
                    config.write_text(yaml.safe_dump({**raw, "tenants": TENANTS}))
                    servers.append(targets.start(name, command, port, scenario.model, work))
                a, b = servers
                victim(a.address, mine, calls)  # warm: connections, the model's first calls
                seconds = calls * VICTIM_EVERY_S + 3.0
                for r in range(rounds):
                    for case in CASES if r % 2 == 0 else reversed(CASES):
                        target = {CASES[1]: a, CASES[2]: b}.get(case)
                        flooding = None
                        if target is not None:
                            flooding = subprocess.Popen(
                                [sys.executable, "-m", "bench.tenants", "--flood",
                                 target.address, scenario.model, str(seconds),
                                 str(flood_callers), str(spec)],
                                cwd=targets.ROOT,
                            )  # fmt: skip
                            time.sleep(1.0)  # the flood at full strength
                        try:
                            measured[case].append(victim(a.address, mine, calls))
                        finally:
                            if flooding is not None:
                                flooding.kill()
                                flooding.wait()
                        print(f"round {r + 1} {case}: {measured[case][-1]}", file=sys.stderr)
            finally:
                for server in servers:
                    server.stop()
    return measured


def table(measured: dict[str, list]) -> str:
    alone_good = statistics.median(g for g, _ in measured[CASES[0]])
    alone_p99 = statistics.median(p for _, p in measured[CASES[0]])
    lines = [
        "| victim (tenant interactive, 250 calls/s) | goodput /s | p99 ms | p99 vs alone |",
        "| --- | ---: | ---: | ---: |",
    ]
    for case in CASES:
        good = statistics.median(g for g, _ in measured[case])
        p99 = statistics.median(p for _, p in measured[case])
        lines.append(
            f"| {case} | {good:.0f} ({good / alone_good:.2f}x) | {p99:.2f} | "
            f"{p99 / alone_p99:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--flood":
        address, model, seconds, callers, spec = argv[1:]
        flood(address, model, float(seconds), int(callers), yaml.safe_load(Path(spec).read_text()))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300, help="victim calls a case and round")
    parser.add_argument("--flood-callers", type=int, default=32)
    parser.add_argument("--full", action="store_true", help="the full fraud scenario")
    args = parser.parse_args(argv)
    measured = run(args.rounds, args.calls, args.flood_callers, quick=not args.full)
    print(f"`python -m bench.tenants {' '.join(argv)}`, medians of {args.rounds} rounds\n")
    print(table(measured))


if __name__ == "__main__":
    main()
