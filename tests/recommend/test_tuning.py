"""The blend weights are learned point-in-time on the deployment's own events."""

from __future__ import annotations

import random
from typing import Any

import polars as pl

from portrait.events.schema import EVENT_SCHEMA
from portrait.models.cf import DEFAULT_INTERACTIONS
from portrait.recommend.tuning import tune

T0 = 1_709_251_200_000_000
DAY = 86_400_000_000


def frame(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    recs: list[dict[str, Any]] = [
        {**dict.fromkeys(EVENT_SCHEMA), "event_id": f"e{n}", "user_id": u, "item_id": i,
         "ts": ts, "type": "view", "category": i.split("-", maxsplit=1)[0]}
        for n, (u, i, ts) in enumerate(rows)
    ]
    return pl.DataFrame(recs, schema=EVENT_SCHEMA, orient="row")


def no_affinity(_t: int, _users: list[str]) -> dict[str, dict[str, float]]:
    return {}


def test_taste_world_weights_taste_and_ignores_noise_popularity() -> None:
    rng = random.Random(1)
    rows = [(f"{g}{u}", f"{g}-{rng.randrange(30)}", T0 + rng.randrange(90 * DAY))
            for g in "abc" for u in range(40) for _ in range(15)]
    got = tune(frame(rows), DEFAULT_INTERACTIONS, no_affinity, T0 + 90 * DAY, 30 * DAY)
    assert got is not None
    assert got.weights[1] == 0.0  # short-window popularity: noise here
    assert got.recall >= got.default_recall
    assert got.recall > 0.5


def test_trend_world_weights_the_current_wave() -> None:
    """Everyone watches this week's releases; taste is random: trend must win."""
    rng = random.Random(2)
    rows = []
    for day in range(90):
        hits = [f"x-{day // 7}-{j}" for j in range(5)]  # a new wave every week
        for _ in range(40):
            user = f"u{rng.randrange(150)}"
            item = rng.choice(hits) if rng.random() < 0.8 else f"x-old-{rng.randrange(200)}"
            rows.append((user, item, T0 + day * DAY + rng.randrange(DAY)))
    got = tune(frame(rows), DEFAULT_INTERACTIONS, no_affinity, T0 + 90 * DAY, 10 * DAY)
    assert got is not None
    assert got.weights[1] > 0.0 or got.weights[2] > 0.0
    assert got.recall > 0.2


def test_too_few_examples_gives_none() -> None:
    rows = [("u1", "x-1", T0), ("u1", "x-2", T0 + 40 * DAY)]
    assert tune(frame(rows), DEFAULT_INTERACTIONS, no_affinity, T0 + 40 * DAY, 30 * DAY) is None
