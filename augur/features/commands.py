"""Redis commands in RESP: the one place their bytes are built, for reads and writes alike.

A read sends HMGET or HGETALL per distinct entity key (`for_group`), built from the parts
around the key (`around_key`) that a field set fixes once; the C loop
(augur.features._native.commands_int64) and one-entity templates fill in only the 8-byte ids
around which `around_int64_ids` cuts those parts. The writer's batches of HSETs are built a
column at a time (`resp_rows`). Sending them is augur.features.resp's job.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from augur.features.keys import KeyEncoder
from augur.features.plan import KeyGroup
from augur.features.ragged import Ragged, joined

if TYPE_CHECKING:
    from augur.features.entities import DistinctKeys

_I64 = struct.Struct("<q")


def command_args(*args: bytes) -> bytes:
    """Arguments of a command in RESP, without the array header: bulk strings in a row."""
    return b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args)


def command(*args: bytes) -> bytes:
    """One whole command in RESP: its array header, then its arguments."""
    return b"*%d\r\n" % len(args) + command_args(*args)


@functools.lru_cache(maxsize=1024)
def around_key(name: bytes, fields: tuple[bytes, ...]) -> tuple[bytes, bytes]:
    """The RESP before and after the key of `name key *fields`: built once per field set."""
    return b"*%d\r\n" % (2 + len(fields)) + command_args(name), command_args(*fields)


def for_keys(head: bytes, tail: bytes, keys: Iterable[bytes]) -> bytes:
    """`head` + the key as a bulk string + `tail`, per key: a command per key."""
    return b"".join(b"%s$%d\r\n%s\r\n%s" % (head, len(k), k, tail) for k in keys)


def for_key_matrix(head: bytes, tail: bytes, matrix: np.ndarray) -> bytes:
    """`for_keys` for keys of one width, the rows of a uint8 matrix: built in a few numpy
    passes rather than a format per key."""
    width = matrix.shape[1]
    before = np.frombuffer(head + b"$%d\r\n" % width, np.uint8)
    after = np.frombuffer(b"\r\n" + tail, np.uint8)
    out = np.empty((len(matrix), len(before) + width + len(after)), np.uint8)
    out[:, : len(before)] = before
    out[:, len(before) : len(before) + width] = matrix
    out[:, len(before) + width :] = after
    return out.tobytes()


def around_int64_ids(encoder: KeyEncoder, head: bytes, tail: bytes) -> tuple[bytes, bytes, bytes]:
    """`head` + a key of `encoder` (int64 join keys) as a bulk string + `tail`, in the parts
    around the key's 8-byte ids: the bytes before the ids, what precedes each id, and the
    bytes after the last. What the C loop and the one-entity templates fill in."""
    key_head, part, key_tail = encoder.int64_parts()
    size = len(key_head) + len(encoder.order) * (len(part) + 8) + len(key_tail)
    return head + b"$%d\r\n" % size + key_head, part, key_tail + b"\r\n" + tail


def group_fields(group: KeyGroup, packed: bool, hgetall: bool) -> tuple[bytes, tuple[bytes, ...]]:
    """The command and fields that read `group`: HMGET of its vectors, else HGETALL or HMGET
    of Feast's fields."""
    if packed:
        return b"HMGET", group.vector_fields
    if hgetall:
        return b"HGETALL", ()
    return b"HMGET", group.fields


def for_group(group: KeyGroup, keys: DistinctKeys, packed: bool, hgetall: bool) -> bytes:
    """A group's commands for its distinct keys (see `group_fields`)."""
    return keys.commands(*around_key(*group_fields(group, packed, hgetall)))


class OneEntityTemplate:
    """The RESP of a read of one entity whose join keys are all int64, HMGET of every group's
    vectors, as text between the ids: built once per plan, so that a read packs only its ids
    (built per read, a key and its command were about a fifth of such a read's own time)."""

    __slots__ = ("first", "rest")

    def __init__(self, groups: Sequence[KeyGroup], encoders: Sequence[KeyEncoder]):
        texts, names = [b""], []
        for group, encoder in zip(groups, encoders, strict=True):
            head, tail = around_key(b"HMGET", group.vector_fields)
            before, part, after = around_int64_ids(encoder, head, tail)
            texts[-1] += before
            for i in encoder.order:
                texts[-1] += part
                names.append(group.join_keys[i])
                texts.append(b"")
            texts[-1] += after
        self.first = texts[0]  # the bytes before the first id
        self.rest = list(zip(names, texts[1:], strict=True))  # per id: join key, bytes after

    def fill(self, entities: Mapping[str, Sequence]) -> bytes:
        """The commands for row 0 of `entities`."""
        parts = [self.first]
        pack = _I64.pack
        for name, after in self.rest:
            parts += (pack(entities[name][0]), after)
        return b"".join(parts)


def resp_commands(args: Sequence[Ragged | bytes], n: int) -> bytes:
    """n Redis commands in RESP, concatenated: command i is the array of every arg's row i
    (an arg given as bytes is the same in every command)."""
    return resp_rows([args], n)[0]


def resp_rows(commands: Sequence[Sequence[Ragged | bytes]], n: int) -> tuple[bytes, np.ndarray]:
    """n rows of Redis commands in RESP, concatenated, and each row's length in bytes: row i
    holds every command in turn, built from its args' row i (as in `resp_commands`), so
    that any subset of rows can be cut out and sent."""
    parts = []
    for args in commands:
        parts.append(Ragged.constant(b"*%d\r\n" % len(args), n))
        for arg in args:
            if isinstance(arg, bytes):
                parts.append(Ragged.constant(command_args(arg), n))
            else:
                dollar, crlf = Ragged.constant(b"$", n), Ragged.constant(b"\r\n", n)
                parts += [dollar, _decimal(arg.lengths), crlf, arg, crlf]
    flat, lengths = joined(parts)
    return flat.tobytes(), lengths


def _decimal(numbers: np.ndarray) -> Ragged:
    """Non-negative integers as ASCII decimal."""
    numbers = np.asarray(numbers, np.int64)
    width = max(1, len(str(int(numbers.max())))) if len(numbers) else 1
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits = (numbers[:, None] // powers) % 10
    lengths = 1 + (numbers[:, None] >= 10 ** np.arange(1, width, dtype=np.int64)).sum(1)
    # Left-align: drop the leading zeros of each row.
    shift = width - lengths
    cols = np.arange(width)[None, :] + shift[:, None]
    aligned = np.take_along_axis(digits, np.minimum(cols, width - 1), axis=1)
    data = (aligned + ord("0")).astype(np.uint8)
    data[np.arange(width) >= lengths[:, None]] = 0
    return Ragged(data, lengths)
