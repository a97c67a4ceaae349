"""Evaluation metrics: hand-computed values, slow reference oracles, properties."""

from __future__ import annotations

import math
from typing import Any
from unittest import mock

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import roc_auc_score

from portrait.eval import metrics
from portrait.eval.metrics import (
    best_f1_threshold,
    bootstrap_ci,
    bootstrap_stat,
    brier,
    calibration_bins,
    category_metrics,
    coverage,
    f1,
    paired_diff_ci,
    ranking_metrics,
    reciprocal_rank,
    roc_auc,
    top_k,
)

NAN = float("nan")
INF = float("inf")
LOG2_3 = math.log2(3)  # 1.5849625...


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """Binary csr matrix with row u holding the items in rows[u]."""
    dense = np.zeros((len(rows), n_items))
    for u, items in enumerate(rows):
        dense[u, items] = 1
    return sp.csr_matrix(dense)


def ref_ranking(row: np.ndarray, excluded: set[int]) -> list[int]:
    """Slow reference: all rankable items, best first, by the module's rule."""

    def key(j: int) -> tuple[int, float, int]:
        s = float(row[j])
        finite_or_top = not math.isnan(s) and s != -INF
        return (0, -s, j) if finite_or_top else (1, 0.0, j)

    return sorted((j for j in range(len(row)) if j not in excluded), key=key)


# --------------------------------------------------------------------------- top_k


def test_top_k_breaks_ties_by_lower_index() -> None:
    # 0.9 at items 1 and 3 tie -> 1 first; then 0.5 (item 2)
    assert top_k(np.array([[0.1, 0.9, 0.5, 0.9]]), 3).tolist() == [[1, 3, 2]]


def test_top_k_puts_nan_and_minus_inf_last_and_tied() -> None:
    # finite 0.5 (3), 0.2 (2), then NaN (0) and -inf (1) tied -> by index; +inf is best
    scores = np.array([[NAN, -INF, 0.2, 0.5, INF]])
    assert top_k(scores, 5).tolist() == [[4, 3, 2, 0, 1]]


def test_top_k_excludes_and_pads() -> None:
    # item 1 excluded -> only items 0 and 2 rankable; k=4 pads two -1
    scores = np.array([[0.3, 0.2, 0.1], [0.0, 0.0, 0.0]])
    exclude = csr([[1], [0, 1, 2]], 3)
    assert top_k(scores, 4, exclude).tolist() == [[0, 2, -1, -1], [-1, -1, -1, -1]]


def test_top_k_boundary_ties_pick_lowest_indices() -> None:
    # 1000 equal scores: argpartition alone may pick any five of them
    scores = np.zeros((3, 1000))
    scores[1, 999] = 1.0  # then item 999 first, the rest by index
    assert top_k(scores, 5).tolist() == [[0, 1, 2, 3, 4], [999, 0, 1, 2, 3], [0, 1, 2, 3, 4]]


def test_top_k_does_not_mutate_scores() -> None:
    scores = np.array([[NAN, 1.0, 2.0]])
    before = scores.copy()
    top_k(scores, 2, csr([[1]], 3))
    np.testing.assert_array_equal(scores, before)


def test_top_k_rejects_k_below_one() -> None:
    with pytest.raises(ValueError, match="k must be"):
        top_k(np.zeros((1, 3)), 0)


score_values = st.sampled_from([0.0, 0.5, 1.0, -1.0, NAN, INF, -INF, 0.25])


@st.composite
def ranking_case(draw: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    n_users = draw(st.integers(1, 6))
    n_items = draw(st.integers(1, 12))
    scores = draw(hnp.arrays(np.float64, (n_users, n_items), elements=score_values))
    excluded = draw(hnp.arrays(np.bool_, (n_users, n_items)))
    relevant = draw(hnp.arrays(np.bool_, (n_users, n_items)))
    return scores, excluded, relevant, draw(st.integers(1, 15))


@given(ranking_case(), st.booleans())
@settings(max_examples=200, deadline=None)
def test_top_k_matches_reference(case: Any, tiny_blocks: bool) -> None:
    scores, excluded, _, k = case
    block = 7 if tiny_blocks else metrics._BLOCK_CELLS  # several blocks of a row or two
    with mock.patch.object(metrics, "_BLOCK_CELLS", block):
        got = top_k(scores, k, sp.csr_matrix(excluded))
    for u in range(len(scores)):
        ref = ref_ranking(scores[u], set(np.flatnonzero(excluded[u])))[:k]
        assert got[u].tolist() == ref + [-1] * (k - len(ref))


# --------------------------------------------------------------------------- ranking_metrics


def test_ranking_metrics_hand_computed() -> None:
    n_items = 6
    truth = csr([[1, 3, 5], [2], []], n_items)
    # user 1: the -1 pads encode to 1*6-1 = 5 = (user 0, item 5), relevant there: must not hit
    top = np.array([[3, 0, 5, 4], [-1, -1, 2, -1], [0, 1, 2, 3]])
    m = ranking_metrics(top, truth, ks=(2, 4))
    # user 0 hits at ranks 1 and 3 of |T|=3
    #   recall@2 = 1/3, recall@4 = 2/3
    #   ndcg@2 = (1/log2 2) / (1 + 1/log2 3)           ideal over min(3, 2) = 2
    #   ndcg@4 = (1 + 1/log2 4) / (1 + 1/log2 3 + 1/2)  ideal over min(3, 4) = 3
    # user 1 hits at rank 3 of |T|=1: @2 all 0; recall@4 = 1, ndcg@4 = (1/log2 4)/1 = 0.5
    # user 2 has no truth: NaN everywhere
    expect = {
        "recall@2": [1 / 3, 0.0, NAN],
        "ndcg@2": [1 / (1 + 1 / LOG2_3), 0.0, NAN],
        "hit@2": [1.0, 0.0, NAN],
        "recall@4": [2 / 3, 1.0, NAN],
        "ndcg@4": [1.5 / (1 + 1 / LOG2_3 + 0.5), 0.5, NAN],
        "hit@4": [1.0, 1.0, NAN],
    }
    assert list(m) == list(expect)
    for name, values in expect.items():
        np.testing.assert_allclose(m[name], values, rtol=1e-12, err_msg=name)
        assert m[name].dtype == np.float64


def test_ranking_metrics_rejects_k_beyond_columns() -> None:
    with pytest.raises(ValueError, match="k=3"):
        ranking_metrics(np.zeros((1, 2), dtype=np.int64), csr([[0]], 2), ks=(3,))


@given(ranking_case())
@settings(max_examples=150, deadline=None)
def test_ranking_metrics_bounded_and_perfect(case: Any) -> None:
    scores, excluded, relevant, k = case
    truth = sp.csr_matrix(relevant)
    n_items = scores.shape[1]
    ks = sorted({1, min(k, n_items)})
    m = ranking_metrics(top_k(scores, n_items, sp.csr_matrix(excluded)), truth, ks)
    empty = ~relevant.any(axis=1)
    for name, v in m.items():
        assert np.isnan(v[empty]).all(), name
        assert ((v[~empty] >= 0) & (v[~empty] <= 1 + 1e-12)).all(), name
    # perfect ranking: the relevant items get the top scores, nothing excluded
    perfect = ranking_metrics(top_k(relevant.astype(float), n_items), truth, ks)
    for kk in ks:
        fits = ~empty & (relevant.sum(axis=1) <= kk)
        np.testing.assert_allclose(perfect[f"ndcg@{kk}"][~empty], 1.0)
        np.testing.assert_allclose(perfect[f"hit@{kk}"][~empty], 1.0)
        np.testing.assert_allclose(perfect[f"recall@{kk}"][fits], 1.0)


@given(ranking_case(), st.randoms(use_true_random=False))
@settings(max_examples=100, deadline=None)
def test_ranking_metrics_follow_user_order(case: Any, rnd: Any) -> None:
    scores, excluded, relevant, k = case
    perm = list(range(len(scores)))
    rnd.shuffle(perm)
    k = min(k, scores.shape[1])
    a = ranking_metrics(top_k(scores, k, sp.csr_matrix(excluded)), sp.csr_matrix(relevant), (k,))
    b = ranking_metrics(
        top_k(scores[perm], k, sp.csr_matrix(excluded[perm])), sp.csr_matrix(relevant[perm]), (k,)
    )
    for name in a:  # equal up to summation order (numpy's SIMD sums differ in the last ulp)
        np.testing.assert_allclose(a[name][perm], b[name], rtol=1e-12, atol=1e-15)


@given(st.integers(1, 5), st.integers(2, 10), st.integers(0, 2**31), st.integers(1, 10))
@settings(max_examples=100, deadline=None)
def test_ranking_metrics_invariant_to_item_relabelling(n_users: int, n_items: int, seed: int,
                                                       k: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.permuted(np.tile(np.arange(n_items, dtype=float), (n_users, 1)), axis=1)
    relevant = rng.random((n_users, n_items)) < 0.3
    perm = rng.permutation(n_items)  # distinct scores per row, so no tie depends on labels
    k = min(k, n_items)
    a = ranking_metrics(top_k(scores, k), sp.csr_matrix(relevant), (k,))
    b = ranking_metrics(top_k(scores[:, perm], k), sp.csr_matrix(relevant[:, perm]), (k,))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-12)


# --------------------------------------------------------------------------- reciprocal_rank


def test_reciprocal_rank_hand_computed() -> None:
    scores = np.array(
        [
            [0.9, 0.1, 0.5, 0.5, NAN],  # item 0 excluded: ranking 2, 3 (tie, higher index), 1, 4
            [0.9, 0.1, 0.5, 0.5, NAN],  # only relevant item 0 is excluded
            [0.9, 0.1, 0.5, 0.5, NAN],  # no truth
            [0.9, 0.1, 0.5, 0.5, NAN],  # relevant item 4 is NaN: after all 4 finite ones
        ]
    )
    truth = csr([[3, 4], [0], [], [4]], 5)
    exclude = csr([[0], [0], [], []], 5)
    # user 0: best relevant is item 3 at rank 2 -> 1/2; user 3: rank 5 -> 1/5
    np.testing.assert_allclose(
        reciprocal_rank(scores, truth, exclude), [0.5, 0.0, NAN, 0.2], rtol=1e-12
    )


@given(ranking_case(), st.booleans())
@settings(max_examples=150, deadline=None)
def test_reciprocal_rank_matches_reference(case: Any, tiny_blocks: bool) -> None:
    scores, excluded, relevant, _ = case
    with mock.patch.object(metrics, "_BLOCK_CELLS", 5 if tiny_blocks else metrics._BLOCK_CELLS):
        got = reciprocal_rank(scores, sp.csr_matrix(relevant), sp.csr_matrix(excluded))
    for u in range(len(scores)):
        ranking = ref_ranking(scores[u], set(np.flatnonzero(excluded[u])))
        ranks = [r for r, j in enumerate(ranking, 1) if relevant[u, j]]
        want = NAN if not relevant[u].any() else (1 / ranks[0] if ranks else 0.0)
        np.testing.assert_allclose(got[u], want, rtol=1e-12)


# --------------------------------------------------------------------------- coverage


def test_coverage_ignores_padding() -> None:
    # distinct items {0, 1, 2} out of 10 -> 0.3
    assert coverage(np.array([[0, 1, -1], [1, 2, -1]]), 10) == pytest.approx(0.3)


# --------------------------------------------------------------------------- categories


def test_category_metrics_hand_computed() -> None:
    relevance = np.array(
        [
            [0.5, 0.25, 0.25, 0.0],  # most frequent: 0
            [0.4, 0.4, 0.2, 0.0],  # tie: 0 and 1 both most frequent
            [0.0, 0.0, 0.0, 0.0],  # no next events
            [1.0, 0.0, 0.0, 0.0],  # a repeated category gains once
        ]
    )
    ranked = np.array([[1, 0, 3], [1, 2, -1], [0, 1, 2], [0, 0, 0]])
    m = category_metrics(ranked, relevance)
    # user 0: DCG = 0.25/1 + 0.5/log2 3 + 0/2, ideal = 0.5/1 + 0.25/log2 3 + 0.25/2
    # user 1: DCG = 0.4/1 + 0.2/log2 3 (the -1 gains 0), ideal = 0.4 + 0.4/log2 3 + 0.2/2
    # user 3: DCG = 1/1 (not 1 + 1/log2 3 + 1/2), ideal = 1
    ndcg0 = (0.25 + 0.5 / LOG2_3) / (0.5 + 0.25 / LOG2_3 + 0.125)
    ndcg1 = (0.4 + 0.2 / LOG2_3) / (0.4 + 0.4 / LOG2_3 + 0.1)
    np.testing.assert_allclose(m["acc@1"], [0.0, 1.0, NAN, 1.0])
    np.testing.assert_allclose(m["acc@3"], [1.0, 1.0, NAN, 1.0])
    np.testing.assert_allclose(m["ndcg@3"], [ndcg0, ndcg1, NAN, 1.0], rtol=1e-12)


@given(st.integers(1, 6), st.integers(1, 7), st.integers(0, 2**31))
@settings(max_examples=100, deadline=None)
def test_category_metrics_bounded_and_perfect(n_users: int, n_cats: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, (n_users, n_cats)).astype(float)
    total = counts.sum(axis=1, keepdims=True)
    relevance = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    ranked = rng.integers(-1, n_cats, (n_users, 3))
    empty = total[:, 0] == 0
    for v in category_metrics(ranked, relevance).values():
        assert np.isnan(v[empty]).all()
        assert ((v[~empty] >= 0) & (v[~empty] <= 1 + 1e-12)).all()
    best = np.argsort(-relevance, axis=1, kind="stable")[:, :3]
    best = np.hstack([best, np.full((n_users, 3 - best.shape[1]), -1)])
    for v in category_metrics(best, relevance).values():
        np.testing.assert_allclose(v[~empty], 1.0)


# --------------------------------------------------------------------------- binary


def test_roc_auc_hand_computed() -> None:
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 0.35 beats 0.1 only, 0.8 beats both -> 3/4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # positive 0.2 ties negative 0.2 (1/2) and beats 0.1 (1); 0.7 beats both (2) -> 3.5/4
    assert roc_auc([0, 1, 1, 0], [0.2, 0.2, 0.7, 0.1]) == pytest.approx(0.875)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


@given(st.lists(st.tuples(st.booleans(), st.sampled_from([0.0, 0.1, 0.5, 0.7, 1.0])),
                min_size=2, max_size=60))
@settings(max_examples=200, deadline=None)
def test_roc_auc_equals_sklearn_and_is_symmetric(pairs: list[tuple[bool, float]]) -> None:
    y = np.array([a for a, _ in pairs], dtype=int)
    p = np.array([b for _, b in pairs])
    if y.min() == y.max():
        assert math.isnan(roc_auc(y, p))
        return
    auc = roc_auc(y, p)
    assert auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert auc + roc_auc(y, -p) == pytest.approx(1.0, abs=1e-12)  # reversed order
    assert roc_auc(y, np.exp(3 * p)) == pytest.approx(auc, abs=1e-12)  # monotone transform


def test_f1_hand_computed() -> None:
    # TP = 2 (items 0, 4), FP = 1 (item 2), FN = 1 (item 1): 2*2 / (4 + 1 + 1) = 2/3
    assert f1([1, 1, 0, 0, 1], [1, 0, 1, 0, 1]) == pytest.approx(2 / 3)
    assert math.isnan(f1([0, 0], [0, 0]))  # 0 / 0
    assert f1([0, 0], [1, 0]) == 0.0  # 0 / (0 + 1 + 0)


def test_brier_hand_computed() -> None:
    # ((0.8 - 1)^2 + (0.3 - 0)^2) / 2 = (0.04 + 0.09) / 2 = 0.065
    assert brier([1, 0], [0.8, 0.3]) == pytest.approx(0.065)


@given(hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(0, 1)), st.data())
def test_brier_is_mean_squared_error(p: np.ndarray, data: Any) -> None:
    y = data.draw(hnp.arrays(np.bool_, p.shape))
    assert brier(y, p) == pytest.approx(float(np.mean((p - y) ** 2)), abs=1e-12)
    assert 0.0 <= brier(y, p) <= 1.0


def test_best_f1_threshold_hand_computed() -> None:
    # t=0.9: TP1 pred1 -> 2/(1+2) = .667; t=0.8: 2/(2+2) = .5; t=0.7: TP2 pred3 -> 4/(3+2) = .8;
    # t=0.1: 4/(4+2) = .667 -> 0.7
    assert best_f1_threshold([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == 0.7
    # no positive: predict nothing, a threshold just above the highest score
    t = best_f1_threshold([0, 0], [0.2, 0.4])
    assert t > 0.4
    assert t == pytest.approx(0.4)


@given(st.lists(st.tuples(st.booleans(), st.sampled_from([0.1, 0.3, 0.5, 0.8, 0.9])),
                min_size=1, max_size=40))
@settings(max_examples=200, deadline=None)
def test_best_f1_threshold_is_the_best(pairs: list[tuple[bool, float]]) -> None:
    y = np.array([a for a, _ in pairs])
    p = np.array([b for _, b in pairs])
    if not y.any():
        return
    t = best_f1_threshold(y, p)
    best = max(f1(y, p >= c) for c in np.unique(p))
    assert f1(y, p >= t) == pytest.approx(best)
    assert t == max(c for c in np.unique(p) if f1(y, p >= c) == pytest.approx(best))


def test_calibration_bins_hand_computed() -> None:
    # bin 0: {0.05}; bin 1 (0.1 <= p < 0.2): {0.15, 0.12}; bin 9: {0.95, 1.0 (p == 1 included)}
    got = calibration_bins([0, 1, 0, 1, 1], [0.05, 0.15, 0.12, 0.95, 1.0], n_bins=10)
    np.testing.assert_allclose(got["mean_pred"], [0.05, 0.135, 0.975])
    np.testing.assert_allclose(got["frac_pos"], [0.0, 0.5, 1.0])
    assert got["count"] == [1.0, 2.0, 2.0]
    np.testing.assert_allclose(got["edges"], np.linspace(0, 1, 11))


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_constant_and_nan() -> None:
    assert bootstrap_ci(np.array([2.0, 2.0, 2.0])) == (2.0, 2.0, 2.0)
    mean, low, high = bootstrap_ci(np.array([1.0, NAN, 3.0]), n_boot=200)
    assert mean == 2.0  # (1 + 3) / 2, the NaN dropped
    assert 1.0 <= low <= mean <= high <= 3.0
    assert all(math.isnan(x) for x in bootstrap_ci(np.array([NAN])))


def test_bootstrap_ci_width_matches_the_standard_error() -> None:
    values = np.random.default_rng(1).normal(size=2000)
    mean, low, high = bootstrap_ci(values, n_boot=2000)
    # 95% normal interval: 2 * 1.96 * sd / sqrt(n) = 3.92 * sd / 44.72
    assert high - low == pytest.approx(3.92 * values.std() / math.sqrt(2000), rel=0.1)
    assert low < mean < high


def test_bootstrap_ci_cluster_is_wider_for_correlated_groups() -> None:
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(200), 10)  # 10 identical examples per user
    values = rng.normal(size=200)[groups]
    _, lo_iid, hi_iid = bootstrap_ci(values)
    mean, lo, hi = bootstrap_ci(values, groups)
    # the effective sample is 200 users, not 2000 examples: about sqrt(10) = 3.2 times wider
    assert (hi - lo) / (hi_iid - lo_iid) == pytest.approx(math.sqrt(10), rel=0.2)
    assert mean == pytest.approx(values.mean())


def test_bootstrap_ci_singleton_groups_equal_no_groups() -> None:
    values = np.random.default_rng(3).random(300)
    labels = np.array([f"u{i:03d}" for i in range(300)])  # sorted like the examples
    assert bootstrap_ci(values, labels) == bootstrap_ci(values)


def test_resample_indices_expands_drawn_groups() -> None:
    codes = np.array([2, 0, 2, 1, 2, 0])  # group 0: examples 1, 5; 1: 3; 2: 0, 2, 4
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    got = metrics._resample_indices(order, starts, sizes, np.array([2, 0, 2]))
    assert got.tolist() == [0, 2, 4, 1, 5, 0, 2, 4]


def test_bootstrap_stat_mean_agrees_with_bootstrap_ci() -> None:
    rng = np.random.default_rng(4)
    groups = rng.integers(0, 50, 500)
    values = rng.normal(size=50)[groups] + rng.normal(size=500)
    full, low, high = bootstrap_stat(np.mean, [values], groups, n_boot=1000)
    mean, low2, high2 = bootstrap_ci(values, groups, n_boot=1000)
    assert full == pytest.approx(mean)
    assert low == pytest.approx(low2, abs=0.06)
    assert high == pytest.approx(high2, abs=0.06)


def test_bootstrap_stat_skips_nan_resamples() -> None:
    y = np.array([1, 0, 0, 0, 0, 0])  # one positive: many resamples have one class only
    p = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5])
    full, low, high = bootstrap_stat(roc_auc, [y, p], n_boot=100)
    assert full == 1.0
    assert (low, high) == (1.0, 1.0)
    out = bootstrap_stat(roc_auc, [np.ones(3), p[:3]], n_boot=10)
    assert all(math.isnan(x) for x in out)
    assert all(math.isnan(x) for x in bootstrap_stat(roc_auc, [np.ones(0), np.ones(0)]))


def test_paired_diff_ci_uses_pairs_where_both_finite() -> None:
    # finite pairs: (1, 0) and (2, 1), both differences 1
    a = np.array([1.0, 2.0, NAN, 4.0])
    b = np.array([0.0, 1.0, 1.0, INF])
    assert paired_diff_ci(a, b) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(5)
    base = rng.random(400)
    mean, low, _ = paired_diff_ci(base + 0.05 + 0.01 * rng.normal(size=400), base)
    assert mean == pytest.approx(0.05, abs=0.005)
    assert low > 0
