"""Which loaded version answers which rows: aliases, the sticky canary split (and scoring
each row with its version), the shadow.

A `Route` is immutable; the model manager builds a new one on every change and swaps it
in with one assignment, so a request sees one consistent routing table from start to end.
It carries model.yaml's batching and feature-store error policy too, so an edit of either
takes effect at the next refresh, with no new version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import mmh3
import numpy as np

from augur.features.reader import FeatureRows
from augur.modelrepo.repository import BatchingSpec
from augur.modelrepo.spec import LoggingSpec, SloSpec
from augur.serving import metrics
from augur.serving.errors import not_found, shown
from augur.serving.experiments import Experiment
from augur.serving.guardrails import CanaryGuard
from augur.serving.models import ServingModel

log = logging.getLogger(__name__)
_BUCKETS = 10_000
# What a canary's guardrail verdict trips: (route, guardrail, reason), the model manager's.
Trip = Callable[["Route", str, str], None]


@dataclass(frozen=True)
class Route:
    name: str
    stable: ServingModel
    versions: dict[str, ServingModel]  # every loaded version, by id
    aliases: dict[str, str] = field(default_factory=dict)
    canary: ServingModel | None = None
    canary_weight: float = 0.0
    sticky_key: str = ""
    guard: CanaryGuard | None = None
    shadow: ServingModel | None = None
    shadow_threshold: float = 0.5
    # model.yaml's serving settings, read on every refresh (a loaded version keeps the
    # model.yaml of its load time): dynamic batching, and what a failed feature read does
    batching: BatchingSpec | None = None
    on_feature_store_error: str = "unavailable"
    experiment: Experiment | None = None  # splits calls that name no version, as a canary
    # served-feature logging (model.yaml `logging`, else the feature service's Feast
    # logging_config recorded at training); None: nothing is logged, at no cost
    feature_log: LoggingSpec | None = None

    slo: SloSpec | None = None  # the latency objective its batcher tunes to (serving/slo.py)

    def routes_like(self, other: Route) -> bool:
        """Whether `other` routes every call as this route does (the model manager then keeps
        this one, and with it its guardrail window)."""
        a, b = self, other
        return (
            a.stable is b.stable
            and a.canary is b.canary
            and a.shadow is b.shadow
            and a.canary_weight == b.canary_weight
            and a.aliases == b.aliases
            and a.versions.keys() == b.versions.keys()
            and a.guard is b.guard
            and a.sticky_key == b.sticky_key
            and a.shadow_threshold == b.shadow_threshold
            and a.batching == b.batching
            and a.on_feature_store_error == b.on_feature_store_error
            and Experiment.same(a.experiment, b.experiment)
            and a.feature_log == b.feature_log
            and a.slo == b.slo
        )

    def named(self, version: str) -> ServingModel | None:
        """A loaded version by id or alias (`canary` names the canary while there is one)."""
        if version == "canary" and self.canary is not None:
            return self.canary
        return self.versions.get(self.aliases.get(version, version))

    def pinned(self, version: str) -> ServingModel:
        """The version a call names (id or alias); NOT_FOUND, naming what is loaded."""
        model = self.named(version)
        if model is None:
            raise not_found(
                f"model {self.name} version {shown(version)!r} is not loaded; loaded: "
                f"{', '.join(self.loaded)}; aliases: "
                f"{', '.join(f'{k}={v}' for k, v in self.aliases.items()) or 'none'}"
            )
        return model

    def score(
        self,
        model: ServingModel,
        rows: FeatureRows,
        extra: Mapping[str, np.ndarray],
        batch: np.ndarray,
        entities: Mapping[str, list] | None,
        trip: Trip,
        deadline: float | None = None,
    ) -> tuple[np.ndarray, list[str]]:
        """Scores of the assembled `batch` and the version that answered each row: `model`'s,
        or split by the sticky canary when `entities` is given (a call that named no
        version); `trip` is told of a canary guardrail's verdict; `deadline` (monotonic)
        bounds a remote model's attempts. A running experiment splits such a call between its
        arms instead."""
        if entities is not None and self.experiment is not None:
            return self.experiment.score(self.stable, rows, extra, batch, entities, deadline)
        mask = None if entities is None or self.canary is None else self.canary_rows(entities)
        if mask is None or not mask.any():
            scores = model.infer(batch, deadline)
            if mask is not None and self.guard is not None:
                self.guard.record_stable(scores)  # the reference for the canary's drift
            return scores, [model.version.version] * len(batch)
        return self._split(rows, extra, batch, mask, trip, deadline)

    def _split(
        self,
        rows: FeatureRows,
        extra: Mapping[str, np.ndarray],
        stable_batch: np.ndarray,
        canary_mask: np.ndarray,
        trip: Trip,
        deadline: float | None,
    ) -> tuple[np.ndarray, list[str]]:
        """Score canary rows with the canary and the rest with stable; a failing canary call
        is answered by stable instead (and counted against the canary's guardrails)."""
        stable, canary = self.stable, self.canary
        assert canary is not None  # a mask is only drawn while there is a canary
        scores = np.empty((len(canary_mask), len(stable.version.spec.outputs)), np.float32)
        versions = np.full(len(canary_mask), stable.version.version, dtype=object)
        keep = ~canary_mask
        if keep.any():
            scores[keep] = stable.infer(stable_batch[keep], deadline)
            if self.guard is not None:
                self.guard.record_stable(scores[keep])
        began = time.perf_counter()
        try:
            picked = {k: v[canary_mask] for k, v in extra.items()}
            inputs = canary.assemble(rows.take(canary_mask), picked)
            theirs = canary.infer(inputs, deadline)
            if not np.isfinite(theirs).all():
                raise ValueError("non-finite canary scores")
            scores[canary_mask] = theirs
            versions[canary_mask] = canary.version.version
            ok, seen = True, theirs
            if self.guard is not None:
                self.guard.record_inputs(inputs)  # for the feature drift guardrail
        except Exception as e:
            metrics.CANARY_FALLBACKS.labels(self.name, canary.version.version).inc()
            version = canary.version.version
            log.debug("canary %s@%s failed, stable answers: %s", self.name, version, e)
            scores[canary_mask] = stable.infer(stable_batch[canary_mask], deadline)
            ok, seen = False, None
        if self.guard is not None:
            verdict = self.guard.record_canary(ok, time.perf_counter() - began, seen)
            if verdict is not None:
                trip(self, *verdict)
        return scores, versions.tolist()

    def canary_rows(self, entities: Mapping[str, list]) -> np.ndarray | None:
        """Mask of rows whose sticky key hashes into the canary's share; None: no canary."""
        if self.canary is None or self.canary_weight <= 0:
            return None
        cut = int(self.canary_weight * _BUCKETS)
        salt = self.name + ":"
        keys = entities[self.sticky_key]
        return np.fromiter(
            (mmh3.hash(salt + str(k), signed=False) % _BUCKETS < cut for k in keys),
            bool,
            len(keys),
        )

    @property
    def loaded(self) -> list[str]:
        return sorted(self.versions, key=lambda v: int(v[1:]) if v[1:].isdigit() else 0)
