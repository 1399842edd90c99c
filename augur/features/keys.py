"""Redis key and hash-field encoding, byte-identical to Feast's Redis online store.

Key: Feast's serialized entity key (format version 3: join keys sorted by name) followed
by the project name. Field: murmur3 of "<view>:<feature>", first four little-endian bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import mmh3
import numpy as np

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_STRING, _INT64 = 2, 4  # feast.types.ValueType
_INT64_HEAD = _U32.pack(_INT64) + _U32.pack(8)  # an int64 key value's type and size
_STRING_TYPE = _U32.pack(_STRING)


def feature_field(view: str, feature: str) -> bytes:
    return struct.pack("<Q", mmh3.hash(f"{view}:{feature}", signed=False))[:4]


def timestamp_field(view: str) -> bytes:
    return f"_ts:{view}".encode()


class KeyEncoder:
    """Builds Redis keys for one set of join keys; the constant parts are encoded once."""

    def __init__(self, join_keys: Sequence[str], join_key_types: Sequence[str], project: str):
        order = sorted(range(len(join_keys)), key=lambda i: join_keys[i])
        self.order = tuple(order)  # positions of the caller's columns in key order
        self.types = tuple(join_key_types[i] for i in order)
        head = [_U32.pack(len(join_keys))]
        for i in order:
            name = join_keys[i].encode()
            head += [_U32.pack(_STRING), _U32.pack(len(name)), name]
        self._head = b"".join(head)
        self._tail = project.encode()
        self._layout: np.dtype | None = None  # of `keys`' rows, built on first use
        # One int64 join key (the common case) is one format: the key's only varying part.
        self._one_int = self._head + _INT64_HEAD if self.types == ("int64",) else None

    def key(self, values: Sequence[int | str]) -> bytes:
        """`values` in the caller's join-key order (as given to the constructor)."""
        if self._one_int is not None:
            return self._one_int + _I64.pack(values[0]) + self._tail
        parts = [self._head]
        for i, kind in zip(self.order, self.types, strict=True):
            v = values[i]
            if kind == "int64":
                parts += [_INT64_HEAD, _I64.pack(v)]
            else:
                raw = v.encode()
                parts += [_STRING_TYPE, _U32.pack(len(raw)), raw]
        parts.append(self._tail)
        return b"".join(parts)

    def int64_parts(self) -> tuple[bytes, bytes, bytes]:
        """(head, what precedes each value, tail) of a key whose join keys are all int64:
        head + (part + 8-byte value, per join key in key order) + tail."""
        if any(kind != "int64" for kind in self.types):
            raise ValueError("int64_parts needs int64 join keys")
        return self._head, _INT64_HEAD, self._tail

    def keys(self, columns: Sequence[np.ndarray]) -> np.ndarray:
        """The keys of many entities at once, as uint8 rows: the same bytes as `key` on each.
        `columns` in the caller's join-key order; only for keys that are all int64."""
        if any(kind != "int64" for kind in self.types):
            raise ValueError("vectorised keys need int64 join keys; use key() per entity")
        if self._layout is None:  # building a structured dtype costs more than using it
            fields = [("head", f"S{len(self._head)}")]
            for j in range(len(self.order)):
                fields += [(f"type{j}", "<u4"), (f"size{j}", "<u4"), (f"value{j}", "<i8")]
            fields.append(("tail", f"S{len(self._tail)}"))
            self._layout = np.dtype(fields)
        n = len(columns[0]) if columns else 0
        rows = np.empty(n, self._layout)
        rows["head"] = self._head
        for j, i in enumerate(self.order):
            rows[f"type{j}"] = _INT64
            rows[f"size{j}"] = 8
            rows[f"value{j}"] = columns[i]
        rows["tail"] = self._tail
        return rows.view(np.uint8).reshape(n, rows.dtype.itemsize)
