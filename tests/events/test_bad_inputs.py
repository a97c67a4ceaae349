"""A corpus of bad inputs mixed with good ones: every bad record is dead-lettered
with a reason naming its field and its line, every good one is kept, nothing raises
(except for files that cannot be used at all)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portrait.errors import SourceError
from portrait.events.readers import read_events
from portrait.events.schema import EVENT_COLUMNS
from portrait.events.validate import validate_records

MB = "x" * (1 << 20)

# (line bytes, field the reason must start with); None = a good line
JSONL_CORPUS: list[tuple[bytes, str | None]] = [
    (b'{"user_id":"g1","ts":"2024-01-01T00:00:00Z","type":"view","price":3}', None),
    (b'{"user_id":"b1","ts":"2024-01-01T00:00:00Z","type":"view"', "json: malformed JSON"),
    (b'{"user_id":"b2","ts":1704067200,"type":"view","price":NaN}', "json: malformed JSON"),
    (b'{"user_id":"b3","ts":1704067200,"type":"view","price":Infinity}', "json: malformed JSON"),
    (b'[{"user_id":"b4"}]', "record: must be a JSON object, got list"),
    (b'"just a string"', "record: must be a JSON object, got string"),
    (b"42", "record: must be a JSON object, got number"),
    (b"null", "record: must be a JSON object, got null"),
    (b'{"user_id":"g2","ts":1704067200000,"type":"CART","quantity":2.0}', None),
    (b'{"user_id":123,"ts":1704067200,"type":"view"}', "user_id: must be a string, got 123"),
    (b'{"user_id":"b6","ts":"1704067200","type":"view"}', "ts: not an RFC 3339 time"),
    (b'{"user_id":"b7","ts":1704067200,"type":"view","price":"12.5"}', "price: must be a number"),
    (
        b'{"user_id":"b8","ts":1704067200,"type":"view","price":-5}',
        "price: must be finite and >= 0, got -5",
    ),
    (
        b'{"user_id":"b9","ts":1704067200,"type":"view","quantity":0}',
        "quantity: must be an integer >= 1",
    ),
    (
        b'{"user_id":"b10","ts":1704067200,"type":"view","quantity":1.5}',
        "quantity: must be an integer",
    ),
    (b'{"ts":1704067200,"type":"view"}', "user_id: required field is missing"),
    (b'{"user_id":"b12","type":"view"}', "ts: required field is missing"),
    (b'{"user_id":"b13","ts":1704067200}', "type: required field is missing"),
    (b'{"user_id":"   ","ts":1704067200,"type":"view"}', "user_id: must be a non-empty string"),
    (b'{"user_id":"","ts":1704067200,"type":"view"}', "user_id: must be a non-empty string"),
    (b'{"user_id":"b16","ts":"2023-02-30","type":"view"}', "ts: impossible date or time"),
    (b'{"user_id":"b17","ts":"2023-13-01T00:00:00Z","type":"view"}', "ts: impossible date or time"),
    (b'{"user_id":"b18","ts":"2024-01-01T00:00:00","type":"view"}', "ts: no UTC offset"),
    (b'{"user_id":"b19","ts":1e15,"type":"view"}', "ts: epoch number must be finite"),
    (b'{"user_id":"b20","ts":true,"type":"view"}', "ts: must be an RFC 3339 string or an epoch"),
    (
        b'{"user_id":"b21","ts":1704067200,"type":"view","text":"' + MB.encode() + b'"}',
        "text: too long (max 65536 characters), got 1048576 characters",
    ),
    (
        b'{"user_id":"b22","ts":1704067200,"type":"view","item_id":"\xff\xfe"}',
        "record: invalid UTF-8 at byte 58",
    ),
    (b'{"user_id":"b23","ts":1704067200,"type":"view","colour":"red"}', "colour: unknown field"),
    (
        b'{"user_id":"b24","ts":1704067200,"type":"view","attrs":[1,2]}',
        "attrs: must be a JSON object",
    ),
    (
        b'{"user_id":"b25","ts":1704067200,"type":"view","lat":95}',
        "lat: must be finite and between -90 and 90",
    ),
    (b'{"user_id":"b26","ts":1704067200,"type":"view","rating":"5"}', "rating: must be a number"),
    (b'{"user_id":"b27","ts":1704067200,"type":"view"} trailing', "json: malformed JSON"),
    (b'{"user_id":"b28","ts":1704067200,"type":"view","user_id":"dup"}', None),  # last key wins
    (b'{"user_id":"b29","ts":1704067200,"type":"view","text":"\\ud800"}', "json: malformed JSON"),
    (b"", None),
    (b'{"user_id":"g3","ts":"2024-01-01","type":"purchase","attrs":{"b":1,"a":2}}', None),
    (b"{}", "user_id: required field is missing"),
]


def _good_ids(corpus: list[tuple[bytes, str | None]]) -> list[str]:
    ids = []
    for line, why in corpus:
        if why is None and line:
            ids.append(orjson.loads(line)["user_id"])
    return ids


@pytest.mark.parametrize("batch_size", [250_000, 4])
def test_jsonl_corpus(tmp_path: Path, batch_size: int) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in JSONL_CORPUS) + b"\n")
    batches = list(read_events(path, batch_size=batch_size))
    events = pl.concat([b.events for b in batches])
    rejects = {d.line: d for b in batches for d in b.rejects}
    assert events["user_id"].to_list() == _good_ids(JSONL_CORPUS)
    for line_no, (line, why) in enumerate(JSONL_CORPUS, start=1):
        if why is None:
            assert line_no not in rejects
            continue
        dead = rejects.pop(line_no)
        assert dead.reason.startswith(why), (line_no, dead.reason)
        assert dead.source == str(path)
        assert dead.raw == line.decode("utf-8", "backslashreplace")
        assert len(dead.reason) < 300
    assert rejects == {}


CSV_HEADER = "user_id,ts,type,price,text"
CSV_CORPUS: list[tuple[str, str | None]] = [
    ("g1,2024-01-01T00:00:00Z,view,3,fine", None),
    ("b1,2024-01-01T00:00:00Z,view,3", "record: expected 5 columns, got 4"),
    ("b2,2024-01-01T00:00:00Z,view,3,x,extra", "record: expected 5 columns, got 6"),
    ("b3,1704067200,view,-5,", "price: must be finite and >= 0, got -5"),
    ("b4,1704067200,view,nan,", "price: must be finite and >= 0, got NaN"),
    ("b5,1704067200,view,inf,", "price: must be finite and >= 0, got inf"),
    ("b6,1704067200,view,12.5.1,", "price: must be a number, got '12.5.1'"),
    (",1704067200,view,1,", "user_id: required field is missing"),
    ("b8,2023-02-30,view,1,", "ts: impossible date or time"),
    ("b9,,view,1,", "ts: required field is missing"),
    ("b10,1e15,view,1,", "ts: epoch number must be finite"),
    ("g2,1704067200000,VIEW,,", None),
    (
        f"b11,1704067200,view,1,{MB}",
        "text: too long (max 65536 characters), got 1048576 characters",
    ),
    ('g3,1704067200,view,1,"quoted, with comma"', None),
    ("", None),
    ("g4,2024-01-01,view,0,", None),
]


def test_csv_corpus(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("\n".join([CSV_HEADER, *(line for line, _ in CSV_CORPUS)]) + "\n")
    with path.open("ab") as f:  # invalid UTF-8 on the last line
        f.write(b"b12,1704067200,view,1,\xff\n")
    batches = list(read_events(path))
    events = pl.concat([b.events for b in batches])
    rejects = {d.line: d for b in batches for d in b.rejects}
    assert events["user_id"].to_list() == ["g1", "g2", "g3", "g4"]
    for line_no, (line, why) in enumerate(CSV_CORPUS, start=2):
        if why is None:
            assert line_no not in rejects
            continue
        dead = rejects.pop(line_no)
        assert dead.reason.startswith(why), (line_no, dead.reason)
        assert dead.raw == line
    last = rejects.pop(len(CSV_CORPUS) + 2)
    assert last.reason == "record: invalid UTF-8 at byte 22"
    assert last.raw == "b12,1704067200,view,1,\\xff"
    assert rejects == {}


def test_parquet_corpus(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "user_id": ["g1", "", None, "b3", "b4", "g2", "b6"],
            "ts": [1_704_067_200, 1, 1, 10**15, 1, 1, 1],
            "type": ["view"] * 7,
            "price": [1.0, 1.0, 1.0, 1.0, -2.0, None, math.inf],
            "quantity": [1, 1, 1, 1, 1, None, 0],
        }
    )
    path = tmp_path / "bad.parquet"
    frame.write_parquet(path)
    (batch,) = read_events(path)
    assert batch.events["user_id"].to_list() == ["g1", "g2"]
    assert [(d.line, d.reason) for d in batch.rejects] == [
        (2, "user_id: must be a non-empty string, got ''"),
        (3, "user_id: required field is missing"),
        (4, "ts: epoch number must be finite with |x| < 1e14, got 1000000000000000"),
        (5, "price: must be finite and >= 0, got -2"),
        (7, "price: must be finite and >= 0, got inf; quantity: must be an integer >= 1, got 0"),
    ]
    assert orjson.loads(batch.rejects[3].raw) == {
        "user_id": "b4",
        "ts": 1,
        "type": "view",
        "price": -2.0,
        "quantity": 1,
    }


def test_empty_file_yields_nothing(tmp_path: Path) -> None:
    for name in ("e.jsonl", "e.csv", "e.parquet"):
        (tmp_path / name).write_bytes(b"")
        assert list(read_events(tmp_path / name)) == []


def test_directory_and_missing_file_raise(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(SourceError, match="is a directory"):
        read_events(tmp_path / "d.jsonl")
    with pytest.raises(SourceError, match="no such file"):
        read_events(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- fuzzing

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
contract_keys = st.sampled_from([*EVENT_COLUMNS, "colour", ""])
near_records = st.dictionaries(contract_keys, json_values, max_size=8)
plausible = st.fixed_dictionaries(
    {"user_id": st.text(max_size=4), "ts": json_values, "type": st.text(max_size=4)},
    optional={k: json_values for k in EVENT_COLUMNS if k not in ("user_id", "ts", "type")},
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(json_values, near_records, plausible), max_size=12))
def test_fuzz_validate_records_never_raises_and_loses_nothing(records: list[Any]) -> None:
    n = len(records)
    lines = list(range(10, 10 + n))
    raws = [repr(r)[:50] for r in records]
    events, rejects = validate_records(records, source="fuzz", lines=lines, raws=raws)
    assert events.height + len(rejects) == n
    kept = events["_line"].to_list()
    dead = [d.line for d in rejects]
    assert sorted(kept + dead) == lines
    for d in rejects:
        assert d.reason
        assert d.raw == raws[d.line - 10]
        assert d.reason.split(":", 1)[0] != ""
