"""Pseudonymous user ids: a keyed HMAC-SHA256 of the raw id, applied before anything is stored.

A database made with pseudonymisation on (``portrait ingest --pseudonymise``,
the demo's default) stores ``p_`` + the first 96 bits of
``HMAC-SHA256(key, raw user id)`` in URL-safe base64 (16 characters: short
ids keep joins and files small; two of 100 million users collide with
probability ~1e-13) wherever a user id would be: the event log,
states, dead letters (their ``user_id`` and, where the raw record names the
id, inside the raw text), memberships, the segment log, model files and
exports. Lookups by raw id go through the same function (the store resolves
every id it is asked for), so ``portrait profile alice`` and
``GET /v1/profiles/alice`` work as before and answer with the id as asked;
lists of users (segment members, audiences) show pseudonyms, which are
accepted as ids too. A spec's ``where`` filter on ``user_id`` is written with
raw ids; the engine applies it with their pseudonyms. A ``first``/``last`` of
``user_id`` reads the stored pseudonym.

The key never enters the database: it comes from ``PORTRAIT_PSEUDONYM_KEY``
(the key itself), or ``PORTRAIT_PSEUDONYM_KEY_FILE``, or
``~/.config/portrait/pseudonym.key`` (made with mode 0600 on first use). The
database keeps a check value (an HMAC of a fixed message, not the key), so a
wrong key is refused instead of silently splitting every user in two. The key
is never logged or printed.

What it protects: someone with the database files but not the key cannot
tell which raw id a profile belongs to, nor link it to other data keyed by
the raw id. What it does not: with the key, ids can be confirmed by guessing
(HMAC is not encryption); event ids and item ids are stored as sent. Free
text, coordinates and personal attrs are encrypted when the database is
(privacy/crypto.py).

Rotation: ``portrait keys rekey`` moves an *encrypted* database to a new key
(the raw ids it needs are kept sealed in the keyring, privacy/crypto.py):
every stored id is replaced by its new pseudonym in one swap
(:mod:`portrait.privacy.rekey`). A database that is not encrypted cannot be
re-keyed (the HMAC cannot be undone): re-ingest it under the new key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

import polars as pl

from portrait.errors import StoreError
from portrait.fsutil import fsync_path

PREFIX = "p_"
KEY_ENV = "PORTRAIT_PSEUDONYM_KEY"
KEY_FILE_ENV = "PORTRAIT_PSEUDONYM_KEY_FILE"
_PSEUDONYM = re.compile(r"^p_[A-Za-z0-9_-]{16}$")
_CHECK_MESSAGE = b"portrait pseudonym key check v1"


def default_key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "portrait" / "pseudonym.key"


def key_file() -> Path:
    """The key file in use: ``$PORTRAIT_PSEUDONYM_KEY_FILE`` or the default."""
    return Path(os.environ.get(KEY_FILE_ENV) or default_key_file())


def pending_key_file() -> Path:
    """Where ``portrait keys rekey`` writes the new key before it takes over."""
    path = key_file()
    return path.with_name(path.name + ".new")


def load_key(*, create: bool = False) -> bytes | None:
    """The key from the environment or the key file (made when ``create``); None if none."""
    raw = os.environ.get(KEY_ENV)
    if raw:
        return raw.encode()
    path = key_file()
    if path.exists():
        key = path.read_bytes().strip()
        if len(key) < 16:
            raise StoreError(f"{path}: a pseudonym key must be at least 16 bytes")
        return key
    if not create:
        return None
    return write_key(path, secrets.token_hex(32).encode())


def write_key(path: Path, key: bytes) -> bytes:
    """Write ``key`` to a new file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
        f.flush()
        os.fsync(f.fileno())  # a re-key must not move ids to a key a crash can lose
    fsync_path(path.parent)
    return key


class Pseudonymizer:
    """raw id -> ``p_`` + 96 bits of HMAC-SHA256(key, id), base64url; pseudonyms pass as is."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._cache: dict[str, str] = {}

    def __repr__(self) -> str:  # never show the key
        return "Pseudonymizer(<key hidden>)"

    @property
    def check(self) -> str:
        """What the database keeps to recognise its key."""
        return hmac.new(self._key, _CHECK_MESSAGE, hashlib.sha256).hexdigest()[:32]

    def one(self, user_id: str) -> str:
        found = self._cache.get(user_id)
        if found is None:
            if _PSEUDONYM.match(user_id):
                return user_id
            digest = hmac.digest(self._key, user_id.encode(), "sha256")[:12]  # 96 bits
            found = PREFIX + base64.urlsafe_b64encode(digest).decode()
            if len(self._cache) < 1_000_000:
                self._cache[user_id] = found
        return found

    def column(self, ids: pl.Series, identities: dict[str, str] | None = None) -> pl.Series:
        """A String column of ids, pseudonymised (each distinct id hashed once).

        ``identities``, when given, receives pseudonym -> raw id of every id
        seen (what an encrypted store keeps sealed, for re-keying).
        """
        distinct = ids.unique().drop_nulls().to_list()
        one = self.one
        hashed = [one(u) for u in distinct]
        if identities is not None:
            identities.update(zip(hashed, distinct, strict=True))
        mapping = pl.DataFrame({"raw": distinct, "p": hashed},
                               schema={"raw": pl.String, "p": pl.String})
        joined = ids.to_frame("raw").join(mapping, on="raw", how="left", maintain_order="left")
        return joined["p"].alias(ids.name)

    def text(self, raw: str, user_id: str | None) -> str:
        """A raw record with ``user_id`` replaced by its pseudonym: as a JSON string in a
        JSON record, as a whole field in a CSV line."""
        if not user_id or _PSEUDONYM.match(user_id):
            return raw
        if raw.lstrip().startswith("{"):
            import orjson

            quoted = orjson.dumps(user_id).decode()
            return raw.replace(quoted, orjson.dumps(self.one(user_id)).decode())
        field = re.compile(r"(?<![^,])" + re.escape(user_id) + r"(?![^,\r\n])")
        return field.sub(self.one(user_id), raw)
