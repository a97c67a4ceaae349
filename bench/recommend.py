"""Latency of ALS fold-in and of a full recommend() call, with baselines.

Run on purpose: ``.venv/bin/python bench/recommend.py [--quick] [--no-movielens]``.

(a) Synthetic catalogue: 100,000 items in 1,000 topics (an item's topic is its
category), Zipf-like item popularity, users with 5..200 events (log-normal,
median ~20) drawn 75% from two favourite topics; event types view / click /
cart / purchase / ignored impression over 180 days. ALS (64 factors) is
*fitted* on it (the fit time is reported), not given random factors.
(b) MovieLens-1M (``portrait.datasets.fetch``; downloaded once), every user's
full history (up to ~2,300 ratings), so its tail is heavier than (a)'s.

Per sampled user, timed one call at a time with BLAS on one thread:

* fold-in: ``ALSModel.fold_in`` vs implicit's ``recalculate_user`` on the
  same signed-confidence row (the row built outside the timer);
* recommend: ``Recommender.recommend(k=20)`` (fold-in, one pass over the
  item factors, candidates, blend, reasons) vs a naive recommend (fold-in,
  score every item, full ``argsort``, drop consumed) vs implicit's
  ``recommend(recalculate_user=True, N=20)``.

A human table goes to stdout, then the LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from portrait.models.cf import ALSModel, ALSParams, interactions, signed_confidence
from portrait.recommend import Catalog, Recommender, UserContext

DAY_US = 86_400_000_000
NOW = 1_700_000_000_000_000
TYPES = ("view", "click", "cart", "purchase", "impression")
TYPE_P = (0.55, 0.22, 0.06, 0.05, 0.12)
GOALS_MS = {"foldin_p99_ms": 1.0, "recommend_p99_ms": 10.0}


# -- data ----------------------------------------------------------------------
def synthetic_events(n_users: int, n_items: int = 100_000, n_topics: int = 1_000,
                     seed: int = 0) -> pl.DataFrame:
    """user_id, item_id, type, category, ts (see the module doc)."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(n_topics, size=n_items)
    pop = 1.0 / (rng.permutation(n_items) + 10.0) ** 0.9
    order = np.argsort(topic, kind="stable")  # items grouped by topic
    cum = np.cumsum(pop[order])
    bounds = np.searchsorted(topic[order], np.arange(n_topics + 1))
    lo = np.r_[0.0, cum][bounds[:-1]]
    hi = np.r_[0.0, cum][bounds[1:]]
    per_user = np.clip(rng.lognormal(np.log(20), 0.9, n_users), 5, 200).astype(np.int64)
    user = np.repeat(np.arange(n_users), per_user)
    fav = rng.integers(n_topics, size=(n_users, 2))[user, rng.integers(2, size=user.size)]
    in_topic = rng.random(user.size) < 0.75
    draw = np.where(in_topic, lo[fav] + rng.random(user.size) * (hi[fav] - lo[fav]),
                    rng.random(user.size) * cum[-1])
    item = order[np.minimum(np.searchsorted(cum, draw), n_items - 1)]
    # every item has at least one view, so the model really holds n_items items
    user = np.r_[user, rng.integers(n_users, size=n_items)]
    item = np.r_[item, np.arange(n_items)]
    kind = np.r_[rng.choice(len(TYPES), size=user.size - n_items, p=TYPE_P),
                 np.zeros(n_items, np.int64)]
    return pl.DataFrame({
        "user_id": pl.Series(user).cast(pl.String).str.replace(r"^", "u"),
        "item_id": pl.Series(item).cast(pl.String).str.replace(r"^", "i"),
        "type": np.array(TYPES)[kind],
        "category": pl.Series(topic[item]).cast(pl.String).str.replace(r"^", "t"),
        "ts": NOW - rng.integers(180 * DAY_US, size=user.size),
    })


def movielens_events() -> pl.DataFrame | None:
    try:
        from portrait.datasets.fetch import fetch

        got = fetch("movielens-1m", progress=lambda m: print("  " + m, file=sys.stderr))
    except Exception as exc:  # a bench without network still reports (a)
        print(f"MovieLens-1M unavailable: {exc}", file=sys.stderr)
        return None
    ev = pl.read_parquet(got.files["events"]).select(
        "user_id", "item_id", "type", "category", "ts")
    if ev.schema["ts"] != pl.Int64:  # a UTC datetime column: to epoch µs
        ev = ev.with_columns(pl.col("ts").dt.epoch("us"))
    return ev


# -- timing --------------------------------------------------------------------
def _ms(samples: tuple[list[float], list[float]]) -> dict[str, float]:
    wall, cpu = np.asarray(samples[0]) * 1e3, np.asarray(samples[1]) * 1e3
    return {"p50": float(np.percentile(wall, 50)), "p99": float(np.percentile(wall, 99)),
            "mean": float(wall.mean()), "cpu_p50": float(np.percentile(cpu, 50)),
            "cpu_p99": float(np.percentile(cpu, 99))}


def _time(fn: Callable[[Any], Any], items: list[Any]) -> tuple[list[float], list[float]]:
    """Wall and CPU (this thread's) seconds per call; BLAS runs on this thread."""
    wall, cpu = [], []
    for x in items:
        t, c = time.perf_counter(), time.thread_time()
        fn(x)
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - t)
    return wall, cpu


def measure(name: str, events: pl.DataFrame, n_sample: int, params: ALSParams,
            seed: int = 0) -> dict[str, Any]:
    """Fit, then time fold-in and recommend for ``n_sample`` random users."""
    inter = interactions(events)
    t = time.perf_counter()
    model = ALSModel(params).fit(inter, trained_at=NOW)
    fit_s = time.perf_counter() - t
    now = int(events["ts"].max())  # type: ignore[arg-type]
    t = time.perf_counter()
    rec = Recommender(model, Catalog.from_events(events, now))
    setup_s = time.perf_counter() - t
    rng = np.random.default_rng(seed)
    users = rng.choice(events["user_id"].unique().sort().to_numpy(), n_sample, replace=False)
    by_user = events.filter(pl.col("user_id").is_in(users)).partition_by("user_id", as_dict=True)
    ctxs = [UserContext.from_events(by_user[(u,)]) for u in users]
    rows = [_implicit_row(model, c) for c in ctxs]
    ref = model.to_implicit()
    ref.num_threads = 1  # one request, one thread (as ours); OpenMP waits only add noise
    ref.recalculate_user(0, rows[0])  # builds its YtY cache outside the timer
    pairs = [(model.item_index(c.item_ids), c.weights) for c in ctxs]
    diff = max(float(np.abs(model.fold_in(*p) - ref.recalculate_user(0, r)).max())
               for p, r in zip(pairs, rows, strict=True))
    with threadpool_limits(1, "blas"):
        for c in ctxs[:20]:  # warm-up
            rec.recommend(c, 20)
        res = {
            "foldin": _ms(_time(lambda p: model.fold_in(*p), pairs)),
            "foldin_implicit": _ms(_time(lambda r: ref.recalculate_user(0, r), rows)),
            "recommend": _ms(_time(lambda c: rec.recommend(c, 20), ctxs)),
            "recommend_naive": _ms(_time(lambda c: _naive(model, c), ctxs)),
            "recommend_implicit": _ms(_time(
                lambda r: ref.recommend(0, r, N=20, recalculate_user=True), rows)),
        }
    n_events = np.array([len(c.item_ids) for c in ctxs])
    return {"name": name, "users": model.user_factors.shape[0], "items": len(model.item_ids),
            "catalog_items": len(rec.catalog), "interactions": inter.height,
            "fit_s": fit_s, "recommender_setup_s": setup_s, "sampled_users": n_sample,
            "events_per_user_p50": float(np.median(n_events)),
            "events_per_user_max": int(n_events.max()),
            "foldin_vs_implicit_max_abs_diff": diff, **res}


def _implicit_row(model: ALSModel, ctx: UserContext) -> Any:
    idx = model.item_index(ctx.item_ids)
    ok = idx >= 0
    row = sp.csr_matrix((np.asarray(ctx.weights)[ok], (np.zeros(int(ok.sum()), int), idx[ok])),
                        shape=(1, len(model.item_ids)))
    row.sum_duplicates()
    row.data = signed_confidence(row.data, model.params.alpha).astype(np.float32)
    row.eliminate_zeros()
    return row


def _naive(model: ALSModel, ctx: UserContext) -> list[str]:
    """Fold in, score every item, sort them all, drop what the user consumed."""
    idx = model.item_index(ctx.item_ids)
    scores = model.scores(model.fold_in(idx, ctx.weights))
    consumed = set(idx[(np.asarray(ctx.weights) > 0) & (idx >= 0)].tolist())
    order = np.argsort(-scores)
    return [model.item_ids[i] for i in order[:20 + len(consumed)] if i not in consumed][:20]


# -- quality sanity check ------------------------------------------------------
def holdout_quality(events: pl.DataFrame, params: ALSParams, n_users: int = 1_000,
                    hide: int = 10, seed: int = 0) -> dict[str, float]:
    """Recall@20 of each user's last ``hide`` items, hidden from the fit and the context.

    Methods: recommend() (the blend), ALS alone (fold-in + full sort), and
    recent popularity; consumed items are excluded for all three.
    """
    ev = events.sort("ts", "item_id")
    firsts = ev.group_by("user_id", "item_id").agg(pl.col("ts").min())
    rank = pl.col("ts").rank("ordinal", descending=True).over("user_id")
    last = firsts.filter(rank <= hide).join(
        firsts.group_by("user_id").len().filter(pl.col("len") >= 3 * hide), on="user_id")
    users = np.random.default_rng(seed).choice(
        last["user_id"].unique().sort().to_numpy(), n_users, replace=False)
    held = last.filter(pl.col("user_id").is_in(users)).select("user_id", "item_id")
    train = ev.join(held, on=["user_id", "item_id"], how="anti")
    model = ALSModel(params).fit(interactions(train))
    rec = Recommender(model, Catalog.from_events(train, int(train["ts"].max())))  # type: ignore[arg-type]
    truth = {u[0]: set(g["item_id"].to_list()) for u, g in held.group_by("user_id")}
    parts = train.filter(pl.col("user_id").is_in(users)).partition_by("user_id", as_dict=True)
    popular = [rec.catalog.item_ids[i] for i in rec.catalog.popular]
    hits: dict[str, list[float]] = {"recommend": [], "als_only": [], "popular": []}
    for u in users:
        ctx = UserContext.from_events(parts[(u,)])
        seen = set(ctx.item_ids)
        lists = {"recommend": [r.item_id for r in rec.recommend(ctx, 20)],
                 "als_only": _naive(model, ctx),
                 "popular": [i for i in popular[: 20 + len(seen)] if i not in seen][:20]}
        for name, top in lists.items():
            hits[name].append(len(set(top) & truth[u]) / len(truth[u]))
    return {f"recall20_{k}": float(np.mean(v)) for k, v in hits.items()}


# -- report --------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo").read().splitlines():  # noqa: SIM115
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_count": os.cpu_count(), "cpu": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "blas_threads": 1}


def table(r: dict[str, Any]) -> str:
    lines = [f"== {r['name']}: {r['users']:,} users x {r['items']:,} items, "
             f"{r['interactions']:,} pairs, ALS fit {r['fit_s']:.1f} s, "
             f"{r['sampled_users']} users timed (events/user p50 {r['events_per_user_p50']:.0f}, "
             f"max {r['events_per_user_max']})",
             f"{'':22s}{'p50 ms':>9s}{'p99 ms':>9s}{'mean ms':>9s}{'cpu p50':>9s}{'cpu p99':>9s}"]
    for key in ("foldin", "foldin_implicit", "recommend", "recommend_naive",
                "recommend_implicit"):
        m = r[key]
        lines.append(f"{key:22s}{m['p50']:9.3f}{m['p99']:9.3f}{m['mean']:9.3f}"
                     f"{m['cpu_p50']:9.3f}{m['cpu_p99']:9.3f}")
    lines.append(f"fold-in vs implicit: max |diff| {r['foldin_vs_implicit_max_abs_diff']:.2e}")
    return "\n".join(lines)


def summary(syn: dict[str, Any], ml: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prefix, r in (("", syn), ("movielens_", ml)):
        if r is None:
            out[f"{prefix}available"] = False
            continue
        for key in ("foldin", "recommend"):
            out[f"{prefix}{key}_p50_ms"] = round(r[key]["p50"], 4)
            out[f"{prefix}{key}_p99_ms"] = round(r[key]["p99"], 4)
            out[f"{prefix}{key}_cpu_p50_ms"] = round(r[key]["cpu_p50"], 4)
            out[f"{prefix}{key}_cpu_p99_ms"] = round(r[key]["cpu_p99"], 4)
        for key, base in (("foldin", "foldin_implicit"), ("recommend", "recommend_naive"),
                          ("recommend", "recommend_implicit")):
            out[f"{prefix}{base}_p50_ms"] = round(r[base]["p50"], 4)
            out[f"{prefix}{base}_p99_ms"] = round(r[base]["p99"], 4)
            out[f"{prefix}{key}_p50_speedup_vs_{base.split('_')[1]}"] = round(
                r[base]["p50"] / r[key]["p50"], 2)
        out[f"{prefix}fit_s"] = round(r["fit_s"], 2)
        out[f"{prefix}users"], out[f"{prefix}items"] = r["users"], r["items"]
        out[f"{prefix}interactions"] = r["interactions"]
        out.update({f"{prefix}{k}": round(v, 4) for k, v in r.get("quality", {}).items()})
    out["goals_met"] = {k: out[k] <= v for k, v in GOALS_MS.items()}
    out["machine"] = machine()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer users fitted and timed")
    p.add_argument("--no-movielens", action="store_true")
    args = p.parse_args(argv)
    n_users, n_sample = (20_000, 300) if args.quick else (60_000, 2_000)
    params = ALSParams(factors=64, iterations=15, regularization=0.05, num_threads=2)
    t = time.perf_counter()
    events = synthetic_events(n_users)
    print(f"synthetic events: {events.height:,} in {time.perf_counter() - t:.1f} s",
          file=sys.stderr)
    syn = measure("synthetic-100k", events, n_sample, params)
    print(table(syn))
    ml = None
    ml_events = None if args.no_movielens else movielens_events()
    if ml_events is not None:
        ml = measure("movielens-1m", ml_events, min(n_sample, 1_000), params)
        print(table(ml))
        if not args.quick:
            ml["quality"] = holdout_quality(ml_events, params)
            print("movielens-1m, last 10 items of 1,000 users held out, recall@20: "
                  + ", ".join(f"{k[9:]} {v:.3f}" for k, v in ml["quality"].items()))
    print(json.dumps(summary(syn, ml)))


if __name__ == "__main__":
    main()
