"""A/B experiments as an operator runs them: `augur experiments start` splits a model's traffic
between versions at fixed shares, sticky per entity, with per-arm metrics; `stop` ends it;
`report` joins outcomes to arms by the same hash the server routed with."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import yaml

from augur.client import PredictorClient
from augur.features.redis_server import free_port
from augur.modelrepo.repository import ModelRepository, RepositoryError
from augur.modelrepo.spec import parse_experiment, parse_spec
from augur.serving.server import start
from tests.conftest import ROOT, server_config
from tests.lifecycle_helpers import publish_lightgbm_variant

USERS = list(range(5_000, 5_600))  # ids no other test of the shared Redis uses for this
MERCHANTS = [u % 80 for u in USERS]
AMOUNTS = [float(10 + u % 50) for u in USERS]


def _augur(*args: str, config) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "augur.cli.main", "experiments", *args, "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def stack(fraud_repo, model_repo, tmp_path):
    """A server watching a private copy of the model repository, with v2 and v3 published."""
    models = tmp_path / "models"
    shutil.copytree(model_repo, models)
    repo = ModelRepository(models)
    for seed in (3, 4):
        publish_lightgbm_variant(repo, "fraud_lgbm", seed=seed, tmp=tmp_path)
    config = server_config(fraud_repo, models)
    config.server.watch_interval_s = 0.1
    config.server.metrics_port = free_port()
    running = start(config)
    from augur.serving import metrics

    metrics.start(config.server.metrics_host, config.server.metrics_port)
    yaml_path = tmp_path / "augur.yaml"
    yaml_path.write_text(yaml.safe_dump({"model_repo": str(models)}))
    with PredictorClient(f"127.0.0.1:{running.port}", timeout=10) as client:
        client.wait_ready(10)
        yield {"repo": repo, "client": client, "config": yaml_path, "metrics": config.server}
    running.stop()


def _call(client, **kw):
    return client.predict(
        "fraud_lgbm", {"user_id": USERS, "merchant_id": MERCHANTS}, {"amount": AMOUNTS}, **kw
    )


def _await_split(client, arms: set[str], timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = _call(client, return_features=True)
        if set(got.row_versions) == arms:
            return got
        time.sleep(0.1)
    raise AssertionError(f"the server never split between {arms}: {set(got.row_versions)}")


def test_an_experiment_splits_entities_sticky_at_its_shares_and_each_arm_scores_its_rows(stack):
    client, repo = stack["client"], stack["repo"]
    done = _augur(
        "start", "fraud_lgbm", "ranker-q4", "--arm", "v1=0.5", "--arm", "v2=0.3", "--arm",
        "v3=0.2", "--sticky-key", "user_id", config=stack["config"],
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    first = _await_split(client, {"v1", "v2", "v3"})
    versions = np.array(first.row_versions)
    shares = {v: (versions == v).mean() for v in ("v1", "v2", "v3")}
    assert shares["v1"] == pytest.approx(0.5, abs=0.08), shares
    assert shares["v2"] == pytest.approx(0.3, abs=0.08), shares
    assert shares["v3"] == pytest.approx(0.2, abs=0.08), shares
    assert _call(client).row_versions == first.row_versions  # sticky
    for i in (0, 1, 2):  # alone, a user lands where it landed in a batch
        alone = client.predict(
            "fraud_lgbm", {"user_id": [USERS[i]], "merchant_id": [MERCHANTS[i]]},
            {"amount": [AMOUNTS[i]]},
        )  # fmt: skip
        assert alone.version == versions[i]
    for v in ("v1", "v2", "v3"):  # each row scored by its own arm's model
        rows = versions == v
        booster = lgb.Booster(model_file=str(repo.resolve("fraud_lgbm", v).artifact))
        expected = booster.predict(first.features[rows]).astype(np.float32)
        np.testing.assert_allclose(first.scores[rows, 0], expected, rtol=1e-6, atol=1e-7)
    assert _call(client, version="v2").version == "v2"  # a pinned call is not split

    server = stack["metrics"]
    url = f"http://{server.metrics_host}:{server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    rows_v3 = (
        'augur_experiment_rows_total{arm="v3",experiment="ranker-q4",model="fraud_lgbm"} '
        f"{float((versions == 'v3').sum() * 2 + (versions[:3] == 'v3').sum())}"
    )
    assert rows_v3 in text
    status = _augur("status", "fraud_lgbm", "--metrics", url, config=stack["config"])
    assert status.returncode == 0 and "ranker-q4" in status.stdout, status.stdout
    line = next(x for x in status.stdout.splitlines() if " v3 " in x)
    assert str(int((versions == "v3").sum() * 2 + (versions[:3] == "v3").sum())) in line

    stopped = _augur("stop", "fraud_lgbm", config=stack["config"])
    assert stopped.returncode == 0, stopped.stdout
    deadline = time.monotonic() + 10
    while _call(client).version != "v1":
        assert time.monotonic() < deadline, "calls did not return to stable after stop"
        time.sleep(0.1)
    assert repo.spec("fraud_lgbm").experiment is None


def test_the_report_joins_outcomes_to_arms_as_the_server_routed_them(stack, tmp_path):
    client, repo = stack["client"], stack["repo"]
    repo.start_experiment("fraud_lgbm", "exp-b", {"v1": 0.5, "v2": 0.5}, "user_id")
    served = _await_split(client, {"v1", "v2"})
    # Outcomes a caller logged: arm v2's users convert far more often, so the report must
    # put v2's mean outcome clearly above v1's, which only a join by the server's own
    # assignment can do.
    versions = np.array(served.row_versions)
    label = (versions == "v2").astype(int)
    label[::7] = 1 - label[::7]
    outcomes = tmp_path / "outcomes.parquet"
    pd.DataFrame({"user_id": USERS, "label": label, "score": served.scores[:, 0]}).to_parquet(
        outcomes
    )
    repo.stop_experiment("fraud_lgbm")  # the report reads the last experiment's definition
    done = _augur("report", "fraud_lgbm", "--outcomes", str(outcomes), config=stack["config"])
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {x.split()[0]: x for x in done.stdout.splitlines() if x.startswith("v")}
    mean = {v: float(lines[v].split()[3]) for v in ("v1", "v2")}
    assert mean["v1"] == pytest.approx(label[versions == "v1"].mean(), abs=1e-4)
    assert mean["v2"] == pytest.approx(label[versions == "v2"].mean(), abs=1e-4)
    assert mean["v2"] > 0.8 > 0.2 > mean["v1"]
    assert "[" in lines["v1"] and lines["v1"].count("[") == 2  # mean and AUC intervals


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"name": "e", "arms": {"v1": 1.0}}, "2 to 8 arms"),
        ({"name": "e", "arms": {"v1": 0.5, "v2": 0.4}}, "add up to 1"),
        ({"name": "bad name!", "arms": {"v1": 0.5, "v2": 0.5}}, "experiment.name"),
        ({"name": "e", "arms": {"v1": "half", "v2": 0.5}}, "experiment.arms.v1"),
    ],
)
def test_a_malformed_experiment_is_refused_by_name(raw, says):
    with pytest.raises(RepositoryError, match=says):
        parse_experiment(raw, "model.yaml")


def test_a_model_runs_a_canary_or_an_experiment_not_both():
    raw = {
        "kind": "lightgbm",
        "feature_service": "fraud_lgbm",
        "canary": {"version": "v2", "weight": 0.1},
        "experiment": {"name": "e", "arms": {"v1": 0.5, "v2": 0.5}},
    }
    with pytest.raises(RepositoryError, match="canary or an experiment"):
        parse_spec("fraud_lgbm", raw, "model.yaml")


def test_starting_an_experiment_on_an_unknown_version_writes_nothing(stack):
    repo = stack["repo"]
    before = (repo.root / "fraud_lgbm" / "model.yaml").read_text()
    done = _augur(
        "start", "fraud_lgbm", "e", "--arm", "v1=0.5", "--arm", "v9=0.5", config=stack["config"]
    )
    assert done.returncode == 1 and "no version 'v9'" in done.stdout, done.stdout
    assert (repo.root / "fraud_lgbm" / "model.yaml").read_text() == before
