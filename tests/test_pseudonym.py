"""Pseudonymous user ids (``portrait ingest --pseudonymise``, privacy/pseudonym.py).

The same events into a database with pseudonyms and one without: every profile read by
raw id is the same (the id as asked is echoed), no byte of the pseudonymised store holds
a raw id (dead letters included), lists of users show pseudonyms that are accepted as
ids, a wrong or missing key is refused, and erasure by raw id works.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from portrait.engine.engine import Engine
from portrait.errors import StoreError
from portrait.privacy.erasure import forget
from portrait.privacy.pseudonym import KEY_ENV, Pseudonymizer, load_key
from portrait.spec.loader import load_spec
from portrait.store import open_store

DATA = Path(__file__).resolve().parents[1] / "src" / "portrait" / "data"
FILES = [DATA / "sample_history.jsonl", DATA / "sample_recent.jsonl", DATA / "sample_late.jsonl"]
KEY = "a-test-pseudonym-key-0123456789"


def _users() -> list[str]:
    found = set()
    for f in FILES:
        for line in f.read_text().splitlines():
            try:
                user = json.loads(line).get("user_id")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(user, str) and user:
                found.add(user)
    return sorted(found)


def _build(db: Path, pseudonymise: bool) -> None:
    with open_store(db, writer=True) as store:
        if pseudonymise:
            key = load_key()
            assert key is not None
            store.enable_pseudonyms(Pseudonymizer(key))
        Engine(load_spec(DATA / "spec.yaml"), store).ingest(FILES)


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def test_profiles_equal_and_no_raw_id_in_any_byte(tmp_path: Path, keyed: None) -> None:
    plain, private = tmp_path / "plain", tmp_path / "private"
    _build(plain, pseudonymise=False)
    _build(private, pseudonymise=True)
    users = _users()
    assert len(users) >= 5
    with open_store(plain) as a, open_store(private) as b:
        ea, eb = Engine(None, a), Engine(None, b)
        for user in users:
            if not a.states([user]).height:
                continue  # only in dead letters
            assert eb.profile(user) == ea.profile(user)
            at = a.meta().watermark
            assert at is not None
            assert eb.profile(user, at - 86_400_000_000) == ea.profile(user, at - 86_400_000_000)
        members = eb.segment_members("big_spender")
        assert members
        assert all(m.startswith("p_") for m in members)
        pseudo = Pseudonymizer(KEY.encode())
        raw = next(u for u in users if pseudo.one(u) == members[0])  # a pseudonym is an id too
        assert eb.profile(members[0])["features"] == ea.profile(raw)["features"]
        assert len(members) == len(ea.segment_members("big_spender"))
        assert len(b.dead_letters()) == len(a.dead_letters())
    for path in sorted(p for p in private.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for user in users:
            assert f'"{user}"'.encode() not in data, (path, user)
        assert KEY.encode() not in data, path  # the key never enters the database


def test_wrong_or_missing_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    db = tmp_path / "db"
    _build(db, pseudonymise=True)
    monkeypatch.setenv(KEY_ENV, "another-key-that-is-long-enough")
    with pytest.raises(StoreError, match="not the one"):
        open_store(db)
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv("PORTRAIT_PSEUDONYM_KEY_FILE", str(tmp_path / "none.key"))
    with pytest.raises(StoreError, match="give its key"):
        open_store(db)


def test_forget_by_raw_id_in_a_pseudonymised_store(tmp_path: Path, keyed: None) -> None:
    db = tmp_path / "db"
    _build(db, pseudonymise=True)
    user = "u000"
    with open_store(db, writer=True) as store:
        receipt = forget(Engine(None, store), user)
        assert receipt["found"] is True
        assert receipt["removed"]["events"] > 0
        assert store.states([user]).height == 0
        assert store.events([Pseudonymizer(KEY.encode()).one(user)]).height == 0


def test_pseudonyms_are_keyed_and_stable() -> None:
    a, b = Pseudonymizer(b"k" * 32), Pseudonymizer(b"j" * 32)
    assert a.one("alice") == a.one("alice") != b.one("alice")
    assert a.one(a.one("alice")) == a.one("alice")  # a pseudonym is its own
    assert len(a.one("alice")) == 18
    assert "k" * 32 not in repr(a)


def test_a_where_on_user_id_names_raw_ids_and_still_matches(tmp_path: Path, keyed: None
                                                            ) -> None:
    """Regression (found by the private-store property test): a spec filter on user_id
    is written with raw ids; the engine applies it to pseudonymised events."""
    from portrait.spec.loader import parse_spec

    spec = parse_spec("version: 1\nfeatures:\n  n: {kind: count}\n"
                      "  vip: {kind: count, where: {user_id: [u001, u002]}}\n")
    with open_store(tmp_path / "db", writer=True) as store:
        store.enable_pseudonyms(Pseudonymizer(KEY.encode()))
        engine = Engine(spec, store)
        engine.ingest([DATA / "sample_history.jsonl"])
        mine = engine.profile("u001")["features"]
        other = engine.profile("u003")["features"]
    assert mine["vip"] == mine["n"] > 0
    assert other["vip"] == 0
    assert other["n"] > 0
