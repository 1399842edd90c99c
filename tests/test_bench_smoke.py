"""The benchmark harness end to end at toy size: every series measured, every ratio computed,
nothing left running. Checks that the harness works, never how fast anything is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil
import pytest

from augur.api.v1 import predictor_pb2 as pb
from augur.client import encode_entities
from bench import harness, mlserver, report
from bench.compare import ECHO_FLOORS, ECHO_REDIS_FLOORS, MLSERVER, fastest
from bench.inprocess import floor_replies
from bench.load import paired_order
from bench.profiles import QUICK
from bench.timing import timed_together

ROOT = Path(__file__).resolve().parent.parent
GRPC_TARGETS = ("augur", "baseline", "echo")
IN_PROCESS = (
    "redis_floor",
    "redis_floor_hmget",
    "redis_floor_hgetall",
    "redis_floor_vectors",
    "augur_read",
    "augur_read_fields",
    "feast_read",
    "augur_read_beside_feast",
    "model",
    "augur_pipeline",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, Path, Path]:
    out, work = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("work")
    command = ["bench.harness", "--scenario", "fraud", "--quick"]
    done = subprocess.run(
        [sys.executable, "-m", *command, "--out", str(out), "--workdir", str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "fraud-quick.json").read_text()), out, work


@pytest.mark.slow
def test_every_grpc_series_is_measured_under_every_load(quick_run):
    result, _, _ = quick_run
    points = {t: {(s["rows"], s["mode"]) for s in result["series"][t]} for t in GRPC_TARGETS}
    assert points["augur"] == points["baseline"] == points["echo"]
    assert {mode for _, mode in points["augur"]} == {"closed", "open"}
    for target in GRPC_TARGETS:
        for step in result["series"][target]:
            assert step["ok"] > 0, (target, step)
            assert 0 < step["p50_ms"] <= step["p99_ms"], (target, step)
            assert step["throughput_rps"] > 0, (target, step)


@pytest.mark.slow
def test_floors_and_read_paths_are_measured_in_process(quick_run):
    result, _, _ = quick_run
    assert result["inprocess"]
    for size, series in result["inprocess"].items():
        for name in IN_PROCESS:
            assert series[name]["p50_ms"] > 0, (size, name)


@pytest.mark.slow
def test_ratios_against_baseline_and_floors_are_computed(quick_run):
    result, _, _ = quick_run
    grpc_ratios = result["ratios"]["grpc"]
    assert len(grpc_ratios) == len(result["series"]["augur"])
    for point in grpc_ratios:
        for name, value in point.items():
            if name not in ("rows", "load"):
                assert value is not None and value > 0, (point, name)
    for size, ratios in result["ratios"]["inprocess"].items():
        assert all(v is not None and v > 0 for v in ratios.values()), (size, ratios)


@pytest.mark.slow
def test_one_caller_predict_is_compared_with_the_echo_and_redis_floor(quick_run):
    result, out, _ = quick_run
    floors = result["paired"]["comparisons"][report.FLOORS]
    servers = ("augur", "threads", *ECHO_FLOORS, *ECHO_REDIS_FLOORS)
    assert sorted((s["rows"], s["concurrency"], s["target"]) for s in floors) == sorted(
        (rows, 1, server) for rows in (1, 10) for server in servers
    )
    assert all(s["ok"] > 0 and s["errors"] == {} for s in floors), floors
    assert set(result["ratios"]["breakdown"]) == {"1", "10"}
    for size, b in result["ratios"]["breakdown"].items():
        assert b["echo_redis_floor_p50_ms"] > 0 and b["p50_vs_echo_redis_floor"] > 0, (size, b)
        assert b["p50_vs_echo_floor"] > 0 and b["p99_vs_echo_floor"] > 0, (size, b)
        assert b["threads_p50_ms"] > 0 and b["threads_p50_vs_echo_floor"] > 0, (size, b)
        # the floor is the fastest candidate, and the report says which one it was
        assert b["echo_floor_server"] in ECHO_FLOORS, b
        assert b["echo_floor_p50_ms"] == min(b["echo_candidates_p50_ms"][c] for c in ECHO_FLOORS)
        assert b["echo_redis_floor_server"] in ECHO_REDIS_FLOORS, b
    assert result["paired"]["options"]["threads"] == {"handlers": "threads"}
    report_md = (out / "fraud-quick.md").read_text()
    assert "gRPC echo + Redis floor" in report_md and "on a thread pool" in report_md


def test_in_process_timings_take_alternating_turns():
    calls: list[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    timings = timed_together(fns, repeats=4, blocks=2)
    assert {name: len(ms) for name, ms in timings.items()} == {"a": 4, "b": 4, "c": 4}
    assert all((ms >= 0).all() for ms in timings.values())
    # each warmed up alone (3 calls), then two turns of 2 calls each: a b c, then c b a
    assert calls == [*"aaabbbccc", *"aabbcc", *"ccbbaa"]


def test_a_paired_step_alternates_its_servers_turns():
    assert paired_order(["a", "b"], 2) == ["a", "b", "b", "a"]
    assert paired_order(["a", "b", "c"], 3) == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]


@pytest.mark.slow
def test_each_paired_server_gets_a_main_steps_worth_of_turns(quick_run):
    result, _, _ = quick_run
    assert result["paired"]["rounds"] == 2
    bounds = result["profile"]["step_requests"], result["profile"]["step_seconds"]
    for name, entries in result["paired"]["comparisons"].items():
        assert entries, name
        for entry in entries:
            # each turn is bounded by half a step, so both turns by a whole one
            assert entry["max_requests"] * entry["rounds"] == bounds[0], entry
            assert entry["max_seconds"] * entry["rounds"] == bounds[1], entry
            assert 0 < entry["sent"] <= bounds[0], entry
            assert 0 < entry["elapsed_s"] <= bounds[1] * 1.5 + 1, entry


@pytest.mark.slow
def test_the_issues_targets_are_checked_against_what_was_measured(quick_run):
    result, out, _ = quick_run
    goals = {g["goal"]: g for g in result["ratios"]["goals"]}
    expected = {
        "read, 1 row(s): Feast's p50 / Augur's",
        "read, 10 row(s): p50 / Redis floor's",
        "Predict 1 row, 1 caller: p50 / fastest gRPC echo's",
        "Predict 1 row, 1 caller: p99 ms",
        "2 processes / 1, 1 row(s), 4 callers: calls/s",
        "materialization: rows/s / Feast local engine's",
    }
    assert expected <= set(goals), sorted(goals)
    for g in goals.values():
        assert g["met"] == (g["value"] >= g["bound"] if g["at_least"] else g["value"] <= g["bound"])
    one = result["ratios"]["breakdown"]["1"]
    assert goals["Predict 1 row, 1 caller: p99 ms"]["value"] == one["predict_p99_ms"]
    # beside each one-caller target, the echo + Redis floor's own value of it
    one = report.paired(result, report.FLOORS)[(1, 1)]
    _, floor = fastest(one, ECHO_REDIS_FLOORS)
    assert goals["Predict 1 row, 1 caller: p99 ms"]["floor"] == floor["p99_ms"]
    assert goals["Predict 1 row, 1 caller: p50 / fastest gRPC echo's"]["floor"] > 0
    assert "### The performance issue's targets" in (out / "fraud-quick.md").read_text()


def test_the_echo_and_redis_floor_reads_each_requests_own_keys(fraud_repo, tmp_path):
    from augur.features.connection import connect
    from augur.features.repo import build_plans
    from bench.echo_server import EchoPredictor, RedisFloor

    plan = build_plans(fraud_repo.store)["fraud_lgbm"]
    (tmp_path / "plan.json").write_text(plan.to_json())
    floor = RedisFloor(fraud_repo.address, tmp_path / "plan.json")
    seen = pd.read_parquet(fraud_repo.data / "transactions.parquet")
    rows = seen[["user_id", "merchant_id"]].drop_duplicates().head(3)
    request = pb.PredictRequest(
        model="fraud", entities=encode_entities({k: rows[k].tolist() for k in rows})
    )
    redis = connect(fraud_repo.address)
    before = _calls(redis, "hmget")
    got, count = floor.round_trip(request)
    replies = floor_replies(got, count)
    # one HMGET per distinct key of each key group, each finding the key's rows
    distinct = sum(len(rows[list(g.join_keys)].drop_duplicates()) for g in plan.groups)
    assert len(replies) == distinct == _calls(redis, "hmget") - before
    assert all(any(v is not None for v in reply) for reply in replies)
    assert EchoPredictor(floor).Predict(request, None).rows == 3


def _calls(redis, command: str) -> int:
    return redis.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


@pytest.mark.slow
def test_batching_and_processes_variants_are_compared_at_the_same_points(quick_run):
    result, out, _ = quick_run
    assert set(result["paired"]["options"]) == {"batching", "processes_2", "threads"}
    compared = {(p["variant"], p["rows"], p["concurrency"]) for p in report.variant_ratios(result)}
    assert {("threads", 1, 1), ("threads", 10, 1), ("batching", 1, 4)} <= compared, compared
    assert ("ceiling", 1, 4) in compared, compared  # batching's bound, in the same turns
    cpus = result["machine"]["cpus"]
    for point in result["ratios"]["variants"]:
        assert point["throughput_vs_base"] > 0 and point["p99_vs_base"] > 0, point
        assert point["cores_allow_vs_base"] >= 0.95, point
    for point in report.variant_ratios(result):
        # the whole machine's busy cores, from its own counters: a load step keeps some busy
        for step in (point["base"], point["step"]):
            assert 0 < step["machine_busy_cores"] <= cpus * 1.05, step
            assert step["redis_cpu_ms_per_req"] >= 0, step
    assert len(result["paired"]["servers"]["processes_2"]["rss_ready_mb"]) >= 3  # 2 workers
    assert "### Serving variants" in (out / "fraud-quick.md").read_text()


def test_batchings_target_shows_the_ceiling_servers_calls_as_its_floor():
    def entry(target: str, calls: float, p99: float) -> dict:
        return {
            "target": target,
            "rows": 1,
            "concurrency": 64,
            "throughput_rps": calls,
            "p99_ms": p99,
            "machine_busy_cores": 1.6,
        }

    entries = [entry("augur", 2000, 40), entry("batching", 2900, 30), entry("ceiling", 2950, 29)]
    result = {
        "inprocess": {},
        "series": {},
        "machine": {"cpus": 2},
        "paired": {"comparisons": {"batching": entries}},
    }

    goals = {g["goal"]: g for g in report.goals(result)}

    calls = goals["batching on / off, 1 row(s), 64 callers: calls/s"]
    assert calls["value"] == pytest.approx(1.45) and not calls["met"]
    assert calls["floor"] == pytest.approx(1.475)  # the ceiling's calls over batching off's
    ceiling = [p for p in report.variant_ratios(result) if p["variant"] == "ceiling"]
    assert [p["throughput_vs_base"] for p in ceiling] == [pytest.approx(1.475, abs=0.01)]


@pytest.mark.slow
def test_materialization_is_timed_for_both_engines_on_the_same_rows(quick_run):
    result, out, _ = quick_run
    m = result["materialization"]
    assert m["rows"] > 0 and m["keys"] > 0
    assert m["feast_s"] > 0 and m["augur_s"] > 0 and m["augur_vs_feast"] > 0
    assert "### Materialization" in (out / "fraud-quick.md").read_text()


@pytest.mark.slow
def test_servers_report_ready_time_and_memory(quick_run):
    result, _, _ = quick_run
    for target in GRPC_TARGETS:
        server = result["servers"][target]
        assert server["ready_s"] > 0
        assert server["rss_ready_mb"] and all(v > 0 for v in server["rss_ready_mb"].values())
        assert all(v > 0 for v in server["rss_after_load_mb"].values())


@pytest.mark.slow
def test_report_files_are_written_and_nothing_is_left_behind(quick_run):
    _, out, work = quick_run
    table = (out / "fraud-quick.md").read_text()
    assert "p50 speedup vs baseline" in table and "| closed c=1 |" in table
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        assert (out / "fraud-quick.png").stat().st_size > 0
    assert not list(work.iterdir())  # the scenario folder is removed
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if str(work) in " ".join(p.info["cmdline"] or [])
    ]
    assert not leftovers


@pytest.mark.slow
def test_the_batching_comparison_counts_each_servers_reads(tmp_path):
    from bench import batching

    rows = batching.run("fraud", rounds=1, callers=4, seconds=1.0, quick=True, workdir=tmp_path)
    by_server = {row["server"]: row for row in rows}
    assert list(by_server) == list(batching.SERVERS)
    assert all(row["ok"] > 0 and not row["errors"] for row in rows)
    assert all(row["machine_busy_cores"] > 0 for row in rows)
    for name in ("off", "off-threads"):  # on the polling thread, and on threads
        assert by_server[name]["reads_per_call"] == 1  # every call reads alone
        assert by_server[name]["calls_per_batch"] is None
    assert batching.POOL_THREADS > 2  # batching on threads starts more than batching off
    for name in ("batching", "batching-threads"):  # on the polling thread, and on threads
        batched = by_server[name]
        # a batch is one read however many calls it carries
        assert batched["reads_per_call"] * batched["calls_per_batch"] == pytest.approx(1, abs=0.01)
    # the ceiling scores the first call for real and answers the rest from memory
    assert 0 < by_server["ceiling"]["reads_per_call"] < 0.01
    assert "| ceiling |" in batching.table(rows)
    assert not list(tmp_path.iterdir())  # the scenario folder is gone


@pytest.mark.slow
def test_augur_is_compared_with_mlserver_alone_at_every_closed_loop_point(quick_run):
    result, out, _ = quick_run
    if result["skipped"].get(MLSERVER):  # no index or no wheels here: the run said why
        pytest.skip(result["skipped"][MLSERVER])
    entries = result["paired"]["comparisons"][MLSERVER]
    assert sorted((s["rows"], s["concurrency"], s["target"]) for s in entries) == sorted(
        (10, callers, server) for callers in (1, 4) for server in ("augur", MLSERVER)
    )
    assert all(s["ok"] > 0 and s["errors"] == {} for s in entries), entries
    # both sides of each call cost the load generator alike (prebuilt messages, one stack)
    for callers in (1, 4):
        pair = report.paired(result, MLSERVER)[(10, callers)]
        client = [pair[t]["client_cpu_ms_per_req"] for t in ("augur", MLSERVER)]
        assert max(client) <= 5 * min(client), client
    assert result["paired"]["servers"][MLSERVER]["ready_s"] > 0
    goals = {g["goal"]: g for g in result["ratios"]["goals"]}
    goal = goals["Predict 10 rows, 4 callers: predictions/s / MLServer alone's"]
    point = report.paired(result, MLSERVER)[(10, 4)]
    rows_per_s = point["augur"]["rows_per_s"] / point[MLSERVER]["rows_per_s"]
    assert goal["value"] == pytest.approx(rows_per_s) and goal["bound"] == 2 and goal["at_least"]
    table = (out / "fraud-quick.md").read_text()
    assert "### Augur against MLServer alone" in table
    assert "| Predict 10 rows, 4 callers: predictions/s / MLServer alone's |" in table


def test_a_run_where_mlserver_cannot_be_installed_says_why_in_one_line_and_goes_on(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "a-file").write_text("")  # no virtualenv can be made beneath a file
    monkeypatch.setattr(mlserver, "VENV", tmp_path / "a-file" / ".venv-mlserver")

    profile, skipped = harness._without_unavailable(QUICK, began=0.0)

    assert MLSERVER in QUICK.paired and MLSERVER not in profile.paired
    assert set(profile.paired) == set(QUICK.paired) - {MLSERVER}
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 2 and "MLServer-alone baseline skipped: cannot install" in said[1]
    assert "\n" not in skipped[MLSERVER] and "mlserver==1.7.1" in skipped[MLSERVER]
    lines = report.model_server.report_lines({"skipped": skipped}, turns="")
    assert lines == ["", f"MLServer alone: not measured in this run ({skipped[MLSERVER]})."]


def test_versus_refuses_a_folder_that_is_not_a_checkout_naming_it(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench.versus", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{tmp_path} is not a checkout of Augur" in done.stderr
    assert "Traceback" not in done.stderr


def test_tenants_runs_its_three_cases_and_prints_their_ratios():
    done = subprocess.run(
        [sys.executable, "-m", "bench.tenants", "--rounds", "1", "--calls", "40",
         "--flood-callers", "4"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][2:]
    cases = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert cases == ["alone", "flood on the same server", "flood on another server"]
    assert rows[0].endswith("| 1.00x |")  # alone against itself
    for row in rows:  # every case answered the victim: a goodput above zero
        assert float(row.split(" | ")[1].split(" ")[0]) > 0
