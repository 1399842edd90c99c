"""Read latency on a 3-master Redis Cluster against one node, same data, same run: the ratio
that docs/cluster.md's scaling model rests on. `python -m bench.cluster [--reads N]`.

Both stores are local (augur.features.cluster_local, augur.features.redis_server) and get the
same fraud repo's rows from Augur's materialization; each size is read alternately from the
node and the cluster, and the medians compared.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from augur.features.cluster_local import LocalCluster
from augur.features.connection import connect
from augur.features.reader import OnlineReader
from augur.features.redis_server import EmbeddedRedis
from augur.features.repo import build_plan, open_store
from augur.pipelines.materialize import materialize
from examples.fraud.generate import Scale, generate
from examples.fraud.scaffold import copy_definitions, feast_apply

SCALE = Scale(users=2_000, merchants=200, transactions=20_000, days=30)


def _repo(dest: Path, address: str, cluster: bool) -> Path:
    copy_definitions(dest)
    if cluster:
        yaml = dest / "feature_store.yaml"
        yaml.write_text(
            yaml.read_text().replace(
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=300, help="reads per size and store")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="augur-bench-cluster-"))
    with EmbeddedRedis() as node, LocalCluster(3) as cluster:
        one = _repo(work / "node", node.address, False)
        _repo(work / "cluster", cluster.address, True)
        plan = build_plan(open_store(one, node.address), "fraud_lgbm")
        readers = {
            "node": OnlineReader(connect(node.address)),
            "cluster": OnlineReader(connect(cluster.address)),
        }
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
                    medians[name].append(_median_us(reader, plan, entities, args.reads // 3))
            node_us, cluster_us = (statistics.median(medians[k]) for k in ("node", "cluster"))
            print(f"{n:>8} {node_us:>9.0f} {cluster_us:>11.0f} {cluster_us / node_us:>6.2f}x")


if __name__ == "__main__":
    main()
