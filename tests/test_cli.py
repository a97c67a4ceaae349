"""The command line through the installed ``portrait`` entry point (DESIGN.md, "Command line (v1)").

Every test runs the ``portrait`` script installed next to ``sys.executable``
in a subprocess, exactly as a user would: exit codes, stdout JSON shapes and
stderr messages are the contract under test.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import portrait
from portrait.engine import Engine
from portrait.store import open_store

PORTRAIT = str(Path(sys.executable).with_name("portrait"))
SPEC = Path(portrait.__file__).parent / "data" / "spec.yaml"
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?Z$")
SUMMARY_KEYS = {"accepted", "rejected", "duplicates", "watermark"}
PROFILE_KEYS = {"user_id", "as_of", "features", "segments"}
FEATURES = [
    "events_total", "purchases_30d", "spend_total", "avg_rating", "max_price", "first_seen",
    "last_seen", "last_item", "distinct_items", "top_categories", "category_affinity", "activity",
]
KEYED = {"top_categories", "category_affinity"}

# The small shop of most tests: 7 good events of 3 users, 2 bad records (lines 8, 9).
EVENTS: list[dict[str, Any]] = [
    {"event_id": "a1", "user_id": "alice", "ts": "2024-03-01T10:00:00Z", "type": "view",
     "item_id": "i1", "category": "Sci-Fi"},
    {"event_id": "a2", "user_id": "alice", "ts": "2024-03-02T10:00:00Z", "type": "purchase",
     "item_id": "i2", "category": "Sci-Fi", "price": 60, "quantity": 1},
    {"event_id": "a3", "user_id": "alice", "ts": "2024-03-03T10:00:00Z", "type": "purchase",
     "item_id": "i3", "category": "Books", "price": 50, "quantity": 2},
    {"event_id": "a4", "user_id": "alice", "ts": "2024-03-04T10:00:00Z", "type": "rating",
     "item_id": "i1", "rating": 4},
    {"event_id": "b1", "user_id": "bob", "ts": "2024-03-01T12:00:00Z", "type": "view",
     "item_id": "i1", "category": "Books"},
    {"event_id": "b2", "user_id": "bob", "ts": "2024-03-02T12:00:00Z", "type": "view",
     "item_id": "i4", "category": "Drama"},
    {"event_id": "c1", "user_id": "carol", "ts": "2024-03-05T08:30:00.25Z", "type": "purchase",
     "item_id": "i5", "category": "Toys", "price": 10, "quantity": 1},
]
BAD_LINES = [
    '{"event_id": "x1", "user_id": "bob", "ts": "2024-03-02T13:00:00Z", "type": "purchase", '
    '"price": -5}',
    '{"event_id": "x2", "user_id": "bob", "type": "view"}',
]
WATERMARK = "2024-03-05T08:30:00.250000Z"


# ---------------------------------------------------------------- helpers


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``portrait`` script; COLUMNS/LINES removed so output is reproducible."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [PORTRAIT, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
        timeout=300, check=False,
    )


def ok_json(*args: str | Path) -> Any:
    proc = cli(*args)
    assert proc.returncode == 0, f"portrait {args} exited {proc.returncode}: {proc.stderr}"
    return json.loads(proc.stdout)


def flat(text: str | Path) -> str:
    """Text without any whitespace (to find a message however the terminal wrapped it)."""
    return re.sub(r"\s+", "", str(text))


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == "", f"errors belong on stderr, stdout had {proc.stdout!r}"
    assert "error" in proc.stderr.lower(), proc.stderr
    for needle in needles:
        assert flat(needle) in flat(proc.stderr), f"{needle!r} not in {proc.stderr!r}"


def write_jsonl(path: Path, rows: list[dict[str, Any]], extra_lines: list[str] = ()) -> Path:
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    cols = ["event_id", "user_id", "ts", "type", "item_id", "category", "price", "quantity",
            "rating"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r[c] for c in cols])
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    schema = {"event_id": pl.String, "user_id": pl.String, "ts": pl.String, "type": pl.String,
              "item_id": pl.String, "category": pl.String, "price": pl.Float64,
              "quantity": pl.Int64, "rating": pl.Float64}
    pl.DataFrame(rows, schema=schema).write_parquet(path)
    return path


def epoch_s(rfc3339: str) -> int:
    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp())


def all_profiles(db: Path) -> list[dict[str, Any]]:
    with open_store(db) as store:
        return Engine(None, store).read_at().sort("user_id").to_dicts()


def assert_close(a: Any, b: Any, where: str = "") -> None:
    """Equal, floats to relative 1e-9 (docs/semantics.md: sums differ by rounding only)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), where
    elif isinstance(a, dict) and isinstance(b, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The small shop ingested once into a db (read-only tests share it)."""
    root = tmp_path_factory.mktemp("shop")
    events = write_jsonl(root / "events.jsonl", EVENTS, BAD_LINES)
    db = root / "db"
    summary = ok_json("ingest", events, "--spec", SPEC, "--db", db)
    return {"root": root, "events": events, "db": db, "summary": summary}


# ---------------------------------------------------------------- ingest


def test_ingest_prints_exact_summary_and_exits_0_with_rejected_events(shop: dict[str, Any]) -> None:
    summary = shop["summary"]
    assert set(summary) == SUMMARY_KEYS
    assert summary == {"accepted": 7, "rejected": 2, "duplicates": 0, "watermark": WATERMARK}
    assert RFC3339_UTC.match(summary["watermark"])


def test_ingest_missing_file_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    proc = cli("ingest", missing, "--spec", SPEC, "--db", tmp_path / "db")
    assert_clean_error(proc, 2, str(missing))


def test_ingest_directory_exits_2_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "a_folder.jsonl"
    folder.mkdir()
    proc = cli("ingest", folder, "--spec", SPEC, "--db", tmp_path / "db")
    assert_clean_error(proc, 2, str(folder))


def test_ingest_missing_file_among_good_ones_ingests_nothing(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", EVENTS)
    missing = tmp_path / "nope.csv"
    proc = cli("ingest", good, missing, "--spec", SPEC, "--db", tmp_path / "db")
    assert_clean_error(proc, 2, str(missing))
    assert not (tmp_path / "db" / "portrait.sqlite").exists(), "arguments are checked first"


def test_ingest_bad_spec_exits_2_naming_spec_and_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad_spec.yaml"
    spec.write_text(
        "version: 1\nfeatures:\n  events_total: {kind: count}\n"
        "  spend: {kind: sum, field: no_such_field}\n"
    )
    events = write_jsonl(tmp_path / "e.jsonl", EVENTS)
    proc = cli("ingest", events, "--spec", spec, "--db", tmp_path / "db")
    assert_clean_error(proc, 2, f"{spec}:4", "no_such_field")


def test_ingest_bad_segment_rule_exits_2_naming_its_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad_rule.yaml"
    spec.write_text(
        "version: 1\nfeatures:\n  n: {kind: count}\nsegments:\n  busy: \"n >= \"\n"
    )
    events = write_jsonl(tmp_path / "e.jsonl", EVENTS)
    proc = cli("ingest", events, "--spec", spec, "--db", tmp_path / "db")
    assert_clean_error(proc, 2, f"{spec}:5")


def test_first_ingest_without_spec_is_a_clear_error(tmp_path: Path) -> None:
    events = write_jsonl(tmp_path / "e.jsonl", EVENTS)
    proc = cli("ingest", events, "--db", tmp_path / "db")
    assert_clean_error(proc, 2, "--spec")


def test_spec_is_remembered_after_first_ingest(tmp_path: Path) -> None:
    db = tmp_path / "db"
    ok_json("ingest", write_jsonl(tmp_path / "one.jsonl", EVENTS[:3]), "--spec", SPEC, "--db", db)
    summary = ok_json("ingest", write_jsonl(tmp_path / "two.jsonl", EVENTS[3:]), "--db", db)
    assert summary == {"accepted": 4, "rejected": 0, "duplicates": 0, "watermark": WATERMARK}


def test_reingest_same_file_is_all_duplicates_and_no_new_dead_letters(
    shop: dict[str, Any], tmp_path: Path
) -> None:
    db = tmp_path / "db"
    first = ok_json("ingest", shop["events"], "--spec", SPEC, "--db", db)
    letters = ok_json("deadletters", "--db", db, "--json")
    before = all_profiles(db)
    again = ok_json("ingest", shop["events"], "--db", db)
    assert again["accepted"] == 0
    assert again["duplicates"] == first["accepted"] + first["duplicates"]
    assert again["watermark"] == first["watermark"]
    assert ok_json("deadletters", "--db", db, "--json") == letters
    assert all_profiles(db) == before


def test_ingest_several_files_of_every_format_in_one_command(tmp_path: Path) -> None:
    """JSONL, JSONL.gz, CSV and Parquet in one command = the same events from one file.

    One event without ``event_id`` is written twice, with an RFC 3339 time in
    JSON and the same instant as epoch seconds in CSV: the same content, so
    the second copy is a duplicate.
    """
    no_id = {"user_id": "dave", "ts": "2024-03-03T00:00:00Z", "type": "purchase",
             "item_id": "i9", "category": "Toys", "price": 12.5, "quantity": 1}
    no_id_epoch = {**no_id, "ts": epoch_s(no_id["ts"])}
    parts = [
        write_jsonl(tmp_path / "p1.jsonl", [*EVENTS[:2], no_id]),
        write_jsonl(tmp_path / "p2.jsonl.gz", EVENTS[2:4]),
        write_csv(tmp_path / "p3.csv", [*EVENTS[4:6], no_id_epoch]),
        write_parquet(tmp_path / "p4.parquet", EVENTS[6:]),
    ]
    split = ok_json("ingest", *parts, "--spec", SPEC, "--db", tmp_path / "split")
    assert split == {"accepted": 8, "rejected": 0, "duplicates": 1, "watermark": WATERMARK}
    whole = ok_json("ingest", write_jsonl(tmp_path / "all.jsonl", [*EVENTS, no_id]),
                    "--spec", SPEC, "--db", tmp_path / "whole")
    assert whole == {**split, "duplicates": 0}
    assert_close(all_profiles(tmp_path / "split"), all_profiles(tmp_path / "whole"))


# ---------------------------------------------------------------- profile


def test_profile_json_has_exact_shape(shop: dict[str, Any]) -> None:
    p = ok_json("profile", "alice", "--db", shop["db"], "--json")
    assert set(p) == PROFILE_KEYS
    assert p["user_id"] == "alice"
    assert p["as_of"] == WATERMARK
    assert list(p["features"]) == FEATURES
    for name in KEYED:
        assert isinstance(p["features"][name], dict), name
    f = p["features"]
    assert f["events_total"] == 4
    assert f["purchases_30d"] == 2
    assert f["spend_total"] == 110
    assert f["avg_rating"] == 4
    assert f["max_price"] == 60
    assert f["first_seen"] == "2024-03-01T10:00:00Z"
    assert f["last_seen"] == "2024-03-04T10:00:00Z"
    assert f["last_item"] == "i1"
    assert f["distinct_items"] == 3
    assert f["top_categories"] == {"Sci-Fi": 2, "Books": 1}
    assert set(f["category_affinity"]) == {"Sci-Fi", "Books"}
    assert isinstance(f["activity"], float)
    assert RFC3339_UTC.match(f["first_seen"])
    assert RFC3339_UTC.match(f["last_seen"])
    assert p["segments"] == ["big_spender", "sci_fi_fan"]
    bob = ok_json("profile", "bob", "--db", shop["db"], "--json")
    assert bob["segments"] == []
    assert bob["features"]["avg_rating"] is None
    assert bob["features"]["events_total"] == 2, "the rejected bob events must not count"


def test_profile_at_time_travel_rfc3339_and_epoch(shop: dict[str, Any]) -> None:
    at = "2024-03-02T10:00:00Z"
    seconds = epoch_s(at)
    reads = [
        ok_json("profile", "alice", "--at", when, "--db", shop["db"], "--json")
        for when in ("2024-03-02T18:00:00+08:00", str(seconds), str(seconds * 1000))
    ]
    for p in reads:
        assert p == reads[0]
    p = reads[0]
    assert set(p) == PROFILE_KEYS
    assert p["as_of"] == at
    assert p["features"]["events_total"] == 2  # ts <= at, the purchase at `at` included
    assert p["features"]["spend_total"] == 60
    assert p["features"]["last_seen"] == at
    assert p["segments"] == ["sci_fi_fan"]  # one purchase is not a big spender yet
    later = ok_json("profile", "alice", "--at", "2030-01-01", "--db", shop["db"], "--json")
    assert later["features"]["events_total"] == 4
    assert later["as_of"] == "2030-01-01T00:00:00Z"


def test_profile_bad_at_exits_2(shop: dict[str, Any]) -> None:
    proc = cli("profile", "alice", "--at", "next tuesday", "--db", shop["db"], "--json")
    assert_clean_error(proc, 2, "next tuesday")


def test_profile_unknown_user_exits_1_with_clear_message(shop: dict[str, Any]) -> None:
    proc = cli("profile", "mallory", "--db", shop["db"], "--json")
    assert_clean_error(proc, 1, "unknown user", "mallory")


def test_profile_missing_db_exits_2(tmp_path: Path) -> None:
    proc = cli("profile", "alice", "--db", tmp_path / "nothing-here", "--json")
    assert_clean_error(proc, 2, str(tmp_path / "nothing-here"))
    assert not (tmp_path / "nothing-here").exists(), "a read must not create a database"


def test_profile_without_json_prints_a_table(shop: dict[str, Any]) -> None:
    proc = cli("profile", "alice", "--db", shop["db"])
    assert proc.returncode == 0, proc.stderr
    assert "events_total" in proc.stdout
    assert "big_spender" in proc.stdout


# ---------------------------------------------------------------- deadletters, segment


def test_deadletters_json_lists_source_line_reason_raw(shop: dict[str, Any]) -> None:
    letters = ok_json("deadletters", "--db", shop["db"], "--json")
    assert isinstance(letters, list)
    assert len(letters) == 2
    for d in letters:
        assert {"source", "line", "reason", "raw"} <= set(d), d
        assert d["source"] == str(shop["events"])
    assert [d["line"] for d in letters] == [8, 9]
    assert [d["raw"] for d in letters] == BAD_LINES
    assert letters[0]["reason"].startswith("price:"), letters[0]
    assert letters[1]["reason"].startswith("ts:"), letters[1]
    text = cli("deadletters", "--db", shop["db"])
    assert text.returncode == 0
    assert f"{shop['events']}:8: price:" in text.stdout


def test_segment_prints_one_member_per_line(shop: dict[str, Any], tmp_path: Path) -> None:
    proc = cli("segment", "big_spender", "--db", shop["db"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "alice\n"
    empty = cli("segment", "big_spender", "--at", "2024-03-02T10:00:00Z", "--db", shop["db"])
    assert (empty.returncode, empty.stdout) == (0, "")
    # several members: carol and bob become big spenders too
    more = [
        {"event_id": f"m{i}", "user_id": u, "ts": "2024-03-05T00:00:00Z", "type": "purchase",
         "price": 100} for i, u in enumerate(["bob", "bob", "carol"])
    ]
    db = tmp_path / "db"
    ok_json("ingest", shop["events"], write_jsonl(tmp_path / "more.jsonl", more), "--spec", SPEC,
            "--db", db)
    proc = cli("segment", "big_spender", "--db", db)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["alice", "bob", "carol"]


def test_segment_unknown_exits_1_naming_it(shop: dict[str, Any]) -> None:
    proc = cli("segment", "whales", "--db", shop["db"])
    assert_clean_error(proc, 1, "whales")


# ---------------------------------------------------------------- messages


def test_error_message_is_printed_whole_for_long_paths(tmp_path: Path) -> None:
    """Regression: errors were hard-wrapped at 80 columns when stderr is not a terminal,
    cutting a long file path in two (a script or log grep cannot find it)."""
    deep = tmp_path / ("d" * 60) / "events_of_a_rather_long_name_2024-03-01.jsonl"
    proc = cli("ingest", deep, "--spec", SPEC, "--db", tmp_path / "db")
    assert proc.returncode == 2
    assert str(deep) in proc.stderr, f"path not printed verbatim: {proc.stderr!r}"


def test_error_message_prints_brackets_verbatim(tmp_path: Path) -> None:
    """Regression: messages went through Rich markup, so ``[red]`` in a file name vanished
    and a user id like ``[/]`` crashed ``profile`` with a MarkupError traceback."""
    odd = tmp_path / "events[red].jsonl"
    proc = cli("ingest", odd, "--spec", SPEC, "--db", tmp_path / "db")
    assert proc.returncode == 2
    assert "events[red].jsonl" in proc.stderr, proc.stderr
    write_jsonl(tmp_path / "e.jsonl", EVENTS)
    ok_json("ingest", tmp_path / "e.jsonl", "--spec", SPEC, "--db", tmp_path / "db")
    for user in ("[/]", "[bold]x"):
        proc = cli("profile", user, "--db", tmp_path / "db", "--json")
        assert_clean_error(proc, 1, "unknown user")
        assert user in proc.stderr, proc.stderr


# ---------------------------------------------------------------- demo


def test_demo_runs_and_prints_profiles(tmp_path: Path) -> None:
    db = tmp_path / "demo"
    proc = cli("demo", "--sample", "--db", db)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for text in ("u001", "events_total", "spend_total", "big_spender", "dead letters"):
        assert text in proc.stdout, text
    p = ok_json("profile", "u001", "--db", db, "--json")
    assert set(p) == PROFILE_KEYS
    assert p["features"]["events_total"] > 0
