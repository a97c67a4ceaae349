"""Planted-cluster data for the ALS model and its contract case.

``planted_events``: ``groups`` user groups, each consuming only the items of
its own group (item ``g{g}_i{j}`` in category ``cat{g}``); every event is a
view, click or purchase at a distinct time. A good CF model must recover the
groups: recommendations and item neighbours stay inside them.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from tests.models.cases import Case, register

from portrait.models.cf import ALSModel, ALSParams, interactions

GROUPS, USERS, ITEMS, PER_USER = 4, 30, 25, 10
DAY_US = 86_400_000_000
T0 = 1_700_000_000_000_000
TYPES = ("view", "click", "purchase")
PARAMS = ALSParams(factors=8, iterations=15, regularization=0.1, alpha=1.0, seed=1)


def group_of(item_or_user: str) -> int:
    return int(item_or_user.split("_", maxsplit=1)[0][1:])


def planted_events(seed: int = 0) -> pl.DataFrame:
    """Events of the planted groups over 60 days before ``T0 + 60 days``."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(GROUPS):
        for u in range(USERS):
            for j in rng.choice(ITEMS, PER_USER, replace=False):
                rows.append({
                    "user_id": f"g{g}_u{u:02d}", "item_id": f"g{g}_i{j:02d}",
                    "type": TYPES[int(rng.integers(3))], "category": f"cat{g}",
                    "ts": T0 + int(rng.integers(60 * DAY_US)),
                })
    return pl.DataFrame(rows).sort("ts", "user_id", "item_id")


def planted_model(seed: int = 0) -> ALSModel:
    return ALSModel(PARAMS).fit(interactions(planted_events(seed)))


def _update(r: int) -> pl.DataFrame:
    """Round ``r``: the full rows of one existing user (changed) and of one new user."""
    old, new = f"g{r % GROUPS}_u00", f"g{r % GROUPS}_new{r:02d}"
    return pl.DataFrame({
        "user_id": [old, old, old, new, new],
        "item_id": [f"g{r % GROUPS}_i{(r + k) % ITEMS:02d}" for k in range(3)]
        + [f"g{r % GROUPS}_i00", "never_seen_item"],
        "weight": [2.0, 5.0, -0.5 * (r + 1), 1.0, 3.0],
    })


def _predict() -> pl.DataFrame:
    return pl.DataFrame({
        "user_id": ["g0_u00", "g1_u03", "g3_u29", "nobody", "g2_u05"],
        "item_id": ["g0_i01", "g0_i01", "g3_i24", "g0_i01", "no_such_item"],
    })


ROUNDS = 20
register(Case(
    name="cf.ALSModel",
    make=lambda: ALSModel(PARAMS),
    fit_data=lambda: interactions(planted_events()),
    update_data=_update,
    predict_data=_predict,
    # each round adds one user (an id); the float32 factor buffer doubles once, from the
    # GROUPS * USERS fitted rows: amortised appends, not a leak
    grow_bytes=GROUPS * USERS * PARAMS.factors * 4 + ROUNDS * (64 + 4 * 12),
    update_rounds=ROUNDS,
))
