"""Materialize offline feature rows into the online store with Feast's own engine.

Incremental by default: each view continues from where its last run ended (Feast keeps
that in the registry), so a re-run writes only new rows. Views run one at a time under a
progress bar, so a long run shows where it is.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from featurestore.plan_cache import refresh_cache
from featurestore.repo import open_store


def materialize(
    repo_path: Path,
    redis_address: str,
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    views: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Materialize each selected online view; return seconds spent per view."""
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
    spent: dict[str, float] = {}
    bar = tqdm(selected, desc="materialize", unit="view", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        began = time.perf_counter()
        if start is None:
            store.materialize_incremental(end_date=end, feature_views=[name])
        else:
            store.materialize(start_date=start, end_date=end, feature_views=[name])
        spent[name] = time.perf_counter() - began
    refresh_cache(store)  # the registry changed (materialization intervals): keep plans current
    return spent
