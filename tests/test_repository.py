"""The model repository: immutable numbered versions, aliases, and refusal of bad artifacts."""

import json
import shutil

import numpy as np
import pytest

from augur.features.repo import build_plans
from augur.modelrepo.repository import BatchingSpec, ModelRepository, RepositoryError
from augur.serving.models import ModelLoadError, load_model


@pytest.fixture
def repo_copy(model_repo, tmp_path):
    target = tmp_path / "models"
    shutil.copytree(model_repo, target)
    return ModelRepository(target)


@pytest.fixture(scope="module")
def plans(fraud_repo):
    return build_plans(fraud_repo.store)


def test_metadata_of_a_published_version(model_repo):
    version = ModelRepository(model_repo).resolve("fraud_lgbm")
    meta = version.metadata
    assert meta["version"] == "v1" and meta["kind"] == "lightgbm"
    assert meta["features"][-1] == "amount" and len(meta["features"]) == 38
    assert meta["training_window"]["end"] == meta["holdout_window"]["start"]
    assert 0.5 < meta["metrics"]["auc_holdout"] <= 1.0
    version.verify()  # sha256 matches the file


def test_publish_adds_the_next_version_and_keeps_aliases(repo_copy):
    v1 = repo_copy.resolve("fraud_lgbm")
    (repo_copy.root / "fraud_lgbm" / "model.yaml").write_text(
        (repo_copy.root / "fraud_lgbm" / "model.yaml").read_text() + "aliases: {stable: v1}\n"
    )
    v2 = repo_copy.publish(v1.spec, v1.artifact, {"features": list(v1.features)})
    assert v2.version == "v2"
    assert repo_copy.versions("fraud_lgbm") == ["v1", "v2"]
    assert repo_copy.resolve("fraud_lgbm").version == "v1"  # stable alias wins over newest
    assert repo_copy.resolve("fraud_lgbm", "v2").version == "v2"
    assert repo_copy.spec("fraud_lgbm").aliases == {"stable": "v1"}


def test_batching_in_model_yaml_is_read_and_checked_by_name(repo_copy):
    path = repo_copy.root / "fraud_mlp" / "model.yaml"
    base = path.read_text()
    assert repo_copy.spec("fraud_mlp").batching is None  # the server's settings apply
    path.write_text(base + "batching: {max_batch_size: 32, max_queue_delay_us: 2000}\n")
    assert repo_copy.spec("fraud_mlp").batching == BatchingSpec(32, 2000)
    path.write_text(base + "batching: {max_batch_size: 0}\n")  # this model: off
    assert repo_copy.spec("fraud_mlp").batching == BatchingSpec(0, None)
    for bad, named in (
        ("batching: 64", "batching must be a mapping"),
        ("batching: {max_batch_size: -1}", "batching.max_batch_size"),
        ("batching: {max_batch_size: 8, max_queue_delay_us: 0.5}", "batching.max_queue_delay_us"),
        ("batching: {max_queue_delay_us: 100}", "batching.max_batch_size"),
        ("batching: {max_batch_size: 8, max_delay: 100}", "batching.max_delay is not an option"),
    ):
        path.write_text(base + bad + "\n")
        with pytest.raises(RepositoryError, match=named):
            repo_copy.spec("fraud_mlp")


def test_unknown_version_is_an_error(repo_copy):
    with pytest.raises(RepositoryError, match="v7"):
        repo_copy.resolve("fraud_lgbm", "v7")


def test_tampered_artifact_is_refused(repo_copy, plans):
    artifact = repo_copy.resolve("fraud_lgbm").artifact
    artifact.write_text(artifact.read_text().replace("tree", "tree ", 1))
    with pytest.raises(ModelLoadError, match="sha256"):
        load_model(repo_copy, "fraud_lgbm", plans)


def test_model_input_missing_from_registry_is_refused(repo_copy, plans):
    version = repo_copy.resolve("fraud_lgbm")
    features = list(version.features)
    features[0] = "user_stats__no_such_feature"
    republished = repo_copy.publish(version.spec, version.artifact, {"features": features})
    with pytest.raises(ModelLoadError, match="no_such_feature"):
        load_model(repo_copy, "fraud_lgbm", plans, version=republished.version)


def test_loaded_model_assembles_in_feature_order(repo_copy, plans):
    model = load_model(repo_copy, "fraud_mlp", plans)
    assert model.n_inputs == 38
    assert model.request_inputs == (("amount", 37),)
    assert np.array_equal(model.store_inputs, np.arange(37))


def test_input_whose_registry_type_changed_family_is_refused(repo_copy, plans):
    version = repo_copy.resolve("fraud_lgbm")
    dtypes = dict(version.metadata["feature_dtypes"])
    assert dtypes["user_stats__amount_sum_7d"] == "Float64"
    dtypes["user_stats__amount_sum_7d"] = "Bool"  # trained on a flag, served a float
    republished = repo_copy.publish(
        version.spec, version.artifact, {**version.metadata, "feature_dtypes": dtypes}
    )
    with pytest.raises(ModelLoadError, match="trained as Bool"):
        load_model(repo_copy, "fraud_lgbm", plans, version=republished.version)
    dtypes["user_stats__amount_sum_7d"] = "Float32"  # widening within a family is fine
    widened = repo_copy.publish(
        version.spec, version.artifact, {**version.metadata, "feature_dtypes": dtypes}
    )
    assert load_model(repo_copy, "fraud_lgbm", plans, version=widened.version).n_inputs == 38


def test_cli_publish_adds_a_version_that_waits_for_traffic(repo_copy, tmp_path):
    import subprocess
    import sys

    import yaml

    v1 = repo_copy.resolve("fraud_lgbm")
    config = tmp_path / "augur.yaml"
    config.write_text(yaml.safe_dump({"model_repo": str(repo_copy.root)}))
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"features": list(v1.features)}))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "augur.cli.main", "models", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = cli("publish", "fraud_lgbm", str(v1.artifact), "--metadata", str(meta))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "published fraud_lgbm@v2" in done.stdout
    assert repo_copy.resolve("fraud_lgbm").version == "v1"  # stable did not move
    listing = cli("list").stdout
    assert any(
        line.split()[:2] == ["fraud_lgbm", "v2"] and line.split()[3] == "-"
        for line in listing.splitlines()
    )
    wrong = cli("publish", "fraud_lgbm", str(tmp_path / "model.pt"), "--metadata", str(meta))
    assert wrong.returncode == 1 and "lightgbm model" in wrong.stdout


def _models_yaml(tmp_path, entry: str):
    (tmp_path / "models.yaml").write_text(
        "labels: {path: labels.parquet, label: y}\nmodels:\n  m:\n" + entry
    )
    return tmp_path


def test_a_training_entry_is_read_with_the_model_yaml_schema(tmp_path):
    from augur.pipelines.train import load_training_plan

    repo = _models_yaml(
        tmp_path,
        "    kind: lightgbm\n    feature_service: fs\n    outputs: [p]\n"
        "    compile: lleaves\n    params: {num_leaves: 7}\n",
    )
    (model,) = load_training_plan(repo).models
    assert model.spec.kind == "lightgbm" and model.spec.outputs == ("p",)
    assert model.spec.compile == "lleaves" and model.params == {"num_leaves": 7}


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            "    kind: sklearn\n    feature_service: fs\n",
            r"kind must be one of \['catboost', 'lightgbm', 'onnx', 'torch', 'xgboost'\] "
            r"or an installed runtime plugin \(.*\), got 'sklearn'",
        ),
        ("    kind: torch\n", "feature_service is required"),
        (
            "    kind: torch\n    feature_service: fs\n    compile: lleaves\n",
            "applies to kind lightgbm only",
        ),
        (
            "    kind: torch\n    feature_service: fs\n    aliases: {stable: v1}\n",
            "aliases is not an option here",
        ),
    ],
)
def test_a_bad_training_entry_is_refused_by_name(tmp_path, entry, message):
    from augur.pipelines.train import load_training_plan

    with pytest.raises(RepositoryError, match=message):
        load_training_plan(_models_yaml(tmp_path, entry))
