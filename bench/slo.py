"""SLO-adaptive batching against fixed batch windows: throughput and p99 of Augur with
model.yaml `slo: {p99_ms: N}` and with each fixed window, at several closed-loop caller
counts in one run per server, so the load changes while each server runs.

    python -m bench.slo [--models lightgbm,torch] [--rounds 2] [--seconds 3] [--p99-ms 5]
                        [--windows 0,250,500,1000,2000] [--callers 1,4,16,64] [--quick]

For each model (the fraud scenario's LightGBM model compiled by lleaves, and `augur train`'s
torch MLP on the CPU) it starts, in turn, `augur serve` batching up to 64 rows with each
fixed window (server.batch_max_delay_us), then with the model's `slo` instead, whose
controller (augur/serving/slo.py) picks window and cap itself. Each server meets the same
steps of 1-row Predicts from bench/load.py: 1, 4, 16 and 64 closed-loop callers, then 4
again right after 64 (the load dropping mid-run), `--seconds` each. The table gives each
step's calls/s and p99 per server, the SLO server's throughput over the best fixed window's,
and whether it held the objective where some fixed window did. The servers run in
alternating order over `--rounds` rounds (A..F, F..A) and each cell is the median over the
rounds: these machines drift by tens of percent within minutes. Read the ratios, not the
absolute figures. Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from augur.features.redis_server import EmbeddedRedis, free_port
from bench import scenarios, targets
from bench.harness import _subprocess

CAP_ROWS = 64  # every server's batch cap (the SLO's controller picks below it)
STEP_DOWN = "64>4"  # the step that follows 64 callers with 4: load dropping mid-run


def run(
    models: list[str],
    windows_us: list[int],
    callers: list[int],
    seconds: float,
    p99_ms: float,
    quick: bool = False,
    rounds: int = 2,
) -> list[dict]:
    """One row per model, server and step; every process started is gone when this returns."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="augur-slo-") as tmp:
        work = Path(tmp)
        with EmbeddedRedis(data_dir=work / "redis") as redis:
            base = scenarios.build("fraud", work, redis.address, quick)
            for kind in models:
                if kind == "torch":
                    scenario = scenarios.serve_mlp(base, "cpu")
                else:
                    scenario = base
                    scenarios.set_compile(scenario, "lleaves")
                pool = scenarios.requests(scenario, 1, 256)
                servers = [(f"fixed {w} us", {"batch_max_delay_us": w}, None) for w in windows_us]
                servers.append((f"slo {p99_ms:g} ms", {}, p99_ms))
                turns = [
                    (r, server)
                    for r in range(rounds)
                    for server in (servers if r % 2 == 0 else servers[::-1])
                ]
                for round_, (name, options, objective) in turns:
                    began = time.perf_counter()
                    _set_slo(scenario, objective)
                    try:
                        steps = _measure(
                            name, options, scenario, pool, callers, seconds, work, redis
                        )
                    finally:
                        _set_slo(scenario, None)
                    for step, measured in steps:
                        rows.append(
                            {"model": kind, "server": name, "step": step, "round": round_}
                            | measured
                        )
                    print(
                        f"[{kind}, round {round_ + 1}] {name}: {time.perf_counter() - began:.0f}s",
                        file=sys.stderr,
                        flush=True,
                    )
    return rows


def _set_slo(scenario: scenarios.Scenario, p99_ms: float | None) -> None:
    import yaml

    path = scenario.model_repo / scenario.model / "model.yaml"
    raw = yaml.safe_load(path.read_text())
    raw.pop("slo", None)
    if p99_ms is not None:
        raw["slo"] = {"p99_ms": p99_ms}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _measure(name, options, scenario, pool, callers, seconds, work: Path, redis) -> list:
    port = free_port()
    options = {"batch_max_rows": CAP_ROWS, **options, "metrics_port": 0}
    slug = name.replace(" ", "-")
    command = targets.augur_command(scenario, work / f"{slug}.yaml", port, options)
    server = targets.start(name, command, port, scenario.model, work)
    labels = [str(c) for c in callers]
    counts = list(callers)
    if 64 in callers and 4 in callers:
        labels.append(STEP_DOWN)
        counts.append(4)
    try:
        steps = [
            {
                "rows": 1,
                "mode": "closed",
                "concurrency": c,
                "max_requests": 10**6,
                "max_seconds": seconds,
            }
            for c in counts
        ]
        plan = targets.load_plan(
            {name: server},
            scenario.model,
            {"1": pool},
            steps,
            warmup_seconds=min(2.0, seconds),
            redis_pid=redis.process.pid,
        )
        out = _subprocess("bench.load", plan, work / f"load-{slug}", seconds * len(steps) + 120)
    finally:
        server.stop()
    measured = json.loads(out)
    return [
        (label, {k: m.get(k) for k in ("throughput_rps", "p50_ms", "p99_ms", "ok")})
        for label, m in zip(labels, measured, strict=True)
    ]


def table(rows: list[dict], p99_ms: float) -> str:
    """Per model and step: each server's calls/s and p99, the SLO server against the best
    fixed window, and whether it held the objective where a fixed window did."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        names = list(dict.fromkeys(r["server"] for r in mine))
        fixed = [n for n in names if n.startswith("fixed")]
        adaptive = next(n for n in names if n.startswith("slo"))
        lines += [
            f"\n{model}: calls/s (p99 ms) per step of closed-loop callers; objective "
            f"p99 {p99_ms:g} ms",
            "",
            "| callers | " + " | ".join(names) + " | slo / best fixed | objective held |",
            "| --- " * (len(names) + 3) + "|",
        ]
        for step in dict.fromkeys(r["step"] for r in mine):
            at = {
                n: _median([r for r in mine if r["step"] == step and r["server"] == n])
                for n in names
            }
            cells = [f"{at[n]['throughput_rps']:.0f} ({at[n]['p99_ms'] or 0:.2f})" for n in names]
            best = max(at[n]["throughput_rps"] for n in fixed)
            ratio = at[adaptive]["throughput_rps"] / best if best else 0.0
            any_held = any((at[n]["p99_ms"] or 1e9) <= p99_ms for n in fixed)
            held = (at[adaptive]["p99_ms"] or 1e9) <= p99_ms
            verdict = "yes" if held else ("NO" if any_held else "none did")
            lines.append(f"| {step} | " + " | ".join(cells) + f" | {ratio:.2f}x | {verdict} |")
    return "\n".join(lines)


def _median(rows: list[dict]) -> dict:
    """The median throughput and p99 of one cell's rounds."""
    return {
        k: statistics.median([r[k] if r[k] is not None else 1e9 for r in rows])
        for k in ("throughput_rps", "p99_ms")
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lightgbm,torch", help="lightgbm,torch (both)")
    parser.add_argument("--windows", default="0,250,500,1000,2000", help="fixed windows, us")
    parser.add_argument("--callers", default="1,4,16,64", help="closed-loop callers per step")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per step (3)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (2)")
    parser.add_argument("--p99-ms", type=float, default=5.0, help="the SLO server's objective")
    parser.add_argument("--quick", action="store_true", help="a toy scenario: the smoke test")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = run(
        args.models.split(","),
        [int(w) for w in args.windows.split(",")],
        [int(c) for c in args.callers.split(",")],
        args.seconds,
        args.p99_ms,
        args.quick,
        args.rounds,
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(table(rows, args.p99_ms))


if __name__ == "__main__":
    main()
