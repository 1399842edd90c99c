"""Materialize one feature view on Ray: the workers read the view's parquet source, shuffle its
rows by entity, and each writes its partition straight to Redis with Augur's writer.

The driver lists the source's row groups and gathers counts and results; no feature row
passes through it. Stage one (`split_rows`, one task per group of row groups) keeps the rows
in the window, the newest per entity within its group, and splits them by a hash of the
entity key; stage two (`write_partition`, one task per partition) keeps the newest row per
entity of its partition and writes it with `augur.features.writer.OnlineWriter`. Every
entity's rows meet in one partition, so the rows written are those Feast's local engine
picks, and the bytes in Redis are the single-process writer's. A worker that dies is
retried by Ray; the writer skips what the dead attempt had already stored (a row is
written only if newer), so the contents end up the same. Not the offline query engine for
non-parquet sources: those views take the single-process engine (`--engine augur`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from augur.features.connection import connect
from augur.features.writer import WRITE_TIMEOUTS, OnlineWriter, ViewSchema

log = logging.getLogger(__name__)
ROW_GROUPS_PER_WORKER = 2  # stage one tasks per worker: enough to even out uneven row groups
MAX_RETRIES = 3  # per task, on a worker or node that dies (Ray's own default, made explicit)
POLL_S = 0.2  # how often the driver refreshes the progress bar


@dataclass(frozen=True)
class ViewSource:
    """What a worker needs to read one view's rows: the parquet files and columns, plain data."""

    files: tuple[tuple[str, tuple[int, ...]], ...]  # (path, row groups) to read
    join_keys: tuple[str, ...]  # as the source names them (the rest likewise)
    features: tuple[str, ...]
    timestamp: str
    created: str | None
    mapping: tuple[tuple[str, str], ...]  # source column -> view column (Feast's field mapping)
    start_us: int  # the window, epoch microseconds, both ends included (as Feast's query)
    end_us: int

    def column(self, name: str | None) -> str | None:
        """A source column's name in the view (after the field mapping)."""
        return None if name is None else dict(self.mapping).get(name, name)


@dataclass(frozen=True)
class PartitionRun:
    rows: int  # rows of the view in the window (the newest per entity)
    written: int  # of those, newer than what Redis held
    retries: int  # task attempts beyond the first, after a worker died


@dataclass(frozen=True)
class Writing:
    """Where and how the workers write: the same settings as the single-process writer."""

    redis_address: str
    project: str
    key_ttl_seconds: int | None
    max_future_skew_s: float


def start(address: str | None, workers: int | None) -> int:
    """Connect to the Ray cluster at `address` (None: Ray's own RAY_ADDRESS where set, else a
    local instance of `workers` CPUs, or the one this process already runs); return how many
    tasks run at once."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")  # Ray's variable, as `ray job` sets it
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a job
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(workers or cpus, cpus))


def view_source(view, columns: tuple, repo_path: Path, window: tuple[dt.datetime, dt.datetime]):
    """The parquet files of a view's FileSource and their row groups (metadata only)."""
    import pyarrow.dataset as ds
    from feast import FileSource

    source = view.batch_source
    if not isinstance(source, FileSource):
        raise ValueError(
            f"feature view {view.name!r}: its source is a {type(source).__name__}; the ray "
            f"engine reads parquet FileSources (use --engine augur for this view)"
        )
    path = source.path
    if "://" not in path and not Path(path).is_absolute():
        path = str(repo_path / path)  # Feast resolves a relative source path from the repo
    dataset = ds.dataset(path, format="parquet")
    files = []
    for fragment in dataset.get_fragments():
        groups = tuple(g.row_groups[0].id for g in fragment.split_by_row_group())
        files.append((fragment.path if "://" not in path else _uri(path, fragment.path), groups))
    join_keys, features, timestamp, created = columns
    start, end = window
    return ViewSource(
        tuple(files),
        tuple(join_keys),
        tuple(features),
        timestamp,
        created or None,
        tuple((source.field_mapping or {}).items()),
        _micros(start),
        _micros(end),
    )


def write_view(
    schema: ViewSchema,
    source: ViewSource,
    writing: Writing,
    workers: int,
    progress: Callable[[int, int], object] | None = None,
) -> PartitionRun:
    """Materialize one view on the Ray cluster `start` connected to; `progress(done, total)`
    is called as the workers report rows written."""
    import ray

    partitions = workers
    tracker = _Progress.remote()
    groups = _row_group_tasks(source.files, workers * ROW_GROUPS_PER_WORKER)
    split = ray.remote(split_rows).options(
        num_returns=partitions + 1, max_retries=MAX_RETRIES, name="split_rows"
    )
    pieces = [split.remote(files, schema, source, writing, partitions) for files in groups]
    total = sum(ray.get([p[-1] for p in pieces]))  # counts only: small objects
    write = ray.remote(write_partition).options(max_retries=MAX_RETRIES, name="write_partition")
    pending = [
        write.remote(i, schema, source, writing, tracker, *(p[i] for p in pieces))
        for i in range(partitions)
    ]
    results = []
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
        results += ray.get(done)
        if progress is not None:
            progress(ray.get(tracker.done.remote()), total)
    starts = ray.get(tracker.starts.remote())
    ray.kill(tracker)
    return PartitionRun(
        sum(r[0] for r in results), sum(r[1] for r in results), max(0, starts - partitions)
    )


def split_rows(
    files: list, schema: ViewSchema, source: ViewSource, writing: Writing, partitions: int
) -> list:
    """Stage one, on a worker: the rows of some row groups in the window, the newest per
    entity, split into `partitions` tables by a hash of the entity key; then their counts."""
    import pyarrow.parquet as pq
    from pyarrow import fs

    from augur.features import writer

    columns = [*source.join_keys, *source.features, source.timestamp]
    columns += [source.created] if source.created else []
    tables = []
    for path, groups in files:
        filesystem, inner = fs.FileSystem.from_uri(path if "://" in path else f"file://{path}")
        with filesystem.open_input_file(inner) as handle:
            tables.append(pq.ParquetFile(handle).read_row_groups(list(groups), columns=columns))
    table = pa.concat_tables(tables).select(columns)
    table = table.rename_columns([source.column(c) for c in columns])
    timestamp = source.column(source.timestamp)
    micros = _column_micros(table.column(timestamp))
    inside = (micros >= source.start_us) & (micros <= source.end_us)
    table = _newest_per_entity(
        table.filter(pa.array(inside)), schema.join_keys, timestamp, source.column(source.created)
    )
    # Refused here, before any partition writes: a refused batch writes nothing, on any worker.
    writer._check_event_times(schema, table.column(timestamp), writing.max_future_skew_s)
    writer._check_values(schema, table)
    bucket = _partition_of(table, schema.join_keys, partitions)
    out = [table.filter(pa.array(bucket == i)) for i in range(partitions)]
    return [*out, table.num_rows]


def write_partition(
    index: int, schema: ViewSchema, source: ViewSource, writing: Writing, tracker, *pieces
) -> tuple[int, int]:
    """Stage two, on a worker: the newest row per entity of partition `index`, written to
    Redis by Augur's writer in pipelines; returns (rows, rows written)."""
    import ray

    # Waited for: the driver counts retries from these once every result is in, and a
    # fire-and-forget call from a retried attempt could reach the tracker after that count.
    ray.get(tracker.started.remote(index))
    timestamp = source.column(source.timestamp)
    table = _newest_per_entity(
        pa.concat_tables(pieces), schema.join_keys, timestamp, source.column(source.created)
    )
    online = OnlineWriter(
        connect(writing.redis_address, WRITE_TIMEOUTS),
        writing.project,
        writing.key_ttl_seconds,
        writing.max_future_skew_s,
    )
    stats = online.write(
        schema, table, timestamp, lambda rows: tracker.advanced.remote(index, rows)
    )
    return table.num_rows, stats.written


def _newest_per_entity(
    table: pa.Table, join_keys: tuple[str, ...], timestamp: str, created: str | None
) -> pa.Table:
    """One row per entity: the latest event time, then the latest created time (Feast's
    ORDER BY event DESC, created DESC)."""
    if table.num_rows == 0:
        return table
    frame = table.select(list(join_keys)).to_pandas()
    frame["__event"] = _column_micros(table.column(timestamp))
    order = ["__event"]
    if created:
        frame["__created"] = _column_micros(table.column(created))
        order.append("__created")
    frame["__row"] = np.arange(len(frame))
    latest = frame.sort_values(order, ascending=False, kind="stable")
    rows = np.sort(latest.drop_duplicates(list(join_keys))["__row"].to_numpy())
    return table.take(pa.array(rows)) if len(rows) < table.num_rows else table


def _partition_of(table: pa.Table, join_keys: tuple[str, ...], partitions: int) -> np.ndarray:
    """Each row's partition: a hash of its join key values, the same on every worker."""
    from pandas.util import hash_pandas_object

    if partitions == 1 or table.num_rows == 0:
        return np.zeros(table.num_rows, np.int64)
    hashes = hash_pandas_object(table.select(list(join_keys)).to_pandas(), index=False)
    return (hashes.to_numpy() % np.uint64(partitions)).astype(np.int64)


def _row_group_tasks(files: tuple, tasks: int) -> list[list]:
    """Spread (path, row group) pairs over at most `tasks` stage-one tasks, round robin."""
    pairs = [(path, group) for path, groups in files for group in groups]
    out: list[dict] = [{} for _ in range(max(1, min(tasks, len(pairs))))]
    for i, (path, group) in enumerate(pairs):
        out[i % len(out)].setdefault(path, []).append(group)
    return [[(path, tuple(groups)) for path, groups in task.items()] for task in out]


def _column_micros(column: pa.ChunkedArray) -> np.ndarray:
    """Epoch microseconds (UTC; a naive time is taken as UTC, as Feast does); null -> min."""
    as_us = pc.cast(column, pa.timestamp("us", tz=column.type.tz), safe=False)
    return as_us.cast(pa.int64()).fill_null(np.iinfo(np.int64).min).to_numpy()


def _micros(when: dt.datetime) -> int:
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1_000_000)


def _uri(root: str, path: str) -> str:
    """A fragment path of a remote dataset as a URI again (pyarrow drops the scheme)."""
    return f"{root.split('://', 1)[0]}://{path}"


class _ProgressCounter:
    """Rows written per partition, reported by the workers; a retried partition starts over."""

    def __init__(self) -> None:
        self._rows: dict[int, int] = {}
        self._starts = 0

    def started(self, partition: int) -> None:
        self._rows[partition] = 0
        self._starts += 1

    def advanced(self, partition: int, rows: int) -> None:
        self._rows[partition] = self._rows.get(partition, 0) + rows

    def done(self) -> int:
        return sum(self._rows.values())

    def starts(self) -> int:
        return self._starts


class _LazyActor:
    """`_Progress.remote()` made on first use, so that importing this module needs no Ray."""

    def remote(self):
        import ray

        return ray.remote(num_cpus=0)(_ProgressCounter).remote()


_Progress = _LazyActor()
