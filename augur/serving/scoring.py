"""Scoring rows: read their features, check the deadline, assemble the model's batch, score it
with the version that answers each row, and count each stage - for one call, or for a batch of
calls routed alike that share one read and one model call (the batcher's `run`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from augur.features.reader import FeatureRows
from augur.features.waiting import BLOCKING, Waiting
from augur.serving import chunks, metrics
from augur.serving.batcher import Call, Turns
from augur.serving.errors import deadline_exceeded
from augur.serving.feature_log import FeatureLog
from augur.serving.feature_read import GuardedReader
from augur.serving.models import ServingModel
from augur.serving.oip_inputs import given_rows
from augur.serving.routing import Route, Trip
from augur.serving.shadow import ShadowScorer


@dataclass(slots=True)  # not frozen: made on every call (augur/features/rows.py says why)
class Scored:
    """What scoring produced for a set of rows: one call's, or a batch's before it splits."""

    model: ServingModel  # whose inputs `batch` holds (the stable version, or the one named)
    rows: FeatureRows
    batch: np.ndarray  # the model's inputs
    scores: np.ndarray
    row_versions: list[str]
    degraded: bool
    # perf_counter marks of its read, assembly and model call (for tracing), and the rows
    # of the batch they were run for
    began: float = 0.0
    read: float = 0.0
    assembled: float = 0.0
    done: float = 0.0
    batch_rows: int = 0

    @property
    def versions(self) -> list[str]:
        versions = self.row_versions
        if len(versions) == 1:  # a one-row call: no set to build
            return list(versions)
        return sorted(set(versions))

    @classmethod
    def joined(cls, parts: list[Scored]) -> Scored:
        """One call's chunks (chunks.py), scored in turn, as one."""
        first = parts[0]
        if len(parts) == 1:
            return first
        return cls(
            first.model,
            chunks.joined_rows([p.rows for p in parts]),
            np.concatenate([p.batch for p in parts]),
            np.concatenate([p.scores for p in parts]),
            [v for p in parts for v in p.row_versions],
            any(p.degraded for p in parts),
            first.began,
            first.read,
            first.assembled,
            parts[-1].done,
            first.batch_rows,
        )

    def part(self, rows: slice) -> Scored:
        return Scored(
            self.model,
            self.rows.take(rows),
            self.batch[rows],
            self.scores[rows],
            self.row_versions[rows],
            self.degraded,
            self.began,
            self.read,
            self.assembled,
            self.done,
            self.batch_rows,
        )


class Scorer:
    """Rows in, scores out, through the feature read, the model and the routing table."""

    def __init__(
        self,
        features: GuardedReader,
        shadow: ShadowScorer,
        trip: Trip,
        waiting: Waiting = BLOCKING,
        feature_log: FeatureLog | None = None,
        ranked: Turns | None = None,
    ) -> None:
        self.features = features
        # with tenants, the pool's turns: a call lets calls of higher priority that became
        # ready during its read go before its model call (None: no tenants, one check)
        self._ranked = ranked
        self.feature_log = feature_log or FeatureLog()  # starts its writer on a first sample
        self._waiting = waiting  # where a large model call runs (chunks.OFF_THREAD_ROWS)
        self.shadow = shadow
        self._trip = trip
        self._ages = metrics.FeatureAges()

    def score(
        self,
        route: Route,
        model: ServingModel,
        entities: Mapping[str, list],
        extra: Mapping[str, np.ndarray],
        deadline: float | None,
        split: bool,
        counted: metrics.ModelMetrics,
    ) -> Scored:
        """Read, assemble and score rows (one call's, or a batch's): the request path. `split`:
        the sticky canary may answer some rows (the call named no version); `counted`: the
        model's metrics."""
        t0 = time.perf_counter()
        if entities:
            rows, degraded = self.features.read(model.plan, entities, deadline, route)
        else:  # an OIP call that gave the features themselves: nothing to read
            rows, degraded = given_rows(model.plan, extra), False
        if self._ranked is not None:  # (its wait counts in the read stage)
            hub = self._ranked.parking()
            if hub is not None:
                hub.take_turn()
        t1 = time.perf_counter()
        if deadline is not None and time.monotonic() > deadline:
            counted.late.inc()
            raise deadline_exceeded("deadline passed before the inference stage")
        batch = model.assemble(rows, extra)
        t2 = time.perf_counter()
        picked = entities if split else None
        if len(batch) < chunks.OFF_THREAD_ROWS and not model.off_thread:
            scores, row_versions = route.score(model, rows, extra, batch, picked, self._trip)
        else:  # it releases the GIL, or waits on another server: off the calls' thread
            scores, row_versions = self._waiting.run_elsewhere(
                lambda: route.score(model, rows, extra, batch, picked, self._trip, deadline)
            )
        t3 = time.perf_counter()
        counted.scored(t0, t1, t2, t3, rows, model.plan, self._ages)
        if route.shadow is not None and model is route.stable and not degraded:
            self.shadow.submit(
                route.name,
                model.version.version,
                route.shadow,
                route.shadow_threshold,
                rows,
                extra,
                scores,
            )
        if route.feature_log is not None:  # a sample of what was served, off the request path
            self.feature_log.offer(route, entities, rows, extra, scores, row_versions)
        return Scored(
            model, rows, batch, scores, row_versions, degraded, t0, t1, t2, t3, len(batch)
        )

    def score_calls(self, calls: list[Call], counted: metrics.ModelMetrics) -> None:
        """One batch of a model's calls (`counted`: its metrics): calls routed alike share one
        read and one model call, then split."""
        began = time.perf_counter()
        # calls that name entities and calls that give their features (OIP) merge apart
        groups: dict[tuple[int, bool], list[Call]] = {}
        for call in calls:
            groups.setdefault((id(call.route), not call.entities), []).append(call)
        queue = counted.queue
        for call in calls:
            queue.observe(began - call.queued)
        for group in groups.values():
            route = group[0].route
            if len(group) == 1:  # the usual batch at light load: nothing to merge or split
                entities, extra, deadline = group[0].entities, group[0].extra, group[0].deadline
            else:
                keys = group[0].entities.keys()
                entities = {k: [v for c in group for v in c.entities[k]] for k in keys}
                extra = {k: np.concatenate([c.extra[k] for c in group]) for k in group[0].extra}
                deadlines = [c.deadline for c in group]
                deadline = None if None in deadlines else max(deadlines)
            try:
                split = bool(entities)  # an OIP call that gave features names no sticky key
                scored = self.score(route, route.stable, entities, extra, deadline, split, counted)
            except BaseException as e:
                for call in group:
                    call.error = e
                continue
            counted.batch_rows.observe(len(scored.batch))
            counted.batch_calls.observe(len(group))
            if len(group) == 1:
                group[0].result = scored
                continue
            start = 0
            for call in group:
                part = slice(start, start + call.rows)
                start += call.rows
                call.result = scored.part(part)
