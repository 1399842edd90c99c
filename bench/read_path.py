"""Read-path benchmark: Augur's reader vs Feast's get_online_features vs the raw Redis floor.

Builds the fraud scenario on a private Redis, then times, in one run and on the same
random entities: Feast `get_online_features(...).to_dict()`, Augur `OnlineReader.read`,
and the floor: the same keys' round trip with nothing decoded, the cheapest of HMGET of
Feast's fields, HGETALL and HMGET of the packed vectors (bench.inprocess.redis_floor).
Prints medians and p99 and the ratios, and writes bench/results/read_path.json.

    python -m bench.read_path [--users 10000] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from augur.features.connection import connect
from augur.features.reader import OnlineReader
from augur.features.redis_server import EmbeddedRedis
from augur.features.repo import build_plan, open_store
from augur.pipelines.materialize import materialize
from bench.inprocess import FLOORS, redis_floor
from bench.timing import stats as _stats
from bench.timing import timed as _timed
from examples.fraud.generate import Scale
from examples.fraud.scaffold import scaffold

RESULTS = Path(__file__).parent / "results"


def run(users: int, repeats: int, sizes=(1, 100, 1000)) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="augur-bench-"))
    try:
        repo = workdir / "feature_repo"
        merchants = max(users // 5, 10)
        with EmbeddedRedis(data_dir=workdir / "redis") as server:
            scaffold(repo, server.address, Scale(users, merchants, users * 20, 30))
            materialize(repo, server.address)
            store = open_store(repo, server.address)
            plan = build_plan(store, "fraud_lgbm")
            service = store.get_feature_service("fraud_lgbm")
            client = connect(server.address)
            reader = OnlineReader(client)
            rng = np.random.default_rng(0)
            results = {
                "scenario": "fraud",
                "users": users,
                "features": len(plan.columns),
                "sizes": {},
            }
            for n in sizes:
                reps = repeats if n < 1000 else max(repeats // 10, 10)
                u = rng.integers(0, users, n).tolist()
                m = rng.integers(0, merchants, n).tolist()
                entities = {"user_id": u, "merchant_id": m}
                rows = [{"user_id": a, "merchant_id": b} for a, b in zip(u, m, strict=True)]

                feast_ms = _timed(
                    lambda rows=rows: store.get_online_features(
                        features=service, entity_rows=rows, full_feature_names=True
                    ).to_dict(),
                    max(reps // 4, 5),
                )
                augur_ms = _timed(lambda e=entities: reader.read(plan, e), reps)
                request = [{"entities": entities}]
                floor = min(
                    (redis_floor(client, plan, request, reps, mode) for mode in FLOORS),
                    key=lambda f: f["p50_ms"],
                )
                results["sizes"][n] = {
                    "feast": _stats(feast_ms),
                    "augur": _stats(augur_ms),
                    "redis_floor": floor,
                    "speedup_vs_feast_p50": round(
                        float(np.median(feast_ms) / np.median(augur_ms)), 2
                    ),
                    "vs_floor_p50": round(float(np.median(augur_ms)) / floor["p50_ms"], 2),
                }
            return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    results = run(args.users, args.repeats)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "read_path.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"fraud plan, {results['features']} features, {results['users']:,} users "
        f"(times in ms, p50 / p99)"
    )
    print(
        f"{'entities':>8}  {'Feast':>15}  {'Augur':>15}  {'Redis floor':>15}  "
        f"{'Augur vs Feast':>14}  {'Augur / floor':>13}"
    )
    for n, r in results["sizes"].items():
        cell = lambda s: f"{s['p50_ms']:.3f} / {s['p99_ms']:.3f}"  # noqa: E731
        print(
            f"{n:>8}  {cell(r['feast']):>15}  {cell(r['augur']):>15}  "
            f"{cell(r['redis_floor']):>15}  {r['speedup_vs_feast_p50']:>13}x  "
            f"{r['vs_floor_p50']:>12}x"
        )


if __name__ == "__main__":
    main()
