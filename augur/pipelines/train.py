"""`augur train`: train the models a feature repo declares, evaluate, publish new versions.

The feature repo's `models.yaml` names, per model, its kind, feature service, request
features and parameters, plus where the labels are. Each model is trained on a
point-in-time-correct training set, evaluated on a time-based holdout (the last days),
and published to the model repository with its metadata.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from augur.features.plan_cache import refresh_cache
from augur.features.repo import build_plan, open_store
from augur.modelrepo.monitoring import training_distribution
from augur.modelrepo.repository import ModelRepository, ModelVersion
from augur.modelrepo.spec import ModelSpec, parse_identity
from augur.pipelines.training_set import TrainingSet, auc, build_training_set

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelTraining:
    """A models.yaml entry: the model (the schema model.yaml uses) and how to train it."""

    spec: ModelSpec
    params: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class TrainingPlan:
    labels_path: Path
    label_column: str
    timestamp_column: str
    holdout_days: float
    models: tuple[ModelTraining, ...]


@dataclass(frozen=True)
class TrainResult:
    version: ModelVersion
    auc_train: float
    auc_holdout: float
    rows_train: int
    rows_holdout: int


def load_training_plan(repo_path: Path) -> TrainingPlan:
    path = Path(repo_path) / "models.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a feature repo declares its models there")
    raw = yaml.safe_load(path.read_text()) or {}
    labels = raw.get("labels") or {}
    models = tuple(_entry(str(name), m, path) for name, m in (raw.get("models") or {}).items())
    return TrainingPlan(
        Path(repo_path) / labels["path"],
        labels["label"],
        labels.get("timestamp", "event_timestamp"),
        float(raw.get("holdout_days", 5)),
        models,
    )


def _entry(name: str, raw: object, path: Path) -> ModelTraining:
    """One models.yaml entry: model.yaml's identity keys, plus the training `params`."""
    entry = dict(raw) if isinstance(raw, dict) else raw
    params = entry.pop("params", None) if isinstance(entry, dict) else None
    return ModelTraining(parse_identity(name, entry, path), dict(params or {}))


def train(
    repo_path: Path,
    model_repo: Path,
    redis_address: str,
    only: list[str] | None = None,
    progress: bool = True,
) -> list[TrainResult]:
    plan = load_training_plan(repo_path)
    store = open_store(repo_path, redis_address)
    labels = pd.read_parquet(plan.labels_path)
    repository = ModelRepository(model_repo)
    chosen = [m for m in plan.models if not only or m.name in only]
    unknown = set(only or ()) - {m.name for m in plan.models}
    if unknown:
        raise ValueError(
            f"no model named {', '.join(sorted(unknown))} in models.yaml; "
            f"declared: {', '.join(m.name for m in plan.models)}"
        )
    refresh_cache(store)  # servers starting after training read plans without Feast
    sets: dict[tuple, TrainingSet] = {}
    results = []
    for model in chosen:
        key = (model.spec.feature_service, model.spec.request_features)
        if key not in sets:
            read_plan = build_plan(store, model.spec.feature_service)
            sets[key] = build_training_set(
                store,
                read_plan,
                labels,
                plan.label_column,
                model.spec.request_features,
                plan.timestamp_column,
            )
        logging = feast_logging(store, Path(repo_path), model.spec.feature_service)
        results.append(
            _train_one(model, sets[key], plan.holdout_days, repository, progress, logging)
        )
    return results


def feast_logging(store, repo_path: Path, service: str) -> dict | None:
    """The feature service's Feast `logging_config` where it logs to files (the server logs
    there when model.yaml asks for no `logging` of its own), as metadata.json keeps it."""
    config = store.get_feature_service(service).logging_config
    path = getattr(getattr(config, "destination", None), "path", None)
    if config is None or not path or "://" in path:
        return None
    folder = Path(path) if Path(path).is_absolute() else repo_path.resolve() / path
    return {"sample_rate": float(config.sample_rate), "path": str(folder)}


def _train_one(
    model: ModelTraining,
    data: TrainingSet,
    holdout_days: float,
    repository: ModelRepository,
    progress: bool,
    feature_logging: dict | None = None,
) -> TrainResult:
    cutoff = data.timestamps.max() - np.timedelta64(int(holdout_days * 86400), "s")
    fit = data.timestamps < cutoff
    x_fit, y_fit, x_hold, y_hold = data.x[fit], data.y[fit], data.x[~fit], data.y[~fit]
    with tempfile.TemporaryDirectory() as tmp:
        fit_kind = TRAINERS.get(model.spec.kind)
        if fit_kind is None:
            raise ValueError(
                f"model {model.name}: augur train trains {', '.join(TRAINERS)}; a "
                f"{model.spec.kind} model is trained elsewhere and published with "
                f"`augur models publish`"
            )
        artifact, predict = fit_kind(model, data.features, x_fit, y_fit, Path(tmp), progress)
        auc_fit, auc_hold = auc(y_fit, predict(x_fit)), auc(y_hold, predict(x_hold))
        metadata = {
            "features": list(data.features),
            "feature_dtypes": data.dtypes,
            "request_features": list(model.spec.request_features),
            "outputs": list(model.spec.outputs),
            "training_window": {"start": _iso(data.timestamps.min()), "end": _iso(cutoff)},
            "holdout_window": {"start": _iso(cutoff), "end": _iso(data.timestamps.max())},
            "metrics": {
                "auc_train": round(auc_fit, 5),
                "auc_holdout": round(auc_hold, 5),
                "rows_train": int(fit.sum()),
                "rows_holdout": int((~fit).sum()),
                "positive_rate": round(float(data.y.mean()), 5),
            },
            "params": model.params,
            # what serving inputs are compared with (drift guardrail, `augur skew`)
            "training_distribution": training_distribution(x_fit, data.features),
            "feature_logging": feature_logging,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        version = repository.publish(model.spec, artifact, metadata)
    log.info("published %s@%s: holdout AUC %.4f", model.name, version.version, auc_hold)
    return TrainResult(version, auc_fit, auc_hold, int(fit.sum()), int((~fit).sum()))


# LightGBM's parameters for every model unless models.yaml overrides them.
LIGHTGBM_PARAMS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "seed": 7,
    "deterministic": True,
    "verbose": -1,
}


def _fit_lightgbm(model: ModelTraining, features, x, y, tmp: Path, progress: bool = False):
    import lightgbm as lgb

    params = {**LIGHTGBM_PARAMS, **model.params}
    rounds = int(params.pop("num_boost_round", 200))
    booster = lgb.train(
        params,
        lgb.Dataset(x, y, feature_name=[_safe(f) for f in features], free_raw_data=False),
        num_boost_round=rounds,
    )
    path = tmp / "model.txt"
    booster.save_model(str(path))
    return path, lambda m: booster.predict(m)


def _fit_torch(model: ModelTraining, features, x, y, tmp: Path, progress: bool):
    import torch

    from augur.pipelines.mlp import export_mlp, fit_mlp

    params = dict(model.params)
    net = fit_mlp(x, y, hidden=tuple(params.pop("hidden", (64, 64))), progress=progress, **params)
    path = export_mlp(net, x[:2], tmp / "model.pt2")
    program = torch.export.load(str(path)).module()  # scores as served, from the saved file

    def predict(m: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return program(torch.from_numpy(m)).numpy().ravel()

    return path, predict


# XGBoost's parameters for every model unless models.yaml overrides them: the same depth
# and learning rate as LightGBM's, missing values learnt per split as LightGBM does.
XGBOOST_PARAMS = {
    "objective": "binary:logistic",
    "eta": 0.05,
    "max_depth": 6,
    "min_child_weight": 5,
    "subsample": 0.8,
    "colsample_bytree": 0.9,
    "tree_method": "hist",
    "seed": 7,
    "nthread": 2,
}


def _fit_xgboost(model: ModelTraining, features, x, y, tmp: Path, progress: bool = False):
    import xgboost as xgb

    params = {**XGBOOST_PARAMS, **model.params}
    rounds = int(params.pop("num_boost_round", 200))
    names = [_safe(f) for f in features]
    booster = xgb.train(params, xgb.DMatrix(x, y, feature_names=names), num_boost_round=rounds)
    path = tmp / "model.ubj"  # XGBoost's own binary JSON: no pickle
    booster.save_model(str(path))
    return path, lambda m: booster.inplace_predict(m, missing=np.nan)


# CatBoost's parameters for every model unless models.yaml overrides them.
CATBOOST_PARAMS = {
    "loss_function": "Logloss",
    "iterations": 200,
    "depth": 6,
    "learning_rate": 0.1,
    "random_seed": 7,
    "thread_count": 2,
    "verbose": 0,
    "allow_writing_files": False,  # no catboost_info/ beside the caller
}


def _fit_catboost(model: ModelTraining, features, x, y, tmp: Path, progress: bool = False):
    from catboost import CatBoostClassifier

    classifier = CatBoostClassifier(**{**CATBOOST_PARAMS, **model.params})
    classifier.fit(x, y, verbose=False)
    path = tmp / "model.cbm"
    classifier.save_model(str(path), format="cbm")
    return path, lambda m: classifier.predict_proba(m)[:, 1]


TRAINERS = {
    "lightgbm": _fit_lightgbm,
    "torch": _fit_torch,
    "xgboost": _fit_xgboost,
    "catboost": _fit_catboost,
}


def _safe(name: str) -> str:
    return name.replace(" ", "_")


def _iso(ts: np.datetime64) -> str:
    return pd.Timestamp(ts).isoformat()
