"""Predict over a real gRPC channel returns the model's own offline scores for the same rows."""

import json
import urllib.request

import grpc
import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import torch
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from augur.features.repo import build_plan
from augur.modelrepo.repository import ModelRepository


def _offline_rows(fraud_repo, version, users, merchants, amounts) -> np.ndarray:
    """The model's input rows built independently: Feast's reader, defaults, declared order."""
    store = fraud_repo.store
    plan = build_plan(store, version.spec.feature_service)
    got = store.get_online_features(
        features=store.get_feature_service(plan.service),
        full_feature_names=True,
        entity_rows=[
            {"user_id": u, "merchant_id": m} for u, m in zip(users, merchants, strict=True)
        ],
    ).to_dict()
    defaults = {c.full_name: c.default for c in plan.columns}
    columns = []
    for name in version.features:
        if name == "amount":
            columns.append(np.asarray(amounts, np.float32))
        else:
            columns.append(
                np.array(
                    [defaults[name] if v is None else v for v in got[name]], np.float64
                ).astype(np.float32)
            )
    return np.column_stack(columns)


@pytest.fixture(scope="module")
def sample(fraud_repo):
    txns = pd.read_parquet(fraud_repo.data / "transactions.parquet").tail(40)
    users = [*txns["user_id"].tolist(), 123_456]
    merchants = [*txns["merchant_id"].tolist(), 3]
    amounts = [*txns["amount"].tolist(), 99.5]
    return users, merchants, amounts


@pytest.mark.parametrize("model", ["fraud_lgbm", "fraud_mlp"])
def test_scores_equal_offline_predictions(client, fraud_repo, model_repo, sample, model):
    users, merchants, amounts = sample
    version = ModelRepository(model_repo).resolve(model)
    rows = _offline_rows(fraud_repo, version, users, merchants, amounts)
    if version.spec.kind == "lightgbm":
        offline = lgb.Booster(model_file=str(version.artifact)).predict(rows)
    else:
        with torch.inference_mode():
            program = torch.export.load(str(version.artifact)).module()  # `augur train`'s .pt2
            offline = program(torch.from_numpy(rows)).numpy()

    answer = client.predict(
        model,
        {"user_id": users, "merchant_id": merchants},
        {"amount": amounts},
        return_features=True,
    )

    assert answer.model == model and answer.version == version.version == "v1"
    np.testing.assert_array_equal(answer.features, rows)
    np.testing.assert_allclose(answer.scores[:, 0], np.ravel(offline), rtol=1e-6, atol=1e-7)
    assert answer.scores.shape == (len(users), 1)
    assert ((answer.scores >= 0) & (answer.scores <= 1)).all()


def test_feature_status_counts(client, sample):
    users, merchants, amounts = sample
    answer = client.predict(
        "fraud_lgbm", {"user_id": users, "merchant_id": merchants}, {"amount": amounts}
    )
    total = answer.present + answer.missing
    assert (total == 37).all()
    assert answer.missing[-1] == 18 + 7  # unknown user, unknown pair: only merchant features
    assert answer.stale.sum() == 0


def test_explicit_version_and_alias(client, sample):
    users, merchants, amounts = sample
    entities = {"user_id": users[:2], "merchant_id": merchants[:2]}
    by_version = client.predict("fraud_lgbm", entities, {"amount": amounts[:2]}, version="v1")
    default = client.predict("fraud_lgbm", entities, {"amount": amounts[:2]})
    np.testing.assert_array_equal(by_version.scores, default.scores)


def test_get_online_features_matches_predict_inputs(client, sample):
    users, merchants, amounts = sample
    names, values = client.online_features(
        "fraud_lgbm", {"user_id": users, "merchant_id": merchants}
    )
    answer = client.predict(
        "fraud_lgbm",
        {"user_id": users, "merchant_id": merchants},
        {"amount": amounts},
        return_features=True,
    )
    for i, name in enumerate(names):
        np.testing.assert_array_equal(
            values[:, i], answer.features[:, answer.feature_names.index(name)]
        )


def test_list_models(client, model_repo):
    models = {m.name: m for m in client.list_models()}
    assert set(models) == {"fraud_lgbm", "fraud_mlp"}
    lgbm = models["fraud_lgbm"]
    assert (lgbm.kind, lgbm.version, lgbm.device) == ("lightgbm", "v1", "cpu")
    assert list(lgbm.request_features) == ["amount"]
    assert list(lgbm.entities) == ["merchant_id", "user_id"]
    meta = json.loads((model_repo / "fraud_lgbm" / "v1" / "metadata.json").read_text())
    assert list(lgbm.features) == meta["features"]
    assert list(lgbm.versions) == ["v1"]


def test_health_per_model(client):
    assert client.health("") == "SERVING"
    assert client.health("fraud_lgbm") == "SERVING"
    assert client.health("fraud_mlp") == "SERVING"
    with pytest.raises(grpc.RpcError) as unknown:
        client.health("no_such_model")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_api(client):
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in reply.list_services_response.service}
    assert {"augur.v1.Predictor", "grpc.health.v1.Health"} <= names


def test_metrics_endpoint(client, sample):
    from prometheus_client import start_http_server

    from augur.features.redis_server import free_port

    users, merchants, amounts = sample
    client.predict("fraud_mlp", {"user_id": users, "merchant_id": merchants}, {"amount": amounts})
    port = free_port()
    start_http_server(port, addr="127.0.0.1")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'augur_requests_total{code="OK",method="Predict",model="fraud_mlp",version="v1"}' in text
    for stage in ("features", "assemble", "inference"):
        assert f'augur_stage_latency_seconds_count{{model="fraud_mlp",stage="{stage}"}}' in text
    assert 'augur_features_missing_total{model="fraud_mlp"}' in text
    assert 'augur_feature_age_seconds_count{feature_view="user_stats"}' in text
    assert 'augur_rows_total{method="Predict",model="fraud_mlp"}' in text
