"""``portrait serve`` refusals: a new database without a spec, a bad spec, a busy port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
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


def test_serve_pseudonymise_encrypt_makes_a_private_new_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``portrait serve --pseudonymise --encrypt`` on a new database: keys made outside it,
    posted personal fields stored sealed and read back, ids stored as pseudonyms."""
    import httpx
    from tests.serve.harness import KEY_LINE, SPEC, free_port, wait_healthy

    from portrait.store import open_store

    env = {**os.environ, "PORTRAIT_PSEUDONYM_KEY_FILE": str(tmp_path / "keys" / "p.key"),
           "PORTRAIT_MASTER_KEY_FILE": str(tmp_path / "keys" / "m.key")}
    env.pop("PORTRAIT_PSEUDONYM_KEY", None)
    env.pop("PORTRAIT_MASTER_KEY", None)
    db, port = tmp_path / "db", free_port()
    out, log = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("wb") as so, log.open("wb") as se:
        proc = subprocess.Popen(
            [PORTRAIT, "serve", "--db", str(db), "--spec", str(SPEC), "--port", str(port),
             "--pseudonymise", "--encrypt"], stdout=so, stderr=se, env=env)
    url = f"http://127.0.0.1:{port}"
    secret = "zqxjvkwpfhgt mbrdlnsc"
    try:
        wait_healthy(url, proc, log)
        found = KEY_LINE.search(out.read_text())
        assert found, out.read_text()
        headers = {"X-API-Key": found[1]}
        posted = httpx.post(f"{url}/v1/events", headers=headers, json={
            "user_id": "serve-private-1", "ts": "2024-05-01T10:00:00Z", "type": "search",
            "text": secret, "lat": 51.5, "lon": -0.12}, timeout=30)
        assert posted.status_code == 200, posted.text
        seen = httpx.get(f"{url}/v1/profiles/serve-private-1/events", headers=headers,
                         timeout=30).json()["events"][0]
        assert seen["text"] == secret
    finally:
        proc.terminate()
        proc.wait(30)
    assert (tmp_path / "keys" / "m.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys" / "p.key").stat().st_mode & 0o777 == 0o600
    for path in (p for p in db.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert secret.encode() not in data, path
        assert b"serve-private-1" not in data, path
    for k in ("PORTRAIT_PSEUDONYM_KEY_FILE", "PORTRAIT_MASTER_KEY_FILE"):
        monkeypatch.setenv(k, env[k])
    with open_store(db) as store:
        assert store.pseudo is not None
        assert store.sealer is not None
        assert store.events(["serve-private-1"])["text"].to_list() == [secret]
