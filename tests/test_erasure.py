"""Erasure (`portrait forget`): nothing of the user is left in any byte of the store, and
what remains is exactly a store that never saw them.

One database gets events of a dozen users over several commits (so the user's rows sit
in several log and state files), a malformed record of the user (a dead letter), segment
entries and exits, and two saved ALS versions with the user's factors. After ``forget``:

* a byte scan of every file under the database directory (Parquet, SQLite and its WAL,
  model files) finds neither the raw user id nor the user's unique review text, while a
  control user's id and text are still found (the scan can find things);
* rebuilding a fresh store from the remaining log gives exactly the profiles of a store
  that never saw the user, and the erased store itself reads the same for everyone else
  (at its own watermark, which does not move back);
* the engine keeps working: the user can come back as new, and counters add up.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from portrait.engine.engine import Engine
from portrait.errors import UnknownUserError
from portrait.models.cf import ALSModel, ALSParams
from portrait.models.registry import ModelRegistry
from portrait.privacy.erasure import forget
from portrait.spec.loader import load_spec
from portrait.store import open_store

SPEC = Path(__file__).resolve().parents[1] / "src" / "portrait" / "data" / "spec.yaml"
GONE, KEPT = "erase-me-4471", "keep-me-0093"
GONE_TEXT, KEPT_TEXT = "zebra quokka marmalade 7781", "walrus origami lantern 5529"
USERS = [GONE, KEPT, *(f"u{i:02d}" for i in range(10))]
START = datetime(2024, 1, 1, tzinfo=UTC)


def _events(rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for i in range(400):
        user = USERS[i % len(USERS)]
        day = 1 + rng.randrange(60)
        kind = rng.choice(["view", "view", "click", "purchase", "review"])
        ev: dict[str, Any] = {"event_id": f"e{i:04d}-{user}", "user_id": user,
                              "ts": (START + timedelta(days=day, hours=rng.randrange(24)))
                              .strftime("%Y-%m-%dT%H:%M:%SZ"),
                              "type": kind, "item_id": f"i{rng.randrange(30)}",
                              "category": rng.choice(["Sci-Fi", "Drama", "Books"])}
        if kind == "purchase":
            ev["price"] = float(20 + rng.randrange(80))
        if kind == "review":
            ev["text"] = {GONE: GONE_TEXT, KEPT: KEPT_TEXT}.get(user, f"fine item {i}")
        out.append(ev)
    for user in (GONE, KEPT):  # big spenders and Sci-Fi fans near the end: segment entries
        out.extend({"event_id": f"buy{d}-{user}", "user_id": user, "ts": f"2024-02-2{d}T12:00:00Z",
                    "type": "purchase", "item_id": f"i{d}", "category": "Sci-Fi", "price": 80.0}
                   for d in range(3))
    return out


def _write(path: Path, events: list[dict[str, Any]], extra: list[str] = ()) -> Path:
    lines = [json.dumps(e) for e in events] + list(extra)
    path.write_text("\n".join(lines) + "\n")
    return path


def _ingest(db: Path, files: list[Path]) -> None:
    with open_store(db, writer=True) as store:
        engine = Engine(load_spec(SPEC), store, batch_size=60)
        for f in files:
            engine.ingest([f])


def _profiles(db: Path, users: list[str], at: int | None = None) -> dict[str, Any]:
    with open_store(db) as store:
        engine = Engine(None, store)
        return {u: engine.profile(u, at) for u in users}


def _save_models(db: Path, events: list[dict[str, Any]]) -> None:
    frame = pl.DataFrame([{"user_id": e["user_id"], "item_id": e["item_id"], "weight": 1.0}
                          for e in events])
    reg = ModelRegistry(db / "models")
    for seed in (1, 2):  # two versions: erasure must reach old ones too
        reg.save("als", ALSModel(ALSParams(factors=4, iterations=3, seed=seed))
                 .fit(frame))


def _scan(root: Path, needles: list[str]) -> dict[str, list[str]]:
    """needle -> files (relative) whose bytes contain it."""
    found: dict[str, list[str]] = {n: [] for n in needles}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for n in needles:
            if n.encode() in data:
                found[n].append(str(path.relative_to(root)))
    return found


def test_forget_leaves_no_byte_and_equals_a_store_that_never_saw_the_user(tmp_path: Path
                                                                          ) -> None:
    rng = random.Random(11)
    events = _events(rng)
    bad = json.dumps({"user_id": GONE, "ts": "not a time", "type": "view",
                      "text": GONE_TEXT})
    parts = [events[:150], events[150:300], events[300:]]
    files = [_write(tmp_path / f"part{i}.jsonl", p, [bad] if i == 1 else [])
             for i, p in enumerate(parts)]
    db = tmp_path / "db"
    _ingest(db, files)
    _save_models(db, events)
    never = tmp_path / "never"
    without = [[e for e in p if e["user_id"] != GONE] for p in parts]
    _ingest(never, [_write(tmp_path / f"never{i}.jsonl", p) for i, p in enumerate(without)])

    before = _scan(db, [GONE, GONE_TEXT, KEPT, KEPT_TEXT])
    assert before[GONE], "the user must be in the store before erasure"
    assert before[GONE_TEXT]
    with open_store(db) as store:
        assert store.segment_changes(user_id=GONE).height, "the user had segment changes"
        wm = store.meta().watermark

    with open_store(db, writer=True) as store:
        receipt = forget(Engine(None, store), GONE)
    removed = receipt["removed"]
    assert receipt["found"] is True
    assert removed["events"] == sum(e["user_id"] == GONE for e in events)
    assert removed["state_rows"] >= 1
    assert removed["dead_letters"] == 1
    assert removed["segment_changes"] >= 1
    assert removed["model_versions"] == 2

    after = _scan(db, [GONE, GONE_TEXT, KEPT, KEPT_TEXT])
    assert after[GONE] == [], f"raw id still in {after[GONE]}"
    assert after[GONE_TEXT] == [], f"the user's text still in {after[GONE_TEXT]}"
    assert after[KEPT], "the scan must still find another user's id"
    assert after[KEPT_TEXT], "the scan must still find another user's text"

    _check_remaining(db, tmp_path, events, never, wm)


def _check_remaining(db: Path, tmp_path: Path, events: list[dict[str, Any]], never: Path,
                     wm: int | None) -> None:
    """The erased store without the user, and equal to one that never saw them."""
    others = [u for u in USERS if u != GONE]
    with open_store(db) as store:
        engine = Engine(None, store)
        try:
            engine.profile(GONE)
            raise AssertionError("an erased user still has a profile")
        except UnknownUserError:
            pass
        log = store.events()
        assert GONE not in set(log["user_id"].to_list())
        assert store.meta().watermark == wm  # does not move back
        assert store.meta().users == len(others)
        assert store.dead_letters() == []
    assert sorted(ModelRegistry(db / "models").load("als", ALSModel).user_ids) == sorted(
        {e["user_id"] for e in events if e["user_id"] != GONE})

    # the remaining log, rebuilt from scratch, is a store that never saw the user
    rebuilt = tmp_path / "rebuilt"
    log.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC"))).write_parquet(
        tmp_path / "remaining.parquet")
    with open_store(rebuilt, writer=True) as store:
        Engine(load_spec(SPEC), store).ingest([tmp_path / "remaining.parquet"])
    _same(_profiles(rebuilt, others), _profiles(never, others))
    # ... and the erased store reads the same for everyone else at its own watermark
    _same(_profiles(db, others), _profiles(never, others, at=wm))


def _same(got: Any, want: Any, where: str = "") -> None:
    """Equal, floats to 1e-9 (sums of decayed values depend on batching in the last bits,
    docs/semantics.md), dict keys in the same order (ranked maps)."""
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        assert list(got) == list(want), where
        for k in want:
            _same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list), where
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, float), where
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), f"{where}: {got} {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def test_forget_cli_receipt_unknown_user_and_coming_back(tmp_path: Path) -> None:
    events = _events(random.Random(3))
    db = tmp_path / "db"
    _ingest(db, [_write(tmp_path / "a.jsonl", events)])
    portrait = str(Path(sys.executable).with_name("portrait"))
    run = subprocess.run([portrait, "forget", GONE, "--db", str(db)], capture_output=True,
                         text=True, check=True)
    receipt = json.loads(run.stdout)
    assert receipt["user_id"] == GONE
    assert receipt["found"] is True
    assert receipt["removed"]["events"] > 0
    again = json.loads(subprocess.run([portrait, "forget", GONE, "--db", str(db)],
                                      capture_output=True, text=True, check=True).stdout)
    assert again["found"] is False  # forgetting twice is not an error
    assert again["removed"]["events"] == 0
    # the user may come back: their old event ids are no longer "seen"
    mine = [e for e in events if e["user_id"] == GONE][:3]
    with open_store(db, writer=True) as store:
        summary = Engine(None, store).ingest([_write(tmp_path / "back.jsonl", mine)])
    assert summary.accepted == 3
    assert _profiles(db, [GONE])[GONE]["features"]["events_total"] == 3
