"""The performance issue's targets, each checked against one harness run and shown as a
Markdown table: what it asks, the value measured, the bound and the floor's own value."""

from __future__ import annotations

from bench.compare import (
    AUGUR,
    BASELINE,
    CEILING,
    ECHO,
    ECHO_FLOORS,
    ECHO_REDIS,
    ECHO_REDIS_FLOORS,
    FLOORS,
    beside_feast,
    best_rows_per_s,
    fastest,
    model_server_ratios,
    paired,
    quotient,
    variant_ratios,
)


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
            goal(name, quotient(feast[f"{q}_ms"], beside_feast(m)[f"{q}_ms"]), least, True)
        name = f"read, {size} row(s): p50 / Redis floor's"
        goal(name, quotient(augur["p50_ms"], floor["p50_ms"]), 1.5, False)
    one = paired(result, FLOORS).get((1, 1), {})
    _, echo = fastest(one, (*ECHO_FLOORS, ECHO))
    _, echo_redis = fastest(one, (*ECHO_REDIS_FLOORS, ECHO_REDIS))
    step = one.get(AUGUR, {})
    if "p50_ms" in step:
        name = "Predict 1 row, 1 caller"
        p50 = quotient(step["p50_ms"], echo.get("p50_ms"))
        floor = quotient(echo_redis.get("p50_ms"), echo.get("p50_ms"))
        goal(f"{name}: p50 / fastest gRPC echo's", p50, 1.5, False, floor)
        goal(f"{name}: p99 ms", step["p99_ms"], 2.0, False, echo_redis.get("p99_ms"))
    best = {t: best_rows_per_s(result, t, 100) for t in (AUGUR, BASELINE, ECHO)}
    if best[AUGUR] is not None:
        name = "Predict 100 rows: predictions/s, best closed-loop point"
        goal(name, best[AUGUR], 40_000, True, best[ECHO])
        name = "Predict 100 rows: predictions/s / Feast baseline's"
        goal(name, quotient(best[AUGUR], best[BASELINE]), 10, True)
    callers = (result.get("profile") or {}).get("mlserver_goal_callers", ())
    for p in model_server_ratios(result):
        if p["concurrency"] in callers:
            name = f"Predict {p['rows']} rows, {p['concurrency']} callers: predictions/s / "
            rows_per_s = quotient(p["augur_rows_per_s"], p["mlserver_rows_per_s"])
            goal(name + "MLServer alone's", rows_per_s, 2, True)
    for p in variant_ratios(result):
        point = f"{p['rows']} row(s), {p['concurrency']} callers"
        base, step = p["base"], p["step"]
        calls = quotient(step.get("throughput_rps"), base.get("throughput_rps"))
        if p["variant"] == "batching" and p["concurrency"] >= 64:
            ceiling = paired(result, "batching")[(p["rows"], p["concurrency"])].get(CEILING, {})
            bound = quotient(ceiling.get("throughput_rps"), base.get("throughput_rps"))
            goal(f"batching on / off, {point}: calls/s", calls, 1.5, True, bound)
            p99 = quotient(step.get("p99_ms"), base.get("p99_ms"))
            goal(f"batching on / off, {point}: p99", p99, 1.0, False)
        elif p["variant"].startswith("processes_"):
            allow = quotient(result["machine"]["cpus"], base.get("machine_busy_cores"))
            goal(f"2 processes / 1, {point}: calls/s", calls, 1.5, True, allow)
    m = result.get("materialization")
    if m:
        name = "materialization: rows/s / Feast local engine's"
        goal(name, quotient(m["augur_rows_per_s"], m["feast_rows_per_s"]), 10, True)
    return out


def goal_lines(result: dict) -> list[str]:
    lines = [
        "",
        "### The performance issue's targets, as measured in this run",
        "",
        "The issue sets them for the fraud scenario (its reads for the fraud plan); other "
        "scenarios show them for comparison. Reads: in process, Feast's time over Augur's "
        "and Augur's over the cheapest Redis floor; one caller, the variants and MLServer "
        "alone: from their paired comparisons below; 100 rows: the best closed-loop point of "
        "the main series (against MLServer: at each point paired with it). "
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
