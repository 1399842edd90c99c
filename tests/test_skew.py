"""The training/serving skew report and the gates built on it, on the fraud scenario: a clean
run passes, a planted skew (values pushed online that the offline store never saw) is caught,
promotion is refused beyond the thresholds, and a canary whose inputs drift from its training
distribution is rolled back."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from augur.cli.main import main
from augur.features.redis_server import EmbeddedRedis
from augur.modelrepo.repository import ModelRepository
from tests.conftest import FraudRepo, server_config

SERVED = 400  # rows served per phase: enough for PSI's bins to say something
SKEWED_USERS = 0.3  # the share of served users whose txn_count_7d is pushed wrong


class Env:
    def __init__(self, repo: Path, models: Path, config: Path, address: str, server, client):
        self.repo, self.models, self.config = repo, models, config
        self.address, self.server, self.client = address, server, client

    def serve(self, frame: pd.DataFrame, model: str = "fraud_lgbm", **amounts) -> None:
        """One 1-row call per transaction, then the log written."""
        for u, m, a in zip(frame["user_id"], frame["merchant_id"], frame["amount"], strict=True):
            self.client.predict(model, {"user_id": [u], "merchant_id": [m]}, {"amount": [a]})
        self.server.servicer.feature_log.flush()

    def skew(self, capsys, *args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["skew", "fraud_lgbm", "--config", str(self.config), *args])
        return code, capsys.readouterr().out


@pytest.fixture(scope="module")
def env(fraud_repo, tmp_path_factory):
    """The fraud repo on a Redis of its own (so planted values reach no other test), its
    fraud_lgbm service given a Feast logging_config, and fraud_lgbm trained from it."""
    from feast import FeatureService
    from feast.feature_logging import LoggingConfig
    from feast.infra.offline_stores.file_source import FileLoggingDestination

    from augur.client.client import PredictorClient
    from augur.features.repo import REDIS_ENV, open_store
    from augur.pipelines.materialize import materialize
    from augur.pipelines.train import train
    from augur.serving.server import start

    saved = os.environ.get(REDIS_ENV)
    root = tmp_path_factory.mktemp("skew")
    repo = root / "feature_repo"
    shutil.copytree(fraud_repo.path, repo)
    with EmbeddedRedis() as redis:
        try:
            # in full: the copied registry says the session's Redis is materialized already
            now = dt.datetime.now(dt.UTC)
            materialize(repo, redis.address, start=now - dt.timedelta(days=90), progress=False)
            store = open_store(repo, redis.address)
            views = [store.get_feature_view(v.name) for v in fraud_repo.store.list_feature_views()]
            logged = FeatureService(
                name="fraud_lgbm",
                features=views,
                logging_config=LoggingConfig(FileLoggingDestination(path="served"), 1.0),
            )
            store.apply([logged])
            models = root / "models"
            train(repo, models, redis.address, only=["fraud_lgbm"], progress=False)
            # The demo's aggregates (30-day counts, running totals) start from an empty history,
            # so training rows from its first weeks hold smaller values than today's: PSI of
            # today's traffic reaches ~4 on them. That drift is the data's; the skew checked
            # here is served != offline, so PSI is held to what the data itself shows.
            model_yaml = models / "fraud_lgbm" / "model.yaml"
            raw = yaml.safe_load(model_yaml.read_text())
            raw["skew"] = {"max_mismatch": 0.01, "max_psi": 6.0}
            model_yaml.write_text(yaml.safe_dump(raw, sort_keys=False))
            config = root / "augur.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "feature_repo": str(repo),
                        "model_repo": str(models),
                        "redis": {"address": redis.address},
                    }
                )
            )
            running = start(server_config(FraudRepo(repo, redis.address, store), models))
            client = PredictorClient(f"127.0.0.1:{running.port}", timeout=10)
            client.wait_ready(10)
            try:
                yield Env(repo, models, config, redis.address, running, client)
            finally:
                client.close()
                running.stop()
        finally:
            if saved is not None:
                os.environ[REDIS_ENV] = saved


@pytest.fixture(scope="module")
def traffic(fraud_repo):
    txns = pd.read_parquet(fraud_repo.data / "transactions.parquet")
    return txns.sample(2 * SERVED, random_state=3).reset_index(drop=True)


@pytest.fixture(scope="module")
def clean(env, traffic):
    began = dt.datetime.now(dt.UTC)
    env.serve(traffic.iloc[:SERVED])
    return began, dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def skewed(env, traffic, clean):
    """Wrong txn_count_7d pushed online for some served users, then traffic served again."""
    from augur.pipelines.push import push

    served = traffic.iloc[SERVED:]
    users = served["user_id"].drop_duplicates()
    wrong = users.sample(frac=SKEWED_USERS, random_state=5)
    stats = pd.read_parquet(env.repo / "data" / "user_stats.parquet")
    latest = stats.sort_values("event_timestamp").groupby("user_id").tail(1)
    rows = latest[latest["user_id"].isin(wrong)].copy()
    rows["txn_count_7d"] += 50
    rows["event_timestamp"] = pd.Timestamp.now(tz="UTC")
    push(env.repo, env.address, "user_stats", rows)
    began = dt.datetime.now(dt.UTC)
    env.serve(served)
    share = served["user_id"].isin(wrong).mean()
    return began, share


def test_a_clean_run_reports_no_mismatch_and_passes(env, clean, capsys):
    since, until = clean
    code, out = env.skew(capsys, "--since", since.isoformat(), "--until", until.isoformat())
    print(out)
    assert code == 0, out
    assert f"{SERVED:,} served rows" in out
    assert "within thresholds" in out
    for line in out.splitlines():
        if line.startswith(("user_stats__", "merchant_stats__", "user_merchant_stats__")):
            assert line.split()[1] == "0.0%", line  # mismatch


def test_a_planted_skew_is_caught_and_fails_with_a_plot(env, skewed, capsys, tmp_path):
    since, share = skewed
    png = tmp_path / "skew.png"
    code, out = env.skew(capsys, "--since", since.isoformat(), "--plot", str(png))
    print(out)
    assert code == 1, out
    row = next(line for line in out.splitlines() if line.startswith("user_stats__txn_count_7d "))
    mismatch = float(row.split()[1].rstrip("%")) / 100
    assert abs(mismatch - share) < 0.02
    assert "user_stats__txn_count_7d: " in out.split("beyond thresholds")[1]
    others = [
        line
        for line in out.splitlines()
        if line.startswith(("merchant_stats__", "user_merchant_stats__"))
    ]
    assert others and all(line.split()[1] == "0.0%" for line in others)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_promote_refuses_a_candidate_beyond_the_skew_thresholds_unless_forced(env, skewed, capsys):
    repo = ModelRepository(env.models)
    v1 = repo.resolve("fraud_lgbm")
    v2 = repo.publish(v1.spec, v1.artifact, v1.metadata).version
    promote = ["models", "promote", "fraud_lgbm", v2, "--config", str(env.config)]
    capsys.readouterr()
    assert main(promote) == 1
    out = capsys.readouterr().out
    assert "refusing to promote" in out and "user_stats__txn_count_7d" in out
    assert repo.resolve("fraud_lgbm").version == v1.version
    assert main([*promote, "--force"]) == 0
    assert repo.resolve("fraud_lgbm").version == v2
    repo.promote("fraud_lgbm", v1.version)


def test_a_canary_whose_inputs_drift_from_training_is_rolled_back(env, traffic):
    from augur.modelrepo.monitoring import training_distribution
    from augur.pipelines.skew import read_log

    repo = ModelRepository(env.models)
    v1 = repo.resolve("fraud_lgbm")
    # A candidate trained on today's features (the demo's history drifts: see `env`): its
    # training distribution is that of today's traffic, served by stable first.
    began = dt.datetime.now(dt.UTC)
    env.serve(traffic.iloc[:SERVED])
    today = read_log(env.repo / "served", "fraud_lgbm", began, dt.datetime.now(dt.UTC))
    x = np.column_stack([pd.to_numeric(today[f]).astype(float) for f in v1.features])
    metadata = {**v1.metadata, "training_distribution": training_distribution(x, v1.features)}
    candidate = repo.publish(v1.spec, v1.artifact, metadata).version
    guardrails = {"max_feature_psi": 0.5, "min_requests": 20}
    repo.set_canary("fraud_lgbm", candidate, 1.0, guardrails)
    env.server.manager.refresh()
    assert env.server.manager.route("fraud_lgbm").canary.version.version == candidate
    typical = traffic.iloc[SERVED : SERVED + 250]
    env.serve(typical)  # other rows of the same traffic: the canary stays
    assert repo.spec("fraud_lgbm").canary is not None
    stats = env.server.manager.route("fraud_lgbm").guard.stats()
    print("canary on typical inputs:", stats)
    assert stats["feature_psi"] < guardrails["max_feature_psi"]
    drifted = typical.assign(amount=typical["amount"] * 1_000)
    env.serve(pd.concat([drifted] * 2))  # the canary's latest inputs, two thirds drifted
    deadline = time.monotonic() + 10
    while repo.spec("fraud_lgbm").canary is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    rollback = repo.spec("fraud_lgbm").last_rollback
    assert rollback and rollback["version"] == candidate, rollback
    assert "feature drift" in rollback["reason"] and "amount" in rollback["reason"]
