"""Which loaded version answers which rows: aliases, the sticky canary split, the shadow.

A `Route` is immutable; the model manager builds a new one on every change and swaps it
in with one assignment, so a request sees one consistent routing table from start to end.
It carries model.yaml's batching and feature-store error policy too, so an edit of either
takes effect at the next refresh, with no new version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mmh3
import numpy as np

from augur.modelrepo.repository import BatchingSpec
from augur.serving.guardrails import CanaryGuard
from augur.serving.models import ServingModel

_BUCKETS = 10_000


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

    def named(self, version: str) -> ServingModel | None:
        """A loaded version by id or alias (`canary` names the canary while there is one)."""
        if version == "canary" and self.canary is not None:
            return self.canary
        return self.versions.get(self.aliases.get(version, version))

    def canary_rows(self, entities: dict[str, list]) -> np.ndarray | None:
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
