"""A 3-master Redis Cluster against one node, same data, same run: read latency of 1, 100
and 1,000 entities, and the throughput of 100-entity Predict calls (closed loop, 16 callers)
on an `augur serve` of each. The ratios docs/cluster.md's scaling model rests on.
`python -m bench.cluster [--reads N] [--predict-seconds S]`.

Both stores are local (augur.features.cluster_local, augur.features.redis_server) and get the
same fraud repo's rows from Augur's materialization; one model trained on them serves both.
Each read size is read alternately from the node and the cluster, and the medians compared;
the Predict load (bench/load.py, its own process) alternates between the two servers in turns
(A B B A), each turn bounded in seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from augur.features.cluster_local import LocalCluster
from augur.features.connection import connect
from augur.features.reader import OnlineReader
from augur.features.redis_server import EmbeddedRedis, free_port
from augur.features.repo import build_plan, open_store
from augur.pipelines.materialize import materialize
from bench import targets
from examples.fraud.generate import Scale, generate
from examples.fraud.scaffold import copy_definitions, feast_apply

SCALE = Scale(users=2_000, merchants=200, transactions=20_000, days=30)
MODEL = "fraud_lgbm"
CALLERS = 16
PREDICT_ROWS = 100


def _repo(dest: Path, address: str, cluster: bool) -> Path:
    copy_definitions(dest)
    if cluster:
        yaml_file = dest / "feature_store.yaml"
        yaml_file.write_text(
            yaml_file.read_text().replace(
                "  type: redis\n", "  type: redis\n  redis_type: redis_cluster\n"
            )
        )
    generate(dest / "data", SCALE)
    feast_apply(dest, address)
    materialize(dest, address, progress=False)
    return dest


def _median_us(reader: OnlineReader, plan, entities, reads: int) -> float:
    times = []
    for _ in range(reads):
        t = time.perf_counter()
        reader.read(plan, entities)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def reads(one: Path, addresses: dict[str, str], count: int) -> None:
    plan = build_plan(open_store(one, addresses["node"]), MODEL)
    readers = {name: OnlineReader(connect(address)) for name, address in addresses.items()}
    pairs = pd.read_parquet(one / "data" / "user_merchant_stats.parquet")
    print(f"{'entities':>8} {'node us':>9} {'cluster us':>11} {'ratio':>6}")
    for n in (1, 100, 1000):
        sample = pairs.sample(n, replace=n > len(pairs), random_state=n)
        entities = {
            "user_id": sample["user_id"].to_numpy(np.int64),
            "merchant_id": sample["merchant_id"].to_numpy(np.int64),
        }
        medians = {k: [] for k in readers}
        for _ in range(3):  # alternate, so that load on the shared box hits both alike
            for name, reader in readers.items():
                medians[name].append(_median_us(reader, plan, entities, count // 3))
        node_us, cluster_us = (statistics.median(medians[k]) for k in ("node", "cluster"))
        print(f"{n:>8} {node_us:>9.0f} {cluster_us:>11.0f} {cluster_us / node_us:>6.2f}x")


def predict(repos: dict[str, Path], addresses: dict[str, str], seconds: float, work: Path):
    """100-entity Predict, closed loop, CALLERS callers, on an `augur serve` per store."""
    from augur.pipelines.train import train

    models = work / "models"
    train(repos["node"], models, addresses["node"], only=[MODEL], progress=False)
    txns = pd.read_parquet(repos["node"] / "data" / "transactions.parquet")
    rng = np.random.default_rng(PREDICT_ROWS)
    pool = []
    for _ in range(64):
        pick = rng.integers(0, len(txns), PREDICT_ROWS)
        rows = txns.iloc[pick]
        pool.append(
            {
                "entities": {
                    "user_id": rows["user_id"].tolist(),
                    "merchant_id": rows["merchant_id"].tolist(),
                },
                "request_features": {"amount": rows["amount"].tolist()},
            }
        )
    servers = {}
    try:
        for name, repo in repos.items():
            port = free_port()
            config = work / f"augur-{name}.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "feature_repo": str(repo),
                        "model_repo": str(models),
                        "redis": {"address": addresses[name]},
                        "server": {**targets.AUGUR_SERVER, "port": port},
                    }
                )
            )
            command = [sys.executable, "-m", "augur.cli.main", "serve", "--config", str(config)]
            servers[name] = targets.start(name, command, port, MODEL, work)
        step = {
            "mode": "closed",
            "rows": PREDICT_ROWS,
            "concurrency": CALLERS,
            "max_requests": 1_000_000,
            "max_seconds": seconds,
            "targets": list(servers),
            "rounds": 2,
        }
        plan = targets.load_plan(servers, MODEL, {str(PREDICT_ROWS): pool}, [step])
        (work / "plan.json").write_text(json.dumps(plan))
        subprocess.run(
            [sys.executable, "-m", "bench.load", str(work / "plan.json"), str(work / "out.json")],
            check=True,
            cwd=targets.ROOT,
            timeout=120 + 8 * seconds,
        )
    finally:
        for server in servers.values():
            server.stop()
    results = {r["target"]: r for r in json.loads((work / "out.json").read_text())}
    print(f"\n{PREDICT_ROWS}-entity Predict, closed loop, {CALLERS} callers, 2 turns each")
    print(f"{'store':>8} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'cpu ms':>7}")
    for name, r in results.items():
        print(
            f"{name:>8} {r['throughput_rps']:>8.0f} {r.get('p50_ms', 0):>7.2f} "
            f"{r.get('p99_ms', 0):>7.2f} {sum(r['errors'].values()):>6} "
            f"{r['server_cpu_ms_per_req']:>7.3f}"
        )
    ratio = results["cluster"]["throughput_rps"] / max(results["node"]["throughput_rps"], 1e-9)
    print(f"cluster / node throughput: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=300, help="reads per size and store")
    parser.add_argument(
        "--predict-seconds",
        type=float,
        default=5.0,
        help="seconds of each of the 4 Predict turns (2 per store); 0 skips Predict",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="augur-bench-cluster-"))
    with EmbeddedRedis() as node, LocalCluster(3) as cluster:
        addresses = {"node": node.address, "cluster": cluster.address}
        repos = {
            "node": _repo(work / "node", node.address, False),
            "cluster": _repo(work / "cluster", cluster.address, True),
        }
        reads(repos["node"], addresses, args.reads)
        if args.predict_seconds > 0:
            predict(repos, addresses, args.predict_seconds, work)


if __name__ == "__main__":
    main()
