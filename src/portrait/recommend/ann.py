"""Approximate cosine neighbours: a small inverted-file (IVF) index.

Item-item neighbours of a user's recent items are a per-request need; an
exact answer reads every item's factors (100,000 x 64 float32 = 25 MB, about
1 ms a seed on one core). The index clusters the unit-length vectors with
spherical k-means (``cells`` centroids, about ``2 * sqrt(n)``) at build time;
a query ranks the centroids and scores exactly only the items of its
``nprobe`` nearest cells (a few thousand of 100,000). Catalogues up to
``exact_below`` items (default 20,000) are searched exhaustively, so small
catalogues get exact answers. The recall of the approximation is checked
against brute force in ``tests/recommend/test_ann.py``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

EXACT_BELOW = 20_000


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero), float32."""
    v = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    out: np.ndarray = v / np.where(norms > 0, norms, 1.0)
    return out


class CosineIndex:
    """Nearest rows of ``vectors`` by cosine, exact or through IVF cells."""

    def __init__(self, vectors: np.ndarray, *, nprobe: int = 16, iterations: int = 6,
                 seed: int = 0, exact_below: int = EXACT_BELOW) -> None:
        self.unit = unit_rows(vectors)
        n = self.unit.shape[0]
        self.nprobe = nprobe
        self.exact = n < exact_below
        if self.exact:
            return
        cells = max(1, int(2 * np.sqrt(n)))
        self.centroids, assign = _spherical_kmeans(self.unit, cells, iterations, seed)
        order = np.argsort(assign, kind="stable")
        self._members = order
        self._starts = np.searchsorted(assign[order], np.arange(cells + 1))
        self._cell_unit = self.unit[order]  # members contiguous per cell

    def search(self, query: np.ndarray, n: int, *,
               exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` rows closest to ``query`` (best first) and their cosines."""
        q = np.asarray(query, np.float32)
        q = q / max(float(np.linalg.norm(q)), 1e-30)
        if self.exact:
            idx = np.arange(self.unit.shape[0])
            sims = self.unit @ q
        else:
            idx, sims = self._probe(q)
        if exclude is not None and exclude.size:
            keep = ~np.isin(idx, exclude)
            idx, sims = idx[keep], sims[keep]
        n = min(n, idx.size)
        if n <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        top = np.argpartition(sims, sims.size - n)[sims.size - n :]
        top = top[np.argsort(-sims[top], kind="stable")]
        return idx[top], sims[top]

    def _probe(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cells = self.centroids.shape[0]
        probe = min(self.nprobe, cells)
        near = np.argpartition(self.centroids @ q, cells - probe)[cells - probe :]
        spans = [(self._starts[c], self._starts[c + 1]) for c in near.tolist()]
        members = np.concatenate([self._members[a:b] for a, b in spans])
        sims = np.concatenate([self._cell_unit[a:b] @ q for a, b in spans])  # no copy
        return members, sims

    @property
    def nbytes(self) -> int:
        extra = 0 if self.exact else (self.centroids.nbytes + self._members.nbytes
                                      + self._starts.nbytes + self._cell_unit.nbytes)
        return int(self.unit.nbytes + extra)


def _spherical_kmeans(unit: np.ndarray, cells: int, iterations: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (unit length) and each row's cell, by cosine k-means."""
    rng = np.random.default_rng(seed)
    centroids = unit[rng.choice(unit.shape[0], cells, replace=False)].copy()
    assign = np.zeros(unit.shape[0], np.int64)
    for _ in range(iterations):
        assign = _assign(unit, centroids)
        onehot = sp.csr_matrix((np.ones(assign.size, np.float32), (assign, np.arange(assign.size))),
                               shape=(cells, unit.shape[0]))
        sums = np.asarray(onehot @ unit, np.float32)
        empty = ~sums.any(axis=1)
        sums[empty] = unit[rng.choice(unit.shape[0], int(empty.sum()), replace=False)]
        centroids = unit_rows(sums)
    return centroids, _assign(unit, centroids)


def _assign(unit: np.ndarray, centroids: np.ndarray, block: int = 16_384) -> np.ndarray:
    out = np.empty(unit.shape[0], np.int64)
    for start in range(0, unit.shape[0], block):
        out[start : start + block] = (unit[start : start + block] @ centroids.T).argmax(axis=1)
    return out
