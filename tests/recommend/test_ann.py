"""The IVF cosine index against brute force."""

from __future__ import annotations

import numpy as np

from portrait.recommend.ann import CosineIndex, unit_rows


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // 50, dim))
    return (centres[rng.integers(centres.shape[0], size=n)]
            + 0.6 * rng.normal(size=(n, dim))).astype(np.float32)


def _brute(vectors: np.ndarray, q: np.ndarray, n: int) -> np.ndarray:
    u = unit_rows(vectors)
    sims = u @ (q / np.linalg.norm(q))
    return np.argsort(-sims, kind="stable")[:n]


def test_small_catalogues_are_searched_exactly() -> None:
    x = _clustered(2_000, 16)
    index = CosineIndex(x)
    assert index.exact
    for q in (0, 7, 1999):
        got, sims = index.search(x[q], 25)
        assert np.array_equal(got, _brute(x, x[q], 25))
        assert np.all(np.diff(sims) <= 0)


def test_probing_every_cell_is_exact_and_few_cells_keep_recall_high() -> None:
    x = _clustered(6_000, 16)
    full = CosineIndex(x, exact_below=0, nprobe=10**6)
    some = CosineIndex(x, exact_below=0, nprobe=16)
    assert not some.exact
    assert some.centroids.shape[0] == int(2 * np.sqrt(6_000))
    recalls = []
    for q in np.random.default_rng(1).integers(6_000, size=50):
        want = _brute(x, x[q], 20)
        assert set(full.search(x[q], 20)[0]) == set(want)
        recalls.append(len(set(some.search(x[q], 20)[0]) & set(want)) / 20)
    assert np.mean(recalls) >= 0.9, np.mean(recalls)


def test_exclude_and_zero_vectors() -> None:
    x = _clustered(500, 8)
    x[3] = 0.0
    index = CosineIndex(x)
    got, _ = index.search(x[10], 5, exclude=np.array([10]))
    assert 10 not in got
    assert np.array_equal(got, [i for i in _brute(x, x[10], 6) if i != 10][:5])
    every, sims = index.search(x[10], 500)
    assert np.isfinite(sims).all()
    assert sims[list(every).index(3)] == 0.0  # a zero vector has cosine 0, not NaN
    assert index.search(x[10], 0)[0].size == 0
