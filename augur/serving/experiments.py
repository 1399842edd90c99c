"""A/B experiments on the request path: which arm (model version) scores each row, sticky per
entity, and each arm's metrics (rows, model-call latency, score distribution).

Unlike a canary, an experiment has no guardrails and no fallback: an arm that fails fails its
rows' call, and is counted, because an experiment compares arms as they are. Built by the
model manager from model.yaml's `experiment` (augur/modelrepo/spec.py); immutable, like the
Route that holds it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from augur.features.reader import FeatureRows
from augur.modelrepo.experiment_spec import ExperimentSpec
from augur.serving import metrics
from augur.serving.models import ModelLoadError, ServingModel

# Score distribution: the first rows of each arm's share of a call (a histogram observe per
# row would cost a 100-row call more than its model)
SCORES_OBSERVED = 8


@dataclass(frozen=True)
class Arm:
    model: ServingModel
    rows: object  # bound metric children: rows scored, model-call latency, scores
    latency: object
    scores: object


@dataclass(frozen=True)
class Experiment:
    spec: ExperimentSpec  # its sticky_key resolved
    model_name: str
    arms: tuple[Arm, ...]  # in spec.arms' order

    @classmethod
    def of(cls, model_name: str, spec: ExperimentSpec, loaded: Mapping) -> Experiment:
        """`loaded`: each arm's version -> ServingModel."""
        arms = []
        for version in spec.arms:
            labels = (model_name, spec.name, version)
            arms.append(
                Arm(
                    loaded[version],
                    metrics.EXPERIMENT_ROWS.labels(*labels),
                    metrics.EXPERIMENT_LATENCY.labels(*labels),
                    metrics.EXPERIMENT_SCORE.labels(*labels),
                )
            )
        return cls(spec, model_name, tuple(arms))

    @classmethod
    def build(cls, name: str, spec, stable: ServingModel, versions: dict, load) -> Experiment:
        """model.yaml's experiment of model `name` (`spec`: its ModelSpec) with every arm
        loaded by `load(name, version)` into `versions`: all arms or none, since an
        experiment missing an arm would compare something else. Raises what `load` raises."""
        experiment = spec.experiment
        sticky = experiment.sticky_key or stable.plan.views[0].join_keys[0]
        if sticky not in stable.plan.entity_types:
            raise ModelLoadError(
                f"sticky_key {sticky!r} is not an entity of {spec.feature_service}"
            )
        loaded = {version: load(name, version) for version in experiment.arms}
        versions.update(loaded)
        return cls.of(name, dataclasses.replace(experiment, sticky_key=sticky), loaded)

    @staticmethod
    def same(a: Experiment | None, b: Experiment | None) -> bool:
        """Whether two routes' experiments split alike, to the same loaded versions."""
        if a is None or b is None:
            return a is b
        return a.spec == b.spec and all(
            x.model is y.model for x, y in zip(a.arms, b.arms, strict=True)
        )

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(a.model.version.version for a in self.arms)

    def assign(self, entities: Mapping[str, list]) -> np.ndarray:
        """Each row's arm index (ExperimentSpec.arm_of of its sticky key)."""
        return self.spec.arm_of(self.model_name, entities[self.spec.sticky_key])

    def score(
        self,
        stable: ServingModel,
        rows: FeatureRows,
        extra: Mapping[str, np.ndarray],
        stable_batch: np.ndarray,
        entities: Mapping[str, list],
        deadline: float | None = None,
    ) -> tuple[np.ndarray, list[str]]:
        """Scores of every row by its arm, and the version that answered each; `deadline`
        (monotonic) bounds a remote arm's attempts."""
        arm_of = self.assign(entities)
        outputs = len(stable.version.spec.outputs)
        scores = np.empty((len(arm_of), outputs), np.float32)
        versions = np.empty(len(arm_of), dtype=object)
        for index, arm in enumerate(self.arms):
            mask = arm_of == index
            if not mask.any():
                continue
            model = arm.model
            if model is stable:
                batch = stable_batch[mask]
            else:
                batch = model.assemble(rows.take(mask), {k: v[mask] for k, v in extra.items()})
            began = time.perf_counter()
            got = model.infer(batch, deadline)
            arm.latency.observe(time.perf_counter() - began)
            arm.rows.inc(int(mask.sum()))
            for value in got[:SCORES_OBSERVED, 0].tolist():
                arm.scores.observe(value)
            scores[mask] = got
            versions[mask] = model.version.version
        return scores, versions.tolist()
