"""The benchmark harness: one scenario, every server and floor, measured in the same run.

    python -m bench.harness --scenario fraud|wide [--quick] [--augur OPTION=VALUE ...]

What each scenario measures is its profile (bench/profiles.py). Builds the scenario in a
temporary folder on a private Redis (bench/scenarios.py), times the in-process floors
(bench/inprocess.py), then starts each server as its own process in turn - Augur (`augur
serve`), the Feast baseline (bench/baseline_server.py), the gRPC echo floor
(bench/echo_server.py) - and drives Predict at it from a load generator process
(bench/load.py): closed loop at several concurrencies and open loop at fixed rates, the
same requests for every server. Then the paired comparisons: the servers compared directly
(Augur against the echo floors at one caller; against itself with dynamic batching on and
with two server processes) are started together and loaded in alternating turns at each
point, so that both sides of a ratio meet the same drift of the machine. Writes
bench/results/<scenario>.json, .md (bench/report.py) and .png (bench/plot.py). MLServer alone
(bench/model_server.py) serving the same model, the features in each request, is paired
with Augur at the 100-row points; where its virtualenv cannot be built the run says so in
one line and goes on without it. `--quick` is a tiny version for the smoke test.
`--augur processes=2` sets an Augur server option for the run (any `server.*` option of
augur.yaml). Augur serves the model as a user's model.yaml does by default (`compile: auto`:
once busy, the forest compiled by lleaves; the scenario's build compiles it, as the server
would a few seconds into its traffic); `--compile none` measures LightGBM's own predictor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml

from augur.features.redis_server import EmbeddedRedis, free_port
from bench import inprocess, model_server, report, scenarios, targets
from bench.compare import AUGUR, BASELINE, CEILING, LABELS, MLSERVER, TARGETS, echo_server
from bench.plot import plot
from bench.profiles import PROFILES, QUICK, QUICK_VARIANTS, VARIANTS, Profile

RESULTS = Path(__file__).parent / "results"


def _say(began: float, message: str) -> None:
    """A progress line on stderr: seconds since the run began, then what happens next."""
    print(f"[{time.perf_counter() - began:6.1f}s] {message}", file=sys.stderr, flush=True)


def run(
    name: str,
    quick: bool,
    augur_options: dict,
    command: str,
    workdir: Path | None = None,
    compile_model: str = "auto",
) -> dict:
    """Build, measure, and return the result; the temporary folder (under `workdir`, else
    the system's) and every process started are gone when this returns."""
    profile = QUICK if quick else PROFILES[name]
    started = time.perf_counter()
    code = _code_version()
    profile, skipped = _without_unavailable(profile, started)
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"augur-bench-{name}-", dir=workdir))
    try:
        with EmbeddedRedis(data_dir=work / "redis") as redis:
            _say(started, f"building the {name} scenario in {work}")
            scenario = scenarios.build(name, work, redis.address, quick)
            scenarios.set_compile(scenario, compile_model)
            sizes = sorted(set(profile.rows) | set(profile.inprocess_repeats))
            pools = {  # sizes timed only in process need fewer distinct requests
                n: scenarios.requests(scenario, n, profile.pool if n in profile.rows else 32)
                for n in sizes
            }
            _say(started, "in-process floors and read paths")
            measured = _inprocess(scenario, pools, profile, work)
            servers, series = {}, {}
            for target in TARGETS:
                _say(started, f"{LABELS[target]}: start, then load")
                servers[target], series[target] = _serve_and_load(
                    target,
                    scenario,
                    pools,
                    profile,
                    augur_options,
                    work,
                    redis.process.pid,
                )
            variants = QUICK_VARIANTS if quick else VARIANTS
            _say(started, "paired comparisons: " + ", ".join(profile.paired))
            paired = _paired(
                scenario, pools, profile, augur_options, variants, work, redis.process.pid
            )
        result = {
            "scenario": name,
            "quick": quick,
            "command": command,
            "code": code,
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "described": scenario.described,
            "build_s": {k: round(v, 1) for k, v in scenario.build_s.items()},
            "materialization": scenario.materialization,
            "augur_server_options": {**targets.AUGUR_SERVER, **augur_options},
            "profile": {
                "concurrency": profile.concurrency,
                "rates": profile.rates,
                "step_seconds": profile.step_seconds,
                "step_requests": profile.step_requests,
                "inprocess_repeats": profile.inprocess_repeats,
                "mlserver_goal_callers": profile.mlserver_goal_callers,
            },
            "skipped": skipped,
            "servers": servers,
            "series": series,
            "paired": paired,
            "inprocess": measured,
            "compile": compile_model,
        }
        _say(started, "done")
        result["ratios"] = report.ratios(result)
        result["total_s"] = round(time.perf_counter() - started, 1)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _code_version() -> dict:
    """The commit measured and the tracked files changed since (read-only git calls)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=targets.ROOT, capture_output=True, text=True, timeout=30
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
        return {"commit": git("rev-parse", "--short", "HEAD"), "changed": changed}
    except (OSError, subprocess.TimeoutExpired):
        return {}


def _without_unavailable(profile: Profile, began: float) -> tuple[Profile, dict]:
    """The profile without the MLServer comparison when MLServer cannot be installed here,
    and why (one line, said now); its virtualenv is built first (minutes on a fresh clone,
    then cached), before anything is timed."""
    if MLSERVER not in profile.paired:
        return profile, {}
    _say(began, "MLServer alone: its virtualenv (.venv-mlserver)")
    reason = model_server.unavailable()
    if reason is None:
        return profile, {}
    _say(began, f"MLServer-alone baseline skipped: {reason}")
    paired = {k: v for k, v in profile.paired.items() if MLSERVER not in v[0]}
    return replace(profile, paired=paired), {MLSERVER: reason}


def _inprocess(scenario, pools: dict, profile: Profile, work: Path) -> dict:
    """Floors and Augur's read path in a clean process; Feast's read path in this one, in
    turns with Augur's read there (the two sides of the Feast ratio)."""
    from augur.features.repo import build_plan, open_store

    store = open_store(scenario.feature_repo, scenario.redis_address)
    plan = build_plan(store, scenario.feature_service)
    (work / "plan.json").write_text(plan.to_json())
    sizes = {str(n): pools[n] for n in profile.inprocess_repeats}
    repeats = {str(n): r for n, r in profile.inprocess_repeats.items()}
    spec = {
        "plan": str(work / "plan.json"),
        "redis_address": scenario.redis_address,
        "model_repo": str(scenario.model_repo),
        "model": scenario.model,
        "requests": sizes,
        "repeats": repeats,
    }
    measured = json.loads(_subprocess("bench.inprocess", spec, work / "inprocess", 600))
    feast = inprocess.feast_read(
        scenario.feature_repo,
        scenario.redis_address,
        scenario.feature_service,
        sizes,
        {k: max(v // 4, 5) for k, v in repeats.items()},
        plan,
    )
    return {size: {**measured[size], **feast[size]} for size in sizes}


def _command(target: str, scenario, port: int, pools, options: dict, work: Path) -> list[str]:
    """How to start `target`: the Feast baseline, one of the echo floors, or else Augur
    with the server `options` (the main series' and each variant's)."""
    if target == BASELINE:
        return targets.baseline_command(scenario, port, pools[1][0]["entities"])
    echo = echo_server(target)
    if echo is not None:
        redis, kind, workers = echo
        plan = work / "plan.json" if redis else None
        return targets.echo_command(scenario, port, plan, kind, workers)
    if target == CEILING:
        # one process: the instrument patches the servicer in the process it starts
        one = {**options, "processes": 1}
        return targets.ceiling_command(scenario, work / f"{target}.yaml", port, one)
    return targets.augur_command(scenario, work / f"{target}.yaml", port, options)


def _serve_and_load(
    target, scenario, pools, profile: Profile, augur_options, work: Path, redis_pid: int
) -> tuple[dict, list]:
    """Start `target`, run the main series of steps at it, stop it."""
    port = free_port()
    command = _command(target, scenario, port, pools, augur_options, work)
    server = targets.start(target, command, port, scenario.model, work)
    try:
        series = _load({target: server}, scenario, pools, profile, profile.steps(), work, redis_pid)
        info = _server_info(server)
    finally:
        server.stop()
    return info, series


def _paired(
    scenario, pools, profile: Profile, augur_options, variants, work: Path, redis_pid: int
) -> dict:
    """Start every server the paired comparisons name, all at once (the idle ones wait for
    calls, costing nothing), load them in paired steps from one load generator, stop them."""
    names = dict.fromkeys(name for servers, _ in profile.paired.values() for name in servers)
    servers = {}
    try:
        for name in names:
            if name == MLSERVER:
                servers[name] = model_server.start(scenario, work)
                continue
            port = free_port()
            options = {**augur_options, **variants.get(name, {})}
            command = _command(name, scenario, port, pools, options, work)
            servers[name] = targets.start(name, command, port, scenario.model, work)
        if MLSERVER in servers:  # the features of the same requests, as Augur assembles them
            sizes = {n: pools[n] for n, _ in profile.paired[MLSERVER][1]}
            features = model_server.feature_pools(
                servers[AUGUR].address, servers[MLSERVER].address, scenario.model, sizes
            )
            servers[MLSERVER].load = {"protocol": "oip", "pools": features}
        steps = profile.paired_steps()
        measured = _load(servers, scenario, pools, profile, steps, work, redis_pid)
        info = {name: _server_info(server) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    comparisons: dict[str, list] = {name: [] for name in profile.paired}
    for entry in measured:
        comparisons[entry.pop("comparison")].append(entry)
    return {
        "rounds": profile.rounds,
        "options": {name: variants[name] for name in names if name in variants},
        "servers": info,
        "comparisons": comparisons,
    }


def _load(servers: dict, scenario, pools, profile: Profile, steps, work: Path, redis_pid: int):
    """Run `steps` at `servers` (name -> ServerProcess) from the load generator's process."""
    plan = targets.load_plan(
        servers,
        scenario.model,
        {str(n): pools[n] for n in sorted({s["rows"] for s in steps})},
        steps,
        warmup_requests=20 if profile is QUICK else 200,
        redis_pid=redis_pid,
    )
    turns = sum(len(s["targets"]) * s["rounds"] if "targets" in s else 1 for s in steps)
    budget = turns * (max(s["max_seconds"] for s in steps) + 12) + 120 * len(servers)
    stem = work / ("load-" + "-".join(servers))
    return json.loads(_subprocess("bench.load", plan, stem, budget))


def _server_info(server: targets.ServerProcess) -> dict:
    """Ready time, and resident memory at ready, now and at its peak."""
    return {
        "ready_s": round(server.ready_s, 3),
        "rss_ready_mb": server.rss_ready_mb,
        "rss_after_load_mb": server.rss_mb(),
        "rss_peak_mb": server.rss_mb(peak=True),
    }


def _subprocess(module: str, spec: dict, stem: Path, timeout_s: float) -> str:
    """Run `python -m module SPEC OUT` in its own process; return what it wrote to OUT."""
    spec_path, out_path = stem.with_suffix(".in.json"), stem.with_suffix(".out.json")
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-m", module, str(spec_path), str(out_path)],
        cwd=targets.ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if done.returncode:
        raise RuntimeError(f"{module} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return out_path.read_text()


def write(result: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = result["scenario"] + ("-quick" if result["quick"] else "")
    written = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    written[0].write_text(json.dumps(result, indent=2) + "\n")
    written[1].write_text(report.markdown(result))
    if plot(result, out_dir / f"{stem}.png"):
        written.append(out_dir / f"{stem}.png")
    return written


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--augur {pair!r}: expected OPTION=VALUE, e.g. processes=2")
        out[key.removeprefix("server.")] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("fraud", "wide"), default="fraud")
    parser.add_argument("--quick", action="store_true", help="tiny and fast: the smoke test")
    parser.add_argument("--augur", action="append", default=[], metavar="OPTION=VALUE")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--workdir", type=Path, help="where the temporary scenario folder goes")
    parser.add_argument(
        "--compile",
        choices=("auto", "lleaves", "none"),
        default="auto",
        help="how Augur runs the LightGBM model (model.yaml `compile`; the default, auto, is a "
        "user's default: compiled once busy); the Feast baseline always calls LightGBM's own "
        "predict, as a user would today (default: auto)",
    )
    args = parser.parse_args(argv)
    command = "python -m bench.harness " + " ".join(argv if argv is not None else sys.argv[1:])
    result = run(
        args.scenario,
        args.quick,
        _options(args.augur),
        command.strip(),
        args.workdir,
        args.compile,
    )
    for path in write(result, args.out):
        print(f"wrote {path}")
    print()
    print(report.markdown(result))


if __name__ == "__main__":
    main()
