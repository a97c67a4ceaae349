"""``portrait serve`` refusals: a new database without a spec, a bad spec, a busy port."""

from __future__ import annotations

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
