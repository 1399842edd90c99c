"""model.yaml's `experiment`: an A/B split of a model's traffic between versions at fixed
shares, and the one rule (`ExperimentSpec.arm_of`) that assigns an entity to an arm, which the
server routes by and `augur experiments report` joins outcomes by."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mmh3
import numpy as np

from augur.modelrepo.errors import RepositoryError


@dataclass(frozen=True)
class ExperimentSpec:
    """A named A/B experiment: entities (by sticky key hash) split between versions at fixed
    shares for as long as it runs. A model runs a canary or an experiment, not both."""

    name: str
    arms: dict[str, float]  # version id -> share of entities; the shares add up to 1
    sticky_key: str = ""  # entity column to hash; default: the first view's first join key

    @property
    def cuts(self) -> tuple[int, ...]:
        """Each arm's upper hash bucket bound, in `arms` order; the last covers every bucket."""
        cuts, total = [], 0.0
        for share in self.arms.values():
            total += share
            cuts.append(round(total * EXPERIMENT_BUCKETS))
        cuts[-1] = EXPERIMENT_BUCKETS  # shares adding up to 1 within float error
        return tuple(cuts)

    def arm_of(self, model: str, keys: Sequence) -> np.ndarray:
        """Each sticky key's arm index: its hash bucket, salted with the model and experiment
        names so that two experiments split independently. The server routes by it and
        `augur experiments report` joins outcomes by it, so the two always agree."""
        salt = f"{model}:{self.name}:"
        buckets = np.fromiter(
            (mmh3.hash(salt + str(k), signed=False) % EXPERIMENT_BUCKETS for k in keys),
            np.int64,
            len(keys),
        )
        return np.searchsorted(np.asarray(self.cuts), buckets, side="right")


EXPERIMENT_BUCKETS = 10_000
EXPERIMENT_ARMS = 8  # at most: each arm is a label value of the experiment's metrics
_EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse_experiment(raw: object, path: Path | str) -> ExperimentSpec | None:
    """model.yaml's `experiment: {name, arms: {version: share, ...}, sticky_key}`."""
    if not raw:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("arms"), dict):
        raise RepositoryError(f"{path}: experiment needs a name and arms: {{version: share}}")
    name = str(raw.get("name", ""))
    if not _EXPERIMENT_NAME.match(name):
        raise RepositoryError(
            f"{path}: experiment.name must be 1-64 letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit; got {name[:64]!r}"
        )
    arms = {}
    for version, share in raw["arms"].items():
        try:
            arms[str(version)] = float(share)
        except (TypeError, ValueError):
            raise RepositoryError(
                f"{path}: experiment.arms.{version}: a share is a number, got {share!r}"
            ) from None
    if not 2 <= len(arms) <= EXPERIMENT_ARMS:
        raise RepositoryError(
            f"{path}: experiment {name} needs 2 to {EXPERIMENT_ARMS} arms, got {len(arms)}"
        )
    if any(not 0.0 < w <= 1.0 for w in arms.values()) or abs(sum(arms.values()) - 1.0) > 1e-6:
        raise RepositoryError(
            f"{path}: experiment {name}: each arm's share is within (0, 1] and the shares "
            f"add up to 1; got {arms}"
        )
    return ExperimentSpec(name, arms, str(raw.get("sticky_key") or ""))
