"""The replay protocol end to end: no leakage, exact snapshots, planted signals found."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from tests.eval import synth

from portrait.datasets import DATASETS, fetch
from portrait.engine import Engine
from portrait.eval import propensity, ranking
from portrait.eval.protocol import Protocol, phase_of, staleness_offsets
from portrait.eval.replay import Replay, validated_events
from portrait.eval.report import verdicts
from portrait.eval.run import PROTOCOLS, evaluate_events
from portrait.spec.loader import parse_spec
from portrait.store import open_store

DAY = synth.DAY_US
ROW_KEYS = {"task", "method", "kind", "metric", "value", "ci_low", "ci_high", "n_users"}


def _spec(kind: str) -> Any:
    text = (ranking.ranking_spec(("1d", "30d"), ranking.TYPE_WEIGHTS) if kind == "ratings"
            else propensity.propensity_spec(("30d", "90d")))
    return parse_spec(text, source="<test>")


def _events(kind: str) -> pl.DataFrame:
    frame = (synth.ratings(n_users=30, days=120) if kind == "ratings"
             else synth.purchases(n_users=80, days=300))
    events, rejects = validated_events(frame, source=kind)
    assert not rejects
    return events


def _plant(events: pl.DataFrame, t: int) -> pl.DataFrame:
    """Future events: copies moved after ``t`` (new ids, other keys) plus a new user."""
    rng = np.random.default_rng(1)
    src = events.sample(n=min(200, events.height), seed=1)
    later = t + rng.integers(1, 40 * DAY, src.height)
    moved = src.with_columns(
        pl.Series("ts", later),
        pl.format("future:{}", pl.col("event_id")).alias("event_id"),
        pl.when(pl.col("category").is_not_null()).then(pl.lit("Western")).alias("category"),
        pl.when(pl.col("item_id").is_not_null()).then(pl.lit("planted")).alias("item_id"),
    )
    stranger = moved.head(5).with_columns(
        pl.lit("stranger").alias("user_id"),
        pl.format("{}:s", pl.col("event_id")).alias("event_id"),
    )
    return pl.concat([events, moved, stranger]).sort(["ts", "event_id"])


@pytest.mark.parametrize("kind", ["ratings", "purchases"])
def test_a_planted_future_event_never_changes_a_feature_read_at_t(
    tmp_path: Path, kind: str
) -> None:
    events = _events(kind)
    ts = events["ts"].to_numpy()
    spec = _spec(kind)
    for q in (0.3, 0.7):
        t = int(np.quantile(ts, q))
        columns = list(spec.features)
        clean = Replay(spec, events, tmp_path / f"clean{q}")
        dirty = Replay(spec, _plant(events, t), tmp_path / f"dirty{q}")
        a = clean.read(t, columns).sort("user_id")
        b = dirty.read(t, columns).sort("user_id")
        assert dirty.ingested < dirty.events.height  # the planted events exist, later
        assert "stranger" not in b["user_id"].to_list()
        assert a.equals(b), f"features at {t} changed by events after it"
        clean.close()
        dirty.close()


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, list):
            out.update({f"{name}[{kv['key']}]": kv["value"] for kv in value})
        else:
            out[name] = value
    return out


def _assert_close(a: pl.DataFrame, b: pl.DataFrame) -> None:
    """Same users and features; floats equal up to summation order (1e-9 relative)."""
    assert a.columns == b.columns
    assert a["user_id"].to_list() == b["user_id"].to_list()
    for ra, rb in zip(a.iter_rows(named=True), b.iter_rows(named=True), strict=True):
        fa, fb = _flat(ra), _flat(rb)
        assert fa.keys() == fb.keys(), ra["user_id"]
        for k, v in fa.items():
            assert v == (pytest.approx(fb[k], rel=1e-9) if isinstance(v, float) else fb[k]), k


def test_replay_snapshots_equal_a_fresh_engine_on_the_past(tmp_path: Path) -> None:
    events = _events("ratings")
    spec = _spec("ratings")
    times = [int(np.quantile(events["ts"].to_numpy(), q)) for q in (0.2, 0.5, 0.9)]
    replay = Replay(spec, events, tmp_path / "replay")
    columns = list(spec.features)
    for i, t in enumerate(times):
        got = replay.read(t, columns).sort("user_id")
        with open_store(tmp_path / f"fresh{i}", writer=True) as store:
            engine = Engine(spec, store)
            engine.ingest_events(events.filter(pl.col("ts") <= t))
            want = engine.read_at(t).select("user_id", *columns).sort("user_id")
        _assert_close(got, want)
    assert replay.batches == len(times)
    replay.close()


def test_cuts_step_back_one_horizon_and_leave_a_complete_last_window() -> None:
    ts = pl.Series(np.arange(0, 400) * DAY + synth.START_US + 3_600_000_000)
    proto = Protocol(horizon="30d", n_cuts=4, last_quantile=0.99).with_cuts(ts)
    cuts = proto.cuts_us
    assert len(cuts) == 4
    assert all(c % DAY == 0 for c in cuts)
    assert np.all(np.diff(cuts) == 30 * DAY)
    assert cuts[-1] + 30 * DAY <= int(ts.max())
    assert proto.with_cuts(ts + 1000 * DAY).cuts_us == cuts  # explicit cuts are kept
    assert proto.to_json()["cuts"][0].endswith("T00:00:00Z")


def test_staleness_offsets_and_phases() -> None:
    assert staleness_offsets("event", 4) == [0]
    assert staleness_offsets("1d", 4) == [DAY // 8, 3 * DAY // 8, 5 * DAY // 8, 7 * DAY // 8]
    users = pl.Series([str(i) for i in range(400)])
    a = phase_of(users, 4, 0)
    assert np.array_equal(a, phase_of(users, 4, 0))
    assert set(a.tolist()) == {0, 1, 2, 3}
    assert not np.array_equal(a, phase_of(users, 4, 1))


@pytest.fixture(scope="module")
def ratings_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("ml")
    proto = replace(PROTOCOLS["movielens-1m"], n_cuts=2, n_bootstrap=100)
    return evaluate_events("movielens-1m", synth.ratings(), out, proto=proto) | {"_out": out}


def test_report_rows_follow_the_contract(ratings_report: dict[str, Any]) -> None:
    out = ratings_report["_out"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["dataset"] == "movielens-1m"
    assert {"cuts", "horizon", "seeds"} <= set(saved["protocol"])
    rows = saved["results"]
    assert {r["task"] for r in rows} == {"next_category", "next_item"}
    assert {r["kind"] for r in rows} == {"baseline", "dynamic"}
    for r in rows:
        assert set(r) >= ROW_KEYS
        assert 0.0 <= r["ci_low"] <= r["value"] + 1e-12 <= r["ci_high"] + 2e-12 <= 1.0 + 2e-12
    methods = {r["method"] for r in rows}
    for m in ("popular_all", "popular_30d", "trending_30d", "static_profile", "counts_alltime",
              "item_knn", "als_static", "learned refresh=event", "decayed h=7d refresh=1h"):
        assert m in methods, m
    metrics = {r["metric"] for r in rows}
    assert {"acc@1", "acc@3", "ndcg@3", "recall@10", "recall@20", "ndcg@10", "ndcg@20",
            "hit@10", "mrr", "coverage@20"} <= metrics
    assert (out / "report.md").read_text().count("| method |") >= 2
    assert list(out.glob("*.png"))


def test_a_planted_personal_drift_is_found_by_the_dynamic_profile(
    ratings_report: dict[str, Any],
) -> None:
    # Every user's taste is their own genre and switches once: global popularity
    # cannot know it, a fresh personal profile can.
    won = {(v["task"], v["metric"]): v["won"] for v in verdicts(ratings_report)}
    assert won[("next_category", "acc@1")], verdicts(ratings_report)


def test_nothing_after_the_last_truth_window_changes_the_results(tmp_path: Path) -> None:
    events = synth.ratings(n_users=40, days=200)
    proto = replace(PROTOCOLS["movielens-1m"], n_cuts=2, n_bootstrap=50)
    proto = proto.with_cuts(validated_events(events, source="ratings")[0]["ts"])
    end = proto.cuts_us[-1] + proto.horizon_us
    later = events.filter(pl.col("ts").dt.epoch("us") <= end - 40 * DAY).with_columns(
        pl.col("ts") + pl.duration(days=80),
        pl.format("late:{}", pl.col("event_id")).alias("event_id"),
    ).filter(pl.col("ts").dt.epoch("us") > end)
    assert later.height > 100
    a = evaluate_events("movielens-1m", events, tmp_path / "a", proto=proto)["results"]
    b = evaluate_events("movielens-1m", pl.concat([events, later]), tmp_path / "b",
                        proto=proto)["results"]
    key = lambda r: (r["task"], r["method"], r["users"], r["metric"])  # noqa: E731
    assert sorted(a, key=key) == sorted(b, key=key)


def test_decayed_propensity_beats_rfm_on_churning_customers(tmp_path: Path) -> None:
    proto = replace(PROTOCOLS["cdnow"], n_cuts=2, n_bootstrap=100)
    report = evaluate_events("cdnow", synth.purchases(), tmp_path, proto=proto)
    auc = {r["method"]: r["value"] for r in report["results"] if r["metric"] == "auc"}
    assert auc["decayed profile"] > auc["rfm"]
    assert (tmp_path / "calibration.png").stat().st_size > 1000
    assert report["curves"]["calibration"]["rfm"]["count"]


def _cdnow_archive(path: Path) -> Path:
    frame = synth.purchases(n_users=200)
    lines = [" customer_id  date number_of_cds  dollar_value"]
    for r in frame.iter_rows(named=True):
        lines.append(f" {int(r['user_id']) + 1:05d} {r['ts']:%Y%m%d}  {r['quantity']}   "
                     f"{r['price']:.2f}")
    with zipfile.ZipFile(path, "w") as zf:
        (member,) = DATASETS["cdnow"].members.values()
        zf.writestr(member, "\r\n".join(lines) + "\r\n")
    return path


def test_cli_eval_writes_the_report_from_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fetch("cdnow", cache, archive=_cdnow_archive(tmp_path / "cdnow.zip"))
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "portrait.cli", "eval", "--dataset", "cdnow", "--out", str(out),
         "--quick", "--cache-dir", str(cache)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert Path(summary["report"]).exists()
    assert summary["verdicts"][0]["task"] == "propensity"
    assert len(json.loads((out / "report.json").read_text())["protocol"]["cuts"]) == 3


def test_cli_eval_refuses_an_unknown_dataset_before_fetching(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "portrait.cli", "eval", "--dataset", "nope", "--out",
         str(tmp_path), "--cache-dir", str(tmp_path / "c")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert "no evaluation for dataset 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "c").exists()


def test_bad_rows_are_dead_lettered_not_fatal(tmp_path: Path) -> None:
    frame = synth.purchases(n_users=120)
    bad = frame.head(3).with_columns(
        pl.Series("price", [-5.0, float("nan"), 1.0]),
        pl.Series("quantity", [1, 1, 0]),
        pl.format("bad:{}", pl.col("event_id")).alias("event_id"),
    )
    events, rejects = validated_events(pl.concat([frame, bad]), source="shop.parquet")
    assert len(rejects) == 3
    assert events.height == frame.height
    assert all(r.source == "shop.parquet" for r in rejects)
    assert {r.reason.split(":")[0] for r in rejects} == {"price", "quantity"}
    spec = _spec("purchases")
    with Replay(spec, events, tmp_path / "replay", rejects) as replay:
        replay.advance(int(events["ts"].min()))
        letters = replay.store.dead_letters()
    assert len(letters) == 3
    proto = replace(PROTOCOLS["cdnow"], n_cuts=2, n_bootstrap=50)
    report = evaluate_events("cdnow", pl.concat([frame, bad]), tmp_path / "out", proto=proto)
    assert report["protocol"]["rejected_events"] == 3
    assert report["results"]


def test_cdnow_model_methods_are_scored_and_blind_to_later_events(tmp_path: Path) -> None:
    # lightgbm (refitted at every cut) and river online (learning each cut's examples once
    # their labels are known) are scored like every other method; events after the last
    # truth window change nothing, so neither model learned from an unknown outcome.
    events = synth.purchases(n_users=300, days=540)
    proto = replace(PROTOCOLS["cdnow"], n_cuts=3, n_bootstrap=50)
    proto = proto.with_cuts(validated_events(events, source="cdnow")[0]["ts"])
    end = proto.cuts_us[-1] + proto.horizon_us
    later = events.with_columns(
        pl.col("ts") + pl.duration(days=400),
        pl.format("late:{}", pl.col("event_id")).alias("event_id"),
    ).filter(pl.col("ts").dt.epoch("us") > end)
    assert later.height > 100
    a = evaluate_events("cdnow", events, tmp_path / "a", proto=proto)
    b = evaluate_events("cdnow", pl.concat([events, later]), tmp_path / "b", proto=proto)
    rows = [r for r in a["results"] if r["method"] in ("lightgbm", "river online")]
    assert {(r["method"], r["metric"]) for r in rows} == {
        (m, k) for m in ("lightgbm", "river online") for k in ("auc", "f1", "brier")}
    for r in rows:
        assert set(r) >= ROW_KEYS
        assert r["kind"] == "dynamic"
        assert r["refresh"] == "event"
        assert 0.0 <= r["ci_low"] <= r["value"] + 1e-12 <= r["ci_high"] + 2e-12 <= 1.0 + 2e-12
        assert r["n_examples"] > r["n_users"] > 100  # every warm user at every cut
    auc = {r["method"]: r["value"] for r in rows if r["metric"] == "auc"}
    assert auc["lightgbm"] > 0.6
    assert auc["river online"] > 0.6
    assert {"lightgbm", "river online"} <= set(a["curves"]["calibration"])
    # the same up to float summation order in the replayed profiles
    key = lambda r: (r["task"], r["method"], r["users"], r["metric"])  # noqa: E731
    for ra, rb in zip(sorted(a["results"], key=key), sorted(b["results"], key=key), strict=True):
        assert ra == {k: pytest.approx(v, rel=1e-9) if isinstance(v, float) else v
                      for k, v in rb.items()}


@pytest.mark.parametrize("weights", [(1.0, 8.0, 0.0, 2.0), (1.0, 2.0, 1.0, 0.5)])
def test_the_product_recommender_ranks_as_the_vectorised_blend(
    weights: tuple[float, ...],
) -> None:
    # recommender (product) runs portrait.recommend on each user; at a cut where
    # the catalogue holds every item its top 20 is the vectorised blend's
    from portrait.eval import metrics
    from portrait.eval import recommender as rec_eval
    from portrait.recommend import Recommender

    data = ranking.prepare(_events("ratings"))
    cut = int(np.quantile(data.cons["ts"].to_numpy(), 0.8))
    hist = ranking.interaction_matrix(data, None, cut)
    users = np.flatnonzero(np.asarray(hist.sum(axis=1)).ravel() > 0)
    rng = np.random.default_rng(3)
    cat_aff = rng.gamma(1.0, size=(users.size, data.cats.height))
    cat_aff[rng.random(cat_aff.shape) < 0.4] = 0.0
    dyn = rec_eval.DynamicRecommender(data.cons, data.items.height, data.genres, seed=0)
    base = dyn.signals(users, cut, cat_aff).score(weights).astype(np.float64)
    want = metrics.top_k(base, 20, hist[users])
    names = data.cats["category"].to_list()
    catalog = rec_eval.catalog_at(data.cons, names, cut)
    assert len(catalog) == data.items.height
    product = Recommender(dyn.model(cut), catalog, rec_eval.product_params(weights))
    contexts = rec_eval.user_contexts(data.cons, users, cut,
                                      rec_eval.affinity_maps(cat_aff, names))
    run = rec_eval.product_ranking(product, contexts)
    assert np.array_equal(run.top, want)
    # the score matrix the metrics read keeps the product's order, then the blend's
    scores = run.scores(base)
    assert np.array_equal(metrics.top_k(scores, 20, hist[users]), run.top)
    rest = metrics.top_k(scores, 40, hist[users])[:, 20:]
    assert np.array_equal(rest, metrics.top_k(base, 40, hist[users])[:, 20:])


def test_the_product_recommender_is_a_row_of_the_report(ratings_report: dict[str, Any]) -> None:
    rows = [r for r in ratings_report["results"] if r["task"] == "next_item"
            and r["users"] == "warm" and r["metric"] == "recall@20"]
    by = {r["method"]: r for r in rows}
    assert by["recommender (product)"]["kind"] == "dynamic"
    assert by["recommender (product)"]["n_examples"] == by["recommender"]["n_examples"]
    notes = ratings_report["protocol"]["recommender"]
    assert sum("recommender (product) at" in n for n in notes) == 2
