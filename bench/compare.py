"""Comparisons within one harness run: the servers' names, and ratios of points measured at
the same load.

Where two servers are compared directly - one caller against the echo floors, batching on
against off, two processes against one - the ratio is taken within a paired step
(bench/load.py), whose servers took turns. Pure functions of the result dict.
"""

from __future__ import annotations

AUGUR, BASELINE, ECHO = "augur", "baseline", "echo"
TARGETS = (AUGUR, BASELINE, ECHO)  # the main series: each server alone, every load point
ECHO_REDIS = "echo_redis"  # measured with one caller only, at each request size
# The candidates for one caller's floors: every Python gRPC server that could be the fastest
# to answer with a canned reply (bench/echo_server.py: server kind, handler threads), each
# also making the request's Redis round trip first. The fastest at each size is the floor.
ECHO_KINDS = {"aio": ("aio", 0), "sync1": ("sync", 1), "sync2": ("sync", 2), "green": ("green", 0)}
ECHO_FLOORS = tuple(f"{ECHO}_{k}" for k in ECHO_KINDS)
ECHO_REDIS_FLOORS = tuple(f"{ECHO_REDIS}_{k}" for k in ECHO_KINDS)
FLOORS = "floors"  # the paired comparison of one caller's Predict with the echo floors
THREADS = "threads"  # the variant handing each call to a handler thread, compared there
CEILING = "ceiling"  # Augur with each call's read, assembly and model free: batching's bound
# MLServer serving the same model with each request's features handed in (no feature read):
# the server and its paired comparison with Augur (bench/model_server.py)
MLSERVER = "mlserver"
LABELS = {
    AUGUR: "Augur",
    BASELINE: "Feast baseline",
    ECHO: "gRPC echo (sync server, 8 threads)",
    ECHO_REDIS: "gRPC echo + Redis round trip floor",
    CEILING: "ceiling server (bench/ceiling_server.py)",
    MLSERVER: "MLServer alone, features in the request",
}


def echo_server(name: str) -> tuple[bool, str, int] | None:
    """An echo floor's (makes the Redis round trip, server kind, handler threads); None for
    a server that is not an echo floor. The main series' echo is the sync server on 8."""
    if name == ECHO:
        return False, "sync", 8
    for prefix, redis in ((ECHO_REDIS, True), (ECHO, False)):
        kind = ECHO_KINDS.get(name.removeprefix(prefix + "_"))
        if name.startswith(prefix + "_") and kind is not None:
            return redis, *kind
    return None


def fastest(steps: dict[str, dict], candidates: tuple[str, ...]) -> tuple[str | None, dict]:
    """The candidate with the lowest p50 among `steps` (server name -> entry), and its entry."""
    measured = [(steps[c]["p50_ms"], c) for c in candidates if "p50_ms" in steps.get(c, {})]
    if not measured:
        return None, {}
    name = min(measured)[1]
    return name, steps[name]


def load_point(step: dict) -> str:
    if step["mode"] == "closed":
        return f"closed c={step['concurrency']}"
    return f"open {step['rate']:g}/s"


def ratio(num: float | None, den: float | None) -> float | None:
    if not num or not den:
        return None
    return round(num / den, 2)


def quotient(num: float | None, den: float | None) -> float | None:
    """num / den unrounded (None without both): what a goal is checked on."""
    return num / den if num and den else None


def beside_feast(m: dict) -> dict:
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
    comparison with the floors): the gRPC echo floor (the fastest echo server measured), the
    in-process read + assemble + predict (of which Redis floor and model), and the rest (the
    servicer's own work: validation, metrics, building the reply); Predict against the
    fastest echo floor that makes the same Redis round trip first; and Predict served on a
    thread pool. Runs from before the candidates were measured had one echo of each."""
    out = {}
    for (rows, _), steps in paired(result, FLOORS).items():
        size = str(rows)
        step, threads = steps.get(AUGUR) or {}, steps.get(THREADS) or {}
        echo_name, echo = fastest(steps, (*ECHO_FLOORS, ECHO))
        redis_name, echo_redis = fastest(steps, (*ECHO_REDIS_FLOORS, ECHO_REDIS))
        if size not in result["inprocess"] or "p50_ms" not in step or "p50_ms" not in echo:
            continue
        m = result["inprocess"][size]
        pipeline = m["augur_pipeline"]["p50_ms"]
        with_redis = echo_redis.get("p50_ms")
        out[size] = {
            "predict_p50_ms": step["p50_ms"],
            "predict_p99_ms": step["p99_ms"],
            "echo_floor_server": echo_name,
            "echo_redis_floor_server": redis_name,
            "echo_candidates_p50_ms": {
                c: steps[c]["p50_ms"]
                for c in (*ECHO_FLOORS, *ECHO_REDIS_FLOORS)
                if "p50_ms" in steps.get(c, {})
            },
            "echo_floor_p50_ms": echo["p50_ms"],
            "echo_floor_p99_ms": echo["p99_ms"],
            "echo_redis_floor_p50_ms": with_redis,
            "p50_vs_echo_floor": ratio(step["p50_ms"], echo["p50_ms"]),
            "p99_vs_echo_floor": ratio(step["p99_ms"], echo["p99_ms"]),
            "p50_vs_echo_redis_floor": ratio(step["p50_ms"], with_redis),
            "pipeline_p50_ms": pipeline,
            "redis_floor_p50_ms": m["redis_floor"]["p50_ms"],
            "model_p50_ms": m["model"]["p50_ms"],
            "rest_p50_ms": round(step["p50_ms"] - echo["p50_ms"] - pipeline, 4),
            "threads_p50_ms": threads.get("p50_ms"),
            "threads_p99_ms": threads.get("p99_ms"),
            "threads_p50_vs_echo_floor": ratio(threads.get("p50_ms"), echo["p50_ms"]),
        }
    return out


def best_rows_per_s(result: dict, target: str, rows: int) -> float | None:
    """`target`'s most predictions/s over the main series' closed-loop points at `rows`."""
    steps = result["series"].get(target, [])
    closed = [s["rows_per_s"] for s in steps if s["rows"] == rows and s["mode"] == "closed"]
    return max(closed, default=None)


def variant_ratios(result: dict) -> list[dict]:
    """Each Augur variant against Augur as the run serves it, at each point of their paired
    comparison."""
    out = []
    comparisons = (result.get("paired") or {}).get("comparisons", {})
    for comparison in (c for c in comparisons if c != MLSERVER):  # another server, not Augur
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
                        "throughput_vs_base": ratio(
                            step.get("throughput_rps"), base.get("throughput_rps")
                        ),
                        "p99_vs_base": ratio(step.get("p99_ms"), base.get("p99_ms")),
                        # The most any variant could serve if each call cost the machine the
                        # CPU it cost without it: a bound on more processes, which add no
                        # saving; batching exists to lower that cost.
                        "cores_allow_vs_base": ratio(
                            result["machine"]["cpus"], base.get("machine_busy_cores")
                        ),
                    }
                )
    return out


def model_server_ratios(result: dict) -> list[dict]:
    """Augur's Predict against MLServer alone at each point of their paired comparison: the
    same rows per call, so predictions/s compare as calls/s do."""
    out = []
    for (rows, callers), steps in sorted(paired(result, MLSERVER).items()):
        augur, mlserver = steps.get(AUGUR, {}), steps.get(MLSERVER, {})
        out.append(
            {
                "rows": rows,
                "concurrency": callers,
                "augur_rows_per_s": augur.get("rows_per_s"),
                "mlserver_rows_per_s": mlserver.get("rows_per_s"),
                "rows_per_s_vs_mlserver": ratio(
                    augur.get("rows_per_s"), mlserver.get("rows_per_s")
                ),
                "p50_speedup_vs_mlserver": ratio(mlserver.get("p50_ms"), augur.get("p50_ms")),
            }
        )
    return out
