"""Rows per second of `augur materialize`: the single-process writer against the Ray engine
with 1 and 2 workers, on one generated fraud repo, each run into a fresh embedded Redis.

    python -m bench.materialize_engines [--users 10000 --transactions 200000]

Each engine runs in a process of its own (a Ray instance of N CPUs for N workers); the time
is the sum of the views' runs, which leaves Ray's start out and its workers' first start in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from augur.features.redis_server import EmbeddedRedis
from examples.fraud.generate import Scale, default_end
from examples.fraud.scaffold import scaffold

END = default_end()
WINDOW = (END - dt.timedelta(days=40), END + dt.timedelta(hours=1))


def one_run(repo: Path, engine: str, workers: int | None) -> dict:
    from augur.pipelines.materialize import materialize

    with EmbeddedRedis() as server:
        runs = materialize(repo, server.address, start=WINDOW[0], end=WINDOW[1],
                           engine=engine, workers=workers, progress=False)  # fmt: skip
    rows = sum(r.rows or 0 for r in runs.values())
    seconds = sum(r.seconds for r in runs.values())
    return {"engine": engine, "workers": workers, "rows": rows, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--transactions", type=int, default=200_000)
    parser.add_argument("--one", nargs=3, metavar=("REPO", "ENGINE", "WORKERS"), help="internal")
    args = parser.parse_args()
    if args.one:
        repo, engine, workers = args.one
        print(json.dumps(one_run(Path(repo), engine, int(workers) or None)))
        return
    repo = Path(tempfile.mkdtemp()) / "feature_repo"
    scaffold(repo, "127.0.0.1:6379", Scale(users=args.users, transactions=args.transactions))
    results = []
    for engine, workers in (("augur", 0), ("ray", 1), ("ray", 2)):
        out = subprocess.run(
            [sys.executable, "-m", "bench.materialize_engines", "--one", str(repo), engine,
             str(workers)], capture_output=True, text=True, check=True,
        )  # fmt: skip
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = results[0]["rows"] / results[0]["seconds"]
    print("| engine | workers | rows | seconds | rows/s | vs one process |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        rate = r["rows"] / r["seconds"]
        print(f"| {r['engine']} | {r['workers'] or '-'} | {r['rows']:,} | {r['seconds']:.2f} "
              f"| {rate:,.0f} | {rate / base:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
