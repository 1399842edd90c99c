"""`augur experiments ...`: start, watch, stop and evaluate a model's A/B experiment.

An experiment splits the calls that name no version between two or more versions at fixed
shares, sticky per entity (hash of the sticky key), for as long as it runs: model.yaml's
`experiment`, which servers watching the repository apply at their next poll. `report`
joins outcomes to arms offline, by the same hash the server routes with.
"""

from __future__ import annotations

import math
import urllib.request
from pathlib import Path

import numpy as np

from augur.config import Config
from augur.modelrepo.experiment_spec import ExperimentSpec, parse_experiment
from augur.modelrepo.repository import ModelRepository, RepositoryError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "experiments",
        help="A/B experiments: split traffic between model versions, compare outcomes",
        description=__doc__.split("\n\n")[0],
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, help_text: str):
        v = verbs.add_parser(name, help=help_text, description=help_text)
        v.add_argument("--config", type=Path, help="Augur config file (for the model repository)")
        return v

    v = verb("start", "split a model's traffic between versions at fixed shares")
    v.add_argument("model")
    v.add_argument("name", help="the experiment's name (letters, digits, _ . -)")
    v.add_argument(
        "--arm",
        action="append",
        required=True,
        metavar="VERSION=SHARE",
        help="an arm and its share of entities; give each arm (2 to 8); shares add up to 1",
    )
    v.add_argument(
        "--sticky-key",
        default="",
        help="entity column to split on (default: the "
        "first join key of the model's first feature view)",
    )
    v = verb("status", "running experiments; per-arm traffic from a server's /metrics")
    v.add_argument("model", nargs="?", default="")
    v.add_argument(
        "--metrics",
        metavar="URL",
        help="a server's metrics, e.g. "
        "http://127.0.0.1:9464/metrics: rows, model latency and mean score per arm",
    )
    v = verb("stop", "end a model's experiment; calls go to stable again")
    v.add_argument("model")
    v = verb("report", "per-arm outcome (and AUC) with 95%% confidence intervals")
    v.add_argument("model")
    v.add_argument(
        "--outcomes",
        type=Path,
        required=True,
        nargs="+",
        help="parquet file(s): the sticky key column, the outcome, and optionally "
        "the score each entity was served",
    )
    v.add_argument("--outcome-column", default="label")
    v.add_argument("--score-column", default="score", help="for AUC (binary outcomes only)")
    v.add_argument(
        "--sticky-key",
        default="",
        help="the outcomes' column the experiment "
        "split on, when it was started without --sticky-key",
    )
    p.set_defaults(handler=run)


def run(args, cfg: Config) -> int:
    repo = ModelRepository(cfg.model_repo)
    try:
        if args.verb == "start":
            arms = _arms(args.arm)
            spec = repo.start_experiment(args.model, args.name, arms, args.sticky_key)
            print(
                f"written to {repo.root / args.model / 'model.yaml'}; servers watching the "
                "repository apply it at their next poll"
            )
            return _status(repo, spec.name, None)
        if args.verb == "stop":
            repo.stop_experiment(args.model)
            print(f"stopped; calls to {args.model} that name no version go to stable again")
            return 0
        if args.verb == "status":
            return _status(repo, args.model, args.metrics)
        return _report(repo, args)
    except (RepositoryError, ValueError, OSError) as e:
        print(f"augur experiments {args.verb}: {e}")
        return 1


def _arms(pairs: list[str]) -> dict[str, float]:
    arms = {}
    for pair in pairs:
        version, sep, share = pair.partition("=")
        try:
            arms[version] = float(share)
        except ValueError:
            raise ValueError(f"--arm {pair!r}: expected VERSION=SHARE, e.g. v2=0.5") from None
        if not sep or not version:
            raise ValueError(f"--arm {pair!r}: expected VERSION=SHARE, e.g. v2=0.5")
    return arms


def _status(repo: ModelRepository, only: str, metrics_url: str | None) -> int:
    seen = _arm_metrics(metrics_url) if metrics_url else {}
    print(
        f"{'model':16} {'experiment':16} {'arm':8} {'share':>6} {'rows':>10} "
        f"{'model ms':>9} {'mean score':>10}"
    )
    for name in repo.names():
        if only and name != only:
            continue
        spec = repo.spec(name)
        if spec.experiment is None:
            continue
        for version, share in spec.experiment.arms.items():
            rows, ms, score = seen.get(
                (name, spec.experiment.name, version), (0, math.nan, math.nan)
            )
            print(
                f"{name:16} {spec.experiment.name:16} {version:8} {share:>6.0%} "
                f"{rows if metrics_url else '-':>10} {_num(ms, 3):>9} {_num(score, 4):>10}"
            )
    return 0


def _num(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _arm_metrics(url: str) -> dict[tuple[str, str, str], tuple[int, float, float]]:
    """(model, experiment, arm) -> (rows, mean model-call ms, mean observed score)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as answer:  # an operator-given URL
        text = answer.read().decode()
    sums: dict[tuple, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if "experiment" not in labels:
                continue
            key = (labels["model"], labels["experiment"], labels["arm"])
            sums.setdefault(key, {})[sample.name] = sample.value
    out = {}
    for key, got in sums.items():
        calls = got.get("augur_experiment_model_latency_seconds_count", 0)
        scores = got.get("augur_experiment_score_count", 0)
        out[key] = (
            int(got.get("augur_experiment_rows_total", 0)),
            got.get("augur_experiment_model_latency_seconds_sum", 0) / calls * 1e3
            if calls
            else math.nan,
            got.get("augur_experiment_score_sum", 0) / scores if scores else math.nan,
        )
    return out


def _report(repo: ModelRepository, args) -> int:
    import pandas as pd

    spec = repo.spec(args.model)
    experiment = spec.experiment or _last(repo, args.model)
    frame = pd.concat([pd.read_parquet(p) for p in args.outcomes], ignore_index=True)
    sticky = experiment.sticky_key or args.sticky_key
    if not sticky:
        raise ValueError(
            f"experiment {experiment.name} records no sticky_key (it splits on the first join "
            "key of the model's first feature view): name that column with --sticky-key"
        )
    for column in (sticky, args.outcome_column):
        if column not in frame:
            raise ValueError(f"the outcomes have no column {column!r}; have {list(frame.columns)}")
    arm = experiment.arm_of(args.model, frame[sticky].tolist())
    outcome = frame[args.outcome_column].to_numpy(float)
    binary = set(np.unique(outcome)) <= {0.0, 1.0}
    score = frame[args.score_column].to_numpy(float) if args.score_column in frame else None
    print(
        f"experiment {experiment.name} of {args.model}: {len(frame):,} outcomes, "
        f"joined to arms by {sticky}"
    )
    print(f"{'arm':8} {'share':>6} {'n':>8} {'mean outcome (95% CI)':>28} {'AUC (95% CI)':>26}")
    for index, (version, share) in enumerate(experiment.arms.items()):
        mask = arm == index
        y = outcome[mask]
        mean, half = _mean_ci(y)
        auc = "-"
        if binary and score is not None:
            a, h = _auc_ci(y, score[mask])
            auc = "-" if math.isnan(a) else f"{a:.4f} [{a - h:.4f}, {a + h:.4f}]"
        interval = "-" if math.isnan(mean) else f"{mean:.4f} [{mean - half:.4f}, {mean + half:.4f}]"
        print(f"{version:8} {share:>6.0%} {int(mask.sum()):>8,} {interval:>28} {auc:>26}")
    return 0


def _last(repo: ModelRepository, model: str) -> ExperimentSpec:
    raw = repo._raw(model).get("last_experiment")
    experiment = parse_experiment(raw, f"{model}/model.yaml last_experiment")
    if experiment is None:
        raise RepositoryError(f"model {model} runs no experiment and has run none")
    return experiment


def _mean_ci(y: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal interval."""
    if len(y) == 0:
        return math.nan, math.nan
    sd = float(np.std(y, ddof=1)) if len(y) > 1 else 0.0
    return float(np.mean(y)), 1.96 * sd / math.sqrt(len(y))


def _auc_ci(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """ROC AUC (rank statistic, ties halved) and the half-width of its 95% interval by
    Hanley and McNeil's standard error."""
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        return math.nan, math.nan
    import pandas as pd

    ranks = pd.Series(score).rank().to_numpy()  # ties share their mean rank
    auc = (ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg)
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (pos - 1) * (q1 - auc**2) + (neg - 1) * (q2 - auc**2)) / (pos * neg)
    return float(auc), 1.96 * math.sqrt(max(var, 0.0))
