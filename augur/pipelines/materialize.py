"""Materialize offline feature rows into the online store.

Two engines, the same rows and the same bytes in Redis:
- `augur` (default): Feast's offline store picks the latest row per entity in the window,
  then Augur's writer (`augur.features.writer`) serializes the whole batch with numpy, adds
  the packed vector per view, and pipelines the writes.
- `feast`: Feast's own `materialize` (its local engine), for comparison. Views Augur's writer
  does not handle (non-numeric features) take this engine either way.
- `ray`: the same writer inside Ray workers, each writing its partition of the view's rows
  straight to Redis (`augur.pipelines.ray_engine`); chosen by `engine="ray"` or by
  `batch_engine: ray.engine` in feature_store.yaml (Feast's name and settings for its engine:
  `ray_address`, `max_workers`).

Incremental by default: each view continues from where its last run ended (kept in the
Feast registry by either engine), so a re-run writes only new rows. Each view gets a
progress bar of rows written.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from augur.features.connection import connect
from augur.features.plan_cache import refresh_cache
from augur.features.repo import PlanError, is_cluster, open_store, view_schema
from augur.features.writer import DEFAULT_MAX_FUTURE_SKEW_S, WRITE_TIMEOUTS, OnlineWriter

log = logging.getLogger(__name__)
ENGINES = ("augur", "feast", "ray")


@dataclass(frozen=True)
class ViewRun:
    seconds: float
    rows: int | None  # rows read from the offline store (None: Feast's engine does not say)
    written: int | None  # of those, rows newer than what Redis held, written
    retries: int = 0  # tasks run again after a worker died (the ray engine)


def materialize(
    repo_path: Path,
    redis_address: str,
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    views: Sequence[str] | None = None,
    progress: bool = True,
    engine: str | None = None,
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
    workers: int | None = None,
) -> dict[str, ViewRun]:
    """Materialize each selected online view; return what each view's run did. `engine`
    None: the one feature_store.yaml's `batch_engine` names (ray.engine: ray), else augur.
    `workers`: the ray engine's partitions and tasks at once (None: the cluster's CPUs)."""
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    store = open_store(repo_path, redis_address)
    engine = engine or engine_of(store)
    end = end or dt.datetime.now(dt.UTC)
    online = [v.name for v in store.list_feature_views() if v.online]
    unknown = set(views or ()) - set(online)
    if unknown:
        raise ValueError(
            f"no online feature view named {', '.join(sorted(unknown))}; "
            f"have: {', '.join(sorted(online))}"
        )
    selected = list(views) if views else online
    if engine == "ray":
        window = (start, end)
        runs = _ray_runs(
            store, redis_address, selected, window, progress, max_future_skew_s, workers
        )
        refresh_cache(store)
        return runs
    runs: dict[str, ViewRun] = {}
    writer = OnlineWriter(
        connect(redis_address, WRITE_TIMEOUTS, is_cluster(store)),
        store.project,
        store.config.online_store.key_ttl_seconds,
        max_future_skew_s,
    )
    ours = [n for n in selected if engine == "augur" and _writable(store, n)]
    # Registry lookups stay on this thread; only the offline queries run on the other, one
    # view ahead, so that a view's query overlaps the previous view's writes.
    pulls = {n: _pull_job(store, n, start, end) for n in ours}
    with ThreadPoolExecutor(1, thread_name_prefix="augur-pull") as pool:
        pending = {n: pool.submit(pulls[n].run) for n in ours[:1]}
        for name in selected:
            began = time.perf_counter()
            if name not in pulls:
                # Feast's engine queries the same offline store (one DuckDB connection, not
                # safe to share between threads): never beside a pull still running.
                futures.wait(pending.values())
                _feast_engine(store, name, start, end)
                rows = written = None
            else:
                following = ours[ours.index(name) + 1 :][:1]
                pending.update({n: pool.submit(pulls[n].run) for n in following})
                table = pending.pop(name).result()
                rows, written = _augur_engine(store, writer, pulls[name], table, progress)
            runs[name] = ViewRun(time.perf_counter() - began, rows, written)
    refresh_cache(store)  # the registry changed (materialization intervals): keep plans current
    return runs


@dataclass(frozen=True)
class _Pull:
    """One view's offline query, ready to run on any thread."""

    store: object
    view: object
    start: dt.datetime
    end: dt.datetime
    columns: tuple  # join keys, features, timestamp and created columns in the source

    def run(self) -> pa.Table:
        return pull_latest(self.store, self.view, self.start, self.end, self.columns)


def _pull_job(store, name: str, start, end) -> _Pull:
    view = store.get_feature_view(name)
    window_start = _utc(start) if start is not None else _incremental_start(view)
    return _Pull(store, view, window_start, _utc(end), source_columns(store, view))


def source_columns(store, view) -> tuple:
    """The view's join keys, features, event time and created time as its source names
    them (Feast's field mapping reversed)."""
    from feast.utils import _get_column_names

    return tuple(_get_column_names(view, [store.get_entity(e) for e in view.entities]))


def _augur_engine(
    store, writer: OnlineWriter, pull: _Pull, table: pa.Table, progress: bool
) -> tuple[int, int]:
    view, name = pull.view, pull.view.name
    with tqdm(
        total=table.num_rows, desc=name, unit="row", unit_scale=True, disable=not progress
    ) as bar:
        timestamp = view.batch_source.timestamp_field
        timestamp = (view.batch_source.field_mapping or {}).get(timestamp, timestamp)
        stats = writer.write(view_schema(store, name), table, timestamp, bar.update)
    store.registry.apply_materialization(view, store.project, pull.start, pull.end)
    return table.num_rows, stats.written


def engine_of(store) -> str:
    """The engine feature_store.yaml's `batch_engine` selects: ray for Feast's `ray.engine`,
    else augur (Augur's writer in this process replaces Feast's local engine)."""
    return "ray" if ray_settings(store).get("type") == "ray.engine" else "augur"


def ray_settings(store) -> dict:
    """`batch_engine` of feature_store.yaml as a dict (a bare type name is {"type": name})."""
    configured = store.config.batch_engine_config
    if isinstance(configured, str):
        return {"type": configured}
    if isinstance(configured, dict):
        return configured
    return {"type": getattr(configured, "type", "local")}


def _ray_runs(
    store, address: str, selected, window, progress, skew_s, workers
) -> dict[str, ViewRun]:
    """Each view's rows split and written by Ray workers; the registry's materialization
    interval recorded here, once all of a view's partitions are in Redis."""
    from augur.pipelines import ray_engine

    start, end = window
    settings = ray_settings(store)
    concurrency = ray_engine.start(
        settings.get("ray_address"), workers or settings.get("max_workers")
    )
    ttl = store.config.online_store.key_ttl_seconds
    writing = ray_engine.Writing(address, store.project, ttl, skew_s)
    runs: dict[str, ViewRun] = {}
    for name in selected:
        began = time.perf_counter()
        if not _writable(store, name):
            _feast_engine(store, name, start, end)
            runs[name] = ViewRun(time.perf_counter() - began, None, None)
            continue
        pull = _pull_job(store, name, start, end)
        window = (pull.start, pull.end)
        source = ray_engine.view_source(pull.view, pull.columns, Path(store.repo_path), window)
        schema = view_schema(store, name)
        with tqdm(desc=name, unit="row", unit_scale=True, disable=not progress) as bar:

            def show(done: int, total: int, bar=bar) -> None:
                bar.total, bar.n = total, done
                bar.refresh()

            run = ray_engine.write_view(schema, source, writing, concurrency, show)
        store.registry.apply_materialization(pull.view, store.project, pull.start, pull.end)
        seconds = time.perf_counter() - began
        runs[name] = ViewRun(seconds, run.rows, run.written, run.retries)
    return runs


def _writable(store, name: str) -> bool:
    """Whether Augur's writer handles the view (numeric and bool features only)."""
    try:
        view_schema(store, name)
        return True
    except PlanError as e:
        log.info("%s; materializing view %s with Feast's engine", e, name)
        return False


def _feast_engine(store, name: str, start, end) -> None:
    if start is None:
        store.materialize_incremental(end_date=end, feature_views=[name])
    else:
        store.materialize(start_date=start, end_date=end, feature_views=[name])


def pull_latest(
    store, view, start: dt.datetime, end: dt.datetime, columns: tuple | None = None
) -> pa.Table:
    """The newest row per entity with an event time in [start, end], columns named as the
    view names them: what Feast's local engine would write for this window. Touches no
    registry when `columns` (`source_columns`) is given, so it may run on another thread."""
    join_keys, features, timestamp, created = columns or source_columns(store, view)
    offline = store._get_provider().offline_store  # Feast exposes no public accessor
    table = offline.pull_latest_from_table_or_query(
        config=store.config,
        data_source=view.batch_source,
        join_key_columns=join_keys,
        feature_name_columns=features,
        timestamp_field=timestamp,
        created_timestamp_column=created,
        start_date=start,
        end_date=end,
    ).to_arrow()
    mapping = view.batch_source.field_mapping or {}
    if mapping:
        table = table.rename_columns([mapping.get(c, c) for c in table.column_names])
    return table


def _incremental_start(view) -> dt.datetime:
    """Where Feast's materialize_incremental would start this view."""
    if view.most_recent_end_time is not None:
        return _utc(view.most_recent_end_time)
    if view.ttl is None:
        raise ValueError(
            f"feature view {view.name!r} has no TTL and was never materialized: "
            f"give --start for its first run"
        )
    if view.ttl.total_seconds() > 0:
        return dt.datetime.now(dt.UTC) - view.ttl
    return dt.datetime.now(dt.UTC) - dt.timedelta(weeks=52)


def _utc(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
