"""Served-feature logging: a sample of what each model was given and answered, written off the
request path as parquet files in the layout of Feast's feature logging, so the logs join
offline with `get_historical_features` (augur/pipelines/skew.py) or Feast's own log reader.

A request hands over references to what it already holds (entity columns, the read rows,
request features, scores) and returns; one writer thread turns them into columns and files.
The queue is bounded in rows: beyond it a sample is dropped and counted, never waited for.
Not the choice of what to log (model.yaml `logging`, augur/modelrepo/monitoring.py).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from augur.features.plan import ReadPlan
from augur.features.reader import FeatureRows
from augur.modelrepo import monitoring as names
from augur.modelrepo.spec import LoggingSpec
from augur.serving import metrics
from augur.serving.routing import Route

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

MAX_PENDING_ROWS = 100_000  # sampled rows queued for the writer; more are dropped (counted)
_WAKE_S = 1.0  # how often the writer looks for samples and files that are due
_FILE_ROWS = 100_000  # a model's buffered rows written at once, whatever the interval
# Feast value type -> the arrow type of its column in a Feast feature log (pyarrow is
# imported by the writer, not at server start)
_ARROW = {
    "Int32": "int32",
    "Int64": "int64",
    "Float32": "float32",
    "Float64": "float64",
    "Bool": "bool",
    "UnixTimestamp": "timestamp[us]",
}


class FeatureLog:
    """Every model's sampled rows: queued by `offer` on request threads, written by one thread
    (started by the first sample: a server whose models log nothing runs none)."""

    def __init__(self, max_pending_rows: int = MAX_PENDING_ROWS) -> None:
        self.max_pending_rows = max_pending_rows
        self._queue: deque[tuple] = deque()
        self._offered = 0  # rows queued, ever (request threads)
        self._taken = 0  # rows the writer has taken off the queue, ever
        self._sinks: dict[tuple[str, LoggingSpec], _ModelLog] = {}
        self._rng = np.random.default_rng()
        self._write_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def offer(
        self,
        route: Route,
        entities: Mapping[str, list],
        rows: FeatureRows,
        extra: Mapping[str, np.ndarray],
        scores: np.ndarray,
        versions: list[str],
    ) -> None:
        """Queue this call's sampled rows for the log (route.feature_log says how many)."""
        spec = route.feature_log
        assert spec is not None
        n, picked = len(scores), None
        if spec.sample_rate < 1.0:
            if n == 1:
                if random.random() >= spec.sample_rate:
                    return
            else:
                picked = np.flatnonzero(self._rng.random(n) < spec.sample_rate)
                n = len(picked)
                if not n:
                    return
        if self._offered - self._taken + n > self.max_pending_rows:
            metrics.FEATURE_LOG_ROWS.labels(route.name, "dropped").inc(n)
            return
        self._offered += n
        self._queue.append((route, time.time(), picked, entities, rows, extra, scores, versions))
        if self.thread is None:
            self._start()

    def flush(self) -> None:
        """Write every sample queued so far, now (tests, and the server's stop)."""
        with self._write_lock:
            self._drain()
            for sink in list(self._sinks.values()):
                sink.write()

    def close(self) -> None:
        """Stop the writer and write what is left."""
        self._stop.set()
        if self.thread is not None:
            self.thread.join(10)
        self.flush()

    def _start(self) -> None:
        with self._start_lock:
            if self.thread is None:
                thread = threading.Thread(target=self._run, name="augur-feature-log", daemon=True)
                thread.start()
                self.thread = thread

    def _run(self) -> None:
        while not self._stop.wait(_WAKE_S):
            try:
                with self._write_lock:
                    self._drain()
                    now = time.monotonic()
                    for sink in list(self._sinks.values()):
                        if sink.due(now):
                            sink.write()
            except Exception:  # the log must never take the server down: say so, go on
                log.exception("feature log: writing failed")

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            record = queue.popleft()
            route = record[0]
            key = (route.name, route.feature_log)
            sink = self._sinks.get(key)
            if sink is None:
                sink = self._sinks[key] = _ModelLog(route)
            self._taken += sink.add(record)


class _ModelLog:
    """One model's buffered samples and its log folder."""

    def __init__(self, route: Route) -> None:
        spec = route.feature_log
        assert spec is not None
        self.model = route.name
        self.folder = Path(spec.path)
        self.interval_s = spec.flush_interval_s
        self.plan: ReadPlan = route.stable.plan
        self.outputs = route.stable.version.spec.outputs
        self.request_features = route.stable.version.spec.request_features
        self._records: list[tuple] = []
        self._rows = 0
        self._since = 0.0  # monotonic time of the oldest buffered record

    def add(self, record: tuple) -> int:
        picked, scores = record[2], record[6]
        n = len(scores) if picked is None else len(picked)
        if not self._records:
            self._since = time.monotonic()
        self._records.append(record)
        self._rows += n
        return n

    def due(self, now: float) -> bool:
        return bool(self._records) and (
            now - self._since >= self.interval_s or self._rows >= _FILE_ROWS
        )

    def write(self) -> None:
        if not self._records:
            return
        records, rows = self._records, self._rows
        self._records, self._rows = [], 0
        try:
            import pyarrow.parquet as pq

            table = self.table(records)
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"{uuid.uuid4().hex}-0.parquet"  # Feast's file naming
            hidden = self.folder / f".{name}.tmp"  # dataset readers skip dot files
            pq.write_table(table, hidden)
            os.replace(hidden, self.folder / name)
        except Exception as e:
            metrics.FEATURE_LOG_ROWS.labels(self.model, "dropped").inc(rows)
            log.error(
                "feature log of %s: %d rows not written to %s: %s", self.model, rows, self.folder, e
            )
            return
        metrics.FEATURE_LOG_ROWS.labels(self.model, "written").inc(rows)

    def table(self, records: list[tuple]) -> pa.Table:
        """The records' rows as one table in Feast's feature-log schema, plus who answered."""
        import pyarrow as pa

        plan = self.plan
        parts = [_rows_of(r) for r in records]
        values = np.concatenate([p[2] for p in parts])
        event_ts = np.concatenate([p[3] for p in parts])
        logged_at = np.concatenate([np.full(len(p[2]), p[0]) for p in parts])
        columns: dict[str, pa.Array] = {}
        for key, kind in plan.entity_types.items():
            joined = [v for p in parts for v in p[1][key]]
            columns[key] = pa.array(joined, pa.int64() if kind == "int64" else pa.string())
        for j, column in enumerate(plan.columns):
            view = next(i for i, v in enumerate(plan.views) if v.name == column.view)
            ttl = plan.views[view].ttl_seconds or np.inf
            name = column.full_name
            columns[name] = _typed(values[:, j], column.dtype)
            stamps = event_ts[:, view]
            columns[names.timestamp_column(name)] = _timestamps(stamps)
            columns[names.status_column(name)] = pa.array(
                _status(values[:, j], stamps, logged_at, ttl), pa.int32()
            )
        for feature in self.request_features:
            columns[feature] = pa.array(
                np.concatenate([p[4][feature] for p in parts]).astype(np.float64)
            )
        columns[names.LOG_TIMESTAMP] = _timestamps(logged_at)
        days = (logged_at // 86_400).astype(np.int32)
        columns[names.LOG_DATE] = pa.array(days, pa.int32()).cast(pa.date32())
        columns[names.REQUEST_ID] = pa.array([p[6] for p in parts for _ in range(len(p[2]))])
        columns[names.MODEL_COLUMN] = pa.array([self.model] * len(values), pa.string())
        columns[names.VERSION_COLUMN] = pa.array([v for p in parts for v in p[5]], pa.string())
        scores = np.concatenate([p[7] for p in parts])
        for k, output in enumerate(self.outputs):
            columns[names.score_column(output)] = pa.array(scores[:, k].astype(np.float32))
        return pa.table(columns)


def _rows_of(record: tuple) -> tuple:
    """(logged at, entities, values, event times, request features, versions, request id,
    scores) of one call's sampled rows."""
    _, at, picked, entities, rows, extra, scores, versions = record
    request_id = uuid.uuid4().hex
    if picked is None:
        return at, entities, rows.values, rows.event_ts, extra, versions, request_id, scores
    return (
        at,
        {k: [v[i] for i in picked] for k, v in entities.items()},
        rows.values[picked],
        rows.event_ts[picked],
        {k: v[picked] for k, v in extra.items()},
        [versions[i] for i in picked],
        request_id,
        scores[picked],
    )


def _typed(values: np.ndarray, dtype: str) -> pa.Array:
    """A feature's values as the model saw them (defaults filled), in its Feast type's arrow
    column; NaN (no value, no default) is null."""
    import pyarrow as pa

    kind = pa.type_for_alias(_ARROW.get(dtype, "float64"))
    missing = np.isnan(values)
    if pa.types.is_timestamp(kind):
        return _timestamps(values)
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        filled = np.where(missing, 0, values)
        cast = filled != 0 if pa.types.is_boolean(kind) else filled.astype(np.int64)
        return pa.array(cast, mask=missing).cast(kind)
    return pa.array(values.astype(kind.to_pandas_dtype()), kind, mask=missing)


def _timestamps(seconds: np.ndarray) -> pa.Array:
    import pyarrow as pa

    missing = np.isnan(seconds)
    micros = np.where(missing, 0, seconds * 1e6).astype(np.int64)
    return pa.array(micros, pa.int64(), mask=missing).cast(pa.timestamp("us", tz="UTC"))


def _status(values: np.ndarray, stamps: np.ndarray, at: np.ndarray, ttl: float) -> np.ndarray:
    """Feast's FieldStatus of each served value: its view's row absent, past its TTL, a null
    value, or present."""
    status = np.full(len(values), names.PRESENT, np.int32)
    status[np.isnan(values)] = names.NULL_VALUE
    status[at - stamps > ttl] = names.OUTSIDE_MAX_AGE
    status[np.isnan(stamps)] = names.NOT_FOUND
    return status
