"""API keys with scopes, stored hashed in ``<db>/api-keys.json``.

A key is ``prt_`` + 32 random bytes (URL-safe base64), shown once when it is
made. The file keeps only its SHA-256 (the key has 256 bits of entropy, so a
plain hash is enough: there is nothing to brute-force), its scopes, a short
public id for listing and revoking, and when it was made. The file is written
atomically (temporary file, fsync, rename) with mode 0600, and re-read when it
changes, so ``portrait keys create`` works while a server runs.

Scopes: ``ingest`` (post events), ``read`` (profiles, segments, models,
audiences), ``admin`` (everything).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from portrait.errors import (
    AuthenticationError,
    PermissionDeniedError,
    StoreError,
    UsageError,
)
from portrait.fsutil import fsync_path

KEYS_FILE = "api-keys.json"
SCOPES = ("ingest", "read", "read_aggregate", "admin")
ALIASES = {"read_profile": "read"}  # the privacy issue's name for read
PREFIX = "prt_"


@dataclass(frozen=True)
class ApiKey:
    """One stored key: never the secret itself."""

    key_id: str
    sha256: str
    scopes: tuple[str, ...]
    created: float  # epoch seconds

    def allows(self, scope: str) -> bool:
        if scope == "read_aggregate" and "read" in self.scopes:
            return True  # who may read every profile may read their aggregates
        return scope in self.scopes or "admin" in self.scopes

    @property
    def private(self) -> bool:
        """Aggregates only: answers get differential-privacy noise (privacy/dp.py)."""
        return not self.allows("read")


def parse_scopes(text: str) -> tuple[str, ...]:
    """``"read,ingest"`` -> ``("ingest", "read")``; an unknown scope is a UsageError."""
    scopes = sorted({ALIASES.get(s.strip(), s.strip()) for s in text.split(",") if s.strip()})
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise UsageError(f"bad scopes {text!r}: use a comma-separated list of {', '.join(SCOPES)}")
    return tuple(scopes)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class KeyStore:
    """The keys of one database directory (thread-safe)."""

    def __init__(self, db: Path) -> None:
        self.path = Path(db) / KEYS_FILE
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: list[ApiKey] = []

    def stored(self) -> list[ApiKey]:
        """The stored keys, re-read if the file changed."""
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._stamp, self._keys = None, []
                return []
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # a rewrite is a new inode
            if stamp != self._stamp:
                self._keys = self._load()
                self._stamp = stamp
            return list(self._keys)

    def _load(self) -> list[ApiKey]:
        try:
            rows = orjson.loads(self.path.read_bytes())["keys"]
            return [ApiKey(str(r["id"]), str(r["sha256"]), tuple(r["scopes"]),
                           float(r["created"])) for r in rows]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{self.path}: not a readable API keys file ({exc!r})") from exc

    def create(self, scopes: tuple[str, ...]) -> tuple[str, ApiKey]:
        """Make and store a new key; returns ``(secret, stored)``. The secret is not kept."""
        for s in scopes:
            if s not in SCOPES:
                raise UsageError(f"unknown scope {s!r} (scopes: {', '.join(SCOPES)})")
        secret = PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(secrets.token_hex(4), _digest(secret), tuple(sorted(scopes)), time.time())
        self._write([*self.stored(), key])
        return secret, key

    def revoke(self, key_id: str) -> bool:
        """Remove the key with public id ``key_id``; False if there is none."""
        keys = self.stored()
        kept = [k for k in keys if k.key_id != key_id]
        if len(kept) == len(keys):
            return False
        self._write(kept)
        return True

    def _write(self, keys: list[ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = [
            {"id": k.key_id, "sha256": k.sha256, "scopes": list(k.scopes), "created": k.created}
            for k in keys
        ]
        tmp = self.path.with_name(f"{KEYS_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps({"keys": rows}, option=orjson.OPT_INDENT_2))
        fsync_path(tmp)
        tmp.replace(self.path)
        fsync_path(self.path.parent)

    def authorize(self, presented: str | None, scope: str) -> ApiKey:
        """The key for header value ``presented`` if it has ``scope``; else 401 / 403."""
        if not presented:
            raise AuthenticationError("missing API key: send it in the X-API-Key header")
        digest = _digest(presented)
        found = None
        for key in self.stored():  # compare with every key: no early exit to time
            if hmac.compare_digest(key.sha256, digest):
                found = key
        if found is None:
            raise AuthenticationError("unknown API key")
        if not found.allows(scope):
            raise PermissionDeniedError(
                f"API key {found.key_id} has scopes {', '.join(found.scopes)}; "
                f"this request needs {scope!r}"
            )
        return found
