"""Point-in-time-correct training sets from Feast, in the exact layout the server assembles.

Feature values come from `get_historical_features` (each label row sees only feature rows
at or before its timestamp, within the view's TTL). Missing values get the same declared
defaults the online reader serves, and the matrix is float32 as served, so a model sees
the same numbers in training and in serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from augur.features.plan import ReadPlan


@dataclass(frozen=True)
class TrainingSet:
    features: tuple[str, ...]  # model input order: store features, then request features
    x: np.ndarray  # float32 (rows, features)
    y: np.ndarray  # float32 (rows,)
    timestamps: np.ndarray  # datetime64[ns] (rows,)
    dtypes: dict[str, str]  # Feast dtype of each store feature, as trained


def build_training_set(
    store,
    plan: ReadPlan,
    labels: pd.DataFrame,
    label_column: str,
    request_features: Sequence[str] = (),
    timestamp_column: str = "event_timestamp",
) -> TrainingSet:
    join_keys = sorted(plan.entity_types)
    columns = [*join_keys, timestamp_column, label_column, *request_features]
    missing = [c for c in columns if c not in labels.columns]
    if missing:
        raise ValueError(
            f"label data lacks column(s) {', '.join(missing)} needed by feature "
            f"service {plan.service!r}"
        )
    entity_df = labels[columns].rename(columns={timestamp_column: "event_timestamp"})
    entity_df = entity_df.reset_index(drop=True).assign(_row=np.arange(len(entity_df)))
    joined = store.get_historical_features(
        entity_df=entity_df,
        features=store.get_feature_service(plan.service),
        full_feature_names=True,
    ).to_df()
    joined = joined.sort_values("_row").reset_index(drop=True)
    if len(joined) != len(entity_df):
        raise RuntimeError(
            f"the offline store returned {len(joined)} rows for "
            f"{len(entity_df)} label rows; use an offline store that keeps "
            f"every entity row (the example repo uses duckdb)"
        )
    store_part = np.column_stack(
        [
            pd.to_numeric(joined[c.full_name], errors="coerce")
            .astype(np.float64)
            .fillna(c.default)
            .to_numpy(np.float32)
            for c in plan.columns
        ]
    )
    request_part = joined[list(request_features)].to_numpy(np.float32)
    x = np.hstack([store_part, request_part]).astype(np.float32)
    return TrainingSet(
        (*plan.feature_names, *request_features),
        x,
        joined[label_column].to_numpy(np.float32),
        pd.to_datetime(joined["event_timestamp"], utc=True).to_numpy(),
        {c.full_name: c.dtype for c in plan.columns},
    )


def auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney), ties counted half."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mean_ranks = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean_ranks, counts)
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
