"""Request and field size limits over real HTTP, at the documented defaults (issue #6, item 8).

``tests/serve/test_limits.py`` checks the mechanisms on a server with tiny
limits and ``tests/serve/test_ingest.py`` a 33 MiB body and a 10,001-event
batch; here: the exact edges of the documented limits (a body of exactly
32 MiB is read, one byte more is 413; 10,000 events are taken), every field
limit of the event contract at its edge in characters (not bytes), bodies
nested far past any parser's limit, hostile headers and query values, and
rule queries past their limits. Never a 500; every refusal a problem document.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from tests.security.common import PROBLEM, Live, bounded, live_server

from portrait.events.rules import DEFAULT_MAX_LEN, MAX_LEN
from portrait.serve.settings import MAX_BATCH_EVENTS, ServeSettings
from portrait.spec.rules import MAX_DEPTH, MAX_RULE_CHARS

MAX_BODY = ServeSettings.model_fields["max_body_bytes"].default
TS = "2024-03-01T00:00:00Z"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_server(tmp_path_factory.mktemp("limits") / "db", flush_ms=1.0) as server:
        yield server


def _post(live: Live, content: Any, path: str = "/v1/events") -> httpx.Response:
    return httpx.post(live.url + path, content=content, timeout=120,
                      headers={"X-API-Key": live.admin, "Content-Type": "application/json"})


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = r.json()
    assert problem["status"] == status
    return problem


def _healthy(live: Live) -> None:
    assert httpx.get(live.url + "/healthz").status_code == 200


# --- the body and the batch -------------------------------------------------------


def test_a_body_of_exactly_the_limit_is_read_one_byte_more_is_413(live: Live) -> None:
    assert MAX_BODY == 32 * 1024 * 1024  # SECURITY.md: "bodies are capped (32 MiB, ...)"
    head, tail = b'{"events": [', b"]}"
    exact = head + b" " * (MAX_BODY - len(head) - len(tail)) + tail
    assert len(exact) == MAX_BODY
    r = _post(live, exact)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["results"] == []
    over = head + b" " * (MAX_BODY - len(head) - len(tail) + 1) + tail
    problem = _problem(_post(live, over), 413)
    assert "over the limit of 33,554,432 bytes" in problem["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        yield head
        for _ in range(32):
            yield b" " * (1 << 20)
        yield tail

    _problem(_post(live, chunks()), 413)
    _healthy(live)


def test_a_batch_of_exactly_10000_events_is_taken(live: Live) -> None:
    assert MAX_BATCH_EVENTS == 10_000
    events = [{"user_id": "lim-batch", "ts": 1_709_251_200 + i, "type": "view"}
              for i in range(MAX_BATCH_EVENTS)]
    r = _post(live, orjson.dumps({"events": events}))
    assert r.status_code == 200, r.text[:300]
    out = r.json()
    assert out["accepted"] == MAX_BATCH_EVENTS
    assert len(out["results"]) == MAX_BATCH_EVENTS
    problem = _problem(_post(live, orjson.dumps({"events": [*events, events[0]]})), 413)
    assert "10,001 events" in problem["detail"]


# --- field limits ---------------------------------------------------------------------

# field -> its limit in characters (validate.py: user_id 256, type 64, text 65,536, attrs
# 65,536 as JSON, other strings 1,024)
LIMITS = {"user_id": MAX_LEN["user_id"], "type": MAX_LEN["type"], "text": MAX_LEN["text"],
          "item_id": DEFAULT_MAX_LEN, "category": DEFAULT_MAX_LEN, "event_id": DEFAULT_MAX_LEN}
CHARS = ["a", "é", "😀"]  # 1, 2 and 4 bytes in UTF-8: the limits count characters


@pytest.mark.parametrize("field", list(LIMITS))
def test_each_string_field_at_and_over_its_limit(live: Live, field: str) -> None:
    limit = LIMITS[field]
    assert (field, limit) != ("user_id", 0)
    events = []
    for i, char in enumerate(CHARS):
        for n in (limit, limit + 1):
            base = {"user_id": f"lim-{field}-{i}", "ts": TS, "type": "view"}
            events.append({**base, field: char * n})
    # surrounding spaces are stripped before the length is counted
    events.append({"user_id": f"lim-{field}-pad", "ts": TS, "type": "view",
                   field: " " + "b" * limit + " "})
    r = _post(live, orjson.dumps({"events": events}))
    assert r.status_code == 200, r.text[:300]
    results = r.json()["results"]
    for j, result in enumerate(results[:-1]):
        if j % 2 == 0:
            assert result["status"] == "accepted", (field, j, result)
        else:
            assert result["status"] == "rejected", (field, j, result)
            assert result["reason"] == (
                f"{field}: too long (max {limit} characters), got {limit + 1} characters"
            )
    assert results[-1]["status"] == "accepted", results[-1]


def test_attrs_at_and_over_its_limit_as_json(live: Live) -> None:
    limit = MAX_LEN["attrs"]
    frame = len('{"k":""}')  # canonical JSON around the value
    events = [{"user_id": f"lim-attrs-{i}-{n}", "ts": TS, "type": "view",
               "attrs": {"k": char * (n - frame)}}
              for i, char in enumerate(CHARS) for n in (limit, limit + 1)]
    results = _post(live, orjson.dumps({"events": events})).json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected"] * len(CHARS)
    for result in results[1::2]:
        assert result["reason"] == (
            f"attrs: too long (max {limit} characters as JSON), got {limit + 1} characters"
        )


def test_a_long_unknown_field_name_is_named_short(live: Live) -> None:
    name = "k" * 100_000
    r = _post(live, orjson.dumps({"user_id": "lim-k", "ts": TS, "type": "view", name: 1}))
    (result,) = r.json()["results"]
    assert result["status"] == "rejected"
    assert result["reason"].startswith("'kkkk")
    assert "unknown field" in result["reason"]
    assert len(result["reason"]) < 200


# --- nesting and hostile bodies ----------------------------------------------------------


def _nest(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (_nest(100_000), "depth limit exceeded"),
        (_nest(1 << 19), "depth limit exceeded"),  # a 1 MiB body
        (b'{"events": [' + b"[" * 100_000, "depth limit exceeded"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "depth limit exceeded"),
        (b'{"user_id": "n", "ts": 1, "type": "v", "attrs": ' + b"{" * 2000, "malformed JSON"),
        (b'{"user_id": "n", "ts": 1, "type": "view", "price": 1e400}', "malformed JSON"),
        (b'{"user_id": "n", "ts": 1, "type": "view"}\x00', "malformed JSON"),
        (b'\xef\xbb\xbf{"user_id": "n", "ts": 1, "type": "view"}', "malformed JSON"),
        (b'{"user_id": "\xff", "ts": 1, "type": "view"}', "malformed JSON"),
    ],
    ids=["arrays", "1MiB", "unclosed", "objects", "attrs", "1e400", "nul", "bom", "utf8"],
)
def test_unreadable_bodies_are_400_at_bounded_cost(live: Live, body: bytes, words: str) -> None:
    r = bounded(lambda: _post(live, body))
    assert words in _problem(r, 400)["detail"]
    _healthy(live)


@pytest.mark.parametrize("depth", [256, 300, 1000])
def test_events_nested_past_what_can_be_stored_are_rejected_one_by_one(live: Live,
                                                                       depth: int) -> None:
    """Nesting orjson reads (up to 1,024) but cannot write back (past 255): the event is
    rejected on its own, naming the field. It was a 500 (the dead letter's raw text)."""
    nested = _nest(depth).decode()
    body = (
        '{"events": ['
        f'{{"user_id": "n1", "ts": 1709251200, "type": "view", "attrs": {{"a": {nested}}}}},'
        f'{{"user_id": "n2", "ts": 1709251200, "type": "view", "colour": {nested}}},'
        f"{nested},"
        f'{{"user_id": "n3-{depth}", "ts": 1709251200, "type": "view"}}]}}'
    ).encode()
    r = bounded(lambda: _post(live, body))
    assert r.status_code == 200, r.text[:300]
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["rejected", "rejected", "rejected", "accepted"]
    assert results[0]["reason"].startswith("attrs: cannot be stored as JSON")
    assert results[1]["reason"].startswith("colour: unknown field")
    assert results[2]["reason"] == "record: must be a JSON object, got list"


# --- headers and the request line ---------------------------------------------------------


def _raw(live: Live, request: bytes) -> bytes:
    where = urlsplit(live.url)
    with socket.create_connection((where.hostname or "", where.port or 80), timeout=30) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Length: 99999999999999999999999\r\n",
        b"Content-Length: 33554433\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 1e3\r\n",
        b"Content-Length: 5\r\nContent-Length: 7\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    ],
)
def test_lying_lengths_are_refused_without_reading(live: Live, headers: bytes) -> None:
    request = (b"POST /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"X-API-Key: " + live.admin.encode() + b"\r\n" + headers + b"\r\n{}")
    reply = bounded(lambda: _raw(live, request))
    status = int(reply.split(b" ", 2)[1])
    assert 400 <= status < 500, reply[:300]
    _healthy(live)


@pytest.mark.parametrize(
    "key",
    [b"k" * 100_000, b"prt_\xff\xfe", b"prt_\x00", "prt_é".encode(), b""],
    ids=["100KB", "latin1", "nul", "utf8", "empty"],
)
def test_hostile_keys_are_refused(live: Live, key: bytes) -> None:
    request = (b"GET /v1/segments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"X-API-Key: " + key + b"\r\n\r\n")
    reply = _raw(live, request)
    status = int(reply.split(b" ", 2)[1])
    assert status in (400, 401, 431), reply[:300]
    _healthy(live)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/profiles/lim-batch?at=" + "9" * 5000,
        "/v1/profiles/lim-batch?at=nan",
        "/v1/profiles/lim-batch?at=1e400",
        "/v1/profiles/lim-batch?at=-99999999999999999999",
        "/v1/profiles/lim-batch/events?limit=" + "9" * 60,
        "/v1/profiles/lim-batch/history?points=" + "9" * 60,
        "/v1/segments/big_spender/members?limit=-1&offset=" + "9" * 60,
        "/v1/segments/big_spender/changes?after=" + "9" * 60,
        "/v1/features/events_total/distribution?bins=" + "9" * 60,
        "/v1/recommendations/lim-batch?k=" + "9" * 60,
        "/v1/drift?ref=0001-01-01&at=9999-12-31T23:59:59Z",
        "/v1/profiles/" + "u" * 10_000,
    ],
)
def test_extreme_query_values_are_4xx(live: Live, path: str) -> None:
    r = httpx.get(live.url + path, headers={"X-API-Key": live.admin}, timeout=30)
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:300])
    assert r.headers["content-type"] == PROBLEM


# --- rule queries --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("events_total > 1 or " * 500 + "events_total > 1", 422, "at most 10000 characters"),
        ("(" * MAX_RULE_CHARS, 422, "nests deeper than 64"),
        ("(" * (MAX_DEPTH + 1) + "events_total > 1" + ")" * (MAX_DEPTH + 1), 422, "nests deeper"),
        ("not " * 2_400 + "events_total > 1", 422, "nests deeper"),
        ("events_total > 1\x00", 422, "unexpected character"),
        ("__import__('os').system('true') > 1", 422, "unexpected character '.'"),
    ],
    ids=["long", "parens", "deep", "nots", "nul", "code"],
)
def test_audience_queries_past_their_limits_are_422(live: Live, query: str, status: int,
                                                    words: str) -> None:
    r = bounded(lambda: httpx.post(f"{live.url}/v1/audiences", json={"query": query},
                                   headers={"X-API-Key": live.admin}, timeout=30))
    assert words in _problem(r, status)["detail"]


def test_the_server_survived(live: Live) -> None:
    """After everything above: healthy, and still answering reads and writes."""
    _healthy(live)
    r = _post(live, orjson.dumps({"user_id": "lim-last", "ts": TS, "type": "view"}))
    assert r.json()["accepted"] == 1
    profile = httpx.get(f"{live.url}/v1/profiles/lim-last", headers={"X-API-Key": live.read})
    assert profile.json()["features"]["events_total"] == 1
