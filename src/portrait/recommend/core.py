"""The recommendation core: candidates, re-ranking, diversity and reasons (pure).

A request is a :class:`UserContext` (the user's interactions, feedback
included, and their short-term category affinities from the profile) and a
:class:`Recommender` built from a fitted :class:`~portrait.models.cf.ALSModel`
and a :class:`~portrait.recommend.catalog.Catalog`. Nothing is mutated, so one
``Recommender`` serves concurrent requests. It snapshots the model's item
factors when built (plus their transposed copy and a neighbour index), so a
retrained model or new items (``ALSModel.update_items``) mean a new
``Recommender``, swapped in whole (:class:`portrait.models.registry.ModelHandle`).

Candidates (union, each tagged with its source):

* ``als``        the top ``als_candidates`` items for the user's *folded-in*
                 vector (an exact solve on the context's interactions, so a
                 user the model never saw works from their first event);
* ``neighbours`` items closest (factor cosine) to the user's ``seeds`` most
                 recent positive items (exact below 20,000 items, else an IVF
                 index, :mod:`portrait.recommend.ann`);
* ``category``   the most popular recent items of the user's
                 ``top_categories`` categories by affinity;
* ``popular``    the most popular items of the catalogue window (cold start).

The ALS scores are one pass over the transposed item factors (a
``factors x items`` float32 copy kept by the recommender, so the product is
a contiguous matrix-vector product). Re-ranking is a weighted sum
of four features in [0, 1] (weights in :class:`RecommendParams`); ALS fits
the preference ``p`` in {0, 1}, so its score clipped to [0, 1] is already an
absolute scale (a user with little history scores low and leans on the other
features)::

    score = 0.4 * clip(als, 0, 1)             (people with your taste)
          + 0.3 * max cosine to a seed item   (because you liked <seed>)
          + 0.2 * max affinity of the item's categories / max affinity
          + 0.1 * log1p(recent pop) / log1p(max recent pop)

Items the user consumed (any event with a positive weight) are never
returned. Items with only negative feedback (impressions never clicked) stay
eligible, but the fold-in pulls their ALS score towards 0 and their blended
score is divided by ``1 + ignored_penalty * |net weight|`` (3 ignored
impressions: / 2.5). ``diversity`` > 0 re-orders greedily by MMR,
``(1 - diversity) * score - diversity * max cosine to the items already
chosen`` over the best ``max(4k, 100)`` candidates. Each :class:`Rec` names its
largest weighted contribution as the reason.

Feedback loop: impressions, clicks and purchases are ordinary events with
the weights of :data:`~portrait.models.cf.DEFAULT_INTERACTIONS`. Log them,
and the next ``recommend`` call (whose context includes them) folds them in:
a click moves the user vector and makes the clicked item a neighbour seed, a
purchase removes the item, impressions without clicks push an item down. The
item factors only change at the next retrain
(:class:`~portrait.models.registry.RetrainPolicy`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from portrait.errors import UsageError
from portrait.models.cf import DEFAULT_INTERACTIONS, ALSModel, collapse_categories
from portrait.recommend.ann import CosineIndex
from portrait.recommend.catalog import Catalog

__all__ = ["Catalog", "Rec", "RecommendParams", "Recommender", "UserContext"]
SOURCES = ("als", "neighbours", "category", "popular")
_ALS, _NEIGHBOURS, _CATEGORY, _POPULAR = range(4)


@dataclass(frozen=True)
class RecommendParams:
    """Blend weights, candidate counts and the penalty for ignored items."""

    w_als: float = 0.4
    w_neighbour: float = 0.3
    w_category: float = 0.2
    w_popular: float = 0.1
    ignored_penalty: float = 1.0
    als_candidates: int = 200
    neighbour_candidates: int = 100  # per seed
    nprobe: int = 16  # IVF cells searched per seed (catalogues >= 20,000 items)
    category_candidates: int = 50
    popular_candidates: int = 100
    seeds: int = 3
    top_categories: int = 3


@dataclass(frozen=True)
class Rec:
    """One recommended item, its blended score in [0, 1], why, and who proposed it."""

    item_id: str
    score: float
    reason: str
    sources: tuple[str, ...]


def _empty_f() -> np.ndarray:
    return np.zeros(0, np.float64)


def _empty_i() -> np.ndarray:
    return np.zeros(0, np.int64)


@dataclass(frozen=True)
class UserContext:
    """A user's interactions (one entry per event) and short-term category affinities.

    When ``category_affinity`` is empty, the positive event weights spread
    over the items' categories stand in for it.
    """

    item_ids: Sequence[str] = ()
    weights: np.ndarray = field(default_factory=_empty_f)
    ts: np.ndarray = field(default_factory=_empty_i)
    category_affinity: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_events(cls, events: pl.DataFrame,
                    weights: Mapping[str, float] = DEFAULT_INTERACTIONS,
                    category_affinity: Mapping[str, float] | None = None) -> UserContext:
        """The context of one user's events (types not in ``weights`` ignored)."""
        ev = events.filter(pl.col("item_id").is_not_null() & pl.col("type").is_in(list(weights)))
        ev = collapse_categories(ev)
        w = pl.col("type").replace_strict(dict(weights), return_dtype=pl.Float64)
        return cls(
            item_ids=tuple(ev["item_id"].cast(pl.String).to_list()),
            weights=ev.select(w)["type"].to_numpy().astype(np.float64),
            ts=ev["ts"].to_numpy().astype(np.int64),
            category_affinity=dict(category_affinity or {}),
        )


@dataclass
class _User:
    """A context resolved against the model and the catalogue."""

    x: np.ndarray | None  # folded-in vector, None without known items
    consumed: np.ndarray  # catalogue indices
    ignored: dict[int, float]  # catalogue index -> negative net weight
    seeds: np.ndarray  # model indices, most recent first
    affinity: np.ndarray  # per catalogue category, max 1 (zeros: none)


class _Scored(NamedTuple):
    """Candidates with their blended scores, features, sources and reason inputs."""

    cand: np.ndarray  # catalogue indices
    total: np.ndarray
    feats: np.ndarray  # x (als, neighbour, category, popular)
    flags: np.ndarray  # x SOURCES
    why: np.ndarray  # x (closest seed's model index, best category index)

    def take(self, rows: np.ndarray) -> _Scored:
        return _Scored(*(a[rows] for a in self))


class Recommender:
    """Ranks a catalogue for a :class:`UserContext`; see the module doc."""

    def __init__(self, model: ALSModel, catalog: Catalog,
                 params: RecommendParams | None = None) -> None:
        self.model, self.catalog = model, catalog
        self.params = params or RecommendParams()
        self._c2m = model.item_index(catalog.item_ids)
        self._m2c = np.full(len(model.item_ids), -1, np.int64)
        known = np.flatnonzero(self._c2m >= 0)
        self._m2c[self._c2m[known]] = known
        # factors x items: scoring reads it once per request, row-wise
        self._yt = np.ascontiguousarray(model.item_factors.T, dtype=np.float32)
        self._y = model.item_factors.copy()  # items x factors: row gathers for candidates
        norms = np.where(model.item_norms > 0, model.item_norms, 1.0)
        self._inv_norms = (1.0 / norms).astype(np.float32)
        self._off_catalog = self._m2c < 0
        self._partial = bool(self._off_catalog.any())
        top = float(catalog.recent.max(initial=0.0))
        self._pop = np.log1p(catalog.recent) / np.log1p(top) if top > 0 else catalog.recent * 0
        self._pop_rank = np.empty(len(catalog), np.int64)
        self._pop_rank[catalog.popular] = np.arange(len(catalog))
        self._cats = _ItemCategories(catalog.item_categories)
        self._popular_reason = f"popular in the last {catalog.window_days:g} days"
        self._ann_items = np.flatnonzero(~self._off_catalog)  # index row -> model item
        self._ann = CosineIndex(model.item_factors[self._ann_items], nprobe=self.params.nprobe)

    def recommend(self, ctx: UserContext, k: int = 20, *, diversity: float = 0.0) -> list[Rec]:
        """The top ``k`` items for ``ctx`` (``diversity`` in [0, 1]: 0 = pure relevance)."""
        if not 0.0 <= diversity <= 1.0:
            raise UsageError(f"diversity must be in [0, 1], got {diversity}")
        user = self._resolve(ctx)
        als = None if user.x is None else user.x @ self._yt
        cand, flags = self._candidates(user, als)
        feats, why = self._features(user, cand, als)
        total = feats @ self._weights()
        for j in np.flatnonzero(np.isin(cand, list(user.ignored))):
            total[j] /= 1.0 + self.params.ignored_penalty * abs(user.ignored[int(cand[j])])
        order = np.asarray(self._order(cand, total, k, diversity), np.int64)
        return self._recs(_Scored(cand, total, feats, flags, why).take(order))

    # ---- steps ------------------------------------------------------------
    def _resolve(self, ctx: UserContext) -> _User:
        w = np.asarray(ctx.weights, np.float64)
        c_idx = self.catalog.index(ctx.item_ids)
        m_idx = self.model.item_index(ctx.item_ids)
        known = m_idx >= 0
        x = self.model.fold_in(m_idx, w) if known.any() else None
        pos = w > 0
        consumed = np.unique(c_idx[pos & (c_idx >= 0)])
        seen = c_idx >= 0
        items, inv = np.unique(c_idx[seen], return_inverse=True)
        net = np.bincount(inv, weights=w[seen], minlength=items.size)
        eaten = set(consumed.tolist())
        ignored = {int(i): float(v) for i, v in zip(items, net, strict=True)
                   if v < 0 and int(i) not in eaten}
        recent = np.argsort(-np.asarray(ctx.ts, np.int64)[pos & known], kind="stable")
        seeds = _first_unique(m_idx[pos & known][recent], self.params.seeds)
        return _User(x, consumed, ignored, seeds, self._affinity(ctx, c_idx, w))

    def _affinity(self, ctx: UserContext, c_idx: np.ndarray, w: np.ndarray) -> np.ndarray:
        aff = np.zeros(len(self.catalog.categories))
        if ctx.category_affinity:
            for name, value in ctx.category_affinity.items():
                c = self.catalog.category_index(name)
                if c >= 0:
                    aff[c] = max(float(value), 0.0)
        else:
            ok = (c_idx >= 0) & (w > 0)
            owner, cats = self._cats.of(c_idx[ok])
            aff = np.bincount(cats, weights=w[ok][owner], minlength=aff.size).astype(np.float64)
        top = aff.max(initial=0.0)
        out: np.ndarray = aff / top if top > 0 else aff
        return out

    def _neighbours(self, item: int) -> np.ndarray:
        """Catalogue indices of the items closest to model item ``item`` (cosine)."""
        rows, _ = self._ann.search(self._yt[:, item], self.params.neighbour_candidates + 1)
        found = self._m2c[self._ann_items[rows]]
        out: np.ndarray = found[found != self._m2c[item]]
        return out

    def _candidates(self, user: _User, als: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        p, cat = self.params, self.catalog
        lists: list[tuple[int, np.ndarray]] = []
        if als is not None:
            lists.append((_ALS, self._top_model(als, user, p.als_candidates)))
        for seed in user.seeds.tolist():
            lists.append((_NEIGHBOURS, self._neighbours(seed)))
        liked = np.flatnonzero(user.affinity > 0)
        for c in liked[np.argsort(-user.affinity[liked], kind="stable")][: p.top_categories]:
            lists.append((_CATEGORY, cat.by_category[c][: p.category_candidates]))
        lists.append((_POPULAR, cat.popular[: p.popular_candidates + user.consumed.size]))
        every = np.concatenate([idx for _, idx in lists])
        src = np.concatenate([np.full(idx.size, s) for s, idx in lists])
        cand, inv = np.unique(every, return_inverse=True)
        flags = np.zeros((cand.size, len(SOURCES)), bool)
        flags[inv, src] = True
        keep = ~np.isin(cand, user.consumed)
        return cand[keep], flags[keep]

    def _top_model(self, values: np.ndarray, user: _User, n: int) -> np.ndarray:
        """Catalogue indices of the ``n`` best model items, consumed and seeds excluded."""
        consumed_m = self._c2m[user.consumed]
        drop = np.concatenate([consumed_m[consumed_m >= 0], user.seeds])
        if self._partial:  # items outside the catalogue: mask them (a copy)
            values = np.where(self._off_catalog, -np.inf, values)
        want = min(n + drop.size, values.size)
        if want == 0:
            return _empty_i()
        top = np.argpartition(values, values.size - want)[values.size - want :]
        top = top[~np.isin(top, drop) & np.isfinite(values[top])]
        top = top[np.argsort(-values[top], kind="stable")[:n]]
        out: np.ndarray = self._m2c[top]
        return out

    def _features(self, user: _User, cand: np.ndarray,
                  als: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Per candidate: features (als, neighbour, category, popular) in [0, 1], and
        what the reasons need: (closest seed's model index, best category), -1 if none."""
        feats = np.zeros((cand.size, 4))
        why = np.full((cand.size, 2), -1, np.int64)
        cm = self._c2m[cand]
        has = cm >= 0
        if als is not None:
            feats[:, 0] = np.clip(np.where(has, als[cm], 0.0), 0.0, 1.0)
        if user.seeds.size and has.any():
            s = self._unit(user.seeds) @ self._unit(cm[has]).T  # seeds x candidates
            feats[has, 1] = np.clip(s.max(axis=0), 0.0, 1.0)
            why[has, 0] = user.seeds[s.argmax(axis=0)]
        feats[:, 2], why[:, 1] = self._cats.best(cand, user.affinity)
        feats[:, 3] = self._pop[cand]
        return feats, why

    def _unit(self, items: np.ndarray) -> np.ndarray:
        """Unit-length factors of model items, one row each."""
        out: np.ndarray = self._y[items] * self._inv_norms[items][:, None]
        return out

    def _weights(self) -> np.ndarray:
        p = self.params
        return np.array([p.w_als, p.w_neighbour, p.w_category, p.w_popular])

    def _order(self, cand: np.ndarray, total: np.ndarray, k: int, diversity: float) -> list[int]:
        by_score = np.lexsort((self._pop_rank[cand], -total))
        if diversity == 0.0 or cand.size <= 1:
            return [int(j) for j in by_score[:k]]
        cm = self._c2m[cand]
        v = np.where((cm >= 0)[:, None], self._unit(cm), 0.0)
        return _mmr(total, v, k, 1.0 - diversity, by_score)

    def _recs(self, chosen: _Scored) -> list[Rec]:
        """Recs for the chosen candidates, each with its largest contribution as reason."""
        why, flags = chosen.why, chosen.flags
        contrib = chosen.feats * self._weights()
        best = contrib.argmax(axis=1)
        out = []
        for j, c in enumerate(chosen.cand.tolist()):
            reason = self._popular_reason
            if contrib[j, best[j]] > 0:
                if best[j] == _NEIGHBOURS:
                    reason = f"because you liked {self.model.item_ids[why[j, 0]]}"
                elif best[j] == _CATEGORY:
                    reason = f"matches your interest in {self.catalog.categories[why[j, 1]]}"
                elif best[j] == _ALS:
                    reason = "people with your taste liked this"
            sources = tuple(s for s, f in zip(SOURCES, flags[j], strict=True) if f)
            out.append(Rec(self.catalog.item_ids[c], float(chosen.total[j]), reason, sources))
        return out


def _first_unique(values: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` distinct values in order of first appearance."""
    _, first = np.unique(values, return_index=True)
    out: np.ndarray = values[np.sort(first)][:n]
    return out


class _ItemCategories:
    """The catalogue's item -> categories incidence as raw CSR arrays (cheap row gathers)."""

    def __init__(self, csr: Any) -> None:
        self.indptr = np.asarray(csr.indptr, np.int64)
        self.indices = np.asarray(csr.indices, np.int64)

    def of(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in ``items``, category) for every category of every item."""
        starts = self.indptr[items]
        counts = self.indptr[items + 1] - starts
        owner = np.repeat(np.arange(items.size), counts)
        offset = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)
        return owner, self.indices[np.repeat(starts, counts) + offset]

    def best(self, items: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per item: the max of ``values`` over its categories (0 if none) and which one."""
        owner, cats = self.of(items)
        best, col = np.zeros(items.size), np.full(items.size, -1, np.int64)
        if cats.size == 0:
            return best, col
        v = values[cats]
        order = np.lexsort((-v, owner))  # per item, the largest value first
        first = order[np.r_[0, np.flatnonzero(np.diff(owner[order])) + 1]]
        best[owner[first]], col[owner[first]] = v[first], cats[first]
        return best, col


def _mmr(rel: np.ndarray, unit: np.ndarray, k: int, lam: float,
         by_score: np.ndarray) -> list[int]:
    """Greedy maximal marginal relevance; ties go to the earlier item of ``by_score``."""
    pool = by_score[: max(4 * k, 100)]
    rel, unit = rel[pool], unit[pool]
    max_sim = np.zeros(pool.size)
    taken = np.zeros(pool.size, bool)
    chosen: list[int] = []
    for _ in range(min(k, pool.size)):
        gain = np.where(taken, -np.inf, lam * rel - (1.0 - lam) * max_sim)
        j = int(np.argmax(gain))
        chosen.append(int(pool[j]))
        taken[j] = True
        max_sim = np.maximum(max_sim, unit @ unit[j])
    return chosen
