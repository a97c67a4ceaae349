"""``next_item`` for the dynamic recommender: ALS fold-in + fresh trend + profile re-rank.

What the product's recommender (``portrait.recommend``) does for one user,
done here for every warm user of a cut at once, on the same examples as the
baselines:

* **Collaborative filtering with online fold-in.** Item factors come from a
  full ALS retrain (``portrait.models.cf.ALSModel``) scheduled weekly, so at
  cut ``T`` the newest model is the one trained on events up to
  ``T - RETRAIN_LAG`` (the worst case of a weekly schedule). Each user's
  factors are then folded in from *all* their events up to ``T`` against those
  fixed item factors (the exact least-squares solve, as on ingest). Items
  released since the retrain have no factors and get the average score.
* **Fresh popularity**: log consumptions per item over the last 7 and 30
  days before ``T`` (the popularity candidates of the product).
* **Profile re-rank**: the match between the item's genres and the user's
  decayed category affinity read from the engine at ``T`` (half-life closest
  to 30 days), normalised to shares.

Each signal is standardised per user (ALS, affinity) or over items
(popularity), and the score is ``z_als + w7*z_pop7 + w30*z_pop30 + wa*z_aff``.
The weights are not hand-set: for cut ``T`` they are chosen on a grid by the
recall@20 they give at ``T - horizon`` with the truth of ``(T - horizon, T]``
(all known at ``T``: point-in-time, nothing leaks), and the chosen weights
are reported. Cold users (no history before ``T``) get the 7-day popularity
(the product's cold-start path).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from portrait.eval import metrics as M
from portrait.models.cf import ALSModel, ALSParams
from portrait.timeutil import parse_duration

DAY_US = 86_400_000_000
RETRAIN_LAG = "7d"
POP_WINDOWS = ("7d", "30d")
GRID_POP7 = (0.0, 2.0, 4.0, 8.0, 12.0, 20.0)
GRID_POP30 = (0.0, 2.0, 4.0)
GRID_AFF = (0.0, 0.5, 1.0, 2.0)
FEATURES = ("als", "pop_7d", "pop_30d", "affinity")


@dataclass
class Signals:
    """Per (user, item) standardised signals of one set of users at one time."""

    values: np.ndarray  # users x items x len(FEATURES), float32

    def score(self, weights: Sequence[float]) -> np.ndarray:
        out: np.ndarray = self.values @ np.asarray(weights, dtype=np.float32)
        return out


def _zrows(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=1, keepdims=True)
    out: np.ndarray = (x - x.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)
    return out


def _z(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    out: np.ndarray = (v - v.mean()) / (sd if sd > 0 else 1.0)
    return out


def popularity(cons: pl.DataFrame, n_items: int, lo: int, hi: int) -> np.ndarray:
    """Consumptions per item with ``lo < ts <= hi``."""
    c = cons.filter((pl.col("ts") > lo) & (pl.col("ts") <= hi))
    out: np.ndarray = np.bincount(c["i"].to_numpy(), minlength=n_items).astype(np.float64)
    return out


def train_model(cons: pl.DataFrame, until: int, seed: int) -> ALSModel:
    """The scheduled full retrain: ALS on every consumption with ``ts <= until``."""
    c = cons.filter(pl.col("ts") <= until)
    frame = pl.DataFrame({
        "user_id": c["u"].cast(pl.String),
        "item_id": c["i"].cast(pl.String),
        "weight": c["weight"],
    })
    return ALSModel(ALSParams(seed=seed)).fit(frame, trained_at=until)


def fold_in_scores(model: ALSModel, cons: pl.DataFrame, users: np.ndarray, at: int,
                   n_items: int) -> np.ndarray:
    """users x items ALS scores, each user folded in from their events up to ``at``."""
    c = (
        cons.filter((pl.col("ts") <= at) & pl.col("u").is_in(pl.Series(users).implode()))
        .select("u", "i", "weight")
        .sort("u")
    )
    model_idx = model.item_index([str(i) for i in range(n_items)])
    known = model_idx >= 0
    item_f = np.zeros((n_items, model.params.factors), np.float32)
    item_f[known] = model.item_factors[model_idx[known]]
    u = c["u"].to_numpy()
    i = model_idx[c["i"].to_numpy()]
    w = c["weight"].to_numpy()
    starts = np.searchsorted(u, users, side="left")
    ends = np.searchsorted(u, users, side="right")
    vecs = np.stack([model.fold_in(i[s:e], w[s:e]) for s, e in zip(starts, ends, strict=True)])
    scores: np.ndarray = vecs @ item_f.T
    if (~known).any():  # new since the retrain: the user's average score
        scores[:, ~known] = scores[:, known].mean(axis=1, keepdims=True)
    return scores


class DynamicRecommender:
    """Signals of the dynamic recommender over one dataset's consumptions.

    ``cons``: ``u, i, ts, weight`` (``eval.ranking.Data.cons``); ``genres``:
    items x categories, rows summing to 1. Models are cached per retrain time.
    """

    def __init__(self, cons: pl.DataFrame, n_items: int, genres: Any, seed: int) -> None:
        self.cons, self.n_items, self.genres, self.seed = cons, n_items, genres, seed
        self._models: dict[int, ALSModel] = {}
        self._genres_t = np.asarray(genres.T.toarray())

    def model(self, at: int) -> ALSModel:
        """The newest scheduled model at ``at`` (trained up to ``retrain_time(at)``)."""
        until = retrain_time(at)
        if until not in self._models:
            self._models[until] = train_model(self.cons, until, self.seed)
        return self._models[until]

    def popularity(self, at: int, window: str) -> np.ndarray:
        return popularity(self.cons, self.n_items, at - parse_duration(window), at)

    def signals(self, users: np.ndarray, at: int, cat_aff: np.ndarray) -> Signals:
        """The standardised signals (``FEATURES``) for ``users`` (row order) at ``at``."""
        als = _zrows(fold_in_scores(self.model(at), self.cons, users, at, self.n_items))
        pops = [np.broadcast_to(_z(np.log1p(self.popularity(at, w))), als.shape)
                for w in POP_WINDOWS]
        share = cat_aff / np.maximum(cat_aff.sum(axis=1, keepdims=True), 1e-12)
        aff = _zrows(np.asarray(share @ self._genres_t))
        return Signals(np.stack([als, *pops, aff], axis=-1).astype(np.float32))


def recall20(scores: np.ndarray, truth: Any, exclude: Any) -> float:
    keep = np.asarray(truth.sum(axis=1)).ravel() > 0
    top = M.top_k(scores[keep], 20, exclude[keep])
    return float(np.nanmean(M.ranking_metrics(top, truth[keep], ks=(20,))["recall@20"]))


def choose_weights(sig: Signals, truth: Any, exclude: Any) -> tuple[tuple[float, ...], float]:
    """The grid weights with the best recall@20 on a training cut (ties: first)."""
    best: tuple[tuple[float, ...], float] | None = None
    for w7, w30, wa in itertools.product(GRID_POP7, GRID_POP30, GRID_AFF):
        w = (1.0, w7, w30, wa)
        r = recall20(sig.score(w), truth, exclude)
        if best is None or r > best[1]:
            best = (w, r)
    assert best is not None
    return best


def retrain_time(cut: int) -> int:
    return cut - parse_duration(RETRAIN_LAG)
