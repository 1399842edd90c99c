"""Redis keys and hash fields are byte-identical to Feast's Redis online store."""

import pytest
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from augur.features.keys import KeyEncoder, feature_field, timestamp_field


def _feast_key(names, values, project="fraud"):
    protos = [Value(int64_val=v) if isinstance(v, int) else Value(string_val=v) for v in values]
    return _redis_key(
        project,
        EntityKey(join_keys=names, entity_values=protos),
        entity_key_serialization_version=3,
    )


@pytest.mark.parametrize("value", [0, 1, -1, 42, 2**62, -(2**63)])
def test_int64_key(value):
    assert KeyEncoder(["user_id"], ["int64"], "fraud").key([value]) == _feast_key(
        ["user_id"], [value]
    )


@pytest.mark.parametrize("value", ["", "a", "driver-7", "ünïcødé"])
def test_string_key(value):
    assert KeyEncoder(["device"], ["string"], "p").key([value]) == _feast_key(
        ["device"], [value], "p"
    )


def test_composite_key_sorts_join_keys_like_feast():
    # Given in non-sorted order: Feast sorts by join key name.
    encoder = KeyEncoder(["user_id", "merchant_id"], ["int64", "int64"], "fraud")
    assert encoder.key([7, 3]) == _feast_key(["user_id", "merchant_id"], [7, 3])
    assert encoder.key([7, 3]) == _feast_key(["merchant_id", "user_id"], [3, 7])


def test_mixed_composite_key():
    encoder = KeyEncoder(["user_id", "country"], ["int64", "string"], "fraud")
    assert encoder.key([5, "NL"]) == _feast_key(["user_id", "country"], [5, "NL"])


@pytest.mark.parametrize(
    ("view", "feature"),
    [("user_stats", "txn_count_7d"), ("v", "f"), ("user_merchant_stats", "is_repeat")],
)
def test_fields(view, feature):
    assert feature_field(view, feature) == _mmh3(f"{view}:{feature}")
    assert timestamp_field(view) == f"_ts:{view}".encode()


def test_vectorised_keys_equal_one_at_a_time():
    import numpy as np

    encoder = KeyEncoder(["user_id", "merchant_id"], ["int64", "int64"], "fraud")
    users = np.array([0, 7, -1, 2**62, 12345], np.int64)
    merchants = np.array([3, 3, 0, -(2**63), 99], np.int64)
    rows = encoder.keys([users, merchants])
    assert [r.tobytes() for r in rows] == [
        encoder.key([int(u), int(m)]) for u, m in zip(users, merchants, strict=True)
    ]
    with pytest.raises(ValueError, match="int64"):
        KeyEncoder(["device"], ["string"], "p").keys([np.array(["a"])])
