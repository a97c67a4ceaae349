"""A server with small limits over a new database, run by uvicorn in a thread of this process.

Covers what the shared server cannot: a database that starts empty (the spec
is stored at startup so readers open at once), body / batch / queue limits,
and a shutdown that commits the events still queued.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from tests.serve.harness import SPEC, event, free_port, start_in_thread

from portrait.client import Client
from portrait.engine import Engine
from portrait.errors import (
    ModelNotReadyError,
    PayloadTooLargeError,
    UnavailableError,
    UnknownUserError,
    UsageError,
)
from portrait.serve import ServeSettings
from portrait.serve.keys import KeyStore
from portrait.store import open_store


@dataclass
class Small:
    url: str
    key: str
    db: Path
    server: uvicorn.Server
    thread: threading.Thread


def _start(db: Path, **limits: int | float) -> Small:
    key, _ = KeyStore(db).create(("admin",))
    port = free_port()
    settings = ServeSettings(db=db, spec=SPEC, port=port, **limits)  # type: ignore[arg-type]
    server, thread = start_in_thread(settings)
    return Small(f"http://127.0.0.1:{port}", key, db, server, thread)


def _stop(small: Small) -> None:
    small.server.should_exit = True
    small.thread.join(30)
    assert not small.thread.is_alive()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Small]:
    db = tmp_path_factory.mktemp("small") / "db"
    s = _start(db, max_body_bytes=4096, max_batch_events=50, max_queued_events=60,
               flush_ms=1.0)
    try:
        yield s
    finally:
        _stop(s)


def test_new_database_is_served_empty(small: Small) -> None:
    with Client(small.url, small.key) as api:
        health = api.health()
        assert (health["events"], health["watermark"]) == (0, None)
        with pytest.raises(UnknownUserError):
            api.profile("anyone")
        segs = api.segments()
        assert segs["population"] == 0
        assert all(s["size"] == 0 for s in segs["segments"])
        assert api.members("big_spender")["total"] == 0
        with pytest.raises(UsageError, match="no events yet"):
            api.drift()
        with pytest.raises(ModelNotReadyError, match="models train") as info:
            api.recommendations("anyone")
        assert info.value.status == 409  # type: ignore[attr-defined]
        assert api.audience("events_total > 0")["count"] == 0


def test_body_over_the_limit(small: Small) -> None:
    headers = {"X-API-Key": small.key, "Content-Type": "application/json"}
    big = b'{"events": [' + b" " * 5000 + b"]}"
    r = httpx.post(f"{small.url}/v1/events", content=big, headers=headers)
    assert r.status_code == 413
    assert "4,096 bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"events": ['
        for _ in range(10):
            yield b" " * 1000
        yield b"]}"

    r = httpx.post(f"{small.url}/v1/events", content=chunks(), headers=headers)
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"


def test_batch_and_queue_limits(small: Small) -> None:
    with Client(small.url, small.key) as api:
        with pytest.raises(PayloadTooLargeError, match="51 events"):
            api.ingest([event("lim-a", "2024-03-01T00:00:00Z")] * 51)
        got = api.ingest([event("lim-a", f"2024-03-01T00:00:{s:02d}Z") for s in range(50)])
        assert got["accepted"] == 50
        assert api.profile("lim-a")["features"]["events_total"] == 50


def test_queue_full_is_503(tmp_path: Path) -> None:
    s = _start(tmp_path / "db", max_queued_events=5, flush_ms=3000.0)
    try:
        headers = {"X-API-Key": s.key}
        batch = {"events": [event("q", f"2024-03-01T00:00:0{i}Z") for i in range(4)]}
        first = httpx.post(f"{s.url}/v1/events?async=1", json=batch, headers=headers)
        assert first.status_code == 202
        second = httpx.post(f"{s.url}/v1/events?async=1", json=batch, headers=headers)
        assert second.status_code == 503
        assert second.headers["retry-after"] == "1"
        assert "queue is full" in second.json()["detail"]
        with Client(s.url, s.key) as api, pytest.raises(UnavailableError):
            api.ingest(batch["events"])
    finally:
        _stop(s)


def test_shutdown_commits_queued_events(tmp_path: Path) -> None:
    s = _start(tmp_path / "db", flush_ms=500.0)
    with Client(s.url, s.key) as api:
        out = api.ingest([event("stop", f"2024-03-01T00:00:{i:02d}Z") for i in range(30)],
                         wait=False)
        assert out["queued"] == 30
    _stop(s)
    with open_store(tmp_path / "db") as store:
        assert Engine(None, store).profile("stop")["features"]["events_total"] == 30
