"""Bad model files of every kind are refused with the reason, at publish and again at load,
while the server goes on serving the other models: a file of the wrong kind, a pickle
anywhere, an ONNX graph that does not fit the feature service, a file its parser rejects."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile

import grpc
import pytest

pytest.importorskip("xgboost")
pytest.importorskip("catboost")
pytest.importorskip("onnxruntime")

import torch

from augur.client.client import AdminClient, PredictorClient
from augur.modelrepo.repository import ModelRepository, ModelSpec, RepositoryError
from augur.pipelines.mlp import export_mlp, fit_mlp
from augur.serving.server import start
from tests.conftest import server_config
from tests.runtime_models import force_version, onnx_logistic, train_rows, variant

ENTITIES = {"user_id": [1, 2, 3], "merchant_id": [4, 5, 6]}
AMOUNTS = {"amount": [10.0, 20.0, 30.0]}


@pytest.fixture(scope="module")
def stack(fraud_repo, model_repo, tmp_path_factory):
    """A server over a copy of the trained fraud models plus one model of each new tree
    kind, and an ONNX model whose graph is narrower than its features."""
    tmp = tmp_path_factory.mktemp("refusals")
    models = tmp / "models"
    shutil.copytree(model_repo, models)
    repo = ModelRepository(models)
    base = repo.resolve("fraud_lgbm")
    keep = {k: base.metadata[k] for k in ("features", "feature_dtypes", "request_features")}
    n = len(base.features)
    for name, kind in (("fraud_xgb", "xgboost"), ("fraud_cat", "catboost")):
        spec = ModelSpec(name, kind, "fraud_lgbm", ("amount",), base.spec.outputs)
        repo.publish(spec, variant(kind, n, tmp, seed=1), keep)
    narrow = ModelSpec("fraud_narrow", "onnx", "fraud_lgbm", ("amount",), base.spec.outputs)
    repo.publish(narrow, onnx_logistic(tmp / "narrow.onnx", n - 1), {**keep})
    running = start(server_config(fraud_repo, models))
    address = f"127.0.0.1:{running.port}"
    try:
        with PredictorClient(address, timeout=20) as client, AdminClient(address) as admin:
            client.wait_ready(30)
            yield {"repo": repo, "client": client, "admin": admin, "tmp": tmp, "n": n}
    finally:
        running.stop()


def test_an_onnx_graph_that_does_not_fit_the_features_never_serves(stack):
    client, admin = stack["client"], stack["admin"]
    assert client.health("fraud_narrow") == "NOT_SERVING"
    (state,) = admin.status("fraud_narrow")
    assert "do not match the model's features" in state.error
    assert f"[rows, {stack['n']}]" in state.error and "x tensor(float)" in state.error
    for other in ("fraud_lgbm", "fraud_mlp", "fraud_xgb", "fraud_cat"):
        assert client.health(other) == "SERVING"
        assert client.predict(other, ENTITIES, AMOUNTS).scores.shape == (3, 1)


def _refused_promote(stack, name: str, version: str) -> str:
    with pytest.raises(grpc.RpcError) as refused:
        stack["admin"].promote(name, version)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    answer = stack["client"].predict(name, ENTITIES, AMOUNTS)
    assert answer.version == "v1"  # the stable version goes on serving
    return refused.value.details()


def test_a_pickle_beside_a_good_artifact_is_refused_at_load(stack):
    repo = stack["repo"]
    good = repo.resolve("fraud_xgb", "v1")
    bad = force_version(
        repo,
        "fraud_xgb",
        {"model.ubj": good.artifact.read_bytes(), "extra.pkl": pickle.dumps({"a": 1})},
        "model.ubj",
    )
    details = _refused_promote(stack, "fraud_xgb", bad.version)
    assert "extra.pkl" in details and "pickle" in details


@pytest.mark.parametrize(
    ("model", "artifact", "make", "reason"),
    [
        (
            "fraud_cat",
            "model.cbm",
            lambda repo: repo.resolve("fraud_lgbm", "v1").artifact.read_bytes(),
            "not a CatBoost model (.cbm) (it looks like a LightGBM text model)",
        ),
        (
            "fraud_cat",
            "model.cbm",
            lambda repo: repo.resolve("fraud_cat", "v1").artifact.read_bytes()[:3000],
            "Failed to read",  # CatBoost's own parser, in the probe process
        ),
        (
            "fraud_xgb",
            "model.ubj",
            lambda repo: pickle.dumps(repo.resolve("fraud_xgb", "v1").artifact.read_bytes()),
            "is a Python pickle",
        ),
    ],
    ids=["wrong-kind", "truncated", "pickled"],
)
def test_a_bad_artifact_is_refused_at_load_with_the_reason(stack, model, artifact, make, reason):
    bad = force_version(stack["repo"], model, {artifact: make(stack["repo"])}, artifact)
    assert reason in _refused_promote(stack, model, bad.version)


@pytest.mark.parametrize("model", ["fraud_xgb", "fraud_cat"])
def test_an_artifact_changed_after_publishing_is_refused_by_its_sha256(stack, model):
    repo = stack["repo"]
    v1 = repo.resolve(model, "v1")
    published = repo.publish(
        v1.spec, variant(v1.spec.kind, stack["n"], stack["tmp"], 5), {"features": list(v1.features)}
    )
    published.artifact.write_bytes(v1.artifact.read_bytes())  # a valid model, other bytes
    details = _refused_promote(stack, model, published.version)
    assert "sha256" in details and "does not match metadata.json" in details


def test_a_torch_export_with_a_fixed_batch_is_refused_saying_how_to_export(stack):
    repo, tmp = stack["repo"], stack["tmp"]
    x, y = train_rows(stack["n"], rows=200)
    net = fit_mlp(x, y, hidden=(8,), epochs=1, progress=False)
    fixed = torch.export.export(net, (torch.from_numpy(x[:4]),))  # no dynamic rows
    path = tmp / "fixed.pt2"
    torch.export.save(fixed, str(path))
    version = repo.publish(
        repo.spec("fraud_mlp"), path, {"features": list(repo.resolve("fraud_mlp").features)}
    )
    details = _refused_promote(stack, "fraud_mlp", version.version)
    assert "exported for batches of exactly 4 rows" in details and "dynamic_shapes" in details


# Publishing refuses the same files before they reach the repository.


def test_publish_refuses_a_model_file_of_another_kind(stack, tmp_path):
    repo = stack["repo"]
    before = (repo.versions("fraud_xgb"), repo.versions("fraud_cat"))
    disguised = tmp_path / "model.ubj"
    disguised.write_bytes(repo.resolve("fraud_lgbm", "v1").artifact.read_bytes())
    with pytest.raises(
        RepositoryError, match=r"not a XGBoost UBJSON model \(it looks like a Light"
    ):
        repo.publish(repo.spec("fraud_xgb"), disguised, {"features": ["f"]})
    onnx_file = onnx_logistic(tmp_path / "m.onnx", 3)
    with pytest.raises(RepositoryError, match=r"a catboost model is a model.cbm file, not .onnx"):
        repo.publish(repo.spec("fraud_cat"), onnx_file, {"features": ["f"]})
    assert (repo.versions("fraud_xgb"), repo.versions("fraud_cat")) == before


def test_publish_refuses_a_pickled_model(stack, tmp_path):
    import xgboost as xgb

    repo = stack["repo"]
    before = repo.versions("fraud_xgb")
    booster = xgb.Booster(model_file=str(repo.resolve("fraud_xgb", "v1").artifact))
    pickled = tmp_path / "model.ubj"
    pickled.write_bytes(pickle.dumps(booster))  # what joblib.dump / pickle.dump write
    with pytest.raises(RepositoryError, match="is a Python pickle, which runs code when loaded"):
        repo.publish(repo.spec("fraud_xgb"), pickled, {"features": ["f"]})
    assert repo.versions("fraud_xgb") == before


def test_publish_refuses_a_torch_export_whose_weights_are_pickled(stack, tmp_path):
    x, y = train_rows(5, rows=200)
    good = export_mlp(fit_mlp(x, y, hidden=(4,), epochs=1, progress=False), x, tmp_path / "g.pt2")
    bad = tmp_path / "model.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                for entry in config["config"].values():
                    entry["use_pickle"] = True  # torch.export.load would torch.load these
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    repo = stack["repo"]
    before = repo.versions("fraud_mlp")
    with pytest.raises(RepositoryError, match="is stored as a pickle"):
        repo.publish(repo.spec("fraud_mlp"), bad, {"features": ["f"]})
    assert repo.versions("fraud_mlp") == before
