"""Materialize offline feature rows into the online store.

Two engines, the same rows and the same bytes in Redis:
- `augur` (default): Feast's offline store picks the latest row per entity in the window,
  then Augur's writer (`augur.features.writer`) serializes the whole batch with numpy, adds
  the packed vector per view, and pipelines the writes.
- `feast`: Feast's own `materialize` (its local engine), for comparison. Views Augur's writer
  does not handle (non-numeric features) take this engine either way.

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
ENGINES = ("augur", "feast")


@dataclass(frozen=True)
class ViewRun:
    seconds: float
    rows: int | None  # rows read from the offline store (None: Feast's engine does not say)
    written: int | None  # of those, rows newer than what Redis held, written


def materialize(
    repo_path: Path,
    redis_address: str,
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    views: Sequence[str] | None = None,
    progress: bool = True,
    engine: str = "augur",
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
) -> dict[str, ViewRun]:
    """Materialize each selected online view; return what each view's run did."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    store = open_store(repo_path, redis_address)
    end = end or dt.datetime.now(dt.UTC)
    online = [v.name for v in store.list_feature_views() if v.online]
    unknown = set(views or ()) - set(online)
    if unknown:
        raise ValueError(
            f"no online feature view named {', '.join(sorted(unknown))}; "
            f"have: {', '.join(sorted(online))}"
        )
    selected = list(views) if views else online
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
