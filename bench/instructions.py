"""Instructions a 1-row Predict costs the server, counted by callgrind: a measure that does
not move with the machine, for changes too small for wall-clock time on shared cores.

    python -m bench.instructions [--before /tmp/augur-before] [--calls 1500]

Builds the quick fraud scenario on an embedded Redis, then serves it, one server at a time,
under `valgrind --tool=callgrind` with instrumentation off while it starts: `augur serve`
from this checkout (the defaults, as `make bench` runs it), from `--before` if given (another
checkout, its C extensions built), and the green echo + Redis floor (bench/echo_server.py:
the same Redis round trip, a canned reply). Each gets 300 uninstrumented and 500 instrumented
warm-up calls from one caller in another process, then its counters are zeroed and `--calls`
calls counted: instructions in the server process (every thread) per call. Two runs of one
build differ by a few percent (the calls' timing still decides how often the polling loop
turns). Under valgrind the model runs on LightGBM's own predictor: the compile cache's entry
names the host CPU, which valgrind reports differently. Needs valgrind (`apt install
valgrind`); about 5 minutes for three servers. Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from augur.features.redis_server import EmbeddedRedis, free_port
from bench import scenarios, targets
from bench.load import request

HERE = Path(__file__).resolve().parents[1]
WARM_CALLS, INSTRUMENTED_WARM_CALLS = 300, 500
_TOTAL = re.compile(r"^(?:summary|totals): (\d+)", re.M)


def _drive(address: str, model: str, pool: list[dict], calls: int) -> None:
    """`calls` 1-row Predicts back to back from one caller in a process of its own, so that
    none of the caller's work lands in the server's count."""
    import grpc

    from augur.api.v1 import predictor_pb2_grpc as pb_grpc

    requests = [request(model, r) for r in pool]
    with grpc.insecure_channel(address) as channel:
        predict = pb_grpc.PredictorStub(channel).Predict
        for i in range(calls):
            predict(requests[i % len(requests)], timeout=120)


def _caller(address: str, model: str, pool: list[dict], calls: int) -> None:
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(
        target=_drive, args=(address, model, pool, calls)
    )
    process.start()
    process.join(timeout=1800)
    if process.exitcode != 0:
        process.kill()
        raise RuntimeError(f"the caller failed (exit {process.exitcode})")


def count(name: str, command: list[str], port: int, scenario, pool, calls: int, work: Path,
          cwd: Path = HERE) -> int:  # fmt: skip
    """Instructions per call in the server `command` starts, under callgrind."""
    out = work / f"callgrind-{name}.out"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    server = targets.start(name, valgrind + command, port, scenario.model, work, cwd)
    pid = str(server.process.pid)
    try:
        _caller(server.address, scenario.model, pool, WARM_CALLS)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        _caller(server.address, scenario.model, pool, INSTRUMENTED_WARM_CALLS)
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        _caller(server.address, scenario.model, pool, calls)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        time.sleep(1.0)
    finally:
        server.stop()
    dumps = [p for p in work.glob(f"{out.name}.*") if p.suffix != ".out"]
    total = sum(int(m.group(1)) for p in dumps if (m := _TOTAL.search(p.read_text("latin-1"))))
    if not total:
        raise RuntimeError(f"callgrind wrote no counts for {name} (see {server.log})")
    return total // calls


def run(before: Path | None, calls: int) -> dict[str, int]:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt install valgrind")
    from augur.features.repo import build_plan, open_store

    with tempfile.TemporaryDirectory(prefix="augur-instructions-") as tmp:
        work = Path(tmp)
        with EmbeddedRedis(data_dir=work / "redis") as redis:
            scenario = scenarios.build("fraud", work, redis.address, quick=True)
            pool = scenarios.requests(scenario, 1, 256)
            plan = work / "plan.json"
            plan.write_text(
                build_plan(open_store(scenario.feature_repo), scenario.feature_service).to_json()
            )
            servers: list[tuple[str, Path | None]] = [("Augur here", HERE)]
            if before is not None:
                servers.append((f"Augur at {before}", before.resolve()))
            servers.append(("echo + Redis floor, green", None))
            result = {}
            for i, (name, root) in enumerate(servers):
                port = free_port()
                if root is None:
                    command = targets.echo_command(scenario, port, plan, "green", 1)
                    root = HERE
                else:
                    command = targets.augur_command(scenario, work / f"{i}.yaml", port, {})
                result[name] = count(f"s{i}", command, port, scenario, pool, calls, work, root)
                print(f"{name}: {result[name]:,} instructions a call", flush=True)
            return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions",
        description="Instructions a 1-row Predict costs the server, counted by callgrind, "
        "beside the echo + Redis floor's.",
    )
    parser.add_argument("--before", type=Path, help="another checkout, its C extensions built")
    parser.add_argument("--calls", type=int, default=1500, help="calls counted per server")
    args = parser.parse_args(argv)
    result = run(args.before, args.calls)
    floor = result["echo + Redis floor, green"]
    for name, n in result.items():
        print(f"| {name} | {n:,} | {n - floor:,} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
