"""Feast's own `feast init` template, applied and materialized with Feast's own commands, is
served unchanged: every feature service (Map, Json and Struct features, an on-demand feature
view in pandas mode, a push-source view) answers GetOnlineFeatures with Feast's values."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from augur.api.v1 import predictor_pb2 as pb
from augur.client.client import PredictorClient
from augur.client.columns import columns_dict
from augur.client.entities import encode_entities
from augur.config import Config, RedisConfig, ServerConfig
from augur.features.redis_server import free_port

DRIVERS = [1001, 1002, 1003, 1004, 1005, 77]  # 77: no such driver
ADDS = ([1, -2, 3, 0, 5, 6], [10, 20, 30, 40, 50, 60])


def _feast(*args: str, cwd: Path) -> None:
    feast = Path(sys.executable).with_name("feast")
    env = {**os.environ, "FEAST_USAGE": "False"}
    done = subprocess.run(
        [str(feast), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"feast {' '.join(args)}: {done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def template(redis_server, tmp_path_factory) -> Path:
    """`feast init -t local`, its online store pointed at the test's Valkey (the template's
    only change: Feast offers no Redis variant of it), then `feast apply` and
    `feast materialize-incremental`."""
    root = tmp_path_factory.mktemp("template")
    _feast("init", "drivers", "-t", "local", cwd=root)
    repo = root / "drivers" / "feature_repo"
    config = repo / "feature_store.yaml"
    text = config.read_text()
    sqlite = "    type: sqlite\n    path: data/online_store.db"
    assert sqlite in text, "the template's online store changed; update this test"
    redis = f'    type: redis\n    connection_string: "{redis_server.address}"'
    config.write_text(text.replace(sqlite, redis))
    _feast("apply", cwd=repo)
    _feast("materialize-incremental", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), cwd=repo)
    return repo


@pytest.fixture(scope="module")
def served(template, redis_server, tmp_path_factory):
    from augur.serving.server import start

    models = tmp_path_factory.mktemp("no-models")
    config = Config(
        feature_repo=template,
        model_repo=models,
        redis=RedisConfig(address=redis_server.address),
        server=ServerConfig(port=free_port(), metrics_port=0, grace_seconds=1.0),
    )
    running = start(config)
    with PredictorClient(f"127.0.0.1:{running.port}") as client:
        yield client
    running.stop()


@pytest.fixture(scope="module")
def store(template):
    from augur.features.repo import open_store

    return open_store(template)


def _request(service: str, request_features: dict) -> pb.GetOnlineFeaturesRequest:
    return pb.GetOnlineFeaturesRequest(
        feature_service=service,
        entities=encode_entities({"driver_id": DRIVERS}),
        request_features={k: pb.DoubleList(values=v) for k, v in request_features.items()},
    )


def test_every_template_service_answers_with_feasts_values(served, store):
    services = [s.name for s in store.list_feature_services()]
    assert services, "the template has no feature services"
    for service in services:
        reply = served.stub.GetOnlineFeatures(
            _request(service, {"val_to_add": ADDS[0], "val_to_add_2": ADDS[1]}), timeout=30
        )
        rows = [
            {"driver_id": d, "val_to_add": a, "val_to_add_2": b}
            for d, a, b in zip(DRIVERS, *ADDS, strict=True)
        ]
        expected = store.get_online_features(
            features=store.get_feature_service(service), entity_rows=rows, full_feature_names=True
        ).to_dict()
        del expected["driver_id"]
        assert columns_dict(reply.columns) == expected, service
        assert list(reply.features.names) == [c.name for c in reply.columns]
        assert [s.missing for s in reply.feature_status][-1] == len(reply.columns)  # driver 77


def test_every_template_service_is_listed_as_served_with_its_types(served, store):
    listed = served.stub.ListFeatureServices(pb.ListFeatureServicesRequest(), timeout=10)
    by_name = {s.name: s for s in listed.services}
    assert set(by_name) == {s.name for s in store.list_feature_services()}
    v2 = by_name["driver_activity_v2"]
    assert v2.served and not v2.error
    types = dict(zip(v2.features, v2.dtypes, strict=True))
    assert types["driver_hourly_stats__driver_metadata"] == "Map"
    assert types["driver_hourly_stats__driver_config"] == "Json"
    assert types["transformed_conv_rate__conv_rate_plus_val1"] == "Float64"
    assert list(v2.request_features) == ["val_to_add", "val_to_add_2"]


def test_a_call_without_the_request_data_an_on_demand_view_needs_is_refused_naming_it(served):
    with pytest.raises(grpc.RpcError) as e:
        served.stub.GetOnlineFeatures(_request("driver_activity_v1", {"val_to_add": ADDS[0]}))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_features.val_to_add_2" in e.value.details()


def test_a_service_augur_cannot_serve_is_reported_and_the_others_still_start(
    template, redis_server, tmp_path
):
    """A service whose feature Augur cannot serve (a Set type) no longer stops the start: it
    is listed with the reason, and a call for it says why."""
    repo = tmp_path / "repo"
    shutil.copytree(template, repo)
    definitions = repo / "feature_definitions.py"
    definitions.write_text(
        definitions.read_text().replace(
            "from feast.types import Float32",
            "from feast.types import Set\nfrom feast.types import Float32",
        )
        + "\n\nodd = FeatureView(name='odd_view', entities=[driver], "
        "schema=[Field(name='tags', dtype=Set(String))], source=driver_stats_source)\n"
        "odd_service = FeatureService(name='odd_service', features=[odd])\n"
    )
    _feast("apply", cwd=repo)
    from augur.serving.server import start

    models = tmp_path / "models"
    models.mkdir()
    config = Config(
        feature_repo=repo,
        model_repo=models,
        redis=RedisConfig(address=redis_server.address),
        server=ServerConfig(port=free_port(), metrics_port=0, grace_seconds=1.0),
    )
    running = start(config)
    try:
        with PredictorClient(f"127.0.0.1:{running.port}") as client:
            listed = client.stub.ListFeatureServices(pb.ListFeatureServicesRequest(), timeout=10)
            by_name = {s.name: s for s in listed.services}
            assert not by_name["odd_service"].served
            assert "odd_view:tags" in by_name["odd_service"].error
            assert by_name["driver_activity_v1"].served
            with pytest.raises(grpc.RpcError) as e:
                client.stub.GetOnlineFeatures(_request("odd_service", {}), timeout=10)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "Set(String)" in e.value.details()
    finally:
        running.stop()
