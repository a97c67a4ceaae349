"""An in-memory set of seen event ids with O(log n) membership per id.

The embedded store rebuilds it from the event log when a writer first needs
it, then keeps it up to date as batches commit. Ids are kept as two
independent 64-bit hashes (``h1`` sorted, ``h2`` alongside): a lookup is a
binary search on ``h1`` then a check of ``h2``; inserting a batch is a merge
into a small recent level, not a re-sort (see :class:`SeenSet`). Two
different ids agree on both hashes with probability about
``n**2 / 2**129`` (1e-26 for 100 million events). Hashes are Polars' seeded
hash: stable within a process, which is all an in-memory index needs (the
stored ids are the strings themselves).
"""

from __future__ import annotations

import numpy as np
import polars as pl

_SEED1, _SEED2 = 0x5EED_0001, 0x5EED_0002


def _hashes(ids: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    return (
        ids.hash(seed=_SEED1).to_numpy().astype(np.uint64, copy=False),
        ids.hash(seed=_SEED2).to_numpy().astype(np.uint64, copy=False),
    )


class _Sorted:
    """Two parallel hash arrays, sorted by ``h1``."""

    def __init__(self, h1: np.ndarray, h2: np.ndarray) -> None:
        self.h1, self.h2 = h1, h2

    @classmethod
    def empty(cls) -> _Sorted:
        return cls(np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.uint64))

    def contains(self, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
        """Membership of probes ``(s1, s2)``, ``s1`` sorted."""
        hit = np.zeros(s1.size, dtype=bool)
        if self.h1.size == 0:
            return hit
        lo = np.searchsorted(self.h1, s1, side="left")
        hi = np.searchsorted(self.h1, s1, side="right")
        single = (hi - lo) == 1
        idx = np.minimum(lo, self.h1.size - 1)
        hit[single] = self.h2[idx[single]] == s2[single]
        for i in np.nonzero((hi - lo) > 1)[0]:  # h1 collision: check the whole run
            hit[i] = bool((self.h2[lo[i] : hi[i]] == s2[i]).any())
        return hit

    def merged(self, a1: np.ndarray, a2: np.ndarray) -> _Sorted:
        """A copy with sorted ``(a1, a2)`` inserted (a merge, not a re-sort)."""
        if self.h1.size == 0:
            return _Sorted(a1, a2)
        pos = np.searchsorted(self.h1, a1)
        return _Sorted(np.insert(self.h1, pos, a1), np.insert(self.h2, pos, a2))


class SeenSet:
    """Membership of event ids (strings).

    Two levels, like a log-structured tree: a large ``main`` array and a small
    ``recent`` one that each batch is merged into; ``recent`` folds into
    ``main`` once it holds an eighth as many ids. A small batch then costs
    O(recent), not O(every id ever seen); each id is copied O(log n) times.
    """

    FOLD_MIN = 1 << 16

    def __init__(self, ids: pl.Series | None = None) -> None:
        self.main = _Sorted.empty()
        self.recent = _Sorted.empty()
        if ids is not None and ids.len():
            self.add(ids)

    def __len__(self) -> int:
        return int(self.main.h1.size + self.recent.h1.size)

    def contains(self, ids: pl.Series) -> pl.Series:
        """Boolean mask: which ``ids`` are in the set."""
        if ids.len() == 0 or len(self) == 0:
            return pl.Series(ids.name, np.zeros(ids.len(), dtype=bool))
        q1, q2 = _hashes(ids)
        order = np.argsort(q1)  # sorted probes walk the table in order: cache friendly
        s1, s2 = q1[order], q2[order]
        hit = self.main.contains(s1, s2) | self.recent.contains(s1, s2)
        found = np.empty_like(hit)
        found[order] = hit
        return pl.Series(ids.name, found)

    def add(self, ids: pl.Series) -> None:
        """Insert ids (duplicates of present ids are harmless but waste space)."""
        a1, a2 = _hashes(ids)
        order = np.argsort(a1)
        a1, a2 = a1[order], a2[order]
        self.recent = self.recent.merged(a1, a2)
        if self.recent.h1.size > max(self.FOLD_MIN, self.main.h1.size // 8):
            self.main = self.main.merged(self.recent.h1, self.recent.h2)
            self.recent = _Sorted.empty()
