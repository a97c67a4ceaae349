"""Learn the recommender's blend weights on a deployment's own data, point-in-time.

The learned blend (``recommend.core``) weighs four standardised signals:
ALS fold-in, short- and long-window popularity, category affinity. How much
trend matters differs by deployment (MovieLens users rate the current wave; a
shop's users may follow their own taste), so ``portrait models train`` picks
the weights the way ``portrait eval`` does, on the store's own events and
without looking ahead:

1. ``T0 = T - horizon``. A model is fitted on the interactions up to ``T0``
   and a catalogue is built at ``T0``.
2. The examples are users with a positive interaction up to ``T0`` and a
   positive interaction with an item new to them in ``(T0, T]`` (at most
   ``max_users``, a seeded sample); their contexts are their events up to
   ``T0`` and their category affinities read from the engine at ``T0``.
3. Each weight triple of the grid (ALS weight fixed at 1) ranks the
   catalogue for every example user, consumed items removed; the weights
   with the best mean recall@20 win (ties: the first in grid order).

Everything in (T0, T] is only the truth, so the chosen weights are what a
model trained at ``T0`` would have done best with; the final model is then
trained on everything up to ``T`` and uses them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from portrait.models.cf import ALSModel, ALSParams, interactions
from portrait.recommend.catalog import Catalog
from portrait.recommend.core import Recommender, RecommendParams, UserContext

# The grid of (short popularity, long popularity, affinity) weights, ALS fixed at 1.
# ``portrait eval`` searches the same grid (eval/recommender.py).
GRID_SHORT = (0.0, 2.0, 4.0, 8.0, 12.0, 20.0)
GRID_LONG = (0.0, 2.0, 4.0)
GRID_AFF = (0.0, 0.5, 1.0, 2.0)
K = 20
Weights = tuple[float, float, float, float]


def best_weights(recall: Callable[[Weights], float]) -> tuple[Weights, float]:
    """The grid weights with the best ``recall(weights)`` (ties: the first in grid order)."""
    best: tuple[Weights, float] | None = None
    for ws, wl, wa in itertools.product(GRID_SHORT, GRID_LONG, GRID_AFF):
        w = (1.0, ws, wl, wa)
        r = recall(w)
        if best is None or r > best[1]:
            best = (w, r)
    assert best is not None
    return best


@dataclass(frozen=True)
class Tuned:
    weights: tuple[float, float, float, float]
    recall: float  # mean recall@20 of the chosen weights on the examples
    users: int  # example users
    default_recall: float  # of the shipped default weights, same examples


def tune(
    events: pl.DataFrame,
    weights: Mapping[str, float],
    affinity: Callable[[int, list[str]], dict[str, dict[str, float]]],
    at: int,
    horizon_us: int,
    *,
    seed: int = 0,
    max_users: int = 300,
    factors: int = 64,
) -> Tuned | None:
    """Weights for ``Recommender`` chosen at ``at - horizon_us`` (None: too few examples).

    ``affinity(t, users)`` gives each user's category affinity read at ``t``.
    """
    t0 = at - horizon_us
    pos = pl.col("type").replace_strict(dict(weights), default=0.0, return_dtype=pl.Float64) > 0
    ev = events.filter(pl.col("item_id").is_not_null())
    past = ev.filter(pl.col("ts") <= t0)
    seen = past.filter(pos).select("user_id", "item_id").unique()
    new = (
        ev.filter((pl.col("ts") > t0) & (pl.col("ts") <= at) & pos)
        .select("user_id", "item_id").unique()
        .join(seen, on=["user_id", "item_id"], how="anti")
        .join(seen.select("user_id").unique(), on="user_id", how="semi")
    )
    users = sorted(new["user_id"].unique().to_list())
    if len(users) < 10:
        return None
    rng = np.random.default_rng(seed)
    if len(users) > max_users:
        users = sorted(rng.choice(users, max_users, replace=False).tolist())
    inter = interactions(past, weights)
    if inter.height == 0:
        return None
    model = ALSModel(ALSParams(factors=factors, seed=seed)).fit(inter, trained_at=t0)
    catalog = Catalog.from_events(past, t0, weights=weights)
    # bound the users x items x 4 float32 signal stack to ~200 MB
    users = users[: max(30, 200_000_000 // max(16 * len(catalog), 1))]
    rec = Recommender(model, catalog, RecommendParams(blend="learned"))
    aff = affinity(t0, users)
    by_user = {u: f for (u,), f in past.filter(pl.col("user_id").is_in(users))
               .group_by("user_id")}
    truth_of = {u: catalog.index(f["item_id"].to_list()) for (u,), f in
                new.filter(pl.col("user_id").is_in(users)).group_by("user_id")}
    sig, masks, truths = [], [], []
    for u in users:
        ctx = UserContext.from_events(by_user[u], weights, aff.get(u, {}))
        s, consumed = rec.signals(ctx)
        t = truth_of[u][truth_of[u] >= 0]
        if t.size == 0:
            continue
        sig.append(s)
        masks.append(consumed)
        truths.append(t)
    if len(sig) < 10:
        return None
    stack = np.stack(sig)  # users x items x 4
    for row, consumed in enumerate(masks):
        stack[row, consumed, :] = np.nan  # never ranked
    best = best_weights(lambda w: _recall(stack, truths, w))
    default = _recall(stack, truths, RecommendParams().learned_weights)
    return Tuned(best[0], best[1], len(sig), default)


def _recall(stack: np.ndarray, truths: list[np.ndarray],
            w: tuple[float, float, float, float]) -> float:
    score = stack @ np.asarray(w, np.float32)
    score = np.where(np.isnan(score), -np.inf, score)
    k = min(K, score.shape[1])
    top = np.argpartition(-score, k - 1, axis=1)[:, :k]
    hits = [np.isin(t, row).sum() / t.size for row, t in zip(top, truths, strict=True)]
    return float(np.mean(hits))
