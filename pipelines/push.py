"""`augur push`: write fresh rows of one feature view straight into the online store.

Goes through Feast's own online write path, so the bytes are exactly Feast's and an older
event time never overwrites a newer one.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from featurestore.repo import open_store


def push(repo_path: Path, redis_address: str, view: str, rows: Path | pd.DataFrame) -> int:
    frame = rows if isinstance(rows, pd.DataFrame) else _read(Path(rows))
    if "event_timestamp" not in frame.columns:
        raise ValueError("rows need an event_timestamp column")
    frame = frame.assign(event_timestamp=pd.to_datetime(frame["event_timestamp"], utc=True))
    store = open_store(repo_path, redis_address)
    store.get_feature_view(view)  # a clear error for an unknown view before any write
    store.write_to_online_store(view, frame)
    return len(frame)


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path)
    return pd.read_parquet(path)
