"""``portrait serve`` refusals: a new database without a spec, a bad spec, a busy port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from tests.serve.harness import PORTRAIT

from portrait.serve.keys import KeyStore


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PORTRAIT, "serve", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_new_database_needs_a_spec(tmp_path: Path) -> None:
    run = _serve("--db", str(tmp_path / "new"), "--port", "1")
    assert run.returncode == 2
    assert "is a new database: pass --spec" in run.stderr
    assert not (tmp_path / "new" / "api-keys.json").exists()


def test_bad_spec_fails_before_serving(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("version: 1\nfeatures:\n  x: {kind: nope}\n")
    run = _serve("--db", str(tmp_path / "new"), "--spec", str(spec), "--port", "1")
    assert run.returncode == 2
    assert "bad.yaml:3" in run.stderr


def test_existing_keys_are_kept_and_a_busy_port_fails(seeded: Path, tmp_path: Path) -> None:
    db = tmp_path / "db"
    shutil.copytree(seeded, db)
    KeyStore(db).create(("read",))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        run = _serve("--db", str(db), "--port", str(busy.getsockname()[1]))
    assert run.returncode != 0
    assert "admin API key" not in run.stdout  # keys exist: none is made
    assert len(KeyStore(db).stored()) == 1
    assert "address already in use" in run.stderr.lower()


def test_demo_ends_serving_the_dashboard_with_a_working_key(seeded: Path, tmp_path: Path
                                                             ) -> None:
    """``serve_dashboard`` (the demo's last step) prints a URL and a read key that work;
    a busy port moves it to a free one."""
    import re
    import sys
    import time

    import httpx

    db = tmp_path / "db"
    shutil.copytree(seeded, db)
    from portrait.store import open_store

    with open_store(db) as store:
        some_user = store.states()["user_id"][0]
    code = ("import sys; from pathlib import Path; from portrait.demo import serve_dashboard; "
            "serve_dashboard(Path(sys.argv[1]), Path(sys.argv[2]), port=int(sys.argv[3]))")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(tmp_path / "reports"),
                                 str(taken)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "COLUMNS": "200"})
        try:
            assert proc.stdout is not None
            lines: list[str] = []
            deadline = time.monotonic() + 120
            while not any("curl" in line for line in lines):
                assert time.monotonic() < deadline, "".join(lines)
                assert proc.poll() is None, "".join(lines)
                lines.append(proc.stdout.readline())
            text = "".join(lines)
            url = re.search(r"http://127\.0\.0\.1:(\d+)/", text)
            key = re.search(r"X-API-Key: (\S+)'", text)
            assert url, text
            assert key, text
            assert int(url[1]) != taken
            base = url[0].rstrip("/")
            while True:  # the key is printed before the server listens
                try:
                    page = httpx.get(base + "/", timeout=5)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            assert page.status_code == 200
            assert "<html" in page.text.lower()
            got = httpx.get(f"{base}/v1/profiles/{some_user}", headers={"X-API-Key": key[1]},
                            timeout=10)
            assert got.status_code == 200
            assert got.json()["user_id"] == some_user
            assert httpx.get(f"{base}/v1/profiles/{some_user}", timeout=10).status_code == 401
        finally:
            proc.terminate()
            proc.wait(60)
