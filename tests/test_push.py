"""`augur push`: fresh rows reach the online store and the reader serves them at once."""

import datetime as dt

import pandas as pd
import pytest

from augur.features.connection import connect
from augur.features.reader import OnlineReader
from augur.features.repo import build_plan
from augur.pipelines.push import push

USER = 900_100  # an id the generator never makes


def _row(fraud_repo, event_time, txn_count):
    template = pd.read_parquet(fraud_repo.data / "user_stats.parquet").tail(1)
    return template.assign(user_id=USER, event_timestamp=event_time, txn_count_7d=txn_count)


def test_pushed_rows_are_served_and_never_go_back_in_time(fraud_repo, tmp_path):
    plan = build_plan(fraud_repo.store, "fraud_lgbm")
    reader = OnlineReader(connect(fraud_repo.address))
    column = plan.feature_names.index("user_stats__txn_count_7d")
    now = pd.Timestamp(dt.datetime.now(dt.UTC))

    path = tmp_path / "rows.parquet"
    _row(fraud_repo, now, 41).to_parquet(path)
    assert push(fraud_repo.path, fraud_repo.address, "user_stats", path).written == 1
    served = reader.read(plan, {"user_id": [USER], "merchant_id": [1]})
    assert served.values[0, column] == 41
    assert served.event_ts[0, 0] == pytest.approx(now.timestamp(), abs=1e-3)

    # A late, older row must not replace the newer one.
    late = push(
        fraud_repo.path,
        fraud_repo.address,
        "user_stats",
        _row(fraud_repo, now - pd.Timedelta("1h"), 7),
    )
    assert (late.written, late.skipped) == (0, 1)
    assert reader.read(plan, {"user_id": [USER], "merchant_id": [1]}).values[0, column] == 41


def test_push_refuses_unknown_view_and_rows_without_time(fraud_repo):
    with pytest.raises(ValueError, match="event_timestamp"):
        push(fraud_repo.path, fraud_repo.address, "user_stats", pd.DataFrame({"user_id": [1]}))
    with pytest.raises(Exception, match="no_such_view"):
        push(
            fraud_repo.path,
            fraud_repo.address,
            "no_such_view",
            pd.DataFrame({"user_id": [1], "event_timestamp": [pd.Timestamp.now(tz="UTC")]}),
        )
