"""``next_category`` and ``next_item`` on rating/consumption data (MovieLens-style).

A *consumption* is one (user, item, ts) — in MovieLens one rating, which the
dataset expands into one event per genre; its categories are the categories
of those events. At cut ``T``:

* history: consumptions with ``ts <= T``; the items a user already consumed
  are never recommended to them;
* ``next_category`` truth: the user's first ``n_next`` consumptions in
  ``(T, T + horizon]``; the relevance of a category is the share of them in
  it;
* ``next_item`` truth: items first consumed by the user in ``(T, T + horizon]``,
  ranked against the whole catalogue (never sampled negatives).

Methods (the same users, cuts and truth for all):

* baselines — ``popular_all`` (all history), ``popular_30d`` /
  ``trending_30d`` (the trend window before ``T``: trend-aware, not
  personal), ``static_profile`` (the user's profile at the first cut, never
  updated), ``counts_alltime`` (up to date, no decay), ``item_knn`` (cosine
  item–item similarity over history, user = all items ever consumed),
  ``als_static`` (``implicit`` ALS trained at the first cut only);
* dynamic — the engine's decayed affinities (``category`` and ``item_id``
  keyed, one feature per half-life) read at ``T`` minus the staleness of each
  refresh interval; for ``next_item`` the decayed item profile goes through
  the same item–item similarity as ``item_knn``, so the two differ only in
  the profile.

Personal rankings that run out of signal (a user with one genre) continue in
the trend order; users without a personal profile get the trend order — the
same fallback for every personal method.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from portrait.eval import learned as L
from portrait.eval import metrics as M
from portrait.eval import recommender as R
from portrait.eval.protocol import REFRESH_EVENT, Progress, Protocol
from portrait.eval.replay import USER, Replay, SnapshotRequest, cut_requests
from portrait.events.schema import DeadLetter
from portrait.recommend import Recommender
from portrait.spec.loader import parse_spec
from portrait.timeutil import format_us, parse_duration

KNN_NEIGHBOURS = 100
ALS_FACTORS = 64
ALS_ITERATIONS = 15
ALS_REGULARIZATION = 0.05
TYPE_WEIGHTS = {"like": 2.0, "rating": 1.0, "dislike": 0.5}
CATEGORY_METRICS = ("acc@1", "acc@3", "ndcg@3")
ITEM_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "hit@10", "mrr")


def hl_tag(h: str) -> str:
    return h.replace(".", "_")


def ranking_spec(half_lives: tuple[str, ...], weights: dict[str, float]) -> str:
    """The profile spec the replay builds: counts + decayed category / item maps."""
    w = ", ".join(f"{k}: {v}" for k, v in weights.items())
    lines = [
        "version: 1",
        "features:",
        "  consumptions: {kind: distinct, field: item_id}",
        "  category_counts: {kind: top_k, key: category, k: 1000}",
    ]
    for h in half_lives:
        t = hl_tag(h)
        lines.append(
            f"  category_h{t}: {{kind: decayed, key: category, half_life: {h}, weights: {{{w}}}}}"
        )
        lines.append(
            f"  item_h{t}: {{kind: decayed, key: item_id, half_life: {h}, weights: {{{w}}}}}"
        )
    return "\n".join(lines) + "\n"


@dataclass
class Data:
    """Index spaces and the consumption table of one dataset."""

    users: pl.DataFrame  # user_id, u (row index)
    items: pl.DataFrame  # item_id, i
    cats: pl.DataFrame  # category, c
    cons: pl.DataFrame  # u, i, ts, weight, cats (List[Int]) sorted by ts, i
    multiplicity: np.ndarray  # events per consumption, per item (genres per movie)
    genres: Any  # items x categories, rows sum to 1


def prepare(events: pl.DataFrame) -> Data:
    ev = events.filter(pl.col("item_id").is_not_null())
    users = ev.select(USER).unique().sort(USER).with_row_index("u")
    items = ev.select("item_id").unique().sort("item_id").with_row_index("i")
    cats = (
        ev.select("category").drop_nulls().unique().sort("category").with_row_index("c")
    )
    weight = pl.col("type").replace_strict(TYPE_WEIGHTS, default=1.0, return_dtype=pl.Float64)
    cons = (
        ev.join(cats, on="category", how="left")
        .group_by(USER, "item_id", "ts")
        .agg(pl.col("c").drop_nulls().unique().sort().alias("cats"), weight.first().alias("weight"),
             pl.len().alias("n_events"))
        .join(users, on=USER)
        .join(items, on="item_id")
        .sort(["ts", "i", "u"])
    )
    per_item = cons.group_by("i").agg(pl.col("n_events").mean().alias("m")).sort("i")
    mult = np.ones(items.height)
    mult[per_item["i"].to_numpy()] = per_item["m"].to_numpy()
    return Data(
        users=users.with_columns(pl.col("u").cast(pl.Int64)),
        items=items.with_columns(pl.col("i").cast(pl.Int64)),
        cats=cats.with_columns(pl.col("c").cast(pl.Int64)),
        cons=cons.select(
            pl.col("u").cast(pl.Int64), pl.col("i").cast(pl.Int64), "ts", "weight", "cats"
        ),
        multiplicity=mult,
        genres=item_categories(cons, items.height, cats.height),
    )


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> Any:
    m = sp.csr_matrix((vals, (rows, cols)), shape=shape, dtype=np.float64)
    m.sum_duplicates()
    return m


def interaction_matrix(data: Data, lo: int | None, hi: int, *, weighted: bool = False) -> Any:
    """users x items: 1 (or the type weight) for consumptions with ``lo < ts <= hi``."""
    c = data.cons.filter(pl.col("ts") <= hi)
    if lo is not None:
        c = c.filter(pl.col("ts") > lo)
    vals = c["weight"].to_numpy() if weighted else np.ones(c.height)
    m = _csr(c["u"].to_numpy(), c["i"].to_numpy(), vals, (data.users.height, data.items.height))
    if not weighted:
        m.data[:] = 1.0
    return m


def category_counts(data: Data, lo: int | None, hi: int) -> np.ndarray:
    """Global consumptions per category in ``(lo, hi]`` (trend / popularity)."""
    c = data.cons.filter(pl.col("ts") <= hi)
    if lo is not None:
        c = c.filter(pl.col("ts") > lo)
    flat = c["cats"].explode().drop_nulls().to_numpy()
    return np.bincount(flat, minlength=data.cats.height).astype(np.float64)


def map_matrix(frame: pl.DataFrame, col: str, rows: pl.DataFrame, keys: pl.DataFrame, *,
               key_col: str, idx_col: str) -> Any:
    """A map feature (List(Struct(key, value))) -> csr (len(rows) x len(keys)).

    ``rows`` is ``user_id`` + ``r`` (the output row of each user).
    """
    long = (
        frame.select(USER, pl.col(col)).join(rows, on=USER)
        .explode(col).drop_nulls(col).unnest(col)
        .join(keys.rename({key_col: "key"}), on="key")
    )
    return _csr(long["r"].to_numpy(), long[idx_col].to_numpy(), long["value"].to_numpy(),
                (rows.height, keys.height))


def cosine_knn(hist: Any, neighbours: int = KNN_NEIGHBOURS) -> np.ndarray:
    """Item–item cosine similarity of binary history, ``neighbours`` best per item kept."""
    dense = hist.astype(np.float32).toarray()
    norms = np.sqrt((dense * dense).sum(axis=0))
    norms[norms == 0] = 1.0
    dense /= norms
    sim = dense.T @ dense
    np.fill_diagonal(sim, 0.0)
    if neighbours < sim.shape[1]:
        cut = np.argpartition(-sim, neighbours, axis=1)[:, neighbours:]
        np.put_along_axis(sim, cut, 0.0, axis=1)
    out: np.ndarray = sim
    return out


def train_als(hist: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``implicit`` ALS on a weighted users x items matrix: (user, item) factors."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=ALS_FACTORS,
            regularization=ALS_REGULARIZATION,
            iterations=ALS_ITERATIONS,
            random_state=seed,
        )
        model.fit(sp.csr_matrix(hist, dtype=np.float32), show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def ranked_categories(scores: np.ndarray, trend: np.ndarray, k: int = 3) -> np.ndarray:
    """Top-``k`` categories by score, ties and zeros continued in trend order."""
    order = np.argsort(np.argsort(-trend, kind="stable"), kind="stable")  # rank of each cat
    tie = np.broadcast_to(order, scores.shape)
    ranked = np.lexsort((tie, -scores), axis=1)
    return ranked[:, :k]


@dataclass
class Example:
    """The examples of one cut: who is scored and what the truth is."""

    cut: int
    warm: pl.DataFrame  # user_id, u, r
    cold: pl.DataFrame
    cat_truth_warm: np.ndarray
    cat_truth_cold: np.ndarray
    item_truth_warm: Any
    item_truth_cold: Any
    hist: Any  # all users x items, binary, ts <= cut


class Collector:
    """Per-example metric values of each (method, users) pooled over cuts."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, str], dict[str, list[np.ndarray]]] = {}
        self.meta: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.groups: dict[tuple[str, str, str], list[np.ndarray]] = {}
        self.tops: dict[tuple[str, str, str], list[np.ndarray]] = {}
        self.notes: list[str] = []

    def add(self, task: str, method: str, users: str, groups: np.ndarray, *,
            values: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        key = (task, method, users)
        slot = self.values.setdefault(key, {})
        for m, v in values.items():
            slot.setdefault(m, []).append(v)
        self.groups.setdefault(key, []).append(groups)
        self.meta[key] = meta

    def add_top(self, task: str, method: str, users: str, top: np.ndarray) -> None:
        self.tops.setdefault((task, method, users), []).append(top)

    def rows(self, n_boot: int, seed: int, n_items: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for key, slot in self.values.items():
            groups = np.concatenate(self.groups[key])
            for metric, parts in slot.items():
                vals = np.concatenate(parts)
                ok = np.isfinite(vals)
                mean, lo, hi = M.bootstrap_ci(vals[ok], groups[ok], n_boot=n_boot, seed=seed)
                out.append(_row(key, metric, (mean, lo, hi), groups[ok], self.meta[key]))
            if key in self.tops:
                cov = M.coverage(np.concatenate(self.tops[key]), n_items)
                out.append(_row(key, "coverage@20", (cov, cov, cov), groups, self.meta[key]))
        return out


def _row(key: tuple[str, str, str], metric: str, stats: tuple[float, float, float],
         groups: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    task, method, users = key
    value, lo, hi = stats
    return {
        "task": task,
        "method": method,
        "kind": meta["kind"],
        "metric": metric,
        "value": float(value),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "n_users": len(np.unique(groups)),
        "users": users,
        "half_life": meta.get("half_life"),
        "refresh": meta.get("refresh"),
        "n_examples": len(groups),
    }


def build_examples(data: Data, proto: Protocol, cut: int) -> Example:
    h = proto.horizon_us
    hist = interaction_matrix(data, None, cut)
    seen = np.asarray(hist.sum(axis=1)).ravel() > 0
    fut = data.cons.filter((pl.col("ts") > cut) & (pl.col("ts") <= cut + h))
    # next_item truth: items new to the user
    hist_coo = hist.tocoo()
    hist_pairs = pl.DataFrame(
        {"u": hist_coo.row.astype(np.int64), "i": hist_coo.col.astype(np.int64)}
    )
    new = fut.join(hist_pairs, on=["u", "i"], how="anti")
    active = fut.select("u").unique()
    ulist = active["u"].to_numpy()
    warm_u = np.sort(ulist[seen[ulist]])
    cold_u = np.sort(ulist[~seen[ulist]])
    names = data.users

    def frame(us: np.ndarray) -> pl.DataFrame:
        f = pl.DataFrame({"u": us.astype(np.int64)}).join(names, on="u", how="left",
                                                          maintain_order="left")
        return f.with_row_index("r").select(USER, "u", pl.col("r").cast(pl.Int64))

    warm, cold = frame(warm_u), frame(cold_u)
    return Example(
        cut=cut,
        warm=warm,
        cold=cold,
        cat_truth_warm=_cat_truth(fut, warm, data.cats.height, proto.n_next),
        cat_truth_cold=_cat_truth(fut, cold, data.cats.height, proto.n_next),
        item_truth_warm=_item_truth(new, warm, data.items.height),
        item_truth_cold=_item_truth(new, cold, data.items.height),
        hist=hist,
    )


def _cat_truth(fut: pl.DataFrame, who: pl.DataFrame, n_cats: int, n_next: int) -> np.ndarray:
    nxt = (
        fut.join(who.select("u", "r"), on="u")
        .sort(["r", "ts", "i"])
        .group_by("r", maintain_order=True)
        .head(n_next)
    )
    taken = nxt.group_by("r").len()
    flat = nxt.select("r", "cats").explode("cats").drop_nulls("cats")
    rel = np.zeros((who.height, n_cats))
    np.add.at(rel, (flat["r"].to_numpy(), flat["cats"].to_numpy()), 1.0)
    denom = np.ones(who.height)
    denom[taken["r"].to_numpy()] = taken["len"].to_numpy()
    return rel / denom[:, None]


def _item_truth(new: pl.DataFrame, who: pl.DataFrame, n_items: int) -> Any:
    t = new.join(who.select("u", "r"), on="u")
    m = _csr(t["r"].to_numpy(), t["i"].to_numpy(), np.ones(t.height), (who.height, n_items))
    m.data[:] = 1.0
    return m


def _snapshot_requests(proto: Protocol, examples: list[Example]) -> list[SnapshotRequest]:
    reqs = [r for ex in examples for r in cut_requests(proto, ex.cut, ex.warm[USER])]
    first = proto.cuts_us[0]
    reqs.append(SnapshotRequest(("static", first), first, None))
    return reqs


def evaluate(
    events: pl.DataFrame,
    proto: Protocol,
    workdir: Path,
    progress: Progress | None = None,
    rejects: Sequence[DeadLetter] = (),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run both tasks over every cut; returns (result rows, extra report info).

    ``events`` are validated (:func:`~portrait.eval.replay.validated_events`);
    ``rejects`` go to the replay store's dead letters.
    """
    say = progress or (lambda _m: None)
    data = prepare(events)
    cuts = _Cuts(data, proto)
    examples = [cuts.example(c) for c in proto.cuts_us]
    reqs = _snapshot_requests(proto, examples)
    say(f"replaying {events.height:,} events through the engine ({len(reqs)} snapshot reads)")
    spec = parse_spec(ranking_spec(proto.half_lives, TYPE_WEIGHTS), source="<eval spec>")
    with Replay(spec, events, workdir, rejects) as replay:
        snaps = replay.snapshots(reqs, _columns(proto))
        batches = replay.batches
    first = proto.cuts_us[0]
    static = _Static(cuts, first, snaps[("static", first)])
    say("training ALS at the first cut")
    static.als = train_als(interaction_matrix(data, None, first, weighted=True), proto.seed)
    col = Collector()
    rec = R.DynamicRecommender(data.cons, data.items.height, data.genres, proto.seed)
    for ex in examples:
        say(f"scoring cut {format_us(ex.cut)}")
        sc = _CutScorer(data, ex, cuts.context(ex.cut), col, rec)
        _baselines(sc, proto, snaps, static)
        _dynamic(sc, proto, snaps, cuts)
    rows = col.rows(proto.n_bootstrap, proto.seed, data.items.height)
    info = {
        "n_events": events.height,
        "n_consumptions": data.cons.height,
        "n_users": data.users.height,
        "n_items": data.items.height,
        "n_categories": data.cats.height,
        "replay_batches": batches,
        "recommender": col.notes,
        "examples_per_cut": [
            {"cut": format_us(ex.cut), "warm": ex.warm.height, "cold": ex.cold.height}
            for ex in examples
        ],
    }
    return rows, info


def _columns(proto: Protocol) -> list[str]:
    return ["category_counts"] + [
        f"{p}_h{hl_tag(h)}" for h in proto.half_lives for p in ("category", "item")
    ]


class _Cuts:
    """Examples and population context per cut time, each computed once.

    A cut's training window ends at the previous cut, so the same times are
    asked for twice (as an evaluation cut and as a training cut).
    """

    def __init__(self, data: Data, proto: Protocol) -> None:
        self.data, self.proto = data, proto
        self._examples: dict[int, Example] = {}
        self._contexts: dict[int, L.Context] = {}

    def example(self, cut: int) -> Example:
        if cut not in self._examples:
            self._examples[cut] = build_examples(self.data, self.proto, cut)
        return self._examples[cut]

    def context(self, cut: int) -> L.Context:
        if cut not in self._contexts:
            data, hist, lo = self.data, self.example(cut).hist, cut - self.proto.trend_us
            self._contexts[cut] = L.Context(
                cat_trend=category_counts(data, lo, cut),
                cat_all=category_counts(data, None, cut),
                pop_trend=np.asarray(interaction_matrix(data, lo, cut).sum(axis=0)).ravel(),
                pop_all=np.asarray(hist.sum(axis=0)).ravel(),
                sim=cosine_knn(hist),
                genres=data.genres,
            )
        return self._contexts[cut]


class _Static:
    """The first cut's profile and models, never updated (the static baselines)."""

    def __init__(self, cuts: _Cuts, cut: int, frame: pl.DataFrame) -> None:
        ctx = cuts.context(cut)
        self.frame = frame
        self.hist = cuts.example(cut).hist
        self.sim = ctx.sim
        self.pop = ctx.pop_all
        self.known = np.asarray(self.hist.sum(axis=1)).ravel() > 0
        self.als: tuple[np.ndarray, np.ndarray] | None = None


def item_categories(cons: pl.DataFrame, n_items: int, n_cats: int) -> Any:
    """items x categories incidence, rows normalised to sum 1 (no category: zeros)."""
    c = cons.select("i", "cats").unique("i").explode("cats").drop_nulls("cats")
    m = _csr(c["i"].to_numpy(), c["cats"].to_numpy(), np.ones(c.height), (n_items, n_cats))
    m.data[:] = 1.0
    n = np.asarray(m.sum(axis=1)).ravel()
    n[n == 0] = 1.0
    return sp.diags(1.0 / n) @ m


def profile_view(data: Data, proto: Protocol, snap: pl.DataFrame, who: pl.DataFrame,
                 hist: Any) -> L.ProfileView:
    """The engine's profiles of ``who`` (user_id, u, r) as matrices."""
    rows = who.select(USER, "r")
    inv_mult = sp.diags(1.0 / data.multiplicity)
    return L.ProfileView(
        cat_aff=[
            _cat_matrix(data, snap, f"category_h{hl_tag(h)}", rows) for h in proto.half_lives
        ],
        item_aff=[
            map_matrix(snap, f"item_h{hl_tag(h)}", rows, data.items, key_col="item_id",
                       idx_col="i") @ inv_mult
            for h in proto.half_lives
        ],
        counts=_cat_matrix(data, snap, "category_counts", rows),
        hist=hist[who["u"].to_numpy()],
    )


class _CutScorer:
    """Scores methods on one cut's examples and files the metrics in a Collector."""

    def __init__(self, data: Data, ex: Example, ctx: L.Context, col: Collector,
                 rec: R.DynamicRecommender) -> None:
        self.data, self.ex, self.ctx, self.col, self.rec = data, ex, ctx, col, rec
        self.groups = {"warm": ex.warm["u"].to_numpy(), "cold": ex.cold["u"].to_numpy()}
        self.excl = {
            "warm": ex.hist[ex.warm["u"].to_numpy()],
            "cold": ex.hist[ex.cold["u"].to_numpy()],
        }

    def cat(self, method: str, kind: str, scores: np.ndarray, users: str = "warm",
            **meta: Any) -> None:
        truth = self.ex.cat_truth_warm if users == "warm" else self.ex.cat_truth_cold
        if truth.shape[0] == 0:
            return
        ranked = ranked_categories(scores, self.ctx.cat_trend)
        vals = M.category_metrics(ranked, truth)
        self.col.add("next_category", method, users, self.groups[users],
                     values={m: vals[m] for m in CATEGORY_METRICS}, meta={"kind": kind, **meta})

    def item(self, method: str, kind: str, scores: np.ndarray, users: str = "warm",
             **meta: Any) -> None:
        truth = self.ex.item_truth_warm if users == "warm" else self.ex.item_truth_cold
        keep = np.asarray(truth.sum(axis=1)).ravel() > 0
        if not keep.any():
            return
        excl, groups = self.excl[users][keep], self.groups[users][keep]
        scores, truth = scores[keep], truth[keep]
        top = M.top_k(scores, 20, excl)
        vals = M.ranking_metrics(top, truth, ks=(10, 20))
        vals["mrr"] = M.reciprocal_rank(scores, truth, excl)
        self.col.add("next_item", method, users, groups,
                     values={m: vals[m] for m in ITEM_METRICS}, meta={"kind": kind, **meta})
        self.col.add_top("next_item", method, users, top)


def _bcast(v: np.ndarray, n: int) -> np.ndarray:
    return np.broadcast_to(v, (n, v.shape[0])).astype(np.float64)


def _baselines(sc: _CutScorer, proto: Protocol, snaps: dict[Any, pl.DataFrame],
               static: _Static) -> None:
    data, ex, ctx = sc.data, sc.ex, sc.ctx
    warm, nw, nc = ex.warm, ex.warm.height, ex.cold.height
    fresh = profile_view(data, proto, snaps[(ex.cut, REFRESH_EVENT)], warm, ex.hist)
    sc.cat("popular_all", "baseline", _bcast(ctx.cat_all, nw))
    sc.cat("trending_30d", "baseline", _bcast(ctx.cat_trend, nw))
    sc.cat("counts_alltime", "baseline", fresh.counts)
    rows_w = warm.select(USER, "r")
    sc.cat("static_profile", "baseline",
           _cat_matrix(data, static.frame, "category_counts", rows_w))
    sc.item("popular_all", "baseline", _bcast(ctx.pop_all, nw))
    sc.item("popular_30d", "baseline", _bcast(ctx.pop_trend, nw))
    pop_7d = sc.rec.popularity(ex.cut, "7d", adaptive=False)
    sc.item("popular_7d", "baseline", _bcast(pop_7d, nw))
    sc.item("item_knn", "baseline", np.asarray(fresh.hist @ ctx.sim))
    uw = warm["u"].to_numpy()
    static_scores = np.asarray(static.hist[uw] @ static.sim)
    static_scores[~static.known[uw]] = static.pop
    sc.item("static_profile", "baseline", static_scores)
    assert static.als is not None
    als_u, als_v = static.als
    als_scores = als_u[uw] @ als_v.T
    als_scores[~static.known[uw]] = static.pop
    sc.item("als_static", "baseline", als_scores.astype(np.float64))
    if nc:  # cold start: nothing personal to go on
        sc.cat("popular_all", "baseline", _bcast(ctx.cat_all, nc), users="cold")
        sc.cat("trending_30d", "baseline", _bcast(ctx.cat_trend, nc), users="cold")
        sc.item("popular_all", "baseline", _bcast(ctx.pop_all, nc), users="cold")
        sc.item("popular_30d", "baseline", _bcast(ctx.pop_trend, nc), users="cold")
        sc.item("popular_7d", "baseline", _bcast(pop_7d, nc), users="cold")


def _dynamic(sc: _CutScorer, proto: Protocol, snaps: dict[Any, pl.DataFrame],
             cuts: _Cuts) -> None:
    data, ex, ctx = sc.data, sc.ex, sc.ctx
    # learned rankers, trained point-in-time at cut - horizon
    t_ex = cuts.example(ex.cut - proto.horizon_us)
    t_ctx = cuts.context(t_ex.cut)
    t_view = profile_view(data, proto, snaps[("train", ex.cut)], t_ex.warm, t_ex.hist)
    rel = t_ex.cat_truth_warm
    top_set = (rel >= rel.max(axis=1, keepdims=True) * (1 - 1e-9)) & (rel > 0)
    cat_model = L.fit_categories(t_view, t_ctx, top_set.astype(np.int8), proto.seed)
    item_model = L.fit_items(t_view, t_ctx, t_ex.item_truth_warm, proto.seed)
    _recommender(sc, proto, snaps, t_ex, t_view)
    for refresh in proto.refresh:
        view = profile_view(data, proto, snaps[(ex.cut, refresh)], ex.warm, ex.hist)
        meta: dict[str, Any] = {"half_life": "learned", "refresh": refresh}
        if cat_model is not None:
            sc.cat(f"learned refresh={refresh}", "dynamic",
                   L.score_categories(cat_model, view, ctx), **meta)
        if item_model is not None:
            sc.item(f"learned refresh={refresh}", "dynamic",
                    L.score_items(item_model, view, ctx), **meta)
        for h, aff, item_aff in zip(proto.half_lives, view.cat_aff, view.item_aff, strict=True):
            meta = {"half_life": h, "refresh": refresh}
            method = f"decayed h={h} refresh={refresh}"
            sc.cat(method, "dynamic", aff, **meta)
            sc.item(method, "dynamic", np.asarray(item_aff @ ctx.sim), **meta)


def _recommender(sc: _CutScorer, proto: Protocol, snaps: dict[Any, pl.DataFrame],
                 t_ex: Example, t_view: L.ProfileView) -> None:
    """The dynamic recommender (``eval/recommender.py``): weights chosen at T - horizon."""
    data, ex, rec = sc.data, sc.ex, sc.rec
    h = affinity_half_life(proto)
    t_users = t_ex.warm["u"].to_numpy()
    t_sig = rec.signals(t_users, t_ex.cut, t_view.cat_aff[h])
    weights, _ = R.choose_weights(t_sig, t_ex.item_truth_warm, t_ex.hist[t_users])
    del t_sig
    view = profile_view(data, proto, snaps[(ex.cut, REFRESH_EVENT)], ex.warm, ex.hist)
    users = ex.warm["u"].to_numpy()
    sig = rec.signals(users, ex.cut, view.cat_aff[h])
    meta = {"half_life": proto.half_lives[h], "refresh": REFRESH_EVENT}
    base = sig.score(weights).astype(np.float64)
    del sig
    sc.item("recommender", "dynamic", base, **meta)
    sc.col.notes.append(
        f"recommender weights at {format_us(ex.cut)} (als, pop_7d, pop_30d, affinity): "
        f"{weights}"
    )
    _product(sc, base, view.cat_aff[h], weights=weights, meta=meta)
    if ex.cold.height:  # the cold-start path: fresh popularity
        sc.item("recommender", "dynamic",
                _bcast(rec.popularity(ex.cut, "7d"), ex.cold.height), users="cold", **meta)


def _product(sc: _CutScorer, base: np.ndarray, cat_aff: np.ndarray, *,
             weights: tuple[float, ...], meta: dict[str, Any]) -> None:
    """``recommender (product)``: the product's ``Recommender`` on the warm users."""
    data, ex, rec = sc.data, sc.ex, sc.rec
    users = ex.warm["u"].to_numpy()
    names = data.cats["category"].to_list()
    start = time.perf_counter()
    product = Recommender(rec.model(ex.cut), R.catalog_at(data.cons, names, ex.cut),
                          R.product_params(weights))
    contexts = R.user_contexts(data.cons, users, ex.cut, R.affinity_maps(cat_aff, names))
    built = time.perf_counter() - start
    run = R.product_ranking(product, contexts)
    sc.item("recommender (product)", "dynamic", run.scores(base), **meta)
    vec_top = M.top_k(base, R.PRODUCT_K, sc.excl["warm"])
    sc.col.notes.append(
        f"recommender (product) at {format_us(ex.cut)}: {users.size} users; catalogue of "
        f"{len(product.catalog)} items, recommender and contexts built in {built:.2f} s, "
        f"recommend {run.seconds:.2f} s ({1000 * run.seconds / max(users.size, 1):.2f} ms/user); "
        f"share of its top {R.PRODUCT_K} in the vectorised top {R.PRODUCT_K}: "
        f"{R.top_overlap(run.top, vec_top):.3f}"
    )


def affinity_half_life(proto: Protocol) -> int:
    """Index of the half-life closest to 30 days (the recommender's profile re-rank)."""
    days = [parse_duration(h) / 86_400_000_000 for h in proto.half_lives]
    return int(np.argmin([abs(np.log(d / 30.0)) for d in days]))


def _cat_matrix(data: Data, frame: pl.DataFrame, col: str, rows: pl.DataFrame) -> np.ndarray:
    return _dense(map_matrix(frame, col, rows, data.cats, key_col="category", idx_col="c"))


def _dense(m: Any) -> np.ndarray:
    return np.asarray(m.toarray(), dtype=np.float64)


def report_notes() -> list[str]:
    return [
        "A consumption is one (user, item, time); its categories are those of its events.",
        "next_category truth: the first n_next consumptions in (T, T+horizon]; acc@k counts "
        "a hit when a top-k category is one of the user's most frequent next categories.",
        "next_item: full ranking over the catalogue, items the user consumed before T "
        "excluded; truth = items new to the user in (T, T+horizon].",
        "Staleness: a profile refreshed every R is read R*(k+0.5)/phases before T, users "
        "spread over phases by a seeded hash.",
        f"item_knn / dynamic: cosine item-item similarity, {KNN_NEIGHBOURS} neighbours per item; "
        f"ALS: implicit, {ALS_FACTORS} factors, {ALS_ITERATIONS} iterations, "
        f"regularization {ALS_REGULARIZATION}, type weights {TYPE_WEIGHTS}.",
    ]
