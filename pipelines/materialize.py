"""Materialize offline feature rows into the online store with Feast's own engine.

Incremental by default: each view continues from where its last run ended (Feast keeps
that in the registry), so a re-run writes only new rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from featurestore.repo import open_store


def materialize(
    repo_path: Path,
    redis_address: str,
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    views: Sequence[str] | None = None,
) -> None:
    store = open_store(repo_path, redis_address)
    end = end or dt.datetime.now(dt.UTC)
    selected = list(views) if views else None
    if start is None:
        store.materialize_incremental(end_date=end, feature_views=selected)
    else:
        store.materialize(start_date=start, end_date=end, feature_views=selected)
