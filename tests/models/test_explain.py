"""Explanations add up to what the engine reads, and name the events that drove it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from portrait.engine.engine import Engine
from portrait.errors import (
    UnknownFeatureError,
    UnknownSegmentError,
    UnknownTargetError,
    UnknownUserError,
    UsageError,
)
from portrait.events.schema import EVENT_SCHEMA
from portrait.models.explain import explain, explain_feature, explain_segment
from portrait.spec.loader import parse_spec
from portrait.store import open_store
from portrait.timeutil import format_us

T0 = 1_709_251_200_000_000  # 2024-03-01T00:00:00Z in epoch µs
HOUR = 3_600_000_000
DAY = 24 * HOUR
SPEC = """\
version: 1
features:
  n:          {kind: count}
  n_7d:       {kind: count, window: 7d}
  spend:      {kind: sum, field: price, where: {type: [purchase]}}
  spend_7d:   {kind: sum, field: price, where: {type: [purchase]}, window: 7d}
  qty:        {kind: sum, field: quantity}
  avg_price:  {kind: avg, field: price}
  max_price:  {kind: max, field: price}
  min_price:  {kind: min, field: price}
  first_seen: {kind: first, field: ts}
  last_item:  {kind: last, field: item_id}
  items:      {kind: distinct, field: item_id}
  items_7d:   {kind: distinct, field: item_id, window: 7d}
  top_cats:   {kind: top_k, key: category, k: 2}
  aff:        {kind: decayed, key: category, half_life: 3d,
               weights: {view: 1, cart: 3, purchase: 5}, where: {type: [view, cart, purchase]}}
  aff_7d:     {kind: decayed, key: category, half_life: 1d, window: 7d}
  activity:   {kind: decayed, half_life: 1d, weights: {view: 1, default: 0.5}}
segments:
  books_fan: "aff['Books'] > 2 and n >= 3"
  spender:   "spend >= 1000000 or not (max_price < 0)"
"""
SCALARS = ["n", "n_7d", "spend", "spend_7d", "qty", "avg_price", "items", "items_7d",
           "activity"]
KEYED = ["top_cats", "aff", "aff_7d"]
WEIGHTS = {"view": 1.0, "cart": 3.0, "purchase": 5.0}


def _events() -> pl.DataFrame:
    """u1: 60 random events over 30 days, then one Books purchase as the very last event."""
    rng = np.random.default_rng(3)
    n = 60
    types = rng.choice(["view", "cart", "purchase", "rating"], n)
    rows = {
        "event_id": [f"e{i:03d}" for i in range(n)],
        "user_id": ["u1"] * n,
        "ts": T0 + rng.integers(0, 30 * DAY, n),
        "type": types,
        "item_id": [f"i{k}" for k in rng.integers(0, 15, n)],
        "category": rng.choice(["Books", "Music", "Toys"], n),
        "price": np.where(types == "purchase", rng.uniform(5, 80, n).round(2), np.nan),
        "quantity": rng.integers(1, 4, n),
    }
    frame = pl.DataFrame(rows).with_columns(pl.col("price").fill_nan(None))
    last = pl.DataFrame({
        "event_id": ["z-last", "v1", "v2"], "user_id": ["u1", "u2", "u2"],
        "ts": [T0 + 30 * DAY, T0 + DAY, T0 + 2 * DAY], "type": ["purchase", "view", "view"],
        "item_id": ["book-1", "i1", "i2"], "category": ["Books", "Toys", "Toys"],
        "price": [12.0, None, None], "quantity": [1, 1, 1],
    })
    both = pl.concat([frame, last], how="vertical_relaxed")
    return both.with_columns(
        pl.lit(None, EVENT_SCHEMA[c]).alias(c) for c in EVENT_SCHEMA if c not in both.columns
    ).select(pl.col(c).cast(dt) for c, dt in EVENT_SCHEMA.items())


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    db = tmp_path_factory.mktemp("explain") / "db"
    store = open_store(db, writer=True)
    eng = Engine(parse_spec(SPEC), store)
    events = _events()
    eng.ingest_events(events.head(40))  # two batches: state merged, not built once
    eng.ingest_events(events.tail(events.height - 40))
    yield eng
    store.close()


AT_PAST = T0 + 20 * DAY + 5 * HOUR


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("at", [None, AT_PAST], ids=["watermark", "time_travel"])
@pytest.mark.parametrize("name", SCALARS)
def test_scalar_contributions_sum_to_the_engine_value(engine: Any, name: str,
                                                      at: int | None) -> None:
    got = explain(engine, "u1", name, at=at, top=1000)
    value = engine.profile("u1", at)["features"][name]
    assert got["value"] == value
    assert _close(got["total"], value), (got["total"], value)
    assert _close(sum(c["contribution"] for c in got["contributions"]), value)
    assert got["events"] == len(got["contributions"])
    if value:
        assert _close(sum(c["share"] for c in got["contributions"]), 1.0)


@pytest.mark.parametrize("at", [None, AT_PAST], ids=["watermark", "time_travel"])
@pytest.mark.parametrize("name", KEYED)
def test_keyed_contributions_sum_to_the_engine_value_of_every_key(
    engine: Any, name: str, at: int | None
) -> None:
    value = engine.profile("u1", at)["features"][name]
    assert value, "the fixture gives every keyed feature some keys"
    whole = explain(engine, "u1", name, at=at, top=1000)
    assert list(whole["total"]) == list(value)
    for key, v in value.items():
        got = explain(engine, "u1", f"{name}[{key!r}]", at=at, top=1000)
        assert got["key"] == key
        assert {c["key"] for c in got["contributions"]} == {key}
        assert _close(got["value"], v), (key, got["value"], v)
        assert _close(got["total"], v), (key, got["total"], v)
        assert _close(sum(c["contribution"] for c in got["contributions"]), v)


def test_decayed_contributions_follow_the_formula_and_the_top_event_is_the_latest_purchase(
    engine: Any,
) -> None:
    got = explain(engine, "u1", "aff['Books']", top=3)
    at = engine.store.meta().watermark
    assert got["as_of"] == format_us(at)
    assert got["contributions"][0]["event_id"] == "z-last"  # weight 5, no decay at all
    assert got["contributions"][0]["contribution"] == pytest.approx(5.0, rel=1e-12)
    log = engine.store.events(["u1"]).filter(
        (pl.col("category") == "Books") & pl.col("type").is_in(list(WEIGHTS))
    )
    want = sum(WEIGHTS[t] * 2 ** (-(at - ts) / (3 * DAY)) for t, ts in log.select("type", "ts")
               .iter_rows())
    assert _close(got["total"], want)
    assert len(got["contributions"]) == 3
    shares = [c["share"] for c in got["contributions"]]
    assert shares == sorted(shares, reverse=True)


def test_windowed_feature_lists_only_events_inside_the_window(engine: Any) -> None:
    got = explain(engine, "u1", "n_7d", at=AT_PAST, top=1000)
    low, high = format_us(AT_PAST - 7 * DAY), format_us(AT_PAST)
    assert got["contributions"], "some events fall in the window"
    assert all(low < c["ts"] <= high for c in got["contributions"])
    everything = explain(engine, "u1", "n", at=AT_PAST, top=1000)
    assert got["total"] < everything["total"]


def test_deciding_kinds_name_the_deciding_event(engine: Any) -> None:
    log = engine.store.events(["u1"])
    purchases = log.filter(pl.col("price").is_not_null())
    top = purchases.sort("price", descending=True).row(0, named=True)
    got = explain(engine, "u1", "max_price")
    assert [c["event_id"] for c in got["contributions"]] == [top["event_id"]]
    assert got["total"] == got["value"] == top["price"]
    first = explain(engine, "u1", "first_seen")
    earliest = log.sort("ts", "event_id").row(0, named=True)
    assert first["contributions"][0]["event_id"] == earliest["event_id"]
    assert first["value"] == first["total"] == format_us(earliest["ts"])
    last = explain(engine, "u1", "last_item")
    assert last["value"] == "book-1"
    assert last["contributions"][0]["event_id"] == "z-last"


def test_count_lists_most_recent_events_first_with_equal_shares(engine: Any) -> None:
    got = explain(engine, "u1", "n", top=5)
    assert got["events"] == 61
    assert [c["contribution"] for c in got["contributions"]] == [1.0] * 5
    assert got["contributions"][0]["event_id"] == "z-last"
    assert [c["share"] for c in got["contributions"]] == pytest.approx([1 / 61] * 5)
    assert set(got) == {"user_id", "as_of", "target", "target_type", "feature", "key",
                        "feature_kind", "value", "total", "events", "contributions"}
    assert set(got["contributions"][0]) == {"event_id", "ts", "type", "item_id", "category",
                                            "contribution", "share"}


def test_segment_explanation_names_the_rule_features_and_agrees_with_the_profile(
    engine: Any,
) -> None:
    for at in (None, T0 + 2 * HOUR):
        got = explain(engine, "u1", "books_fan", at=at, top=2)
        member = "books_fan" in engine.profile("u1", at)["segments"]
        assert got["member"] is member
        assert got["target_type"] == "segment"
        assert got["rule"] == "aff['Books'] > 2 and n >= 3"
        assert got["referenced_features"] == ["aff", "n"]
        assert [c["condition"] for c in got["conditions"]] == ["aff['Books'] > 2", "n >= 3"]
        assert list(got["features"]) == ["aff['Books']", "n"]
        assert all(len(f["contributions"]) <= 2 for f in got["features"].values())
        aff = got["conditions"][0]
        assert _close(aff["left"], got["features"]["aff['Books']"]["total"])
        assert aff["holds"] is (aff["left"] > 2)
    assert explain(engine, "u1", "books_fan")["member"] is True


def test_segment_condition_with_a_null_side_is_unknown(engine: Any) -> None:
    """u2 has no priced event: max_price is null, so `max_price < 0` is unknown."""
    got = explain_segment(engine, "u2", "spender")
    assert got["conditions"][1] == {"condition": "max_price < 0", "left": None, "right": 0,
                                    "holds": None}
    assert got["member"] is False
    assert got["features"]["max_price"]["contributions"] == []


def test_unknown_user_feature_segment_and_bad_lookup_are_clear_errors(engine: Any) -> None:
    with pytest.raises(UnknownUserError, match="'mallory'"):
        explain(engine, "mallory", "n")
    with pytest.raises(UnknownFeatureError, match="unknown feature 'nope'"):
        explain(engine, "u1", "nope['x']")
    with pytest.raises(UnknownFeatureError, match="unknown feature 'nope'"):
        explain_feature(engine, "u1", "nope")
    with pytest.raises(UnknownSegmentError, match="unknown segment 'whales'"):
        explain_segment(engine, "u1", "whales")
    with pytest.raises(UnknownTargetError, match="books_fan") as info:
        explain(engine, "u1", "whales")
    assert isinstance(info.value, UnknownSegmentError)
    assert isinstance(info.value, UnknownFeatureError)
    with pytest.raises(UsageError, match="not a map"):
        explain(engine, "u1", "n['x']")


def test_top_k_key_outside_the_top_reads_zero_and_says_why(engine: Any) -> None:
    value = engine.profile("u1")["features"]["top_cats"]
    outside = ({"Books", "Music", "Toys"} - set(value)).pop()
    got = explain(engine, "u1", f"top_cats[{outside!r}]")
    assert got["value"] == 0
    assert got["total"] > 0
    assert "not in the top 2" in got["note"]


def test_explain_needs_no_writer(engine: Any, tmp_path: Path) -> None:
    with open_store(engine.store.root) as reader:
        got = explain(Engine(None, reader), "u1", "spend")
    assert _close(got["total"], engine.profile("u1")["features"]["spend"])
