"""Evaluation metrics: ranking, category, classification and bootstrap intervals.

Everything here is pure and vectorised (numpy/scipy): arrays in, arrays or
floats out, no I/O. Per-user metrics return one float64 per user with NaN
where the metric is undefined (a user with nothing to find); callers drop NaN
before averaging, and :func:`bootstrap_ci` does so itself.

Ranking rule shared by :func:`top_k` and :func:`reciprocal_rank`: higher score
first, ties broken by the lower item index, NaN and -inf scores after every
finite score (tied among themselves), excluded items never ranked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.stats import rankdata

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_BOOT_CHUNK = 64  # bootstrap draws generated per batch, bounds memory to 64 x n_groups
_BLOCK_CELLS = 1 << 20  # score cells ranked per block (8 MiB of float64 keys)


# --------------------------------------------------------------------------- ranking


def _pairs(m: Any) -> tuple[IntArray, IntArray]:
    """(rows, cols) of the nonzero entries of a sparse matrix, duplicates summed."""
    coo = sp.coo_matrix(m, copy=True)
    coo.sum_duplicates()
    coo.eliminate_zeros()
    return coo.row.astype(np.int64), coo.col.astype(np.int64)


def _rank_keys(scores: FloatArray, excluded: tuple[IntArray, IntArray] | None) -> FloatArray:
    """Ascending sort keys: -score, +inf for NaN/-inf scores, NaN for excluded items."""
    key = np.array(scores, dtype=np.float64)  # always a copy: the caller's scores stay intact
    np.negative(key, out=key)
    key[np.isnan(key)] = np.inf
    if excluded is not None:
        key[excluded] = np.nan  # numpy sorts and partitions NaN last
    return key


def _blocks(scores: npt.ArrayLike, exclude: Any | None) -> Iterator[tuple[int, FloatArray]]:
    """(first row, sort keys) for blocks of rows; blocks keep big score matrices cache-sized."""
    arr = np.asarray(scores)
    if arr.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_users, n_items), got shape {arr.shape}")
    if exclude is not None and exclude.shape != arr.shape:
        raise ValueError(f"exclude shape {exclude.shape} != scores shape {arr.shape}")
    ex = None if exclude is None else sp.csr_matrix(exclude)
    step = max(1, _BLOCK_CELLS // max(arr.shape[1], 1))
    for start in range(0, arr.shape[0], step):
        stop = min(start + step, arr.shape[0])
        yield start, _rank_keys(arr[start:stop], None if ex is None else _pairs(ex[start:stop]))


def _lowest_index_fill(key: FloatArray, kth: FloatArray, k: int) -> IntArray:
    """Item indices of the k best per row when ties straddle the k-th key."""
    less = key < kth[:, None]
    tied = key == kth[:, None]
    room = k - less.sum(axis=1)
    chosen = less | (tied & (np.cumsum(tied, axis=1) <= room[:, None]))
    return np.nonzero(chosen)[1].reshape(len(key), k).astype(np.int64)


def _top_block(key: FloatArray, m: int) -> IntArray:
    """The m best items per row of a key block (m <= n_items), -1 for excluded items."""
    part = np.argpartition(key, m - 1, axis=1)[:, :m]
    kth = np.take_along_axis(key, part[:, m - 1 : m], axis=1)[:, 0]
    n_tied = (key == kth[:, None]).sum(axis=1)
    chosen_tied = (np.take_along_axis(key, part, axis=1) == kth[:, None]).sum(axis=1)
    fix = np.flatnonzero(n_tied > chosen_tied)  # tied items left out may have lower indices
    if fix.size:
        part[fix] = _lowest_index_fill(key[fix], kth[fix], m)
    part.sort(axis=1)  # index order, so the stable sort below breaks ties by index
    vals = np.take_along_axis(key, part, axis=1)
    order = np.argsort(vals, axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top[np.isnan(np.take_along_axis(vals, order, axis=1))] = -1
    return top


def top_k(scores: npt.ArrayLike, k: int, exclude: Any | None = None) -> IntArray:
    """The k best items per user, best first, padded with -1; see the module ranking rule.

    >>> top_k(np.array([[0.1, 0.9, 0.5, 0.9]]), 3).tolist()
    [[1, 3, 2]]
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    shape = np.shape(scores)
    out = np.full((shape[0], k), -1, dtype=np.int64)
    m = min(k, shape[1]) if len(shape) == 2 else 0
    for start, key in _blocks(scores, exclude):
        if m:
            out[start : start + len(key), :m] = _top_block(key, m)
    return out


def _truth_lookup(truth: Any, n_items: int) -> tuple[IntArray, IntArray]:
    """Sorted codes row * n_items + col of relevant pairs, and |truth_u| per user."""
    rows, cols = _pairs(truth)
    codes = np.sort(rows * n_items + cols)
    return codes, np.bincount(rows, minlength=truth.shape[0]).astype(np.int64)


def _hits(top: IntArray, truth: Any) -> tuple[npt.NDArray[np.bool_], IntArray]:
    """Boolean (n_users, K): is top[u, j] relevant? And the relevant count per user."""
    n_users, n_items = truth.shape
    if top.shape[0] != n_users:
        raise ValueError(f"top has {top.shape[0]} rows but truth has {n_users}")
    codes, n_rel = _truth_lookup(truth, n_items)
    query = np.arange(n_users, dtype=np.int64)[:, None] * n_items + top
    if codes.size == 0:
        return np.zeros(top.shape, dtype=bool), n_rel
    pos = np.minimum(np.searchsorted(codes, query), codes.size - 1)
    return (top >= 0) & (codes[pos] == query), n_rel


def ranking_metrics(
    top: npt.ArrayLike, truth: Any, ks: Sequence[int] = (10, 20)
) -> dict[str, FloatArray]:
    """Per-user recall@k, ndcg@k (binary gains) and hit@k; NaN where truth is empty."""
    top_arr = np.asarray(top, dtype=np.int64)
    hit, n_rel = _hits(top_arr, truth)
    empty = n_rel == 0
    out: dict[str, FloatArray] = {}
    for k in ks:
        if not 1 <= k <= top_arr.shape[1]:
            raise ValueError(f"k={k} outside 1..{top_arr.shape[1]} (columns of top)")
        h = hit[:, :k]
        discount = 1.0 / np.log2(np.arange(2, k + 2))
        ideal = np.concatenate([[1.0], np.cumsum(discount)])[np.minimum(n_rel, k)]
        with np.errstate(divide="ignore", invalid="ignore"):
            recall = h.sum(axis=1) / n_rel
            ndcg = (h @ discount) / ideal
        out[f"recall@{k}"] = np.where(empty, np.nan, recall)
        out[f"ndcg@{k}"] = np.where(empty, np.nan, ndcg)
        out[f"hit@{k}"] = np.where(empty, np.nan, h.any(axis=1).astype(np.float64))
    return out


def reciprocal_rank(scores: npt.ArrayLike, truth: Any, exclude: Any | None = None) -> FloatArray:
    """1 / rank of each user's best-ranked relevant item in the full ranking.

    NaN for empty truth, 0.0 when every relevant item is excluded.
    """
    tr = sp.csr_matrix(truth)
    if tr.shape != np.shape(scores):
        raise ValueError(f"truth shape {tr.shape} != scores shape {np.shape(scores)}")
    out = np.zeros(tr.shape[0], dtype=np.float64)
    for start, key in _blocks(scores, exclude):
        out[start : start + len(key)] = _rr_block(key, tr[start : start + len(key)])
    return out


def _rr_block(key: FloatArray, truth: Any) -> FloatArray:
    n_users, n_items = key.shape
    rows, cols = _pairs(truth)
    out = np.zeros(n_users, dtype=np.float64)
    out[np.bincount(rows, minlength=n_users) == 0] = np.nan
    vals = key[rows, cols]
    ok = ~np.isnan(vals)  # excluded relevant items cannot be found
    rows, cols, vals = rows[ok], cols[ok], vals[ok]
    order = np.lexsort((cols, vals, rows))
    users, first = np.unique(rows[order], return_index=True)
    best_key, best_col = vals[order][first][:, None], cols[order][first][:, None]
    sub = key[users]
    before = (sub < best_key).sum(axis=1)
    before += ((sub == best_key) & (np.arange(n_items) < best_col)).sum(axis=1)
    out[users] = 1.0 / (1.0 + before)
    return out


def coverage(top: npt.ArrayLike, n_items: int) -> float:
    """Share of the catalogue recommended to at least one user (-1 padding ignored)."""
    arr = np.asarray(top)
    return float(np.unique(arr[arr >= 0]).size / n_items)


# --------------------------------------------------------------------------- categories


def category_metrics(ranked: npt.ArrayLike, relevance: npt.ArrayLike) -> dict[str, FloatArray]:
    """acc@1, acc@3 (hit a most frequent next category) and graded ndcg@3 per user.

    ``relevance[u, c]`` is the share of u's next events in category c; every
    category tied at the maximum counts as "most frequent". NaN where all zero.
    """
    r = np.asarray(ranked, dtype=np.int64)[:, :3]
    rel = np.asarray(relevance, dtype=np.float64)
    if r.shape[1] < 3 or r.shape[0] != rel.shape[0]:
        raise ValueError(f"ranked {r.shape} needs >= 3 columns and one row per relevance row")
    top_rel = rel.max(axis=1, initial=0.0)
    empty = top_rel <= 0
    is_top = rel >= top_rel[:, None] * (1 - 1e-9)  # tolerate shares computed differently
    is_top &= ~empty[:, None]
    valid = r >= 0
    safe = np.where(valid, r, 0)
    top_hit = np.take_along_axis(is_top, safe, axis=1) & valid
    dup = np.zeros_like(valid)  # a category repeated in a list gains only once
    dup[:, 1] = r[:, 1] == r[:, 0]
    dup[:, 2] = (r[:, 2] == r[:, 0]) | (r[:, 2] == r[:, 1])
    gain = np.where(valid & ~dup, np.take_along_axis(rel, safe, axis=1), 0.0)
    discount = 1.0 / np.log2(np.arange(2, 5))
    ideal = -np.sort(-rel, axis=1)[:, :3]
    with np.errstate(divide="ignore", invalid="ignore"):
        ndcg = (gain @ discount) / (ideal @ discount[: ideal.shape[1]])
    return {
        "acc@1": np.where(empty, np.nan, top_hit[:, 0].astype(np.float64)),
        "acc@3": np.where(empty, np.nan, top_hit.any(axis=1).astype(np.float64)),
        "ndcg@3": np.where(empty, np.nan, ndcg),
    }


# --------------------------------------------------------------------------- binary


def _binary(y: npt.ArrayLike, p: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    ya = np.asarray(y, dtype=np.float64).ravel()
    pa = np.asarray(p, dtype=np.float64).ravel()
    if ya.shape != pa.shape:
        raise ValueError(f"y has {ya.size} values but p has {pa.size}")
    return ya, pa


def roc_auc(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count 1/2); NaN with one class."""
    ya, pa = _binary(y, p)
    pos = ya > 0
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(pa)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def f1(y: npt.ArrayLike, pred: npt.ArrayLike) -> float:
    """F1 = 2TP / (2TP + FP + FN); NaN when there is nothing true and nothing predicted."""
    ya, pa = _binary(y, pred)
    yt, pt = ya > 0, pa > 0
    tp = float(np.sum(yt & pt))
    denom = 2 * tp + float(np.sum(~yt & pt)) + float(np.sum(yt & ~pt))
    return 2 * tp / denom if denom else float("nan")


def brier(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Mean squared error of probabilities p against outcomes y in {0, 1}."""
    ya, pa = _binary(y, p)
    return float(np.mean((pa - ya) ** 2)) if ya.size else float("nan")


def best_f1_threshold(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """The score t maximising F1 of ``p >= t`` (the highest such t on ties).

    With no positive in y the best is to predict nothing: a t just above max(p).
    """
    ya, pa = _binary(y, p)
    if ya.size == 0:
        return float("nan")
    n_pos = float(np.sum(ya > 0))
    if n_pos == 0:
        return float(np.nextafter(pa.max(), np.inf))
    order = np.argsort(-pa, kind="stable")
    ps = pa[order]
    tp = np.cumsum(ya[order] > 0)
    last = np.flatnonzero(np.append(ps[1:] != ps[:-1], True))  # end of each tie group
    f = 2 * tp[last] / (last + 1 + n_pos)
    return float(ps[last[np.argmax(f)]])


def calibration_bins(
    y: npt.ArrayLike, p: npt.ArrayLike, n_bins: int = 10
) -> dict[str, list[float]]:
    """Reliability diagram data on equal-width bins of [0, 1]; empty bins omitted.

    p outside [0, 1] falls into the end bins; p == 1 belongs to the last bin.
    """
    ya, pa = _binary(y, p)
    idx = np.clip(np.floor(pa * n_bins), 0, n_bins - 1).astype(np.int64)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=pa, minlength=n_bins)
    sum_y = np.bincount(idx, weights=ya, minlength=n_bins)
    keep = count > 0
    return {
        "mean_pred": (sum_p[keep] / count[keep]).tolist(),
        "frac_pos": (sum_y[keep] / count[keep]).tolist(),
        "count": count[keep].tolist(),
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
    }


# --------------------------------------------------------------------------- bootstrap


def _interval(draws: FloatArray, alpha: float) -> tuple[float, float]:
    draws = draws[~np.isnan(draws)]
    if draws.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _group_codes(n: int, groups: npt.ArrayLike | None) -> IntArray:
    """Dense group codes 0..G-1 per example (each example its own group if None)."""
    if groups is None:
        return np.arange(n, dtype=np.int64)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups has shape {g.shape}, expected ({n},)")
    return np.unique(g, return_inverse=True)[1].astype(np.int64)


def bootstrap_ci(
    values: npt.ArrayLike,
    groups: npt.ArrayLike | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """(mean, low, high): mean of the non-NaN values and its percentile bootstrap CI.

    With ``groups``, whole groups are resampled with replacement (cluster
    bootstrap), so several examples of one user count as one draw.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    codes = _group_codes(v.size, groups)
    ok = ~np.isnan(v)
    v, codes = v[ok], codes[ok]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    codes = np.unique(codes, return_inverse=True)[1]  # drop groups left empty
    n_groups = int(codes.max()) + 1
    sums = np.bincount(codes, weights=v, minlength=n_groups)
    counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, _BOOT_CHUNK):
        stop = min(start + _BOOT_CHUNK, n_boot)
        draw = rng.integers(0, n_groups, size=(stop - start, n_groups))
        means[start:stop] = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    return (float(v.mean()), *_interval(means, alpha))


def _resample_indices(
    order: IntArray, starts: IntArray, sizes: IntArray, drawn: IntArray
) -> IntArray:
    """Example indices of the drawn groups (groups laid out contiguously in ``order``)."""
    lengths = sizes[drawn]
    offsets = np.repeat(starts[drawn] - np.cumsum(lengths) + lengths, lengths)
    return order[offsets + np.arange(int(lengths.sum()))]


def bootstrap_stat(
    stat: Callable[..., float],
    arrays: Sequence[npt.ArrayLike],
    groups: npt.ArrayLike | None = None,
    *,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """(stat on all data, low, high) for a non-additive statistic such as AUC or F1.

    Examples (or whole groups) are resampled and ``stat(*arrays)`` recomputed;
    resamples where it is NaN (e.g. one class only) are skipped.
    """
    arrs = [np.asarray(a) for a in arrays]
    n = arrs[0].shape[0]
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    codes = _group_codes(n, groups)
    order = np.argsort(codes, kind="stable").astype(np.int64)
    sizes = np.bincount(codes).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        idx = _resample_indices(order, starts, sizes, rng.integers(0, sizes.size, sizes.size))
        draws[b] = stat(*(a[idx] for a in arrs))
    return (float(stat(*arrs)), *_interval(draws, alpha))


def paired_diff_ci(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    groups: npt.ArrayLike | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """(mean(a - b), low, high) over examples where both are finite; A beats B if low > 0."""
    aa = np.asarray(a, dtype=np.float64).ravel()
    bb = np.asarray(b, dtype=np.float64).ravel()
    if aa.shape != bb.shape:
        raise ValueError(f"a has {aa.size} values but b has {bb.size}")
    both = np.isfinite(aa) & np.isfinite(bb)
    diff = np.where(both, aa - bb, np.nan)
    return bootstrap_ci(diff, groups, n_boot=n_boot, seed=seed, alpha=alpha)
