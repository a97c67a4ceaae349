"""Learned rankers over the dynamic profile, trained point-in-time.

The decayed affinities say *what* a user leaned to recently and *how much*
the profile knows (their decayed total weight); the trend says what everyone
does now. How to weigh them is learned, not hand-set: for cut ``T`` a
gradient-boosted classifier (scikit-learn ``HistGradientBoostingClassifier``,
default settings) is fitted on the profiles read at ``T - horizon`` with
labels from ``(T - horizon, T]`` — all known at ``T``, so nothing leaks —
and then scores the profiles read at ``T`` (or, for the freshness curve,
the stale ones).

* ``next_category``: one row per (user, category): the category's share in
  the decayed profile at every half-life, the log decayed total at every
  half-life, its all-time share for the user, its trend and global shares.
  Label: the category is one of the user's most frequent next categories.
* ``next_item``: one row per (user, candidate item), candidates being every
  item the user has not consumed: log trend and all-time popularity, the
  item–kNN score of the decayed item profile at every half-life and of the
  all-time history (each divided by the user's best), the genre lift of the
  item for the user at every half-life, the log decayed totals. Label: the
  user consumes the item in the next window. Negatives are subsampled for
  training (uniformly, which shifts every log-odds by the same constant and
  so leaves rankings alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.ensemble import HistGradientBoostingClassifier

NEGATIVE_RATE = 0.05


@dataclass
class ProfileView:
    """The per-user inputs of the learned rankers for one set of users."""

    cat_aff: list[np.ndarray]  # per half-life: users x categories (decayed)
    item_aff: list[Any]  # per half-life: users x items csr (decayed, per consumption)
    counts: np.ndarray  # users x categories (all-time, unweighted)
    hist: Any  # users x items binary (consumed before the cut)


@dataclass
class Context:
    """What the population looks like at a cut (shared by every user)."""

    cat_trend: np.ndarray
    cat_all: np.ndarray
    pop_trend: np.ndarray
    pop_all: np.ndarray
    sim: np.ndarray
    genres: Any  # items x categories, rows sum to 1


def _shares(m: np.ndarray) -> np.ndarray:
    tot = m.sum(axis=1, keepdims=True)
    out: np.ndarray = np.divide(m, tot, out=np.zeros_like(m), where=tot > 0)
    return out


def _norm(v: np.ndarray) -> np.ndarray:
    return v / max(float(v.sum()), 1e-12)


def category_features(view: ProfileView, ctx: Context) -> np.ndarray:
    """(users * categories) x features, row ``u * n_cats + c``."""
    n_u, n_c = view.counts.shape
    cols: list[np.ndarray] = []
    for aff in view.cat_aff:
        cols.append(_shares(aff))
        cols.append(np.broadcast_to(np.log1p(aff.sum(axis=1, keepdims=True)), (n_u, n_c)))
    cols.append(_shares(view.counts))
    cols.append(np.broadcast_to(_norm(ctx.cat_trend), (n_u, n_c)))
    cols.append(np.broadcast_to(_norm(ctx.cat_all), (n_u, n_c)))
    return np.stack([c.reshape(-1) for c in cols], axis=1).astype(np.float32)


def item_features(view: ProfileView, ctx: Context) -> np.ndarray:
    """(users * items) x features, row ``u * n_items + i``."""
    n_u, n_i = view.hist.shape
    cols: list[np.ndarray] = [
        np.broadcast_to(_percentile(ctx.pop_trend), (n_u, n_i)),
        np.broadcast_to(_percentile(ctx.pop_all), (n_u, n_i)),
        np.broadcast_to(np.log(_norm(ctx.pop_trend) + 1e-7), (n_u, n_i)),
    ]
    t = _norm(ctx.cat_trend)
    for aff, cat in zip(view.item_aff, view.cat_aff, strict=True):
        cols.append(_row_scaled(np.asarray(aff @ ctx.sim)))
        lift = _shares(cat) / np.where(t > 0, t, 1.0)
        cols.append(np.asarray(ctx.genres @ lift.T).T)
        cols.append(np.broadcast_to(np.log1p(cat.sum(axis=1, keepdims=True)), (n_u, n_i)))
    cols.append(_row_scaled(np.asarray(view.hist @ ctx.sim)))
    out = np.empty((n_u * n_i, len(cols)), dtype=np.float32)
    for j, c in enumerate(cols):
        out[:, j] = c.reshape(-1)
    return out


def _percentile(v: np.ndarray) -> np.ndarray:
    """Rank of each value in ``[0, 1]`` (ties share the mean rank): scale-free across cuts."""
    from scipy.stats import rankdata

    return np.asarray(rankdata(v) / len(v), dtype=np.float64)


def _row_scaled(m: np.ndarray) -> np.ndarray:
    top = m.max(axis=1, keepdims=True)
    out: np.ndarray = np.divide(m, top, out=np.zeros_like(m), where=top > 0)
    return out


def _model(seed: int) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(random_state=seed)


def fit_categories(view: ProfileView, ctx: Context, labels: np.ndarray,
                   seed: int) -> HistGradientBoostingClassifier | None:
    """``labels`` users x categories (1 = a most frequent next category)."""
    y = labels.reshape(-1)
    if y.min() == y.max():
        return None
    model = _model(seed)
    model.fit(category_features(view, ctx), y)
    return model


def score_categories(model: HistGradientBoostingClassifier, view: ProfileView,
                     ctx: Context) -> np.ndarray:
    n_u, n_c = view.counts.shape
    return np.asarray(model.predict_proba(category_features(view, ctx))[:, 1]).reshape(n_u, n_c)


def fit_items(view: ProfileView, ctx: Context, truth: Any,
              seed: int) -> HistGradientBoostingClassifier | None:
    """``truth`` users x items (1 = consumed in the next window)."""
    n_u, n_i = view.hist.shape
    rng = np.random.default_rng(seed)
    y = np.asarray(sp.csr_matrix(truth).toarray(), dtype=np.int8).reshape(-1)
    cand = ~np.asarray(view.hist.toarray(), dtype=bool).reshape(-1)
    keep = cand & ((y == 1) | (rng.random(n_u * n_i) < NEGATIVE_RATE))
    if y[keep].min(initial=0) == y[keep].max(initial=0):
        return None
    model = _model(seed)
    model.fit(item_features(view, ctx)[keep], y[keep])
    return model


def score_items(model: HistGradientBoostingClassifier, view: ProfileView,
                ctx: Context) -> np.ndarray:
    n_u, n_i = view.hist.shape
    return np.asarray(model.predict_proba(item_features(view, ctx))[:, 1]).reshape(n_u, n_i)
