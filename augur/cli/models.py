"""`augur models ...`: the operator's view of the model repository and of running servers.

With --server, changes go through that server's Admin service (which writes the repository
and applies them at once); without, they are written to the repository, and servers
watching it apply them at their next poll.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from augur.config import Config
from augur.modelrepo.repository import ARTIFACTS, ModelRepository, ModelSpec, RepositoryError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list, publish and route model versions",
        description=__doc__.split("\n\n")[0],
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, help_text: str, server: bool = True) -> argparse.ArgumentParser:
        v = verbs.add_parser(name, help=help_text, description=help_text)
        v.add_argument("--config", type=Path, help="Augur config file (for the model repository)")
        if server:
            v.add_argument(
                "--server", metavar="HOST:PORT", help="act on this running server's Admin service"
            )
            v.add_argument("--tls-ca", help="CA to trust for a TLS server (PEM)")
            v.add_argument("--tls-cert", help="client certificate for mutual TLS (PEM)")
            v.add_argument("--tls-key", help="its private key (PEM)")
            v.add_argument(
                "--token",
                default=os.environ.get("AUGUR_TOKEN"),
                help="bearer token when the server requires one (default: $AUGUR_TOKEN, which "
                "keeps it out of shell history)",
            )
        return v

    verb("list", "every model and version in the repository, with holdout metrics", False)
    v = verb("status", "what serves: stable, canary and its guardrail window, shadow, rollbacks")
    v.add_argument("model", nargs="?", default="")
    v = verb("publish", "add a model file as the next version of a model", False)
    v.add_argument("model")
    v.add_argument(
        "artifact",
        type=Path,
        help="the model file: .txt (LightGBM), .pt2 (torch.export), .ubj/.json (XGBoost), "
        ".cbm (CatBoost), .onnx (ONNX), or a runtime plugin's file with --kind",
    )
    v.add_argument(
        "--kind",
        help="the model's kind when the file's suffix does not say it (a runtime plugin's "
        "kind, see docs/runtimes.md); default: from the suffix, or the existing model's",
    )
    v.add_argument(
        "--metadata",
        type=Path,
        required=True,
        help='JSON with at least "features": the model\'s inputs in order',
    )
    v.add_argument("--feature-service", help="for a new model: its Feast feature service")
    v.add_argument("--request-feature", action="append", default=[], dest="request_features")
    v.add_argument("--output", action="append", default=[], dest="outputs")
    v = verb(
        "promote",
        "make a version stable (the default for callers); refused when the model logs "
        "served features or sets `skew` thresholds and the version's skew report exceeds them",
    )
    v.add_argument("model")
    v.add_argument("version")
    v.add_argument("--force", action="store_true", help="promote even beyond the skew thresholds")
    v = verb("canary", "send a sticky, weighted share of entities to a version")
    v.add_argument("model")
    v.add_argument("version")
    v.add_argument("--weight", type=float, required=True, help="0..1; 0 ends the canary")
    v = verb("shadow", "score a copy of traffic with a version, off the request path")
    v.add_argument("model")
    v.add_argument("version", nargs="?", default="", help="omit (or --off) to end the shadow")
    v.add_argument("--off", action="store_true")
    compile_help = "compile a LightGBM version with lleaves into the compile cache now: servers "
    compile_help += "then start on it (compile: auto otherwise compiles it once a server is busy)"
    v = verb("compile", compile_help, False)
    v.add_argument("model")
    v.add_argument("version", nargs="?", default="", help="default: the stable version")
    v = verb("rollback", "end the canary now; all traffic returns to stable")
    v.add_argument("model")
    v.add_argument("--reason", default="operator rollback")
    p.set_defaults(handler=run)


def run(args, cfg: Config) -> int:
    repo = ModelRepository(cfg.model_repo)
    try:
        if args.verb == "list":
            return _list(repo)
        if args.verb == "publish":
            return _publish(repo, args)
        if args.verb == "compile":
            return _compile(repo, cfg, args)
        if args.verb == "promote" and not args.force and not _skew_allows(repo, cfg, args):
            return 1
        if getattr(args, "server", None):
            return _remote(args)
        return _local(repo, args)
    except RepositoryError as e:
        print(f"augur models {args.verb}: {e}")
        return 1


def add_skew_parser(sub, timestamp, config_help: str) -> None:
    p = sub.add_parser(
        "skew",
        help="training/serving skew of a model: its served-feature log vs offline features",
        description="Join the model's served-feature log (model.yaml `logging`) with "
        "Feast's get_historical_features for the same entities and times; print per feature "
        "the share of mismatches, mean absolute difference, missing rate online and offline, "
        "and the PSI against the version's training distribution. Exits 1 beyond the "
        "thresholds (model.yaml `skew`, else the defaults), so it can gate CI/CD.",
    )
    p.add_argument("model")
    p.add_argument("--config", type=Path, help=config_help)
    p.add_argument("--version", default="", help="version or alias (default: stable)")
    p.add_argument("--since", type=timestamp, help="ISO time: only rows logged from then")
    p.add_argument("--until", type=timestamp, help="ISO time: only rows logged before then")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="also draw the report here")
    p.add_argument("--max-mismatch", type=float, help="share of differing rows allowed per feature")
    p.add_argument("--max-psi", type=float, help="PSI allowed per feature vs training")
    p.add_argument("--max-rows", type=int, default=50_000, help="logged rows joined at most")
    p.set_defaults(handler=run_skew)


def run_skew(args, cfg: Config) -> int:
    import dataclasses

    from augur.modelrepo.spec import SkewThresholds
    from augur.pipelines.skew import skew_report

    spec = ModelRepository(cfg.model_repo).spec(args.model)
    limits = spec.skew or SkewThresholds()
    if args.max_mismatch is not None:
        limits = dataclasses.replace(limits, max_mismatch=args.max_mismatch)
    if args.max_psi is not None:
        limits = dataclasses.replace(limits, max_psi=args.max_psi)
    report = skew_report(
        cfg.feature_repo,
        cfg.model_repo,
        cfg.redis.address,
        args.model,
        args.version,
        args.since,
        args.until,
        limits,
        args.max_rows,
    )
    print(report.table())
    if args.plot:
        from augur.pipelines.skew_plot import plot

        print(f"plot: {plot(report, args.plot)}")
    return 1 if report.exceeded() else 0


def _skew_allows(repo: ModelRepository, cfg: Config, args) -> bool:
    """The promote gate: a model that logs served features or sets `skew` thresholds is
    promoted only when the candidate's skew report is within them."""
    from augur.modelrepo.monitoring import log_spec
    from augur.pipelines.skew import SkewError, skew_report

    if getattr(args, "server", None) and args.model not in repo.names():
        # the server's repository is not here: nothing local to judge the candidate by
        print(f"skew check skipped: {args.model} is not in {repo.root} (--config)", file=sys.stderr)
        return True
    spec = repo.spec(args.model)
    if spec.skew is None and log_spec(spec.logging, repo.resolve(args.model).metadata) is None:
        return True  # nothing to check the candidate against
    version = repo.resolve(args.model, args.version).version
    try:
        report = skew_report(
            cfg.feature_repo, cfg.model_repo, cfg.redis.address, args.model, version
        )
    except ValueError as e:  # SkewError, and a feature repo that cannot be read
        kind = "" if isinstance(e, SkewError) else f"{type(e).__name__}: "
        print(
            f"augur models promote: cannot check {args.model}@{version} for skew: {kind}{e}; "
            "--force promotes without the check"
        )
        return False
    bad = report.exceeded()
    if not bad:
        print(f"skew check of {args.model}@{version}: {report.rows:,} rows within thresholds")
        return True
    print(report.table())
    print(
        f"augur models promote: refusing to promote {args.model}@{version}: its skew report "
        f"exceeds {len(bad)} threshold(s) (model.yaml `skew`); fix the features, or --force"
    )
    return False


def _list(repo: ModelRepository) -> int:
    names = repo.names()
    if not names:
        print(f"no models in {repo.root}; `augur train` publishes them")
        return 0
    print(f"{'model':16} {'version':8} {'kind':9} {'role':14} {'holdout AUC':>11}  created")
    for name in names:
        spec = repo.spec(name)
        stable = repo.default_version(spec) if repo.versions(name) else ""
        for version in repo.versions(name):
            meta = repo.resolve(name, version).metadata
            auc = meta.get("metrics", {}).get("auc_holdout", float("nan"))
            print(
                f"{name:16} {version:8} {meta.get('kind', ''):9} "
                f"{_role(spec, stable, version):14} {auc:>11.4f}  {meta.get('created_at', '')}"
            )
    return 0


def _role(spec: ModelSpec, stable: str, version: str) -> str:
    roles = []
    if version == stable:
        roles.append("stable")
    if spec.canary and spec.canary.version == version:
        roles.append(f"canary {spec.canary.weight:.0%}")
    if spec.shadow and spec.shadow.version == version:
        roles.append("shadow")
    return ",".join(roles) or "-"


def _publish(repo: ModelRepository, args) -> int:
    kind = args.kind or next(
        (
            k
            for k, names in ARTIFACTS.items()
            for f in names
            if Path(f).suffix == args.artifact.suffix
        ),
        None,
    )
    if kind is None and args.model in repo.names():
        kind = repo.spec(args.model).kind  # a plugin's file: the model's kind says
    if kind is None:
        print(
            f"augur models publish: {args.artifact}: expected a .txt (LightGBM), .pt2 (torch), "
            f".ubj or .json (XGBoost), .cbm (CatBoost) or .onnx (ONNX) file, or --kind"
        )
        return 1
    metadata = json.loads(args.metadata.read_text())
    if not metadata.get("features"):
        print('augur models publish: metadata needs "features", the inputs in order')
        return 1
    if args.model in repo.names():
        existing = repo.spec(args.model)
        if existing.kind != kind:
            print(
                f"augur models publish: {args.model} is a {existing.kind} model; "
                f"{args.artifact.name} is {kind}"
            )
            return 1
        spec = existing
    elif not args.feature_service:
        print("augur models publish: a new model needs --feature-service")
        return 1
    else:
        spec = ModelSpec(
            args.model,
            kind,
            args.feature_service,
            tuple(args.request_features),
            tuple(args.outputs or ("score",)),
        )
    version = repo.publish(spec, args.artifact, metadata)
    print(
        f"published {args.model}@{version.version} ({kind}, sha256 "
        f"{version.metadata['sha256'][:12]}...); route traffic to it with `augur models "
        f"canary {args.model} {version.version} --weight 0.1` or `promote`"
    )
    return 0


def _compile(repo: ModelRepository, cfg: Config, args) -> int:
    from augur.serving.runtimes import COMPILE_CACHE
    from augur.serving.runtimes.compiled_runtime import CompiledTreeRuntime

    version = repo.resolve(args.model, args.version)
    if version.spec.kind != "lightgbm":
        print(f"augur models compile: {args.model} is {version.spec.kind}; only LightGBM compiles")
        return 1
    version.verify()
    cache = Path(cfg.server.compile_cache or repo.root / COMPILE_CACHE)
    began = time.perf_counter()
    try:
        runtime = CompiledTreeRuntime(version.artifact, version.metadata["sha256"], cache)
    except RuntimeError as e:  # lleaves is not installed
        print(f"augur models compile: {e}")
        return 1
    done = "already compiled" if runtime.cache_hit else "compiled"
    took = time.perf_counter() - began
    print(f"{args.model}@{version.version}: {done} in {took:.1f} s, in {cache}")
    return 0


def _local(repo: ModelRepository, args) -> int:
    verb = args.verb
    if verb == "status":
        return _print_local_status(repo, args.model)
    if verb == "promote":
        repo.promote(args.model, args.version)
    elif verb == "canary":
        repo.set_canary(args.model, args.version, args.weight)
    elif verb == "shadow":
        repo.set_shadow(args.model, "" if args.off else args.version)
    elif verb == "rollback":
        repo.rollback(args.model, args.reason)
    print(
        f"written to {repo.root / args.model / 'model.yaml'}; servers watching the repository "
        f"apply it at their next poll (use --server to apply it now)"
    )
    return _print_local_status(repo, args.model)


def _print_local_status(repo: ModelRepository, only: str) -> int:
    print(f"{'model':16} {'stable':7} {'canary':14} {'shadow':7} {'published':16} last rollback")
    for name in repo.names():
        if only and name != only:
            continue
        spec = repo.spec(name)
        stable = repo.default_version(spec) if repo.versions(name) else "-"
        canary = f"{spec.canary.version} ({spec.canary.weight:.0%})" if spec.canary else "-"
        shadow = spec.shadow.version if spec.shadow else "-"
        rollback = _rollback_text(spec.last_rollback)
        print(
            f"{name:16} {stable:7} {canary:14} {shadow:7} "
            f"{','.join(repo.versions(name)):16} {rollback}"
        )
    return 0


def _rollback_text(r: dict | None) -> str:
    return f"{r.get('version')}: {r.get('reason')} ({r.get('at')})" if r else "-"


def _remote(args) -> int:
    import grpc

    from augur.client.client import AdminClient

    with AdminClient(
        args.server,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token=args.token,
    ) as admin:
        try:
            verb = args.verb
            if verb == "status":
                states = admin.status(args.model)
            elif verb == "promote":
                states = admin.promote(args.model, args.version)
            elif verb == "canary":
                states = admin.canary(args.model, args.version, args.weight)
            elif verb == "shadow":
                states = admin.shadow(args.model, "" if args.off else args.version)
            else:
                states = admin.rollback(args.model, args.reason)
        except grpc.RpcError as e:
            print(f"augur models {args.verb}: {e.code().name}: {e.details()}")
            return 1
    print(f"{'model':16} {'stable':7} {'canary':14} {'shadow':7} {'loaded':12} last rollback")
    for s in states:
        canary = f"{s.canary.version} ({s.canary.weight:.0%})" if s.canary.version else "-"
        print(
            f"{s.name:16} {s.stable or '-':7} {canary:14} {s.shadow.version or '-':7} "
            f"{','.join(s.loaded):12} {s.last_rollback or '-'}"
        )
        if s.canary.version:
            p99 = "-" if math.isnan(s.canary.p99_ms) else f"{s.canary.p99_ms:.1f} ms"
            drift = "-" if math.isnan(s.canary.psi) else f"{s.canary.psi:.3f}"
            print(
                f"{'':16} canary window: {s.canary.calls} calls, errors "
                f"{s.canary.error_rate:.1%}, p99 {p99}, PSI {drift}, "
                f"sticky on {s.canary.sticky_key}"
            )
        if s.error:
            print(f"{'':16} not serving as asked: {s.error}")
    return 0
