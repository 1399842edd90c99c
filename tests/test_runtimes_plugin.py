"""Runtime plugins: the example package in examples/augur-runtime-example, pip-installed into
this environment as an operator would, serves a model of its kind over gRPC; a plugin that
raises at load is refused with its reason while the other models serve."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from augur.client.client import AdminClient, PredictorClient
from augur.modelrepo.repository import ModelRepository, ModelSpec, RepositoryError
from augur.modelrepo.spec import plugin_kinds
from augur.serving.server import start
from tests.conftest import ROOT, server_config

EXAMPLE = ROOT / "examples" / "augur-runtime-example"
ENTITIES = {"user_id": [1, 2, 3, 999_999], "merchant_id": [4, 5, 6, 7]}
AMOUNTS = {"amount": [10.0, 20.0, 30.0, 5.0]}


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--quiet", *args], check=True, timeout=300)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The example plugin installed (from a copy, so that its build files stay out of the
    checkout) for this module's tests, and uninstalled after them."""
    source = tmp_path_factory.mktemp("plugin") / "augur-runtime-example"
    shutil.copytree(EXAMPLE, source)
    _pip("install", "--no-deps", "--no-build-isolation", str(source))
    importlib.invalidate_caches()
    plugin_kinds.cache_clear()
    try:
        yield importlib.import_module("augur_runtime_example")
    finally:
        _pip("uninstall", "--yes", "augur-runtime-example")
        sys.modules.pop("augur_runtime_example", None)
        plugin_kinds.cache_clear()


def _linear(tmp, name: str, n: int, weights: int | None = None) -> tuple[dict, object]:
    rng = np.random.default_rng(len(name))
    raw = {
        "weights": (rng.normal(size=weights or n) / 50).tolist(),
        "bias": -0.5,
        "fill": rng.normal(size=n).tolist(),
    }
    path = tmp / name / "linear.json"
    path.parent.mkdir()
    path.write_text(json.dumps(raw))
    return raw, path


@pytest.fixture(scope="module")
def stack(plugin, fraud_repo, model_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plugin-models")
    models = tmp / "models"
    shutil.copytree(model_repo / "fraud_lgbm", models / "fraud_lgbm")
    repo = ModelRepository(models)
    base = repo.resolve("fraud_lgbm")
    n = len(base.features)
    keep = {"features": list(base.features), "feature_dtypes": base.metadata["feature_dtypes"]}
    raws = {}
    for name, weights in (("fraud_linear", None), ("fraud_linear_bad", 3)):
        spec = ModelSpec(name, "linear_json", "fraud_lgbm", ("amount",), ("score",))
        raws[name], artifact = _linear(tmp, name, n, weights)
        repo.publish(spec, artifact, keep)
    running = start(server_config(fraud_repo, models))
    address = f"127.0.0.1:{running.port}"
    try:
        with PredictorClient(address, timeout=20) as client, AdminClient(address) as admin:
            client.wait_ready(30)
            yield {"repo": repo, "client": client, "admin": admin, "raws": raws, "plugin": plugin}
    finally:
        running.stop()


def test_a_plugin_kind_serves_over_grpc_with_the_plugins_scores(stack):
    answer = stack["client"].predict("fraud_linear", ENTITIES, AMOUNTS, return_features=True)

    assert answer.model == "fraud_linear" and answer.scores.shape == (4, 1)
    assert np.isnan(answer.features).any()  # the unknown user's features are missing
    expected = stack["plugin"].reference(stack["raws"]["fraud_linear"], answer.features)
    np.testing.assert_allclose(answer.scores, expected, rtol=0, atol=1e-6)
    (listed,) = [m for m in stack["client"].list_models() if m.name == "fraud_linear"]
    assert listed.kind == "linear_json" and list(listed.outputs) == ["score"]
    assert list(listed.features) == list(stack["repo"].resolve("fraud_linear").features)


def test_a_plugin_that_raises_at_load_is_refused_and_the_rest_serve(stack):
    client = stack["client"]
    assert client.health("fraud_linear_bad") == "NOT_SERVING"
    (state,) = stack["admin"].status("fraud_linear_bad")
    assert "runtime plugin 'linear_json'" in state.error
    assert "linear.json has 3 weights and 38 fill values for 38 inputs" in state.error
    assert client.health("fraud_linear") == client.health("fraud_lgbm") == "SERVING"
    assert client.predict("fraud_lgbm", ENTITIES, AMOUNTS).scores.shape == (4, 1)


def test_plugin_code_comes_from_the_environment_not_the_repository(stack):
    installed = stack["plugin"].__file__
    assert str(stack["repo"].root) not in installed and "site-packages" in installed
    version = stack["repo"].resolve("fraud_linear")
    assert sorted(p.name for p in version.path.iterdir()) == ["linear.json", "metadata.json"]


def test_a_kind_no_installed_plugin_provides_is_refused_naming_the_installed_ones(stack):
    path = stack["repo"].root / "fraud_linear" / "model.yaml"
    text = path.read_text()
    try:
        path.write_text(text.replace("kind: linear_json", "kind: linear_yaml"))
        with pytest.raises(RepositoryError, match=r"installed runtime plugin \(linear_json\)"):
            stack["repo"].spec("fraud_linear")
    finally:
        path.write_text(text)


def test_the_cli_publishes_a_plugin_models_file_by_its_kind(stack, tmp_path):
    repo = stack["repo"]
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({"features": list(repo.resolve("fraud_linear").features)}))
    raw, artifact = _linear(tmp_path, "cli", len(repo.resolve("fraud_linear").features))
    config = tmp_path / "augur.yaml"
    config.write_text(json.dumps({"model_repo": str(repo.root)}))  # JSON is YAML
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "augur.cli.main",
            "models",
            "publish",
            "fraud_cli",
            str(artifact),
            "--kind",
            "linear_json",
            "--metadata",
            str(metadata),
            "--feature-service",
            "fraud_lgbm",
            "--request-feature",
            "amount",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "published fraud_cli@v1 (linear_json" in done.stdout
    version = repo.resolve("fraud_cli")
    assert version.spec.kind == "linear_json" and version.artifact.name == "linear.json"
    assert json.loads(version.artifact.read_text()) == raw
