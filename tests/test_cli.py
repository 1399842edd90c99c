"""What a new user hits first with the `augur` command: `augur redis` as the README writes
it, help that shows defaults, and start-up lines that say where things are and what is wrong.
Every test runs the real command in its own process."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import yaml

from augur.features.redis_server import EmbeddedRedis, free_port

AUGUR = [sys.executable, "-m", "augur.cli.main"]


def _augur(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*AUGUR, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _start(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    """The command as a user starts it in a terminal, where Ctrl-C reaches it. A shell that
    runs this suite in the background (`pytest &`) ignores SIGINT for it, and an ignored
    signal stays ignored across exec: the command would never see the test's Ctrl-C. So the
    child is started with SIGINT not ignored, as a foreground command has it."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # exec resets it to default
    try:
        return subprocess.Popen(
            [*AUGUR, *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _read_until(process: subprocess.Popen, wanted: str, timeout: float = 60) -> str:
    """What the process printed up to a line containing `wanted` (AssertionError if it ends
    or `timeout` passes first)."""
    seen = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(deadline - time.monotonic()):
                break
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if wanted in line:
                return "".join(seen)
    raise AssertionError(f"no line with {wanted!r} in:\n{''.join(seen)}")


def _stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            return process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def test_augur_redis_with_the_default_relative_folder_serves_and_keeps_its_data(tmp_path):
    port = free_port()
    process = _start("redis", "--port", str(port), cwd=tmp_path)
    try:
        printed = _read_until(process, "Ctrl-C stops it", timeout=30)
        folder = tmp_path / ".augur" / "redis"
        assert str(folder) in printed  # the absolute folder, where the user can find it
        client = redis.Redis(port=port)
        assert client.ping()
        client.set("kept", "yes")
        client.close()
    finally:
        assert _stop(process) in (0, 130)
    assert (folder / "server.log").is_file() and (folder / "dump.rdb").is_file()


def test_a_redis_that_cannot_start_prints_the_servers_reason(tmp_path):
    with EmbeddedRedis() as taken:
        done = _augur("redis", "--port", str(taken.port), "--dir", "data", cwd=tmp_path)
    assert done.returncode == 1
    assert "did not start" in done.stderr and "Address already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_augur_redis_help_shows_the_default_port_and_folder():
    done = _augur("redis", "--help", timeout=30)
    assert done.returncode == 0
    assert "(default: 6379)" in done.stdout and "(default: .augur/redis)" in done.stdout


def _config(tmp_path: Path, feature_repo: Path, redis_address: str, **server) -> Path:
    path = tmp_path / "augur.yaml"
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    path.write_text(
        yaml.safe_dump(
            {
                "feature_repo": str(feature_repo),
                "model_repo": str(models),
                "redis": {"address": redis_address, "connect_timeout_ms": 200},
                "server": server,
            }
        )
    )
    return path


def test_augur_serve_says_where_it_listens_and_that_redis_does_not_answer(fraud_repo, tmp_path):
    grpc_port, metrics_port, nobody = free_port(), free_port(), free_port()
    config = _config(
        tmp_path,
        fraud_repo.path,
        f"127.0.0.1:{nobody}",
        port=grpc_port,
        metrics_port=metrics_port,
        watch_interval_s=0,
    )
    process = _start("serve", "--config", str(config))
    try:
        printed = _read_until(process, "serving 0 model(s)", timeout=90)
    finally:
        _stop(process)
    assert f"gRPC on 127.0.0.1:{grpc_port}" in printed
    assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in printed
    assert f"Redis at 127.0.0.1:{nobody} does not answer" in printed


def test_materialize_with_a_wrong_redis_address_says_where_and_why_in_one_line(
    fraud_repo, tmp_path
):
    nobody = free_port()
    config = _config(tmp_path, fraud_repo.path, f"127.0.0.1:{nobody}")
    done = _augur("materialize", "--config", str(config))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"Redis at 127.0.0.1:{nobody} does not answer" in lines[0]
    assert "redis.address" in lines[0]


def test_train_with_an_unknown_kind_lists_the_valid_kinds(tmp_path):
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    (repo / "models.yaml").write_text(
        "labels: {path: labels.parquet, label: y}\n"
        "models:\n  m: {kind: sklearn, feature_service: fs}\n"
    )
    config = _config(tmp_path, repo, "127.0.0.1:6379")
    done = _augur("train", "--config", str(config))
    assert done.returncode == 1
    assert "kind must be one of ['catboost', 'lightgbm', 'onnx', 'torch', 'xgboost']" in done.stderr
    assert "got 'sklearn'" in done.stderr
    assert "Traceback" not in done.stderr
