"""Augur's server with each call's read, assembly and model call made free: the throughput
dynamic batching can approach.

    python -m bench.ceiling_server --config augur.yaml

A batch big enough makes the read, assembly and model call per call vanish (and their stage
metrics, which a batch records once), and leaves what every call still costs: gRPC,
decoding the request, building the reply, the call's own metrics. This
server is `augur serve` (one process) with those three stages answered from memory: the
first call of each row count is scored for real, later calls of that row count get its
answer back. Not a model server: an instrument, like bench/echo_server.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from augur import logs
from augur.config import load
from augur.serving.supervisor import metrics_in_memory


def remember_scores() -> None:
    """Make Scorer.score answer each row count from its first answer."""
    from augur.serving.scoring import Scorer

    score = Scorer.score
    answers: dict[int, object] = {}

    def remembered(self, route, model, entities, extra, *rest):
        rows = len(next(iter(entities.values())))
        if rows not in answers:
            answers[rows] = score(self, route, model, entities, extra, *rest)
        return answers[rows]

    Scorer.score = remembered


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="augur.yaml to serve")
    args = parser.parse_args(argv)
    config = load(args.config)
    if config.server.processes > 1:
        parser.error("one process only: server.processes must be 1")
    logs.configure(config.logging.level, config.logging.json)
    metrics_in_memory()  # before prometheus_client is imported, as `augur serve` does
    remember_scores()
    from augur.serving.server import serve

    serve(config)


if __name__ == "__main__":
    main()
