"""POST /v1/events against the real server: per-event results, dead letters, visibility."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests.serve.harness import Served, event

from portrait.client import Client
from portrait.engine import Engine
from portrait.errors import PayloadTooLargeError, UnknownUserError, UnprocessableRequestError
from portrait.store import open_store

PROBLEM = "application/problem+json"


def test_batch_with_good_duplicate_and_bad_events(api: Client, served: Served) -> None:
    batch = [
        event("ing-a", "2024-05-01T10:00:00Z", event_id="ing-a-1", item_id="i1"),
        event("ing-a", "2024-05-01T11:00:00Z", "purchase", event_id="ing-a-2", price=-5),
        event("ing-a", "2024-05-01T10:00:00Z", event_id="ing-a-1", item_id="i1"),  # repeat
        {"user_id": "ing-a", "type": "view"},  # no ts
        event("ing-a", "2024-05-01T12:00:00Z", "cart", item_id="i2", colour="red"),
        event("ing-a", "2024-05-01T13:00:00Z", item_id="i3"),  # no event_id: content hash
        "not an object",
        event("e001505", "2024-03-01T01:25:46Z", event_id="e001505"),  # id already stored
    ]
    out = api.ingest(batch)
    statuses = [r["status"] for r in out["results"]]
    assert statuses == ["accepted", "rejected", "duplicate", "rejected", "rejected", "accepted",
                        "rejected", "duplicate"]
    assert [r["index"] for r in out["results"]] == list(range(len(batch)))
    assert (out["accepted"], out["duplicates"], out["rejected"]) == (2, 2, 4)
    assert out["durable"] is True
    assert out["queued"] == 0
    reasons = {r["index"]: r["reason"] for r in out["results"] if r["status"] == "rejected"}
    assert reasons[1].startswith("price:")
    assert reasons[3].startswith("ts:")
    assert "colour" in reasons[4]
    assert out["results"][5]["event_id"].startswith("h:")
    with open_store(served.db) as store:
        letters = [d for d in store.dead_letters() if d["user_id"] == "ing-a"]
    assert {d["source"] for d in letters} == {"api"}
    assert sorted(d["reason"] for d in letters) == sorted(
        [reasons[1], reasons[3], reasons[4]])
    assert any(orjson.loads(d["raw"]).get("price") == -5 for d in letters)


def test_one_event_and_read_your_write(api: Client) -> None:
    first = api.ingest(event("ing-b", "2024-05-02T10:00:00Z", item_id="x"))
    assert first["results"] == [{"index": 0, "status": "accepted",
                                 "event_id": first["results"][0]["event_id"]}]
    assert api.profile("ing-b")["features"]["events_total"] == 1
    api.ingest([event("ing-b", "2024-05-02T11:00:00Z", item_id="y")])
    assert api.profile("ing-b")["features"]["events_total"] == 2  # visible at once


def test_async_post_is_queued_then_visible(api: Client, served: Served) -> None:
    out = api.ingest([event("ing-c", "2024-05-03T10:00:00Z"), {"bad": 1}], wait=False)
    assert out["durable"] is False
    assert out["queued"] == 1
    assert [r["status"] for r in out["results"]] == ["queued", "rejected"]
    raw = httpx.post(f"{served.url}/v1/events?async=1", headers={"X-API-Key": served.ingest},
                     json=event("ing-c", "2024-05-03T11:00:00Z"))
    assert raw.status_code == 202
    deadline = time.monotonic() + 10
    while True:
        try:
            if api.profile("ing-c")["features"]["events_total"] == 2:
                break
        except UnknownUserError:
            pass
        assert time.monotonic() < deadline, "async events never became visible"
        time.sleep(0.01)


def test_concurrent_posts_are_group_committed(api: Client, served: Served) -> None:
    def post(n: int) -> None:
        with Client(served.url, served.ingest) as c:
            for j in range(5):
                batch = [event(f"ing-d{n}", f"2024-05-04T10:{j:02d}:{k:02d}Z") for k in range(20)]
                got = c.ingest(batch)
                assert got["accepted"] == 20, got

    threads = [threading.Thread(target=post, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(4):
        assert api.profile(f"ing-d{n}")["features"]["events_total"] == 100


def _post(served: Served, content: bytes | str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{served.url}/v1/events", content=content,
                      headers={"X-API-Key": served.ingest, "Content-Type": "application/json"},
                      **kwargs)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b'{"events": [', 400, "malformed JSON"),
        (b"", 400, "empty request body"),
        (b'{"user_id": "u", "ts": NaN, "type": "view"}', 400, "malformed JSON"),
        (b'[{"user_id": "u"}]', 422, "wrap a batch"),
        (b'"just a string"', 422, "got a JSON string"),
        (b'{"events": {"user_id": "u"}}', 422, '"events" must be a list'),
        (b'{"events": [], "extra": 1}', 422, "unexpected: extra"),
        (b"\xff\xfe not utf-8", 400, "malformed JSON"),
    ],
)
def test_bad_requests_are_4xx_problems(served: Served, body: bytes, status: int,
                                       words: str) -> None:
    r = _post(served, body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    problem = r.json()
    assert problem["status"] == status
    assert words in problem["detail"]
    assert problem["instance"] == "/v1/events"


def test_too_many_events_is_413(api: Client) -> None:
    batch = [event("ing-e", "2024-05-05T10:00:00Z")] * 10_001
    with pytest.raises(PayloadTooLargeError, match="10,001 events"):
        api.ingest(batch)


def test_oversized_body_is_413(served: Served) -> None:
    big = b'{"events": [' + b" " * (33 * 1024 * 1024) + b"]}"
    r = _post(served, big)
    assert r.status_code == 413
    assert r.headers["content-type"] == PROBLEM
    assert "over the limit" in r.json()["detail"]


def test_wrong_shape_raises_through_client(api: Client) -> None:
    with pytest.raises(UnprocessableRequestError) as info:
        api._json("POST", "/v1/events", json=[1, 2])
    assert info.value.status == 422  # type: ignore[attr-defined]


def test_empty_batch_is_a_no_op(api: Client) -> None:
    out = api.ingest([])
    assert out["results"] == []
    assert out["accepted"] == 0


def test_posted_events_equal_file_ingest(api: Client, engine: Engine, served: Served) -> None:
    """The profile built through the API equals the one the engine gives for the same events."""
    events = [event("ing-f", f"2024-05-0{d}T0{h}:00:00Z", "purchase" if h == 3 else "view",
                    item_id=f"it{h}", category="Sci-Fi", price=30.0 if h == 3 else None)
              for d in range(1, 6) for h in range(1, 5)]
    events = [{k: v for k, v in e.items() if v is not None} for e in events]
    api.ingest(events)
    got = api.profile("ing-f")
    want = engine.profile("ing-f")
    assert {k: v for k, v in got.items() if k != "models"} == want


def test_idle_writer_logs_exits_that_time_alone_caused(seeded: Path, tmp_path: Path) -> None:
    """A user who posts nothing more still leaves a segment when its window expires: once
    the writer is idle and the watermark has moved, it re-evaluates everyone and logs the
    exit with a time cause (as `portrait ingest` does at the end of a command)."""
    from tests.serve.harness import serving

    with serving(seeded, tmp_path) as srv, Client(srv.url, srv.admin) as api:
        api.ingest([event("rf-a", "2030-01-01T00:00:00Z", "purchase", price=60.0),
                    event("rf-a", "2030-01-02T00:00:00Z", "purchase", price=60.0)])
        entered = api.segment_changes("big_spender", user="rf-a")["changes"]
        assert [c["change"] for c in entered] == ["enter"]
        api.ingest([event("rf-b", "2030-02-15T00:00:00Z")])  # 44 days later: window over
        deadline = time.monotonic() + 30
        while True:
            log = api.segment_changes("big_spender", user="rf-a")["changes"]
            if len(log) == 2:
                break
            assert time.monotonic() < deadline, log
            time.sleep(0.2)
        assert log[1]["change"] == "exit"
        assert log[1]["cause"].startswith("re-evaluated at 2030-02-15T00:00:00")
        assert "big_spender" not in api.profile("rf-a")["segments"]


def test_events_before_the_retention_cutoff_are_rejected_by_the_writer(seeded: Path,
                                                                       tmp_path: Path) -> None:
    """With a retention set, a posted event older than watermark - retention gets
    ``rejected`` with a reason naming ts (decided in the writer, where the cutoff is exact);
    a recent one is accepted."""
    import shutil

    from tests.serve.harness import serving

    from portrait.timeutil import format_us, parse_duration

    template = tmp_path / "template"
    shutil.copytree(seeded, template)
    with open_store(template, writer=True) as store:
        store.set_retention(parse_duration("1d"))
        wm = store.meta().watermark
    assert wm is not None
    with serving(template, tmp_path / "run") as srv, Client(srv.url, srv.admin) as api:
        old = event("ret-a", format_us(wm - parse_duration("2d")))
        new = event("ret-a", format_us(wm))
        got = api.ingest([old, new])
        assert (got["accepted"], got["rejected"]) == (1, 1)
        assert got["results"][0]["status"] == "rejected"
        assert got["results"][0]["reason"].startswith("ts: ")
        assert "retention cutoff" in got["results"][0]["reason"]
        assert got["results"][1]["status"] == "accepted"
        assert api.profile("ret-a")["features"]["events_total"] == 1
