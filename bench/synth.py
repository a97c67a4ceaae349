"""Synthetic shop events for the benchmarks: skewed, deterministic by seed.

Shape of the data (defaults of ``bench/ingest.py``):

* users: every user has at least one event; the rest follow a Zipf-Mandelbrot
  law (``(rank + 50) ** -1``), so a few users are very active and most are
  not; each user has a favourite category that half of their events go to;
* categories: 50 (``Sci-Fi`` among them), Zipf over the catalogue; items:
  2,000 per category, Zipf within it, each with a fixed log-normal price;
* types: view 62%, click 22%, cart 8%, purchase 4%, rating 4%; ``price`` and
  ``quantity`` on cart/purchase, ``rating`` (1-5) on rating events;
* times: uniform over the last 90 days in whole seconds; 3% are floored to
  the hour so that equal times (first/last tie-breaks by ``event_id``) occur;
* ``event_id``: unique, in an order unrelated to time.

The catch-up batch (``new``) is 1% more events on top of the history: 90%
after the history watermark (within one day), 10% late (up to three days
before it), 1% of them from users never seen before.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

CATEGORIES: tuple[str, ...] = (
    "Books", "Sci-Fi", "Drama", "Comedy", "Electronics", "Phones", "Laptops", "Audio",
    "Cameras", "Gaming", "Toys", "Baby", "Beauty", "Health", "Grocery", "Pets", "Garden",
    "Tools", "Home", "Kitchen", "Furniture", "Lighting", "Sports", "Outdoors", "Fitness",
    "Cycling", "Fashion", "Shoes", "Jewelry", "Watches", "Bags", "Kids", "Music", "Movies",
    "Anime", "Horror", "Romance", "Thriller", "Fantasy", "History", "Travel", "Cooking",
    "Art", "Office", "Automotive", "Software", "Crafts", "Collectibles", "Stationery",
    "Wellness",
)
TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase", "rating")
TYPE_P: tuple[float, ...] = (0.62, 0.22, 0.08, 0.04, 0.04)
ITEMS_PER_CATEGORY = 2_000
DAYS = 90
US_PER_S = 1_000_000
US_PER_DAY = 86_400 * US_PER_S
END_US = int(datetime(2024, 7, 1, tzinfo=UTC).timestamp()) * US_PER_S
TIE_SHARE = 0.03
LATE_SHARE = 0.10
NEW_USER_SHARE = 0.01


@dataclass(frozen=True)
class Dataset:
    """History and catch-up events (``ts`` in epoch µs, sorted by time)."""

    history: pl.DataFrame
    new: pl.DataFrame


def zipf_choice(rng: np.random.Generator, n: int, size: int, a: float, q: float) -> np.ndarray:
    """``size`` draws from ``0..n-1`` with P(rank r) proportional to ``(r + 1 + q) ** -a``."""
    w = (np.arange(1, n + 1, dtype=np.float64) + q) ** -a
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(size)), n - 1)


class _World:
    """The fixed catalogue and user tastes that every event is drawn from."""

    def __init__(self, rng: np.random.Generator, n_users: int) -> None:
        self.rng = rng
        self.n_users = n_users
        self.n_cat = len(CATEGORIES)
        self.rank_to_user = rng.permutation(n_users)
        self.favourite = zipf_choice(rng, self.n_cat, n_users, 1.0, 2.0)
        self.price = np.round(np.exp(rng.normal(3.0, 0.9, (self.n_cat, ITEMS_PER_CATEGORY))), 2)
        self.price = np.maximum(self.price, 0.5)

    def users(self, size: int, *, cover: bool) -> np.ndarray:
        """User indexes; with ``cover`` every user appears at least once."""
        rng = self.rng
        if cover:
            first = rng.permutation(self.n_users)[: min(size, self.n_users)]
        else:
            first = np.empty(0, dtype=np.int64)
        rest = self.rank_to_user[zipf_choice(rng, self.n_users, size - len(first), 1.0, 50.0)]
        return rng.permutation(np.concatenate([first, rest]))

    def events(self, users: np.ndarray, ts: np.ndarray, ids: np.ndarray) -> pl.DataFrame:
        rng, n = self.rng, len(users)
        known = np.minimum(users, self.n_users - 1)
        fav = np.where(users < self.n_users, self.favourite[known], 0)
        cat = np.where(rng.random(n) < 0.5, fav, zipf_choice(rng, self.n_cat, n, 1.0, 2.0))
        item = zipf_choice(rng, ITEMS_PER_CATEGORY, n, 1.1, 10.0)
        kind = rng.choice(len(TYPES), n, p=TYPE_P)
        priced = (kind == TYPES.index("cart")) | (kind == TYPES.index("purchase"))
        rated = kind == TYPES.index("rating")
        ratings = rng.choice(5, n, p=(0.05, 0.10, 0.20, 0.35, 0.30)) + 1.0
        frame = pl.DataFrame({
            "eid": ids, "uid": users, "ts": ts, "kind": kind, "cat": cat, "item": item,
            "price": np.where(priced, self.price[cat, item], np.nan),
            "quantity": np.where(priced, 1 + rng.poisson(0.3, n), 0),
            "rating": np.where(rated, ratings, np.nan),
        })
        return frame.select(
            ("e" + pl.col("eid").cast(pl.String).str.zfill(10)).alias("event_id"),
            ("u" + pl.col("uid").cast(pl.String).str.zfill(7)).alias("user_id"),
            pl.col("ts").cast(pl.Int64),
            pl.col("kind").replace_strict(dict(enumerate(TYPES)), return_dtype=pl.String)
            .alias("type"),
            ("c" + pl.col("cat").cast(pl.String).str.zfill(2) + "-"
             + pl.col("item").cast(pl.String).str.zfill(4)).alias("item_id"),
            pl.col("cat").replace_strict(dict(enumerate(CATEGORIES)), return_dtype=pl.String)
            .alias("category"),
            pl.col("price").fill_nan(None),
            pl.when(pl.col("quantity") > 0).then(pl.col("quantity")).cast(pl.Int64)
            .alias("quantity"),
            pl.col("rating").fill_nan(None),
        ).sort("ts", "event_id")


def _times(rng: np.random.Generator, size: int, lo_us: int, hi_us: int) -> np.ndarray:
    """Whole seconds in ``[lo, hi)``; a share floored to the hour (equal times)."""
    secs = rng.integers(lo_us // US_PER_S, hi_us // US_PER_S, size)
    hour = (secs // 3600) * 3600
    secs = np.where(rng.random(size) < TIE_SHARE, np.maximum(hour, lo_us // US_PER_S), secs)
    return secs * US_PER_S


def generate(n_events: int, n_users: int, seed: int, new_share: float = 0.01) -> Dataset:
    """History of ``n_events`` plus a catch-up batch of ``new_share`` of that."""
    rng = np.random.default_rng(seed)
    world = _World(rng, n_users)
    n_new = max(1, round(n_events * new_share))
    ids = rng.permutation(n_events + n_new)
    start = END_US - DAYS * US_PER_DAY
    hist_ts = _times(rng, n_events, start, END_US)
    history = world.events(world.users(n_events, cover=True), hist_ts, ids[:n_events])
    wm = int(hist_ts.max())
    late = rng.random(n_new) < LATE_SHARE
    new_ts = np.where(
        late,
        _times(rng, n_new, wm - 3 * US_PER_DAY, wm),
        _times(rng, n_new, wm + US_PER_S, wm + US_PER_DAY),
    )
    new_users = world.users(n_new, cover=False)
    fresh = rng.random(n_new) < NEW_USER_SHARE
    new_users = np.where(fresh, n_users + rng.integers(0, max(1, n_new // 100), n_new), new_users)
    new = world.events(new_users, new_ts, ids[n_events:])
    return Dataset(history=history, new=new)


def write_parquet(events: pl.DataFrame, path: Path) -> None:
    """Parquet with ``ts`` as a UTC timestamp (µs), the natural Parquet time type."""
    events.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC"))).write_parquet(
        path, compression="zstd", row_group_size=100_000
    )


def write_jsonl(events: pl.DataFrame, path: Path) -> None:
    """JSON Lines, RFC 3339 times, absent fields omitted (not null)."""

    def opt(name: str, value: pl.Expr) -> pl.Expr:
        return pl.when(pl.col(name).is_not_null()).then(
            pl.concat_str(pl.lit(f', "{name}": '), value)
        ).otherwise(pl.lit(""))

    ts = pl.from_epoch("ts", "us").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    line = pl.concat_str(
        pl.lit('{"event_id": "'), pl.col("event_id"),
        pl.lit('", "user_id": "'), pl.col("user_id"),
        pl.lit('", "ts": "'), ts,
        pl.lit('", "type": "'), pl.col("type"),
        pl.lit('", "item_id": "'), pl.col("item_id"),
        pl.lit('", "category": "'), pl.col("category"), pl.lit('"'),
        opt("price", pl.col("price").cast(pl.String)),
        opt("quantity", pl.col("quantity").cast(pl.String)),
        opt("rating", pl.col("rating").cast(pl.String)),
        pl.lit("}"),
    )
    events.select(line.alias("line")).write_csv(path, include_header=False, quote_style="never")
