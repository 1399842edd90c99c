"""Model lifecycle over real gRPC: sticky canary, hot swap under load, shadow, guardrail
rollbacks, memory across load/unload cycles, and the operator's Admin service and CLI."""

from __future__ import annotations

import errno
import gc
import shutil
import subprocess
import sys
import threading
import time

import grpc
import lightgbm as lgb
import numpy as np
import psutil
import pytest
import yaml

from augur.client.client import AdminClient, PredictorClient
from augur.features.repo import build_plans
from augur.modelrepo.repository import ModelRepository
from augur.serving import metrics
from augur.serving.lifecycle import ModelManager
from augur.serving.server import start
from tests.conftest import server_config
from tests.lifecycle_helpers import publish_lightgbm_variant, publish_torch

N_USERS = 300
USERS = list(range(N_USERS))
MERCHANTS = [u % 80 for u in USERS]
AMOUNTS = [float(10 + u % 50) for u in USERS]
AUGUR_MODELS = [sys.executable, "-m", "augur.cli.main", "models"]


@pytest.fixture
def stack(fraud_repo, model_repo, tmp_path):
    """A server of its own over a private copy of the model repository, watching it."""
    models = tmp_path / "models"
    shutil.copytree(model_repo, models)
    repo = ModelRepository(models)
    v2 = publish_lightgbm_variant(repo, "fraud_lgbm", seed=3, tmp=tmp_path)
    config = server_config(fraud_repo, models)
    config.server.watch_interval_s = 0.1
    running = start(config)
    address = f"127.0.0.1:{running.port}"
    with PredictorClient(address, timeout=10) as client, AdminClient(address) as admin:
        client.wait_ready(10)
        yield {
            "repo": repo,
            "server": running,
            "client": client,
            "admin": admin,
            "address": address,
            "v2": v2,
            "tmp": tmp_path,
        }
    running.stop()


def _offline(version, features: np.ndarray) -> np.ndarray:
    return lgb.Booster(model_file=str(version.artifact)).predict(features).astype(np.float32)


def _call(client, n=N_USERS, **kw):
    return client.predict(
        "fraud_lgbm",
        {"user_id": USERS[:n], "merchant_id": MERCHANTS[:n]},
        {"amount": AMOUNTS[:n]},
        **kw,
    )


def test_canary_split_is_sticky_weighted_and_versioned(stack):
    client, admin, repo = stack["client"], stack["admin"], stack["repo"]
    state = admin.canary("fraud_lgbm", "v2", 0.3)[0]
    assert (state.canary.version, state.canary.weight, state.canary.sticky_key) == (
        "v2",
        pytest.approx(0.3),
        "user_id",
    )

    first = _call(client, return_features=True)
    versions = np.array(first.row_versions)
    assert first.version == "" and set(versions) == {"v1", "v2"}
    assert 0.2 < (versions == "v2").mean() < 0.4
    for _ in range(3):  # sticky: the same users land on the same versions every time
        assert _call(client).row_versions == first.row_versions
    for i in (0, 1, 2, 3):  # alone or in a batch, a user sees one version
        alone = client.predict(
            "fraud_lgbm",
            {"user_id": [USERS[i]], "merchant_id": [MERCHANTS[i]]},
            {"amount": [AMOUNTS[i]]},
        )
        assert alone.version == versions[i] and not alone.row_versions

    # Every row's score is its own version's offline prediction on the same features.
    for version_id in ("v1", "v2"):
        rows = versions == version_id
        expected = _offline(repo.resolve("fraud_lgbm", version_id), first.features[rows])
        np.testing.assert_allclose(first.scores[rows, 0], expected, rtol=1e-6, atol=1e-7)

    pinned = _call(client, version="v2")
    assert pinned.version == "v2" and not pinned.row_versions
    assert _call(client, version="canary").version == "v2"
    assert _call(client, version="stable").version == "v1"


def test_hot_swaps_under_load_drop_nothing(stack):
    client, admin, repo = stack["client"], stack["admin"], stack["repo"]
    n = 20
    reference = _call(client, n=n, return_features=True)
    expected = {
        v: _offline(repo.resolve("fraud_lgbm", v), reference.features) for v in ("v1", "v2")
    }
    answers: list[tuple[str, np.ndarray]] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with PredictorClient(stack["address"], timeout=10) as own:
            while not stop.is_set() and len(answers) < 20_000:
                try:
                    p = _call(own, n=n)
                    answers.append((p.version, p.scores[:, 0]))
                except grpc.RpcError as e:
                    failures.append(f"{e.code().name}: {e.details()}")

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        for target in ("v2", "v1", "v2", "v1"):  # four swaps through the Admin service
            time.sleep(0.3)
            admin.promote("fraud_lgbm", target)
        time.sleep(0.3)
        repo.promote("fraud_lgbm", "v2")  # a fifth, written to the repository: the watcher
        deadline = time.monotonic() + 10
        while (not answers or answers[-1][0] != "v2") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        for w in workers:
            w.join(30)

    assert failures == []
    assert len(answers) > 50
    assert {v for v, _ in answers} == {"v1", "v2"}
    assert answers[-1][0] == "v2"
    for version, scores in answers:  # each answer names the version that produced it
        np.testing.assert_allclose(scores, expected[version], rtol=1e-6, atol=1e-7)


def test_unloaded_versions_free_their_memory(fraud_repo, model_repo, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(model_repo, models)
    repo = ModelRepository(models)
    publish_lightgbm_variant(repo, "fraud_lgbm", seed=5, tmp=tmp_path)
    manager = ModelManager(repo, build_plans(fraud_repo.store))
    process = psutil.Process()
    rss = []
    for cycle in range(50):
        repo.promote("fraud_lgbm", "v2" if cycle % 2 == 0 else "v1")
        manager.refresh()
        assert manager.route("fraud_lgbm").stable.version.version == ("v2", "v1")[cycle % 2]
        gc.collect()
        rss.append(process.memory_info().rss)
    boosters = [o for o in gc.get_objects() if isinstance(o, lgb.Booster)]
    served = {
        id(r.stable.runtime.booster)
        for r in manager.routes.values()
        if r.stable.version.spec.kind == "lightgbm"
    }
    assert served <= {id(b) for b in boosters}
    assert len(manager.route("fraud_lgbm").versions) == 1  # only the serving version is held
    assert rss[-1] - rss[5] < 50 * 2**20, f"RSS grew {(rss[-1] - rss[5]) / 2**20:.1f} MiB"


def _count(metric, **labels) -> float:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(("_total", "_count")) and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return sample.value
    return 0.0


def test_shadow_scores_a_copy_off_the_request_path(stack):
    client, admin, repo = stack["client"], stack["admin"], stack["repo"]
    rows_before = _count(
        metrics.SHADOW_ROWS, model="fraud_lgbm", version="v2", outcome="agree"
    ) + _count(metrics.SHADOW_ROWS, model="fraud_lgbm", version="v2", outcome="disagree")
    diff_before = _count(metrics.SHADOW_DIFF, model="fraud_lgbm", version="v2")
    state = admin.shadow("fraud_lgbm", "v2")[0]
    assert state.shadow.version == "v2" and state.stable == "v1"

    answer = _call(client, return_features=True)
    stack["server"].servicer.shadow.drain()
    assert answer.version == "v1"  # callers get the primary, untouched
    np.testing.assert_allclose(
        answer.scores[:, 0],
        _offline(repo.resolve("fraud_lgbm", "v1"), answer.features),
        rtol=1e-6,
        atol=1e-7,
    )
    rows_after = _count(
        metrics.SHADOW_ROWS, model="fraud_lgbm", version="v2", outcome="agree"
    ) + _count(metrics.SHADOW_ROWS, model="fraud_lgbm", version="v2", outcome="disagree")
    assert rows_after - rows_before == len(USERS)
    assert _count(metrics.SHADOW_DIFF, model="fraud_lgbm", version="v2") - diff_before == len(USERS)


def test_failing_shadow_never_reaches_callers(stack):
    client, admin, repo = stack["client"], stack["admin"], stack["repo"]
    broken = publish_torch(repo, "fraud_mlp", "failing", stack["tmp"])
    errors_before = _count(metrics.SHADOW_ERRORS, model="fraud_mlp", version=broken.version)
    admin.shadow("fraud_mlp", broken.version)
    for _ in range(5):
        answer = client.predict(
            "fraud_mlp",
            {"user_id": USERS[:10], "merchant_id": MERCHANTS[:10]},
            {"amount": AMOUNTS[:10]},
        )
        assert answer.version == "v1" and np.isfinite(answer.scores).all()
    stack["server"].servicer.shadow.drain()
    assert (
        _count(metrics.SHADOW_ERRORS, model="fraud_mlp", version=broken.version) - errors_before
        == 5
    )


@pytest.mark.parametrize(
    ("bad", "guardrails", "expect"),
    [
        ("failing", {"max_error_rate": 0.05, "min_requests": 20, "window": 100}, "error rate"),
        ("slow", {"max_p99_ms": 3.0, "min_requests": 20, "window": 100}, "p99 latency"),
        ("constant", {"max_psi": 0.5, "min_requests": 40, "window": 200}, "score drift"),
    ],
)
def test_guardrail_trips_roll_the_canary_back(stack, bad, guardrails, expect):
    client, admin, repo = stack["client"], stack["admin"], stack["repo"]
    version = publish_torch(repo, "fraud_mlp", bad, stack["tmp"]).version
    repo.set_canary("fraud_mlp", version, 0.5, guardrails)
    state = admin.reload()
    assert next(s for s in state if s.name == "fraud_mlp").canary.version == version

    rolled_back, served = None, 0
    deadline = time.monotonic() + 60
    user = 0
    while rolled_back is None and time.monotonic() < deadline and served < 3_000:
        user += 1
        answer = client.predict(
            "fraud_mlp", {"user_id": [user], "merchant_id": [user % 80]}, {"amount": [25.0]}
        )  # every call is answered, canary or not
        assert answer.scores.shape == (1, 1) and np.isfinite(answer.scores).all()
        served += 1
        if served % 10 == 0:
            mlp = admin.status("fraud_mlp")[0]
            if not mlp.canary.version and mlp.last_rollback:
                rolled_back = mlp
    assert rolled_back is not None, f"no rollback after {served} calls"
    assert rolled_back.last_rollback.startswith(f"{version}: guardrail: {expect}")
    assert rolled_back.stable == "v1"
    spec = yaml.safe_load((repo.root / "fraud_mlp" / "model.yaml").read_text())
    assert "canary" not in spec and spec["last_rollback"]["version"] == version
    after = client.predict(
        "fraud_mlp",
        {"user_id": USERS[:50], "merchant_id": MERCHANTS[:50]},
        {"amount": AMOUNTS[:50]},
    )
    assert after.version == "v1" and not after.row_versions


def test_admin_errors_are_precise(stack):
    admin = stack["admin"]
    with pytest.raises(grpc.RpcError) as unknown:
        admin.promote("no_such_model", "v1")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as missing:
        admin.promote("fraud_lgbm", "v9")
    assert missing.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "v9" in missing.value.details()
    with pytest.raises(grpc.RpcError) as nothing:
        admin.rollback("fraud_lgbm")
    assert nothing.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as unnamed:
        admin.promote("", "v1")
    assert unnamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_promote_the_server_refuses_is_not_written(stack):
    client, admin, repo, v2 = stack["client"], stack["admin"], stack["repo"], stack["v2"]
    model_yaml = repo.root / "fraud_lgbm" / "model.yaml"
    before = model_yaml.read_text()
    v2.artifact.write_bytes(v2.artifact.read_bytes() + b"\n# tampered\n")
    with pytest.raises(grpc.RpcError) as refused:
        admin.promote("fraud_lgbm", "v2")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "sha256" in refused.value.details() and "v2" in refused.value.details()
    assert model_yaml.read_text() == before
    assert repo.spec("fraud_lgbm").aliases["stable"] == "v1"
    assert _call(client).version == "v1"
    result = subprocess.run(
        [*AUGUR_MODELS, "promote", "fraud_lgbm", "v2", "--server", stack["address"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "FAILED_PRECONDITION" in result.stdout and "sha256" in result.stdout
    assert model_yaml.read_text() == before


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda admin: admin.rollback("fraud_lgbm", "x" * 10_000_000), "reason"),
        (lambda admin: admin.promote("m" * 10_000, "v1"), "model"),
        (lambda admin: admin.promote("fraud_lgbm", "v" * 10_000), "version"),
        (lambda admin: admin.canary("fraud_lgbm", "v" * 10_000, 0.1), "version"),
    ],
)
def test_an_operator_string_beyond_its_bound_is_refused_by_name(stack, call, field):
    admin, repo = stack["admin"], stack["repo"]
    admin.canary("fraud_lgbm", "v2", 0.2)
    model_yaml = repo.root / "fraud_lgbm" / "model.yaml"
    before = model_yaml.read_text()
    with pytest.raises(grpc.RpcError) as refused:
        call(admin)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(f"{field}: ")
    assert model_yaml.read_text() == before


def test_operator_cli_against_a_running_server(stack):
    def cli(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "augur.cli.main", "models", *args, "--server", stack["address"]],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    assert "fraud_lgbm" in cli("status")
    out = cli("canary", "fraud_lgbm", "v2", "--weight", "0.25")
    assert "v2 (25%)" in out and "sticky on user_id" in out
    out = cli("rollback", "fraud_lgbm", "--reason", "manual check")
    assert "v2: manual check" in out
    out = cli("promote", "fraud_lgbm", "v2")
    assert out.splitlines()[1].split()[1] == "v2"
    assert _call(stack["client"]).version == "v2"


def test_rollback_takes_effect_even_when_the_repository_is_read_only(stack, monkeypatch):
    client, admin, repo = stack["client"], stack["admin"], stack["repo"]
    admin.canary("fraud_lgbm", "v2", 0.5)
    assert set(_call(client).row_versions) == {"v1", "v2"}
    manager = stack["server"].manager

    def read_only(name: str, reason: str) -> None:  # what a read-only volume does to the write
        raise OSError(errno.EROFS, "Read-only file system", str(repo.root / name))

    monkeypatch.setattr(manager.repo, "rollback", read_only)
    manager.rollback("fraud_lgbm", "guardrail: test")
    after = _call(client)
    assert after.version == "v1" and not after.row_versions  # the canary is off here...
    spec = yaml.safe_load((repo.root / "fraud_lgbm" / "model.yaml").read_text())
    assert spec["canary"]["version"] == "v2"  # ...though the record could not be written
    manager.refresh()  # and a later refresh does not bring it back
    assert _call(client).version == "v1"
    monkeypatch.undo()
    admin.canary("fraud_lgbm", "v2", 0.0)
    admin.canary("fraud_lgbm", "v2", 0.5)  # an operator's new canary is honoured again
    assert set(_call(client).row_versions) == {"v1", "v2"}
