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

``recommender (product)`` runs the product code itself on the same examples:
per warm user, a :class:`~portrait.recommend.UserContext` of their
consumptions up to ``T`` (and the engine's category affinity at ``T``, the
same half-life) goes through :meth:`portrait.recommend.Recommender.recommend`
(``k = 20``, learned blend, the weights chosen above) with the same scheduled
model and a :class:`~portrait.recommend.Catalog` built at ``T`` from the
consumptions up to ``T`` (:func:`product_ranking`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from portrait.eval import metrics as M
from portrait.models.cf import ALSModel, ALSParams
from portrait.recommend import Catalog, Recommender, RecommendParams, UserContext
from portrait.recommend.catalog import MIN_SHARE_LONG, MIN_SHARE_SHORT, adaptive_start
from portrait.recommend.core import POP_SD_FLOOR
from portrait.recommend.tuning import best_weights
from portrait.timeutil import parse_duration

DAY_US = 86_400_000_000
RETRAIN_LAG = "7d"
POP_WINDOWS = ("7d", "30d")
FEATURES = ("als", "pop_7d", "pop_30d", "affinity")
PRODUCT_K = 20
# above any blend score: the product's top 20 rank first, the rest keep the blend order
PRODUCT_OFFSET = 1e6
COUNT = "consumption"  # the one event type of the product catalogue: popularity = counts


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


def _zpop(log_pop: np.ndarray) -> np.ndarray:
    """As the product (``recommend.core._zpop``): the sd floored at ``POP_SD_FLOOR``."""
    out: np.ndarray = (log_pop - log_pop.mean()) / max(float(log_pop.std()), POP_SD_FLOOR)
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

    def popularity(self, at: int, window: str, *, adaptive: bool = True) -> np.ndarray:
        """Consumptions per item in the window before ``at``; ``adaptive``: widened like
        the product catalogue's when it holds too few (``catalog.adaptive_start``)."""
        lo = at - parse_duration(window)
        if adaptive:
            share = MIN_SHARE_SHORT if window == POP_WINDOWS[0] else MIN_SHARE_LONG
            ts = self.cons.filter(pl.col("ts") <= at)["ts"].to_numpy()
            lo = adaptive_start(ts, at, parse_duration(window), share)
        return popularity(self.cons, self.n_items, lo, at)

    def signals(self, users: np.ndarray, at: int, cat_aff: np.ndarray) -> Signals:
        """The standardised signals (``FEATURES``) for ``users`` (row order) at ``at``."""
        als = _zrows(fold_in_scores(self.model(at), self.cons, users, at, self.n_items))
        pops = [np.broadcast_to(_zpop(np.log1p(self.popularity(at, w))), als.shape)
                for w in POP_WINDOWS]
        share = cat_aff / np.maximum(cat_aff.sum(axis=1, keepdims=True), 1e-12)
        aff = _zrows(np.asarray(share @ self._genres_t))
        return Signals(np.stack([als, *pops, aff], axis=-1).astype(np.float32))


def recall20(scores: np.ndarray, truth: Any, exclude: Any) -> float:
    keep = np.asarray(truth.sum(axis=1)).ravel() > 0
    top = M.top_k(scores[keep], 20, exclude[keep])
    return float(np.nanmean(M.ranking_metrics(top, truth[keep], ks=(20,))["recall@20"]))


def choose_weights(sig: Signals, truth: Any, exclude: Any) -> tuple[tuple[float, ...], float]:
    """The grid weights (``recommend.tuning``'s grid) with the best recall@20 on a
    training cut (ties: first)."""
    return best_weights(lambda w: recall20(sig.score(w), truth, exclude))


def retrain_time(cut: int) -> int:
    return cut - parse_duration(RETRAIN_LAG)


@dataclass
class ProductRun:
    """The product recommender's top ``PRODUCT_K`` per user (item indices, -1 padded)."""

    top: np.ndarray  # users x PRODUCT_K
    seconds: float  # every recommend call

    def scores(self, base: np.ndarray) -> np.ndarray:
        """A score matrix with the product's ranking on top.

        The ranking metrics read a users x items score matrix: the product's
        top ``PRODUCT_K`` get ``PRODUCT_OFFSET * 2 - rank``; every other item
        ``base - PRODUCT_OFFSET`` (``base``: the vectorised blend), so
        recall/ndcg/hit at <= 20 are the product's exactly and MRR continues
        past 20 in the vectorised order.
        """
        out = np.asarray(base, np.float64) - PRODUCT_OFFSET
        rows, ranks = np.nonzero(self.top >= 0)
        out[rows, self.top[rows, ranks]] = 2 * PRODUCT_OFFSET - ranks
        return out


def catalog_at(cons: pl.DataFrame, categories: Sequence[str], at: int) -> Catalog:
    """The product catalogue at ``at`` from the consumptions up to ``at``.

    Items are ``str(i)`` (the model's ids); every consumption counts 1 in the
    popularity windows (7 and 30 days), as :func:`popularity` does.
    """
    c = cons.filter(pl.col("ts") <= at)
    names = pl.Series(list(categories), dtype=pl.String)
    events = c.select(
        pl.col("u").cast(pl.String).alias("user_id"),
        pl.col("i").cast(pl.String).alias("item_id"),
        pl.lit(COUNT).alias("type"),
        "ts",
        pl.col("cats").list.eval(pl.element().replace_strict(
            pl.Series(range(len(names))), names, return_dtype=pl.String)).alias("category"),
    ).explode("category")
    return Catalog.from_events(events, at, weights={COUNT: 1.0},
                               window_us=parse_duration(POP_WINDOWS[1]),
                               short_window_us=parse_duration(POP_WINDOWS[0]))


def user_contexts(cons: pl.DataFrame, users: np.ndarray, at: int,
                  affinity: Sequence[Mapping[str, float]]) -> list[UserContext]:
    """Per user (row order): their consumptions up to ``at`` (item ``str(i)``, type
    weight, ts) and ``affinity`` (the engine's category affinity at ``at``)."""
    c = (
        cons.filter((pl.col("ts") <= at) & pl.col("u").is_in(pl.Series(users).implode()))
        .select("u", "i", "weight", "ts")
        .sort("u", "ts", maintain_order=True)
    )
    u, items = c["u"].to_numpy(), c["i"].cast(pl.String).to_list()
    wts, ts = c["weight"].to_numpy().astype(np.float64), c["ts"].to_numpy().astype(np.int64)
    starts = np.searchsorted(u, users, side="left")
    ends = np.searchsorted(u, users, side="right")
    return [
        UserContext(item_ids=items[s:e], weights=wts[s:e], ts=ts[s:e], category_affinity=aff)
        for s, e, aff in zip(starts, ends, affinity, strict=True)
    ]


def product_params(weights: Sequence[float]) -> RecommendParams:
    """The product's parameters with the learned blend at ``weights`` (``FEATURES`` order)."""
    w = [float(x) for x in weights]
    return RecommendParams(blend="learned", learned_weights=(w[0], w[1], w[2], w[3]))


def product_ranking(rec: Recommender, contexts: Sequence[UserContext]) -> ProductRun:
    """``rec.recommend(ctx, k=PRODUCT_K)`` for each context, timed (BLAS on one thread,
    as one request is served)."""
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    top = np.full((len(contexts), PRODUCT_K), -1, np.int64)
    with threadpool_limits(1, "blas"):
        for row, ctx in enumerate(contexts):
            got = [int(r.item_id) for r in rec.recommend(ctx, k=PRODUCT_K)]
            top[row, : len(got)] = got
    return ProductRun(top, time.perf_counter() - start)


def affinity_maps(cat_aff: np.ndarray, categories: Sequence[str]) -> list[dict[str, float]]:
    """Per row of a users x categories matrix, its non-zero entries by category name."""
    return [{categories[j]: float(row[j]) for j in np.flatnonzero(row).tolist()} for row in cat_aff]


def top_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of ``a``'s items (-1 ignored) per row that are also in ``b``'s row."""
    shares = [np.isin(x[x >= 0], y).mean() for x, y in zip(a, b, strict=True) if (x >= 0).any()]
    return float(np.mean(shares)) if shares else float("nan")
