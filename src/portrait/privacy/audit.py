"""An append-only audit log: who read, exported or erased whose data, and when.

Kept in ``<db>/audit.sqlite``, a database of its own so that writing it never
contends with the store's commits. Rows are only ever inserted: triggers make
SQLite refuse every UPDATE and DELETE of the table (``tests/test_audit.py``).

A row names the actor (an API key id, or ``cli:<os user>``), the action
(``profile.read``, ``history.read``, ``events.read``, ``recommendations.read``,
``audience.export``, ``user.erase``), the time, and the target as a *salted
hash* of the stored user id: an auditor who knows a user id can find its rows
(:meth:`AuditLog.target`), but the log itself holds no user id or pseudonym,
so it survives erasure without keeping the erased person in it (the erasure
byte scan covers it). The salt lives in the audit database.

The server buffers rows in memory and writes them in batches from a thread
of its own (a profile read costs an append to a list); the CLI writes at once.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from portrait.sqlutil import immediate
from portrait.timeutil import format_us

FILE = "audit.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""
Row = tuple[int, str, str, str | None, str | None]


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


class AuditLog:
    """Append-only rows in ``<db>/audit.sqlite``; ``buffered`` for the server."""

    def __init__(self, db: Path, *, buffered: bool = False, flush_s: float = 0.2) -> None:
        self.path = Path(db) / FILE
        self._pending: list[Row] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
            found = conn.execute("SELECT value FROM audit_meta WHERE key = 'salt'").fetchone()
            if found is None:
                salt = secrets.token_hex(16)
                conn.execute("INSERT OR IGNORE INTO audit_meta VALUES ('salt', ?)", (salt,))
                found = conn.execute(
                    "SELECT value FROM audit_meta WHERE key = 'salt'").fetchone()
        self._salt = str(found[0]).encode()
        self._thread: threading.Thread | None = None
        if buffered:
            self._flush_s = flush_s
            self._thread = threading.Thread(target=self._run, name="portrait-audit",
                                             daemon=True)
            self._thread.start()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            yield conn
        finally:
            conn.close()

    def target(self, stored_id: str) -> str:
        """The hash a row keeps for a user (give the stored id: the pseudonym if any)."""
        return "h_" + hashlib.sha256(self._salt + stored_id.encode()).hexdigest()[:32]

    def record(self, who: str, action: str, stored_id: str | None = None,
               detail: str | None = None) -> None:
        row = (time.time_ns() // 1000, who, action, stored_id, detail)  # hashed when written
        if self._thread is None:
            self._write([row])
            return
        with self._lock:  # flush() swaps the list under the same lock: no row is lost
            self._pending.append(row)

    def flush(self) -> None:
        with self._lock:
            rows, self._pending = self._pending, []
        if rows:
            self._write(rows)

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._flush_s):
            self.flush()

    def _write(self, rows: list[Row]) -> None:
        """One transaction (one fsync) per batch, not one per row."""
        with self._connect() as conn:
            hashed = [(at, who, action, None if uid is None else self.target(uid), detail)
                      for at, who, action, uid, detail in rows]
            with immediate(conn):
                conn.executemany(
                    "INSERT INTO audit (at, who, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                    hashed)

    def rows(self, *, target: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The newest rows first (of one user's stored id, when ``target`` is given)."""
        self.flush()
        where, args = ("WHERE target = ?", [self.target(target)]) if target else ("", [])
        with self._connect() as conn:
            found = conn.execute(
                f"SELECT seq, at, who, action, target, detail FROM audit {where} "  # fixed SQL
                "ORDER BY seq DESC LIMIT ?", [*args, limit]).fetchall()
        return [{"seq": s, "at": format_us(a), "who": w, "action": act, "target": t,
                 "detail": d} for s, a, w, act, t, d in found]
