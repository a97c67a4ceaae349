"""Erasure: ``portrait forget USER`` and ``DELETE /v1/users/{user_id}`` (GDPR art. 17, PIPL).

What goes, in one call, through the engine that owns the store (the CLI's
writer, or the server's writer thread):

* the user's events: every log Parquet file that holds one is rewritten
  without them under a new name, and the old file is deleted;
* their state row (the profile, and with it every window and decayed value),
  the same way; profile history and time travel are rebuilt from the log,
  so they go with the events;
* their dead letters, segment memberships and segment entry/exit log;
* their row of user factors in every saved ALS model version;
* the engine's in-memory copies (state cache, memberships, seen event ids).

SQLite is then vacuumed and its write-ahead log truncated, so no free page
still holds a deleted row. Other users' data is unchanged, the watermark
does not move back, and rebuilding the remaining log gives exactly the
profiles of a store that never saw the user (tests/test_erasure.py checks
both, and scans every byte of every file of the store for the raw id and the
user's own text).

In an encrypted database the user's data key is destroyed first
(crypto-shredding, privacy/crypto.py): their personal fields in copies made
outside the store (backups of the data, the OS's free disk blocks) can no
longer be read. Not covered (SECURITY.md): audience exports already written,
a keyring backed up before the erasure, and item factors, which still reflect
the user's past interactions blended with everyone's until the next training.
Forgetting a user the store never saw is not an error: the receipt says
nothing was found.
"""

from __future__ import annotations

import time
from typing import Any

from portrait.engine.engine import Engine
from portrait.timeutil import format_us


def forget(engine: Engine, user_id: str) -> dict[str, Any]:
    """Erase ``user_id`` from the engine's store and models; returns the receipt (JSON)."""
    from portrait.models import service

    removed = engine.forget(user_id)
    removed["model_versions"] = service.forget_user(engine, user_id)
    found = any(removed[k] for k in ("events", "state_rows", "dead_letters"))
    return {
        "user_id": user_id,
        "erased_at": format_us(time.time_ns() // 1000),
        "found": found,
        "removed": removed,
        "kept": "nothing of this user in the store's files; exports and backups made "
                "earlier are outside the store",
    }
