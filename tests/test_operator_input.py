"""What an operator or an upstream feed sends that cannot be right is refused by name before
anything is written: rows from the future, values no model can take."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import redis

from augur.config import load
from augur.features.keys import KeyEncoder
from augur.pipelines.push import push

USER = 930_000  # an id the generator never makes, and no other test writes (900_2xx do)


def _row(fraud_repo, user: int, event_time, **features) -> pd.DataFrame:
    template = pd.read_parquet(fraud_repo.data / "user_stats.parquet").tail(1)
    return template.assign(user_id=user, event_timestamp=event_time, **features)


def _stored(fraud_repo, user: int) -> bool:
    key = KeyEncoder(("user_id",), ("int64",), fraud_repo.store.project).key([user])
    client = redis.Redis.from_url(f"redis://{fraud_repo.address}")
    try:
        return bool(client.exists(key))
    finally:
        client.close()


def test_a_row_from_the_future_is_refused_naming_view_rows_and_option(fraud_repo):
    in_2100 = pd.Timestamp("2100-01-01", tz="UTC")
    rows = pd.concat(
        [_row(fraud_repo, USER, in_2100), _row(fraud_repo, USER + 1, in_2100)],
        ignore_index=True,
    )
    with pytest.raises(ValueError) as refused:
        push(fraud_repo.path, fraud_repo.address, "user_stats", rows)
    message = str(refused.value)
    assert "'user_stats'" in message and "2 row(s)" in message
    assert "write.max_future_skew_s" in message
    assert not _stored(fraud_repo, USER) and not _stored(fraud_repo, USER + 1)


def test_a_row_within_the_allowed_clock_skew_is_written(fraud_repo):
    soon = pd.Timestamp(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60))
    stats = push(
        fraud_repo.path, fraud_repo.address, "user_stats", _row(fraud_repo, USER + 2, soon)
    )
    assert stats.written == 1


def test_the_allowed_skew_is_a_config_option_with_a_default():
    assert load(environ={}).write.max_future_skew_s == 300.0
    env = {"AUGUR_WRITE__MAX_FUTURE_SKEW_S": "30"}
    assert load(environ=env).write.max_future_skew_s == 30.0


@pytest.mark.parametrize("value", [np.inf, -np.inf, 1e300])
def test_a_value_no_model_can_take_is_refused_at_push(fraud_repo, value):
    feature = next(
        c
        for c in pd.read_parquet(fraud_repo.data / "user_stats.parquet").columns
        if c not in ("user_id", "event_timestamp", "created")
        and pd.api.types.is_float_dtype(pd.read_parquet(fraud_repo.data / "user_stats.parquet")[c])
    )
    now = pd.Timestamp(dt.datetime.now(dt.UTC))
    row = _row(fraud_repo, USER + 3, now, **{feature: value})
    with pytest.raises(ValueError) as refused:
        push(fraud_repo.path, fraud_repo.address, "user_stats", row)
    message = str(refused.value)
    assert f"feature {feature!r}" in message and "'user_stats'" in message
    assert "float32 range" in message
    assert not _stored(fraud_repo, USER + 3)
