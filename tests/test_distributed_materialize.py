"""Materialization on a local Ray instance (2 CPUs) leaves Redis byte for byte as Augur's
single-process writer leaves it, survives a worker killed mid-run, and reads back through
Feast's `get_online_features` as it does.

One copy of the fraud repo, whose feature_store.yaml selects the engine the way a user's does
(`batch_engine: {type: ray.engine, max_workers: 2}`); one embedded Redis per run. Every run
names the same window, so each writes the same rows whatever ran before. Where to kill a
worker: once rows are landing, Redis writes are paused (CLIENT PAUSE WRITE) so that every
`write_partition` task is stuck mid-pipeline, and one of the worker processes running it
(Ray titles them `ray::write_partition`) gets SIGKILL; Ray runs the task again.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
import yaml

from augur.features.connection import connect
from augur.features.reader import OnlineReader
from augur.features.redis_server import EmbeddedRedis
from augur.features.repo import build_plan, open_store
from augur.pipelines.materialize import engine_of, materialize
from examples.fraud.generate import Scale, default_end, generate
from examples.fraud.scaffold import copy_definitions, feast_apply

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")

# ~20k user x merchant pairs in the window: each partition of that view is a pipeline of ~10k
# writes, long enough to find a worker mid-run.
SCALE = Scale(users=4_000, merchants=400, transactions=60_000, days=30)
WORKERS = 2
RUN_TIMEOUT_S = 150.0  # one run, Ray's start included
END = default_end()
WINDOW = (END - dt.timedelta(days=SCALE.days + 1), END + dt.timedelta(hours=1))

Dump = dict[bytes, tuple[dict, bool]]  # key -> (hash fields, expires)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ray") / "feature_repo"
    copy_definitions(path)
    generate(path / "data", SCALE, end=END)
    settings = yaml.safe_load((path / "feature_store.yaml").read_text())
    settings["batch_engine"] = {"type": "ray.engine", "max_workers": WORKERS}
    (path / "feature_store.yaml").write_text(yaml.safe_dump(settings))
    feast_apply(path, "127.0.0.1:6379")  # apply reads no Redis; the address is a placeholder
    return path


@pytest.fixture(scope="module")
def ray_written(repo):
    """Redis after a run on the engine feature_store.yaml names, and what the run said."""
    with EmbeddedRedis() as server:
        runs = _bounded(materialize, repo, server.address, start=WINDOW[0], end=WINDOW[1])
        yield server, runs, open_store(repo, server.address)
    ray.shutdown()  # the instance the run started in this process


@pytest.fixture(scope="module")
def clean(repo, ray_written) -> tuple[Dump, dict]:
    """Redis after Augur's single-process writer (after the Ray run: the registry it recorded
    was the Ray run's own)."""
    with EmbeddedRedis() as server:
        runs = _bounded(
            materialize, repo, server.address, start=WINDOW[0], end=WINDOW[1], engine="augur"
        )
        return _dump(server), runs


def test_batch_engine_in_feature_store_yaml_selects_ray(repo, ray_written):
    assert engine_of(open_store(repo)) == "ray"
    assert ray.is_initialized(), "the run did not start Ray"
    assert ray.cluster_resources()["CPU"] == WORKERS  # a local instance of max_workers CPUs


def test_ray_workers_leave_the_bytes_the_single_process_writer_leaves(ray_written, clean):
    server, runs, _ = ray_written
    expected, single = clean
    got = _dump(server)
    assert len(expected) > 20_000
    differ = [k for k in expected.keys() | got.keys() if got.get(k) != expected.get(k)]
    assert not differ, f"{len(differ)} keys differ (missing, extra or other bytes): {differ[:3]}"
    for view, run in runs.items():
        assert (run.rows, run.written, run.retries) == (single[view].rows, single[view].rows, 0)


def test_the_run_records_each_views_interval_in_the_registry(ray_written):
    _, runs, store = ray_written
    for name in runs:
        view = store.get_feature_view(name)
        assert view.most_recent_end_time == WINDOW[1]
        assert (WINDOW[0], WINDOW[1]) in view.materialization_intervals


def test_rows_written_by_ray_workers_read_back_as_feast_reads_them(repo, ray_written):
    server, _, store = ray_written
    plan = build_plan(store, "fraud_lgbm")
    pairs = pd.read_parquet(repo / "data" / "user_merchant_stats.parquet").sample(
        200, random_state=3
    )
    users = np.concatenate([pairs["user_id"], np.arange(4_100, 4_150)]).astype(np.int64)
    merchants = np.concatenate([pairs["merchant_id"], np.arange(0, 50)]).astype(np.int64)
    entity_rows = [
        {"user_id": int(u), "merchant_id": int(m)} for u, m in zip(users, merchants, strict=True)
    ]
    got = store.get_online_features(
        features=store.get_feature_service(plan.service),
        entity_rows=entity_rows,
        full_feature_names=True,
    ).to_dict()
    feast = np.array(
        [[np.nan if got[n][i] is None else got[n][i] for n in plan.feature_names] for i in
         range(len(users))], np.float32)  # fmt: skip
    defaults = np.array([c.default for c in plan.columns], np.float32)

    rows = OnlineReader(connect(server.address)).read(
        plan, {"user_id": users.tolist(), "merchant_id": merchants.tolist()}
    )

    np.testing.assert_array_equal(rows.values, np.where(np.isnan(feast), defaults, feast))
    assert (rows.missing == 0).any() and (rows.missing > 0).any()


def test_a_worker_killed_mid_run_is_retried_and_redis_ends_the_same(repo, clean, servers, tmp_path):
    expected, _ = clean
    with EmbeddedRedis() as server:
        config = tmp_path / "augur.yaml"
        config.write_text(
            yaml.safe_dump({"feature_repo": str(repo), "redis": {"address": server.address}})
        )
        log = tmp_path / "materialize.log"
        command = ["materialize", "--config", str(config), "--engine", "ray"]
        command += ["--workers", str(WORKERS), "--start", WINDOW[0].isoformat()]
        command += ["--end", WINDOW[1].isoformat()]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUGUR_")}
        with open(log, "wb") as out:
            process = servers.command(*command, env=env, output=out)
        client = redis.Redis(host=server.host, port=server.port)
        killed = _kill_one_writer_mid_run(process, client)
        assert process.wait(RUN_TIMEOUT_S) == 0, log.read_text()[-3000:]
        output = log.read_text()
        assert killed, f"no write_partition task was seen running:\n{output[-3000:]}"
        # The run says a task was retried: Ray's own line, and Augur's count of the attempts
        # that reached their start (a worker killed before its first line is Ray's to report)
        told = "will be retried" in output or "retried after a worker died" in output
        assert told, output[-3000:]
        got = _dump(server)
    differ = [k for k in expected.keys() | got.keys() if got.get(k) != expected.get(k)]
    assert not differ, f"{len(differ)} keys differ from the clean run, e.g. {differ[:3]}"


def _kill_one_writer_mid_run(process: subprocess.Popen, client: redis.Redis) -> int | None:
    """SIGKILL one worker of `process`'s Ray instance while it runs write_partition with rows
    already in Redis and its pipeline held by a write pause; the pid killed."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline:
        if client.dbsize() == 0 or not _writers(process.pid):
            time.sleep(0.005)
            continue
        client.execute_command("CLIENT", "PAUSE", "5000", "WRITE")
        try:
            running = _writers(process.pid)
            if running:
                os.kill(running[0], signal.SIGKILL)
                return running[0]
        finally:
            client.execute_command("CLIENT", "UNPAUSE")
    return None


def _writers(root: int) -> list[int]:
    """Processes below `root` running Ray's write_partition task."""
    parents, titles = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
                titles[int(entry.name)] = (entry / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue

    def below(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == root:
                return True
        return False

    return [p for p, t in titles.items() if t.startswith(b"ray::write_partition") and below(p)]


def _bounded(function, *args, **kwargs):
    """Call `function`, failing the test if it runs past RUN_TIMEOUT_S. On this thread: the
    processes of a Ray instance die with the thread that started it (PR_SET_PDEATHSIG)."""

    def expire(*_):
        raise TimeoutError(f"{function.__name__} ran past {RUN_TIMEOUT_S:g}s")

    before = signal.signal(signal.SIGALRM, expire)
    signal.alarm(int(RUN_TIMEOUT_S))
    try:
        return function(*args, progress=False, **kwargs)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def _dump(server: EmbeddedRedis) -> Dump:
    client = redis.Redis(host=server.host, port=server.port)
    keys = list(client.scan_iter(count=1_000))
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
            pipe.ttl(key)
        replies = pipe.execute()
    return {
        key: (fields, ttl != -1)
        for key, fields, ttl in zip(keys, replies[::2], replies[1::2], strict=True)
    }
