"""`server.processes: 2`: two server processes share one port, listening together so the
first connections reach both, metrics add up across them (in a directory of their own,
never Feast's), a stop is clean even mid-start, and the processes stop when their
supervisor is killed; a process killed on its own is started again while the other serves,
unless they keep dying; one process keeps its metrics in memory whatever multiprocess
directory it inherits."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import psutil
from prometheus_client.mmap_dict import MmapedDict

from augur.api.v1 import predictor_pb2 as pb
from augur.api.v1 import predictor_pb2_grpc as pb_grpc
from augur.client import encode_entities
from augur.client.client import PredictorClient
from augur.features.redis_server import free_port
from tests.conftest import write_config


def _requests_in(db: Path) -> float:
    return sum(
        value
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(db))
        if '"augur_requests_total"' in key and '"Predict"' in key
    )


def _predict_requests_served(metrics_port: int) -> float:
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    return sum(
        float(m)
        for m in re.findall(
            r'^augur_requests_total\{[^}]*code="OK"[^}]*method="Predict"[^}]*\} (\S+)$',
            text,
            re.M,
        )
    )


def _config(tmp_path: Path, fraud_repo, model_repo, **server: object) -> tuple[Path, int, int]:
    """augur.yaml on free ports: (its path, the gRPC port, the metrics port)."""
    port, metrics_port = free_port(), free_port()
    config = write_config(
        tmp_path / "augur.yaml",
        fraud_repo,
        model_repo,
        port=port,
        metrics_port=metrics_port,
        **server,
    )
    return config, port, metrics_port


def _serve(config: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "augur.cli.main", "serve", "--config", str(config)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _predict_a_few(port: int, server: subprocess.Popen, calls: int) -> None:
    with PredictorClient(f"127.0.0.1:{port}") as client:
        client.wait_serving(["fraud_lgbm"], 120, server)
        for i in range(calls):
            client.predict("fraud_lgbm", {"user_id": [i], "merchant_id": [i]}, {"amount": [1.0]})


def test_one_process_ignores_an_inherited_multiprocess_dir(fraud_repo, model_repo, tmp_path):
    """Importing Feast sets PROMETHEUS_MULTIPROC_DIR for every process started afterwards;
    a lone server must not write its metrics to files there."""
    config, port, metrics_port = _config(tmp_path, fraud_repo, model_repo)
    inherited = tmp_path / "feast_metrics"
    inherited.mkdir()
    server = _serve(
        config,
        {
            "PROMETHEUS_MULTIPROC_DIR": str(inherited),
            "PROMETHEUS_MULTIPROCESS_DIR": str(inherited),
        },
    )
    try:
        _predict_a_few(port, server, 3)
        assert _predict_requests_served(metrics_port) == 3
        assert list(inherited.iterdir()) == []
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
    finally:
        if server.poll() is None:
            server.kill()
    assert "ignoring PROMETHEUS_MULTIPROC_DIR" in server.stdout.read().decode()


def test_two_processes_keep_out_of_the_directory_feasts_import_made(
    fraud_repo, model_repo, tmp_path
):
    """A supervisor started from a process that imported Feast inherits Feast's temporary
    metrics directory; its children's files go to a directory of its own instead."""
    config, port, metrics_port = _config(tmp_path, fraud_repo, model_repo, processes=2)
    feasts = tmp_path / "feast_metrics_x1y2z3"
    feasts.mkdir()
    theirs = feasts / "counter_12345.db"  # a file of Feast's own, not stale
    theirs.write_bytes(b"feast")
    parent = _serve(config, {"PROMETHEUS_MULTIPROC_DIR": str(feasts)})
    try:
        _predict_a_few(port, parent, 4)
        assert _predict_requests_served(metrics_port) == 4  # still added up, elsewhere
        assert list(feasts.iterdir()) == [theirs] and theirs.read_bytes() == b"feast"
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(60) == 0
    finally:
        if parent.poll() is None:
            parent.kill()
    assert "made up by Feast's import" in parent.stdout.read().decode()


def test_a_stop_while_the_processes_start_is_a_clean_stop(fraud_repo, model_repo, tmp_path):
    """SIGTERM as the supervisor has just started its children (a rollout that changes its
    mind): none has served a call, so the replica stops with 0, not a child's 143."""
    config, _, _ = _config(tmp_path, fraud_repo, model_repo, processes=2)
    parent = _serve(config, {})
    try:
        for line in parent.stdout:  # logged once both children are started
            if b"started 2 server processes" in line:
                break
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(60) == 0
    finally:
        if parent.poll() is None:
            parent.kill()


def test_the_processes_stop_when_their_supervisor_is_killed(fraud_repo, model_repo, tmp_path):
    """A supervisor killed outright (SIGKILL, the OOM killer) must not leave its children
    serving on the port with nobody to stop them."""
    config, port, _ = _config(tmp_path, fraud_repo, model_repo, processes=2)
    parent = _serve(config, {})
    children: list[psutil.Process] = []
    try:
        _predict_a_few(port, parent, 1)
        children = psutil.Process(parent.pid).children()
        assert len(children) == 2
        parent.kill()
        parent.wait(10)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [c.cmdline() for c in alive]
    finally:
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        if parent.poll() is None:
            parent.kill()


def test_two_processes_share_the_port_and_drain_on_sigterm(fraud_repo, model_repo, tmp_path):
    config, port, metrics_port = _config(tmp_path, fraud_repo, model_repo, processes=2)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    parent = _serve(config, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    calls = 0
    try:
        with PredictorClient(f"127.0.0.1:{port}") as probe:
            probe.wait_serving(["fraud_lgbm"], 120, parent)
        for i in range(16):  # separate connections: the kernel spreads them over processes
            with PredictorClient(f"127.0.0.1:{port}") as client:
                for _ in range(5):
                    answer = client.predict(
                        "fraud_lgbm", {"user_id": [i], "merchant_id": [i]}, {"amount": [10.0]}
                    )
                    assert answer.scores.shape == (1, 1)
                    calls += 1
        per_process = {db.name: _requests_in(db) for db in metrics_dir.glob("counter_*.db")}
        served_by = [name for name, n in per_process.items() if n > 0]
        assert len(served_by) == 2, per_process  # both processes took traffic
        assert sum(per_process.values()) == calls

        # the parent serves the sum over its children
        assert _predict_requests_served(metrics_port) == calls

        parent.send_signal(signal.SIGTERM)
        assert parent.wait(60) == 0
    finally:
        if parent.poll() is None:
            parent.kill()
    output = parent.stdout.read().decode()
    assert output.count("draining in-flight calls") == 2, output


def test_connections_opened_as_the_replica_first_answers_reach_both_processes(
    fraud_repo, model_repo, tmp_path
):
    """The processes bind the port together once both have loaded: one that listened
    alone first would keep every connection a client opened as soon as health answered."""
    config, port, _ = _config(tmp_path, fraud_repo, model_repo, processes=2)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    parent = _serve(config, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        with PredictorClient(f"127.0.0.1:{port}") as probe:
            probe.wait_serving(["fraud_lgbm"], 120, parent)
        with contextlib.ExitStack() as stack:  # 16 connections, all open at once
            for i in range(16):
                # a subchannel pool of its own: channels alike share one connection otherwise
                channel = stack.enter_context(
                    grpc.insecure_channel(
                        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
                    )
                )
                request = pb.PredictRequest(
                    model="fraud_lgbm",
                    entities=encode_entities({"user_id": [i], "merchant_id": [i]}),
                    request_features={"amount": pb.DoubleList(values=[1.0])},
                )
                pb_grpc.PredictorStub(channel).Predict(request, timeout=10)
        per_process = {db.name: _requests_in(db) for db in metrics_dir.glob("counter_*.db")}
        assert sum(per_process.values()) == 16
        assert len([n for n in per_process.values() if n > 0]) == 2, per_process
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(60) == 0
    finally:
        if parent.poll() is None:
            parent.kill()
    assert "all 2 server processes loaded; listening on port" in parent.stdout.read().decode()


def _new_child(parent: subprocess.Popen, known: set[int], timeout: float) -> psutil.Process:
    """The supervisor's child whose pid is not in `known`, once it has started one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = [c for c in psutil.Process(parent.pid).children() if c.pid not in known]
        if fresh:
            return fresh[0]
        assert parent.poll() is None, f"the supervisor exited with {parent.returncode}"
        time.sleep(0.05)
    raise AssertionError(f"no new server process after {timeout}s")


def test_a_killed_process_is_started_again_while_the_other_serves(fraud_repo, model_repo, tmp_path):
    config, port, _ = _config(tmp_path, fraud_repo, model_repo, processes=2)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    parent = _serve(config, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    outcomes: list[str] = []
    between_calls, hold, done = threading.Event(), threading.Event(), threading.Event()

    def call() -> None:  # a new connection per call: the kernel picks a listening process
        i = 0
        while not done.is_set() and i < 20_000:
            between_calls.set()
            while hold.is_set() and not done.is_set():
                time.sleep(0.01)
            between_calls.clear()
            with PredictorClient(f"127.0.0.1:{port}", timeout=10) as client:
                try:
                    client.predict(
                        "fraud_lgbm", {"user_id": [i], "merchant_id": [i]}, {"amount": [1.0]}
                    )
                    outcomes.append("OK")
                except grpc.RpcError as e:
                    outcomes.append(e.code().name)
            i += 1

    caller = threading.Thread(target=call)
    try:
        with PredictorClient(f"127.0.0.1:{port}") as probe:
            probe.wait_serving(["fraud_lgbm"], 120, parent)
        first = psutil.Process(parent.pid).children()
        assert len(first) == 2
        caller.start()
        time.sleep(1)
        # SIGKILL between two calls: a call in flight on the killed process is lost with it
        # (its connection ends); what must hold is that the next ones are answered.
        hold.set()
        assert between_calls.wait(30)
        victim = first[0]
        victim.kill()
        victim.wait(10)
        before = len(outcomes)
        hold.clear()

        replacement = _new_child(parent, {c.pid for c in first}, 30)
        deadline = time.monotonic() + 120  # it loads its models, then takes connections too
        served_by_new = 0.0
        while not served_by_new and time.monotonic() < deadline:
            db = metrics_dir / f"counter_{replacement.pid}.db"
            served_by_new = _requests_in(db) if db.exists() else 0.0
            time.sleep(0.2)
        done.set()
        caller.join(60)
        assert served_by_new > 0, "the new process never took a call"
        assert len(outcomes) - before > 10  # calls went on while it restarted
        assert set(outcomes) == {"OK"}, {o: outcomes.count(o) for o in set(outcomes)}
        assert parent.poll() is None  # the supervisor lives on
        assert {c.pid for c in psutil.Process(parent.pid).children()} == {
            first[1].pid,
            replacement.pid,
        }
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(60) == 0
    finally:
        done.set()
        hold.clear()
        if caller.is_alive():
            caller.join(60)
        if parent.poll() is None:
            parent.kill()
    output = parent.stdout.read().decode()
    assert f"server process {victim.pid} was killed by SIGKILL" in output, output
    assert f"started server process {replacement.pid} in place of {victim.pid}" in output
    assert output.count("draining in-flight calls") == 2, output


def test_processes_that_keep_dying_stop_the_replica(fraud_repo, model_repo, tmp_path):
    """Restarting hides nothing: a process killed again and again (MAX_DEATHS deaths within
    DEATHS_WINDOW_S) ends the replica with 1, for the orchestrator to see and replace it."""
    from augur.serving.supervisor import MAX_DEATHS

    config, port, _ = _config(tmp_path, fraud_repo, model_repo, processes=2)
    parent = _serve(config, {})
    try:
        with PredictorClient(f"127.0.0.1:{port}") as probe:
            probe.wait_serving(["fraud_lgbm"], 120, parent)
        known = {c.pid for c in psutil.Process(parent.pid).children()}
        victim = psutil.Process(min(known))
        for _ in range(MAX_DEATHS):
            victim.kill()
            victim = _new_child(parent, known, 30)  # the pause doubles: 0.5, 1, 2, 4, 8 s
            known.add(victim.pid)
        victim.kill()
        assert parent.wait(60) == 1
    finally:
        if parent.poll() is None:
            parent.kill()
    output = parent.stdout.read().decode()
    assert f"{MAX_DEATHS + 1} server processes died within" in output, output
    assert "draining in-flight calls" in output  # the survivor drained
