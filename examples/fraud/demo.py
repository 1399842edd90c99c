"""`augur demo`: the whole flow on one machine, from an empty folder to printed predictions.

Embedded Redis -> generated fraud data -> feast apply -> materialize -> train LightGBM and
an MLP -> a predictor process -> real gRPC Predict calls. Everything started is stopped,
also on failure or Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from augur.features.redis_server import EmbeddedRedis, free_port
from augur.features.repo import REDIS_ENV
from examples.fraud.generate import Scale, generate
from examples.fraud.scaffold import copy_definitions, feast_apply

MODELS = ("fraud_lgbm", "fraud_mlp")


@dataclass(frozen=True)
class DemoScale:
    users: int = 10_000
    merchants: int = 2_000
    transactions: int = 200_000


def _step(text: str) -> float:
    print(f"\n==> {text}", flush=True)
    return time.perf_counter()


def _done(started: float, detail: str = "") -> None:
    print(
        f"    done in {time.perf_counter() - started:.1f}s{'  ' + detail if detail else ''}",
        flush=True,
    )


def run_demo(workdir: Path, scale: DemoScale = DemoScale()) -> int:
    workdir = workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    repo = workdir / "feature_repo"
    copy_definitions(repo)
    total = time.perf_counter()

    with ExitStack() as stack:
        t = _step("Starting the embedded Redis")
        redis_server = stack.enter_context(EmbeddedRedis(data_dir=workdir / "redis"))
        os.environ[REDIS_ENV] = redis_server.address
        _done(t, f"listening on {redis_server.address}")

        t = _step("Generating the fraud scenario (seeded)")
        counts = generate(repo / "data", Scale(scale.users, scale.merchants, scale.transactions))
        _done(t, ", ".join(f"{k} {v:,}" for k, v in counts.items()))

        t = _step("feast apply")
        feast_apply(repo, redis_server.address)
        _done(t)

        t = _step("Materializing features into Redis (augur materialize)")
        from augur.pipelines.materialize import materialize

        materialize(repo, redis_server.address)
        _done(t)

        t = _step("Training both models (augur train)")
        from augur.pipelines.train import train

        results = train(repo, workdir / "models", redis_server.address)
        for r in results:
            print(
                f"    {r.version.spec.name}@{r.version.version}: holdout AUC "
                f"{r.auc_holdout:.4f} (train {r.auc_train:.4f}; {r.rows_train:,} train / "
                f"{r.rows_holdout:,} holdout rows, split by time)"
            )
        _done(t)

        t = _step("Starting the predictor (augur serve)")
        address, metrics_port = _start_server(stack, workdir, repo, redis_server.address)
        _done(t, f"gRPC on {address}, metrics on http://127.0.0.1:{metrics_port}/metrics")

        _predictions(address, repo)
    print(
        f"\nDemo finished in {time.perf_counter() - total:.0f}s; everything it started is "
        f"stopped. Files are in {workdir}."
    )
    return 0


def _start_server(stack: ExitStack, workdir: Path, repo: Path, redis_address: str):
    port, metrics_port = free_port(), free_port()
    config = {
        "feature_repo": str(repo),
        "model_repo": str(workdir / "models"),
        "redis": {"address": redis_address},
        "server": {"port": port, "metrics_port": metrics_port},
    }
    config_path = workdir / "augur.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = open(workdir / "server.log", "w")  # noqa: SIM115 - closed by the exit stack
    stack.callback(log.close)
    process = subprocess.Popen(
        [sys.executable, "-m", "augur.cli.main", "serve", "--config", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def stop() -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    stack.callback(stop)
    from augur.client.client import PredictorClient

    address = f"127.0.0.1:{port}"
    with PredictorClient(address) as client:
        try:
            client.wait_serving(MODELS, 120, process)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{e}; see {workdir / 'server.log'}") from None
    return address, metrics_port


def _predictions(address: str, repo: Path) -> None:
    from augur.client.client import PredictorClient

    txns = pd.read_parquet(repo / "data" / "transactions.parquet")
    last_day = txns[txns["event_timestamp"] >= txns["event_timestamp"].max() - pd.Timedelta("1D")]
    picked = pd.concat(
        [last_day[last_day["is_fraud"] == 1].tail(3), last_day[last_day["is_fraud"] == 0].tail(3)]
    )
    users = [*picked["user_id"].tolist(), 987_654]  # the last one is a user we never saw
    merchants = [*picked["merchant_id"].tolist(), int(picked["merchant_id"].iloc[0])]
    amounts = [*picked["amount"].tolist(), 250.0]
    labels = [*("fraud" if y else "legit" for y in picked["is_fraud"]), "unknown"]

    t = _step(
        "Predict over gRPC: yesterday's last 3 fraudulent and 3 legitimate "
        "transactions, and a user never seen"
    )
    with PredictorClient(address) as client:
        answers = {
            m: client.predict(m, {"user_id": users, "merchant_id": merchants}, {"amount": amounts})
            for m in MODELS
        }
        print(
            f"    {'label':>7} {'user_id':>8} {'merchant_id':>11} {'amount':>9}  "
            + "  ".join(f"{m + '@' + answers[m].version:>16}" for m in MODELS)
            + "  features present/missing/stale"
        )
        for i in range(len(users)):
            a = answers[MODELS[0]]
            status = f"{a.present[i]}/{a.missing[i]}/{a.stale[i]}"
            print(
                f"    {labels[i]:>7} {users[i]:>8} {merchants[i]:>11} {amounts[i]:>9.2f}  "
                + "  ".join(f"{answers[m].scores[i, 0]:>16.4f}" for m in MODELS)
                + f"  {status:>30}"
            )
        _done(t)

        lat1 = _latencies(client, "fraud_lgbm", 1, 300, txns)
        lat100 = _latencies(client, "fraud_lgbm", 100, 60, txns)
    print(
        f"\nLatency (client-measured, fraud_lgbm over loopback gRPC): 1 row p50 "
        f"{np.percentile(lat1, 50):.2f} ms / p99 {np.percentile(lat1, 99):.2f} ms over "
        f"{len(lat1)} calls; 100 rows p50 {np.percentile(lat100, 50):.2f} ms / p99 "
        f"{np.percentile(lat100, 99):.2f} ms over {len(lat100)} calls"
    )


def _latencies(client, model: str, rows: int, calls: int, txns: pd.DataFrame) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(calls):
        pick = txns.iloc[rng.integers(0, len(txns), rows)]
        entities = {
            "user_id": pick["user_id"].to_numpy(),
            "merchant_id": pick["merchant_id"].to_numpy(),
        }
        request = {"amount": pick["amount"].tolist()}
        start = time.perf_counter()
        client.predict(model, entities, request)
        out.append((time.perf_counter() - start) * 1e3)
    return np.array(out[min(10, calls // 10) :])  # the first calls warm connections up


__all__ = ["DemoScale", "run_demo"]
