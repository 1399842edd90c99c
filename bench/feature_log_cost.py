"""The cost of served-feature logging on 1-row Predict: off, sample_rate 0.01 and 1.0, on one
in-process server over loopback, rounds interleaved so that load on the box hits each alike.

    .venv/bin/python -m bench.feature_log_cost [--calls 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from augur.config import Config, RedisConfig, ServerConfig
from augur.features.redis_server import EmbeddedRedis, free_port
from examples.fraud.generate import Scale
from examples.fraud.scaffold import scaffold

RATES = {"off": None, "0.01": 0.01, "1.0": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="1-row calls per rate per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from augur.client.client import PredictorClient
    from augur.pipelines.materialize import materialize
    from augur.pipelines.train import train
    from augur.serving.server import start

    work = Path(tempfile.mkdtemp(prefix="augur-logcost-"))
    with EmbeddedRedis() as redis:
        repo = work / "feature_repo"
        scaffold(repo, redis.address, Scale(users=400, merchants=80, transactions=8_000))
        materialize(repo, redis.address, progress=False)
        base = work / "models"
        train(repo, base, redis.address, only=["fraud_lgbm"], progress=False)
        txns = pd.read_parquet(repo / "data" / "transactions.parquet").sample(args.calls)
        servers = {}
        for label, rate in RATES.items():
            models = work / f"models-{label}"
            shutil.copytree(base, models)
            if rate is not None:
                path = models / "fraud_lgbm" / "model.yaml"
                raw = yaml.safe_load(path.read_text())
                raw["logging"] = {"sample_rate": rate}
                path.write_text(yaml.safe_dump(raw))
            config = Config(
                feature_repo=repo,
                model_repo=models,
                redis=RedisConfig(address=redis.address),
                server=ServerConfig(port=free_port(), metrics_port=0),
            )
            running = start(config)
            client = PredictorClient(f"127.0.0.1:{running.port}")
            client.wait_ready(10)
            servers[label] = (running, client)
        times: dict[str, list[float]] = {label: [] for label in RATES}
        rows = list(zip(txns["user_id"], txns["merchant_id"], txns["amount"], strict=True))
        for _ in range(args.rounds):
            for label, (_, client) in servers.items():
                began = time.perf_counter()
                for u, m, a in rows:
                    client.predict(
                        "fraud_lgbm", {"user_id": [u], "merchant_id": [m]}, {"amount": [a]}
                    )
                times[label].append((time.perf_counter() - began) / len(rows))
        for running, client in servers.values():
            client.close()
            running.stop()
    base_us = np.median(times["off"]) * 1e6
    print(f"1-row Predict, {args.calls} calls x {args.rounds} rounds, median per call:")
    for label, t in times.items():
        us = np.median(t) * 1e6
        print(f"  logging {label:5}  {us:7.1f} us  ratio to off {us / base_us:.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
