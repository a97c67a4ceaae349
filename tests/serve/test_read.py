"""The read endpoints against the real server, compared with the engine and services in-process."""

from __future__ import annotations

from pathlib import Path

import httpx
import polars as pl
import pytest
from tests.serve.harness import Served

from portrait.audience import select
from portrait.client import Client
from portrait.engine import Engine
from portrait.errors import (
    NotFoundError,
    RuleError,
    UnknownFeatureError,
    UnknownSegmentError,
    UnknownTargetError,
    UnknownUserError,
    UnprocessableRequestError,
    UsageError,
)
from portrait.models import service
from portrait.models.drift import DAY_US
from portrait.timeutil import parse_time_arg

USER = "u001"


def test_profile_now_and_at(api: Client, engine: Engine) -> None:
    got = api.profile(USER)
    assert {k: v for k, v in got.items() if k != "models"} == engine.profile(USER)
    assert set(got["models"]) >= {"p_purchase_30d", "cluster"}
    at = "2024-04-01T00:00:00Z"
    past = api.profile(USER, at=at)
    assert past["as_of"] == at
    assert {k: v for k, v in past.items() if k != "models"} == engine.profile(
        USER, parse_time_arg(at))


def test_profile_explain(api: Client) -> None:
    got = api.profile(USER, explain="category_affinity['Comedy']")
    part = got["explanation"]
    assert part["feature"] == "category_affinity"
    assert part["key"] == "Comedy"
    assert part["value"] == pytest.approx(got["features"]["category_affinity"]["Comedy"])
    seg = api.profile(USER, explain="big_spender")["explanation"]
    assert seg["target_type"] == "segment"
    assert seg["member"] == ("big_spender" in got["segments"])
    with pytest.raises(UnknownTargetError):
        api.profile(USER, explain="nope")


def test_unknown_user_and_bad_time(api: Client, served: Served) -> None:
    with pytest.raises(UnknownUserError, match="nobody"):
        api.profile("nobody")
    with pytest.raises(UsageError, match="bad time"):
        api.profile(USER, at="yesterday")
    r = httpx.get(f"{served.url}/v1/profiles/nobody", headers={"X-API-Key": served.read})
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["error"] == "UnknownUserError"


def test_history_equals_time_travel(api: Client, engine: Engine) -> None:
    got = api.history(USER, features=["events_total", "category_affinity"], points=6)
    assert len(got["points"]) == 6
    assert got["points"][0]["at"] == got["start"]
    assert got["points"][-1]["at"] == got["end"]
    for point in got["points"]:
        want = engine.profile(USER, parse_time_arg(point["at"]))["features"]
        assert point["values"] == {n: want[n] for n in ("events_total", "category_affinity")}
    totals = [p["values"]["events_total"] for p in got["points"]]
    assert totals == sorted(totals)
    assert totals[0] == 1
    everything = api.history(USER, points=2)
    assert everything["features"] == list(engine.spec.features)
    with pytest.raises(UnknownFeatureError):
        api.history(USER, features=["nope"])
    with pytest.raises(UnknownUserError):
        api.history("nobody")


def test_recommendations(api: Client, engine: Engine) -> None:
    got = api.recommendations(USER, k=5)
    want = service.recommendations_json(
        USER, service.recommend(engine, USER, 5), as_of=engine.store.meta().watermark)
    assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in want["items"]]
    assert all(i["reason"] for i in got["items"])
    diverse = api.recommendations(USER, k=5, diversity=0.8)
    assert len(diverse["items"]) == 5
    cold = api.recommendations("someone-new", k=3)
    assert len(cold["items"]) == 3
    with pytest.raises(UnprocessableRequestError, match="k"):
        api.recommendations(USER, k=0)


def test_segments_and_paged_members(api: Client, engine: Engine) -> None:
    listed = {s["name"]: s for s in api.segments()["segments"]}
    assert set(listed) == set(engine.spec.segments)
    assert listed["big_spender"]["rule"] == "spend_total >= 100 and purchases_30d >= 2"
    assert listed["big_spender"]["features"] == ["purchases_30d", "spend_total"]
    for name, seg in listed.items():
        want = engine.segment_members(name)
        assert seg["size"] == len(want)
        pages, offset = [], 0
        while True:
            page = api.members(name, offset=offset, limit=3)
            assert page["total"] == len(want)
            pages.extend(page["members"])
            offset += 3
            if offset >= page["total"]:
                break
        assert pages == want
    at = "2024-04-15T00:00:00Z"
    past = api.members("big_spender", at=at, limit=1000)
    assert past["members"] == engine.segment_members("big_spender", parse_time_arg(at))
    with pytest.raises(UnknownSegmentError):
        api.members("nope")


def test_segment_changes_cursor(api: Client, engine: Engine) -> None:
    want = engine.store.segment_changes(segment="big_spender")
    assert want.height > 2
    seen, after = [], 0
    while True:
        page = api.segment_changes("big_spender", after=after, limit=2)
        seen.extend(page["changes"])
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert [c["seq"] for c in seen] == want["seq"].to_list()
    assert {c["change"] for c in seen} <= {"enter", "exit"}
    one = want["user_id"][0]
    mine = api.segment_changes("big_spender", user=one)["changes"]
    assert mine
    assert {c["user_id"] for c in mine} == {one}


def test_audience_count_and_exports(api: Client, engine: Engine, tmp_path: Path) -> None:
    query = "events_total > 50 and p_purchase_30d >= 0"
    values = engine.read_at()
    want = select(values, query, dict(engine.spec.features),
                  service.model_outputs(engine, values))
    got = api.audience(query)
    assert (got["count"], got["population"]) == (want.count, want.population)
    assert got["export"] is None
    for fmt in ("csv", "parquet"):
        out = api.audience(query, export=fmt)["export"]
        assert out["format"] == fmt
        assert out["rows"] == want.count
        assert Path(out["path"]).is_file()
        file = api.download(out["url"], tmp_path / f"a.{fmt}")
        frame = pl.read_csv(file) if fmt == "csv" else pl.read_parquet(file)
        assert frame["user_id"].to_list() == want.members["user_id"].to_list()
    with pytest.raises(NotFoundError):
        api.download("/v1/exports/audience-20240101T000000Z-00000000.csv", tmp_path / "x")
    with pytest.raises(NotFoundError):
        api.download("/v1/exports/..%2Fapi-keys.json", tmp_path / "x")
    with pytest.raises(RuleError, match="unknown feature 'no_such_feature'") as info:
        api.audience("no_such_feature > 1")
    assert info.value.status == 422  # type: ignore[attr-defined]


def test_drift(api: Client, engine: Engine) -> None:
    got = api.drift(top=3)
    wm = engine.store.meta().watermark
    assert wm is not None
    assert parse_time_arg(got["at"]) == wm
    assert parse_time_arg(got["ref"]) == wm - 30 * DAY_US
    assert {r["feature"] for r in got["population"]} >= {"events_total"}
    assert len(got["interest_shift"]) <= 3
    older = api.drift(ref="2024-03-15T00:00:00Z", at="2024-04-15T00:00:00Z")
    assert older["at"] == "2024-04-15T00:00:00Z"


def test_health(api: Client, engine: Engine) -> None:
    got = api.health()
    assert got["status"] == "ok"
    assert got["writer"] is True
    assert got["events"] == engine.store.meta().accepted
