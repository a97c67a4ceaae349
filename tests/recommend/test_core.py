"""Recommender: planted groups, cold start, feedback loop, diversity, catalogue.

Both blends run the feedback and diversity checks. The planted data has no
popularity signal (7-day counts are noise), so the tests of the personal
signals run the hand blend and the learned blend with its popularity weights
at zero; the learned blend with its default (MovieLens) weights is checked
against a slow re-computation of its formula over the whole catalogue.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from tests.models.cases_cf import DAY_US, GROUPS, T0, group_of, planted_events, planted_model

from portrait.errors import UsageError
from portrait.models.cf import DEFAULT_INTERACTIONS, ALSModel
from portrait.recommend import Catalog, Rec, Recommender, RecommendParams, UserContext
from portrait.recommend.core import LEARNED_WEIGHTS

NOW = T0 + 60 * DAY_US
BLENDS = {
    "hand": RecommendParams(blend="hand"),
    "learned": RecommendParams(blend="learned"),
    "learned, personal": RecommendParams(blend="learned", learned_weights=(1.0, 0.0, 0.0, 1.0)),
}
PERSONAL = ["hand", "learned, personal"]


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    return planted_events()


@pytest.fixture(scope="module")
def model() -> ALSModel:
    return planted_model()


@pytest.fixture(scope="module")
def catalog(events: pl.DataFrame) -> Catalog:
    return Catalog.from_events(events, NOW)


@pytest.fixture(scope="module", params=list(BLENDS))
def rec(request: pytest.FixtureRequest, model: ALSModel, catalog: Catalog) -> Recommender:
    return Recommender(model, catalog, BLENDS[request.param])


@pytest.fixture(scope="module", params=PERSONAL)
def personal(request: pytest.FixtureRequest, model: ALSModel, catalog: Catalog) -> Recommender:
    return Recommender(model, catalog, BLENDS[request.param])


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


def _z(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    sd = v.std()
    out: np.ndarray = (v - v.mean()) / sd if sd > 0 else v * 0.0
    return out


def _reference(model: ALSModel, catalog: Catalog, ctx: UserContext,
               params: RecommendParams, k: int) -> tuple[list[str], list[float]]:
    """The learned blend from its definition, one catalogue item at a time."""
    w_als, w_short, w_long, w_aff = params.learned_weights
    ids, w = list(ctx.item_ids), np.asarray(ctx.weights, np.float64)
    cats_of = {item: {catalog.categories[c] for c in catalog.item_categories[i].indices}
               for i, item in enumerate(catalog.item_ids)}
    als = np.zeros(len(catalog))
    m_idx = model.item_index(ids)
    if (m_idx >= 0).any():
        x = model.fold_in(m_idx, w)
        on = model.item_index(catalog.item_ids)
        vals = [float(model.item_factors[j] @ x) if j >= 0 else np.nan for j in on]
        als = np.nan_to_num(np.array(vals), nan=float(np.nanmean(vals)))
    aff: dict[str, float] = defaultdict(float)
    for name, value in ctx.category_affinity.items():
        aff[name] = max(value, 0.0)
    if not ctx.category_affinity:  # the positive event weights, per category of the item
        for item, weight in zip(ids, w, strict=True):
            for c in cats_of.get(item, ()) if weight > 0 else ():
                aff[c] += weight
    match = [np.mean([aff[c] for c in cats_of[i]]) if cats_of[i] else 0.0
             for i in catalog.item_ids]
    raw = (w_als * _z(als) + w_short * _z(np.log1p(catalog.recent_short))
           + w_long * _z(np.log1p(catalog.recent)) + w_aff * _z(np.array(match)))
    score = (raw - raw.min()) / (raw.max() - raw.min())
    net: dict[str, float] = defaultdict(float)
    for item, weight in zip(ids, w, strict=True):
        net[item] += weight
    consumed = {item for item, weight in zip(ids, w, strict=True) if weight > 0}
    for i, item in enumerate(catalog.item_ids):
        if net[item] < 0 and item not in consumed:
            score[i] /= 1.0 + params.ignored_penalty * abs(net[item])
    rank = np.argsort(catalog.popular)
    order = [int(i) for i in np.lexsort((rank, -score)) if catalog.item_ids[i] not in consumed]
    return [catalog.item_ids[i] for i in order[:k]], [float(score[i]) for i in order[:k]]


# ---- relevance ----------------------------------------------------------------
def test_known_users_get_unconsumed_items_of_their_own_group(
    personal: Recommender, events: pl.DataFrame
) -> None:
    for user in ("g0_u00", "g1_u11", "g2_u22", "g3_u29"):
        mine = _user(events, user)
        recs = personal.recommend(UserContext.from_events(mine), k=10)
        assert len(recs) == 10
        assert {group_of(i) for i in _ids(recs)} == {group_of(user)}, recs
        assert not set(_ids(recs)) & set(mine["item_id"].to_list())
        assert all(0 < r.score <= 1 for r in recs)
        assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)


def test_a_brand_new_user_is_folded_in_from_a_few_events(personal: Recommender) -> None:
    ctx = UserContext.from_events(_events("newcomer", ["g2_i00", "g2_i07", "g2_i13"],
                                          ["click", "purchase", "view"], NOW))
    recs = personal.recommend(ctx, k=8)
    assert {group_of(i) for i in _ids(recs)} == {2}


def test_cold_start_is_recent_popularity(model: ALSModel, catalog: Catalog) -> None:
    # hand: the 30-day window; learned (default weights): mostly the 7-day window
    hand = Recommender(model, catalog, BLENDS["hand"]).recommend(UserContext(), k=10)
    assert _ids(hand) == [catalog.item_ids[i] for i in catalog.popular[:10]]
    assert all(r.reason == "popular in the last 30 days" and r.sources == ("popular",)
               for r in hand)
    recs = Recommender(model, catalog, BLENDS["learned"]).recommend(UserContext(), k=10)
    _, w_short, w_long, _ = LEARNED_WEIGHTS
    prior = w_short * _z(np.log1p(catalog.recent_short)) + w_long * _z(np.log1p(catalog.recent))
    rank = np.argsort(catalog.popular)  # ties: the catalogue's popularity order
    want = np.lexsort((rank, -prior))[:10]
    assert _ids(recs) == [catalog.item_ids[i] for i in want]
    assert all(r.reason == "popular in the last 7 days" and r.sources == ("popular",)
               for r in recs)


def test_category_affinity_alone_recommends_that_category(personal: Recommender) -> None:
    recs = personal.recommend(UserContext(category_affinity={"cat3": 2.0, "cat1": 0.1}), k=5)
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
    model: ALSModel, catalog: Catalog, events: pl.DataFrame
) -> None:
    # the hand blend: the clicked items become the neighbour seeds (recency)
    hand = Recommender(model, catalog, BLENDS["hand"])
    mine = _user(events, "g0_u03")
    before = hand.recommend(UserContext.from_events(mine), k=10)
    assert all(group_of(i) == 0 for i in _ids(before))
    clicked = ["g1_i00", "g1_i01", "g1_i02"]
    new = _events("g0_u03", clicked, ["click", "purchase", "click"], NOW + DAY_US)
    after = hand.recommend(UserContext.from_events(pl.concat([mine, new])), k=10)
    moved = [r for r in after if group_of(r.item_id) == 1]
    assert len(moved) >= 3, after
    assert not set(_ids(after)) & set(clicked)  # consumed now
    assert any(r.reason.startswith("because you liked ") and r.reason.split()[-1] in clicked
               for r in moved)


def test_clicks_in_another_group_raise_it_in_the_ranking(personal: Recommender,
                                                         events: pl.DataFrame) -> None:
    # the learned blend has no recency: clicks move the folded-in vector and the
    # category affinity, so the other group climbs without taking over
    mine = _user(events, "g0_u03")
    clicked = ["g1_i00", "g1_i01", "g1_i02"]
    new = _events("g0_u03", clicked, ["click", "purchase", "click"], NOW + DAY_US)

    def ranks(ctx: UserContext) -> list[int]:
        order = _ids(personal.recommend(ctx, k=len(personal.catalog)))
        return [order.index(i) for i in order if group_of(i) == 1 and i not in clicked]

    before = ranks(UserContext.from_events(mine))
    after = ranks(UserContext.from_events(pl.concat([mine, new])))
    assert np.mean(after) < np.mean(before) - 10, (before, after)
    assert min(after) < 20


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


@pytest.mark.parametrize("blend", PERSONAL)
def test_ignored_penalty_zero_keeps_only_the_fold_in_effect(
    model: ALSModel, catalog: Catalog, events: pl.DataFrame, blend: str
) -> None:
    plain = Recommender(model, catalog, replace(BLENDS[blend], ignored_penalty=0.0))
    mine = _user(events, "g2_u08")
    top = plain.recommend(UserContext.from_events(mine), k=1)[0]
    shown = _events("g2_u08", [top.item_id], ["impression"], NOW)
    again = {r.item_id: r.score for r in
             plain.recommend(UserContext.from_events(pl.concat([mine, shown])), k=30)}
    assert 0 < again[top.item_id] < top.score


# ---- the learned blend --------------------------------------------------------
@pytest.mark.parametrize("weights", [LEARNED_WEIGHTS, (1.0, 2.0, 1.0, 0.5), (0.5, 0.0, 3.0, 1.0)])
def test_learned_blend_is_its_formula_over_the_whole_catalogue(
    model: ALSModel, events: pl.DataFrame, weights: tuple[float, float, float, float]
) -> None:
    # the formula of portrait.eval.recommender: z over the whole catalogue, items
    # without factors at the user's mean ALS score; top k over every item, not
    # only the candidate lists
    fresh = _events("seller", ["g3_fresh"] * 40, ["purchase"] * 40, NOW - DAY_US)
    catalog = Catalog.from_events(pl.concat([events, fresh]), NOW)
    params = RecommendParams(blend="learned", learned_weights=weights)
    rec = Recommender(model, catalog, params)
    contexts = [
        UserContext.from_events(_user(events, "g1_u04")),
        UserContext.from_events(pl.concat([
            _user(events, "g2_u08"),
            _events("g2_u08", ["g0_i03", "g0_i03", "g3_fresh"], ["impression"] * 2 + ["view"],
                    NOW),
        ])),
        UserContext.from_events(_events("newcomer", ["g2_i00", "g3_fresh", "g1_i07"],
                                        ["click", "purchase", "impression"], NOW)),
        UserContext(),
        UserContext(category_affinity={"cat3": 2.0, "cat1": 0.1, "nope": 5.0, "cat0": -1.0}),
        UserContext.from_events(_user(events, "g0_u05"),
                                category_affinity={"cat2": 1.0, "cat0": 0.5}),
    ]
    for ctx in contexts:
        for k in (5, 20, 60):
            recs = rec.recommend(ctx, k=k)
            want_ids, want_scores = _reference(model, catalog, ctx, params, k)
            assert _ids(recs) == want_ids
            assert [r.score for r in recs] == pytest.approx(want_scores, abs=1e-5)


def test_learned_reasons_name_the_largest_contribution(model: ALSModel,
                                                      catalog: Catalog,
                                                      events: pl.DataFrame) -> None:
    popular = Recommender(model, catalog, BLENDS["learned"]).recommend(
        UserContext.from_events(_user(events, "g1_u04")), k=10)
    assert all(r.reason == "popular in the last 7 days" for r in popular[:3])
    taste = Recommender(model, catalog,
                        RecommendParams(blend="learned", learned_weights=(1.0, 0.0, 0.0, 0.0)))
    recs = taste.recommend(UserContext.from_events(_user(events, "g1_u04")), k=10)
    assert {r.reason.split()[0] for r in recs} <= {"because", "people"}
    assert all(r.reason.startswith("because you liked g1_") for r in recs
               if "neighbours" in r.sources)


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
    cat = Catalog.from_events(ev, now, window_us=window, short_window_us=2 * DAY_US)
    recent: dict[str, float] = defaultdict(float)
    short: dict[str, float] = defaultdict(float)
    alltime: dict[str, float] = defaultdict(float)
    cats: dict[str, set[str]] = defaultdict(set)
    for r in ev.filter(pl.col("ts") <= now).to_dicts():
        w = max(DEFAULT_INTERACTIONS.get(r["type"], 0.0), 0.0)
        alltime[r["item_id"]] += w
        recent[r["item_id"]] += w if r["ts"] > now - window else 0.0
        short[r["item_id"]] += w if r["ts"] > now - 2 * DAY_US else 0.0
        cats[r["item_id"]].add(r["category"])
    assert "late" not in cat.item_ids
    assert sorted(cat.item_ids) == sorted(alltime)
    for i, item in enumerate(cat.item_ids):
        assert cat.recent[i] == recent[item]
        assert cat.recent_short[i] == short[item]
        assert cat.alltime[i] == alltime[item]
        row = cat.item_categories[i].indices
        assert {cat.categories[c] for c in row} == cats[item]
    assert set(cat.categories) == {f"cat{g}" for g in range(GROUPS)} | {"sale"}
    order = [(-cat.recent[i], -cat.alltime[i], i) for i in cat.popular]
    assert order == sorted(order)
    sale = cat.by_category[cat.category_index("sale")]
    assert [cat.item_ids[i] for i in sale] == ["g0_i00"]
    assert cat.window_days == 7
    assert cat.short_window_days == 2


def test_a_catalog_built_with_one_window_uses_it_for_both(catalog: Catalog) -> None:
    one = Catalog(catalog.item_ids, catalog.categories, catalog.item_categories,
                  catalog.recent, catalog.alltime, catalog.now)
    assert np.array_equal(one.recent_short, catalog.recent)
    assert one.short_window_us == one.window_us
    assert np.array_equal(one.popular, catalog.popular)


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
