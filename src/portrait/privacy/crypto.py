"""Encryption at rest of personal fields, per user, with crypto-shredding.

A database made with encryption on (``portrait ingest --encrypt``, the demo's
default) never writes a personal field in the clear. For every logged event
that carries one, the store seals ``text``, ``lat``, ``lon`` and the ``attrs``
keys the spec lists under ``privacy.personal_attrs`` into one AES-256-GCM
ciphertext (column ``_sealed`` of the log: a 12-byte random nonce, then the
ciphertext of ``[text, lat, lon, {personal attrs}]`` as JSON; the event id is
the associated data, so a sealed value cannot be moved to another event)
and writes those columns as null. Dead letters (raw rejected records) are
sealed the same way, under their user's key when the record names a user,
else under the store's own key.

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
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
import polars as pl
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from portrait.errors import StoreError

MASTER_ENV = "PORTRAIT_MASTER_KEY"
MASTER_FILE_ENV = "PORTRAIT_MASTER_KEY_FILE"
SEALED = "_sealed"
PERSONAL_COLUMNS = ("text", "lat", "lon")
STORE_KEY_ID = "\x00store"  # the data key of dead letters that name no user
TEXT_PREFIX = "enc:v1:"
NONCE = 12
_CHECK_MESSAGE = b"portrait master key check v1"
_WRAP_AAD = b"portrait data key v1"
_ID_AAD = b"portrait raw id v1"
_CACHE_MAX = 500_000


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
    """Write ``key`` to a new file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.hex() + "\n")
    return key


def _pending_file() -> Path:
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
    """Per-user data keys wrapped by the master key, in one SQLite file.

    ``ensure`` makes the missing keys of a batch's users durably (one
    transaction, before the batch's data is written, so a crash cannot leave
    sealed data without its key); ``destroy`` forgets one for good.
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
            self.db.execute("CREATE TABLE IF NOT EXISTS user_keys (user_id TEXT PRIMARY KEY, "
                            "wrapped BLOB NOT NULL, identity BLOB)")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, "
                            "value TEXT NOT NULL)")
            if create:
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('master_check', ?)",
                                (master_check(master),))
        row = self.db.execute("SELECT value FROM meta WHERE key = 'master_check'").fetchone()
        if row is None or row[0] != master_check(master):
            self.db.close()
            pending = _pending_file()
            hint = f" (an interrupted rotation left the new key in {pending})" \
                if pending.exists() else ""
            raise StoreError(f"{str(path.parent)!r}: the master key given is not the one "
                             f"this database's keyring is wrapped with{hint}")
        self._aead: dict[str, AESGCM] = {}
        self._known: set[str] | None = None

    def __repr__(self) -> str:  # never show a key
        return f"Keyring({str(self.path)!r})"

    def close(self) -> None:
        self.db.close()

    @property
    def check(self) -> str:
        """The check value of the master key the keys are wrapped with."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'master_check'").fetchone()
        return str(row[0])

    def _known_users(self) -> set[str]:
        if self._known is None:
            self._known = {str(r[0]) for r in self.db.execute("SELECT user_id FROM user_keys")}
        return self._known

    def ensure(self, users: Iterable[str], identities: dict[str, str] | None = None) -> int:
        """Make a data key for each of ``users`` that has none; returns how many were made.

        ``identities`` (stored id -> raw id) seals the raw id of a new user
        beside its key, for re-keying pseudonyms later.
        """
        known = self._known_users()
        new = [u for u in dict.fromkeys(users) if u not in known]
        if not new:
            return 0
        rows = []
        for user in new:
            key = secrets.token_bytes(32)
            raw = (identities or {}).get(user)
            ident = None if raw is None else _seal(AESGCM(key), raw.encode(), _ID_AAD)
            rows.append((user, _seal(self._master, key, _WRAP_AAD), ident))
            self._aead[user] = AESGCM(key)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT OR IGNORE INTO user_keys VALUES (?, ?, ?)", rows)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            for user in new:
                self._aead.pop(user, None)
            raise
        known.update(new)
        return len(new)

    def aead(self, user: str) -> AESGCM | None:
        """The user's cipher, or None when they have no key (never had one, or shredded)."""
        found = self._aead.get(user)
        if found is not None:
            return found
        row = self.db.execute("SELECT wrapped FROM user_keys WHERE user_id = ?",
                              (user,)).fetchone()
        if row is None:
            return None
        try:
            key = _unseal(self._master, bytes(row[0]), _WRAP_AAD)
        except InvalidTag as exc:
            raise StoreError(f"{self.path}: a data key does not open with this master key "
                             "(a keyring from another database?)") from exc
        found = AESGCM(key)
        if len(self._aead) >= _CACHE_MAX:
            self._aead.clear()
        self._aead[user] = found
        return found

    def destroy(self, user: str) -> bool:
        """Delete the user's data key for good (crypto-shredding); True if there was one."""
        gone = self.db.execute("DELETE FROM user_keys WHERE user_id = ?", (user,)).rowcount > 0
        self._aead.pop(user, None)
        if self._known is not None:
            self._known.discard(user)
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.execute("VACUUM")  # free pages would still hold the wrapped key
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return gone

    def identities(self) -> Iterator[tuple[str, str | None]]:
        """(stored id, raw id or None) of every user with a key."""
        for user, ident in self.db.execute("SELECT user_id, identity FROM user_keys").fetchall():
            raw = None
            aead = self.aead(str(user))
            if ident is not None and aead is not None:
                raw = _unseal(aead, bytes(ident), _ID_AAD).decode()
            yield str(user), raw

    def copy_to(self, mapping: dict[str, str]) -> None:
        """Give each new id (old id -> new id) a copy of the old id's key row.

        Re-keying pseudonyms copies first, swaps the store, then :meth:`drop`
        the old rows: a crash at any point leaves every id the store uses
        with its key.
        """
        self._exec_many("INSERT OR REPLACE INTO user_keys SELECT ?, wrapped, identity "
                        "FROM user_keys WHERE user_id = ?",
                        [(new, old) for old, new in mapping.items()])

    def drop(self, users: Iterable[str]) -> None:
        """Delete key rows that no stored id uses any more (after a re-key)."""
        self._exec_many("DELETE FROM user_keys WHERE user_id = ?", [(u,) for u in users])
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.execute("VACUUM")

    def _exec_many(self, sql: str, rows: list[tuple[str, ...]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(sql, rows)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self._aead.clear()
        self._known = None

    def rewrap(self, new_master: bytes) -> int:
        """Wrap every data key under ``new_master`` and record its check, in one transaction.

        Returns how many keys were re-wrapped.
        """
        target = AESGCM(new_master)
        rows = self.db.execute("SELECT user_id, wrapped FROM user_keys").fetchall()
        out = [(_seal(target, _unseal(self._master, bytes(w), _WRAP_AAD), _WRAP_AAD), str(u))
               for u, w in rows]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("UPDATE user_keys SET wrapped = ? WHERE user_id = ?", out)
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'master_check'",
                            (master_check(new_master),))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self._master = target
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.execute("VACUUM")  # no page may keep a key wrapped by the old master
        return len(out)


class Sealer:
    """Seals and opens the personal fields of event frames and dead-letter text."""

    def __init__(self, keyring: Keyring, personal_attrs: Iterable[str] = ()) -> None:
        self.keyring = keyring
        self.personal_attrs = frozenset(personal_attrs)

    def _personal_mask(self, frame: pl.DataFrame) -> pl.Expr:
        mask = pl.lit(False)
        for col in PERSONAL_COLUMNS:
            mask = mask | pl.col(col).is_not_null()
        if self.personal_attrs:
            mask = mask | pl.col("attrs").is_not_null()
        return mask

    def users_to_key(self, frame: pl.DataFrame) -> list[str]:
        """The users of ``frame`` whose rows carry a personal field."""
        return frame.filter(self._personal_mask(frame))["user_id"].unique().to_list()

    def seal(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with its personal fields moved into ``_sealed`` (every user has a key)."""
        idx = frame.with_row_index("_i").filter(self._personal_mask(frame))
        if not idx.height:
            return frame.with_columns(pl.lit(None, pl.Binary).alias(SEALED))
        sealed: list[bytes | None] = [None] * frame.height
        attrs: list[str | None] = frame["attrs"].to_list()
        personal = self.personal_attrs
        aead_of = self.keyring.aead
        cols = idx.select("_i", "user_id", "event_id", *PERSONAL_COLUMNS, "attrs").iter_rows()
        for i, user, eid, text, lat, lon, attr in cols:
            secret: dict[str, object] | None = None
            if personal and attr is not None:
                doc = orjson.loads(attr)
                secret = {k: doc.pop(k) for k in personal if k in doc}
                if secret:
                    attrs[i] = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode() \
                        if doc else None
                else:
                    secret = None
            if text is None and lat is None and lon is None and secret is None:
                continue
            aead = aead_of(user)
            if aead is None:
                raise StoreError(f"no data key for user {user!r} (Keyring.ensure first)")
            sealed[i] = _seal(aead, orjson.dumps([text, lat, lon, secret]), eid.encode())
        return frame.with_columns(
            *(pl.lit(None, frame.schema[c]).alias(c) for c in PERSONAL_COLUMNS),
            pl.Series("attrs", attrs, pl.String),
            pl.Series(SEALED, sealed, pl.Binary),
        )

    def open(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Undo :meth:`seal`; fields whose key is gone (shredded) stay null. Drops ``_sealed``."""
        if SEALED not in frame.columns:
            return frame
        idx = frame.select(pl.int_range(pl.len()).alias("_i"), "user_id", "event_id", SEALED,
                           "attrs").filter(pl.col(SEALED).is_not_null())
        if not idx.height:
            return frame.drop(SEALED)
        values: dict[str, list[object]] = {c: frame[c].to_list() for c in PERSONAL_COLUMNS}
        attrs: list[str | None] = frame["attrs"].to_list()
        aead_of = self.keyring.aead
        for i, user, eid, blob, attr in idx.iter_rows():
            aead = aead_of(user)
            if aead is None:
                continue  # shredded: the fields are gone for good
            try:
                text, lat, lon, secret = orjson.loads(_unseal(aead, blob, eid.encode()))
            except InvalidTag:
                continue
            values["text"][i], values["lat"][i], values["lon"][i] = text, lat, lon
            if secret:
                doc = orjson.loads(attr) if attr is not None else {}
                doc.update(secret)
                attrs[i] = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode()
        return frame.drop(SEALED).with_columns(
            *(pl.Series(c, values[c], frame.schema[c]) for c in PERSONAL_COLUMNS),
            pl.Series("attrs", attrs, pl.String),
        )

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
