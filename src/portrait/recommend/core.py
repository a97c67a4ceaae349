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
* ``popular``    the most popular items (cold start): by ``Catalog.recent`` in
                 the hand blend, by the blend's popularity part in the learned.

The ALS scores are one pass over the transposed item factors (a
``factors x items`` float32 copy kept by the recommender, so the product is
a contiguous matrix-vector product). Two blends rank the candidates
(``RecommendParams.blend``):

``learned`` is the blend the replay evaluation measures (row ``recommender
(product)``) and whose weights it chooses point-in-time
(``portrait.eval.recommender``, ``docs/evaluation.md``). Each signal is
standardised (``z``, population standard deviation) over the *whole
catalogue*, per request for the personal ones::

    raw = w_als * z(als)                          (people with your taste)
        + w_short * z(log1p(recent_short pop))    (popular this week)
        + w_long * z(log1p(recent pop))           (popular this month)
        + w_aff * z(mean affinity of the item's categories)

with ``(w_als, w_short, w_long, w_aff) = learned_weights``. Catalogue items
the model has no factors for get the user's mean ALS score; a user without
known items or without affinity has ``z = 0`` for that signal. Because the
standardisation needs every item's value anyway, the best ``max(4k, 100)``
items by ``raw`` join the candidates (under the source of their largest
contribution) when the lists below missed them, so the top ``k`` over the
candidates is the top ``k`` over the catalogue. The score reported is
``raw`` rescaled to [0, 1] over the catalogue (min 0, max 1).

``hand`` (the default) is the hand-set blend of four features in [0, 1]
(weights in :class:`RecommendParams`); ALS fits the preference ``p`` in {0, 1}, so
its score clipped to [0, 1] is already an absolute scale (a user with little
history scores low and leans on the other features)::

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
largest weighted contribution as the reason (in the learned blend, an ALS
contribution of an item within cosine ``NEIGHBOUR_REASON_COSINE`` of a seed
reads "because you liked <seed>").

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
from typing import Any, Literal, NamedTuple

import numpy as np
import polars as pl
import scipy.sparse as sp

from portrait.errors import UsageError
from portrait.models.cf import DEFAULT_INTERACTIONS, ALSModel, collapse_categories
from portrait.recommend.ann import CosineIndex
from portrait.recommend.catalog import Catalog

__all__ = ["Catalog", "Rec", "RecommendParams", "Recommender", "UserContext"]
SOURCES = ("als", "neighbours", "category", "popular")
_ALS, _NEIGHBOURS, _CATEGORY, _POPULAR = range(4)
Blend = Literal["hand", "learned"]
# (als, popularity short window, popularity long window, category affinity): the
# weights the replay evaluation chose most often on MovieLens-1M (docs/evaluation.md)
LEARNED_WEIGHTS = (1.0, 8.0, 0.0, 2.0)
POP_SD_FLOOR = 0.5  # natural-log units; see _zpop
NEIGHBOUR_REASON_COSINE = 0.5  # learned blend: "because you liked <seed>" from this cosine


@dataclass(frozen=True)
class RecommendParams:
    """Blend, its weights, candidate counts and the penalty for ignored items.

    ``learned_weights`` weigh the standardised (als, short-window popularity,
    long-window popularity, category affinity) of the learned blend; the
    ``w_*`` weights are the hand blend's.
    """

    blend: Blend = "learned"
    learned_weights: tuple[float, float, float, float] = LEARNED_WEIGHTS
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


class _Learned(NamedTuple):
    """The learned blend of one request over the whole catalogue."""

    z_als: np.ndarray
    z_aff: np.ndarray
    raw: np.ndarray  # the blend, before rescaling to [0, 1]
    lo: float  # raw.min()
    span: float  # raw.max() - raw.min() (1 when constant)


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
        self._learned = self.params.blend == "learned"
        _, w_short, w_long, _ = self.params.learned_weights
        # the popularity part of the learned blend, the same for every request
        self._z_short = _zpop(np.log1p(catalog.recent_short))
        self._z_long = _zpop(np.log1p(catalog.recent))
        self._prior = w_short * self._z_short + w_long * self._z_long
        self._popular = (np.lexsort((self._pop_rank, -self._prior)) if self._learned
                         else catalog.popular)
        self._share = sp.csc_matrix(_row_shares(catalog.item_categories))  # by category
        self._c_known = self._c2m >= 0
        days = (catalog.short_window_days if self._learned and w_short >= w_long
                else catalog.window_days)
        self._popular_reason = f"popular in the last {_span(days)}"
        self._ann_items = np.flatnonzero(~self._off_catalog)  # index row -> model item
        self._ann = CosineIndex(model.item_factors[self._ann_items], nprobe=self.params.nprobe)

    def recommend(self, ctx: UserContext, k: int = 20, *, diversity: float = 0.0) -> list[Rec]:
        """The top ``k`` items for ``ctx`` (``diversity`` in [0, 1]: 0 = pure relevance)."""
        if not 0.0 <= diversity <= 1.0:
            raise UsageError(f"diversity must be in [0, 1], got {diversity}")
        user = self._resolve(ctx)
        als = None if user.x is None else user.x @ self._yt
        learned = self._blend(user, als) if self._learned else None
        cand, flags = self._candidates(user, als, learned, k)
        feats, why = self._features(user, cand, als, learned)
        if learned is None:
            total = feats @ self._weights()
        else:
            total = (learned.raw[cand] - learned.lo) / learned.span
        for j in np.flatnonzero(np.isin(cand, list(user.ignored))):
            total[j] /= 1.0 + self.params.ignored_penalty * abs(user.ignored[int(cand[j])])
        order = np.asarray(self._order(cand, total, k, diversity), np.int64)
        return self._recs(_Scored(cand, total, feats, flags, why).take(order))

    def signals(self, ctx: UserContext) -> tuple[np.ndarray, np.ndarray]:
        """The learned blend's standardised signals over the catalogue, items x
        (als, short popularity, long popularity, affinity), and the consumed items'
        indices (for tuning the weights: ``portrait.recommend.tuning``)."""
        user = self._resolve(ctx)
        als = None if user.x is None else user.x @ self._yt
        b = self._blend(user, als)
        out = np.stack([b.z_als, self._z_short, self._z_long, b.z_aff], axis=1)
        return out.astype(np.float32), user.consumed

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

    def _blend(self, user: _User, als: np.ndarray | None) -> _Learned:
        """The learned blend over the whole catalogue (module doc)."""
        w_als, _, _, w_aff = self.params.learned_weights
        z_als = np.zeros(len(self.catalog))
        if als is not None:
            a = np.zeros(len(self.catalog))
            a[self._c_known] = als[self._c2m[self._c_known]]
            if self._c_known.any() and not self._c_known.all():  # no factors: mean score
                a[~self._c_known] = a[self._c_known].mean()
            z_als = _z(a)
        z_aff = _z(self._match(user.affinity))
        raw = w_als * z_als + self._prior + w_aff * z_aff
        lo, hi = (float(raw.min()), float(raw.max())) if raw.size else (0.0, 0.0)
        return _Learned(z_als, z_aff, raw, lo, hi - lo if hi > lo else 1.0)

    def _match(self, affinity: np.ndarray) -> np.ndarray:
        """Per catalogue item, the mean ``affinity`` of its categories (reads only the
        columns of the user's categories: a few of a large catalogue's)."""
        m, cats = self._share, np.flatnonzero(affinity)
        starts, ends = m.indptr[cats], m.indptr[cats + 1]
        take = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends, strict=True)]
                              + [np.zeros(0, np.int64)])
        weight = m.data[take] * np.repeat(affinity[cats], ends - starts)
        out: np.ndarray = np.bincount(m.indices[take], weights=weight, minlength=m.shape[0])
        return out

    def _neighbours(self, item: int) -> np.ndarray:
        """Catalogue indices of the items closest to model item ``item`` (cosine)."""
        rows, _ = self._ann.search(self._yt[:, item], self.params.neighbour_candidates + 1)
        found = self._m2c[self._ann_items[rows]]
        out: np.ndarray = found[found != self._m2c[item]]
        return out

    def _candidates(self, user: _User, als: np.ndarray | None, learned: _Learned | None,
                    k: int) -> tuple[np.ndarray, np.ndarray]:
        p, cat = self.params, self.catalog
        lists: list[tuple[int, np.ndarray]] = []
        # The learned blend ranks the whole catalogue (``_complete`` adds its best
        # items); the ALS and neighbour lists only matter to the hand blend.
        if als is not None and learned is None:
            lists.append((_ALS, self._top_model(als, user, p.als_candidates)))
        for seed in user.seeds.tolist() if learned is None else ():
            lists.append((_NEIGHBOURS, self._neighbours(seed)))
        liked = np.flatnonzero(user.affinity > 0)
        for c in liked[np.argsort(-user.affinity[liked], kind="stable")][: p.top_categories]:
            lists.append((_CATEGORY, cat.by_category[c][: p.category_candidates]))
        lists.append((_POPULAR, self._popular[: p.popular_candidates + user.consumed.size]))
        every = np.concatenate([idx for _, idx in lists])
        src = np.concatenate([np.full(idx.size, s) for s, idx in lists])
        cand, inv = np.unique(every, return_inverse=True)
        flags = np.zeros((cand.size, len(SOURCES)), bool)
        flags[inv, src] = True
        if learned is not None:
            cand, flags = self._complete(cand, flags, user, learned, max(4 * k, 100))
        keep = ~np.isin(cand, user.consumed)
        return cand[keep], flags[keep]

    def _complete(self, cand: np.ndarray, flags: np.ndarray, user: _User, learned: _Learned,
                  n: int) -> tuple[np.ndarray, np.ndarray]:
        """Add the best ``n`` unconsumed items by the learned blend that the lists missed,
        each under the source of its largest contribution."""
        raw = learned.raw
        want = min(n + user.consumed.size, raw.size)
        if want == 0:
            return cand, flags
        top = np.argpartition(raw, raw.size - want)[raw.size - want :]
        top = top[~np.isin(top, user.consumed) & ~np.isin(top, cand)]
        if top.size == 0:
            return cand, flags
        w_als, _, _, w_aff = self.params.learned_weights
        parts = np.stack([w_als * learned.z_als[top], self._prior[top],
                          w_aff * learned.z_aff[top]], axis=1)
        extra = np.zeros((top.size, len(SOURCES)), bool)
        extra[np.arange(top.size), np.array([_ALS, _POPULAR, _CATEGORY])[parts.argmax(axis=1)]] = 1
        every = np.concatenate([cand, top])
        order = np.argsort(every, kind="stable")
        return every[order], np.concatenate([flags, extra])[order]

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

    def _features(self, user: _User, cand: np.ndarray, als: np.ndarray | None,
                  learned: _Learned | None) -> tuple[np.ndarray, np.ndarray]:
        """Per candidate: features (als, neighbour, category, popular), and what the
        reasons need: (closest seed's model index, best category), -1 if none.

        Hand blend: each feature in [0, 1]. Learned blend: z(als), the neighbour
        cosine (reasons only), z(affinity match) and the weighted popularity z's.
        """
        feats = np.zeros((cand.size, 4))
        why = np.full((cand.size, 2), -1, np.int64)
        cm = self._c2m[cand]
        has = cm >= 0
        if als is not None and learned is None:
            feats[:, 0] = np.clip(np.where(has, als[cm], 0.0), 0.0, 1.0)
        if user.seeds.size and has.any():
            s = self._unit(user.seeds) @ self._unit(cm[has]).T  # seeds x candidates
            feats[has, 1] = np.clip(s.max(axis=0), 0.0, 1.0)
            why[has, 0] = user.seeds[s.argmax(axis=0)]
        feats[:, 2], why[:, 1] = self._cats.best(cand, user.affinity)
        feats[:, 3] = self._pop[cand]
        if learned is not None:
            feats[:, 0], feats[:, 2] = learned.z_als[cand], learned.z_aff[cand]
            feats[:, 3] = self._prior[cand]
        return feats, why

    def _unit(self, items: np.ndarray) -> np.ndarray:
        """Unit-length factors of model items, one row each."""
        out: np.ndarray = self._y[items] * self._inv_norms[items][:, None]
        return out

    def _weights(self) -> np.ndarray:
        p = self.params
        if self._learned:  # the neighbour cosine only explains; popularity comes weighted
            return np.array([p.learned_weights[0], 0.0, p.learned_weights[3], 1.0])
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
                if best[j] == _NEIGHBOURS or (
                    self._learned and best[j] == _ALS
                    and chosen.feats[j, _NEIGHBOURS] >= NEIGHBOUR_REASON_COSINE
                ):
                    reason = f"because you liked {self.model.item_ids[why[j, 0]]}"
                elif best[j] == _CATEGORY:
                    reason = f"matches your interest in {self.catalog.categories[why[j, 1]]}"
                elif best[j] == _ALS:
                    reason = "people with your taste liked this"
            sources = tuple(s for s, f in zip(SOURCES, flags[j], strict=True) if f)
            out.append(Rec(self.catalog.item_ids[c], float(chosen.total[j]), reason, sources))
        return out


def _span(days: float) -> str:
    """A window length for a reason: "7 days", "36 hours", "18 months"."""
    if days < 2:
        return f"{round(days * 24)} hours"
    if days <= 90:
        return f"{round(days)} days"
    return f"{round(days / 30.44)} months"


def _zpop(log_pop: np.ndarray) -> np.ndarray:
    """Standardised log popularity, with the sd floored at ``POP_SD_FLOOR``: in a
    catalogue where every item is about as popular as the next (spread under
    ~e^0.5), the differences are noise and must not be blown up to unit scale."""
    v = np.asarray(log_pop, np.float64)
    if v.size == 0:
        return v
    out: np.ndarray = (v - v.mean()) / max(float(v.std()), POP_SD_FLOOR)
    return out


def _z(v: np.ndarray) -> np.ndarray:
    """Standardised ``v`` (population sd); all zeros when ``v`` is constant."""
    v = np.asarray(v, np.float64)
    sd = float(v.std()) if v.size else 0.0
    out: np.ndarray = (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)
    return out


def _row_shares(incidence: Any) -> Any:
    """items x categories with each item's row summing to 1 (no category: zeros)."""
    m = sp.csr_matrix(incidence, dtype=np.float64)
    m.data[:] = 1.0
    n = np.asarray(m.sum(axis=1)).ravel()
    return sp.diags(1.0 / np.where(n > 0, n, 1.0)) @ m


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
