"""The bad-input corpus, end to end through the installed ``portrait ingest``.

Every kind of broken record (DESIGN.md, "Event contract (v1)") sits between
good ones in JSONL, CSV and Parquet files that are ingested in one command.
The run must exit 0; every bad record must be in ``deadletters --json`` with
its line, its raw text and a reason that names the offending field; every
good record must be in the profiles; nothing may crash. Empty files ingest
nothing, and a directory or a missing file is a clear exit-2 error.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import portrait
from portrait.engine import Engine
from portrait.store import open_store

PORTRAIT = str(Path(sys.executable).with_name("portrait"))
SPEC = Path(portrait.__file__).parent / "data" / "spec.yaml"
TS = "2024-03-01T10:00:00Z"
MB = 1 << 20


@dataclass
class Rec:
    """One line (JSONL), row (CSV, header excluded) or row (Parquet) of a corpus file.

    ``fields``: None for a good record; else the tokens one of which the
    reason must name (``"price"`` -> the reason contains ``"price:"``).
    """

    data: Any
    user: str | None = None
    fields: tuple[str, ...] | None = None


def good(user: str, **extra: Any) -> Rec:
    return Rec({"user_id": user, "ts": TS, "type": "view", **extra}, user)


def bad(data: Any, *fields: str) -> Rec:
    return Rec(data, None, fields)


def jl(**kw: Any) -> bytes:
    return json.dumps({"ts": TS, "type": "view", **kw}).encode()


JSONL: list[Rec] = [
    good("j_good"),
    bad(b'{"user_id": "x", "ts": ', "json"),
    bad(b"[1, 2, 3]", "record"),
    bad(b'"just a string"', "record"),
    bad(b"42", "record"),
    bad(b"null", "record"),
    bad(jl(user_id=123), "user_id"),
    bad(jl(user_id="x", price="12.5"), "price"),
    bad(jl(user_id="x", price=True), "price"),
    bad(json.dumps({"user_id": "x", "ts": True, "type": "view"}).encode(), "ts"),
    bad(jl(user_id="x", type=7), "type"),
    bad(jl(user_id="x", quantity="2"), "quantity"),
    bad(jl(user_id="x", attrs=[1, 2]), "attrs"),
    good("j_good", type="purchase", price=0, quantity=1),
    bad(json.dumps({"ts": TS, "type": "view"}).encode(), "user_id"),
    bad(json.dumps({"user_id": "x", "type": "view"}).encode(), "ts"),
    bad(json.dumps({"user_id": "x", "ts": TS}).encode(), "type"),
    bad(jl(user_id=""), "user_id"),
    bad(jl(user_id="   "), "user_id"),
    bad(jl(user_id="x", type=""), "type"),
    bad(jl(user_id="x", ts=""), "ts"),
    bad(b'{"user_id": "x", "ts": "2024-03-01T10:00:00Z", "type": "view", "price": NaN}',
        "price", "json"),
    bad(b'{"user_id": "x", "ts": "2024-03-01T10:00:00Z", "type": "view", "price": Infinity}',
        "price", "json"),
    bad(b'{"user_id": "x", "ts": "2024-03-01T10:00:00Z", "type": "view", "price": -Infinity}',
        "price", "json"),
    bad(b'{"user_id": "x", "ts": "2024-03-01T10:00:00Z", "type": "view", "price": 1e400}',
        "price", "json"),
    bad(jl(user_id="x", price=-5), "price"),
    bad(jl(user_id="x", price=-0.01), "price"),
    bad(jl(user_id="x", quantity=0), "quantity"),
    bad(jl(user_id="x", quantity=-1), "quantity"),
    bad(jl(user_id="x", quantity=1.5), "quantity"),
    bad(jl(user_id="x", ts="2024-02-30T10:00:00Z"), "ts"),
    bad(jl(user_id="x", ts="2023-02-29"), "ts"),
    bad(jl(user_id="x", ts="2024-13-01T00:00:00Z"), "ts"),
    bad(jl(user_id="x", ts="2024-03-01T24:00:01Z"), "ts"),
    bad(jl(user_id="x", ts="2024-03-01T10:00:00"), "ts"),
    bad(jl(user_id="x", ts="yesterday"), "ts"),
    bad(jl(user_id="x", ts=1e20), "ts"),
    bad(jl(user_id="x", ts=float("nan")).replace(b"NaN", b'"NaN"'), "ts"),
    good("j_late", ts="2023-12-31T23:59:59+14:00"),
    bad(jl(user_id="x", type="review", text="t" * MB), "text"),
    bad(jl(user_id="u" * MB), "user_id"),
    bad(jl(user_id="x", category="c" * 5000), "category"),
    bad(b'{"user_id": "x\xff\xfe", "ts": "2024-03-01T10:00:00Z", "type": "view"}',
        "record", "user_id"),
    bad(b'{"user_id": "x\\ud800", "ts": "2024-03-01T10:00:00Z", "type": "view"}',
        "json", "user_id"),
    bad(jl(user_id="x", lat=91), "lat"),
    bad(jl(user_id="x", lon=-180.5), "lon"),
    bad(jl(user_id="x", bogus=1), "bogus"),
    bad(b"[" * 5000 + b"]" * 5000, "json", "record"),
    bad(b"\x00\x01\x02 binary junk", "json", "record"),
    Rec(b"   ", None, None),  # a blank line: skipped, neither event nor dead letter
    good("j_good", type="rating", rating=4.5, lat=-90, lon=180, attrs={"b": [1], "a": None}),
    good("j_weird \u00e9\u4e2d\U0001f600", category="\u00e9t\u00e9"),
]

CSV_HEADER = b"user_id,ts,type,price,quantity,text"
CSV: list[Rec] = [
    Rec(b"c_good,2024-03-01T10:00:00Z,view,,,", "c_good"),
    bad(b"x,2024-03-01T10:00:00Z,purchase,abc,1,", "price"),
    bad(b"x,2024-03-01T10:00:00Z,purchase,NaN,1,", "price"),
    bad(b"x,2024-03-01T10:00:00Z,purchase,inf,1,", "price"),
    bad(b"x,2024-03-01T10:00:00Z,purchase,-inf,1,", "price"),
    bad(b"x,2024-03-01T10:00:00Z,purchase,-1,1,", "price"),
    bad(b"x,2024-03-01T10:00:00Z,purchase,2,0,", "quantity"),
    bad(b"x,2024-03-01T10:00:00Z,purchase,2,two,", "quantity"),
    bad(b"x,2024-03-01T10:00:00Z,view,,", "record"),  # a missing column
    bad(b"x,2024-03-01T10:00:00Z,view,,,,", "record"),  # one too many
    bad(b",2024-03-01T10:00:00Z,view,,,", "user_id"),
    bad(b"x,,view,,,", "ts"),
    bad(b"x,2024-03-01T10:00:00Z,,,,", "type"),
    bad(b"x,2023-13-01T00:00:00Z,view,,,", "ts"),
    bad(b"x,2024-04-31,view,,,", "ts"),
    bad(b"x\xff,2024-03-01T10:00:00Z,view,,,", "record", "user_id"),
    Rec(b'c_good,1709287200,review,,,"a, ""quoted""\nmulti-line text"', "c_good"),
    # "record" too: see test_csv_reason_does_not_depend_on_other_rows_of_the_batch
    bad(b"x,2024-03-01T10:00:00Z,review,,," + b"y" * MB, "text", "record"),
    Rec(b"", None, None),  # a blank line
    Rec(b"c_other,1709287200000,purchase,9.5,3,", "c_other"),
]

PARQUET: list[Rec] = [
    Rec({"user_id": "p_good", "ts": TS, "type": "view", "price": 1.0, "quantity": 1}, "p_good"),
    bad({"user_id": "", "ts": TS, "type": "view", "price": 1.0, "quantity": 1}, "user_id"),
    bad({"user_id": None, "ts": TS, "type": "view", "price": 1.0, "quantity": 1}, "user_id"),
    bad({"user_id": "x", "ts": TS, "type": "view", "price": float("nan"), "quantity": 1}, "price"),
    bad({"user_id": "x", "ts": TS, "type": "view", "price": float("inf"), "quantity": 1}, "price"),
    bad({"user_id": "x", "ts": TS, "type": "view", "price": -3.0, "quantity": 1}, "price"),
    bad({"user_id": "x", "ts": TS, "type": "view", "price": 1.0, "quantity": 0}, "quantity"),
    bad({"user_id": "x", "ts": "2024-02-30T00:00:00Z", "type": "view", "price": 1.0,
         "quantity": 1}, "ts"),
    bad({"user_id": "x", "ts": None, "type": "view", "price": 1.0, "quantity": 1}, "ts"),
    bad({"user_id": "x", "ts": TS, "type": None, "price": 1.0, "quantity": 1}, "type"),
    bad({"user_id": "x" * 300, "ts": TS, "type": "view", "price": 1.0, "quantity": 1}, "user_id"),
    Rec({"user_id": "p_good", "ts": TS, "type": "purchase", "price": 0.0, "quantity": 2},
        "p_good"),
]


# ---------------------------------------------------------------- helpers


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([PORTRAIT, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def flat(text: str | Path) -> str:
    return re.sub(r"\s+", "", str(text))


def write_jsonl(path: Path, recs: list[Rec]) -> dict[int, Rec]:
    lines = [r.data if isinstance(r.data, bytes) else json.dumps(r.data).encode() for r in recs]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return {i + 1: r for i, r in enumerate(recs)}


def write_csv(path: Path, recs: list[Rec]) -> dict[int, Rec]:
    """Records keyed by the physical line they start on (the header is line 1)."""
    out, line, by_line = [CSV_HEADER], 2, {}
    for r in recs:
        by_line[line] = r
        out.append(r.data)
        line += r.data.count(b"\n") + 1
    path.write_bytes(b"\n".join(out) + b"\n")
    return by_line


def write_parquet(path: Path, recs: list[Rec]) -> dict[int, Rec]:
    schema = {"user_id": pl.String, "ts": pl.String, "type": pl.String, "price": pl.Float64,
              "quantity": pl.Int64}
    pl.DataFrame([r.data for r in recs], schema=schema).write_parquet(path)
    return {i + 1: r for i, r in enumerate(recs)}


def raw_of(rec: Rec) -> str | None:
    """The raw text a dead letter must keep (JSONL/CSV: the line as read)."""
    if isinstance(rec.data, bytes):
        return rec.data.decode("utf-8", "backslashreplace")
    return None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("corpus")
    files = {
        root / "bad.jsonl": write_jsonl(root / "bad.jsonl", JSONL),
        root / "bad.csv": write_csv(root / "bad.csv", CSV),
        root / "bad.parquet": write_parquet(root / "bad.parquet", PARQUET),
    }
    db = root / "db"
    # small batches: clean runs take the vectorised paths, dirty ones the slow paths
    proc = cli("ingest", *files, "--spec", SPEC, "--db", db, "--batch-size", "4")
    letters = cli("deadletters", "--db", db, "--json")
    return {"files": files, "db": db, "proc": proc, "letters": letters}


# ---------------------------------------------------------------- tests


def test_bad_records_do_not_stop_the_run(corpus: dict[str, Any]) -> None:
    proc = corpus["proc"]
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    recs = [r for by_line in corpus["files"].values() for r in by_line.values()]
    assert summary["accepted"] == sum(r.user is not None for r in recs)
    assert summary["rejected"] == sum(r.fields is not None for r in recs)
    assert summary["duplicates"] == 0


def test_every_bad_record_is_a_dead_letter_naming_its_line_and_field(
    corpus: dict[str, Any]
) -> None:
    assert corpus["letters"].returncode == 0, corpus["letters"].stderr
    letters = json.loads(corpus["letters"].stdout)
    found = {(d["source"], d["line"]): d for d in letters}
    assert len(found) == len(letters), "a record is dead-lettered twice"
    problems = []
    for path, by_line in corpus["files"].items():
        expected = {line for line, r in by_line.items() if r.fields is not None}
        got = {line for (src, line) in found if src == str(path)}
        if got != expected:
            problems.append(f"{path.name}: missing {sorted(expected - got)}, "
                            f"unexpected {sorted(got - expected)}")
        for line in sorted(expected & got):
            rec, d = by_line[line], found[(str(path), line)]
            assert rec.fields is not None
            if not any(f"{f}:" in d["reason"] for f in rec.fields):
                problems.append(f"{path.name}:{line}: reason {d['reason'][:120]!r} names none "
                                f"of {rec.fields}")
            raw = raw_of(rec)
            if raw is not None and d["raw"] != raw:
                problems.append(f"{path.name}:{line}: raw {d['raw'][:80]!r} != {raw[:80]!r}")
            if raw is None and not d["raw"]:
                problems.append(f"{path.name}:{line}: empty raw")
    assert not problems, "\n".join(problems)


def test_good_records_are_in_the_profiles(corpus: dict[str, Any]) -> None:
    counts = Counter(
        r.user for by_line in corpus["files"].values() for r in by_line.values() if r.user
    )
    with open_store(corpus["db"]) as store:
        values = Engine(None, store).read_at()
        meta = store.meta()
    assert dict(zip(values["user_id"], values["events_total"], strict=True)) == counts
    assert meta.users == len(counts)
    assert meta.watermark is not None
    proc = cli("profile", "j_good", "--db", corpus["db"], "--json")
    assert proc.returncode == 0, proc.stderr
    profile = json.loads(proc.stdout)
    assert profile["features"]["events_total"] == 3
    assert profile["features"]["avg_rating"] == 4.5
    late = cli("profile", "j_late", "--db", corpus["db"], "--json")
    assert json.loads(late.stdout)["features"]["first_seen"] == "2023-12-31T09:59:59Z"


def test_reingesting_the_corpus_adds_no_dead_letters(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    db = tmp_path / "db"
    files = list(corpus["files"])
    first = json.loads(cli("ingest", *files, "--spec", SPEC, "--db", db).stdout)
    again = cli("ingest", *files, "--db", db)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["accepted"], summary["duplicates"]) == (0, first["accepted"])
    letters = json.loads(cli("deadletters", "--db", db, "--json").stdout)
    assert len(letters) == first["rejected"]


def test_empty_files_ingest_nothing(tmp_path: Path) -> None:
    files = [tmp_path / "empty.jsonl", tmp_path / "empty.csv", tmp_path / "empty.parquet",
             tmp_path / "blank.jsonl", tmp_path / "header_only.csv",
             tmp_path / "no_rows.parquet"]
    for f in files[:3]:
        f.write_bytes(b"")
    (tmp_path / "blank.jsonl").write_bytes(b"\n  \n\r\n")
    (tmp_path / "header_only.csv").write_bytes(CSV_HEADER + b"\n")
    pl.DataFrame(schema={"user_id": pl.String, "ts": pl.String, "type": pl.String}).write_parquet(
        tmp_path / "no_rows.parquet")
    db = tmp_path / "db"
    proc = cli("ingest", *files, "--spec", SPEC, "--db", db)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary == {"accepted": 0, "rejected": 0, "duplicates": 0, "watermark": None}
    with open_store(db) as store:
        meta = store.meta()
        assert (meta.accepted, meta.rejected, meta.users) == (0, 0, 0)
        assert store.dead_letters() == []
    assert json.loads(cli("deadletters", "--db", db, "--json").stdout) == []


def test_directory_and_missing_file_exit_2_with_clear_message(tmp_path: Path) -> None:
    good_file = tmp_path / "good.jsonl"
    write_jsonl(good_file, [good("g")])
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    missing = tmp_path / "missing.parquet"
    for culprit, words in ((folder, "directory"), (missing, "no such file")):
        proc = cli("ingest", good_file, culprit, "--spec", SPEC, "--db", tmp_path / "db")
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert proc.stdout == ""
        assert "Traceback" not in proc.stderr
        assert flat(culprit) in flat(proc.stderr), proc.stderr
        assert flat(words) in flat(proc.stderr.lower()) or "notaregularfile" in flat(proc.stderr)


def test_parquet_bad_times_in_a_batch_that_spans_row_groups(tmp_path: Path) -> None:
    """Regression: a Parquet batch that spans two row groups comes out of pyarrow in two
    chunks; with two impossible dates in it, validation died with a Polars panic
    (``assertion failed: i < self.len()``) instead of dead-lettering them."""
    rows = [{"user_id": f"u{i}", "ts": TS, "type": "view"} for i in range(6)]
    rows[4]["ts"] = rows[5]["ts"] = "2024-02-30T10:00:00Z"
    path = tmp_path / "groups.parquet"
    pl.DataFrame(rows).write_parquet(path, row_group_size=4)
    db = tmp_path / "db"
    proc = cli("ingest", path, "--spec", SPEC, "--db", db, "--batch-size", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["accepted"] == 4
    letters = json.loads(cli("deadletters", "--db", db, "--json").stdout)
    assert [(d["line"], d["reason"][:3]) for d in letters] == [(5, "ts:"), (6, "ts:")]


def test_csv_reason_does_not_depend_on_other_rows_of_the_batch(tmp_path: Path) -> None:
    """Regression: a 1 MB CSV cell was reported as ``text: too long`` when no record of
    the same batch had a quote character, but as ``record: malformed CSV (field larger
    than field limit)`` when one had: the reason depended on unrelated records."""
    big = b"x,2024-03-01T10:00:00Z,review,,," + b"y" * MB
    quoted = b'q,2024-03-01T10:00:00Z,review,,,"hello, world"'
    reasons = []
    for name, rows in (("plain.csv", [big]), ("quoted.csv", [big, quoted])):
        path = tmp_path / name
        path.write_bytes(b"\n".join([CSV_HEADER, *rows]) + b"\n")
        proc = cli("ingest", path, "--spec", SPEC, "--db", tmp_path / name.replace(".", "_"))
        assert proc.returncode == 0, proc.stderr
        letters = json.loads(cli("deadletters", "--db", tmp_path / name.replace(".", "_"),
                                 "--json").stdout)
        reasons.append(letters[0]["reason"])
    assert reasons[0] == reasons[1]
    assert reasons[0].startswith("text:"), reasons
