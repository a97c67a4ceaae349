"""API reads are audited under the key that made them (privacy/audit.py)."""

from __future__ import annotations

import time

from tests.serve.harness import Served

from portrait.client import Client
from portrait.privacy.audit import AuditLog


def test_api_reads_are_audited_with_the_key(api: Client, served: Served) -> None:
    from portrait.serve.keys import KeyStore

    api.profile("u002")
    api.events("u002", limit=1)
    admin = next(k for k in KeyStore(served.db).stored() if "admin" in k.scopes)
    deadline = time.monotonic() + 10
    while True:  # the server writes its rows in batches
        rows = AuditLog(served.db).rows(target="u002")
        actions = {(r["who"], r["action"]) for r in rows}
        if {(admin.key_id, "profile.read"), (admin.key_id, "events.read")} <= actions:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
