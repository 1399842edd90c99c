"""Ragged byte columns: one byte string per row, held as a zero-padded uint8 matrix + lengths.

The writer builds Feast's value bytes and whole Redis commands (augur.features.commands) for
many rows at once with these, so serializing a million values costs a few numpy passes, not
a million Python objects. Not a general-purpose container: only what the write path needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ragged:
    data: np.ndarray  # uint8 (n, width): row i's bytes are data[i, :lengths[i]], zeros after
    lengths: np.ndarray  # int64 (n,)

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def constant(cls, value: bytes, n: int) -> Ragged:
        row = np.frombuffer(value, np.uint8)
        return cls(np.broadcast_to(row, (n, len(row))), np.full(n, len(row), np.int64))

    @classmethod
    def fixed(cls, data: np.ndarray, present: np.ndarray | None = None) -> Ragged:
        """Rows of one width; rows not `present` become empty strings."""
        lengths = np.full(len(data), data.shape[1], np.int64)
        if present is not None:
            lengths[~present] = 0
        return cls(data, lengths)

    @classmethod
    def from_bytes(cls, rows: Sequence[bytes]) -> Ragged:
        lengths = np.fromiter(map(len, rows), np.int64, len(rows))
        width = int(lengths.max()) if len(rows) else 0
        data = np.zeros((len(rows), width), np.uint8)
        data[np.arange(width) < lengths[:, None]] = np.frombuffer(b"".join(rows), np.uint8)
        return cls(data, lengths)

    def tobytes(self) -> bytes:
        """All rows' bytes, concatenated in row order."""
        return self.data[self._mask()].tobytes()

    def rows(self) -> list[bytes]:
        flat = self.tobytes()
        ends = np.cumsum(self.lengths).tolist()
        starts = [0, *ends[:-1]]
        return [flat[s:e] for s, e in zip(starts, ends, strict=True)]

    def trimmed(self) -> Ragged:
        """The same rows without the padding columns no row reaches (varints of small
        numbers use 2 of their 11 columns)."""
        width = int(self.lengths.max()) if len(self.lengths) else 0
        return self if width == self.data.shape[1] else Ragged(self.data[:, :width], self.lengths)

    def take(self, index: np.ndarray) -> Ragged:
        return Ragged(self.data[index], self.lengths[index])

    def _mask(self) -> np.ndarray:
        return np.arange(self.data.shape[1]) < self.lengths[:, None]


def concat(parts: Sequence[Ragged]) -> Ragged:
    """Row i of the result is row i of every part, joined."""
    flat, lengths = joined(parts)
    width = int(lengths.max()) if len(lengths) else 0
    data = np.zeros((len(lengths), width), np.uint8)
    data[np.arange(width) < lengths[:, None]] = flat
    return Ragged(data, lengths)


def joined(parts: Sequence[Ragged]) -> tuple[np.ndarray, np.ndarray]:
    """Every row of every part in row-major order, as flat bytes, and each row's length.

    The parts are laid side by side in one padded matrix and the padding is then dropped
    in one pass; parts whose rows all fill their width (constants, fixed-width values)
    have no padding, so when every part is such the matrix is already the result."""
    parts = [p.trimmed() for p in parts]
    n = len(parts[0]) if parts else 0
    full = np.empty((n, sum(p.data.shape[1] for p in parts)), np.uint8)
    keep: np.ndarray | None = None  # which bytes of `full` are not padding
    lengths = np.zeros(n, np.int64)
    at = 0
    for part in parts:
        width = part.data.shape[1]
        full[:, at : at + width] = part.data
        if not (part.lengths == width).all():
            if keep is None:
                keep = np.ones(full.shape, bool)
            keep[:, at : at + width] = part._mask()
        lengths += part.lengths
        at += width
    return (full.ravel() if keep is None else full[keep]), lengths
