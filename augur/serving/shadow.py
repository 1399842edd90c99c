"""Shadow scoring: a version scores a copy of live traffic off the request path.

Requests hand over their already-read features; one background thread scores them with
the shadow version and compares with what the caller got. A full queue drops the copy
(counted), so a slow or failing shadow never reaches callers.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping

import numpy as np

from augur.features.reader import FeatureRows
from augur.serving import metrics
from augur.serving.models import ServingModel

log = logging.getLogger(__name__)


class ShadowScorer:
    def __init__(self, capacity: int = 256):
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._run, name="augur-shadow", daemon=True)
        self._thread.start()

    def submit(
        self,
        name: str,
        primary_version: str,
        shadow: ServingModel,
        threshold: float,
        rows: FeatureRows,
        request: Mapping[str, np.ndarray],
        primary_scores: np.ndarray,
    ) -> None:
        try:
            self._queue.put_nowait(
                (name, primary_version, shadow, threshold, rows, request, primary_scores)
            )
        except queue.Full:
            metrics.SHADOW_DROPPED.labels(name).inc()

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until every submitted copy has been scored (tests, shutdown)."""
        done = threading.Event()
        self._queue.put((None, None, None, None, None, None, done), timeout=timeout)
        done.wait(timeout)

    def _run(self) -> None:
        while True:
            name, primary, shadow, threshold, rows, request, scores = self._queue.get()
            if name is None:
                scores.set()
                continue
            try:
                self._compare(name, primary, shadow, threshold, rows, request, scores)
            except Exception as e:  # a shadow's failure is a metric, never the caller's
                metrics.SHADOW_ERRORS.labels(name, shadow.version.version).inc()
                log.debug("shadow %s@%s failed: %s", name, shadow.version.version, e)

    @staticmethod
    def _compare(
        name: str,
        primary: str,
        shadow: ServingModel,
        threshold: float,
        rows: FeatureRows,
        request: Mapping[str, np.ndarray],
        primary_scores: np.ndarray,
    ) -> None:
        version = shadow.version.version
        theirs = shadow.runtime.predict(shadow.assemble(rows, request))
        diff = np.abs(theirs[:, 0] - primary_scores[:, 0])
        for d in diff:
            metrics.SHADOW_DIFF.labels(name, version).observe(float(d))
        agree = int(((theirs[:, 0] >= threshold) == (primary_scores[:, 0] >= threshold)).sum())
        metrics.SHADOW_ROWS.labels(name, version, "agree").inc(agree)
        metrics.SHADOW_ROWS.labels(name, version, "disagree").inc(len(diff) - agree)
