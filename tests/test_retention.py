"""Retention (`portrait retention AGE`): raw events older than ``watermark - AGE`` are
purged from the log; what that does to each feature kind (docs/semantics.md, "Retention"):

* profiles at the watermark are unchanged, for every kind: they are read from the
  states, which keep every event's contribution;
* reads before the watermark (time travel, history) are rebuilt from the log, so they
  now see only the retained events: they equal the reference profile computed over the
  retained events (windowed features whose window lies after the cutoff are therefore
  unchanged; counts, sums, distinct, top-k, decayed and first values count from the
  cutoff);
* an event older than the cutoff is refused with a dead letter naming ``ts`` (its raw
  row would be purged at once and a resent copy could not be recognised), also after
  the retention is turned off, for events before the last purge.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from portrait.engine.engine import Engine
from portrait.spec.loader import load_spec
from portrait.store import open_store
from portrait.timeutil import format_us, parse_duration, parse_rfc3339
from reference import reference_profile

SPEC = Path(__file__).resolve().parents[1] / "src" / "portrait" / "data" / "spec.yaml"
START = datetime(2023, 1, 1, tzinfo=UTC)
USERS = ["ann", "bob", "cy"]
PORTRAIT = str(Path(sys.executable).with_name("portrait"))


def _events() -> list[dict[str, Any]]:
    out = []
    for day in range(0, 700, 3):  # about two years, every user every third day
        for i, user in enumerate(USERS):
            kind = ("view", "purchase", "rating")[(day + i) % 3]
            ev: dict[str, Any] = {
                "event_id": f"{user}-{day}", "user_id": user,
                "ts": (START + timedelta(days=day, hours=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "type": kind, "item_id": f"it{(day * 7 + i) % 40}",
                "category": ("Sci-Fi", "Drama", "Books")[(day // 30 + i) % 3],
            }
            if kind == "purchase":
                ev["price"] = float(10 + day % 90)
            if kind == "rating":
                ev["rating"] = float(1 + day % 5)
            out.append(ev)
    return out


def _cli(*args: str) -> dict[str, Any]:
    run = subprocess.run([PORTRAIT, *args], capture_output=True, text=True, check=True)
    out: dict[str, Any] = json.loads(run.stdout)
    return out


def _as_reference(event: dict[str, Any]) -> dict[str, Any]:
    """An event as the reference implementation takes it (every field, ts in µs)."""
    fields = ("event_id", "user_id", "ts", "type", "item_id", "category", "price",
              "quantity", "rating", "text", "lat", "lon", "attrs")
    out = {f: event.get(f) for f in fields}
    out["ts"] = parse_rfc3339(event["ts"])
    return out


def test_retention_purges_raw_events_and_keeps_profiles(tmp_path: Path) -> None:
    events = _events()
    src = tmp_path / "events.jsonl"
    src.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    db = tmp_path / "db"
    with open_store(db, writer=True) as store:
        Engine(load_spec(SPEC), store).ingest([src])
    with open_store(db) as store:
        engine = Engine(None, store)
        wm = store.meta().watermark
        assert wm is not None
        now_before = {u: engine.profile(u) for u in USERS}

    got = _cli("retention", "365d", "--db", str(db))
    cutoff = wm - parse_duration("365d")
    old = [e for e in events if parse_rfc3339(e["ts"]) < cutoff]
    assert got["retention"] == "365d"
    assert got["purged_before"] == format_us(cutoff)
    assert got["purged"]["events"] == len(old) > 0

    retained = [_as_reference(e) for e in events if parse_rfc3339(e["ts"]) >= cutoff]
    spec = load_spec(SPEC)
    with open_store(db) as store:
        engine = Engine(None, store)
        log = store.events()
        assert log.height == len(retained)
        assert int(log["ts"].min()) >= cutoff  # type: ignore[arg-type]
        assert {u: engine.profile(u) for u in USERS} == now_before  # states keep everything
        for at in (cutoff + parse_duration("40d"), wm - parse_duration("1d")):
            for user in USERS:
                past = engine.profile(user, at)
                want = reference_profile(spec, retained, user, at)
                assert past["features"]["events_total"] == want["features"]["events_total"]
                assert past["features"]["purchases_30d"] == want["features"]["purchases_30d"]
                assert past["features"]["first_seen"] == want["features"]["first_seen"]
                assert past["features"]["top_categories"] == want["features"]["top_categories"]

    # too old: refused with a reason naming ts; the profile does not move
    late = dict(events[0], event_id="late-1")
    resent = old[-1]  # purged: a copy must not count twice
    fresh = dict(events[-1], event_id="new-1")
    again = tmp_path / "again.jsonl"
    again.write_text("\n".join(json.dumps(e) for e in (late, resent, fresh)) + "\n")
    with open_store(db, writer=True) as store:
        summary = Engine(None, store).ingest([again])
        assert (summary.accepted, summary.rejected) == (1, 2)
        letters = store.dead_letters()
        assert len(letters) == 2
        assert all("ts: before the retention cutoff" in str(d["reason"]) for d in letters)
        assert all(str(d["source"]).endswith("again.jsonl") for d in letters)

    # off: nothing more is purged, but what was purged stays unrecognisable, so refused
    assert _cli("retention", "off", "--db", str(db))["retention"] is None
    again2 = tmp_path / "again2.jsonl"
    again2.write_text(json.dumps(dict(resent, event_id=resent["event_id"])) + "\n")
    with open_store(db, writer=True) as store:
        assert Engine(None, store).ingest([again2]).rejected == 1


def test_retention_refused_arguments(tmp_path: Path) -> None:
    run = subprocess.run([PORTRAIT, "retention", "forever", "--db", str(tmp_path / "db")],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert "bad duration 'forever'" in run.stderr
