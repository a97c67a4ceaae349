"""One error model: every failure is application/problem+json with the mapped status."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.types import Receive, Scope, Send
from tests.serve.harness import Served

from portrait.serve.problems import CatchAll

PROBLEM = "application/problem+json"


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("GET", "/nope", 404, "NotFoundError"),
        ("GET", "/v1/segments/nope/members", 404, "UnknownSegmentError"),
        ("DELETE", "/v1/segments", 405, "BadRequestError"),
        ("GET", "/v1/segments/big_spender/members?limit=0", 422, "UnprocessableRequestError"),
        ("GET", "/v1/segments/big_spender/members?offset=x", 422, "UnprocessableRequestError"),
        ("GET", "/v1/profiles/u001/history?points=100000", 422, "UnprocessableRequestError"),
        ("GET", "/v1/recommendations/u001?diversity=2", 422, "UnprocessableRequestError"),
        ("GET", "/v1/drift?at=not-a-time", 400, "UsageError"),
        ("GET", "/v1/profiles/u001?at=-99999999999", 400, "UsageError"),  # year -1199
        ("GET", "/v1/profiles/u001?at=0001-01-01T00:00:00Z", 400, "UsageError"),
        ("GET", "/v1/segments/big_spender/members?offset=99999999999999999999", 422,
         "UnprocessableRequestError"),  # was a 500: an offset orjson could not write back
        ("GET", "/v1/segments/big_spender/changes?after=-1", 422, "UnprocessableRequestError"),
        ("POST", "/v1/events?async=maybe", 422, "UnprocessableRequestError"),
    ],
)
def test_problem_details(served: Served, method: str, path: str, status: int,
                         error: str) -> None:
    r = httpx.request(method, served.url + path, headers={"X-API-Key": served.admin})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status
    assert body["error"] == error
    assert body["type"].startswith("urn:portrait:problem:")
    assert body["title"]
    assert body["detail"]
    assert body["instance"] == path.split("?", maxsplit=1)[0]


def test_validation_problem_lists_each_error(served: Served) -> None:
    r = httpx.get(served.url + "/v1/segments/big_spender/members?limit=0&offset=-1",
                  headers={"X-API-Key": served.admin})
    body = r.json()
    assert r.status_code == 422
    where = sorted(e["where"] for e in body["errors"])
    assert where == ["query parameter 'limit'", "query parameter 'offset'"]
    assert "limit" in body["detail"]
    assert "offset" in body["detail"]


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"query": ""}', b'{"query": "x", "y": 1}',
                                  b'{"query": "events_total >"}', b'{"query": 5}'])
def test_audience_bodies(served: Served, body: bytes) -> None:
    r = httpx.post(served.url + "/v1/audiences", content=body,
                   headers={"X-API-Key": served.admin, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM


def test_an_unexpected_error_is_a_500_problem() -> None:
    """A bug becomes a 500 problem without internals, answered by the middleware itself."""

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("secret internals")

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=CatchAll(broken))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/anything")

    r = asyncio.run(get())
    assert r.status_code == 500
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["error"] == "InternalError"
    assert "secret" not in r.text
