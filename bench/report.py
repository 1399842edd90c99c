"""Turn one harness run into its ratios and its Markdown report.

Ratios compare points measured in the same run at the same load: Augur against the Feast
baseline (a: speedup, above 1 is better) and against the floors (c: how many times the
floor, 1 is the floor itself); bench/compare.py computes them, bench/goals.py checks the
performance issue's targets, bench/plot.py draws the plot. Pure functions of the result dict.
"""

from __future__ import annotations

from bench import model_server
from bench.compare import (
    FLOORS,
    LABELS,
    TARGETS,
    THREADS,
    beside_feast,
    breakdown,
    load_point,
    model_server_ratios,
    paired,
    ratio,
    variant_ratios,
)
from bench.goals import goal_lines, goals


def ratios(result: dict) -> dict:
    """Per load point (gRPC) and per request size (in-process)."""
    by_key = {
        t: {(s["rows"], load_point(s)): s for s in result["series"].get(t, [])} for t in TARGETS
    }
    grpc_points = []
    for key, a in by_key["augur"].items():
        b, e = by_key["baseline"].get(key, {}), by_key["echo"].get(key, {})
        grpc_points.append(
            {
                "rows": key[0],
                "load": key[1],
                "p50_speedup_vs_baseline": ratio(b.get("p50_ms"), a.get("p50_ms")),
                "p99_speedup_vs_baseline": ratio(b.get("p99_ms"), a.get("p99_ms")),
                "throughput_vs_baseline": ratio(a.get("throughput_rps"), b.get("throughput_rps")),
                "p50_vs_echo_floor": ratio(a.get("p50_ms"), e.get("p50_ms")),
                "p99_vs_echo_floor": ratio(a.get("p99_ms"), e.get("p99_ms")),
                "throughput_vs_echo_floor": ratio(a.get("throughput_rps"), e.get("throughput_rps")),
            }
        )
    inproc = {}
    for size, m in result["inprocess"].items():
        p50 = {name: v["p50_ms"] for name, v in m.items()}
        beside = beside_feast(m)
        inproc[size] = {
            "read_p50_vs_redis_floor": ratio(p50["augur_read"], p50["redis_floor"]),
            "read_p99_vs_redis_floor": ratio(m["augur_read"]["p99_ms"], m["redis_floor"]["p99_ms"]),
            "feast_read_p50_vs_augur_read": ratio(p50["feast_read"], beside["p50_ms"]),
            "feast_read_p99_vs_augur_read": ratio(m["feast_read"]["p99_ms"], beside["p99_ms"]),
            "model_share_of_pipeline_p50": ratio(p50["model"], p50["augur_pipeline"]),
        }
    variants = [
        {k: v for k, v in p.items() if k not in ("base", "step")} for p in variant_ratios(result)
    ]
    return {
        "grpc": grpc_points,
        "inprocess": inproc,
        "breakdown": breakdown(result),
        "variants": variants,
        "mlserver": model_server_ratios(result),
        "goals": goals(result),
    }


def _ms(step: dict | None) -> str:
    if not step or "p50_ms" not in step:
        return "-"
    return f"{step['p50_ms']:.2f} / {step['p99_ms']:.2f}"


def _rps(step: dict | None) -> str:
    return f"{step['throughput_rps']:,.0f}" if step else "-"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:g}x"


def _errors(steps: dict) -> str:
    out = []
    for target, step in steps.items():
        bad = dict(step.get("errors") or {})
        if step.get("dropped"):
            bad["dropped"] = step["dropped"]
        if bad:
            out.append(f"{target}: " + ", ".join(f"{k} {v}" for k, v in sorted(bad.items())))
    return "; ".join(out) or "-"


def markdown(result: dict) -> str:
    r = result["ratios"]
    d = result["described"]
    threads = any(THREADS in steps for steps in paired(result, FLOORS).values())
    lines = [
        f"## {result['scenario']}{' (quick)' if result['quick'] else ''}: "
        + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in d.items()),
        "",
        f"`{result['command']}` at commit {_commit(result.get('code') or {})} on "
        f"{result['machine']['cpus']} cores; total "
        f"{result['total_s']:.0f} s (build: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result["build_s"].items())
        + ").",
        "",
        f"Augur's model runs {_compiled(result.get('compile', 'none'))}; the Feast baseline "
        "calls LightGBM's own predict.",
        "",
        "Ratios compare points of this run at the same load: speedup vs baseline = baseline / "
        "Augur (above 1: Augur is faster; for req/s, Augur / baseline); vs floor = Augur / floor "
        "(1: Augur is at the floor). Every server runs alone, one process (unless `--augur "
        "processes=N`), beside the load generator on the same cores.",
        *goal_lines(result),
        "",
        "### Predict over gRPC (load generator in its own process; p50 / p99 ms, req/s)",
        "",
        "| rows | load | Augur | Augur req/s | Feast baseline | baseline req/s "
        "| echo floor | echo req/s | p50 speedup vs baseline | p99 speedup vs baseline "
        "| req/s vs baseline | p50 vs echo floor | req/s vs echo floor | not OK |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | --- |",
    ]
    series = {
        t: {(s["rows"], load_point(s)): s for s in result["series"].get(t, [])} for t in TARGETS
    }
    for point in r["grpc"]:
        key = (point["rows"], point["load"])
        steps = {t: series[t].get(key) for t in TARGETS}
        a, b, e = steps["augur"], steps["baseline"], steps["echo"]
        lines.append(
            f"| {key[0]} | {key[1]} | {_ms(a)} | {_rps(a)} | {_ms(b)} | {_rps(b)} | {_ms(e)} "
            f"| {_rps(e)} | {_x(point['p50_speedup_vs_baseline'])} "
            f"| {_x(point['p99_speedup_vs_baseline'])} | {_x(point['throughput_vs_baseline'])} "
            f"| {_x(point['p50_vs_echo_floor'])} | {_x(point['throughput_vs_echo_floor'])} "
            f"| {_errors({t: s for t, s in steps.items() if s})} |"
        )
    lines += [
        "",
        "### In process, no RPC (one caller; p50 / p99 ms)",
        "",
        "Redis floors: the same keys' round trip, no decoding, reading Feast's fields with "
        "HMGET, the whole hash with HGETALL, or Augur's packed vectors; ratios use the "
        'cheapest. "Augur read, fields" reads Feast\'s fields only (a store written by '
        "plain `feast materialize`). Everything but Feast's read is timed in one clean "
        "process, in alternating turns; Feast's read in the harness's process, in turns with "
        'Augur\'s read there ("Augur read beside Feast"), which the Feast ratios use.',
        "",
        "| rows | Redis floor (HMGET) | Redis floor (HGETALL) | Redis floor (vectors) "
        "| Augur read | Augur read, fields | Feast read | Augur read beside Feast "
        "| model alone | model alone, LightGBM predict | Augur read+assemble+predict "
        "| read vs Redis floor (p50 / p99) | Feast read vs Augur read (p50 / p99) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for size, m in result["inprocess"].items():
        q = r["inprocess"][size]
        lines.append(
            f"| {size} | {_ms(m.get('redis_floor_hmget'))} | {_ms(m.get('redis_floor_hgetall'))} "
            f"| {_ms(m.get('redis_floor_vectors'))} "
            f"| {_ms(m['augur_read'])} | {_ms(m.get('augur_read_fields'))} "
            f"| {_ms(m['feast_read'])} | {_ms(m.get('augur_read_beside_feast'))} "
            f"| {_ms(m['model'])} | {_ms(m.get('model_lightgbm'))} "
            f"| {_ms(m['augur_pipeline'])} "
            f"| {_x(q['read_p50_vs_redis_floor'])} / {_x(q['read_p99_vs_redis_floor'])} "
            f"| {_x(q['feast_read_p50_vs_augur_read'])} / "
            f"{_x(q['feast_read_p99_vs_augur_read'])} |"
        )
    lines += [
        "",
        "### One caller against the floors, and where its Predict time goes (paired, p50 ms)",
        "",
        f"Augur, {'Augur on a thread pool, ' if threads else ''}and every candidate echo "
        f"server in turns at each point ({_turns(result)}). The gRPC echo floor is the fastest "
        "of them at that point (p50): `grpc.aio`, the synchronous server on 1 and 2 handler "
        "threads, and Augur's green pool, each answering a canned reply of the right size "
        "(bench/echo_server.py; which one it was is in the floor's column, all of them in the "
        "next table). The echo + Redis floor is the fastest of the same servers making the "
        "request's Redis round trip (HMGET of its keys' vectors, nothing decoded) before it "
        "answers: what any server that reads the features pays."
        + (
            " On a thread pool (`server.handlers: threads`, batching off), gRPC's polling "
            "thread hands each call to one of two handler threads instead of running it."
            if threads
            else ""
        ),
        "",
        "| rows | Predict p50 / p99 | gRPC echo floor p50 / p99 | Predict vs echo (p50 / p99) "
        "| gRPC echo + Redis floor | Predict vs echo + Redis "
        "| read+assemble+predict in process | of which Redis floor | of which model "
        "| rest (servicer glue) | on a thread pool: p50 / p99 (p50 vs echo) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, b in r["breakdown"].items():
        with_redis = b.get("echo_redis_floor_p50_ms")
        on_threads = "-"
        if b.get("threads_p50_ms") is not None:
            on_threads = (
                f"{b['threads_p50_ms']:.2f} / {b['threads_p99_ms']:.2f} "
                f"({_x(b['threads_p50_vs_echo_floor'])})"
            )
        lines.append(
            f"| {size} | {b['predict_p50_ms']:.2f} / {b['predict_p99_ms']:.2f} "
            f"| {b['echo_floor_p50_ms']:.2f} / {b['echo_floor_p99_ms']:.2f} "
            f"({_floor_name(b.get('echo_floor_server'))}) "
            f"| {_x(b['p50_vs_echo_floor'])} / {_x(b['p99_vs_echo_floor'])} "
            f"| {'-' if with_redis is None else f'{with_redis:.2f}'} "
            f"({_floor_name(b.get('echo_redis_floor_server'))}) "
            f"| {_x(b.get('p50_vs_echo_redis_floor'))} "
            f"| {b['pipeline_p50_ms']:.2f} | {b['redis_floor_p50_ms']:.2f} "
            f"| {b['model_p50_ms']:.2f} | {b['rest_p50_ms']:.2f} | {on_threads} |"
        )
    lines += _candidate_lines(r["breakdown"])
    lines += [
        "",
        "### CPU per answered request at the highest closed-loop concurrency (ms)",
        "",
        "Redis and the machine's busy cores (every process, the kernel's work included) are"
        " from the Augur run.",
        "",
        "| rows | Augur server | baseline server | echo server | load generator (Augur run) "
        "| Redis (Augur run) | cores busy (Augur run) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, cpu in _cpu_at_peak(result).items():
        lines.append(
            f"| {size} | {cpu.get('augur', '-')} | {cpu.get('baseline', '-')} "
            f"| {cpu.get('echo', '-')} | {cpu.get('client', '-')} "
            f"| {cpu.get('redis', '-')} | {cpu.get('busy', '-')} |"
        )
    lines += [
        "",
        "### Server processes",
        "",
        "| server | ready (start to SERVING) | RSS at ready, MiB | RSS after load, MiB "
        "| peak RSS, MiB |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    both = [(LABELS[t], result["servers"].get(t)) for t in TARGETS]
    for name, server in (result.get("paired") or {}).get("servers", {}).items():
        both.append((f"paired: {LABELS.get(name, f'Augur, {name}')}", server))
    for label, server in both:
        if server:
            lines.append(
                f"| {label} | {server['ready_s']:.2f} s | {_rss(server['rss_ready_mb'])} "
                f"| {_rss(server['rss_after_load_mb'])} | {_rss(server['rss_peak_mb'])} |"
            )
    lines += _variant_lines(result) + model_server.report_lines(result, _turns(result))
    m = result.get("materialization")
    if m:
        lines += [
            "",
            "### Materialization (the whole history, each engine into an empty Redis)",
            "",
            "| rows | keys | Feast local engine | Augur writer | Augur vs Feast |",
            "| ---: | ---: | ---: | ---: | ---: |",
            f"| {m['rows']:,} | {m['keys']:,} | {m['feast_s']:.2f} s "
            f"({m['feast_rows_per_s']:,} rows/s) | {m['augur_s']:.2f} s "
            f"({m['augur_rows_per_s']:,} rows/s) | {_x(m['augur_vs_feast'])} |",
        ]
    return "\n".join(lines) + "\n"


def _variant_lines(result: dict) -> list[str]:
    points = variant_ratios(result)
    if not points:
        return []
    options = result["paired"]["options"]
    lines = [
        "",
        "### Serving variants (closed loop, paired with Augur as the run serves it)",
        "",
        "Options: " + "; ".join(f"{n}: {o}" for n, o in options.items()) + f". At each point "
        f"Augur and the variant took turns ({_turns(result)}).",
        "",
        "Cores busy: the machine's average over the point (every process). Cores allow: the"
        " machine's cores over the Augur point's busy cores, the most a variant can serve if"
        " each call costs the machine what it cost there: a bound on more processes, not on"
        " batching, whose purpose is to lower that cost. Batching's bound is the ceiling"
        " server, batching off with each call's read, assembly and model call answered from"
        " memory (bench/ceiling_server.py), which takes its turns beside the two.",
        "",
        "| variant | rows | callers | Augur req/s, p99 ms | variant req/s, p99 ms "
        "| req/s vs Augur | p99 vs Augur | cores busy (Augur / variant) | cores allow | not OK |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in points:
        base, step = p["base"], p["step"]
        lines.append(
            f"| {p['variant']} | {p['rows']} | {p['concurrency']} "
            f"| {base.get('throughput_rps', 0):,.0f}, {base.get('p99_ms', 0):.2f} "
            f"| {step.get('throughput_rps', 0):,.0f}, {step.get('p99_ms', 0):.2f} "
            f"| {_x(p['throughput_vs_base'])} | {_x(p['p99_vs_base'])} "
            f"| {_cores(base)} / {_cores(step)} | {_x(p.get('cores_allow_vs_base'))} "
            f"| {_errors({'variant': step})} |"
        )
    return lines


def _turns(result: dict) -> str:
    rounds = result["paired"]["rounds"]
    seconds = result["profile"]["step_seconds"] / rounds
    return f"{rounds} turns each of up to {seconds:g} s, in alternating order"


def _cores(step: dict) -> str:
    busy = step.get("machine_busy_cores")
    return "-" if busy is None else f"{busy:.2f}"


def _compiled(compiler: str) -> str:
    if compiler == "auto":  # the default
        return "as `compile: auto` runs it once busy: compiled with lleaves (the default)"
    if compiler == "lleaves":
        return "compiled with lleaves at load (`compile: lleaves`)"
    return "through LightGBM's own predict (`compile: none`)"


def _cpu_at_peak(result: dict) -> dict:
    out: dict = {}
    for target in TARGETS:
        closed = [s for s in result["series"].get(target, []) if s["mode"] == "closed"]
        for rows in sorted({s["rows"] for s in closed}):
            top = max((s for s in closed if s["rows"] == rows), key=lambda s: s["concurrency"])
            out.setdefault(rows, {})[target] = f"{top['server_cpu_ms_per_req']:.2f}"
            if target == "augur":
                out[rows]["client"] = f"{top['client_cpu_ms_per_req']:.2f}"
                if "redis_cpu_ms_per_req" in top:
                    out[rows]["redis"] = f"{top['redis_cpu_ms_per_req']:.3f}"
                if "machine_busy_cores" in top:
                    out[rows]["busy"] = f"{top['machine_busy_cores']:.2f}"
    return out


def _commit(code: dict) -> str:
    if not code.get("commit"):
        return "unknown"
    changed = len(code.get("changed") or ())
    return code["commit"] + (f" (+{changed} changed files)" if changed else "")


def _rss(by_pid: dict) -> str:
    return " + ".join(f"{v:.0f}" for v in by_pid.values()) or "-"


def _floor_name(name: str | None) -> str:
    """The echo server a floor came from, as the candidates table names it."""
    if not name:
        return "-"
    return name.removeprefix("echo_redis_").removeprefix("echo_") if "_" in name else "sync 8"


def _candidate_lines(breakdown: dict) -> list[str]:
    """Each candidate echo server's p50 at each size: which Python gRPC server is fastest."""
    names = sorted({c for b in breakdown.values() for c in b.get("echo_candidates_p50_ms", {})})
    if not names:
        return []
    kinds = sorted({_floor_name(n) for n in names})
    lines = [
        "",
        "Every candidate floor, p50 ms (echo / echo + Redis):",
        "",
        "| rows | " + " | ".join(kinds) + " |",
        "| ---: | " + " | ".join("---:" for _ in kinds) + " |",
    ]
    for size, b in breakdown.items():
        got = b.get("echo_candidates_p50_ms", {})
        cells = []
        for kind in kinds:
            pair = [got.get(f"echo_{kind}"), got.get(f"echo_redis_{kind}")]
            cells.append(" / ".join("-" if v is None else f"{v:.3f}" for v in pair))
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return lines
