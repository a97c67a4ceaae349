"""Small generated datasets with a known answer, in the dataset Parquet shape.

``ratings``: users with a personal favourite genre that drifts once (a
dynamic profile should track it; global popularity knows nothing of it).
``purchases``: customers whose purchase rate stops at a random churn time
(recency carries the signal).
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl

DAY_US = 86_400_000_000
START_US = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")


def _frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    frame = pl.DataFrame(rows).with_columns(
        pl.from_epoch(pl.col("ts"), time_unit="us").dt.replace_time_zone("UTC")
    )
    return frame.sort(["ts", "event_id"])


def ratings(n_users: int = 90, n_items: int = 120, days: int = 240, seed: int = 0) -> pl.DataFrame:
    """One event per (rating, genre), like the MovieLens conversion."""
    rng = np.random.default_rng(seed)
    item_genres = [
        sorted({GENRES[i % len(GENRES)], GENRES[int(rng.integers(len(GENRES)))]})
        for i in range(n_items)
    ]
    by_genre = {g: [i for i in range(n_items) if g in item_genres[i]] for g in GENRES}
    rows: list[dict[str, object]] = []
    line = 0
    for u in range(n_users):
        fav = [GENRES[u % len(GENRES)], GENRES[(u + 2) % len(GENRES)]]
        switch = int(rng.integers(days // 3, days))
        seen: set[int] = set()
        for day in range(days):
            if rng.random() > 0.25:
                continue
            genre = fav[day >= switch]
            for _ in range(int(rng.integers(1, 4))):
                pool = [i for i in by_genre[genre] if i not in seen]
                if rng.random() < 0.2 or not pool:
                    pool = [i for i in range(n_items) if i not in seen]
                if not pool:
                    break
                item = int(rng.choice(pool))
                seen.add(item)
                line += 1
                ts = START_US + day * DAY_US + int(rng.integers(0, DAY_US))
                rating = float(rng.integers(1, 6))
                kind = "like" if rating >= 4 else "rating" if rating == 3 else "dislike"
                for g in item_genres[item]:
                    rows.append({
                        "event_id": f"syn:{line}:{g}", "user_id": str(u), "ts": ts,
                        "type": kind, "item_id": f"item{item:03d}", "category": g,
                        "rating": rating,
                    })
    return _frame(rows)


def purchases(n_users: int = 400, days: int = 540, seed: int = 0) -> pl.DataFrame:
    """CDNOW-like orders: each customer buys at their own rate until they churn."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    line = 0
    for u in range(n_users):
        first = int(rng.integers(0, 60))
        churn = int(rng.integers(first + 1, days + 200))
        rate = float(rng.uniform(0.005, 0.05))
        for day in range(first, min(churn, days)):
            if day == first or rng.random() < rate:
                line += 1
                rows.append({
                    "event_id": f"cd:{line}", "user_id": str(u),
                    "ts": START_US + day * DAY_US, "type": "purchase",
                    "price": round(float(rng.uniform(5, 80)), 2),
                    "quantity": int(rng.integers(1, 4)),
                })
    return _frame(rows)
