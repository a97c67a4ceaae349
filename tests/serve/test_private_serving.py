"""A server over an encrypted, pseudonymised database whose spec marks personal data.

Against the real server (``portrait serve`` on loopback): posted personal fields come
back to an admin key and are never written in the clear; a feature the spec marks
``privacy.personal_features`` is left out (and named in ``masked``) for a read key,
whose history and explanation of it are refused; erasure over HTTP destroys the
user's data key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.serve.harness import DATA, Served, event, serving

from portrait.client import Client
from portrait.engine import Engine
from portrait.errors import PermissionDeniedError
from portrait.privacy.setup import protect
from portrait.spec.loader import parse_spec
from portrait.store import open_store

SPEC_TEXT = (DATA / "spec.yaml").read_text().replace(
    "features:\n",
    "features:\n  last_search: {kind: last, field: text, where: {type: [search]}}\n", 1,
) + "\nprivacy:\n  personal_attrs: [email]\n  personal_features: [last_search]\n"
SECRET = "qxzvbrtplm wkjhgfdsn"  # random letters: found whole in the clear if stored so


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PORTRAIT_PSEUDONYM_KEY", "serve-test-pseudonym-key-0123456789")
        mp.setenv("PORTRAIT_MASTER_KEY", "7c" * 32)
        template = tmp_path_factory.mktemp("private") / "db"
        with open_store(template, writer=True) as store:
            protect(store, pseudonymise=True, encrypt=True)
            Engine(parse_spec(SPEC_TEXT), store).ingest([DATA / "sample_history.jsonl"])
        with serving(template, tmp_path_factory.mktemp("serve-private")) as served:
            yield served


def test_personal_fields_round_trip_for_admin_and_are_never_stored_in_the_clear(
        private: Served) -> None:
    with Client(private.url, private.admin) as admin:
        out = admin.ingest([event("pv-1", "2024-05-21T09:00:00Z", "search", text=SECRET,
                                  lat=48.5, lon=2.25,
                                  attrs={"email": "pv1@mail.example", "plan": "pro"})])
        assert out["accepted"] == 1
        seen = admin.events("pv-1")["events"][0]
        profile = admin.profile("pv-1")
    assert seen["text"] == SECRET
    assert (seen["lat"], seen["lon"]) == (48.5, 2.25)
    assert seen["attrs"] == {"email": "pv1@mail.example", "plan": "pro"}
    assert profile["features"]["last_search"] == SECRET  # admin sees personal features
    assert "masked" not in profile or not profile["masked"]
    stored = [p for p in private.db.rglob("*") if p.is_file()]
    clear = [p for p in stored if SECRET.encode() in p.read_bytes()]
    # only the state of the spec's `last_search` (a feature over text) keeps it: documented
    assert clear, "the scan finds the text where it is in the clear"
    assert all("state" in p.parts for p in clear), clear
    assert not any(b"pv1@mail.example" in p.read_bytes() for p in stored)
    assert not any(b"pv-1" in p.read_bytes() for p in stored), "ids are pseudonyms"


def test_a_personal_feature_is_masked_for_a_read_key(private: Served) -> None:
    with Client(private.url, private.admin) as admin:
        admin.ingest([event("pv-2", "2024-05-21T10:00:00Z", "search", text="blue hat")])
    with Client(private.url, private.read) as reader:
        profile = reader.profile("pv-2")
        assert "last_search" not in profile["features"]
        assert profile["masked"] == ["last_search"]
        assert profile["features"]["events_total"] == 1
        history = reader.history("pv-2")
        assert "last_search" not in history["features"]
        assert all("last_search" not in p["values"] for p in history["points"])
        with pytest.raises(PermissionDeniedError, match="admin keys only"):
            reader.history("pv-2", features=["last_search"])
        with pytest.raises(PermissionDeniedError, match="admin keys only"):
            reader.profile("pv-2", explain="last_search")


def test_erasure_over_http_destroys_the_users_key(private: Served, tmp_path: Path) -> None:
    with Client(private.url, private.admin) as admin:
        admin.ingest([event("pv-3", "2024-05-21T11:00:00Z", "search", text="green scarf")])
        receipt = admin.forget("pv-3")
    assert receipt["removed"]["keys_destroyed"] == 1
    assert receipt["removed"]["vault"] == 1
