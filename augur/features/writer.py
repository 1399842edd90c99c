"""The write path: Arrow rows of one feature view -> Feast's hash fields plus a packed vector.

Every field Feast writes (key, mmh3 feature fields, ValueProto values, `_ts:<view>`) is
byte-identical to Feast's Redis online store, so `get_online_features` reads what this
writes; the packed vector (`augur.features.packed`) rides along in the same HSET. Feast's
rule holds: a row whose event time is not newer than the stored one is skipped. Values and
whole Redis commands are serialized for a batch of rows at once (`augur.features.commands`)
and sent down one connection as one pipeline (`augur.features.resp`), instead of a Python
object per value.

Like Feast's writer, it reads the stored event times first and writes after: two writers
racing on the same entity can still let the older row land last.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis

from augur.features.commands import resp_commands, resp_rows
from augur.features.connection import RedisTimeouts
from augur.features.keys import KeyEncoder, feature_field, timestamp_field
from augur.features.packed import layout_id, pack, vector_field
from augur.features.ragged import Ragged
from augur.features.resp import Channel
from augur.features.values import DTYPES, encode_column, encode_timestamps, timestamp_parts

# The float32 range of the packed vector models read: a finite value beyond it is inf there.
FLOAT32_MAX = float(np.finfo(np.float32).max)
DEFAULT_MAX_FUTURE_SKEW_S = 300.0  # config.WriteConfig.max_future_skew_s
CHUNK_ROWS = 10_000  # rows per pipeline: bounds memory and how long one pipeline holds Redis
# Bulk writes: a pipeline of thousands of commands may take seconds on a busy Redis.
WRITE_TIMEOUTS = RedisTimeouts(connect_s=5.0, read_s=60.0)


@dataclass(frozen=True)
class ViewSchema:
    """What the writer needs of a Feast feature view, as plain data."""

    name: str
    join_keys: tuple[str, ...]
    key_types: tuple[str, ...]  # "int64" | "string", per join key
    features: tuple[tuple[str, str], ...]  # (name, Feast dtype), schema order

    @property
    def layout(self) -> int:
        return layout_id(self.name, self.features)


@dataclass
class WriteStats:
    written: int = 0  # rows stored
    skipped: int = 0  # rows no newer than what the store (or this batch) already had


class OnlineWriter:
    def __init__(
        self,
        client: redis.Redis,
        project: str,
        key_ttl_seconds: int | None = None,
        max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
    ):
        self._client = client
        self._project = project
        self._key_ttl = key_ttl_seconds
        self._max_future_skew_s = max_future_skew_s

    def write(
        self,
        view: ViewSchema,
        table: pa.Table,
        timestamp_column: str = "event_timestamp",
        progress: Callable[[int], object] | None = None,
    ) -> WriteStats:
        """Write the rows of `table` (join keys, features, event time) for `view`.

        Chunks overlap with Redis: a chunk's HSETs are sent and, while Redis applies them,
        the next chunk is encoded; its stored event times are then read (after the HSET
        replies, on the same connection) to pick the rows that are newer."""
        if not isinstance(self._client, redis.Redis):  # a ClusterStore: per node, at once
            return self._client.write(self, view, table, timestamp_column, progress)
        _check_columns(view, table, timestamp_column)
        # Checked over the whole table before the first write: a refused batch writes nothing.
        _check_event_times(view, table.column(timestamp_column), self._max_future_skew_s)
        _check_values(view, table)
        stats = WriteStats()
        encoder = KeyEncoder(view.join_keys, view.key_types, self._project)
        with Channel(self._client) as channel:
            pending = 0  # replies still to come for the HSETs (and EXPIREs) already sent
            for start in range(0, table.num_rows, CHUNK_ROWS):
                chunk = table.slice(start, CHUNK_ROWS)
                batch = self._encode(view, encoder, chunk, timestamp_column)
                stamp = timestamp_field(view.name)
                channel.send(resp_commands([b"HMGET", batch.keys, stamp], len(batch.rows)))
                stored = channel.receive_one_field(len(batch.rows), integers=pending)
                keep = batch.newer_than(stored)
                pending = batch.send(channel, keep)
                stats.written += int(keep.sum())
                stats.skipped += chunk.num_rows - int(keep.sum())
                if progress is not None:
                    progress(chunk.num_rows)
            channel.receive(0, integers=pending)
        return stats

    def _encode(
        self, view: ViewSchema, encoder: KeyEncoder, chunk: pa.Table, timestamp_column: str
    ) -> _Batch:
        """Everything of a chunk's HSETs that does not depend on what Redis holds: per key
        the newest row of the chunk (the first of equals, as Feast keeps), encoded."""
        keys = _key_column(encoder, chunk, view)
        micros = _event_micros(chunk.column(timestamp_column))
        rows_as_one = np.ascontiguousarray(keys.data).view(f"V{keys.data.shape[1]}").ravel()
        key_id = np.unique(rows_as_one, return_inverse=True)[1].ravel()
        order = np.lexsort((np.arange(len(keys)), -micros, key_id))
        first = np.ones(len(order), bool)
        first[1:] = key_id[order[1:]] != key_id[order[:-1]]
        rows = np.sort(order[first])
        micros = micros[rows]
        seconds, nanos = micros // 1_000_000, (micros % 1_000_000) * 1000
        n = len(rows)
        keys = keys.take(rows)
        fields: list[Ragged | bytes] = []
        vector = np.empty((n, len(view.features)), np.float32)
        for j, (name, dtype) in enumerate(view.features):
            values, present = _column(chunk.column(name), dtype)
            values, present = values[rows], present[rows]
            fields += [feature_field(view.name, name), encode_column(values, present, dtype)]
            vector[:, j] = np.where(present, values.astype(np.float32), np.nan)
        stamps = encode_timestamps(seconds, nanos)
        # The vector and its stamp first: a new hash keeps its fields in the order written,
        # and Redis finds an HMGET's fields by a walk from the first, so a read of these two
        # (every Predict's) skips the view's feature fields (a sixth of Redis's CPU on the
        # fraud benchmark's reads). Feast reads fields by name; the order is nothing to it.
        args: list[Ragged | bytes] = [
            b"HSET",
            keys,
            vector_field(view.name),
            pack(view.layout, seconds, nanos, stamps.trimmed(), vector),
            timestamp_field(view.name),
            stamps,
            *fields,
        ]
        commands = [args]
        if self._key_ttl:
            commands.append([b"EXPIRE", keys, b"%d" % self._key_ttl])
        # Built before Redis says which rows are newer, so that it overlaps Redis applying
        # the previous chunk; the rows found not newer are cut out afterwards.
        payload, lengths = resp_rows(commands, n)
        return _Batch(rows, keys, micros * 1000, payload, np.cumsum(lengths), len(commands))


@dataclass(frozen=True)
class _Batch:
    rows: np.ndarray  # the chunk's rows to write, one per key, if newer than what is stored
    keys: Ragged  # their Redis keys
    nanos: np.ndarray  # their event times, epoch nanoseconds
    payload: bytes  # per row its HSET (and EXPIRE), in RESP, rows in order
    ends: np.ndarray  # where each row's commands end in `payload`
    per_row: int  # commands per row

    def send(self, channel: Channel, keep: np.ndarray) -> int:
        """Send the commands of the rows to keep; return how many replies will come."""
        n = int(keep.sum())
        if n == len(keep):
            channel.send(self.payload)
        elif n:
            starts = np.concatenate([[0], self.ends[:-1]])
            view = memoryview(self.payload)
            picked = zip(starts[keep].tolist(), self.ends[keep].tolist(), strict=True)
            channel.send(b"".join(view[start:end] for start, end in picked))
        return n * self.per_row

    def newer_than(self, stored: list) -> np.ndarray:
        """Which rows are newer than the `_ts:<view>` replies (as Feast compares them)."""
        keep = np.ones(len(self.rows), bool)
        for i, reply in enumerate(stored):
            raw = reply[0]
            if raw is not None:
                seconds, nanos = timestamp_parts(raw)
                before = seconds * 1_000_000_000 + nanos
                keep[i] = not (before and self.nanos[i] <= before)
        return keep


def _key_column(encoder: KeyEncoder, chunk: pa.Table, view: ViewSchema) -> Ragged:
    if all(kind == "int64" for kind in view.key_types):
        columns = [chunk.column(k).cast(pa.int64()).to_numpy() for k in view.join_keys]
        return Ragged.fixed(encoder.keys(columns))
    columns = [chunk.column(k).to_pylist() for k in view.join_keys]
    return Ragged.from_bytes([encoder.key(values) for values in zip(*columns, strict=True)])


def _event_micros(column: pa.ChunkedArray) -> np.ndarray:
    """Event times as int64 epoch microseconds (Feast keeps microsecond precision)."""
    if not pa.types.is_timestamp(column.type):
        raise ValueError(f"event time column has type {column.type}; expected a timestamp")
    if column.null_count:
        raise ValueError("event time column has nulls; every row needs an event time")
    as_us = pc.cast(column, pa.timestamp("us", tz=column.type.tz), safe=False)
    return as_us.cast(pa.int64()).to_numpy()


def _column(column: pa.ChunkedArray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """A feature column as numbers of Feast type `dtype` and where a value is present."""
    present = ~column.is_null().to_numpy(zero_copy_only=False)
    wire = DTYPES[dtype].wire
    if wire != "varint":
        values = column.cast(pa.float64()).fill_null(np.nan).to_numpy()
        return values, present & ~np.isnan(values)
    if dtype == "Bool":
        return column.cast(pa.bool_()).fill_null(False).to_numpy(zero_copy_only=False), present
    if pa.types.is_timestamp(column.type):  # UnixTimestamp: Feast stores epoch seconds
        column = pc.cast(column, pa.timestamp("s", tz=column.type.tz), safe=False)
    return column.cast(pa.int64()).fill_null(0).to_numpy(), present


def _check_columns(view: ViewSchema, table: pa.Table, timestamp_column: str) -> None:
    needed = [*view.join_keys, *(name for name, _ in view.features), timestamp_column]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise ValueError(f"rows for feature view {view.name!r} lack column(s) {', '.join(missing)}")


def _check_event_times(view: ViewSchema, column: pa.ChunkedArray, skew_s: float) -> None:
    micros = _event_micros(column)
    limit = int((time.time() + skew_s) * 1_000_000)
    ahead = micros > limit
    if ahead.any():
        latest = dt.datetime.fromtimestamp(int(micros.max()) / 1e6, dt.UTC)
        raise ValueError(
            f"feature view {view.name!r}: {int(ahead.sum()):,} row(s) have event times more "
            f"than {skew_s:g}s in the future (latest {latest.isoformat()}); a row from the "
            f"future would hide every later row of its entity (write.max_future_skew_s)"
        )


def _check_values(view: ViewSchema, table: pa.Table) -> None:
    """Refuse inf, and finite values beyond float32 (inf to models), in float features. They
    are refused rather than written as missing: a value that cannot be real means the
    source is broken, and a silent NaN would hide that until models drift. NaN and null
    stay what they always were, missing."""
    for name, dtype in view.features:
        if DTYPES[dtype].wire == "varint":
            continue
        values = table.column(name).cast(pa.float64()).fill_null(np.nan).to_numpy()
        bad = np.abs(values) > FLOAT32_MAX  # NaN compares False: missing, not refused
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"feature view {view.name!r}: feature {name!r} has {int(bad.sum()):,} value(s) "
                f"that are infinite or beyond the float32 range models take (±3.4e38), the "
                f"first {values[first]} in row {first}"
            )
