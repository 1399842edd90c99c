"""One caller's 1-row Predict on another checkout of Augur against this one, beside the echo
floors, in one run: what a change did, measured on the same drift of the same cores.

    git worktree add /tmp/augur-before COMMIT
    (cd /tmp/augur-before && python setup.py build_ext --inplace)   # its C extension
    python -m bench.versus /tmp/augur-before [--rounds 16] [--calls 400] [--full]

Builds the fraud scenario (quick unless `--full`) on an embedded Redis, starts `augur serve`
from each checkout with the defaults (bench/targets.py's, as `make bench` does), and the
synchronous 1-thread and `grpc.aio` echo floors; then bench/load.py alternates the four
servers over `--rounds` turns of `--calls` one-caller calls each (A B C D, D C B A, ...).
Prints one line per server: p50, p99, the server's CPU a call, and the p50 over the fastest
echo's. The build compiles the model (bench/scenarios.py): this checkout serves it compiled,
as `compile: auto` does once busy; a checkout from before auto, through LightGBM's predict.
Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from augur.features.redis_server import EmbeddedRedis, free_port
from bench import scenarios, targets
from bench.harness import _subprocess

HERE = Path(__file__).resolve().parents[1]
ECHOES = {"echo, sync, 1 thread": "sync", "echo, grpc.aio": "aio"}


def run(before: Path, rounds: int, calls: int, quick: bool) -> list[dict]:
    """One entry per server (bench/load.py's), every process started gone on return."""
    with tempfile.TemporaryDirectory(prefix="augur-versus-") as tmp:
        work = Path(tmp)
        with EmbeddedRedis(data_dir=work / "redis") as redis:
            scenario = scenarios.build("fraud", work, redis.address, quick)
            servers: dict[str, targets.ServerProcess] = {}
            try:
                for key, name, root in (
                    ("before", f"Augur at {before}", before),
                    ("here", "Augur here", HERE),
                ):
                    port = free_port()
                    command = targets.augur_command(scenario, work / f"{key}.yaml", port, {})
                    servers[name] = targets.start(key, command, port, scenario.model, work, root)
                for name, kind in ECHOES.items():
                    port = free_port()
                    command = targets.echo_command(scenario, port, None, kind, 1)
                    servers[name] = targets.start(kind, command, port, scenario.model, work)
                step = {
                    "rows": 1,
                    "mode": "closed",
                    "concurrency": 1,
                    "targets": list(servers),
                    "rounds": rounds,
                    "max_requests": calls,
                    "max_seconds": 5.0,
                }
                pool = scenarios.requests(scenario, 1, 256)
                plan = targets.load_plan(
                    servers, scenario.model, {"1": pool}, [step], 400, redis_pid=redis.process.pid
                )
                budget = 4 * rounds * 20 + 240
                return json.loads(_subprocess("bench.load", plan, work / "load", budget))
            finally:
                for server in servers.values():
                    server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.versus",
        description="One caller's 1-row Predict: another checkout of Augur against this one, "
        "beside the echo floors, alternated in one run.",
    )
    parser.add_argument("before", type=Path, help="the other checkout, its C extension built")
    parser.add_argument("--rounds", type=int, default=16, help="turns each server takes")
    parser.add_argument("--calls", type=int, default=400, help="calls a turn")
    parser.add_argument("--full", action="store_true", help="the full fraud scenario")
    args = parser.parse_args(argv)
    if not (args.before / "augur").is_dir():
        parser.error(f"{args.before} is not a checkout of Augur (no augur/ in it)")
    entries = run(args.before.resolve(), args.rounds, args.calls, not args.full)
    floor = min(e["p50_ms"] for e in entries if e["target"] in ECHOES)
    for e in entries:
        print(
            f"{e['target']}: p50 {e['p50_ms']:.3f} ms, p99 {e['p99_ms']:.3f} ms, server CPU "
            f"{e['server_cpu_ms_per_req'] * 1e3:.0f} us a call, p50 {e['p50_ms'] / floor:.2f}x "
            "the fastest echo"
        )


if __name__ == "__main__":
    main()
