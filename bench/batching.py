"""Where dynamic batching's throughput goes: Augur with batching off (on gRPC's polling
thread, as it serves, and on a thread pool), with batching on (on the polling thread, as it
serves), with batching on a thread pool, and with each call's read, assembly and model call
made free, in alternating rounds.

    python -m bench.batching [--scenario fraud|wide] [--rounds 3] [--callers 64] [--seconds 5]
                             [--rows 1] [--torch cpu|cuda]

Each round starts, in turn: `augur serve` with batching off, its calls run as greenlets on
gRPC's polling thread (augur/serving/green.py); the same with each call handed to one of two
handler threads instead (server.handlers: threads); with batching on as `make bench` runs
it (server.batch_max_rows 64, batch_max_delay_us 1000), on the polling thread; the same on
a thread pool, one thread per call a batch may wait for, as Augur batched before the green
pool; and bench/ceiling_server.py, the server with batching off and the three stages
answered from memory, which is the throughput any batching could approach. Closed-loop
callers send 1-row Predicts (or `--rows` rows) from another process (bench/load.py), which
also reads the server's CPU time per call; calls per batch come from the server's own
metrics. These machines drift by tens of percent within minutes, so the rounds alternate
the servers and the ratios are taken within a round. Prints a Markdown table; not part of
`make bench`.

The servers serve the scenario's LightGBM model compiled by lleaves, as `make bench` does;
with `--torch DEVICE` (fraud only) they serve `augur train`'s torch MLP on that device
instead, trained on the scenario's data: on a GPU a model call costs launches and a
synchronisation whatever its rows, which is where batching earns most.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from augur.config import ServerConfig
from augur.features.redis_server import EmbeddedRedis, free_port
from bench import scenarios, targets
from bench.harness import _subprocess

BATCHING = {"batch_max_rows": 64, "batch_max_delay_us": 1000}
# name -> server options; "ceiling" is bench/ceiling_server.py with the options of "off"
SERVERS = {
    "off": {},
    "off-threads": {"handlers": "threads"},
    "batching": BATCHING,
    "batching-threads": {**BATCHING, "handlers": "threads"},
    "ceiling": {},
}
# The threads batching on a thread pool starts: one for each call a batch may wait for
POOL_THREADS = ServerConfig(**targets.AUGUR_SERVER, **SERVERS["batching-threads"]).handler_threads
COLUMNS = (
    "throughput_rps",
    "p50_ms",
    "p99_ms",
    "server_cpu_ms_per_req",
    "machine_busy_cores",
    "calls_per_batch",
    "reads_per_call",
)


def run(
    scenario_name: str,
    rounds: int,
    callers: int,
    seconds: float,
    quick: bool = False,
    workdir: Path | None = None,
    torch_device: str | None = None,
    request_rows: int = 1,
) -> list[dict]:
    """One row per server and round; the temporary folder and every process started are
    gone when this returns."""
    with tempfile.TemporaryDirectory(prefix="augur-batching-", dir=workdir) as tmp:
        work = Path(tmp)
        with EmbeddedRedis(data_dir=work / "redis") as redis:
            scenario = scenarios.build(scenario_name, work, redis.address, quick)
            if torch_device:
                scenario = scenarios.serve_mlp(scenario, torch_device)
            else:
                scenarios.set_compile(scenario, "lleaves")
            pool = scenarios.requests(scenario, request_rows, 256)
            rows = []
            for round_ in range(rounds):
                for name, options in SERVERS.items():
                    began = time.perf_counter()
                    row = _measure(
                        name,
                        options,
                        scenario,
                        pool,
                        request_rows,
                        callers,
                        seconds,
                        work,
                        redis.process.pid,
                    )
                    rows.append({"round": round_, "server": name, **row})
                    print(
                        f"[round {round_ + 1}/{rounds}] {name}: {row['throughput_rps']:.0f} "
                        f"calls/s ({time.perf_counter() - began:.0f}s)",
                        file=sys.stderr,
                        flush=True,
                    )
            return rows


def _measure(
    name, options, scenario, pool, rows: int, callers, seconds, work: Path, redis_pid: int
) -> dict:
    port, metrics_port = free_port(), free_port()
    options = {**options, "metrics_port": metrics_port}
    command = (targets.ceiling_command if name == "ceiling" else targets.augur_command)(
        scenario, work / f"{name}.yaml", port, options
    )
    server = targets.start(name, command, port, scenario.model, work)
    try:
        step = {
            "rows": rows,
            "mode": "closed",
            "concurrency": callers,
            "max_requests": 10**6,
            "max_seconds": seconds,
        }
        plan = targets.load_plan(
            {name: server},
            scenario.model,
            {str(rows): pool},
            [step],
            warmup_seconds=min(2.0, seconds),
            redis_pid=redis_pid,
        )
        out = _subprocess("bench.load", plan, work / f"load-{name}", seconds + 120)
        (measured,) = json.loads(out)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
    finally:
        server.stop()
    calls = _sample(metrics, r'augur_requests_total\{(?=[^}]*method="Predict")(?=[^}]*code="OK")')
    return {
        "ok": measured["ok"],
        "errors": measured["errors"],
        **{k: measured[k] for k in COLUMNS[:5]},
        "calls_per_batch": _ratio(
            _sample(metrics, r"augur_batch_calls_sum\{"),
            _sample(metrics, r"augur_batch_calls_count\{"),
        ),
        # Feature reads the server made per call answered (warm-up included): 1 when each
        # call reads alone, 1/calls-per-batch when batched, ~0 for the ceiling server
        "reads_per_call": _ratio(
            _sample(metrics, r'augur_stage_latency_seconds_count\{[^}]*stage="features"'), calls
        ),
    }


def _sample(metrics: str, prefix: str) -> float:
    """The sum of the samples whose line matches the pattern `prefix` (0 when none)."""
    return sum(float(v) for v in re.findall(rf"^{prefix}[^\n]* (\S+)$", metrics, re.M))


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def table(rows: list[dict]) -> str:
    """Median of each column over the rounds, and throughput against batching off."""
    off = {r["round"]: r["throughput_rps"] for r in rows if r["server"] == "off"}
    lines = [
        "| server | calls/s | vs off (per round) | p50 ms | p99 ms | server CPU ms/call "
        "| cores busy | calls/batch | reads/call |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in SERVERS:
        mine = [r for r in rows if r["server"] == name]
        ratios = ", ".join(f"{r['throughput_rps'] / off[r['round']]:.2f}x" for r in mine)
        cells = [_median([r[c] for r in mine if r[c] is not None]) for c in COLUMNS]
        lines.append(
            f"| {name} | {cells[0]} | {ratios} | {cells[1]} | {cells[2]} | {cells[3]} "
            f"| {cells[4]} | {cells[5]} | {cells[6]} |"
        )
    return "\n".join(lines)


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.4g}" if values else "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("fraud", "wide"), default="fraud")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--callers", type=int, default=64, help="closed-loop callers (64)")
    parser.add_argument("--seconds", type=float, default=5.0, help="load per server (5 s)")
    parser.add_argument("--rows", type=int, default=1, help="entity rows per Predict (1)")
    parser.add_argument("--quick", action="store_true", help="a toy scenario: the smoke test")
    parser.add_argument("--workdir", type=Path, help="where the temporary scenario folder goes")
    parser.add_argument(
        "--torch",
        metavar="DEVICE",
        choices=("cpu", "cuda"),
        help="serve the fraud torch MLP on DEVICE (cpu, cuda) instead of the LightGBM model",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.callers < 1 or args.rows < 1 or args.seconds <= 0:
        parser.error("--rounds, --callers and --rows must be at least 1, --seconds above 0")
    if args.torch and args.scenario != "fraud":
        parser.error("--torch needs --scenario fraud (the wide scenario has no torch model)")
    rows = run(
        args.scenario,
        args.rounds,
        args.callers,
        args.seconds,
        args.quick,
        args.workdir,
        args.torch,
        args.rows,
    )
    for row in rows:
        print(json.dumps(row))
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
