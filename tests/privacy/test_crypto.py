"""Encryption at rest of personal fields (privacy/crypto.py) and key rotation (privacy/rekey.py).

The same events go into a plain database and into one with pseudonyms and encryption
on. Every profile, every logged event and every dead letter reads the same; no byte of
the encrypted store holds a review text, a personal attrs value or a coordinate, while
the same scan finds them in the plain store (so the scan can find things). Erasing a
user destroys their data key: an old copy of the data files, opened with the live
keyring, yields nothing personal of theirs and everything of other users. Rotating the
master key and re-keying the pseudonyms keep every profile and leave no old key or old
pseudonym behind.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from tests.test_erasure import GONE, GONE_TEXT, KEPT, KEPT_TEXT, SPEC, USERS, _events, _same

from portrait.engine.engine import Engine
from portrait.errors import StoreError, UsageError
from portrait.models.cf import ALSModel, ALSParams
from portrait.models.registry import ModelRegistry
from portrait.privacy.crypto import MASTER_ENV, MASTER_FILE_ENV
from portrait.privacy.erasure import forget
from portrait.privacy.pseudonym import KEY_ENV, KEY_FILE_ENV, Pseudonymizer, load_key
from portrait.privacy.rekey import rekey_pseudonyms, rotate_master
from portrait.privacy.setup import protect
from portrait.spec.loader import parse_spec
from portrait.store import open_store

MASTER = "3f" * 32
PSEUDO_KEY = "crypto-test-pseudonym-key-0123456789"
SPEC_TEXT = SPEC.read_text() + "\nprivacy:\n  personal_attrs: [email]\n"


def _personal(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give some events coordinates and an email in attrs (beside a non-personal key)."""
    rng = random.Random(5)

    def word() -> str:  # random letters: compression cannot hide them in the clear
        return "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(12))

    for i, ev in enumerate(events):
        if ev.get("text", "").startswith("fine item"):
            ev["text"] = f"{word()} {word()}"
        if i % 3 == 0:
            ev["lat"], ev["lon"] = round(rng.uniform(-60, 60), 6), round(rng.uniform(-170, 170), 6)
        if i % 4 == 0:
            ev["attrs"] = {"email": f"{word()}@mail.example", "device": "ios"}
        elif i % 5 == 0:  # no personal key: stored as is
            ev["attrs"] = {"device": "web", "channel": "email"}
    return events


def _files(tmp_path: Path, events: list[dict[str, Any]]) -> list[Path]:
    bad = json.dumps({"user_id": GONE, "ts": "not a time", "type": "view", "text": GONE_TEXT})
    parts = [events[:150], events[150:300], events[300:]]
    out = []
    for i, part in enumerate(parts):
        path = tmp_path / f"part{i}.jsonl"
        lines = [json.dumps(e) for e in part] + ([bad] if i == 1 else [])
        path.write_text("\n".join(lines) + "\n")
        out.append(path)
    return out


def _build(db: Path, files: list[Path], *, private: bool) -> None:
    with open_store(db, writer=True) as store:
        if private:
            protect(store, pseudonymise=True, encrypt=True)
        engine = Engine(parse_spec(SPEC_TEXT), store, batch_size=60)
        for f in files:
            engine.ingest([f])


def _scan(root: Path, needles: dict[str, bytes], skip: tuple[str, ...] = ()) -> set[str]:
    """The names of the needles found in any byte of any file under ``root``."""
    found = set()
    for path in (p for p in root.rglob("*") if p.is_file() and p.name not in skip):
        data = path.read_bytes()
        found |= {name for name, n in needles.items() if n in data}
    return found


def _needles(events: list[dict[str, Any]]) -> dict[str, bytes]:
    out = {f"text {e['text']}": e["text"].encode() for e in events if e.get("text")}
    out |= {f"email {e['attrs']['email']}": e["attrs"]["email"].split("@")[0].encode()
            for e in events if "email" in e.get("attrs", {})}
    out |= {f"lat {e['lat']}": struct.pack("<d", e["lat"]) for e in events if "lat" in e}
    return out


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Both keys in files of their own (as a user would have them); returns their folder."""
    home = tmp_path / "keys"
    home.mkdir()
    (home / "master.key").write_text(MASTER + "\n")
    (home / "pseudonym.key").write_text(PSEUDO_KEY + "\n")
    monkeypatch.delenv(MASTER_ENV, raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv(MASTER_FILE_ENV, str(home / "master.key"))
    monkeypatch.setenv(KEY_FILE_ENV, str(home / "pseudonym.key"))
    return home


def _profiles(db: Path) -> dict[str, Any]:
    with open_store(db) as store:
        engine = Engine(None, store)
        return {u: engine.profile(u) for u in USERS}


def _log(db: Path) -> pl.DataFrame:
    with open_store(db) as store:
        return store.events().drop("user_id").sort("event_id")


def test_reads_are_the_same_and_no_personal_field_is_stored_in_the_clear(
        tmp_path: Path, keys: Path) -> None:
    events = _personal(_events(random.Random(11)))
    files = _files(tmp_path, events)
    plain, private = tmp_path / "plain", tmp_path / "private"
    _build(plain, files, private=False)
    _build(private, files, private=True)

    _same(_profiles(private), _profiles(plain))
    assert _log(private).equals(_log(plain)), "decrypted log == plain log"
    with open_store(private) as store:  # a caller that reads no personal field skips the vault
        skipped = store.events(personal=False).drop("user_id").sort("event_id")
    assert skipped["text"].null_count() == skipped.height
    assert skipped.drop("text", "lat", "lon", "attrs").equals(
        _log(plain).drop("text", "lat", "lon", "attrs"))
    with open_store(plain) as a, open_store(private) as b:
        assert [d["raw"] for d in b.dead_letters()] == [
            d["raw"].replace(f'"{GONE}"', f'"{b.resolve(GONE)}"') for d in a.dead_letters()]
        assert b.sealer is not None
        assert b.sealer.personal_attrs == frozenset({"email"})
        stored = pl.concat([pl.read_parquet(private / n) for _, n in b._files("log")])
        assert stored["text"].null_count() == stored.height  # sealed, not stored
        assert stored["lat"].null_count() == stored.height
        vault = b.db.execute("SELECT COUNT(*), COUNT(DISTINCT user_id) FROM vault").fetchone()
        assert vault[1] == len(USERS)
        assert vault[0] > vault[1], "one sealed row per user and commit"
        assert all("email" not in json.loads(a) for a in stored["attrs"].drop_nulls())
        assert {"device": "web", "channel": "email"} in [
            json.loads(a) for a in stored["attrs"].drop_nulls()], "non-personal attrs stay"

    needles = _needles(events)
    assert len(needles) > 100
    # LZ4 may split a literal where 4 bytes match earlier data, so not every field of the
    # plain store is found whole; most are, so finding none below is not compression
    assert len(_scan(plain, needles)) > 0.8 * len(needles), "the scan finds fields"
    assert _scan(private, needles) == set(), "an encrypted store holds none in the clear"
    keyring = private / "keyring.sqlite"  # raw ids are kept there, sealed (for re-keying)
    assert GONE.encode() not in keyring.read_bytes()
    assert KEPT.encode() not in keyring.read_bytes()
    for path in (p for p in private.rglob("*") if p.is_file()):
        assert bytes.fromhex(MASTER) not in path.read_bytes()
        assert MASTER.encode() not in path.read_bytes()


def test_erasure_shreds_the_key_so_old_copies_are_unreadable(tmp_path: Path, keys: Path
                                                           ) -> None:
    events = _personal(_events(random.Random(3)))
    db = tmp_path / "db"
    _build(db, _files(tmp_path, events), private=True)
    backup = tmp_path / "backup"  # the data files, backed up without the keyring
    shutil.copytree(db, backup, ignore=shutil.ignore_patterns("keyring.sqlite*", "*.lock"))
    with open_store(db) as store:
        gone = store.resolve(GONE)
        assert store.sealer is not None
        wrapped = store.sealer.keyring.db.execute(  # the key block holding their key
            "SELECT b.blob FROM user_keys u JOIN key_blocks b ON b.block = u.block "
            "WHERE u.user_id = ?", (gone,)).fetchone()[0]
    with open_store(db, writer=True) as store:
        receipt = forget(Engine(None, store), GONE)
    assert receipt["removed"]["keys_destroyed"] == 1
    assert not any(bytes(wrapped) in p.read_bytes() for p in db.rglob("keyring.sqlite*"))
    with open_store(db) as store:
        assert store.sealer is not None
        assert gone not in dict(store.sealer.keyring.identities())
        assert store.resolve(KEPT) in dict(store.sealer.keyring.identities())

    for f in db.glob("keyring.sqlite*"):  # the old copy, opened with today's keyring
        shutil.copy(f, backup / f.name)
    with open_store(backup) as old:
        log = old.events()
        mine = log.filter(pl.col("user_id") == gone)
        theirs = log.filter(pl.col("user_id") == old.resolve(KEPT))
        letters = {d["user_id"]: d["raw"] for d in old.dead_letters()}
    assert mine.height == sum(e["user_id"] == GONE for e in events), "the rows are there"
    assert mine["text"].null_count() == mine.height, "but nothing personal can be read"
    assert mine["lat"].null_count() == mine.height
    assert KEPT_TEXT in theirs["text"].to_list(), "other users' fields still open"
    assert theirs["lat"].null_count() < theirs.height
    assert letters[gone] is None, "the user's dead letter is shredded too"


def test_wrong_or_missing_master_key_is_refused(tmp_path: Path, keys: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "db"
    _build(db, _files(tmp_path, _events(random.Random(1))[:40]), private=True)
    monkeypatch.setenv(MASTER_ENV, "00" * 32)
    with pytest.raises(StoreError, match="master key given is not the one"):
        open_store(db)
    monkeypatch.delenv(MASTER_ENV)
    monkeypatch.setenv(MASTER_FILE_ENV, str(tmp_path / "absent.key"))
    with pytest.raises(StoreError, match="give its master key"):
        open_store(db)
    monkeypatch.setenv(MASTER_ENV, "not hex")
    with pytest.raises(StoreError, match="64 hex digits"):
        open_store(db)


def test_a_sealed_row_opens_only_under_its_own_users_key(tmp_path: Path, keys: Path
                                                         ) -> None:
    db = tmp_path / "db"
    _build(db, _files(tmp_path, _personal(_events(random.Random(2)))), private=True)
    with open_store(db, writer=True) as store:
        assert store.sealer is not None
        a, b = store.resolve(GONE), store.resolve(KEPT)
        before = store.events([GONE, KEPT])
        assert before["text"].null_count() < before.height
        rows = {u: store.db.execute("SELECT rowid, blob FROM vault WHERE user_id = ?",
                                    (u,)).fetchall() for u in (a, b)}
        store.db.executemany("UPDATE vault SET user_id = ? WHERE rowid = ?",
                             [(b, r) for r, _ in rows[a]] + [(a, r) for r, _ in rows[b]])
        after = store.events([GONE, KEPT])
    assert after["text"].null_count() == after.height, "swapped blobs open for no one"
    assert after["lat"].null_count() == after.height
    assert after.drop("text", "lat", "lon", "attrs").equals(
        before.drop("text", "lat", "lon", "attrs"))


def test_rotate_master_rewraps_every_key_and_only_the_new_key_opens(
        tmp_path: Path, keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "db"
    _build(db, _files(tmp_path, _personal(_events(random.Random(4)))), private=True)
    before = _log(db)
    portrait = str(Path(sys.executable).with_name("portrait"))
    run = subprocess.run([portrait, "keys", "rotate-master", "--db", str(db)],
                         capture_output=True, text=True, env=os.environ.copy(), check=True)
    receipt = json.loads(run.stdout)
    assert receipt["data_keys_rewrapped"] == len(USERS)
    assert receipt["key_file"] == str(keys / "master.key")
    new = (keys / "master.key").read_text().strip()
    assert new != MASTER
    assert len(bytes.fromhex(new)) == 32
    assert not (keys / "master.key.new").exists()
    assert _log(db).equals(before), "every field opens with the new key"
    monkeypatch.setenv(MASTER_ENV, MASTER)
    with pytest.raises(StoreError, match="not the one"):
        open_store(db)
    monkeypatch.setenv(MASTER_ENV, new)
    with open_store(db) as store, pytest.raises(UsageError, match="new-key-file"):
        rotate_master(store)


def test_rekey_moves_every_user_to_a_new_pseudonym_and_keeps_every_profile(
        tmp_path: Path, keys: Path) -> None:
    events = _personal(_events(random.Random(9)))
    db = tmp_path / "db"
    _build(db, _files(tmp_path, events), private=True)
    old = Pseudonymizer(PSEUDO_KEY.encode())
    frame = pl.DataFrame([{"user_id": old.one(e["user_id"]), "item_id": e["item_id"],
                           "weight": 1.0} for e in events])
    ModelRegistry(db / "models").save("als", ALSModel(ALSParams(factors=4, iterations=3))
                                      .fit(frame))
    profiles, log = _profiles(db), _log(db)
    with open_store(db) as store:
        members = Engine(None, store).segment_members("big_spender")
        letters = len(store.dead_letters())
    assert members

    with open_store(db, writer=True) as store:
        receipt = rekey_pseudonyms(store)
    assert receipt["users"] == len(USERS)
    assert receipt["model_versions"] == 1
    key = load_key()
    assert key is not None
    assert key != PSEUDO_KEY.encode()
    new = Pseudonymizer(key)

    _same(_profiles(db), profiles)
    assert _log(db).equals(log)
    with open_store(db) as store:
        assert sorted(Engine(None, store).segment_members("big_spender")) == sorted(
            new.one(old_member_raw) for old_member_raw in
            [u for u in USERS if old.one(u) in members])
        dead = store.dead_letters()
        assert len(dead) == letters
        assert new.one(GONE) in str(dead[0]["raw"])
    assert sorted(ModelRegistry(db / "models").load("als", ALSModel).user_ids) == sorted(
        new.one(u) for u in USERS)
    stale = {u: old.one(u).encode() for u in USERS}
    assert _scan(db, stale) == set(), "no old pseudonym is left in any byte"
    fresh = {u: new.one(u).encode() for u in USERS}
    assert _scan(db, fresh) == set(fresh), "the scan finds the new ones"
    with open_store(db, writer=True) as store:  # the store keeps working under the new key
        receipt = forget(Engine(None, store), KEPT)
        assert receipt["removed"]["keys_destroyed"] == 1
        assert receipt["removed"]["events"] > 0


def test_retention_reseals_the_vault_without_the_purged_events(tmp_path: Path, keys: Path
                                                               ) -> None:
    events = _personal(_events(random.Random(6)))
    files = _files(tmp_path, events)
    plain, private = tmp_path / "plain", tmp_path / "private"
    _build(plain, files, private=False)
    _build(private, files, private=True)
    with open_store(private) as store:
        everything = store.sealer.entries(store._vault_rows(None)) if store.sealer else None
    assert everything is not None
    cutoff = int(everything["ts"].median())  # about half of the sealed events go
    for db in (plain, private):
        with open_store(db, writer=True) as store:
            assert store.purge_before(cutoff)["events"] > 0
    assert _log(private).equals(_log(plain))
    with open_store(private) as store:
        assert store.sealer is not None
        left = store.sealer.entries(store._vault_rows(None))
    assert left.height > 0
    assert left["ts"].min() >= cutoff, "no purged event's fields are left in the vault"
    assert left.height == everything.filter(pl.col("ts") >= cutoff).height
