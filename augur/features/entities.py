"""A request's entity columns -> per key group, its distinct Redis keys and each row's index.

The request-level cache: an entity asked for in several rows is read once. Keys are built by
augur.features.keys (Feast's encoding); here they are deduplicated, in a dict for a few rows,
in numpy for many, in C (augur.features._native) for int64 ids where it is built. Each form
knows how to build its keys' commands (augur.features.commands).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from augur.features import commands
from augur.features.keys import KeyEncoder
from augur.features.native import native
from augur.features.plan import KeyGroup, ReadPlan

# Keys of int64 entities built and deduplicated in numpy from this many rows (a dict and
# one struct pack per key below it, where numpy's fixed costs dominate).
_VECTORISED_KEYS_FROM = 32


class EntityError(ValueError):
    """Entity columns that do not fit the plan; `field` names the offending column."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def row_count(plan: ReadPlan, entities: Mapping[str, Sequence]) -> int:
    """How many request rows the entity columns hold; EntityError when one is absent or
    the columns' lengths differ."""
    n = None
    for key in plan.entity_types:
        if key not in entities:
            raise EntityError(
                key, f"entity column {key!r} is required by feature service {plan.service!r}"
            )
        length = len(entities[key])
        if n is None:
            n = length
        elif length != n:
            raise EntityError(
                key, f"entity column {key!r} has {length} values; other columns have {n}"
            )
    return n or 0


class DistinctKeys(list):
    """Distinct Redis keys of a group, in the order their replies come back."""

    def commands(self, head: bytes, tail: bytes) -> bytes:
        """`head` + the key as a bulk string + `tail`, per key."""
        return commands.for_keys(head, tail, self)


class KeyMatrix(DistinctKeys):
    """Distinct keys built at once as the rows of a uint8 `matrix` (int64 join keys: every
    key the same width), so their commands are built at once too."""

    matrix: np.ndarray

    def commands(self, head: bytes, tail: bytes) -> bytes:
        return commands.for_key_matrix(head, tail, self.matrix)


class NativeKeys:
    """Distinct int64 entities of a group, numbered in C (augur.features._native), whose
    commands are built in C too; a key's bytes are built only when asked for (entities whose
    vectors are outdated)."""

    __slots__ = ("_encoder", "columns", "first")

    def __init__(self, encoder: KeyEncoder, columns: list, first: np.ndarray):
        self._encoder = encoder
        self.columns = columns  # in key order: int64 arrays or lists of ints
        self.first = first  # per distinct entity, the request row it first appears in

    @classmethod
    def build(cls, encoder: KeyEncoder, columns: list, n: int) -> tuple[NativeKeys, np.ndarray]:
        """The group's distinct keys and, per request row, its index among them."""
        ordered = [  # lists (the request decoder's) go to C as they are
            c if isinstance(c, list | tuple) else np.ascontiguousarray(c, np.int64)
            for c in (columns[i] for i in encoder.order)
        ]
        inverse, first = np.empty(n, np.int64), np.empty(n, np.int64)
        distinct = native.dedupe_int64(ordered, inverse, first)
        return cls(encoder, ordered, first[:distinct]), inverse

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, i: int) -> bytes:
        head, part, tail = self._encoder.int64_parts()
        row = self.first[i]
        values = (int(c[row]).to_bytes(8, "little", signed=True) for c in self.columns)
        return head + b"".join(part + v for v in values) + tail

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def commands(self, head: bytes, tail: bytes) -> bytes:
        """What `DistinctKeys.commands` builds, from the ids in C."""
        before, part, after = commands.around_int64_ids(self._encoder, head, tail)
        return native.commands_int64(self.columns, self.first, len(self), before, part, after)


class GroupKeys:
    """How one key group's distinct keys are found in a request's entity columns: its join
    keys and their encoder, worked out once per plan."""

    __slots__ = ("encoder", "int64", "join_keys")

    def __init__(self, plan: ReadPlan, group: KeyGroup):
        types = [plan.entity_types[k] for k in group.join_keys]
        self.join_keys = group.join_keys
        self.encoder = KeyEncoder(group.join_keys, types, plan.project)
        self.int64 = all(t == "int64" for t in types)

    def few(self, entities: Mapping[str, Sequence], n: int) -> tuple[DistinctKeys, list[int]]:
        """Distinct keys and, per request row, its index among them, in plain lists: a dict
        and one key built per distinct entity."""
        key = self.encoder.key
        if n == 1:  # the commonest read of all: nothing to deduplicate
            return DistinctKeys((key([entities[k][0] for k in self.join_keys]),)), [0]
        index: dict[tuple, int] = {}
        rows = zip(*(entities[k] for k in self.join_keys), strict=True)
        inverse = [index.setdefault(row, len(index)) for row in rows]
        return DistinctKeys(map(key, index)), inverse

    def many(self, entities: Mapping[str, Sequence], n: int) -> tuple[DistinctKeys, np.ndarray]:
        """`few`, the index an array; int64 ids of many rows deduplicated in numpy."""
        if n < _VECTORISED_KEYS_FROM or not self.int64:
            keys, inverse = self.few(entities, n)
            return keys, np.array(inverse, np.intp)
        columns = [entities[k] for k in self.join_keys]
        if len(columns) == 1:
            distinct, inverse = np.unique(np.asarray(columns[0], np.int64), return_inverse=True)
            built = self.encoder.keys([distinct])
        else:  # each row's ids as one opaque value: sorted by bytes, 2.5x a dict's speed
            rows = np.ascontiguousarray(np.array(columns, np.int64).T)
            distinct, inverse = np.unique(
                rows.view(f"V{rows.shape[1] * 8}").ravel(), return_inverse=True
            )
            distinct = distinct.view(np.int64).reshape(len(distinct), rows.shape[1])
            built = self.encoder.keys([distinct[:, i] for i in range(len(columns))])
        raw, width = built.tobytes(), built.shape[1]
        keys = KeyMatrix(raw[i : i + width] for i in range(0, len(raw), width))
        keys.matrix = built
        return keys, inverse.ravel()

    def native(self, entities: Mapping[str, Sequence], n: int) -> tuple[NativeKeys, np.ndarray]:
        """`many` for int64 ids, deduplicated in C: their commands are built in C too."""
        return NativeKeys.build(self.encoder, [entities[k] for k in self.join_keys], n)
