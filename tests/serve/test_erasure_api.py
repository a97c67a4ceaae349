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


def test_a_pseudonymised_database_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """Raw ids in, raw ids out, pseudonyms in every stored byte (privacy/pseudonym.py)."""
    from tests.serve.harness import SPEC

    from portrait.engine import Engine
    from portrait.privacy.pseudonym import KEY_ENV, Pseudonymizer, load_key
    from portrait.spec.loader import load_spec
    from portrait.store import open_store

    monkeypatch.setenv(KEY_ENV, "serve-test-pseudonym-key-0123456789")  # the server inherits it
    template = tmp_path / "template"
    with open_store(template, writer=True) as store:
        key = load_key()
        assert key is not None
        store.enable_pseudonyms(Pseudonymizer(key))
        Engine(load_spec(SPEC), store).ingest([SPEC.parent / "sample_history.jsonl"])
    with serving(template, tmp_path / "run") as srv, Client(srv.url, srv.admin) as api:
        assert api.profile("u000")["user_id"] == "u000"
        members = api.members("big_spender")["members"]
        assert members
        assert all(m.startswith("p_") for m in members)
        assert api.profile(members[0])["user_id"] == members[0]  # a pseudonym is an id too
        api.ingest([event("raw-new-7731", "2030-01-01T00:00:00Z", text=TEXT)])
        assert api.profile("raw-new-7731")["features"]["events_total"] == 1
        assert api.events("raw-new-7731")["count"] == 1
        assert _bytes_found(srv.db, "raw-new-7731") == []
        assert _bytes_found(srv.db, '"u000"') == []
        assert api.forget("u000")["found"] is True
        with pytest.raises(UnknownUserError):
            api.profile("u000")
