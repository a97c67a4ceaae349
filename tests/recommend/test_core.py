"""Recommender: planted groups, cold start, feedback loop, diversity, catalogue."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import polars as pl
import pytest
from tests.models.cases_cf import DAY_US, GROUPS, T0, group_of, planted_events, planted_model

from portrait.errors import UsageError
from portrait.models.cf import DEFAULT_INTERACTIONS, ALSModel
from portrait.recommend import Catalog, Rec, Recommender, RecommendParams, UserContext

NOW = T0 + 60 * DAY_US


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    return planted_events()


@pytest.fixture(scope="module")
def model() -> ALSModel:
    return planted_model()


@pytest.fixture(scope="module")
def rec(model: ALSModel, events: pl.DataFrame) -> Recommender:
    return Recommender(model, Catalog.from_events(events, NOW))


def _user(events: pl.DataFrame, user: str) -> pl.DataFrame:
    return events.filter(pl.col("user_id") == user)


def _events(user: str, items: list[str], types: list[str], start: int) -> pl.DataFrame:
    return pl.DataFrame({
        "user_id": [user] * len(items), "item_id": items, "type": types,
        "category": [f"cat{group_of(i)}" for i in items],
        "ts": [start + k for k in range(len(items))],
    })


def _ids(recs: list[Rec]) -> list[str]:
    return [r.item_id for r in recs]


# ---- relevance ----------------------------------------------------------------
def test_known_users_get_unconsumed_items_of_their_own_group(
    rec: Recommender, events: pl.DataFrame
) -> None:
    for user in ("g0_u00", "g1_u11", "g2_u22", "g3_u29"):
        mine = _user(events, user)
        recs = rec.recommend(UserContext.from_events(mine), k=10)
        assert len(recs) == 10
        assert {group_of(i) for i in _ids(recs)} == {group_of(user)}, recs
        assert not set(_ids(recs)) & set(mine["item_id"].to_list())
        assert all(0 < r.score <= 1 for r in recs)
        assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)


def test_a_brand_new_user_is_folded_in_from_a_few_events(rec: Recommender) -> None:
    ctx = UserContext.from_events(_events("newcomer", ["g2_i00", "g2_i07", "g2_i13"],
                                          ["click", "purchase", "view"], NOW))
    recs = rec.recommend(ctx, k=8)
    assert {group_of(i) for i in _ids(recs)} == {2}


def test_cold_start_is_recent_popularity(rec: Recommender) -> None:
    recs = rec.recommend(UserContext(), k=10)
    cat = rec.catalog
    want = [cat.item_ids[i] for i in cat.popular[:10]]
    assert _ids(recs) == want
    assert all(r.reason == "popular in the last 30 days" and r.sources == ("popular",)
               for r in recs)


def test_category_affinity_alone_recommends_that_category(rec: Recommender) -> None:
    recs = rec.recommend(UserContext(category_affinity={"cat3": 2.0, "cat1": 0.1}), k=5)
    assert {group_of(i) for i in _ids(recs)} == {3}
    assert all(r.reason == "matches your interest in cat3" for r in recs)
    assert all("category" in r.sources for r in recs)


def test_unknown_items_in_the_context_are_ignored(rec: Recommender,
                                                  events: pl.DataFrame) -> None:
    mine = _user(events, "g1_u04")
    noise = _events("g1_u04", ["g1_i00"], ["view"], NOW).with_columns(
        pl.lit("not_an_item").alias("item_id"))
    base = rec.recommend(UserContext.from_events(mine), k=10)
    noisy = rec.recommend(UserContext.from_events(pl.concat([mine, noise])), k=10)
    assert _ids(base) == _ids(noisy)


# ---- the feedback loop --------------------------------------------------------
def test_clicks_and_purchases_in_another_group_move_the_recommendations(
    rec: Recommender, events: pl.DataFrame
) -> None:
    mine = _user(events, "g0_u03")
    before = rec.recommend(UserContext.from_events(mine), k=10)
    assert all(group_of(i) == 0 for i in _ids(before))
    clicked = ["g1_i00", "g1_i01", "g1_i02"]
    new = _events("g0_u03", clicked, ["click", "purchase", "click"], NOW + DAY_US)
    after = rec.recommend(UserContext.from_events(pl.concat([mine, new])), k=10)
    moved = [r for r in after if group_of(r.item_id) == 1]
    assert len(moved) >= 3, after
    assert not set(_ids(after)) & set(clicked)  # consumed now
    assert any(r.reason.startswith("because you liked ") and r.reason.split()[-1] in clicked
               for r in moved)


def test_ignored_impressions_push_an_item_down_and_out(rec: Recommender,
                                                       events: pl.DataFrame) -> None:
    mine = _user(events, "g2_u08")
    before = rec.recommend(UserContext.from_events(mine), k=10)
    top = before[0].item_id
    shown = _events("g2_u08", [top] * 3, ["impression"] * 3, NOW)
    after = rec.recommend(UserContext.from_events(pl.concat([mine, shown])), k=10)
    assert top not in _ids(after)[:5]
    once = _events("g2_u08", [top], ["impression"], NOW)
    one = rec.recommend(UserContext.from_events(pl.concat([mine, once])), k=10)
    rank = _ids(one).index(top) if top in _ids(one) else 10
    assert rank > 0  # a single ignored impression already costs it the first place


def test_an_impression_then_a_click_counts_as_consumed(rec: Recommender,
                                                       events: pl.DataFrame) -> None:
    mine = _user(events, "g2_u08")
    top = rec.recommend(UserContext.from_events(mine), k=1)[0].item_id
    shown = _events("g2_u08", [top, top], ["impression", "click"], NOW)
    after = rec.recommend(UserContext.from_events(pl.concat([mine, shown])), k=20)
    assert top not in _ids(after)


def test_ignored_penalty_zero_keeps_only_the_fold_in_effect(
    model: ALSModel, events: pl.DataFrame
) -> None:
    cat = Catalog.from_events(events, NOW)
    plain = Recommender(model, cat, RecommendParams(ignored_penalty=0.0))
    mine = _user(events, "g2_u08")
    top = plain.recommend(UserContext.from_events(mine), k=1)[0]
    shown = _events("g2_u08", [top.item_id], ["impression"], NOW)
    again = {r.item_id: r.score for r in
             plain.recommend(UserContext.from_events(pl.concat([mine, shown])), k=30)}
    assert 0 < again[top.item_id] < top.score


# ---- diversity ----------------------------------------------------------------
def _mean_cosine(model: ALSModel, ids: list[str]) -> float:
    v = model.item_factors[model.item_index(ids)]
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    s = v @ v.T
    return float(s[np.triu_indices(len(ids), 1)].mean())


def test_diversity_lowers_the_similarity_inside_the_list(
    rec: Recommender, model: ALSModel, events: pl.DataFrame
) -> None:
    ctx = UserContext.from_events(_user(events, "g3_u10"))
    plain = rec.recommend(ctx, k=10)
    varied = rec.recommend(ctx, k=10, diversity=0.8)
    assert _mean_cosine(model, _ids(varied)) < _mean_cosine(model, _ids(plain)) - 0.1
    assert len({group_of(i) for i in _ids(varied)}) > 1
    assert varied[0].item_id == plain[0].item_id  # the best item is always first
    assert _ids(rec.recommend(ctx, k=10, diversity=0.0)) == _ids(plain)
    with pytest.raises(UsageError, match="diversity"):
        rec.recommend(ctx, diversity=1.5)


# ---- catalogue ----------------------------------------------------------------
def test_catalog_popularity_and_categories_match_a_loop(events: pl.DataFrame) -> None:
    now, window = NOW - 20 * DAY_US, 7 * DAY_US
    extra = pl.DataFrame({
        "user_id": ["x", "x", "x"], "item_id": ["g0_i00", "g0_i00", "late"],
        "type": ["impression", "view", "purchase"], "category": ["sale", "sale", "cat0"],
        "ts": [now - 1, now - 1, now + 1],
    })
    ev = pl.concat([events, extra])
    cat = Catalog.from_events(ev, now, window_us=window)
    recent: dict[str, float] = defaultdict(float)
    alltime: dict[str, float] = defaultdict(float)
    cats: dict[str, set[str]] = defaultdict(set)
    for r in ev.filter(pl.col("ts") <= now).to_dicts():
        w = max(DEFAULT_INTERACTIONS.get(r["type"], 0.0), 0.0)
        alltime[r["item_id"]] += w
        recent[r["item_id"]] += w if r["ts"] > now - window else 0.0
        cats[r["item_id"]].add(r["category"])
    assert "late" not in cat.item_ids
    assert sorted(cat.item_ids) == sorted(alltime)
    for i, item in enumerate(cat.item_ids):
        assert cat.recent[i] == recent[item]
        assert cat.alltime[i] == alltime[item]
        row = cat.item_categories[i].indices
        assert {cat.categories[c] for c in row} == cats[item]
    assert set(cat.categories) == {f"cat{g}" for g in range(GROUPS)} | {"sale"}
    order = [(-cat.recent[i], -cat.alltime[i], i) for i in cat.popular]
    assert order == sorted(order)
    sale = cat.by_category[cat.category_index("sale")]
    assert [cat.item_ids[i] for i in sale] == ["g0_i00"]
    assert cat.window_days == 7


def test_items_outside_the_model_are_recommended_from_the_catalogue(
    model: ALSModel, events: pl.DataFrame
) -> None:
    fresh = _events("seller", ["g3_fresh"] * 40, ["purchase"] * 40, NOW - DAY_US)
    rec = Recommender(model, Catalog.from_events(pl.concat([events, fresh]), NOW))
    cold = rec.recommend(UserContext(), k=3)
    assert cold[0].item_id == "g3_fresh"
    warm = rec.recommend(UserContext(category_affinity={"cat3": 1.0}), k=3)
    assert warm[0].item_id == "g3_fresh"
    assert "category" in warm[0].sources
