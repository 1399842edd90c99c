"""Writes to a Redis Cluster: a table's rows split by the node owning each key, each node's
rows written by the one-node writer (augur.features.writer) on its own thread, all nodes at
once. A node that fails mid-write (a failover, a resharding) has its rows written again after
the slot map is relearnt: the writer skips rows already stored, so a rerun leaves the same
bytes. Not the read path (augur.features.cluster).
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import redis
from redis.crc import key_slot

from augur.features.keys import KeyEncoder
from augur.features.writer import (
    OnlineWriter,
    ViewSchema,
    WriteStats,
    _check_columns,
    _check_event_times,
    _check_values,
    _key_column,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from augur.features.cluster import ClusterStore

# How long a write keeps retrying the rows of a failed node: longer than a failover takes
# (a replica is promoted some node timeouts after its master stops answering).
RETRY_FOR_S = 30.0
_FAILURES = (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, ConnectionError)


def write(
    store: ClusterStore,
    writer: OnlineWriter,
    view: ViewSchema,
    table: pa.Table,
    timestamp_column: str,
    progress: Callable[[int], object] | None,
) -> WriteStats:
    # Checked over the whole table before the first write: a refused batch writes nothing.
    _check_columns(view, table, timestamp_column)
    _check_event_times(view, table.column(timestamp_column), writer._max_future_skew_s)
    _check_values(view, table)
    encoder = KeyEncoder(view.join_keys, view.key_types, writer._project)
    keys = _key_column(encoder, table, view).rows()
    slots = np.fromiter(map(key_slot, keys), np.int64, len(keys))
    stats = WriteStats()
    left = np.arange(table.num_rows)
    deadline = time.monotonic() + RETRY_FOR_S
    while True:
        before = len(left)
        left, why = _write_round(store, writer, view, table, timestamp_column, slots, left, stats)
        if progress is not None:
            progress(before - len(left))
        if not len(left):
            return stats
        if time.monotonic() > deadline:
            raise redis.ConnectionError(
                f"Redis Cluster at {store.seed_list}: {len(left)} rows not written after "
                f"{RETRY_FOR_S:.0f} s of retries ({why}); rerun: rows already written are skipped"
            )
        time.sleep(0.2)  # a failover in progress: give the replica time to take over
        with contextlib.suppress(redis.ConnectionError):
            store.refresh()


def _write_round(store, writer, view, table, timestamp_column, slots, rows, stats):
    """One write of `rows`, each node's share at once; the rows whose node failed, and why."""
    owners = np.frombuffer(store.slots.owner_of, np.uint8)[slots[rows]]
    nodes = store.slots.nodes
    shares = {k: rows[owners == k] for k in np.unique(owners).tolist()}
    unowned = shares.pop(len(nodes), None)

    def one(k: int) -> WriteStats:
        node = store.node(nodes[k])
        mine = OnlineWriter(
            node.client, writer._project, writer._key_ttl, writer._max_future_skew_s
        )
        return mine.write(view, table.take(pa.array(shares[k])), timestamp_column)

    failed, why = [], "slot without an owner" if unowned is not None else ""
    if unowned is not None:
        failed.append(unowned)
    with ThreadPoolExecutor(max(len(shares), 1), thread_name_prefix="augur-write") as pool:
        running = {k: pool.submit(one, k) for k in shares}
        for k, future in running.items():
            try:
                done = future.result()
            except _FAILURES as e:
                failed.append(shares[k])
                why = f"{nodes[k][0]}:{nodes[k][1]}: {e}"
                continue
            stats.written += done.written
            stats.skipped += done.skipped
    return (np.concatenate(failed) if failed else rows[:0]), why
