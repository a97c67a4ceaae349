"""Rule segments are re-evaluated whenever a profile changes; every entry and
exit is written, with its time and cause, to the store's change log."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import orjson
import polars as pl
from typer.testing import CliRunner

from portrait.cli import app
from portrait.engine.engine import Engine
from portrait.events.schema import EVENT_SCHEMA
from portrait.spec.loader import parse_spec
from portrait.store import open_store
from portrait.timeutil import format_us

T0 = 1_709_251_200_000_000  # 2024-03-01T00:00:00Z
HOUR = 3_600_000_000
DAY = 24 * HOUR

SPEC = """
version: 1
features:
  spend:   {kind: sum, field: price, where: {type: [purchase]}}
  heat:    {kind: decayed, half_life: 1d, weights: {view: 1}}
  views_1d: {kind: count, where: {type: [view]}, window: 1d}
segments:
  big_spender: "spend >= 100"
  hot:         "heat > 2.5"
  busy:        "views_1d >= 3"
"""


def ev(eid: str, user: str, ts: int, type_: str = "view", price: float | None = None
       ) -> dict[str, Any]:
    return {**dict.fromkeys(EVENT_SCHEMA), "event_id": eid, "user_id": user, "ts": ts,
            "type": type_, "price": price}


def frame(events: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(events, schema=EVENT_SCHEMA, orient="row")


def write_file(path: Path, events: list[dict[str, Any]]) -> Path:
    """JSONL with RFC 3339 times (files carry text or epoch seconds/ms, not µs)."""
    frame(events).with_columns(
        pl.col("ts").map_elements(format_us, return_dtype=pl.String)
    ).write_ndjson(path)
    return path


def log_rows(engine: Engine) -> list[tuple[Any, ...]]:
    log = engine.store.segment_changes()
    return [tuple(r) for r in log.select("ts", "user_id", "segment", "change", "cause").rows()]


def test_scripted_entries_and_exits(tmp_path: Path) -> None:
    with open_store(tmp_path / "db", writer=True) as store:
        engine = Engine(parse_spec(SPEC), store)
        # three views in an hour: hot (3 > 2.5 almost undecayed) and busy
        engine.ingest_events(frame([ev("v1", "u", T0), ev("v2", "u", T0 + HOUR // 2),
                                    ev("v3", "u", T0 + HOUR)]))
        t1 = T0 + HOUR
        assert log_rows(engine) == [
            (t1, "u", "busy", "enter", f"event v3 (view) at {format_us(t1)}"),
            (t1, "u", "hot", "enter", f"event v3 (view) at {format_us(t1)}"),
        ]
        # a purchase two days later: big spender; the views have decayed and left the window
        t2 = T0 + 2 * DAY
        engine.ingest_events(frame([ev("p1", "u", t2, "purchase", 150.0)]))
        assert log_rows(engine)[2:] == [
            (t2, "u", "big_spender", "enter", f"event p1 (purchase) at {format_us(t2)}"),
            (t2, "u", "busy", "exit", f"event p1 (purchase) at {format_us(t2)}"),
            (t2, "u", "hot", "exit", f"event p1 (purchase) at {format_us(t2)}"),
        ]
        # another user's event moves the watermark only: u is not re-evaluated
        engine.ingest_events(frame([ev("w1", "w", t2 + DAY)]))
        assert [r[1:4] for r in log_rows(engine)[5:]] == []
        assert sorted(store.memberships().select("user_id", "segment").rows()) == [
            ("u", "big_spender"),
        ]


def test_end_of_ingest_re_evaluates_everyone(tmp_path: Path) -> None:
    """Decay alone moves a user out: the exit is logged at the end of the ingest command."""
    first = write_file(tmp_path / "a.jsonl", [ev(f"v{i}", "u", T0 + i) for i in range(3)])
    second = write_file(tmp_path / "b.jsonl", [ev("w1", "w", T0 + 3 * DAY)])
    with open_store(tmp_path / "db", writer=True) as store:
        engine = Engine(parse_spec(SPEC), store)
        engine.ingest([first, second])
        log = log_rows(engine)
        assert [r[1:4] for r in log] == [
            ("u", "busy", "enter"), ("u", "hot", "enter"),
            ("u", "busy", "exit"), ("u", "hot", "exit"),
        ]
        assert log[-1][0] == T0 + 3 * DAY
        assert log[-1][4].startswith("re-evaluated at ")
        assert store.memberships().height == 0


def test_memberships_equal_the_rules_after_any_batching(tmp_path: Path) -> None:
    """After an ingest command, the stored memberships are exactly the segments read at
    the watermark, and the log alternates enter/exit per (user, segment), whatever the
    batch size."""
    rng = random.Random(7)
    rows = []
    for i in range(600):
        user = f"u{rng.randrange(30)}"
        ts = T0 + rng.randrange(10 * DAY)
        if rng.random() < 0.2:
            rows.append(ev(f"e{i}", user, ts, "purchase", rng.choice([20.0, 60.0])))
        else:
            rows.append(ev(f"e{i}", user, ts))
    data = write_file(tmp_path / "events.jsonl", rows)
    finals = []
    for batch in (25, 10_000):
        with open_store(tmp_path / f"db{batch}", writer=True) as store:
            engine = Engine(parse_spec(SPEC), store, batch_size=batch)
            engine.ingest([data])
            want = {
                (u, name) for name in engine.spec.segments for u in engine.segment_members(name)
            }
            got = set(store.memberships().select("user_id", "segment").rows())
            assert got == want
            log = store.segment_changes()
            for (_user, _seg), group in log.group_by("user_id", "segment"):
                changes = group.sort("seq")["change"].to_list()
                assert changes[0] == "enter"
                assert all(a != b for a, b in itertools.pairwise(changes))
                assert (changes[-1] == "enter") == ((_user, _seg) in got)
            finals.append(got)
    assert finals[0] == finals[1]
    assert finals[0]


def test_cli_prints_the_change_log(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    data = write_file(tmp_path / "a.jsonl", [ev(f"v{i}", "u", T0 + i) for i in range(3)])
    runner = CliRunner()
    db = str(tmp_path / "db")
    assert runner.invoke(app, ["ingest", str(data), "--spec", str(spec), "--db", db]).exit_code == 0
    got = runner.invoke(app, ["segment", "hot", "--changes", "--db", db])
    assert got.exit_code == 0, got.output
    rows = [orjson.loads(line) for line in got.stdout.splitlines()]
    assert [(r["user_id"], r["segment"], r["change"]) for r in rows] == [("u", "hot", "enter")]
    assert rows[0]["ts"] == format_us(T0 + 2)
    bad = runner.invoke(app, ["segment", "nope", "--changes", "--db", db])
    assert bad.exit_code != 0
    assert "unknown segment 'nope'" in bad.output


def test_small_batches_with_two_distinct_features_on_one_field(tmp_path: Path) -> None:
    """Regression (found by the MovieLens demo): two ``distinct`` features over the same
    field made the Python fold path build one text column twice. Both write paths must
    give the same profiles."""
    from portrait.spec.loader import parse_spec

    spec = parse_spec("""
version: 1
features:
  items: {kind: distinct, field: item_id}
  bought: {kind: distinct, field: item_id, where: {type: [purchase]}}
""")
    rows = [{"event_id": f"e{i}", "user_id": f"u{i % 3}", "ts": 1_700_000_000_000_000 + i,
             "type": "purchase" if i % 4 == 0 else "view", "item_id": f"i{i % 7}"}
            for i in range(40)]
    frame = pl.DataFrame([{**dict.fromkeys(EVENT_SCHEMA), **r} for r in rows],
                         schema=EVENT_SCHEMA, orient="row")
    profiles = []
    for row_max in (0, 10_000):  # the Polars frame path, the Python fold path
        with open_store(tmp_path / f"db{row_max}", writer=True) as store:
            engine = Engine(spec, store, row_batch_max=row_max)
            for start in range(0, 40, 8):
                engine.ingest_events(frame.slice(start, 8))
            profiles.append([engine.profile(f"u{i}") for i in range(3)])
    assert profiles[0] == profiles[1]
    assert profiles[1][0]["features"]["items"] == 7
