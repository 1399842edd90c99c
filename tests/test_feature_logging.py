"""Served-feature logging: what a model was given and answered lands, off the request path, in
parquet files of Feast's feature-log layout that Feast's own log reader reads back."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import yaml

from augur.modelrepo import monitoring as names
from augur.modelrepo.spec import LoggingSpec
from augur.serving import metrics
from augur.serving.feature_log import FeatureLog
from tests.conftest import server_config


def _with_logging(models, model: str, logging: dict) -> None:
    path = models / model / "model.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["logging"] = logging
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def logged(fraud_repo, model_repo, tmp_path_factory):
    """A server whose fraud_lgbm logs every row and fraud_mlp none."""
    from augur.client.client import PredictorClient
    from augur.serving.server import start

    models = tmp_path_factory.mktemp("logged") / "models"
    shutil.copytree(model_repo, models)
    _with_logging(models, "fraud_lgbm", {"sample_rate": 1.0})
    running = start(server_config(fraud_repo, models))
    client = PredictorClient(f"127.0.0.1:{running.port}")
    try:
        client.wait_ready(10)
        yield running, client, models
    finally:
        client.close()
        running.stop()


@pytest.fixture(scope="module")
def rows(fraud_repo):
    txns = pd.read_parquet(fraud_repo.data / "transactions.parquet").tail(30)
    users = [*txns["user_id"].tolist(), 987_654]  # the last user has no row: NOT_FOUND
    return users, [*txns["merchant_id"].tolist(), 3], [*txns["amount"].tolist(), 12.5]


def _log(folder) -> pd.DataFrame:
    return ds.dataset(folder, format="parquet").to_table().to_pandas()


def test_served_rows_are_logged_with_what_the_model_saw_and_answered(logged, rows):
    running, client, models = logged
    users, merchants, amounts = rows
    answers = [
        client.predict(
            "fraud_lgbm",
            {"user_id": [u], "merchant_id": [m]},
            {"amount": [a]},
            return_features=True,
        )
        for u, m, a in zip(users, merchants, amounts, strict=True)
    ]
    running.servicer.feature_log.flush()
    log = _log(models / "fraud_lgbm" / "feature_log").sort_values(names.LOG_TIMESTAMP)
    assert log["user_id"].tolist() == users
    assert log["merchant_id"].tolist() == merchants
    assert np.allclose(log["amount"], amounts)
    assert log[names.MODEL_COLUMN].unique().tolist() == ["fraud_lgbm"]
    assert log[names.VERSION_COLUMN].tolist() == [a.version for a in answers]
    served = np.array([a.scores[0, 0] for a in answers], np.float32)
    assert np.array_equal(log[names.score_column("fraud_probability")].to_numpy(), served)
    seen = np.vstack([a.features for a in answers])
    for j, name in enumerate(answers[0].feature_names):
        logged_values = pd.to_numeric(log[name]).astype(np.float64).to_numpy(np.float32)
        assert np.array_equal(logged_values, seen[:, j], equal_nan=True), name
    status = log[names.status_column("user_stats__txn_count_7d")].tolist()
    assert status[:-1] == [names.PRESENT] * (len(users) - 1)
    assert status[-1] == names.NOT_FOUND
    stamps = log[names.timestamp_column("user_stats__txn_count_7d")]
    assert stamps.iloc[:-1].notna().all() and pd.isna(stamps.iloc[-1])


def test_the_log_has_feasts_schema_and_feasts_reader_reads_it(logged, rows, fraud_repo):
    from feast.feature_logging import FeatureServiceLoggingSource, LoggingConfig
    from feast.infra.offline_stores.file_source import FileLoggingDestination

    running, client, models = logged
    users, merchants, amounts = rows
    client.predict("fraud_lgbm", {"user_id": users, "merchant_id": merchants}, {"amount": amounts})
    running.servicer.feature_log.flush()
    folder = models / "fraud_lgbm" / "feature_log"
    store = fraud_repo.store
    service = store.get_feature_service("fraud_lgbm")
    feast_schema = FeatureServiceLoggingSource(service, store.project).get_schema(store.registry)
    ours = ds.dataset(folder, format="parquet").schema
    for field in feast_schema:
        assert field.name in ours.names, field.name
        if field.name not in ("__log_date",) and not field.name.endswith("__timestamp"):
            assert ours.field(field.name).type == field.type, field.name
    service.logging_config = LoggingConfig(FileLoggingDestination(path=str(folder)))
    now = dt.datetime.now(dt.UTC)
    read = (
        store._get_provider()
        .retrieve_feature_service_logs(
            service,
            now - dt.timedelta(hours=1),
            now + dt.timedelta(minutes=1),
            store.config,
            store.registry,
        )
        .to_df()
    )
    assert set(users) <= set(read["user_id"])
    assert "user_stats__txn_count_7d__status" in read.columns


def test_a_model_that_logs_nothing_starts_no_writer_and_writes_nothing(fraud_repo, model_repo):
    from augur.client.client import PredictorClient
    from augur.serving.server import start

    running = start(server_config(fraud_repo, model_repo))
    try:
        with PredictorClient(f"127.0.0.1:{running.port}") as client:
            client.wait_ready(10)
            client.predict("fraud_lgbm", {"user_id": [1], "merchant_id": [2]}, {"amount": [3.0]})
        assert running.manager.route("fraud_lgbm").feature_log is None
        assert running.servicer.feature_log.thread is None
    finally:
        running.stop()
    assert not (model_repo / "fraud_lgbm" / "feature_log").exists()


def test_a_sample_rate_logs_about_that_share_of_rows(logged, rows, tmp_path):
    running, _client, _models = logged
    route = running.manager.route("fraud_lgbm")
    sampled = dataclasses.replace(route, feature_log=LoggingSpec(0.1, str(tmp_path / "sampled")))
    log = FeatureLog()
    users, merchants, amounts = rows
    read = running.servicer.features.read(
        route.stable.plan, {"user_id": users * 100, "merchant_id": merchants * 100}, None, route
    )[0]
    n = len(users) * 100
    scores = np.zeros((n, 1), np.float32)
    log.offer(
        sampled,
        {"user_id": users * 100, "merchant_id": merchants * 100},
        read,
        {"amount": np.array(amounts * 100)},
        scores,
        ["v1"] * n,
    )
    log.close()
    written = len(_log(tmp_path / "sampled"))
    assert abs(written - 0.1 * n) < 5 * np.sqrt(n * 0.1 * 0.9)  # 5 sigma of a binomial


def test_a_full_queue_drops_samples_and_counts_them_without_blocking(logged, rows, tmp_path):
    running, _client, _models = logged
    route = running.manager.route("fraud_lgbm")
    full = dataclasses.replace(route, feature_log=LoggingSpec(1.0, str(tmp_path / "full")))
    users, merchants, _amounts = rows
    entities = {"user_id": users[:1], "merchant_id": merchants[:1]}
    read = running.servicer.features.read(route.stable.plan, entities, None, route)[0]
    dropped = metrics.FEATURE_LOG_ROWS.labels("fraud_lgbm", "dropped")
    before = dropped._value.get()
    log = FeatureLog(max_pending_rows=5)
    log._stop.set()  # the writer takes nothing off the queue: it stays full
    for _ in range(8):
        log.offer(full, entities, read, {"amount": np.array([1.0])}, np.zeros((1, 1)), ["v1"])
    assert dropped._value.get() - before == 3
    log.close()
    assert len(_log(tmp_path / "full")) == 5
