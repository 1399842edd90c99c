"""Shared fixtures: a private Redis process, a small fraud repo applied and materialized with
real Feast, models trained from it, a real gRPC server on loopback, and `servers`, which starts
a test's own servers (in process or as `augur` processes) and always stops them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from augur.config import Config, RedisConfig, ServerConfig
from augur.features.redis_server import EmbeddedRedis, free_port
from examples.fraud.generate import Scale
from examples.fraud.scaffold import scaffold

ROOT = Path(__file__).resolve().parent.parent
SMALL = Scale(users=400, merchants=80, transactions=8_000, days=30)
MAX_ROWS = 1_000


@dataclass
class FraudRepo:
    path: Path
    address: str
    store: object  # feast.FeatureStore

    @property
    def data(self) -> Path:
        return self.path / "data"


def make_repo(dest: Path, address: str, scale: Scale = SMALL) -> Path:
    """The example repo's definitions, generated data and `feast apply`, as a user would."""
    scaffold(dest, address, scale)
    return dest


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session")
def fraud_repo(redis_server: EmbeddedRedis, tmp_path_factory) -> FraudRepo:
    from augur.features.repo import open_store
    from augur.pipelines.materialize import materialize

    path = make_repo(tmp_path_factory.mktemp("fraud") / "feature_repo", redis_server.address)
    materialize(path, redis_server.address)
    return FraudRepo(path, redis_server.address, open_store(path, redis_server.address))


def make_cluster_repo(dest: Path, address: str, scale: Scale = SMALL) -> Path:
    """`make_repo` for a Redis Cluster: Feast's online store says redis_type: redis_cluster."""
    from examples.fraud.generate import generate
    from examples.fraud.scaffold import copy_definitions, feast_apply

    copy_definitions(dest)
    yaml = dest / "feature_store.yaml"
    text = yaml.read_text().replace(
        "  type: redis\n", "  type: redis\n  redis_type: redis_cluster\n"
    )
    yaml.write_text(text)
    generate(dest / "data", scale)
    feast_apply(dest, address)
    return dest


@pytest.fixture(scope="module")
def redis_cluster():
    """3 masters + 3 replicas on loopback, cluster_state:ok (augur.features.cluster_local)."""
    from augur.features.cluster_local import LocalCluster

    with LocalCluster(3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster_repo(redis_cluster, tmp_path_factory) -> FraudRepo:
    """The fraud repo on `redis_cluster`, applied and materialized."""
    from augur.features.repo import REDIS_ENV, open_store
    from augur.pipelines.materialize import materialize

    address = redis_cluster.address
    before = os.environ.get(REDIS_ENV)
    path = make_cluster_repo(tmp_path_factory.mktemp("fraud-cluster") / "feature_repo", address)
    materialize(path, address, progress=False)
    repo = FraudRepo(path, address, open_store(path, address))
    if before is not None:  # other tests' stores keep the one-node address
        os.environ[REDIS_ENV] = before
    return repo


@pytest.fixture(scope="session")
def model_repo(fraud_repo: FraudRepo, tmp_path_factory) -> Path:
    from augur.modelrepo.repository import ModelRepository
    from augur.pipelines.train import train
    from augur.serving.probe import vet_once

    models = tmp_path_factory.mktemp("models")
    train(fraud_repo.path, models, fraud_repo.address, progress=False)
    # Vetted once, as a first server start would: the copies tests make of this repository
    # carry the verdicts, so their servers start without probing these versions again
    # (tests/test_probe_verdicts.py copies it without them).
    repo = ModelRepository(models)
    for name in repo.names():
        vet_once(repo.resolve(name))
    return models


def server_config(repo: FraudRepo, models: Path, address: str | None = None) -> Config:
    return Config(
        feature_repo=repo.path,
        model_repo=models,
        redis=RedisConfig(address=address or repo.address),
        server=ServerConfig(port=free_port(), metrics_port=0, max_rows=MAX_ROWS, grace_seconds=2.0),
    )


def write_config(path: Path, repo: FraudRepo, models: Path, **server: object) -> Path:
    """An augur.yaml for a server run as its own process (`augur serve --config path`)."""
    import yaml

    path.write_text(
        yaml.safe_dump(
            {
                "feature_repo": str(repo.path),
                "model_repo": str(models),
                "redis": {"address": repo.address},
                "server": server,
            }
        )
    )
    return path


class AugurProcess(subprocess.Popen):
    """An `augur` command run as its own process (output and errors on one pipe unless given
    a file); for `augur serve`, the config it was started with and that config's ports."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        output=subprocess.PIPE,
        config: Path | None = None,
        port: int = 0,
        metrics_port: int = 0,
    ) -> None:
        command = [sys.executable, "-m", "augur.cli.main", *args]
        super().__init__(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        self.config, self.port, self.metrics_port = config, port, metrics_port


class Servers:
    """The servers and `augur` processes one test starts; `stop` ends every one still running,
    whatever the test did with them (stopping twice is harmless)."""

    STOP_TIMEOUT_S = 30.0

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self._in_process: list = []  # augur.serving.server.RunningServer
        self._processes: list[AugurProcess] = []

    def start(self, config: Config):
        """A server in this process (augur.serving.server.start) on `config`'s ports:
        server_config picks free ones."""
        from augur.serving.server import start

        running = start(config)
        self._in_process.append(running)
        return running

    def serve(
        self, repo: FraudRepo, models: Path, env: dict[str, str] | None = None, **server: object
    ) -> AugurProcess:
        """`augur serve` with an augur.yaml of its own: gRPC and metrics on free ports unless
        `server` names them, and the other server options given. `env` is the whole
        environment (None: this process's)."""
        server = {"port": free_port(), "metrics_port": free_port(), **server}
        config = self._tmp_path / f"augur-serve-{len(self._processes)}.yaml"
        write_config(config, repo, models, **server)
        process = AugurProcess(
            "serve",
            "--config",
            str(config),
            env=env,
            config=config,
            port=server["port"],
            metrics_port=server["metrics_port"],
        )
        self._processes.append(process)
        return process

    def command(self, *args: str, env: dict[str, str] | None = None, output=subprocess.PIPE):
        """Any other `augur` command as its own process, ended like a server if still running
        when the test ends."""
        process = AugurProcess(*args, env=env, output=output)
        self._processes.append(process)
        return process

    def stop(self) -> None:
        """SIGTERM to the processes still running (SIGKILL to those that outlast
        STOP_TIMEOUT_S), then a stop of the in-process servers, the last started first."""
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(self.STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()
        for running in reversed(self._in_process):
            running.stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    """Starts servers for one test (`servers.start(config)`, `servers.serve(repo, models,
    **server)`) and stops all of them when it ends, passed or failed."""
    own = Servers(tmp_path)
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture(scope="session")
def server(fraud_repo: FraudRepo, model_repo: Path):
    from augur.serving.server import start

    running = start(server_config(fraud_repo, model_repo))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client(server):
    from augur.client.client import PredictorClient

    with PredictorClient(f"127.0.0.1:{server.port}") as c:
        c.wait_ready(10)
        yield c


def pytest_collection_finish(session):
    """The MLServer tests' virtualenv (minutes to build on a fresh clone) installs while the
    tests before them run (the benchmark's quick run waits for it too, on its lock)."""
    users = ("test_remote_backends", "test_bench_smoke")
    if any(name in item.nodeid for item in session.items for name in users):
        from bench.mlserver import install_in_background

        install_in_background()


_exit_status = 0


def pytest_sessionfinish(session, exitstatus):
    global _exit_status
    _exit_status = int(exitstatus)


def pytest_unconfigure(config):
    """End the process once pytest is done: at interpreter teardown duckdb's bindings (loaded
    by Feast's offline store) print leak reports after pytest's summary line."""
    import atexit
    import os

    def _exit() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)

    atexit.register(_exit)
