"""Where one caller's 1-row Predict spends the server's CPU: a sampling profile, by stage.

    python -m bench.profile_predict [--scenario fraud] [--calls 4000] [--rate 1000]
        [--augur OPTION=VALUE ...] [--out bench/results]

Builds the scenario (bench/scenarios.py, the quick size unless `--full`), starts `augur
serve` as a user runs it (the defaults, but for the metrics port), and drives it from this
process with one caller sending 1-row Predict calls back to back while py-spy samples the
server (`--native`, so time in C extensions is seen; idle threads are not sampled). Each
sample is given to one stage by the innermost frame that a rule of STAGES claims, and each
stage's share of the samples times the server's CPU seconds per call (from /proc) gives its
microseconds per call. Shares are what this is for: on shared cores the absolute figures
move with the machine, the proportions much less. Writes <out>/profile-<scenario>.md.
Needs py-spy (`pip install py-spy`) and the right to ptrace the server (root, or
kernel.yama.ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

from augur.features.redis_server import EmbeddedRedis, free_port
from bench import scenarios, targets
from bench.compare import ECHO_KINDS
from bench.harness import RESULTS, _options
from bench.load import request

# (stage, what a frame's text contains), tried from the innermost frame out: the first rule
# any frame of a sample matches names its stage. Order matters within a frame only.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("metrics", ("prometheus_client", "augur/serving/metrics.py")),
    ("model call", ("augur/serving/runtimes/", "lleaves", "lightgbm", "lib_lightgbm")),
    ("Redis round trip", ("augur/features/resp.py", "augur/features/fetch.py")),
    ("decode", ("augur/features/decode.py", "augur/features/native_read.py", "_native")),
    ("assemble", ("augur/features/rows.py", "augur/features/ragged.py", "augur/features/packed")),
    ("entities and keys", ("augur/features/entities.py", "augur/features/keys.py", "commands.py")),
    ("read (other)", ("augur/features/",)),
    (
        "admission and batching",
        (
            "augur/serving/admission.py",
            "augur/serving/lanes.py",
            "augur/serving/batcher.py",
            "augur/serving/chunks.py",
        ),
    ),
    ("routing", ("augur/serving/routing.py", "augur/serving/models.py")),
    ("scoring glue", ("augur/serving/scoring.py", "augur/serving/feature_read.py")),
    (
        "request decode / reply encode",
        ("augur/serving/codec.py", "FromString", "SerializeToString", "_deserialize", "_serialize"),
    ),
    (
        "servicer",
        (
            "augur/serving/servicer.py",
            "augur/serving/deadlines.py",
            "augur/serving/errors.py",
            "augur/serving/security.py",
        ),
    ),
    (
        "green pool loop",
        (
            "augur/serving/green.py",
            "augur/serving/hub.py",
            "augur/serving/grpc_patch.py",
            "greenlet",
        ),
    ),
    ("gRPC (Python and C core)", ("grpc/", "cygrpc", "libgrpc", "_cython")),
)
OTHER = "other (interpreter, allocator, kernel)"
# A sample whose innermost frame is one of these is a thread waiting for work (gRPC's
# completion queue, the hub's select over parked sockets, a condition), not working: py-spy's
# own idle test misses some of them in --nonblocking mode.
IDLE = ("ServerEvents.wait", "Hub.poll_sockets", "Event.wait", "Condition.wait", "Queue.get")
WAITING = "waiting for work (not counted)"


def stage_of(stack: list[str]) -> str:
    """The stage of one sample: `stack` from the outermost frame to the innermost."""
    for frame in reversed(stack):
        for stage, needles in STAGES:
            if any(n in frame for n in needles):
                return stage
    return OTHER


def collapsed(path: Path) -> Counter:
    """py-spy's raw output (`frame;frame;... count` per line) as stage -> samples."""
    stages: Counter = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not (stack and count.isdigit()):
            continue
        frames = stack.split(";")
        idle = any(frames[-1].startswith(i) for i in IDLE)
        stages[WAITING if idle else stage_of(frames)] += int(count)
    return stages


def drive(address: str, model: str, pool: list[dict], calls: int) -> float:
    """`calls` 1-row Predicts back to back from one caller; seconds they took."""
    import grpc

    from augur.api.v1 import predictor_pb2_grpc as pb_grpc

    requests = [request(model, r) for r in pool]
    with grpc.insecure_channel(address) as channel:
        predict = pb_grpc.PredictorStub(channel).Predict
        for r in requests * 2:  # warm: connections, caches, lazy imports
            predict(r, timeout=10)
        began = time.perf_counter()
        for i in range(calls):
            predict(requests[i % len(requests)], timeout=10)
        return time.perf_counter() - began


def cpu_per_call(server: targets.ServerProcess, model: str, pool: list[dict], calls: int):
    """(ms a call as the caller sees it, us of the server's CPU a call) for `calls` calls."""
    cpu = psutil.Process(server.process.pid)
    drive(server.address, model, pool, 200)
    before = sum(cpu.cpu_times()[:2])
    seconds = drive(server.address, model, pool, calls)
    return seconds / calls * 1000, (sum(cpu.cpu_times()[:2]) - before) / calls * 1e6


def floors(scenario, pool: list[dict], calls: int, work: Path) -> dict:
    """Each candidate echo floor making the request's Redis round trip (bench/echo_server.py),
    measured as Augur was, without the sampler: what the same work costs with nothing of
    Augur's in it."""
    from augur.features.repo import build_plan, open_store

    plan = work / "plan.json"
    plan.write_text(
        build_plan(open_store(scenario.feature_repo), scenario.feature_service).to_json()
    )
    out = {}
    for name, (kind, workers) in ECHO_KINDS.items():
        port = free_port()
        command = targets.echo_command(scenario, port, plan, kind, workers)
        server = targets.start(f"echo_redis_{name}", command, port, scenario.model, work)
        try:
            out[name] = cpu_per_call(server, scenario.model, pool, calls)
        finally:
            server.stop()
    return out


def profile(name: str, full: bool, calls: int, rate: int, options: dict, work: Path) -> dict:
    """Build, serve, profile; the stages' samples and the server's CPU per call."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    with EmbeddedRedis(data_dir=work / "redis") as redis:
        scenario = scenarios.build(name, work, redis.address, quick=not full)
        pool = scenarios.requests(scenario, 1, 256)
        port = free_port()
        command = targets.augur_command(scenario, work / "augur.yaml", port, options)
        server = targets.start("augur", command, port, scenario.model, work)
        try:
            plain = cpu_per_call(server, scenario.model, pool, calls)  # without the sampler
            raw = work / "profile.txt"
            sampler = subprocess.Popen(
                [spy, "record", "--nonblocking", "--rate", str(rate), "--format", "raw",
                 "--output", str(raw), "--pid", str(server.process.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(1.0)  # py-spy attaches
            cpu = psutil.Process(server.process.pid)
            before = sum(cpu.cpu_times()[:2])
            seconds = drive(server.address, scenario.model, pool, calls)
            spent = sum(cpu.cpu_times()[:2]) - before
            sampler.send_signal(2)  # py-spy writes its output on SIGINT
            _, err = sampler.communicate(timeout=60)
            if not raw.exists():
                raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-2000:]}")
        finally:
            server.stop()
        echo = floors(scenario, pool, calls, work)
        if os.environ.get("AUGUR_PROFILE_KEEP"):
            shutil.copy(raw, os.environ["AUGUR_PROFILE_KEEP"])
    return {
        "scenario": name,
        "calls": calls,
        "p_call_ms": seconds / calls * 1000,
        "server_cpu_us_per_call": spent / calls * 1e6,
        "stages": dict(collapsed(raw)),
        "unsampled_ms_us": plain,
        "floors_ms_us": echo,
        "options": {**targets.AUGUR_SERVER, **options},
    }


def markdown(result: dict) -> str:
    stages = {k: v for k, v in result["stages"].items() if k != WAITING}
    total = sum(stages.values()) or 1
    per_call = result["server_cpu_us_per_call"]
    lines = [
        f"## Where a 1-row Predict's server CPU goes ({result['scenario']})",
        "",
        f"{result['calls']} calls from one caller, back to back: {result['p_call_ms']:.3f} ms "
        f"a call seen by the caller, {per_call:.0f} us of server CPU a call. Server options: "
        f"{result['options']}. Command: `python -m bench.profile_predict`.",
        "",
        "| stage | share of samples | us per call |",
        "| --- | ---: | ---: |",
    ]
    for stage, n in sorted(stages.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {stage} | {n / total:.1%} | {n / total * per_call:.0f} |")
    ms, us = result["unsampled_ms_us"]
    lines += [
        "",
        "Without the sampler, and the echo + Redis floors measured the same way (each server "
        "answering a canned reply after the request's Redis round trip, bench/echo_server.py):",
        "",
        "| server | ms a call (caller) | server CPU us a call | CPU vs Augur's |",
        "| --- | ---: | ---: | ---: |",
        f"| Augur | {ms:.3f} | {us:.0f} | 1.00 |",
    ]
    for name, (f_ms, f_us) in result["floors_ms_us"].items():
        lines.append(f"| echo + Redis, {name} | {f_ms:.3f} | {f_us:.0f} | {f_us / us:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("fraud", "wide"), default="fraud")
    parser.add_argument("--full", action="store_true", help="the full-size scenario")
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--augur", action="append", default=[], metavar="OPTION=VALUE")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="augur-profile-"))
    try:
        result = profile(
            args.scenario, args.full, args.calls, args.rate, _options(args.augur), work
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"profile-{args.scenario}.md"
    path.write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
