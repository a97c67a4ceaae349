"""A user's recent events and a feature's distribution, against the real server.

The events are compared with what was posted (and with the store's log); the
histograms with NumPy over ``Engine.read_at()`` of the same database.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import polars as pl
import pytest
from tests.serve.harness import Served, event

from portrait.client import Client
from portrait.engine import Engine
from portrait.errors import UnknownFeatureError, UnknownUserError, UnprocessableRequestError
from portrait.serve.dashboard import json_type
from portrait.serve.queries import population_distribution
from portrait.spec.model import FeatureSpec
from portrait.timeutil import format_us

USER = "u001"
PROBLEM = "application/problem+json"


def _expected(posted: list[dict[str, Any]], ids: list[str]) -> list[dict[str, Any]]:
    """The posted events as the route shows them: non-null fields, newest first."""
    rows = []
    for ev, event_id in zip(posted, ids, strict=True):
        row = {k: v for k, v in ev.items() if k != "user_id"}
        row["event_id"] = event_id
        rows.append(row)
    return sorted(rows, key=lambda r: (r["ts"], r["event_id"]), reverse=True)


def test_recent_events_are_the_posted_ones_newest_first(api: Client, served: Served) -> None:
    user = "ev/a b"  # '/' and a space: percent-encoded in the path
    posted = [
        event(user, "2024-05-20T10:00:00Z", item_id="i1", category="Books"),
        event(user, "2024-05-20T12:00:00Z", "purchase", event_id="ev-b", item_id="i2",
              category="Books", price=12.5, quantity=2),
        event(user, "2024-05-20T12:00:00Z", "cart", event_id="ev-a", item_id="i3"),  # same ts
        event(user, "2024-05-19T08:30:00.250000Z", "rating", item_id="i1", rating=4.0),
        event(user, "2024-05-21T09:00:00Z", "search", text="red shoes", lat=48.5, lon=2.25,
              attrs={"b": [1, 2], "a": {"x": True}}),
    ]
    out = api.ingest(posted)
    assert out["accepted"] == len(posted)
    ids = [r["event_id"] for r in out["results"]]
    want = _expected(posted, ids)
    got = api.events(user)
    assert got == {"user_id": user, "count": len(posted), "events": want}
    assert [e["event_id"] for e in got["events"][1:3]] == ["ev-b", "ev-a"]  # ties: by id
    assert "price" not in got["events"][0]  # null fields are left out
    assert got["events"][0]["attrs"] == {"a": {"x": True}, "b": [1, 2]}
    assert api.events(user, limit=2)["events"] == want[:2]
    with Client(served.url, served.read) as reader:  # not admin: personal fields masked
        seen = reader.events(user)["events"][0]
    assert seen["masked"] == ["attrs", "lat", "lon", "text"]
    assert not {"text", "lat", "lon", "attrs"} & set(seen)
    assert seen["type"] == "search"

    # a newer event comes first at once (the cache is per data version)
    later = event(user, "2024-05-22T00:00:00Z", item_id="i9")
    new_id = api.ingest(later)["results"][0]["event_id"]
    assert [e["event_id"] for e in api.events(user, limit=2)["events"]] == [new_id, want[0][
        "event_id"]]


def test_recent_events_of_a_seeded_user(api: Client, engine: Engine) -> None:
    log = engine.store.events([USER]).sort(["ts", "event_id"], descending=True)
    got = api.events(USER)
    assert got["count"] == 50
    assert [e["event_id"] for e in got["events"]] == log["event_id"].head(50).to_list()
    for shown, row in zip(got["events"], log.head(50).iter_rows(named=True), strict=True):
        assert shown["ts"] == format_us(row["ts"])
        assert {k: v for k, v in shown.items() if k != "ts"} == {
            k: v for k, v in row.items() if v is not None and k not in ("ts", "user_id")}
    everything = api.events(USER, limit=1000)
    assert everything["count"] == min(1000, log.height)


def test_recent_events_errors(api: Client, served: Served) -> None:
    with pytest.raises(UnknownUserError, match="nobody"):
        api.events("nobody")
    key = {"X-API-Key": served.read}
    events = httpx.get(f"{served.url}/v1/profiles/nobody/events", headers=key)
    profile = httpx.get(f"{served.url}/v1/profiles/nobody", headers=key)
    assert events.status_code == profile.status_code == 404
    assert events.headers["content-type"] == PROBLEM
    same = ("type", "title", "status", "detail", "error")
    assert {k: events.json()[k] for k in same} == {k: profile.json()[k] for k in same}
    for bad in (0, 1001):
        with pytest.raises(UnprocessableRequestError, match="limit"):
            api.events(USER, limit=bad)


@pytest.mark.parametrize("path", [f"/v1/profiles/{USER}/events",
                                  "/v1/features/spend_total/distribution"])
def test_new_routes_need_a_key(served: Served, path: str) -> None:
    for headers in ({}, {"X-API-Key": "prt_not-a-key"}):
        r = httpx.get(served.url + path, headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"] == "AuthenticationError"
    assert httpx.get(served.url + path, headers={"X-API-Key": served.read}).status_code == 200


def numeric(engine: Engine) -> list[FeatureSpec]:
    return [f for f in engine.spec.features.values()
            if not f.keyed and f.value_type == "number"]


def test_distribution_equals_numpy_over_the_population(api: Client, engine: Engine) -> None:
    names = [f.name for f in numeric(engine)]
    assert {"spend_total", "avg_rating", "first_seen"} <= set(names)
    values = engine.read_at()
    wm = engine.store.meta().watermark
    assert wm is not None
    for f in numeric(engine):
        for bins in (1, 7, 20):
            got = api.distribution(f.name, bins=bins)
            column = values[f.name].cast(pl.Float64)
            found = column.filter(column.is_finite()).to_numpy()
            counts, edges = np.histogram(found, bins=bins, range=(found.min(), found.max()))
            scale = 1e-6 if json_type(f) == "time" else 1.0
            assert (got["feature"], got["at"]) == (f.name, format_us(wm))
            assert got["value_type"] == json_type(f)
            assert got["users"] == values.height
            assert got["nulls"] == values.height - found.size
            assert [b["count"] for b in got["bins"]] == counts.tolist()
            assert sum(b["count"] for b in got["bins"]) == got["users"] - got["nulls"]
            assert [b["lo"] for b in got["bins"]] == pytest.approx(edges[:-1] * scale)
            assert [b["hi"] for b in got["bins"]] == pytest.approx(edges[1:] * scale)
            want_q = np.quantile(found, [0.5, 0.9, 0.99]) * scale
            assert [got["quantiles"][k] for k in ("p50", "p90", "p99")] == pytest.approx(want_q)
    assert api.distribution("avg_rating")["nulls"] == values["avg_rating"].null_count() > 0
    assert len(api.distribution("spend_total")["bins"]) == 20  # the default


def test_distribution_edge_cases() -> None:
    spec = FeatureSpec(name="x", kind="sum", line=1, field="price")
    same = population_distribution(spec, pl.Series([2.5, None, 2.5, 2.5]), 10, 0)
    assert same["bins"] == [{"lo": 2.5, "hi": 2.5, "count": 3}]
    assert (same["users"], same["nulls"]) == (4, 1)
    assert same["quantiles"] == {"p50": 2.5, "p90": 2.5, "p99": 2.5}
    empty = population_distribution(spec, pl.Series([None, float("nan")], dtype=pl.Float64),
                                    10, None)
    assert (empty["bins"], empty["at"], empty["nulls"]) == ([], None, 2)
    assert empty["quantiles"] == {"p50": None, "p90": None, "p99": None}


def test_distribution_refuses_keyed_string_and_unknown_features(api: Client,
                                                               served: Served) -> None:
    key = {"X-API-Key": served.read}
    for name, why in (("category_affinity", "keyed"), ("top_categories", "keyed"),
                      ("last_item", "strings")):
        r = httpx.get(f"{served.url}/v1/features/{name}/distribution", headers=key)
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == PROBLEM
        body = r.json()
        assert body["error"] == "UsageError"
        assert name in body["detail"]
        assert why in body["detail"]
    with pytest.raises(UnknownFeatureError, match="no such"):
        api.distribution("no such")
    r = httpx.get(f"{served.url}/v1/features/{quote('a/b', safe='')}/distribution", headers=key)
    assert r.status_code == 404
    for bad in (0, 1001):
        with pytest.raises(UnprocessableRequestError, match="bins"):
            api.distribution("spend_total", bins=bad)
