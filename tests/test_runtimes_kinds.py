"""Every model kind end to end: trained by `augur train` (xgboost, catboost, torch.export)
or built (onnx), published, served over real gRPC with scores equal to the framework's own
predict on the same rows, batched, hot-swapped, listed with inputs and outputs."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("xgboost")
pytest.importorskip("catboost")
pytest.importorskip("onnxruntime")

from augur.client.client import AdminClient, PredictorClient
from augur.modelrepo.repository import ModelRepository
from augur.pipelines.train import train
from augur.serving.runtimes import load_runtime
from augur.serving.server import start
from tests.conftest import server_config
from tests.runtime_models import (
    copy_repo,
    framework_scores,
    hard_rows,
    onnx_logistic,
    variant,
)

MODELS_YAML = """
labels: {path: data/transactions.parquet, timestamp: event_timestamp, label: is_fraud}
holdout_days: 5
models:
  fraud_xgb:
    kind: xgboost
    feature_service: fraud_lgbm
    request_features: [amount]
    outputs: [fraud_probability]
    params: {num_boost_round: 60}
  fraud_cat:
    kind: catboost
    feature_service: fraud_lgbm
    request_features: [amount]
    outputs: [fraud_probability]
    params: {iterations: 60}
  fraud_export:
    kind: torch
    feature_service: fraud_lgbm
    request_features: [amount]
    outputs: [fraud_probability]
    params: {hidden: [16], epochs: 1}
"""
MODELS = {"fraud_xgb": "xgboost", "fraud_cat": "catboost", "fraud_onnx": "onnx"}
MODELS["fraud_export"] = "torch"
BATCHING = {"max_batch_size": 64, "max_queue_delay_us": 3_000}


@pytest.fixture(scope="module")
def stack(fraud_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kinds")
    feature_repo = copy_repo(fraud_repo.path, tmp / "feature_repo", MODELS_YAML)
    models = tmp / "models"
    results = train(feature_repo, models, fraud_repo.address, progress=False)
    repo = ModelRepository(models)
    xgb = repo.resolve("fraud_xgb")
    onnx_spec = type(xgb.spec)("fraud_onnx", "onnx", "fraud_lgbm", ("amount",), xgb.spec.outputs)
    repo.publish(
        onnx_spec,
        onnx_logistic(tmp / "logistic.onnx", len(xgb.features)),
        {k: xgb.metadata[k] for k in ("features", "feature_dtypes", "request_features")},
    )
    for name in MODELS:  # the operator's batching, as model.yaml carries it
        path = models / name / "model.yaml"
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "batching": BATCHING}))
    config = server_config(fraud_repo, models)
    config.server.watch_interval_s = 0.1
    running = start(config)
    address = f"127.0.0.1:{running.port}"
    txns = pd.read_parquet(fraud_repo.data / "transactions.parquet").tail(30)
    sample = (
        {
            "user_id": [*txns["user_id"].tolist(), 987_654],  # one unknown: missing features
            "merchant_id": [*txns["merchant_id"].tolist(), 4],
        },
        {"amount": [*txns["amount"].tolist(), 12.5]},
    )
    try:
        with PredictorClient(address, timeout=20) as client, AdminClient(address) as admin:
            client.wait_ready(30)
            yield {
                "repo": repo,
                "client": client,
                "admin": admin,
                "address": address,
                "tmp": tmp,
                "sample": sample,
                "results": {r.version.spec.name: r for r in results},
            }
    finally:
        running.stop()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_kind_serves_its_frameworks_own_scores(stack, name):
    version = stack["repo"].resolve(name)
    answer = stack["client"].predict(name, *stack["sample"], return_features=True)

    assert version.spec.kind == MODELS[name]
    assert answer.model == name and answer.version == "v1"
    assert answer.scores.shape == (31, 1)
    expected = framework_scores(version, answer.features)
    np.testing.assert_allclose(answer.scores, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_runtimes_equal_their_framework_with_missing_values(stack, name):
    version = stack["repo"].resolve(name)
    runtime = load_runtime(version)
    for rows in (hard_rows(len(version.features)), hard_rows(len(version.features), 1, seed=2)):
        scores = runtime.predict(rows)
        assert scores.dtype == np.float32 and scores.shape == (len(rows), 1)
        np.testing.assert_allclose(scores, framework_scores(version, rows), rtol=0, atol=1e-6)


def test_torch_models_are_trained_and_served_as_torch_export_programs(stack):
    version = stack["repo"].resolve("fraud_export")
    assert version.artifact.name == "model.pt2" and version.metadata["artifact"] == "model.pt2"
    assert not (version.path / "model.pt").exists()


@pytest.mark.parametrize("name", ["fraud_xgb", "fraud_cat"])
def test_new_tree_kinds_publish_the_same_training_metadata(stack, name):
    result = stack["results"][name]
    metadata = result.version.metadata
    lgbm_like = {"features", "feature_dtypes", "training_window", "holdout_window", "metrics"}
    assert lgbm_like <= set(metadata)
    assert metadata["features"][-1] == "amount" and len(metadata["features"]) > 10
    assert 0.5 < metadata["metrics"]["auc_holdout"] <= 1.0
    assert metadata["metrics"]["auc_holdout"] == round(result.auc_holdout, 5)


def test_list_models_shows_each_kinds_inputs_and_outputs(stack):
    listed = {m.name: m for m in stack["client"].list_models()}
    for name, kind in MODELS.items():
        version = stack["repo"].resolve(name)
        assert listed[name].kind == kind
        assert list(listed[name].features) == list(version.features)
        assert list(listed[name].outputs) == ["fraud_probability"]
        assert list(listed[name].request_features) == ["amount"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_concurrent_calls_to_each_kind_share_batches(stack, name):
    from prometheus_client import REGISTRY

    def sample(metric: str) -> float:
        return REGISTRY.get_sample_value(metric, {"model": name}) or 0.0

    calls_before, batches_before = (
        sample("augur_batch_calls_sum"),
        sample("augur_batch_calls_count"),
    )
    answers: dict[int, object] = {}
    failures: list[str] = []

    def caller(worker: int) -> None:
        with PredictorClient(stack["address"], timeout=20) as own:
            for k in range(worker, 48, 8):
                entities = {"user_id": [k, k + 100], "merchant_id": [k % 80, (k + 3) % 80]}
                try:
                    answers[k] = own.predict(
                        name, entities, {"amount": [float(k), 2.5]}, return_features=True
                    )
                except Exception as e:
                    failures.append(repr(e))

    threads = [threading.Thread(target=caller, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert failures == [] and len(answers) == 48
    version = stack["repo"].resolve(name)
    for answer in answers.values():  # batched or not, each call gets its own rows' scores
        expected = framework_scores(version, answer.features)
        np.testing.assert_allclose(answer.scores, expected, rtol=0, atol=1e-6)
    calls = sample("augur_batch_calls_sum") - calls_before
    assert calls == 48 and sample("augur_batch_calls_count") - batches_before < calls


@pytest.mark.parametrize("name", ["fraud_xgb", "fraud_cat", "fraud_onnx"])
def test_each_kind_hot_swaps_under_load_dropping_nothing(stack, name):
    repo, client, admin = stack["repo"], stack["client"], stack["admin"]
    v1 = repo.resolve(name, "v1")
    artifact = variant(v1.spec.kind, len(v1.features), stack["tmp"], seed=11)
    v2 = repo.publish(v1.spec, artifact, {"features": list(v1.features)})
    failures: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def load() -> None:
        with PredictorClient(stack["address"], timeout=20) as own:
            while not stop.is_set():
                try:
                    seen.add(own.predict(name, *stack["sample"]).version)
                except Exception as e:
                    failures.append(repr(e))

    caller = threading.Thread(target=load)
    caller.start()
    try:
        admin.promote(name, v2.version)
        answer = client.predict(name, *stack["sample"], return_features=True)
    finally:
        stop.set()
        caller.join(30)
        admin.promote(name, "v1")

    assert failures == []
    assert answer.version == v2.version and seen <= {"v1", v2.version}
    np.testing.assert_allclose(
        answer.scores, framework_scores(v2, answer.features), rtol=0, atol=1e-6
    )
    assert not np.allclose(answer.scores, framework_scores(v1, answer.features))


def test_runtimes_take_the_thread_count_they_are_given(stack):
    repo = stack["repo"]
    xgb = load_runtime(repo.resolve("fraud_xgb"), threads=2)
    onnx = load_runtime(repo.resolve("fraud_onnx"), threads=2)
    cat = load_runtime(repo.resolve("fraud_cat"), threads=2)

    config = json.loads(xgb.booster.save_config())
    assert config["learner"]["generic_param"]["nthread"] == "2"
    assert onnx.session.get_session_options().intra_op_num_threads == 2
    assert onnx.session.get_session_options().inter_op_num_threads == 1
    assert cat.threads == 2
