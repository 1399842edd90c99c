"""Redis key and hash-field encoding, byte-identical to Feast's Redis online store.

Key: Feast's serialized entity key (format version 3: join keys sorted by name) followed
by the project name. Field: murmur3 of "<view>:<feature>", first four little-endian bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import mmh3

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_STRING, _INT64 = 2, 4  # feast.types.ValueType


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

    def key(self, values: Sequence[int | str]) -> bytes:
        """`values` in the caller's join-key order (as given to the constructor)."""
        parts = [self._head]
        for i, kind in zip(self.order, self.types, strict=True):
            v = values[i]
            if kind == "int64":
                parts += [_U32.pack(_INT64), _U32.pack(8), _I64.pack(v)]
            else:
                raw = v.encode()
                parts += [_U32.pack(_STRING), _U32.pack(len(raw)), raw]
        parts.append(self._tail)
        return b"".join(parts)
