"""The test harness of the API tests: a seeded database and ``portrait serve`` in a subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

import portrait
from portrait.engine import Engine
from portrait.models import service
from portrait.serve import ServeSettings, create_app
from portrait.serve.keys import KeyStore
from portrait.spec.loader import load_spec
from portrait.store import open_store

DATA = Path(portrait.__file__).parent / "data"
SPEC = DATA / "spec.yaml"
PORTRAIT = str(Path(sys.executable).with_name("portrait"))
KEY_LINE = re.compile(r"admin API key .*: (prt_\S+)")


@dataclass
class Served:
    url: str
    db: Path
    admin: str  # the key `portrait serve` made on its first start
    read: str
    ingest: str
    process: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(db: Path) -> None:
    with open_store(db, writer=True) as store:
        engine = Engine(load_spec(SPEC), store)
        engine.ingest([DATA / "sample_history.jsonl", DATA / "sample_late.jsonl"])
    with open_store(db) as store:
        service.train(Engine(None, store))


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0
                 ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not healthy after {timeout} s: {log.read_text()}")


@contextlib.contextmanager
def serving(template: Path, root: Path) -> Iterator[Served]:
    """``portrait serve`` over a copy of ``template`` until the block ends (then SIGTERM)."""
    db = root / "db"
    shutil.copytree(template, db)
    port = free_port()
    out, log = root / "stdout.txt", root / "stderr.txt"
    with out.open("wb") as so, log.open("wb") as se:
        proc = subprocess.Popen(
            [PORTRAIT, "serve", "--db", str(db), "--port", str(port)],
            stdout=so, stderr=se, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        found = KEY_LINE.search(out.read_text())
        assert found, out.read_text()
        keys = KeyStore(db)
        read, _ = keys.create(("read",))
        ingest, _ = keys.create(("ingest",))
        yield Served(url, db, found[1], read, ingest, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def event(user: str, ts: str, type_: str = "view", **fields: Any) -> dict[str, Any]:
    return {"user_id": user, "ts": ts, "type": type_, **fields}


def start_in_thread(settings: ServeSettings) -> tuple[uvicorn.Server, threading.Thread]:
    """The app of ``settings`` served by uvicorn on a daemon thread, once it has started
    (stop it with ``server.should_exit = True`` and join the thread)."""
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                            log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "server thread ended"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    return server, thread
