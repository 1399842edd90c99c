"""Benchmark scenarios: build a scaled feature repo, fill Redis, publish a model; sample requests.

`fraud`: the example fraud repo (three views, 37 features, two entities) at 200,000 users,
its LightGBM model trained by `augur train`'s pipeline. `wide`: 25 views x 10 features on
one entity (bench/wide_repo.py). Either model is compiled into the model repository's
compile cache, where a `compile: auto` server puts it once busy. Requests are drawn from
realistic rows: fraud requests are real (user, merchant, amount) transactions, wide
requests uniform entity ids.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from augur.features.connection import connect
from augur.features.repo import build_plan, open_store
from augur.features.writer import WRITE_TIMEOUTS
from augur.pipelines.materialize import materialize
from bench import wide_repo
from examples.fraud.generate import Scale
from examples.fraud.scaffold import feast_apply, scaffold

FRAUD_FULL = Scale(users=200_000, merchants=20_000, transactions=300_000, days=30)
FRAUD_QUICK = Scale(users=400, merchants=80, transactions=8_000, days=30)
WIDE_FULL = 10_000  # entities
WIDE_QUICK = 300


@dataclass(frozen=True)
class Scenario:
    name: str
    feature_repo: Path
    model_repo: Path
    redis_address: str
    model: str
    feature_service: str
    request_features: tuple[str, ...]
    pool: dict[str, np.ndarray]  # realistic rows to draw requests from: join keys + request
    described: dict = field(default_factory=dict)  # sizes, for the report
    build_s: dict = field(default_factory=dict)  # seconds per build step
    materialization: dict = field(default_factory=dict)  # Feast's engine vs Augur's


def build(name: str, work: Path, redis_address: str, quick: bool) -> Scenario:
    """The scenario, its model compiled as a busy server compiles it (compile_ahead)."""
    if name == "fraud":
        scenario = _fraud(work, redis_address, FRAUD_QUICK if quick else FRAUD_FULL)
    elif name == "wide":
        scenario = _wide(work, redis_address, WIDE_QUICK if quick else WIDE_FULL)
    else:
        raise ValueError(f"unknown scenario {name!r}; have fraud, wide")
    took = compile_ahead(scenario)
    if took is not None:
        scenario.build_s["compile"] = took
    return scenario


def requests(scenario: Scenario, rows: int, count: int, seed: int = 0) -> list[dict]:
    """`count` requests of `rows` entity rows each, as plain columns (JSON-ready)."""
    rng = np.random.default_rng(seed + rows)
    size = len(next(iter(scenario.pool.values())))
    out = []
    for _ in range(count):
        pick = rng.integers(0, size, rows)
        columns = {k: v[pick].tolist() for k, v in scenario.pool.items()}
        extra = {k: columns.pop(k) for k in scenario.request_features}
        out.append({"entities": columns, "request_features": extra})
    return out


def _fraud(work: Path, address: str, scale: Scale) -> Scenario:
    from augur.pipelines.train import train

    repo, models = work / "feature_repo", work / "models"
    spent = {}
    began = time.perf_counter()
    scaffold(repo, address, scale)  # generate parquet + `feast apply`
    spent["generate_and_apply"] = time.perf_counter() - began
    began = time.perf_counter()
    compared = materialize_compared(repo, address)
    spent["materialize"] = time.perf_counter() - began
    began = time.perf_counter()
    result = train(repo, models, address, only=["fraud_lgbm"], progress=False)[0]
    spent["train"] = time.perf_counter() - began
    txns = pd.read_parquet(repo / "data" / "transactions.parquet")
    pool = {
        "user_id": txns["user_id"].to_numpy(),
        "merchant_id": txns["merchant_id"].to_numpy(),
        "amount": txns["amount"].to_numpy(),
    }
    described = {
        "users": scale.users,
        "merchants": scale.merchants,
        "transactions": scale.transactions,
        "feature_views": 3,
        "features": len(result.version.features) - 1,
        "request_features": 1,
        "model": f"fraud_lgbm@{result.version.version} ({_shape(result.version.metadata)})",
    }
    return Scenario(
        name="fraud",
        feature_repo=repo,
        model_repo=models,
        redis_address=address,
        model="fraud_lgbm",
        feature_service="fraud_lgbm",
        request_features=("amount",),
        pool=pool,
        described=described,
        build_s=spent,
        materialization=compared,
    )


def _wide(work: Path, address: str, entities: int) -> Scenario:
    repo, models = work / "feature_repo", work / "models"
    spent = {}
    began = time.perf_counter()
    wide_repo.write_repo(repo, entities)
    feast_apply(repo, address)
    spent["generate_and_apply"] = time.perf_counter() - began
    began = time.perf_counter()
    materialize(repo, address, progress=False)  # Feast's engine is timed on fraud only
    spent["materialize"] = time.perf_counter() - began
    began = time.perf_counter()
    plan = build_plan(open_store(repo, address), wide_repo.SERVICE)
    version = wide_repo.publish_model(models, plan.feature_names, rounds=200)
    spent["train"] = time.perf_counter() - began
    described = {
        "entities": entities,
        "feature_views": wide_repo.VIEWS,
        "features": len(plan.feature_names),
        "request_features": 0,
        "model": f"{wide_repo.MODEL}@{version.version} ({_shape(version.metadata)}, random data)",
    }
    pool = {wide_repo.ENTITY: wide_repo.entity_ids(repo)}
    return Scenario(
        name="wide",
        feature_repo=repo,
        model_repo=models,
        redis_address=address,
        model=wide_repo.MODEL,
        feature_service=wide_repo.SERVICE,
        request_features=(),
        pool=pool,
        described=described,
        build_s=spent,
    )


def set_compile(scenario: Scenario, compiler: str) -> None:
    """Serve the scenario's model with `compile: <compiler>` in its model.yaml."""
    _set_option(scenario.model_repo, scenario.model, "compile", compiler)


def compile_ahead(scenario: Scenario) -> float | None:
    """Fill the compile cache for the scenario's LightGBM model as a busy `compile: auto`
    server does a few seconds into its traffic (the same child command); the seconds it
    took, None for a model of another kind. Every Augur server of the run then starts where
    a user's steady state is."""
    import os
    import subprocess
    import sys

    from augur.modelrepo.repository import ModelRepository
    from augur.serving.runtimes import COMPILE_CACHE

    repo = ModelRepository(scenario.model_repo)
    version = repo.resolve(scenario.model)
    if version.spec.kind != "lightgbm":
        return None
    began = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "augur.serving.runtimes.compiled_runtime",
            str(version.artifact),
            version.metadata["sha256"],
            str(scenario.model_repo / COMPILE_CACHE),
            str(os.getpid()),
        ],
        check=True,
        timeout=600,
    )
    return time.perf_counter() - began


def _set_option(model_repo: Path, model: str, option: str, value: str) -> None:
    """Set one option of a model's model.yaml, keeping the rest."""
    import yaml

    path = model_repo / model / "model.yaml"
    raw = yaml.safe_load(path.read_text())
    raw[option] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def serve_mlp(scenario: Scenario, device: str) -> Scenario:
    """The fraud scenario serving `augur train`'s torch MLP on `device` (cpu, cuda) in place
    of its LightGBM model; the MLP is trained on the scenario's data and published beside it."""
    from augur.pipelines.train import train

    if scenario.name != "fraud":
        raise ValueError(f"the {scenario.name} scenario has no torch model; fraud has")
    train(
        scenario.feature_repo,
        scenario.model_repo,
        scenario.redis_address,
        only=["fraud_mlp"],
        progress=False,
    )
    _set_option(scenario.model_repo, "fraud_mlp", "device", device)
    return replace(scenario, model="fraud_mlp")


def materialize_compared(repo: Path, address: str) -> dict:
    """Materialize the whole history with Feast's local engine, then with Augur's writer, each
    into an empty Redis: the same rows, timed end to end (registry, offline query, writes).
    Augur's result is what the scenario then serves."""
    client = connect(address, WRITE_TIMEOUTS)  # a flush of the whole history takes a while
    window = {"start": dt.datetime(2000, 1, 1, tzinfo=dt.UTC), "end": dt.datetime.now(dt.UTC)}
    seconds = {}
    for engine in ("feast", "augur"):
        # SYNC: Valkey frees a flushed keyspace in a background thread by default, which
        # would run on this machine's two cores during the next engine's timed run.
        client.execute_command("FLUSHDB", "SYNC")
        began = time.perf_counter()
        runs = materialize(repo, address, progress=False, engine=engine, **window)
        seconds[engine] = time.perf_counter() - began
    rows = sum(run.rows or 0 for run in runs.values())
    return {
        "rows": rows,
        "keys": client.dbsize(),
        "feast_s": round(seconds["feast"], 2),
        "augur_s": round(seconds["augur"], 2),
        "feast_rows_per_s": round(rows / seconds["feast"]),
        "augur_rows_per_s": round(rows / seconds["augur"]),
        "augur_vs_feast": round(seconds["feast"] / seconds["augur"], 2),
    }


def _shape(metadata: dict) -> str:
    """The size of a published LightGBM model, from the parameters it was trained with."""
    params = metadata.get("params") or {}
    rounds, leaves = params.get("num_boost_round", 100), params.get("num_leaves", 31)
    return f"LightGBM, {rounds} rounds, {leaves} leaves"
