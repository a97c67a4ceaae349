"""``DELETE /v1/users/{user_id}`` against a real server: scopes, receipt, nothing left to
read, nothing left in the store's bytes, and the user can come back."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.serve.harness import event, serving

from portrait.client import Client
from portrait.errors import AuthenticationError, PermissionDeniedError, UnknownUserError

USER = "del/me x-5521"  # a slash and a space: the route takes any id
TEXT = "periwinkle hovercraft sonnet 0417"


def _bytes_found(root: Path, needle: str) -> list[str]:
    return [str(p.relative_to(root)) for p in sorted(root.rglob("*"))
            if p.is_file() and needle.encode() in p.read_bytes()]


def test_delete_user_erases_everything_and_the_user_can_come_back(seeded: Path,
                                                                   tmp_path: Path) -> None:
    with serving(seeded, tmp_path) as srv, Client(srv.url, srv.admin) as admin, \
            Client(srv.url, srv.read) as reader:
        posted = [event(USER, f"2030-03-0{d}T10:00:00Z", "purchase", price=90.0,
                        item_id=f"it{d}", category="Sci-Fi", text=TEXT) for d in range(1, 4)]
        admin.ingest(posted)
        assert reader.profile(USER)["features"]["events_total"] == 3
        assert reader.events(USER)["count"] == 3
        assert _bytes_found(srv.db, TEXT)
        with pytest.raises(PermissionDeniedError):
            reader.forget(USER)
        with Client(srv.url) as anonymous, pytest.raises(AuthenticationError):
            anonymous.forget(USER)

        receipt = admin.forget(USER)
        assert receipt["user_id"] == USER
        assert receipt["found"] is True
        assert receipt["removed"]["events"] == 3
        assert receipt["removed"]["state_rows"] == 1
        assert receipt["removed"]["segment_changes"] >= 1  # entered big_spender / sci_fi_fan

        with pytest.raises(UnknownUserError):
            reader.profile(USER)
        with pytest.raises(UnknownUserError):
            reader.events(USER)
        for seg in ("big_spender", "sci_fi_fan"):
            assert reader.segment_changes(seg, user=USER)["changes"] == []
        assert _bytes_found(srv.db, USER) == []
        assert _bytes_found(srv.db, TEXT) == []

        again = admin.forget(USER)
        assert again["found"] is False
        admin.ingest(posted[:1])  # old event ids are no longer "seen": accepted as new
        assert reader.profile(USER)["features"]["events_total"] == 1
