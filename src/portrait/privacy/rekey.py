"""Key rotation: a new master key (``portrait keys rotate-master``) and a new pseudonym
key (``portrait keys rekey``).

**Master key.** Only the keyring changes: every user's data key is unwrapped
with the old master key and wrapped with the new one, and the keyring's check
value updated, in one SQLite transaction; the data files are untouched. The
new key is written to ``<key file>.new`` first and renamed over the key file
once the keyring has switched, so a crash leaves a key that opens the
database on disk (the error message names ``.new`` when it is the one).

**Pseudonym key.** An encrypted database keeps every user's raw id sealed
under that user's data key (privacy/crypto.py). Re-keying opens them,
computes each user's new pseudonym and then, in order: copies each key row to
the new id (the keyring holds both); rewrites every log and state file and
every table with the new ids and records the new key's check, in one swap
(``EmbeddedStore.rename_users``); renames the users of saved ALS models;
drops the old key rows; renames ``<key file>.new`` over the key file. A
crash before the swap leaves the old ids everywhere, after it the new ones.
Old pseudonyms then link to nothing: whoever had the old key (and a copy of
old exports) can no longer follow users into new data.

Both need the writer lock: stop ``portrait serve`` first (they wait for it).
Keys given in the environment (``$PORTRAIT_MASTER_KEY``,
``$PORTRAIT_PSEUDONYM_KEY``) cannot be replaced by a file rename: pass
``--new-key-file`` and then point the environment at it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from portrait.errors import UsageError
from portrait.fsutil import fsync_path
from portrait.privacy import crypto, pseudonym
from portrait.privacy.crypto import STORE_KEY_ID
from portrait.privacy.pseudonym import Pseudonymizer
from portrait.store.embedded import EmbeddedStore


def _target(new_key_file: Path | None, *, env: str, pending: Path) -> tuple[Path, Path | None]:
    """(where the new key is written, the key file it replaces or None)."""
    if new_key_file is not None:
        return new_key_file, None
    if os.environ.get(env):
        raise UsageError(f"the key comes from ${env}: pass --new-key-file, then point "
                         f"${env} (or its _FILE variable) at the new key")
    if pending.exists():
        raise UsageError(f"{pending} exists: an earlier rotation was interrupted; open the "
                         "database with that key (move it over the key file) or delete it")
    return pending, pending.with_name(pending.name.removesuffix(".new"))


def rotate_master(store: EmbeddedStore, new_key_file: Path | None = None) -> dict[str, Any]:
    """Re-wrap every data key under a new, random master key; returns a receipt."""
    if store.sealer is None:
        raise UsageError("this database is not encrypted: there is no master key to rotate")
    path, replaces = _target(new_key_file, env=crypto.MASTER_ENV,
                             pending=crypto.pending_master_file())
    new = crypto.write_master(path, secrets.token_bytes(32))
    n = store.sealer.keyring.rewrap(new)
    if replaces is not None:
        os.replace(path, replaces)
        fsync_path(replaces.parent)
        path = replaces
    return {"rotated": "master", "data_keys_rewrapped": n, "key_file": str(path)}


def rekey_pseudonyms(store: EmbeddedStore, new_key_file: Path | None = None) -> dict[str, Any]:
    """Move every stored id to its pseudonym under a new, random key; returns a receipt."""
    from portrait.models.service import rename_users

    if store.pseudo is None:
        raise UsageError("this database stores raw user ids: there is no pseudonym key")
    if store.sealer is None:
        raise UsageError("only an encrypted database keeps the raw ids a re-key needs "
                         "(ingest with --encrypt); re-ingest this one under the new key")
    keyring = store.sealer.keyring
    identities = {u: raw for u, raw in keyring.identities() if u != STORE_KEY_ID}
    missing = [u for u, raw in identities.items() if raw is None]
    if missing:
        raise UsageError(f"{len(missing)} users have no sealed raw id (e.g. {missing[0]}): "
                         "they cannot be re-keyed")
    path, replaces = _target(new_key_file, env=pseudonym.KEY_ENV,
                             pending=pseudonym.pending_key_file())
    new = Pseudonymizer(pseudonym.write_key(path, secrets.token_hex(32).encode()))
    mapping = {old: new.one(raw) for old, raw in identities.items() if raw is not None}
    keyring.copy_to(mapping)
    done = store.rename_users(mapping, new)
    models = rename_users(store.root, mapping)
    keyring.drop(mapping)
    if replaces is not None:
        os.replace(path, replaces)
        fsync_path(replaces.parent)
        path = replaces
    return {"rotated": "pseudonyms", "users": len(mapping), **done,
            "model_versions": models, "key_file": str(path)}
