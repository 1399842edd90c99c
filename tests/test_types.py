"""Every Feast value type GetOnlineFeatures serves comes back typed and equal to Feast's own
`get_online_features(...).to_dict()`: values written by Feast itself, read by a real server.
Models keep numeric inputs: one asking for a non-numeric feature is refused at load, alone."""

from __future__ import annotations

import dataclasses
import json
import shutil
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from augur.api.v1 import predictor_pb2 as pb
from augur.client.client import PredictorClient
from augur.client.columns import columns_dict
from augur.client.entities import encode_entities
from augur.config import Config, RedisConfig, ServerConfig
from augur.features.redis_server import free_port
from augur.features.repo import build_plans, open_store

DEFINITIONS = """
from datetime import timedelta
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import (Array, Bool, Bytes, Float32, Float64, Int32, Int64, Json, Map, String,
                         Struct, UnixTimestamp)

item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)
source = FileSource(path="data/none.parquet", timestamp_field="event_timestamp")
SCALARS = {"i32": Int32, "i64": Int64, "f32": Float32, "f64": Float64, "flag": Bool,
           "text": String, "blob": Bytes, "when": UnixTimestamp}
schema = [Field(name="item_id", dtype=Int64)]
schema += [Field(name=n, dtype=t) for n, t in SCALARS.items()]
schema += [Field(name=f"{n}_list", dtype=Array(t)) for n, t in SCALARS.items()]
schema += [Field(name="meta", dtype=Map), Field(name="config", dtype=Json),
           Field(name="profile", dtype=Struct({"name": String, "age": Int64}))]
every_type = FeatureView(name="every_type", entities=[item], ttl=timedelta(days=3650),
                         schema=schema, source=source, online=True)
every_type_service = FeatureService(name="every_type_service", features=[every_type])
"""
NOW = datetime.now(UTC).replace(microsecond=0)


def _rows() -> pd.DataFrame:
    when = [datetime(2024, 2, 29, 12, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)]
    rows = [
        {
            "item_id": 1,
            "i32": -7,
            "i64": 2**40 + 3,
            "f32": 0.1,
            "f64": -1.5e300,
            "flag": True,
            "text": "héllo",
            "blob": b"\x00\xff",
            "when": when[0],
            "i32_list": [1, -2],
            "i64_list": [2**50],
            "f32_list": [0.1, 2.5],
            "f64_list": [1e-300],
            "flag_list": [True, False],
            "text_list": ["a", ""],
            "blob_list": [b"x", b""],
            "when_list": when,
            "meta": {"rating": "4.8", "trips": 12, "score": 0.5, "ok": True, "tags": ["a"]},
            "config": json.dumps({"zones": ["east"], "max": 183}),
            "profile": {"name": "ada", "age": 36},
        },
        {
            "item_id": 2,
            "i32": 0,
            "i64": -1,
            "f32": -0.0,
            "f64": 0.0,
            "flag": False,
            "text": "",
            "blob": b"",
            "when": when[1],
            "i32_list": [],
            "i64_list": [0],
            "f32_list": [],
            "f64_list": [],
            "flag_list": [],
            "text_list": [],
            "blob_list": [],
            "when_list": [],
            "meta": {},
            "config": "[1, 2]",
            "profile": {"name": "", "age": 0},
        },
    ]
    frame = pd.DataFrame(rows)
    frame["event_timestamp"] = NOW - timedelta(hours=1)
    return frame


@pytest.fixture(scope="module")
def every_type_repo(redis_server, tmp_path_factory):
    repo = tmp_path_factory.mktemp("every_type")
    (repo / "data").mkdir()
    (repo / "feature_store.yaml").write_text(
        "project: every_type\nprovider: local\nregistry: data/registry.db\n"
        f'online_store:\n  type: redis\n  connection_string: "{redis_server.address}"\n'
        "entity_key_serialization_version: 3\n"
    )
    (repo / "definitions.py").write_text(DEFINITIONS)
    store = open_store(repo)
    import importlib.util

    spec = importlib.util.spec_from_file_location("every_type_definitions", repo / "definitions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    store.apply([module.item, module.every_type, module.every_type_service])
    store.write_to_online_store("every_type", _rows())  # Feast's own write
    return repo, store


def test_every_feast_type_comes_back_typed_and_equal_to_feasts(every_type_repo, redis_server):
    from augur.serving.server import start

    repo, store = every_type_repo
    models = repo / "models"
    models.mkdir(exist_ok=True)
    running = start(
        Config(
            feature_repo=repo,
            model_repo=models,
            redis=RedisConfig(address=redis_server.address),
            server=ServerConfig(port=free_port(), metrics_port=0, grace_seconds=1.0),
        )
    )
    try:
        with PredictorClient(f"127.0.0.1:{running.port}") as client:
            ids = [1, 2, 3, 1]  # 3: no such item
            reply = client.stub.GetOnlineFeatures(
                pb.GetOnlineFeaturesRequest(
                    feature_service="every_type_service",
                    entities=encode_entities({"item_id": ids}),
                ),
                timeout=30,
            )
    finally:
        running.stop()
    expected = store.get_online_features(
        features=store.get_feature_service("every_type_service"),
        entity_rows=[{"item_id": i} for i in ids],
        full_feature_names=True,
    ).to_dict()
    del expected["item_id"]
    got = columns_dict(reply.columns)
    assert set(got) == set(expected)
    for name in expected:
        assert got[name] == expected[name], name
        assert [type(v) for v in got[name]] == [type(v) for v in expected[name]], name
    dtypes = {c.name: c.dtype for c in reply.columns}
    assert dtypes["every_type__when_list"] == "Array(UnixTimestamp)"
    assert dtypes["every_type__meta"] == "Map"
    assert got["every_type__when"][0] == datetime(2024, 2, 29, 12, tzinfo=UTC)
    assert [s.missing for s in reply.feature_status] == [0, 0, len(got), 0]


def test_a_model_asking_for_a_non_numeric_feature_is_refused_naming_it_and_only_it(
    fraud_repo, model_repo, tmp_path
):
    """fraud_lgbm's service now declares one of its inputs a Map: that model is refused at
    load with the feature named; fraud_mlp, on its own service, serves."""
    from augur.modelrepo.repository import ModelRepository
    from augur.serving.lifecycle import ModelManager

    models = tmp_path / "models"
    shutil.copytree(model_repo, models)
    plans = build_plans(fraud_repo.store)
    plan = plans["fraud_lgbm"]
    view = plan.views[0]
    changed = dataclasses.replace(view.features[0], dtype="Map")
    views = (dataclasses.replace(view, features=(changed, *view.features[1:])), *plan.views[1:])
    plans["fraud_lgbm"] = dataclasses.replace(plan, views=views)
    manager = ModelManager(ModelRepository(models), plans, probe_timeout_s=None)
    manager.refresh()
    assert manager.route("fraud_lgbm") is None
    assert changed.full_name in manager.errors["fraud_lgbm"]
    assert "has Feast type Map" in manager.errors["fraud_lgbm"]
    assert manager.route("fraud_mlp") is not None
