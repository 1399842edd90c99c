"""On-demand feature views are computed on the request path with Feast's values: the fraud
repo's python-mode `amount_context` (amount relative to the user's average) against Feast's
`get_online_features`, its cost counted as the "transform" stage, and Feast left unimported
until a call needs it. (The template's pandas-mode `transformed_conv_rate` is held equal to
Feast's in test_feast_template.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
from prometheus_client import REGISTRY

from augur.api.v1 import predictor_pb2 as pb
from augur.client.columns import columns_dict
from augur.client.entities import encode_entities

SERVICE = "fraud_amount_context"


def _transform_calls() -> float:
    labels = {"model": SERVICE, "stage": "transform"}
    return REGISTRY.get_sample_value("augur_stage_latency_seconds_count", labels) or 0.0


def test_an_on_demand_view_answers_with_feasts_values_and_counts_its_cost(fraud_repo, client):
    users = pd.read_parquet(fraud_repo.data / "user_stats.parquet")["user_id"].unique()[:20]
    ids = [int(u) for u in users] + [999_999]  # no such user: no average, no ratio
    amounts = list(np.linspace(1.0, 900.0, len(ids)))
    before = _transform_calls()
    reply = client.stub.GetOnlineFeatures(
        pb.GetOnlineFeaturesRequest(
            feature_service=SERVICE,
            entities=encode_entities({"user_id": ids}),
            request_features={"amount": pb.DoubleList(values=amounts)},
        ),
        timeout=60,
    )
    store = fraud_repo.store
    expected = store.get_online_features(
        features=store.get_feature_service(SERVICE),
        entity_rows=[{"user_id": u, "amount": a} for u, a in zip(ids, amounts, strict=True)],
        # Feast 0.67 drops a python-mode view's outputs under full_feature_names=True (its
        # UDF returns short names): compared by short name, which are unique in this service
        full_feature_names=False,
    ).to_dict()
    del expected["user_id"]
    got = columns_dict(reply.columns)
    assert {name.split("__", 1)[1]: v for name, v in got.items()} == expected
    assert got["amount_context__amount_to_user_avg"][-1] is None
    assert any(v is not None for v in got["amount_context__amount_to_user_avg"])
    assert _transform_calls() == before + 1


def test_the_float_matrix_carries_the_on_demand_features_too(client):
    reply = client.stub.GetOnlineFeatures(
        pb.GetOnlineFeaturesRequest(
            feature_service=SERVICE,
            entities=encode_entities({"user_id": [999_999]}),
            request_features={"amount": pb.DoubleList(values=[5.0])},
        ),
        timeout=60,
    )
    names = list(reply.features.names)
    assert names[-1] == "amount_context__amount_to_user_avg"
    assert np.isnan(reply.features.values[-1])  # no user: no average, no ratio
