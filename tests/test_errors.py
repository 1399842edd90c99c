"""Bad requests get a precise status naming the field, over a real gRPC channel."""

import grpc
import pytest

from augur.api.v1 import predictor_pb2 as pb
from tests.conftest import MAX_ROWS


def _ints(*values):
    return pb.EntityColumn(int64s=pb.Int64List(values=list(values)))


def _call(client, **fields) -> grpc.RpcError:
    defaults = {
        "model": "fraud_lgbm",
        "entities": {"user_id": _ints(1, 2), "merchant_id": _ints(3, 4)},
        "request_features": {"amount": pb.DoubleList(values=[1.0, 2.0])},
    }
    request = pb.PredictRequest(**{**defaults, **fields})
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.Predict(request, timeout=5)
    return caught.value


def test_valid_request_is_answered(client):
    request = pb.PredictRequest(
        model="fraud_lgbm",
        entities={"user_id": _ints(1), "merchant_id": _ints(3)},
        request_features={"amount": pb.DoubleList(values=[5.0])},
    )
    assert client.stub.Predict(request, timeout=5).rows == 1


def test_unknown_model_is_not_found(client):
    error = _call(client, model="fraud_xgb")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "fraud_xgb" in error.details() and "fraud_lgbm" in error.details()


def test_unknown_version_is_not_found(client):
    error = _call(client, version="v99")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "v99" in error.details()


def test_missing_model_name(client):
    error = _call(client, model="")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("model:")


def test_empty_request(client):
    error = _call(client, entities={})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("entities:")


def test_missing_entity_column(client):
    error = _call(client, entities={"user_id": _ints(1, 2)})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("entities.merchant_id:")


def test_unknown_entity_column(client):
    error = _call(
        client, entities={"user_id": _ints(1), "merchant_id": _ints(1), "usr_id": _ints(1)}
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("entities.usr_id:")


def test_wrong_entity_type(client):
    strings = pb.EntityColumn(strings=pb.StringList(values=["a", "b"]))
    error = _call(client, entities={"user_id": strings, "merchant_id": _ints(3, 4)})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("entities.user_id: expected int64s, got strings")


def test_entity_column_without_values(client):
    error = _call(client, entities={"user_id": pb.EntityColumn(), "merchant_id": _ints(3, 4)})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("entities.user_id: no values")


def test_ragged_columns(client):
    error = _call(client, entities={"user_id": _ints(1, 2, 3), "merchant_id": _ints(3, 4)})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "entities.user_id" in error.details() and "3 values" in error.details()


def test_zero_rows(client):
    error = _call(
        client,
        entities={"user_id": _ints(), "merchant_id": _ints()},
        request_features={"amount": pb.DoubleList(values=[])},
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no rows" in error.details()


def test_too_many_rows(client):
    n = MAX_ROWS + 1
    error = _call(
        client,
        entities={"user_id": _ints(*range(n)), "merchant_id": _ints(*[1] * n)},
        request_features={"amount": pb.DoubleList(values=[1.0] * n)},
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{n} rows exceeds the limit of {MAX_ROWS}" in error.details()


def test_missing_request_feature(client):
    error = _call(client, request_features={})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("request_features.amount: missing")


def test_request_feature_length(client):
    error = _call(client, request_features={"amount": pb.DoubleList(values=[1.0])})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("request_features.amount: 1 values for 2")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_request_feature(client, bad):
    error = _call(client, request_features={"amount": pb.DoubleList(values=[1.0, bad])})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("request_features.amount[1]:")


def test_unknown_request_feature(client):
    error = _call(
        client,
        request_features={
            "amount": pb.DoubleList(values=[1.0, 2.0]),
            "tip": pb.DoubleList(values=[1.0, 2.0]),
        },
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("request_features.tip:")


def test_a_misnamed_request_feature_is_named(client):
    """One column for the one wanted, under another name: the name given is the error (not
    only the one missing)."""
    error = _call(client, request_features={"amnt": pb.DoubleList(values=[1.0, 2.0])})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("request_features.amnt: not a request feature")


def test_unknown_feature_service(client):
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(feature_service="nope"), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_still_answers_after_bad_requests(client):
    for _ in range(3):
        _call(client, entities={})
    answer = client.predict("fraud_lgbm", {"user_id": [1], "merchant_id": [3]}, {"amount": [5]})
    assert answer.scores.shape == (1, 1)
