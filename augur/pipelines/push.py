"""`augur push`: write fresh rows of one feature view straight into the online store.

Goes through Augur's writer (`augur.features.writer`): Feast's exact bytes plus the packed
vector, and an older event time never overwrites a newer one.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from augur.features.connection import connect
from augur.features.repo import is_cluster, open_store, view_schema
from augur.features.writer import (
    DEFAULT_MAX_FUTURE_SKEW_S,
    WRITE_TIMEOUTS,
    OnlineWriter,
    WriteStats,
)


def push(
    repo_path: Path,
    redis_address: str,
    view: str,
    rows: Path | pd.DataFrame,
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
) -> WriteStats:
    frame = rows if isinstance(rows, pd.DataFrame) else _read(Path(rows))
    if "event_timestamp" not in frame.columns:
        raise ValueError("rows need an event_timestamp column")
    frame = frame.assign(event_timestamp=pd.to_datetime(frame["event_timestamp"], utc=True))
    store = open_store(repo_path, redis_address)
    schema = view_schema(store, view)  # a clear error for an unknown view before any write
    writer = OnlineWriter(
        connect(redis_address, WRITE_TIMEOUTS, is_cluster(store)),
        store.project,
        store.config.online_store.key_ttl_seconds,
        max_future_skew_s,
    )
    return writer.write(schema, pa.Table.from_pandas(frame, preserve_index=False))


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path)
    return pd.read_parquet(path)
