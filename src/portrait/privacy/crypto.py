"""Encryption at rest of personal fields, per user, with crypto-shredding.

A database made with encryption on (``portrait ingest --encrypt``, the demo's
default) never writes a personal field in the clear. The personal fields of a
committed batch -- ``text``, ``lat``, ``lon`` and the ``attrs`` keys the spec
lists under ``privacy.personal_attrs`` -- are written as null in the log
Parquet files; per user, they are packed together (JSON built by Polars, keyed
by event id) and sealed with AES-256-GCM (a 12-byte random nonce, then the
ciphertext) into one row of the store's ``vault`` table, in the commit's own
transaction. Reads join them back by event id. Dead letters (raw rejected
records) are sealed the same way, under their user's key when the record names
a user, else under the store's own key. Retention re-seals a vault row
without the purged events.

**Keys.** Each user has a random 256-bit *data key*, kept in
``<db>/keyring.sqlite`` only *wrapped* (AES-GCM) by the *master key*. The
master key never enters the database: it comes from
``PORTRAIT_MASTER_KEY`` (64 hex digits), ``PORTRAIT_MASTER_KEY_FILE``, or
``~/.config/portrait/master.key`` (made with mode 0600 on first use); the
database keeps a check value, so a wrong key is refused. When user ids are
pseudonymous, the keyring also keeps the raw id, sealed under the user's data
key: that is what lets ``portrait rekey`` move a database to a new pseudonym
key (see :mod:`portrait.privacy.rekey`).

**Crypto-shredding.** Erasing a user deletes their key row (and vacuums the
keyring), so every copy of their sealed fields — an old backup of ``log/``,
a file copied elsewhere — becomes unreadable: reading it gives null fields.
That holds for copies that do not include the keyring: back the keyring up
apart from the data and keep those backups short-lived (SECURITY.md).

**What is not encrypted.** Ids (user pseudonyms, event and item ids),
types, categories, prices, ratings and times stay in the clear: features,
de-duplication and erasure work on them. Feature *state* derived from a
personal field (say a ``top_k`` over ``text``) is stored in the clear in the
state files; erasure removes it, but shredding does not reach old copies of
state files. Mark such features ``privacy.personal_features`` so they are
masked for keys without the admin scope.

Key rotation: ``portrait keys rotate-master`` re-wraps every data key under a
new master key (the data files are untouched).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import polars as pl
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from portrait.errors import StoreError
from portrait.events.schema import PERSONAL_FIELDS
from portrait.fsutil import fsync_path
from portrait.sqlutil import immediate

MASTER_ENV = "PORTRAIT_MASTER_KEY"
MASTER_FILE_ENV = "PORTRAIT_MASTER_KEY_FILE"
STORE_KEY_ID = "\x00store"  # the data key of dead letters that name no user
TEXT_PREFIX = "enc:v1:"
NONCE = 12
_CHECK_MESSAGE = b"portrait master key check v1"
_WRAP_AAD = b"portrait data key v1"
_CACHE_MAX = 1_000_000
BLOCK_USERS = 4_096
_KEYRING_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS key_blocks (block INTEGER PRIMARY KEY, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS user_keys (user_id TEXT PRIMARY KEY, block INTEGER NOT NULL)
    WITHOUT ROWID;
"""


def default_master_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "portrait" / "master.key"


def _parse_master(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise StoreError(f"{where}: a master key is 64 hex digits (256 bits)")
    return key


def load_master(*, create: bool = False) -> bytes | None:
    """The master key from the environment or its file (made when ``create``); None if none."""
    raw = os.environ.get(MASTER_ENV)
    if raw:
        return _parse_master(raw, MASTER_ENV)
    path = Path(os.environ.get(MASTER_FILE_ENV) or default_master_file())
    if path.exists():
        return _parse_master(path.read_text(encoding="ascii", errors="replace"), str(path))
    if not create:
        return None
    return write_master(path, secrets.token_bytes(32))


def write_master(path: Path, key: bytes) -> bytes:
    """Write ``key`` durably (fsynced, with its directory) to a new file readable by its
    owner only: a rotation must not wrap the keys under a key that a crash can lose."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_path(path.parent)
    return key


def pending_master_file() -> Path:
    """Where a master-key rotation writes the new key before it takes over."""
    path = Path(os.environ.get(MASTER_FILE_ENV) or default_master_file())
    return path.with_name(path.name + ".new")


def master_check(master: bytes) -> str:
    """What the database keeps to recognise its master key (not the key)."""
    return hmac.new(master, _CHECK_MESSAGE, hashlib.sha256).hexdigest()[:32]


def _seal(aead: AESGCM, data: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE)
    return nonce + aead.encrypt(nonce, data, aad)


def _unseal(aead: AESGCM, blob: bytes, aad: bytes) -> bytes:
    return aead.decrypt(blob[:NONCE], blob[NONCE:], aad)


class Keyring:
    """Per-user data keys, wrapped by the master key in blocks, in one SQLite file.

    Keys are made in bulk: the new users of a batch get random 256-bit keys
    that are wrapped together, as one AES-GCM *block* of at most
    :data:`BLOCK_USERS` entries (user -> key and, when pseudonymous, raw id),
    so onboarding 100,000 users costs a few dozen AES calls, not 100,000.
    ``user_keys`` says which block holds a user's key. ``ensure`` writes new
    keys durably (one transaction, before the batch's data is written, so a
    crash cannot leave sealed data without its key). ``destroy`` re-wraps
    the user's block without them, deletes their row and vacuums: the key is
    gone from every page of the file.
    """

    def __init__(self, path: Path, master: bytes, *, writer: bool, create: bool = False) -> None:
        self.path = path
        self._master = AESGCM(master)
        self.writer = writer
        if not create and not path.exists():
            raise StoreError(f"{str(path)!r}: the keyring of this encrypted database is missing")
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout = 60000")
        if writer:
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")
            self.db.execute("PRAGMA secure_delete = ON")
            self.db.executescript(_KEYRING_SQL)
            if create:
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('master_check', ?)",
                                (master_check(master),))
        row = self.db.execute("SELECT value FROM meta WHERE key = 'master_check'").fetchone()
        if row is None or row[0] != master_check(master):
            self.db.close()
            pending = pending_master_file()
            hint = f" (an interrupted rotation left the new key in {pending})" \
                if pending.exists() else ""
            raise StoreError(f"{str(path.parent)!r}: the master key given is not the one "
                             f"this database's keyring is wrapped with{hint}")
        self._keys: dict[str, bytes] = {}  # user -> data key, of the blocks opened so far
        self._aead: dict[str, AESGCM] = {}
        self._known: set[str] | None = None
        self._lock = threading.Lock()  # readers on the server's threads share the caches

    def __repr__(self) -> str:  # never show a key
        return f"Keyring({str(self.path)!r})"

    def close(self) -> None:
        self.db.close()

    @property
    def check(self) -> str:
        """The check value of the master key the keys are wrapped with."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'master_check'").fetchone()
        return str(row[0])

    # -- blocks ------------------------------------------------------------
    def _wrap(self, entries: dict[str, list[str | None]]) -> bytes:
        return _seal(self._master, orjson.dumps(entries), _WRAP_AAD)

    def _unwrap(self, blob: bytes) -> dict[str, list[str | None]]:
        try:
            out: dict[str, list[str | None]] = orjson.loads(
                _unseal(self._master, bytes(blob), _WRAP_AAD))
        except InvalidTag as exc:
            raise StoreError(f"{self.path}: a key block does not open with this master key "
                             "(a keyring from another database?)") from exc
        return out

    def _blocks(self) -> list[tuple[int, dict[str, list[str | None]]]]:
        return [(int(b), self._unwrap(blob))
                for b, blob in self.db.execute("SELECT block, blob FROM key_blocks")]

    def _known_users(self) -> set[str]:
        if self._known is None:
            self._known = {str(r[0]) for r in self.db.execute("SELECT user_id FROM user_keys")}
        return self._known

    def ensure(self, users: Iterable[str], identities: dict[str, str] | None = None) -> int:
        """Make a data key for each of ``users`` that has none; returns how many were made.

        ``identities`` (stored id -> raw id) keeps the raw id of a new user
        beside its key, for re-keying pseudonyms later.
        """
        known = self._known_users()
        new = [u for u in dict.fromkeys(users) if u not in known]
        if not new:
            return 0
        raw = os.urandom(32 * len(new))
        ids = identities or {}
        keys = {u: raw[32 * i:32 * i + 32] for i, u in enumerate(new)}
        self._write_blocks({u: [k.hex(), ids.get(u)] for u, k in keys.items()})
        with self._lock:
            self._keys.update(keys)
        known.update(new)
        return len(new)

    def _write_blocks(self, entries: dict[str, list[str | None]]) -> None:
        """Wrap ``entries`` into new blocks and index them, in one transaction."""
        users = list(entries)
        db = self.db
        with immediate(db):
            for i in range(0, len(users), BLOCK_USERS):
                chunk = users[i:i + BLOCK_USERS]
                block = db.execute("INSERT INTO key_blocks (blob) VALUES (?)",
                                   (self._wrap({u: entries[u] for u in chunk}),)).lastrowid
                db.executemany("INSERT OR REPLACE INTO user_keys VALUES (?, ?)",
                               [(u, block) for u in chunk])

    def _key(self, user: str) -> bytes | None:
        with self._lock:
            found = self._keys.get(user)
        if found is not None:
            return found
        row = self.db.execute("SELECT b.blob FROM user_keys u JOIN key_blocks b "
                              "ON b.block = u.block WHERE u.user_id = ?", (user,)).fetchone()
        if row is None:
            return None
        entries = self._unwrap(row[0])
        keys = {u: bytes.fromhex(str(e[0])) for u, e in entries.items()}
        with self._lock:
            if len(self._keys) + len(keys) > _CACHE_MAX:
                self._keys.clear()
                self._aead.clear()
            self._keys.update(keys)  # the whole block: its users tend to be read together
        return keys.get(user)

    def aead(self, user: str) -> AESGCM | None:
        """The user's cipher, or None when they have no key (never had one, or shredded)."""
        found = self._aead.get(user)
        if found is not None:
            return found
        key = self._key(user)
        if key is None:
            return None
        found = AESGCM(key)
        with self._lock:
            self._aead[user] = found
        return found

    def destroy(self, user: str) -> bool:
        """Delete the user's data key for good (crypto-shredding); True if there was one."""
        return self.drop([user]) > 0

    def drop(self, users: Iterable[str]) -> int:
        """Delete the keys of ``users`` (their blocks re-wrapped without them), then vacuum
        so no free page keeps them; returns how many there were."""
        gone = set(users)
        db = self.db
        rows = [(u, b) for u in gone for (b,) in
                db.execute("SELECT block FROM user_keys WHERE user_id = ?", (u,))]
        blocks = {b for _, b in rows}
        with immediate(db):
            for block in blocks:
                blob = db.execute("SELECT blob FROM key_blocks WHERE block = ?",
                                  (block,)).fetchone()[0]
                left = {u: e for u, e in self._unwrap(blob).items() if u not in gone}
                if left:
                    db.execute("UPDATE key_blocks SET blob = ? WHERE block = ?",
                               (self._wrap(left), block))
                else:
                    db.execute("DELETE FROM key_blocks WHERE block = ?", (block,))
            db.executemany("DELETE FROM user_keys WHERE user_id = ?", [(u,) for u, _ in rows])
        self._forget_cached(gone)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")  # free pages would still hold the wrapped keys
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return len(rows)

    def _forget_cached(self, users: set[str]) -> None:
        with self._lock:
            for u in users:
                self._keys.pop(u, None)
                self._aead.pop(u, None)
            if self._known is not None:
                self._known -= users

    def identities(self) -> Iterator[tuple[str, str | None]]:
        """(stored id, raw id or None) of every user with a key."""
        for _, entries in self._blocks():
            for user, (_, raw) in entries.items():
                yield user, raw

    def copy_to(self, mapping: dict[str, str]) -> None:
        """Give each new id (old id -> new id) a copy of the old id's key.

        Re-keying pseudonyms copies first, swaps the store, then :meth:`drop`
        the old ids: a crash at any point leaves every id the store uses with
        its key. The raw id stays beside the key.
        """
        entries = {mapping[u]: e for _, block in self._blocks()
                   for u, e in block.items() if u in mapping}
        self._write_blocks(entries)
        with self._lock:
            self._known = None

    def rewrap(self, new_master: bytes) -> int:
        """Wrap every key block under ``new_master`` and record its check, in one
        transaction; returns how many keys were re-wrapped."""
        target = AESGCM(new_master)
        blocks = self._blocks()
        db = self.db
        with immediate(db):
            db.executemany("UPDATE key_blocks SET blob = ? WHERE block = ?",
                           [(_seal(target, orjson.dumps(e), _WRAP_AAD), b) for b, e in blocks])
            db.execute("UPDATE meta SET value = ? WHERE key = 'master_check'",
                       (master_check(new_master),))
        self._master = target
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")  # no page may keep a block wrapped by the old master
        return sum(len(e) for _, e in blocks)


_ENTRY = pl.Struct({"event_id": pl.String, "ts": pl.Int64, "text": pl.String,
                    "lat": pl.Float64, "lon": pl.Float64, "secret": pl.String})
_VAULT_AAD = b"portrait vault v1"


@dataclass(frozen=True)
class VaultRow:
    """One user's personal fields of one commit, sealed under their data key."""

    user_id: str
    min_ts: int
    blob: bytes


class Sealer:
    """Seals and opens the personal fields of event frames and dead-letter text.

    A commit's personal fields are sealed per *user*, not per event: the
    fields of all of a user's events in the batch are packed (vectorised, as
    JSON built by Polars) into one plaintext and encrypted once, so the
    Python work is one AES-GCM call per user and commit. The blobs are kept in
    the store's ``vault`` table (one row per user and commit), written in the
    commit's transaction; reading joins them back by ``event_id``.
    """

    def __init__(self, keyring: Keyring, personal_attrs: Iterable[str] = ()) -> None:
        self.keyring = keyring
        self.personal_attrs = frozenset(personal_attrs)

    def _split_attrs(self, frame: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
        """(attrs as stored, attrs as sealed) per row: an ``attrs`` object that names a
        personal key is sealed whole (vectorised; its other keys are sealed with it)."""
        attrs = frame["attrs"]
        if not self.personal_attrs or attrs.null_count() == frame.height:
            return attrs, pl.Series("secret", [None] * frame.height, pl.String)
        keys = [orjson.dumps(k).decode() + ":" for k in sorted(self.personal_attrs)]
        hit = attrs.str.contains_any(keys).fill_null(False)
        secret = pl.select(pl.when(hit).then(attrs).otherwise(None).alias("secret")).to_series()
        rest = pl.select(pl.when(hit).then(None).otherwise(attrs).alias("attrs")).to_series()
        return rest, secret

    def seal(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, list[VaultRow]]:
        """``frame`` without its personal fields, and the vault rows that hold them.

        Every user of ``frame`` must have a key (:meth:`Keyring.ensure` first).
        """
        attrs, secret = self._split_attrs(frame)
        entries = frame.with_columns(secret).filter(
            pl.any_horizontal(pl.col(*PERSONAL_FIELDS, "secret").is_not_null()))
        if not entries.height:
            return frame, []
        stripped = frame.with_columns(
            *(pl.lit(None, frame.schema[c]).alias(c) for c in PERSONAL_FIELDS), attrs)
        return stripped, self._pack(entries)

    def _pack(self, entries: pl.DataFrame) -> list[VaultRow]:
        """One sealed vault row per user of ``entries`` (``user_id`` + ``_ENTRY`` columns)."""
        packed = entries.group_by("user_id").agg(
            pl.col("ts").min().alias("min_ts"),
            pl.struct(*_ENTRY.to_schema()).struct.json_encode().str.join(",").alias("json"),
        )
        rows = []
        aead_of = self.keyring.aead
        nonces = os.urandom(NONCE * packed.height)
        for i, (user, min_ts, text) in enumerate(packed.iter_rows()):
            aead = aead_of(user)
            if aead is None:
                raise StoreError(f"no data key for user {user!r} (Keyring.ensure first)")
            nonce = nonces[NONCE * i:NONCE * i + NONCE]
            blob = nonce + aead.encrypt(nonce, f"[{text}]".encode(), _VAULT_AAD)
            rows.append(VaultRow(user, min_ts, blob))
        return rows

    def entries(self, rows: Iterable[tuple[str, bytes]]) -> pl.DataFrame:
        """The personal fields in vault ``rows`` (user, blob) whose key is still there.

        One row per event (``_ENTRY`` columns); a shredded user's rows are
        skipped: their fields are gone for good.
        """
        plain: list[str] = []
        aead_of = self.keyring.aead
        for user, blob in rows:
            aead = aead_of(user)
            if aead is None:
                continue
            with contextlib.suppress(InvalidTag):
                plain.append(_unseal(aead, bytes(blob), _VAULT_AAD).decode())
        if not plain:
            return pl.DataFrame(schema=_ENTRY.to_schema())
        return (pl.Series("e", plain).str.json_decode(pl.List(_ENTRY))
                .explode().struct.unnest().drop_nulls("event_id"))

    def reseal(self, rows: Iterable[tuple[str, bytes]], keep: pl.Expr
               ) -> list[tuple[str, VaultRow | None]]:
        """Vault rows re-sealed with only the entries matching ``keep`` (retention).

        Returns (user, the new row or None when nothing is left) per input row
        whose key is still there; a shredded user's row maps to None.
        """
        out: list[tuple[str, VaultRow | None]] = []
        for user, blob in rows:
            kept = self.entries([(user, blob)]).filter(keep)
            if not kept.height:
                out.append((user, None))
                continue
            out.append((user, self._pack(kept.with_columns(pl.lit(user).alias("user_id")))[0]))
        return out

    def open(self, frame: pl.DataFrame, rows: Iterable[tuple[str, bytes]]) -> pl.DataFrame:
        """``frame`` (log rows) with the personal fields of vault ``rows`` put back."""
        found = self.entries(rows)
        if not found.height or not frame.height:
            return frame
        cols = frame.columns
        joined = frame.join(found.drop("ts"), on="event_id", how="left",
                            maintain_order="left", suffix="_v")
        out = joined.with_columns(
            pl.coalesce(f"{c}_v", c).alias(c) for c in PERSONAL_FIELDS)
        return out.with_columns(pl.coalesce("secret", "attrs").alias("attrs")).select(cols)

    def seal_text(self, user: str | None, text: str) -> str:
        """A raw record sealed under its user's key (the store's when none): ``enc:v1:...``."""
        owner = user or STORE_KEY_ID
        aead = self.keyring.aead(owner)
        if aead is None:
            self.keyring.ensure([owner])
            aead = self.keyring.aead(owner)
            assert aead is not None
        blob = _seal(aead, text.encode(), b"dead letter")
        return TEXT_PREFIX + base64.b64encode(blob).decode()

    def open_text(self, user: str | None, text: str) -> str | None:
        """Undo :meth:`seal_text` (None when the key is gone); other text passes as is."""
        if not text.startswith(TEXT_PREFIX):
            return text
        aead = self.keyring.aead(user or STORE_KEY_ID)
        if aead is None:
            return None
        with contextlib.suppress(InvalidTag, ValueError):
            return _unseal(aead, base64.b64decode(text[len(TEXT_PREFIX):]),
                           b"dead letter").decode()
        return None

