"""What watching a model in production reads and writes beside the repository: where its
served-feature log lives and how its columns are named, and the training distribution
(per-feature bins, stored in metadata.json) that serving inputs are compared with by PSI.

Not the log writer (augur/serving/feature_log.py) nor the skew report
(augur/pipelines/skew.py): the one place both agree on names, bins and PSI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from augur.modelrepo.spec import LoggingSpec

BINS = 10  # quantile bins per feature, plus one for missing (NaN) values
_FLOOR = 1e-4  # a share of 0 would make PSI infinite: an empty bin counts as this

# Columns of a served-feature log beyond Feast's (join keys, <view>__<feature>[__timestamp,
# __status], request fields, __log_timestamp, __log_date, __request_id): who answered, and
# with what. Feast's own log reader ignores columns it does not know.
MODEL_COLUMN = "__model"
VERSION_COLUMN = "__model_version"
SCORE_PREFIX = "__score__"
LOG_TIMESTAMP = "__log_timestamp"
LOG_DATE = "__log_date"
REQUEST_ID = "__request_id"
# Feast's FieldStatus values (feast/protos/feast/serving/ServingService.proto)
PRESENT, NULL_VALUE, NOT_FOUND, OUTSIDE_MAX_AGE = 1, 2, 3, 4


def score_column(output: str) -> str:
    return f"{SCORE_PREFIX}{output}"


def status_column(feature: str) -> str:
    return f"{feature}__status"


def timestamp_column(feature: str) -> str:
    return f"{feature}__timestamp"


def log_spec(spec_logging: LoggingSpec | None, metadata: dict) -> LoggingSpec | None:
    """Where and how much a model logs: model.yaml's `logging` where it has one, else the
    feature service's Feast `logging_config` as recorded at training (metadata.json)."""
    if spec_logging is not None:
        return spec_logging if spec_logging.sample_rate > 0 else None
    feast = metadata.get("feature_logging")
    if not feast or not feast.get("path") or float(feast.get("sample_rate", 0)) <= 0:
        return None
    return LoggingSpec(float(feast["sample_rate"]), str(Path(feast["path"])))


def training_distribution(x: np.ndarray, features: Sequence[str]) -> dict[str, dict]:
    """Per feature: the inner edges of its quantile bins, the share of training rows in each
    bin, and the share missing (NaN); what metadata.json keeps as `training_distribution`."""
    out = {}
    for j, name in enumerate(features):
        column = np.asarray(x[:, j], np.float64)
        present = column[~np.isnan(column)]
        edges = _edges(present)
        counts = _counts(edges, column)
        out[name] = {
            "edges": [float(e) for e in edges],
            "shares": [round(float(c), 6) for c in counts / max(len(column), 1)],
        }
    return out


def psi(reference: dict, values: np.ndarray) -> float:
    """Population stability index of `values` against one feature's training bins; NaN when
    there are no values."""
    values = np.asarray(values, np.float64)
    if not len(values):
        return float("nan")
    edges = np.asarray(reference["edges"], np.float64)
    expected = np.clip(np.asarray(reference["shares"], np.float64), _FLOOR, None)
    actual = np.clip(_counts(edges, values) / len(values), _FLOOR, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _edges(present: np.ndarray) -> np.ndarray:
    """Inner edges of up to BINS quantile bins (fewer where values repeat)."""
    if not len(present):
        return np.array([], np.float64)
    quantiles = np.quantile(present, np.linspace(0, 1, BINS + 1)[1:-1])
    edges = np.unique(quantiles)
    if len(edges) == 1 and edges[0] == present.min() == present.max():
        # a constant: one bin for it, one below and one above (any other value is a shift)
        edges = np.array([edges[0], np.nextafter(edges[0], np.inf)])
    return edges


def _counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Rows per bin (bin i: edges[i-1] <= v < edges[i]), then the missing count last."""
    missing = np.isnan(values)
    bins = np.searchsorted(edges, values[~missing], side="right")
    counts = np.bincount(bins, minlength=len(edges) + 1).astype(np.float64)
    return np.append(counts, float(missing.sum()))
