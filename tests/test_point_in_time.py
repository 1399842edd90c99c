"""Training sets are point-in-time correct: a feature value from the future never leaks."""

import pandas as pd
import pytest

from augur.features.repo import build_plan, open_store
from augur.pipelines.training_set import auc, build_training_set
from tests.conftest import make_repo

SENTINEL = 987_654.0


def test_future_value_does_not_leak(redis_server, tmp_path):
    repo = make_repo(tmp_path / "feature_repo", redis_server.address)
    users = pd.read_parquet(repo / "data" / "user_stats.parquet")
    user = 7
    planted_at = users["event_timestamp"].max() - pd.Timedelta("10D") + pd.Timedelta("6h")
    future = (
        users[users["user_id"] == user]
        .tail(1)
        .assign(event_timestamp=planted_at, amount_sum_7d=SENTINEL)
    )
    pd.concat([users, future]).to_parquet(repo / "data" / "user_stats.parquet", index=False)

    labels = pd.DataFrame(
        {
            "user_id": [user] * 4,
            "merchant_id": [1] * 4,
            "is_fraud": [0, 1, 0, 1],
            "amount": [1.0, 2.0, 3.0, 4.0],
            "event_timestamp": [
                planted_at - pd.Timedelta("1s"),
                planted_at - pd.Timedelta("1h"),
                planted_at,
                planted_at + pd.Timedelta("1h"),
            ],
        }
    )
    store = open_store(repo, redis_server.address)
    plan = build_plan(store, "fraud_lgbm")
    data = build_training_set(store, plan, labels, "is_fraud", ["amount"])

    column = data.features.index("user_stats__amount_sum_7d")
    seen = data.x[:, column].tolist()
    assert seen[0] != SENTINEL and seen[1] != SENTINEL  # before the value existed
    assert seen[2] == SENTINEL and seen[3] == SENTINEL  # at and after its event time
    assert data.x[:, -1].tolist() == [1.0, 2.0, 3.0, 4.0]  # rows kept in label order
    assert data.y.tolist() == [0.0, 1.0, 0.0, 1.0]


def test_rows_without_history_are_kept_with_defaults(redis_server, tmp_path):
    repo = make_repo(tmp_path / "feature_repo", redis_server.address)
    store = open_store(repo, redis_server.address)
    plan = build_plan(store, "fraud_lgbm")
    labels = pd.DataFrame(
        {
            "user_id": [3],
            "merchant_id": [79_999],
            "is_fraud": [1],
            "amount": [10.0],
            "event_timestamp": [pd.Timestamp.now(tz="UTC").floor("D")],
        }
    )
    data = build_training_set(store, plan, labels, "is_fraud", ["amount"])
    assert data.x.shape == (1, 38)
    column = data.features.index("user_merchant_stats__txn_count_total")
    assert data.x[0, column] == 0.0  # the declared default, as served online


@pytest.mark.parametrize(
    ("y", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),
    ],
)
def test_auc(y, scores, expected):
    import numpy as np

    assert auc(np.array(y, float), np.array(scores)) == pytest.approx(expected)
