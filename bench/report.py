"""Turn one harness run into ratios, a Markdown report and a latency-vs-throughput plot.

Ratios compare points measured in the same run at the same load: Augur against the Feast
baseline (a: speedup, above 1 is better) and against the floors (c: how many times the
floor, 1 is the floor itself). Where two servers are compared directly - one caller against
the echo floors, batching on against off, two processes against one - the ratio is taken
within a paired step (bench/load.py), whose servers took turns. `goals` checks the
performance issue's targets. Pure functions of the result dict, plus the two writers.
"""

from __future__ import annotations

from pathlib import Path

AUGUR, BASELINE, ECHO = "augur", "baseline", "echo"
TARGETS = (AUGUR, BASELINE, ECHO)  # the main series: each server alone, every load point
ECHO_REDIS = "echo_redis"  # measured with one caller only, at each request size
FLOORS = "floors"  # the paired comparison of one caller's Predict with the echo floors
THREADS = "threads"  # the variant handing each call to a handler thread, compared there
CEILING = "ceiling"  # Augur with each call's read, assembly and model free: batching's bound
LABELS = {
    AUGUR: "Augur",
    BASELINE: "Feast baseline",
    ECHO: "gRPC echo floor",
    ECHO_REDIS: "gRPC echo + Redis round trip floor",
    CEILING: "ceiling server (bench/ceiling_server.py)",
}


def load_point(step: dict) -> str:
    if step["mode"] == "closed":
        return f"closed c={step['concurrency']}"
    return f"open {step['rate']:g}/s"


def _ratio(num: float | None, den: float | None) -> float | None:
    if not num or not den:
        return None
    return round(num / den, 2)


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
                "p50_speedup_vs_baseline": _ratio(b.get("p50_ms"), a.get("p50_ms")),
                "p99_speedup_vs_baseline": _ratio(b.get("p99_ms"), a.get("p99_ms")),
                "throughput_vs_baseline": _ratio(a.get("throughput_rps"), b.get("throughput_rps")),
                "p50_vs_echo_floor": _ratio(a.get("p50_ms"), e.get("p50_ms")),
                "p99_vs_echo_floor": _ratio(a.get("p99_ms"), e.get("p99_ms")),
                "throughput_vs_echo_floor": _ratio(
                    a.get("throughput_rps"), e.get("throughput_rps")
                ),
            }
        )
    inproc = {}
    for size, m in result["inprocess"].items():
        p50 = {name: v["p50_ms"] for name, v in m.items()}
        beside = _beside_feast(m)
        inproc[size] = {
            "read_p50_vs_redis_floor": _ratio(p50["augur_read"], p50["redis_floor"]),
            "read_p99_vs_redis_floor": _ratio(
                m["augur_read"]["p99_ms"], m["redis_floor"]["p99_ms"]
            ),
            "feast_read_p50_vs_augur_read": _ratio(p50["feast_read"], beside["p50_ms"]),
            "feast_read_p99_vs_augur_read": _ratio(m["feast_read"]["p99_ms"], beside["p99_ms"]),
            "model_share_of_pipeline_p50": _ratio(p50["model"], p50["augur_pipeline"]),
        }
    variants = [
        {k: v for k, v in p.items() if k not in ("base", "step")} for p in variant_ratios(result)
    ]
    return {
        "grpc": grpc_points,
        "inprocess": inproc,
        "breakdown": breakdown(result),
        "variants": variants,
        "goals": goals(result),
    }


def _beside_feast(m: dict) -> dict:
    """Augur's read as the Feast ratio takes it: timed in turns with Feast's, in Feast's
    process (results before that was measured: the clean process's)."""
    return m.get("augur_read_beside_feast") or m["augur_read"]


def paired(result: dict, comparison: str) -> dict[tuple[int, int], dict[str, dict]]:
    """A paired comparison's entries: (rows, callers) -> server name -> its entry."""
    out: dict = {}
    for entry in (result.get("paired") or {}).get("comparisons", {}).get(comparison, []):
        out.setdefault((entry["rows"], entry["concurrency"]), {})[entry["target"]] = entry
    return out


def breakdown(result: dict) -> dict:
    """Where one caller's Predict time goes (p50 ms, closed loop c=1, from the paired
    comparison with the floors): the gRPC echo floor, the in-process read + assemble +
    predict (of which Redis floor and model), and the rest (the servicer's own work:
    validation, metrics, building the reply); Predict against the echo floor that makes
    the same Redis round trip first; and Predict served on a thread pool."""
    out = {}
    for (rows, _), steps in paired(result, FLOORS).items():
        size = str(rows)
        step, echo, echo_redis = (steps.get(t) or {} for t in (AUGUR, ECHO, ECHO_REDIS))
        threads = steps.get(THREADS) or {}
        if size not in result["inprocess"] or "p50_ms" not in step or "p50_ms" not in echo:
            continue
        m = result["inprocess"][size]
        pipeline = m["augur_pipeline"]["p50_ms"]
        with_redis = echo_redis.get("p50_ms")
        out[size] = {
            "predict_p50_ms": step["p50_ms"],
            "predict_p99_ms": step["p99_ms"],
            "echo_floor_p50_ms": echo["p50_ms"],
            "echo_floor_p99_ms": echo["p99_ms"],
            "echo_redis_floor_p50_ms": with_redis,
            "p50_vs_echo_floor": _ratio(step["p50_ms"], echo["p50_ms"]),
            "p99_vs_echo_floor": _ratio(step["p99_ms"], echo["p99_ms"]),
            "p50_vs_echo_redis_floor": _ratio(step["p50_ms"], with_redis),
            "pipeline_p50_ms": pipeline,
            "redis_floor_p50_ms": m["redis_floor"]["p50_ms"],
            "model_p50_ms": m["model"]["p50_ms"],
            "rest_p50_ms": round(step["p50_ms"] - echo["p50_ms"] - pipeline, 4),
            "threads_p50_ms": threads.get("p50_ms"),
            "threads_p99_ms": threads.get("p99_ms"),
            "threads_p50_vs_echo_floor": _ratio(threads.get("p50_ms"), echo["p50_ms"]),
        }
    return out


def goals(result: dict) -> list[dict]:
    """The performance issue's targets, each as measured in this run: what it asks, the
    value, the bound, and whether the value meets it (on the unrounded value: a ratio of
    1.504 misses a bound of 1.5). Only what the run measured."""
    out = []

    def goal(
        name: str, value: float | None, bound: float, at_least: bool, floor: float | None = None
    ) -> None:
        """`floor`: the same quantity for the floor that bounds it (the echo + Redis floor,
        the echo server, the cores the machine has left), where the run measured one."""
        if value is not None:
            met = value >= bound if at_least else value <= bound
            out.append(
                {
                    "goal": name,
                    "value": value,
                    "bound": bound,
                    "at_least": at_least,
                    "met": met,
                    "floor": floor,
                }
            )

    for size, m in result["inprocess"].items():
        feast, augur, floor = m["feast_read"], m["augur_read"], m["redis_floor"]
        least = 5 if size == "1" else 15
        for q in ("p50", "p99"):
            name = f"read, {size} row(s): Feast's {q} / Augur's"
            goal(name, _quotient(feast[f"{q}_ms"], _beside_feast(m)[f"{q}_ms"]), least, True)
        name = f"read, {size} row(s): p50 / Redis floor's"
        goal(name, _quotient(augur["p50_ms"], floor["p50_ms"]), 1.5, False)
    one = paired(result, FLOORS).get((1, 1), {})
    echo, echo_redis = one.get(ECHO, {}), one.get(ECHO_REDIS, {})
    step = one.get(AUGUR, {})
    if "p50_ms" in step:
        name = "Predict 1 row, 1 caller"
        p50 = _quotient(step["p50_ms"], echo.get("p50_ms"))
        floor = _quotient(echo_redis.get("p50_ms"), echo.get("p50_ms"))
        goal(f"{name}: p50 / gRPC echo's", p50, 1.5, False, floor)
        goal(f"{name}: p99 ms", step["p99_ms"], 2.0, False, echo_redis.get("p99_ms"))
    best = {t: _best_rows_per_s(result, t, 100) for t in (AUGUR, BASELINE, ECHO)}
    if best[AUGUR] is not None:
        name = "Predict 100 rows: predictions/s, best closed-loop point"
        goal(name, best[AUGUR], 40_000, True, best[ECHO])
        name = "Predict 100 rows: predictions/s / Feast baseline's"
        goal(name, _quotient(best[AUGUR], best[BASELINE]), 10, True)
    for p in variant_ratios(result):
        point = f"{p['rows']} row(s), {p['concurrency']} callers"
        base, step = p["base"], p["step"]
        calls = _quotient(step.get("throughput_rps"), base.get("throughput_rps"))
        if p["variant"] == "batching" and p["concurrency"] >= 64:
            ceiling = paired(result, "batching")[(p["rows"], p["concurrency"])].get(CEILING, {})
            bound = _quotient(ceiling.get("throughput_rps"), base.get("throughput_rps"))
            goal(f"batching on / off, {point}: calls/s", calls, 1.5, True, bound)
            p99 = _quotient(step.get("p99_ms"), base.get("p99_ms"))
            goal(f"batching on / off, {point}: p99", p99, 1.0, False)
        elif p["variant"].startswith("processes_"):
            allow = _quotient(result["machine"]["cpus"], base.get("machine_busy_cores"))
            goal(f"2 processes / 1, {point}: calls/s", calls, 1.5, True, allow)
    m = result.get("materialization")
    if m:
        name = "materialization: rows/s / Feast local engine's"
        goal(name, _quotient(m["augur_rows_per_s"], m["feast_rows_per_s"]), 10, True)
    return out


def _quotient(num: float | None, den: float | None) -> float | None:
    """num / den unrounded (None without both): what a goal is checked on."""
    return num / den if num and den else None


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
        *_goal_lines(result),
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
        f"Augur, {'Augur on a thread pool, ' if threads else ''}the gRPC echo floor and "
        f"the echo + Redis floor in turns at each point ({_turns(result)}). The echo + Redis "
        "floor is the echo server making the request's Redis round trip (HMGET of its keys' "
        "vectors, nothing decoded) before it answers: what any server that reads the "
        "features pays."
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
            f"| {_x(b['p50_vs_echo_floor'])} / {_x(b['p99_vs_echo_floor'])} "
            f"| {'-' if with_redis is None else f'{with_redis:.2f}'} "
            f"| {_x(b.get('p50_vs_echo_redis_floor'))} "
            f"| {b['pipeline_p50_ms']:.2f} | {b['redis_floor_p50_ms']:.2f} "
            f"| {b['model_p50_ms']:.2f} | {b['rest_p50_ms']:.2f} | {on_threads} |"
        )
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
    lines += _variant_lines(result)
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


def _best_rows_per_s(result: dict, target: str, rows: int) -> float | None:
    """`target`'s most predictions/s over the main series' closed-loop points at `rows`."""
    steps = result["series"].get(target, [])
    closed = [s["rows_per_s"] for s in steps if s["rows"] == rows and s["mode"] == "closed"]
    return max(closed, default=None)


def variant_ratios(result: dict) -> list[dict]:
    """Each Augur variant against Augur as the run serves it, at each point of their paired
    comparison."""
    out = []
    comparisons = (result.get("paired") or {}).get("comparisons", {})
    for comparison in comparisons:
        # the floors' comparison holds one variant: Augur on a thread pool; batching's also
        # the ceiling server, its bound
        names = [THREADS] if comparison == FLOORS else [comparison, CEILING]
        for (rows, callers), steps in paired(result, comparison).items():
            base = steps.get(AUGUR, {})
            for name, step in ((n, steps[n]) for n in names if n in steps):
                out.append(
                    {
                        "variant": name,
                        "rows": rows,
                        "concurrency": callers,
                        "base": base,
                        "step": step,
                        "throughput_vs_base": _ratio(
                            step.get("throughput_rps"), base.get("throughput_rps")
                        ),
                        "p99_vs_base": _ratio(step.get("p99_ms"), base.get("p99_ms")),
                        # The most any variant could serve if each call cost the machine the
                        # CPU it cost without it: a bound on more processes, which add no
                        # saving; batching exists to lower that cost.
                        "cores_allow_vs_base": _ratio(
                            result["machine"]["cpus"], base.get("machine_busy_cores")
                        ),
                    }
                )
    return out


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


def _goal_lines(result: dict) -> list[str]:
    lines = [
        "",
        "### The performance issue's targets, as measured in this run",
        "",
        "The issue sets them for the fraud scenario (its reads for the fraud plan); other "
        "scenarios show them for comparison. Reads: in process, Feast's time over Augur's "
        "and Augur's over the cheapest Redis floor; one caller and the variants: from their "
        "paired comparisons below; 100 rows: the best closed-loop point of the main series. "
        "The floor: the same quantity for what bounds the target - one caller: the gRPC echo "
        "+ Redis floor, which makes the round trip any feature server makes; 100 rows: the "
        "gRPC echo floor's best point; batching: the ceiling server's calls over Augur's "
        "(each call's read, assembly and model answered from memory: what no batch can "
        "beat); 2 processes: the cores the machine had left (cores allow, below). Where the "
        "floor itself misses the bound, so must Augur.",
        "",
        "| target | measured | bound | met | the floor |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for g in result["ratios"]["goals"]:
        bound = ("at least " if g["at_least"] else "at most ") + f"{g['bound']:,g}"
        met = "yes" if g["met"] else "no"
        lines.append(
            f"| {g['goal']} | {_goal_value(g['value'])} | {bound} | {met} "
            f"| {_goal_value(g.get('floor'))} |"
        )
    return lines


def _goal_value(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3f}"


def _cores(step: dict) -> str:
    busy = step.get("machine_busy_cores")
    return "-" if busy is None else f"{busy:.2f}"


def _compiled(compiler: str) -> str:
    return "compiled with lleaves" if compiler == "lleaves" else "through LightGBM's predict"


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


def plot(result: dict, path: Path) -> bool:
    """Latency against throughput, one panel per request size; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = sorted({s["rows"] for steps in result["series"].values() for s in steps})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.8), squeeze=False)
    colors = {"augur": "tab:blue", "baseline": "tab:red", "echo": "tab:gray"}
    for ax, rows in zip(axes[0], sizes, strict=True):
        for target in TARGETS:
            steps = [s for s in result["series"].get(target, []) if s["rows"] == rows]
            closed = [s for s in steps if s["mode"] == "closed" and "p50_ms" in s]
            opened = [s for s in steps if s["mode"] == "open" and "p99_ms" in s]
            c = colors[target]
            x = [s["throughput_rps"] for s in closed]
            name = LABELS[target]
            ax.plot(x, [s["p50_ms"] for s in closed], "o-", color=c, label=f"{name} p50")
            p99 = [s["p99_ms"] for s in closed]
            ax.plot(x, p99, "o--", color=c, alpha=0.6, label=f"{name} p99")
            for s in closed:
                ax.annotate(f"c={s['concurrency']}", (s["throughput_rps"], s["p50_ms"]), size=7)
            ax.plot(
                [s["throughput_rps"] for s in opened],
                [s["p99_ms"] for s in opened],
                "^",
                color=c,
                label=f"{name} p99, open loop",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("answered requests/s")
        ax.set_ylabel("latency, ms")
        ax.set_title(
            f"{result['scenario']}: Predict, {rows} entity row(s) per request\n"
            "closed loop (c = callers): p50 solid, p99 dashed; open loop: triangles"
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
