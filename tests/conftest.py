"""Shared fixtures: a private Redis process, a small fraud repo applied and materialized with
real Feast, models trained from it, and a real gRPC server on loopback."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def model_repo(fraud_repo: FraudRepo, tmp_path_factory) -> Path:
    from augur.pipelines.train import train

    models = tmp_path_factory.mktemp("models")
    train(fraud_repo.path, models, fraud_repo.address, progress=False)
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
