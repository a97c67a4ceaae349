"""The catalogue a recommender ranks: items, their categories, their popularity.

Built once from an events frame at a time ``now`` (events after ``now`` are
ignored). An item exists once any event names it (an impression is enough).
Popularity is the sum of the *positive* interaction weights of the item's
events (impressions never add popularity): ``recent`` over
``(now - window_us, now]`` (30 days by default), ``recent_short`` over
``(now - short_window_us, now]`` (7 days), ``alltime`` over everything up to
``now``. The learned blend of :mod:`portrait.recommend.core` reads both
windows. A window that holds too little to rank by (the tail of a dataset, a
quiet night) is widened: it reaches back at least far enough to hold
``MIN_SHARE_SHORT`` (1%) / ``MIN_SHARE_LONG`` (4%) of all positive
interactions up to ``now`` (:func:`adaptive_start`); ``window_us`` /
``short_window_us`` are the windows actually used. An item
may carry several categories (every non-null ``category`` seen on its
events); per category the items are kept in recent-popularity order, the
candidate list of "more of what you like". Events that differ only in
category count once (see :func:`portrait.models.cf.collapse_categories`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from portrait.models.cf import DEFAULT_INTERACTIONS, collapse_categories

DAY_US = 86_400 * 1_000_000
DEFAULT_WINDOW_US = 30 * DAY_US
DEFAULT_SHORT_WINDOW_US = 7 * DAY_US
PER_CATEGORY = 200  # items kept per category, by recent popularity
MIN_SHARE_SHORT = 0.01  # the short window holds at least 1% of the interactions so far
MIN_SHARE_LONG = 0.04  # the long one at least 4%


def adaptive_start(ts: np.ndarray, now: int, window_us: int, min_share: float) -> int:
    """``lo`` of the window ``(lo, now]``: ``now - window_us``, widened if needed so that
    it holds at least ``ceil(min_share * len(ts))`` of the times ``ts`` (all ``<= now``)."""
    lo = now - window_us
    k = int(np.ceil(min_share * ts.size))
    if k == 0:
        return lo
    kth = int(np.partition(ts, ts.size - k)[ts.size - k])  # the k-th most recent time
    return min(lo, kth - 1)


@dataclass(frozen=True)
class Catalog:
    """Items (index = position in ``item_ids``) with categories and popularity.

    ``recent_short`` left out (empty) means the catalogue has one window: it
    becomes a copy of ``recent`` and ``short_window_us`` becomes ``window_us``.
    """

    item_ids: tuple[str, ...]
    categories: tuple[str, ...]
    item_categories: Any  # csr items x categories, 1 where the item is in the category
    recent: np.ndarray  # positive weight in (now - window_us, now], per item
    alltime: np.ndarray  # positive weight up to now, per item
    now: int  # epoch µs
    window_us: int = DEFAULT_WINDOW_US
    recent_short: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (now - short, now]
    short_window_us: int = DEFAULT_SHORT_WINDOW_US
    popular: np.ndarray = field(init=False)  # item indices, most popular first
    by_category: tuple[np.ndarray, ...] = field(init=False)  # per category, popular first
    _item_pos: dict[str, int] = field(init=False, repr=False)
    _cat_pos: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.recent_short.size == 0 and len(self.item_ids):
            object.__setattr__(self, "recent_short", self.recent.copy())
            object.__setattr__(self, "short_window_us", self.window_us)
        n = len(self.item_ids)
        order = np.lexsort((np.arange(n), -self.alltime, -self.recent))
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        by_cat = sp.csc_matrix(self.item_categories)
        per_cat = []
        for c in range(len(self.categories)):
            members = by_cat.indices[by_cat.indptr[c] : by_cat.indptr[c + 1]]
            per_cat.append(members[np.argsort(rank[members])][:PER_CATEGORY])
        object.__setattr__(self, "popular", order)
        object.__setattr__(self, "by_category", tuple(per_cat))
        object.__setattr__(self, "_item_pos", {s: i for i, s in enumerate(self.item_ids)})
        object.__setattr__(self, "_cat_pos", {s: i for i, s in enumerate(self.categories)})

    @classmethod
    def from_events(cls, events: pl.DataFrame, now: int, *, window_us: int = DEFAULT_WINDOW_US,
                    weights: Mapping[str, float] = DEFAULT_INTERACTIONS,
                    short_window_us: int = DEFAULT_SHORT_WINDOW_US) -> Catalog:
        """The catalogue as of ``now`` (epoch µs); windows in µs; see the module doc."""
        ev = events.filter(pl.col("item_id").is_not_null() & (pl.col("ts") <= now))
        ev = collapse_categories(ev.with_columns(pl.col("item_id").cast(pl.String)))
        items = ev.select("item_id").unique().sort("item_id").with_row_index("i")
        w = pl.col("type").replace_strict(dict(weights), default=0.0, return_dtype=pl.Float64)
        pos = pl.max_horizontal(w, pl.lit(0.0))
        times = ev.filter(w > 0)["ts"].to_numpy()
        window_us = now - adaptive_start(times, now, window_us, MIN_SHARE_LONG)
        short_window_us = now - adaptive_start(times, now, short_window_us, MIN_SHARE_SHORT)
        pop = ev.group_by("item_id").agg(
            pos.sum().alias("all"),
            pos.filter(pl.col("ts") > now - window_us).sum().alias("rec"),
            pos.filter(pl.col("ts") > now - short_window_us).sum().alias("short"),
        )
        pop = items.join(pop, on="item_id", how="left").sort("i")
        cats = _categories(events.filter(pl.col("ts") <= now), items)
        return cls(
            item_ids=tuple(items["item_id"].to_list()),
            categories=cats[0],
            item_categories=cats[1],
            recent=pop["rec"].fill_null(0.0).to_numpy().astype(np.float64),
            alltime=pop["all"].fill_null(0.0).to_numpy().astype(np.float64),
            now=now,
            window_us=window_us,
            recent_short=pop["short"].fill_null(0.0).to_numpy().astype(np.float64),
            short_window_us=short_window_us,
        )

    def __len__(self) -> int:
        return len(self.item_ids)

    def index(self, ids: Any) -> np.ndarray:
        """Catalogue indices of ``ids`` (-1 for unknown items)."""
        get = self._item_pos.get
        out: np.ndarray = np.fromiter((get(s, -1) for s in ids), dtype=np.int64)
        return out

    def category_index(self, name: str) -> int:
        return self._cat_pos.get(name, -1)

    @property
    def window_days(self) -> float:
        return self.window_us / DAY_US

    @property
    def short_window_days(self) -> float:
        return self.short_window_us / DAY_US


def _categories(events: pl.DataFrame, items: pl.DataFrame) -> tuple[tuple[str, ...], Any]:
    pairs = (
        events.select(pl.col("item_id").cast(pl.String), pl.col("category").cast(pl.String))
        .drop_nulls()
        .unique()
    )
    cats = pairs.select("category").unique().sort("category").with_row_index("c")
    j = pairs.join(items, on="item_id").join(cats, on="category")
    m = sp.csr_matrix(
        (np.ones(j.height), (j["i"].to_numpy(), j["c"].to_numpy())),
        shape=(items.height, cats.height),
    )
    return tuple(cats["category"].to_list()), m
