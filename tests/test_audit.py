"""The append-only audit log (privacy/audit.py): reads, exports and erasures are recorded
with who and when, targets only as salted hashes, and rows can be added but never changed."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from portrait.privacy.audit import FILE

DATA = Path(__file__).resolve().parents[1] / "src" / "portrait" / "data"
PORTRAIT = str(Path(sys.executable).with_name("portrait"))


def _cli(*args: str) -> str:
    return subprocess.run([PORTRAIT, *args], capture_output=True, text=True, check=True).stdout


def test_cli_reads_exports_and_erasures_are_audited(tmp_path: Path) -> None:
    db = tmp_path / "db"
    _cli("ingest", str(DATA / "sample_history.jsonl"), "--spec", str(DATA / "spec.yaml"),
         "--db", str(db), "--quiet")
    _cli("profile", "u000", "--db", str(db), "--json")
    _cli("audience", "events_total > 0", "--db", str(db), "--out", str(tmp_path / "a.csv"))
    _cli("forget", "u001", "--db", str(db))
    rows = json.loads(_cli("audit", "--db", str(db)))
    assert [r["action"] for r in rows] == ["user.erase", "audience.export", "profile.read"]
    assert all(r["who"].startswith("cli:") for r in rows)
    assert "users; query 'events_total > 0'" in rows[1]["detail"]
    mine = json.loads(_cli("audit", "--db", str(db), "--user", "u000"))
    assert [r["action"] for r in mine] == ["profile.read"]
    data = (db / FILE).read_bytes()
    assert b"u000" not in data  # targets are salted hashes
    assert b"u001" not in data
    conn = sqlite3.connect(db / FILE)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit SET who = 'someone else'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit")
    conn.close()
