"""The embedded store: SQLite (WAL) for metadata, Parquet files for data.

Layout of a database directory::

    portrait.sqlite      meta, file manifest, dead letters, checkpoints, batches
    log/00000001.parquet events accepted in batch 1
    state/00000001.parquet full state rows of the users batch 1 touched
    writer.lock          held (flock) by the one process that may write

**Atomic batches.** ``commit`` first writes the batch's Parquet files under
temporary names, fsyncs and renames them, then records them in the manifest in
one SQLite transaction together with the dead letters, the checkpoint and the
watermark. A file that is not in the manifest does not exist for readers; a
writer deletes such orphans (left by a crash) when it opens the store. So a
``kill -9`` at any moment loses at most the batch in flight, and the checkpoint
says exactly where to resume.

**Concurrent readers.** Readers never lock: they read the manifest inside one
SQLite read transaction (WAL allows that while a writer commits), then the
immutable Parquet files it names. The current state of a user is its row in
the newest state file that has one. Compaction merges runs of the newest
state files (newest row per user wins) and of small log files, tiered so a
small commit never rewrites every user, then swaps the manifest atomically; a
reader that races with it retries on the new manifest.

**Erasure-friendly.** Every data file and dead letter carries ``user_id``, so
everything about one user can be found and rewritten without them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from portrait.errors import StoreError
from portrait.events.schema import EVENT_SCHEMA, DeadLetter
from portrait.fsutil import fsync_path
from portrait.privacy.crypto import (
    MASTER_ENV,
    MASTER_FILE_ENV,
    Keyring,
    Sealer,
    VaultRow,
    default_master_file,
    load_master,
    master_check,
)
from portrait.privacy.pseudonym import (
    KEY_ENV,
    KEY_FILE_ENV,
    Pseudonymizer,
    default_key_file,
    load_key,
    pending_key_file,
)
from portrait.sqlutil import immediate
from portrait.store.base import (
    CHANGE_SCHEMA,
    MEMBERSHIP_SCHEMA,
    Checkpoint,
    Commit,
    StoreMeta,
)
from portrait.store.dedup import SeenSet

USER = "user_id"
MAX_STATE_FILES = 8
MAX_SMALL_LOG_FILES = 16
SMALL_LOG_ROWS = 2_000_000
ROW_GROUP = 16_384
STATE_ROW_GROUP = 2_048

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    kind TEXT NOT NULL CHECK (kind IN ('log', 'state')),
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    rows INTEGER NOT NULL,
    PRIMARY KEY (kind, seq)
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    committed_at REAL NOT NULL,
    events INTEGER NOT NULL,
    users INTEGER NOT NULL,
    dead_letters INTEGER NOT NULL,
    duplicates INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    batch INTEGER NOT NULL,
    source TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    line INTEGER NOT NULL,
    reason TEXT NOT NULL,
    raw TEXT NOT NULL,
    user_id TEXT,
    UNIQUE (fingerprint, line)
);
CREATE INDEX IF NOT EXISTS dead_letters_user ON dead_letters (user_id);
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY,
    finished INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS memberships (
    user_id TEXT NOT NULL,
    segment TEXT NOT NULL,
    since INTEGER NOT NULL,
    PRIMARY KEY (user_id, segment)
);
CREATE TABLE IF NOT EXISTS segment_changes (
    seq INTEGER PRIMARY KEY,
    batch INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    segment TEXT NOT NULL,
    change TEXT NOT NULL CHECK (change IN ('enter', 'exit')),
    cause TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS segment_changes_user ON segment_changes (user_id);
CREATE INDEX IF NOT EXISTS segment_changes_segment ON segment_changes (segment, ts);
CREATE TABLE IF NOT EXISTS vault (
    seq INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    min_ts INTEGER NOT NULL,
    blob BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS vault_user ON vault (user_id);
CREATE TABLE IF NOT EXISTS consents (
    user_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    granted INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (user_id, purpose)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    fingerprint TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    rows_done INTEGER NOT NULL,
    accepted INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    duplicates INTEGER NOT NULL,
    complete INTEGER NOT NULL
);
"""


class EmbeddedStore:
    """SQLite + Parquet store in one directory. See the module docstring."""

    def __init__(self, path: str | os.PathLike[str], *, writer: bool = False) -> None:
        self.root = Path(path)
        self.writer = writer
        self._lock_fd: int | None = None
        self._seen: SeenSet | None = None
        self._pinned = False
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="portrait-write")
        self._compactor: threading.Thread | None = None
        self._compact_wake = threading.Event()
        self._compact_stop = False
        self._compact_idle = threading.Event()
        self._compact_lock = threading.Lock()  # one merge or erasure at a time
        self.compaction_error: Exception | None = None
        if writer:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "log").mkdir(exist_ok=True)
            (self.root / "state").mkdir(exist_ok=True)
            self._acquire_lock()
        elif not (self.root / "portrait.sqlite").exists():
            raise StoreError(
                f"no portrait database at {str(self.root)!r} (run `portrait ingest` first)"
            )
        self.db = sqlite3.connect(self.root / "portrait.sqlite", timeout=60, isolation_level=None)
        self.db.execute("PRAGMA busy_timeout = 60000")
        if writer:
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")
            self.db.execute("PRAGMA secure_delete = ON")  # deleted rows are zeroed on disk
            self.db.executescript(_SCHEMA_SQL)
            self._remove_orphans()
        self.pseudo: Pseudonymizer | None = None
        self._open_pseudonyms()
        self.sealer: Sealer | None = None
        self._open_encryption()

    # -- pseudonyms -------------------------------------------------------
    def _open_pseudonyms(self) -> None:
        check = self._get_meta("pseudonym_check")
        if check is None:
            return
        key = load_key()
        if key is None:
            raise StoreError(
                f"{str(self.root)!r} stores pseudonymous user ids: give its key "
                f"({KEY_ENV}, {KEY_FILE_ENV} or {default_key_file()})")
        pseudo = Pseudonymizer(key)
        if pseudo.check != check:
            pending = pending_key_file()
            hint = f" (an interrupted re-key left the new key in {pending})" \
                if pending.exists() else ""
            raise StoreError(f"{str(self.root)!r}: the pseudonym key given is not the one "
                             f"this database was made with{hint}")
        self.pseudo = pseudo

    def enable_pseudonyms(self, pseudo: Pseudonymizer) -> None:
        """Store user ids as pseudonyms from now on (a new database only)."""
        self._require_writer()
        if self.pseudo is not None:
            if pseudo.check != self.pseudo.check:
                raise StoreError("this database was made with another pseudonym key")
            return
        if self._get_meta("accepted"):
            raise StoreError("this database already holds raw user ids: pseudonymise a new "
                             "one (re-ingest the source files)")
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('pseudonym_check', ?)",
                        (json.dumps(pseudo.check),))
        self.pseudo = pseudo

    # -- encryption at rest (privacy/crypto.py) ---------------------------
    def _open_encryption(self) -> None:
        if not self._get_meta("encrypted"):
            return
        master = load_master()
        if master is None:
            raise StoreError(
                f"{str(self.root)!r} encrypts personal fields: give its master key "
                f"({MASTER_ENV}, {MASTER_FILE_ENV} or {default_master_file()})")
        keyring = Keyring(self.root / "keyring.sqlite", master, writer=self.writer)
        self.sealer = Sealer(keyring, self._get_meta("personal_attrs") or ())

    def enable_encryption(self, master: bytes) -> None:
        """Encrypt personal fields from now on (a new database only; see privacy/crypto.py).

        Which ``attrs`` keys are personal comes from the spec (the engine calls
        :meth:`set_personal_attrs`); ``text``, ``lat`` and ``lon`` always are.
        """
        self._require_writer()
        if self.sealer is None:
            if self._get_meta("accepted"):
                raise StoreError("this database already holds personal fields in the clear: "
                                 "encrypt a new one (re-ingest the source files)")
            keyring = Keyring(self.root / "keyring.sqlite", master, writer=True, create=True)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('encrypted', 'true')")
            self.sealer = Sealer(keyring)
        elif master_check(master) != self.sealer.keyring.check:
            raise StoreError("this database was made with another master key")

    def set_personal_attrs(self, names: tuple[str, ...]) -> None:
        """The ``attrs`` keys sealed from now on (the spec's ``privacy.personal_attrs``);
        nothing to do in a store that does not encrypt, or for a reader."""
        if (not self.writer or self.sealer is None
                or self.sealer.personal_attrs == frozenset(names)):
            return
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('personal_attrs', ?)",
                        (json.dumps(sorted(names)),))
        self.sealer.personal_attrs = frozenset(names)

    def _private_letter(self, d: DeadLetter) -> tuple[str, str, str | None]:
        """(reason, raw, user_id) of a dead letter as stored: pseudonymised and sealed when on."""
        user = d.user_id or _raw_user_id(d.raw)
        reason, raw = d.reason, d.raw
        if self.pseudo is not None and user is not None:
            reason = reason.replace(user, self.pseudo.one(user)) if len(user) >= 4 else reason
            raw, user = self.pseudo.text(raw, user), self.pseudo.one(user)
        if self.sealer is not None:
            raw = self.sealer.seal_text(user, raw)
        return reason, raw, user

    def withdrawn(self, purpose: str) -> set[str]:
        try:
            rows = self.db.execute(
                "SELECT user_id FROM consents WHERE purpose = ? AND granted = 0", (purpose,)
            ).fetchall()
        except sqlite3.OperationalError:  # a database from before consents: none recorded
            return set()
        return {str(r[0]) for r in rows}

    def consents(self, user_id: str) -> dict[str, bool]:
        try:
            rows = self.db.execute("SELECT purpose, granted FROM consents WHERE user_id = ?",
                                   (self.resolve(user_id),)).fetchall()
        except sqlite3.OperationalError:
            return {}
        return {str(p): bool(g) for p, g in rows}

    def resolve(self, user_id: str) -> str:
        """The id stored for ``user_id`` (its pseudonym when the database keeps those)."""
        return user_id if self.pseudo is None else self.pseudo.one(user_id)

    def _resolve_all(self, user_ids: list[str] | None) -> list[str] | None:
        return user_ids if user_ids is None or self.pseudo is None else [
            self.pseudo.one(u) for u in user_ids]

    # -- lifecycle -------------------------------------------------------
    def _acquire_lock(self) -> None:
        fd = os.open(self.root / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits for another ingest to finish
        self._lock_fd = fd

    def close(self) -> None:
        if self._compactor is not None:
            self._compact_stop = True
            self._compact_wake.set()
            self._compactor.join()
            self._compactor = None
        self._pool.shutdown(wait=True)
        self.db.close()
        if self.sealer is not None:
            self.sealer.keyring.close()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> EmbeddedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _remove_orphans(self) -> None:
        known = {row[0] for row in self.db.execute("SELECT name FROM files")}
        for sub in ("log", "state"):
            for f in (self.root / sub).iterdir():
                if f"{sub}/{f.name}" not in known:
                    f.unlink()

    # -- manifest --------------------------------------------------------
    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Every read inside sees the same committed batch (one SQLite snapshot).

        Parquet files are immutable, so the snapshot's manifest names files
        that stay valid; if compaction deletes one meanwhile, the read raises
        ``FileNotFoundError`` and the caller retries with a fresh snapshot.
        """
        if self._pinned:
            yield
            return
        self.db.execute("BEGIN")
        self.db.execute("SELECT 1 FROM meta LIMIT 1").fetchall()  # start the snapshot now
        self._pinned = True
        try:
            yield
        finally:
            self._pinned = False
            self.db.execute("COMMIT")

    def _files(self, kind: str) -> list[tuple[int, str]]:
        rows = self.db.execute(
            "SELECT seq, name FROM files WHERE kind = ? ORDER BY seq", (kind,)
        ).fetchall()
        return [(int(seq), str(name)) for seq, name in rows]

    def _scan_retry(self, kind: str, build: Any) -> pl.DataFrame:
        """Run ``build(files)`` on the current manifest; retry if compaction raced us."""
        for attempt in range(5):
            with self.pinned():
                files = self._files(kind)
            try:
                return build(files)  # type: ignore[no-any-return]
            except FileNotFoundError:
                if attempt == 4 or self._pinned:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    # -- meta ------------------------------------------------------------
    def _get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def meta(self) -> StoreMeta:
        with self.pinned():
            return StoreMeta(
                spec_text=self._get_meta("spec_text"),
                watermark=self._get_meta("watermark"),
                accepted=self._get_meta("accepted") or 0,
                rejected=self._get_meta("rejected") or 0,
                duplicates=self._get_meta("duplicates") or 0,
                users=self._get_meta("users") or 0,
            )

    def set_spec(self, spec_text: str) -> None:
        self._require_writer()
        self.db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('spec_text', ?)", (json.dumps(spec_text),)
        )

    def _require_writer(self) -> None:
        if not self.writer:
            raise StoreError("this store was opened read-only")

    # -- reads -----------------------------------------------------------
    def states(self, user_ids: list[str] | None = None) -> pl.DataFrame:
        user_ids = self._resolve_all(user_ids)

        def build(files: list[tuple[int, str]]) -> pl.DataFrame:
            frames = []
            for seq, name in reversed(files):
                lf = pl.scan_parquet(self.root / name)
                if user_ids is not None:
                    lf = lf.filter(pl.col(USER).is_in(user_ids))
                frame = lf.collect()
                if frame.height:
                    frames.append(frame.with_columns(pl.lit(seq).alias("_seq")))
                if user_ids is not None and len(user_ids) == 1 and frame.height:
                    break
            if not frames:
                return pl.DataFrame()
            both = pl.concat(frames, how="diagonal_relaxed")
            newest = both.sort("_seq", descending=True).unique(
                USER, keep="first", maintain_order=True
            )
            return newest.drop("_seq").sort(USER)

        return self._scan_retry("state", build)

    def has_user(self, user_id: str) -> bool:
        return self.states([user_id]).height > 0

    def events(self, user_ids: list[str] | None = None, until: int | None = None, *,
               personal: bool = True) -> pl.DataFrame:
        """Logged events (of ``user_ids``; with ``ts <= until``).

        ``personal=False``: the caller reads no personal field (``text``,
        ``lat``, ``lon``, ``attrs``), so an encrypted store skips opening its
        vault and leaves them as stored (null; ~16x faster on a full scan).
        """
        user_ids = self._resolve_all(user_ids)

        def build(files: list[tuple[int, str]]) -> pl.DataFrame:
            if not files:
                return pl.DataFrame(schema=EVENT_SCHEMA)
            lf = pl.scan_parquet([self.root / name for _, name in files])
            if user_ids is not None:
                lf = lf.filter(pl.col(USER).is_in(user_ids))
            if until is not None:
                lf = lf.filter(pl.col("ts") <= until)
            return lf.collect()

        frame = self._scan_retry("log", build)
        if self.sealer is None or not frame.height or not personal:
            return frame
        return self.sealer.open(frame, self._vault_rows(user_ids))

    def _vault_rows(self, user_ids: list[str] | None) -> list[tuple[str, bytes]]:
        """(user, blob) of the vault rows of ``user_ids`` (all when None)."""
        if user_ids is None:
            return self.db.execute("SELECT user_id, blob FROM vault").fetchall()
        out: list[tuple[str, bytes]] = []
        for i in range(0, len(user_ids), 500):
            chunk = user_ids[i:i + 500]
            out += self.db.execute(
                f"SELECT user_id, blob FROM vault WHERE user_id IN ({','.join('?' * len(chunk))})",
                chunk).fetchall()
        return out

    def seen(self, event_ids: pl.Series) -> pl.Series:
        if not self.writer:  # a reader sees other processes' commits: no cache
            return SeenSet(self._logged_ids()).contains(event_ids)
        if self._seen is None:
            self._seen = SeenSet(self._logged_ids())
        return self._seen.contains(event_ids)

    def _logged_ids(self) -> pl.Series:
        def build(files: list[tuple[int, str]]) -> pl.DataFrame:
            if not files:
                return pl.DataFrame({"event_id": []}, schema={"event_id": pl.String})
            paths = [self.root / name for _, name in files]
            return pl.scan_parquet(paths).select("event_id").collect()

        return self._scan_retry("log", build)["event_id"]

    def dead_letters(self, limit: int | None = None) -> list[dict[str, object]]:
        sql = "SELECT source, line, reason, raw, batch, user_id FROM dead_letters ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = self.db.execute(sql).fetchall()
        sealer = self.sealer
        return [
            {"source": s, "line": ln, "reason": r, "batch": b, "user_id": u,
             "raw": raw if sealer is None else sealer.open_text(u, raw)}
            for s, ln, r, raw, b, u in rows
        ]

    def run_finished(self, run_key: str) -> bool | None:
        row = self.db.execute("SELECT finished FROM runs WHERE run_key = ?", (run_key,)).fetchone()
        return None if row is None else bool(row[0])

    def checkpoint(self, fingerprint: str) -> Checkpoint | None:
        row = self.db.execute(
            "SELECT fingerprint, path, rows_done, accepted, rejected, duplicates, complete "
            "FROM checkpoints WHERE fingerprint = ?",
            (fingerprint,),
        ).fetchone()
        if row is None:
            return None
        return Checkpoint(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))

    # -- writes ----------------------------------------------------------
    def _write_parquet(self, frame: pl.DataFrame, name: str) -> None:
        final = self.root / name
        tmp = final.with_name(final.name + ".tmp")
        # State files are sorted by user and read one user at a time: small
        # row groups make a point read touch ~2k rows (measured 22 -> 5.5 ms).
        rows = STATE_ROW_GROUP if name.startswith("state/") else ROW_GROUP
        frame.write_parquet(tmp, compression="lz4", row_group_size=rows, statistics=True)
        fsync_path(tmp)
        tmp.rename(final)

    def _write_files(self, seq: int, commit: Commit
                     ) -> tuple[list[tuple[str, int, str, int]], list[VaultRow]]:
        """Write the batch's log and state files (and seal its personal fields);
        returns the manifest rows and the vault rows for the commit's transaction."""
        new_files: list[tuple[str, int, str, int]] = []
        # Polars releases the GIL while it writes: the state file is written on
        # the pool while this thread seals and writes the log.
        pending = []
        if commit.states.height:
            # States are sorted by user so a point read touches one row group.
            name = f"state/{seq:08d}.parquet"
            pending.append(self._pool.submit(self._write_parquet, commit.states.sort(USER),
                                             name))
            new_files.append(("state", seq, name, commit.states.height))
        events = commit.events
        vault: list[VaultRow] = []
        try:
            if self.sealer is not None:
                # keys first, durably: sealed data is never written without its key
                users = events[USER].unique().to_list() if events.height else []
                self.sealer.keyring.ensure(users, commit.identities)
                if events.height:
                    events, vault = self.sealer.seal(events)
            if events.height:
                # The log is not sorted: sorting costs more than the scans it saves.
                name = f"log/{seq:08d}.parquet"
                self._write_parquet(events, name)
                new_files.insert(0, ("log", seq, name, commit.events.height))
        finally:
            for job in pending:
                job.result()
        return new_files, vault

    def commit(self, commit: Commit) -> None:
        """Apply one batch atomically (see the module docstring)."""
        self._require_writer()
        seq = (self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM batches").fetchone()[0]) + 1
        new_files, vault = self._write_files(seq, commit)
        for sub in ("log", "state"):
            fsync_path(self.root / sub)
        db = self.db
        with immediate(db):
            db.executemany("INSERT INTO files VALUES (?, ?, ?, ?)", new_files)
            db.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    time.time(),
                    commit.events.height,
                    commit.states.height,
                    len(commit.dead_letters),
                    commit.duplicates,
                ),
            )
            # A file's dead letters are keyed by (file fingerprint, line), so
            # re-ingesting the file does not repeat them; records that came
            # without a file (API, streams) are all kept.
            fp = commit.checkpoint.fingerprint if commit.checkpoint else f"batch:{seq}:"
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO dead_letters "
                "(batch, source, fingerprint, line, reason, raw, user_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        seq,
                        d.source,
                        fp if commit.checkpoint else fp + d.source,
                        d.line,
                        *self._private_letter(d),
                    )
                    for d in commit.dead_letters
                ],
            )
            kept = db.total_changes - before  # re-read rejects are not new
            db.executemany("INSERT INTO vault VALUES (?, ?, ?, ?)",
                           [(seq, v.user_id, v.min_ts, v.blob) for v in vault])
            if commit.run is not None:
                db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?)",
                           (commit.run[0], int(commit.run[1])))
            if commit.checkpoint is not None:
                c = commit.checkpoint
                db.execute(
                    "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        c.fingerprint,
                        c.path,
                        c.rows_done,
                        c.accepted,
                        c.rejected,
                        c.duplicates,
                        int(c.complete),
                    ),
                )
            if commit.segment_changes is not None and commit.segment_changes.height:
                self._write_segment_changes(db, seq, commit.segment_changes)
            if commit.consents is not None and commit.consents.height:
                # the latest decision by (ts, event_id) wins, whatever the arrival order
                db.executemany(
                    "INSERT INTO consents VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (user_id, purpose) DO UPDATE SET granted = excluded.granted, "
                    "ts = excluded.ts, event_id = excluded.event_id "
                    "WHERE (excluded.ts, excluded.event_id) > (consents.ts, consents.event_id)",
                    commit.consents.select("user_id", "purpose", "granted", "ts", "event_id")
                    .iter_rows())
            self._bump(db, commit, kept)
        if self._seen is not None and commit.events.height:
            self._seen.add(commit.events["event_id"])
        self._maybe_compact()

    @staticmethod
    def _write_segment_changes(db: sqlite3.Connection, seq: int, changes: pl.DataFrame) -> None:
        """Append to the change log and apply it to the current memberships."""
        rows = changes.select("ts", USER, "segment", "change", "cause").rows()
        db.executemany(
            "INSERT INTO segment_changes (batch, ts, user_id, segment, change, cause) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(seq, *r) for r in rows],
        )
        db.executemany(
            "INSERT OR REPLACE INTO memberships VALUES (?, ?, ?)",
            [(u, s, ts) for ts, u, s, change, _ in rows if change == "enter"],
        )
        db.executemany(
            "DELETE FROM memberships WHERE user_id = ? AND segment = ?",
            [(u, s) for _, u, s, change, _ in rows if change == "exit"],
        )

    def memberships(self) -> pl.DataFrame:
        """Current rule-segment memberships: ``user_id, segment, since`` (µs)."""
        rows = self.db.execute("SELECT user_id, segment, since FROM memberships").fetchall()
        return pl.DataFrame(rows, schema=MEMBERSHIP_SCHEMA, orient="row")

    def segment_changes(
        self, user_id: str | None = None, segment: str | None = None, *, after: int = 0,
        limit: int | None = None,
    ) -> pl.DataFrame:
        """The segment change log, oldest first (by user / segment; ``seq > after``)."""
        where: list[str] = ["seq > ?"]
        args: list[object] = [after]
        if user_id is not None:
            where.append("user_id = ?")
            args.append(self.resolve(user_id))
        if segment is not None:
            where.append("segment = ?")
            args.append(segment)
        sql = "SELECT seq, ts, user_id, segment, change, cause FROM segment_changes"
        sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = self.db.execute(sql, args).fetchall()
        return pl.DataFrame(rows, schema=CHANGE_SCHEMA, orient="row")

    def _bump(self, db: sqlite3.Connection, commit: Commit, rejected: int) -> None:
        def add(key: str, n: int) -> None:
            cur = self._get_meta(key) or 0
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(cur + n)))

        add("accepted", commit.events.height)
        add("rejected", rejected)
        add("duplicates", commit.duplicates)
        add("users", commit.new_users)
        if commit.watermark is not None:
            old = self._get_meta("watermark")
            wm = commit.watermark if old is None else max(int(old), commit.watermark)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('watermark', ?)", (json.dumps(wm),))
        if commit.spec_text is not None:
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('spec_text', ?)",
                (json.dumps(commit.spec_text),),
            )

    # -- erasure ---------------------------------------------------------
    def forget(self, user_id: str) -> dict[str, int]:
        """Remove every row of ``user_id`` from the store's files and tables (GDPR erasure).

        Each Parquet file holding the user (log and state) is rewritten without
        them under a new name and the old file deleted; their dead letters,
        memberships and segment changes are deleted; the counters drop by what
        was removed; then SQLite is vacuumed and its WAL truncated so no free
        page keeps the deleted bytes. The watermark does not move back. Holds
        the compaction lock, so a background merge cannot resurrect a file.
        Returns what was removed, by kind.
        """
        self._require_writer()
        with self._compact_lock:
            return self._forget(self.resolve(user_id))

    def _forget(self, user_id: str) -> dict[str, int]:
        # shred first: from here on no copy of the user's sealed fields can be read
        shredded = self.sealer is not None and self.sealer.keyring.destroy(user_id)
        drop = pl.col(USER) == user_id
        logs = self._rewrite_without("log", drop, "e")
        states = self._rewrite_without("state", drop, "e")
        removed = {"events": logs.dropped, "state_rows": states.dropped}
        db = self.db
        with immediate(db):
            logs.record(db)
            states.record(db)
            for table in ("dead_letters", "memberships", "segment_changes", "consents", "vault"):
                removed[table] = db.execute(
                    f"DELETE FROM {table} WHERE user_id = ?", (user_id,)  # table: fixed names
                ).rowcount
            self._lower_meta(db, "accepted", removed["events"])
            self._lower_meta(db, "rejected", removed["dead_letters"])
            self._lower_meta(db, "users", 1 if removed["state_rows"] else 0)
        logs.delete_old()
        states.delete_old()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")  # free pages would still hold the deleted rows
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._seen = None  # the user's event ids are gone from the log: rebuilt on demand
        removed["files_rewritten"] = len(logs.files) + len(states.files)
        removed["keys_destroyed"] = int(shredded)
        return removed

    def _rewrite_without(self, kind: str, drop: pl.Expr, tag: str) -> _Rewrite:
        """:meth:`_rewrite` of the ``kind`` files without the rows that match ``drop``."""
        return self._rewrite(kind, tag, lambda frame: frame.filter(~drop), drop)

    def _rewrite(self, kind: str, tag: str, change: Callable[[pl.DataFrame], pl.DataFrame],
                 touched: pl.Expr) -> _Rewrite:
        """Write ``change(frame)`` of every ``kind`` file holding rows that match ``touched``
        under a new name (none when nothing is left).

        Files are probed with a predicate scan first (Parquet statistics skip
        row groups), so only files that hold such rows are read whole. The
        caller swaps the manifest (:meth:`_Rewrite.record`, in its transaction)
        and then deletes the old files (:meth:`_Rewrite.delete_old`).
        """
        out = _Rewrite(self.root, kind)
        for seq, name, _ in _file_rows(self.db, kind):
            lf = pl.scan_parquet(self.root / name)
            if not lf.filter(touched).select(pl.len()).collect().item():
                continue
            frame = lf.collect()
            rest = change(frame)
            out.dropped += frame.height - rest.height
            new = None
            if rest.height:
                new = f"{kind}/{seq:08d}-{tag}{time.time_ns() // 1000}.parquet"
                self._write_parquet(rest, new)
            out.files.append((seq, name, new, rest.height))
        fsync_path(self.root / kind)
        return out

    # -- re-keying pseudonyms (privacy/rekey.py) ---------------------------
    def rename_users(self, mapping: dict[str, str], pseudo: Pseudonymizer) -> dict[str, int]:
        """Replace stored user ids (old -> new) everywhere, then record ``pseudo``'s key.

        Every log and state file is rewritten with the new ids (then the old
        files deleted) and every table's ``user_id`` (and dead letters' raw
        text and reason) updated, all swapped in one transaction, so a crash
        leaves either the old ids everywhere or the new ones. The keyring must
        hold keys under the new ids before (:meth:`Keyring.copy_to`).
        """
        self._require_writer()
        with self._compact_lock:
            rewrites = [self._rewrite_mapped(kind, mapping) for kind in ("log", "state")]
            db = self.db
            letters = self._renamed_letters(mapping)
            with immediate(db):
                for rw in rewrites:
                    rw.record(db)
                db.execute("CREATE TEMP TABLE IF NOT EXISTS rekey (old TEXT PRIMARY KEY, "
                           "new TEXT NOT NULL)")
                db.execute("DELETE FROM rekey")
                db.executemany("INSERT INTO rekey VALUES (?, ?)", list(mapping.items()))
                for table in ("memberships", "segment_changes", "consents", "dead_letters",
                              "vault"):
                    db.execute(f"UPDATE {table} SET user_id = (SELECT new FROM rekey "
                               f"WHERE old = {table}.user_id) "  # table: fixed names
                               "WHERE user_id IN (SELECT old FROM rekey)")
                db.executemany("UPDATE dead_letters SET reason = ?, raw = ? WHERE id = ?",
                               letters)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('pseudonym_check', ?)",
                           (json.dumps(pseudo.check),))
            for rw in rewrites:
                rw.delete_old()
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("VACUUM")  # free pages would still link old and new pseudonyms
            self.pseudo = pseudo
            return {"files_rewritten": sum(len(rw.files) for rw in rewrites),
                    "dead_letters": len(letters)}

    def _rewrite_mapped(self, kind: str, mapping: dict[str, str]) -> _Rewrite:
        """:meth:`_rewrite` of the ``kind`` files with user ids renamed (state files stay
        sorted by user)."""
        def rename(frame: pl.DataFrame) -> pl.DataFrame:
            frame = frame.with_columns(pl.col(USER).replace(mapping))
            return frame.sort(USER) if kind == "state" else frame

        return self._rewrite(kind, "k", rename, pl.col(USER).is_in(list(mapping)))

    def _renamed_letters(self, mapping: dict[str, str]) -> list[tuple[str, str, int]]:
        """(reason, raw, id) of every dead letter naming a renamed user, with the new id."""
        out = []
        rows = self.db.execute("SELECT id, reason, raw, user_id FROM dead_letters "
                               "WHERE user_id IS NOT NULL").fetchall()
        for rid, reason, raw, user in rows:
            new = mapping.get(user)
            if new is None:
                continue
            text = raw if self.sealer is None else self.sealer.open_text(user, raw)
            if text is None:
                continue
            text = text.replace(user, new)
            if self.sealer is not None:
                text = self.sealer.seal_text(new, text)
            out.append((reason.replace(user, new), text, rid))
        return out

    def _lower_meta(self, db: sqlite3.Connection, key: str, n: int) -> None:
        cur = int(self._get_meta(key) or 0)
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(max(0, cur - n))))

    # -- retention -------------------------------------------------------
    def purge_before(self, cutoff: int) -> dict[str, int]:
        """Delete every logged event with ``ts < cutoff`` (retention); states are kept.

        Log files holding such events are rewritten without them (the old files
        deleted), ``purged_before`` is recorded and the ``accepted`` counter
        drops by what went (so answers cached by data version are recomputed).
        Returns ``{"events": n, "files_rewritten": k}``.
        """
        self._require_writer()
        with self._compact_lock:
            logs = self._rewrite_without("log", pl.col("ts") < cutoff, "r")
            db = self.db
            vault = self._resealed_vault(cutoff)
            with immediate(db):
                logs.record(db)
                for rowid, row in vault:
                    if row is None:
                        db.execute("DELETE FROM vault WHERE rowid = ?", (rowid,))
                    else:
                        db.execute("UPDATE vault SET min_ts = ?, blob = ? WHERE rowid = ?",
                                   (row.min_ts, row.blob, rowid))
                self._lower_meta(db, "accepted", logs.dropped)
                before = self._get_meta("purged_before")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('purged_before', ?)",
                           (json.dumps(max(cutoff, before or cutoff)),))
            logs.delete_old()
            if logs.dropped:
                self._seen = None  # rebuilt from what the log still holds
            return {"events": logs.dropped, "files_rewritten": len(logs.files)}

    def _resealed_vault(self, cutoff: int) -> list[tuple[int, VaultRow | None]]:
        """(rowid, the row re-sealed without events before ``cutoff``, or None) per vault
        row that holds such events."""
        if self.sealer is None:
            return []
        rows = self.db.execute("SELECT rowid, user_id, blob FROM vault WHERE min_ts < ?",
                               (cutoff,)).fetchall()
        resealed = self.sealer.reseal([(u, b) for _, u, b in rows], pl.col("ts") >= cutoff)
        return [(rowid, new) for (rowid, _, _), (_, new) in zip(rows, resealed, strict=True)]

    def retention(self) -> tuple[int | None, int | None]:
        """(the configured retention in µs or None, the latest purge cutoff or None)."""
        with self.pinned():
            return self._get_meta("retention_us"), self._get_meta("purged_before")

    def set_retention(self, retention_us: int | None) -> None:
        """Keep raw events this long before the watermark (None: forever)."""
        self._require_writer()
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('retention_us', ?)",
                        (json.dumps(retention_us),))

    # -- compaction ------------------------------------------------------
    def _maybe_compact(self) -> None:
        """Tiered compaction, inline: one merge per commit at most (see ``_compact_once``)."""
        if self._compactor is not None:
            self._compact_wake.set()  # the background thread does it
        else:
            self._compact_once(self.db)

    def start_background_compaction(self) -> None:
        """From now on compact in a thread of its own, so commits never wait for a merge.

        The server uses this: a merge can rewrite a large run of files (seconds
        on big logs) and, inline, the commit that tripped it (and every request
        waiting for that commit) would wait. The thread has its own SQLite
        connection; it only ever replaces runs of files older than the ones it
        listed, with one manifest transaction, so the writer's commits and
        readers' snapshots stay valid (readers retry if a file vanished).
        ``close()`` stops it. Failures are kept in ``compaction_error`` and
        stop further compaction (the store stays correct, only less compact).
        """
        self._require_writer()
        if self._compactor is None:
            self._compactor = threading.Thread(target=self._compact_loop,
                                               name="portrait-compact", daemon=True)
            self._compactor.start()

    def wait_compacted(self, timeout: float = 60.0) -> None:
        """Block until background compaction has caught up with every commit so far."""
        if self._compactor is None:
            return
        for _ in range(2):  # a pass already running may have listed files before our commits
            self._compact_idle.clear()
            self._compact_wake.set()
            if not self._compact_idle.wait(timeout):
                raise StoreError(f"background compaction did not finish in {timeout} s")

    def _compact_loop(self) -> None:
        db = sqlite3.connect(self.root / "portrait.sqlite", timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 60000")
            db.execute("PRAGMA synchronous = FULL")
            while not self._compact_stop:
                self._compact_wake.wait()
                self._compact_wake.clear()
                while not self._compact_stop and self._compact_once(db):
                    pass
                self._compact_idle.set()
        except Exception as exc:  # kept for /healthz; the store stays valid, only less compact
            self.compaction_error = exc
            logging.getLogger(__name__).exception("background compaction stopped")
            self._compact_idle.set()
        finally:
            db.close()

    def _compact_once(self, db: sqlite3.Connection) -> bool:
        """One tiered merge if a kind has too many files; True when one was done.

        The newest files are merged with older ones only while the older file
        is no larger than everything newer than it put together, so a row is
        rewritten about log2(rows) times over its life, not on every
        compaction, and a small commit never pays for rewriting all users.
        Runs are always adjacent in commit order (a state file's rows win over
        older files' rows).
        """
        with self._compact_lock:
            return self._compact_locked(db)

    def _compact_locked(self, db: sqlite3.Connection) -> bool:
        state_files = _file_rows(db, "state")
        if len(state_files) > MAX_STATE_FILES:
            run = _tail_run(state_files)
            self._replace(db, "state", run, _newest_rows(self.root, run).sort(USER))
            return True
        small = [f for f in _file_rows(db, "log") if f[2] < SMALL_LOG_ROWS]
        if len(small) > MAX_SMALL_LOG_FILES:
            run = _tail_run(small)
            self._replace(db, "log", run, pl.read_parquet([self.root / n for _, n in run]))
            return True
        return False

    def _replace(self, db: sqlite3.Connection, kind: str, old: list[tuple[int, str]],
                 frame: pl.DataFrame) -> None:
        """Swap ``old`` files of ``kind`` for one file holding ``frame``, atomically."""
        seq = max(s for s, _ in old)
        name = f"{kind}/{seq:08d}-c{int(time.time() * 1e6)}.parquet"
        self._write_parquet(frame, name)
        fsync_path(self.root / kind)
        with immediate(db):
            db.executemany(
                "DELETE FROM files WHERE kind = ? AND seq = ?", [(kind, s) for s, _ in old]
            )
            db.execute("INSERT INTO files VALUES (?, ?, ?, ?)", (kind, seq, name, frame.height))
        for _, n in old:
            with contextlib.suppress(FileNotFoundError):
                (self.root / n).unlink()


def _file_rows(db: sqlite3.Connection, kind: str) -> list[tuple[int, str, int]]:
    """(seq, name, rows) of ``kind``'s files in commit order (from the manifest)."""
    rows = db.execute(
        "SELECT seq, name, rows FROM files WHERE kind = ? ORDER BY seq", (kind,)
    ).fetchall()
    return [(int(seq), str(name), int(n)) for seq, name, n in rows]


def _newest_rows(root: Path, files: list[tuple[int, str]]) -> pl.DataFrame:
    """The newest state row per user over ``files`` (later files win)."""
    frames = [pl.read_parquet(root / name).with_columns(pl.lit(seq).alias("_seq"))
              for seq, name in files]
    both = pl.concat(frames, how="diagonal_relaxed")
    newest = both.sort("_seq", descending=True).unique(USER, keep="first", maintain_order=True)
    return newest.drop("_seq")


@dataclass
class _Rewrite:
    """Files of one kind rewritten without some rows (erasure, retention)."""

    root: Path
    kind: str
    files: list[tuple[int, str, str | None, int]] = field(default_factory=list)
    # (seq, old name, new name or None when nothing is left, rows kept)
    dropped: int = 0

    def record(self, db: sqlite3.Connection) -> None:
        """Point the manifest at the new files (inside the caller's transaction)."""
        for seq, _, new, rows in self.files:
            if new is None:
                db.execute("DELETE FROM files WHERE kind = ? AND seq = ?", (self.kind, seq))
            else:
                db.execute("UPDATE files SET name = ?, rows = ? WHERE kind = ? AND seq = ?",
                           (new, rows, self.kind, seq))

    def delete_old(self) -> None:
        for _, old, _, _ in self.files:
            with contextlib.suppress(FileNotFoundError):
                (self.root / old).unlink()


def _tail_run(files: list[tuple[int, str, int]]) -> list[tuple[int, str]]:
    """The newest files to merge: at least two, extended to older files while each is no
    larger than the rows of the files after it."""
    start = len(files) - 2
    total = files[-1][2] + files[-2][2]
    while start > 0 and files[start - 1][2] <= total:
        start -= 1
        total += files[start][2]
    return [(seq, name) for seq, name, _ in files[start:]]


def _raw_user_id(raw: str) -> str | None:
    """Best effort: the ``user_id`` of a rejected raw record, so erasure finds it."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:  # malformed JSON: a "user_id": "..." pair may still be there
        found = _USER_ID_PAIR.search(raw)
        if found is None:
            return None
        try:
            obj = {"user_id": orjson.loads(f'"{found[1]}"')}
        except orjson.JSONDecodeError:
            return None
    uid = obj.get("user_id") if isinstance(obj, dict) else None
    return uid.strip() if isinstance(uid, str) and uid.strip() else None


_USER_ID_PAIR = re.compile(r'"user_id"\s*:\s*"((?:[^"\\]|\\.)*)"')


def open_store(path: str | os.PathLike[str], *, writer: bool = False) -> EmbeddedStore:
    """Open the embedded store at ``path`` (created when ``writer``)."""
    return EmbeddedStore(path, writer=writer)
