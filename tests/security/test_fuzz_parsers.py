"""Fuzzing the event readers and validators with hostile input (issue #6, item 8).

What ``tests/events/test_bad_inputs.py`` does not: files mixing generated good
lines, bad lines whose reason is known in advance, and arbitrary bytes, read
at random batch sizes (so runs split anywhere and both JSON Lines paths run);
nesting far past every parser's limit, huge and non-finite numbers, invalid
UTF-8, NUL bytes and lines longer than a read block. Every good record must be
an event, every other non-blank line a dead letter naming its line, its raw
text and (where the cause is known) its field; nothing may raise, and the cost
must stay linear: each input here takes well under a second when it does.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.security.common import bounded, fuzz
from tests.serve.harness import SPEC

from portrait.engine import Engine
from portrait.errors import SourceError
from portrait.events.lines import BLOCK_BYTES
from portrait.events.readers import read_events
from portrait.events.schema import EVENT_COLUMNS, DeadLetter, empty_events
from portrait.events.validate import validate_frame, validate_records
from portrait.serve import body
from portrait.spec.loader import load_spec
from portrait.store import open_store

TS = 1_704_067_200
GOOD_LINE = b'{"user_id":"g","ts":1704067200,"type":"view"}\n'


@dataclass(frozen=True)
class Line:
    """One physical line and what must become of it.

    ``user``: a good line, read as an event of this user. ``why``: a bad line, whose
    dead letter's reason must start with it. Neither: anything goes, but it must
    come out as exactly one event or one dead letter.
    """

    data: bytes
    user: str | None = None
    why: str | None = None


def nested(depth: int, inner: bytes = b"1", *, kind: str = "list") -> bytes:
    if kind == "list":
        return b"[" * depth + inner + b"]" * depth
    return b'{"a":' * depth + inner + b"}" * depth


def _obj(**fields: Any) -> bytes:
    # json, not orjson: orjson writes no more than 255 levels of nesting
    return json.dumps({"ts": TS, "type": "view", **fields}, ensure_ascii=False).encode()


# --- strategies ---------------------------------------------------------------

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)  # NUL included
good_fields = st.fixed_dictionaries(
    {},
    optional={
        "ts": st.sampled_from([TS, TS * 1000, "2024-01-01T00:00:00Z", "2024-02-29",
                               "2024-01-01t10:00:00.123456789+05:30", 1.5e9]),
        "type": st.sampled_from(["view", " CART ", "Purchase"]),
        "item_id": texts,
        "price": st.one_of(st.integers(0, 10**30), st.floats(0, 1e308)),
        "quantity": st.integers(1, 2**53),
        "rating": st.floats(-1e300, 1e300),
        "lat": st.floats(-90, 90),
        "text": texts,
        "attrs": st.dictionaries(texts, st.one_of(st.integers(-(2**63), 2**64 - 1), texts),
                                 max_size=3),
    },
)


@st.composite
def good_lines(draw: st.DrawFn) -> Line:
    fields = draw(good_fields)
    user = "u" + draw(st.text(st.characters(exclude_categories=["Cs", "Cc", "Zs", "Zl", "Zp"]),
                              max_size=6))
    data = json.dumps({"user_id": user, "ts": TS, "type": "view", **fields},
                      ensure_ascii=draw(st.booleans())).encode()
    return Line(data, user=user)


# (line, what the reason starts with)
BAD: list[tuple[bytes, str]] = [
    (b'{"user_id":"b","ts":1704067200,"type":"view","item_id":"\xff\xfe"}',
     "record: invalid UTF-8"),
    (b'{"user_id":"b","ts":1704067200,"type":"view","text":"a\xc3"}', "record: invalid UTF-8"),
    (b'{"user_id":"b","ts":1704067200,"type":"view","price":NaN}', "json: malformed JSON"),
    (b'{"user_id":"b","ts":1704067200,"type":"view","price":-Infinity}', "json: malformed JSON"),
    (b'{"user_id":"b","ts":1704067200,"type":"view","price":1e400}', "json: malformed JSON"),
    (b'{"user_id":"b","ts":1704067200,"type":"view","price":1' + b"0" * 400 + b"}",
     "json: malformed JSON"),
    (b'{"user_id":"b",\x00"ts":1704067200,"type":"view"}', "json: malformed JSON"),
    (b'{"user_id":"b\x00","ts":1704067200,"type":"view"}', "json: malformed JSON"),
    (b'{"user_id":"\\ud800","ts":1704067200,"type":"view"}', "json: malformed JSON"),
    (nested(5000), "json: malformed JSON"),
    (b'{"user_id":"b","ts":1704067200,"type":"view","attrs":{"a":' + nested(2000) + b"}}",
     "json: malformed JSON"),
    (b'{"user_id":' + nested(1500, kind="object") + b',"ts":1,"type":"v"}',
     "json: malformed JSON"),
    (b"[" * 3000, "json: malformed JSON"),
    (_obj(user_id="b", attrs={"a": json.loads(nested(300))}), "attrs: cannot be stored as JSON"),
    (_obj(user_id="b", attrs={"a": "x" * 70_000}), "attrs: too long (max 65536 characters"),
    (_obj(user_id="b", colour=json.loads(nested(300))), "colour: unknown field"),
    (_obj(user_id="b", price=-1e308), "price: must be finite and >= 0"),
    (_obj(user_id="b", quantity=2**64 - 1), "quantity: must be an integer >= 1"),
    (_obj(user_id="b", ts=10**20), "ts: epoch number must be finite"),
    (_obj(user_id="b", ts="2024-02-30T00:00:00Z"), "ts: impossible date or time"),
    (_obj(user_id="b" * 257), "user_id: too long (max 256 characters), got 257"),
    (_obj(user_id="b", type="t" * 65), "type: too long (max 64 characters), got 65"),
    (_obj(user_id="b", text="é" * 65_537), "text: too long (max 65536 characters), got 65537"),
    (_obj(user_id=10**30), "user_id: must be a string"),
    (_obj(user_id=["b"]), "user_id: must be a string, got list"),
    (_obj(user_id="b", lat=float("1e308")), "lat: must be finite and between -90 and 90"),
    (b'{"user_id":"b","ts":1704067200,"type":"view"', "json: malformed JSON"),
    (b"null", "record: must be a JSON object, got null"),
    (b'"\x00"', "json: malformed JSON"),
]
bad_lines = st.integers(0, len(BAD) - 1).map(lambda i: Line(BAD[i][0], why=BAD[i][1]))


def _cut(data: bytes) -> Line:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:  # cut inside a character
        return Line(data, why="record: invalid UTF-8")
    return Line(data, why="json: malformed JSON")


truncated = good_lines().flatmap(
    lambda g: st.integers(1, len(g.data) - 1).map(lambda cut: _cut(g.data[:cut]))
)
any_lines = st.binary(max_size=120).map(lambda b: Line(b.replace(b"\n", b" ")))
blank_lines = st.sampled_from([b"", b"   ", b"\t\r", b"\r"]).map(Line)
jsonl_files = st.lists(
    st.one_of(good_lines(), bad_lines, truncated, any_lines, blank_lines), max_size=25
)


def _write_jsonl(path: Path, lines: list[Line]) -> None:
    # The first line is fixed: a leading BOM would be dropped from line 1's raw.
    path.write_bytes(b"\n".join([b'{"user_id":"first","ts":1,"type":"view"}',
                                 *(line.data for line in lines)]) + b"\n")


def _read(path: Path, batch_size: int) -> tuple[pl.DataFrame, dict[int, DeadLetter]]:
    batches = list(read_events(path, batch_size=batch_size))
    events = pl.concat([empty_events(), *(b.events for b in batches)])
    dead: dict[int, DeadLetter] = {}
    for b in batches:
        for d in b.rejects:
            assert d.line not in dead, f"line {d.line} dead twice"
            dead[d.line] = d
    return events, dead


# What Polars' strip_chars() strips (Unicode White_Space): less than str.strip().
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + (
    "\u2028\u2029\u202f\u205f\u3000"
)


def _check_reason(d: DeadLetter) -> None:
    field, sep, rest = d.reason.partition(": ")
    assert sep, d.reason
    assert field.strip(), d.reason
    assert rest, d.reason


@fuzz(50)
@given(lines=jsonl_files, batch_size=st.sampled_from([1, 2, 3, 7, 250_000]))
def test_fuzz_jsonl_every_line_is_an_event_or_a_dead_letter(
    tmp_path: Path, lines: list[Line], batch_size: int
) -> None:
    path = tmp_path / "fuzz.jsonl"
    _write_jsonl(path, lines)
    events, dead = _read(path, batch_size)
    kept = dict(zip(events["_line"].to_list(), events["user_id"].to_list(), strict=True))
    assert kept.pop(1) == "first"
    for number, line in enumerate(lines, start=2):
        if not line.data.strip(b" \t\r"):
            assert number not in kept
            assert number not in dead
            continue
        assert (number in kept) != (number in dead), (number, line)
        if line.user is not None:
            assert kept.get(number) == line.user.strip(WHITE_SPACE), (line, dead.get(number))
        if number in dead:
            d = dead[number]
            assert line.user is None
            assert d.source == str(path)
            assert d.raw == line.data.removesuffix(b"\r").decode("utf-8", "backslashreplace")
            _check_reason(d)
            if line.why is not None:
                assert d.reason.startswith(line.why), (line.why, d.reason)
        else:
            assert line.why is None, (line.why, line.data[:80])
    assert set(kept) | set(dead) <= set(range(2, len(lines) + 2))


SLOW_JSONL = b'{"user_id":"t","ts":1,"type":"view","attrs":{}}'  # attrs: the line-by-line path


def _jsonl_outcomes(path: Path, lines: range, batch_size: int) -> dict[int, tuple[str, str]]:
    events, dead = _read(path, batch_size)
    kept = dict(zip(events["_line"].to_list(), events["user_id"].to_list(), strict=True))
    out = {n: ("event", kept[n]) for n in lines if n in kept}
    return out | {n: (dead[n].reason, dead[n].raw) for n in lines if n in dead}


@fuzz(40)
@given(lines=jsonl_files, batch_size=st.sampled_from([1, 3, 250_000]))
def test_fuzz_jsonl_paths_agree(tmp_path: Path, lines: list[Line], batch_size: int) -> None:
    """pyarrow reads a run at once unless a line has attrs; then orjson reads it line by
    line. Each line must come out the same (event, or reason and raw) either way."""
    fast, slow = tmp_path / "fast.jsonl", tmp_path / "slow.jsonl"
    _write_jsonl(fast, lines)
    slow.write_bytes(fast.read_bytes() + SLOW_JSONL + b"\n")
    numbers = range(1, len(lines) + 2)
    slow_batch = len(lines) + 2  # one run: the attrs line makes all of it slow
    assert _jsonl_outcomes(fast, numbers, batch_size) == _jsonl_outcomes(slow, numbers, slow_batch)


@pytest.mark.parametrize(
    "data",
    [b"null\n", b"null {}\n", b"null\n" + GOOD_LINE, GOOD_LINE + b"null\n",
     GOOD_LINE + b"null\nnull\n", b"  null\n" + GOOD_LINE],
)
def test_a_null_line_is_a_dead_letter_not_a_crash(tmp_path: Path, data: bytes) -> None:
    """pyarrow's JSON reader crashed the process (SIGSEGV) on a run starting with ``null``,
    and read a later ``null`` as a row of nulls (another reason than the slow path's).
    Run in a child process, so that a crash is a failure, not the end of the test run."""
    path = tmp_path / "null.jsonl"
    path.write_bytes(data)
    script = (
        "import sys\nfrom portrait.events.readers import read_events\n"
        "for size in (1, 2, 250_000):\n"
        "    for b in read_events(sys.argv[1], batch_size=size):\n"
        "        for d in b.rejects:\n"
        "            print(size, d.line, d.reason)\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = data.split(b"\n")
    nulls = [i for i, line in enumerate(lines, start=1) if line.strip().startswith(b"null")]
    want = sorted(f"{size} {n} record: must be a JSON object, got null" if lines[n - 1].strip()
                  == b"null" else f"{size} {n} json: malformed JSON"
                  for size in (1, 2, 250_000) for n in nulls)
    assert sorted(line.split(" (")[0] for line in run.stdout.splitlines()) == want


# --- CSV ----------------------------------------------------------------------

HEADER = b"user_id,ts,type,price,text,attrs"
plain = st.text(st.characters(exclude_categories=["Cs"], exclude_characters='",\n\r'),
                max_size=10).map(lambda s: s.encode())
# (cells by column, what the reason starts with)
CSV_BAD: list[tuple[dict[str, bytes], str]] = [
    ({"price": b"nan"}, "price: must be finite and >= 0, got NaN"),
    ({"price": b"1e400"}, "price: must be finite and >= 0, got inf"),
    ({"price": b"12.5.1"}, "price: must be a number"),
    ({"price": b"\x00"}, "price: must be a number"),
    ({"ts": b""}, "ts: required field is missing"),
    ({"ts": b"1e20"}, "ts: epoch number must be finite"),
    ({"ts": b"2023-02-30"}, "ts: impossible date or time"),
    ({"user_id": b""}, "user_id: required field is missing"),
    ({"user_id": b"u" * 257}, "user_id: too long (max 256 characters)"),
    ({"type": b"  "}, "type: must be a non-empty string"),
    ({"text": b"x" * 70_000}, "text: too long (max 65536 characters)"),
    ({"text": b"\xff"}, "record: invalid UTF-8"),
    ({"attrs": b"[1]"}, "attrs: must be a JSON object, got list"),
    ({"attrs": b"{"}, "attrs: malformed JSON"),
    ({"attrs": b"[" * 5000}, "attrs: malformed JSON"),
    ({"attrs": b'"{""a"":' + nested(300) + b'}"'},
     "attrs: cannot be stored as JSON"),
    ({"attrs": b'"{""a"":' + nested(100_000) + b'}"'}, "attrs: malformed JSON"),
    ({"attrs": b'"{""a"": ""' + b"x" * 70_000 + b'""}"'}, "attrs: too long"),
]
COLUMNS = ["user_id", "ts", "type", "price", "text", "attrs"]


@st.composite
def csv_rows(draw: st.DrawFn) -> Line:
    kind = draw(st.sampled_from(["good", "bad", "width", "any"]))
    user = b"c" + draw(plain).strip()
    cells = {"user_id": user, "ts": b"1704067200", "type": b"view", "price": b"",
             "text": draw(plain), "attrs": b""}
    if draw(st.booleans()):
        cells["price"] = draw(st.sampled_from([b"0", b"-0", b"1e308", b" 2.5 ", b"7"]))
    if draw(st.booleans()):
        cells["attrs"] = b'"{""k"": [1, {""x"": null}]}"'
    if kind == "good":
        return Line(b",".join(cells[c] for c in COLUMNS), user=user.decode())
    if kind == "bad":
        change, why = CSV_BAD[draw(st.integers(0, len(CSV_BAD) - 1))]
        return Line(b",".join({**cells, **change}[c] for c in COLUMNS), why=why)
    if kind == "width":
        n = draw(st.sampled_from([1, 5, 7, 12]))
        return Line(b",".join([user] * n), why=f"record: expected 6 columns, got {n}")
    junk = draw(st.binary(max_size=80)).replace(b"\n", b" ").replace(b'"', b"'")
    return Line(junk)


@fuzz(80)
@given(rows=st.lists(csv_rows(), max_size=20), batch_size=st.sampled_from([1, 3, 250_000]))
def test_fuzz_csv_every_row_is_an_event_or_a_dead_letter(
    tmp_path: Path, rows: list[Line], batch_size: int
) -> None:
    path = tmp_path / "fuzz.csv"
    path.write_bytes(b"\n".join([HEADER, *(r.data for r in rows)]) + b"\n")
    events, dead = _read(path, batch_size)
    kept = dict(zip(events["_line"].to_list(), events["user_id"].to_list(), strict=True))
    for number, row in enumerate(rows, start=2):
        if row.user is not None:
            assert kept.get(number) == row.user.strip(WHITE_SPACE), (row, dead.get(number))
            continue
        if row.why is not None:
            assert number in dead, row
            assert dead[number].reason.startswith(row.why), (row.why, dead[number].reason)
        if number in dead:
            _check_reason(dead[number])
            assert dead[number].source == str(path)
            assert number not in kept
        elif row.data.strip(b" \t\r"):
            assert number in kept, row


SLOW_PATH_TAILS = [b"t,1704067200,view,,\xff,", b't,1704067200,view,,a"b,']  # bad UTF-8, stray "


def _outcomes(path: Path, lines: range) -> dict[int, tuple[str, str]]:
    events, dead = _read(path, 250_000)
    kept = dict(zip(events["_line"].to_list(), events["user_id"].to_list(), strict=True))
    out = {n: ("event", kept[n]) for n in lines if n in kept}
    return out | {n: (dead[n].reason, dead[n].raw) for n in lines if n in dead}


@fuzz(60)
@given(rows=st.lists(csv_rows(), min_size=1, max_size=12), tail=st.sampled_from(SLOW_PATH_TAILS))
def test_fuzz_csv_paths_agree(tmp_path: Path, rows: list[Line], tail: bytes) -> None:
    """One line that only Python's csv module can read sends the whole run down the slow
    path; the other lines must come out exactly as on the fast paths."""
    fast, slow = tmp_path / "fast.csv", tmp_path / "slow.csv"
    fast.write_bytes(b"\n".join([HEADER, *(r.data for r in rows)]) + b"\n")
    slow.write_bytes(fast.read_bytes() + tail + b"\n")
    lines = range(2, len(rows) + 2)
    assert _outcomes(slow, lines) == _outcomes(fast, lines)


@pytest.mark.parametrize("tail", [b"", *SLOW_PATH_TAILS])
def test_csv_blank_lines_are_the_same_on_every_path(tmp_path: Path, tail: bytes) -> None:
    """Only spaces, tabs and CR make a blank line; the slow path used to skip any line
    Python calls whitespace (a vertical tab, a no-break space) silently."""
    path = tmp_path / "blank.csv"
    path.write_bytes(b"user_id,ts,type\n\x0b\n\xc2\xa0\n \t\r\n\n\"\"\n" + tail + b"\n")
    _, dead = _read(path, 250_000)
    assert {n: d.reason for n, d in dead.items() if n < 7} == {
        2: "record: expected 3 columns, got 1",
        3: "record: expected 3 columns, got 1",
        6: "record: expected 3 columns, got 1",
    }


@fuzz(60)
@given(data=st.binary(max_size=400), batch_size=st.sampled_from([1, 2, 250_000]))
def test_fuzz_arbitrary_bytes_never_raise(tmp_path: Path, data: bytes, batch_size: int) -> None:
    """Anything at all, quotes and newlines included, in both text formats."""
    for name, content in (("any.jsonl", data), ("any.csv", HEADER + b"\n" + data)):
        path = tmp_path / name
        path.write_bytes(content)
        lines = content.count(b"\n") + 1
        events, dead = _read(path, batch_size)
        for number, d in dead.items():
            assert 1 <= number <= lines
            _check_reason(d)
        assert events.height + len(dead) <= lines


# --- columnar input: Parquet files and frames ------------------------------------------

UTC_RANGE = {"min_value": dt.datetime(1700, 1, 1), "max_value": dt.datetime(2200, 1, 1)}
# dtype -> values it may hold (None is added to each)
COLUMN_KINDS: list[tuple[pl.DataType, st.SearchStrategy[Any]]] = [
    (pl.String(), texts),
    (pl.Binary(), st.binary(max_size=6)),
    (pl.Int64(), st.integers(-(2**63), 2**63 - 1)),
    (pl.UInt64(), st.integers(0, 2**64 - 1)),
    (pl.Float64(), st.floats()),
    (pl.Boolean(), st.booleans()),
    (pl.Date(), st.dates()),
    (pl.Datetime("us"), st.datetimes()),
    (pl.Datetime("us", "UTC"), st.datetimes()),
    (pl.Datetime("ns", "Asia/Kolkata"), st.datetimes(**UTC_RANGE)),
    (pl.Duration("us"), st.timedeltas(-dt.timedelta(days=36_500), dt.timedelta(days=36_500))),
    (pl.Time(), st.times()),
    (pl.Decimal(20, 4), st.decimals(-(10**15), 10**15, places=4)),
    (pl.Categorical(), st.sampled_from(["view", " CART", "é"])),
    (pl.List(pl.Int64()), st.lists(st.integers(-5, 5), max_size=2)),
    (pl.Struct({"a": pl.Int64()}), st.fixed_dictionaries({"a": st.integers(-5, 5)})),
    (pl.Null(), st.none()),
]


@st.composite
def frames(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(1, 5))
    names = draw(st.lists(st.sampled_from([*EVENT_COLUMNS, "colour"]), min_size=1, max_size=6,
                          unique=True))
    columns = []
    for name in names:
        dtype, values = COLUMN_KINDS[draw(st.integers(0, len(COLUMN_KINDS) - 1))]
        cells = draw(st.lists(st.one_of(st.none(), values), min_size=n, max_size=n))
        columns.append(pl.Series(name, cells, dtype=dtype))
    return pl.DataFrame(columns)


@fuzz(150)
@given(frame=frames(), raw_format=st.sampled_from(["json", "csv"]))
def test_fuzz_frames_of_any_column_types_never_raise(frame: pl.DataFrame,
                                                     raw_format: str) -> None:
    """What a Parquet file may hold: any column type, including ones no contract field
    has (Duration used to raise, and so did a Binary value that is not UTF-8)."""
    lines = pl.Series(range(5, 5 + frame.height), dtype=pl.Int64)
    events, dead = validate_frame(frame, source="f", lines=lines,
                                  raw_format=raw_format)  # type: ignore[arg-type]
    assert sorted(events["_line"].to_list() + [d.line for d in dead]) == lines.to_list()
    for d in dead:
        _check_reason(d)
        assert isinstance(d.raw, str)


@fuzz(25)
@given(frame=frames())
def test_fuzz_parquet_files_of_any_column_types(tmp_path: Path, frame: pl.DataFrame) -> None:
    path = tmp_path / "fuzz.parquet"
    frame.write_parquet(path)
    try:
        batches = list(read_events(path, batch_size=2))
    except SourceError:  # a file Polars cannot read back is refused whole, never a crash
        return
    rows = sorted([n for b in batches for n in b.events["_line"].to_list()]
                  + [d.line for b in batches for d in b.rejects])
    assert rows == list(range(1, frame.height + 1))


@pytest.mark.parametrize(
    ("column", "reason"),
    [
        (pl.Series("user_id", [b"ok", b"\xff\xfe"], dtype=pl.Binary),
         "user_id: invalid UTF-8 at byte 0"),
        (pl.Series("ts", [dt.timedelta(1), None]), "ts: unsupported column type Duration"),
    ],
    ids=["binary", "duration"],
)
def test_parquet_columns_that_used_to_fail_the_whole_file(tmp_path: Path, column: pl.Series,
                                                         reason: str) -> None:
    base = {"user_id": ["a", "b"], "ts": [TS, TS], "type": ["view", "view"]}
    path = tmp_path / "typed.parquet"
    pl.DataFrame(base).with_columns(column).write_parquet(path)
    (batch,) = read_events(path)
    assert batch.rejects[0].line == (2 if column.name == "user_id" else 1)
    assert batch.rejects[0].reason.startswith(reason)
    assert batch.events.height + len(batch.rejects) == 2


# --- the API path: decoded values ---------------------------------------------

json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                        st.floats(allow_nan=True, allow_infinity=True), texts)


def _deep(depth: int, leaf: object) -> object:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


hostile_values = st.one_of(
    json_leaves,
    st.builds(_deep, st.integers(0, 1100), json_leaves),
    st.sampled_from([10**5000, -(10**400), float("nan"), float("-inf"), 70_000]).map(
        lambda v: "x" * v if v == 70_000 else v
    ),
)
hostile_records = st.one_of(
    st.dictionaries(st.sampled_from([*EVENT_COLUMNS, "", "a:b;c", "\x00", "é" * 70]),
                    hostile_values, max_size=6),
    st.fixed_dictionaries({"user_id": st.just("h"), "ts": st.just(TS), "type": st.just("view")},
                          optional=dict.fromkeys(EVENT_COLUMNS[4:], hostile_values)),
    hostile_values,
)


@fuzz(150)
@given(records=st.lists(hostile_records, max_size=8))
def test_fuzz_posted_values_never_raise(records: list[Any]) -> None:
    """What ``POST /v1/events`` validates: decoded values, some nested past what orjson
    can write back (255 levels), huge integers, NaN. One result per record, and the
    raw of a rejected record is always text."""
    events, dead = body.validate(records)
    assert events.height + len(dead) == len(records)
    assert sorted(events["_line"].to_list() + [d.line for d in dead]) == list(
        range(1, len(records) + 1)
    )
    for d in dead:
        _check_reason(d)
        assert isinstance(d.raw, str)
        assert d.source == "api"


@pytest.mark.parametrize("depth", [256, 300, 1000])
def test_values_nested_past_what_orjson_writes_are_dead_letters(depth: int) -> None:
    records: list[object] = [
        {"user_id": "n", "ts": TS, "type": "view", "attrs": {"a": _deep(depth, 1)}},
        {"user_id": "n", "ts": TS, "type": "view", "colour": _deep(depth, 1)},
        _deep(depth, 1),
        {"user_id": "n", "ts": TS, "type": "view"},
    ]
    events, dead = body.validate(records)
    assert events["_line"].to_list() == [4]
    assert [d.line for d in dead] == [1, 2, 3]
    assert dead[0].reason.startswith("attrs: cannot be stored as JSON")
    assert dead[1].reason.startswith("colour: unknown field")
    assert dead[2].reason.startswith("record: must be a JSON object")
    # validate_records (files) takes the raws it is given
    _, rejects = validate_records(records, source="s", lines=[7, 8, 9, 10], raws="abcd")
    assert [(d.line, d.raw) for d in rejects] == [(7, "a"), (8, "b"), (9, "c")]


# --- bounded cost ---------------------------------------------------------------

GOOD = b'{"user_id":"g","ts":1704067200,"type":"view"}'
MB = 1 << 20


@pytest.mark.parametrize(
    "deep",
    [
        nested(100_000),
        nested(MB // 2, b""),  # a 1 MB line
        b"[" * MB,
        nested(100_000, kind="object"),
        b'{"user_id":"u","ts":1704067200,"type":"view","attrs":{"a":' + nested(100_000) + b"}}",
        b'{"user_id":"u","ts":1704067200,"type":"view","x":' + nested(100_000) + b"}",
        b'{"user_id":' + nested(100_000) + b',"ts":1704067200,"type":"view"}',
    ],
    ids=["arrays", "1MB", "unclosed", "objects", "in-attrs", "in-unknown-field", "as-user_id"],
)
def test_deep_nesting_in_jsonl_is_a_dead_letter_at_bounded_cost(tmp_path: Path,
                                                                deep: bytes) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b"\n".join([GOOD, deep, GOOD, deep, GOOD]) + b"\n")
    events, dead = bounded(lambda: _read(path, 250_000))
    assert events["_line"].to_list() == [1, 3, 5]
    assert sorted(dead) == [2, 4]
    for d in dead.values():
        assert d.reason.startswith("json: malformed JSON (depth limit exceeded")
        assert len(d.reason) < 300


def test_deep_nesting_in_a_csv_attrs_cell_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "deep.csv"
    deep = b'"{""a"":' + nested(MB // 2, b"") + b'}"'
    path.write_bytes(b"\n".join([HEADER, b"g,1704067200,view,,,", b"d,1704067200,view,,," + deep,
                                 b"g,1704067200,view,,,"]) + b"\n")
    events, dead = bounded(lambda: _read(path, 250_000))
    assert events["_line"].to_list() == [2, 4]
    assert dead[3].reason.startswith("attrs: malformed JSON")


def test_a_line_longer_than_a_read_block(tmp_path: Path) -> None:
    long_text = "é" * (BLOCK_BYTES // 2 + 1000)  # > BLOCK_BYTES as UTF-8
    path = tmp_path / "long.jsonl"
    path.write_bytes(b"\n".join([GOOD, _obj(user_id="l", text=long_text), GOOD]))
    events, dead = bounded(lambda: _read(path, 250_000))
    assert events["_line"].to_list() == [1, 3]
    assert dead[2].reason == (
        f"text: too long (max 65536 characters), got {len(long_text)} characters"
    )


def test_an_unclosed_csv_quote_is_read_in_linear_time(tmp_path: Path) -> None:
    """A quoted cell left open at the end of a run makes the CSV reader borrow the
    following lines one at a time until the quote closes (or the file ends). Each
    borrowed line used to copy the rest of the 8 MiB read block: quadratic, about
    25 s for these 5 MB."""
    rows = 400_000
    path = tmp_path / "open-quote.csv"
    path.write_bytes(b"user_id,ts,type,text\n" + b"\n" * 249_999
                     + b'q,1704067200,view,"never closed\n' + b"u,1,view,x\n" * rows)
    events, dead = bounded(lambda: _read(path, 250_000))
    assert events.height == 0
    (d,) = dead.values()
    assert d.line == 250_001
    assert d.reason.startswith("text: too long (max 65536 characters)")


def test_many_tiny_lines_in_small_batches_are_linear(tmp_path: Path) -> None:
    """Runs cut from a read block must not copy, nor scan, the rest of the block each time:
    50 s for these 8 MB of blank lines in runs of 1,000, when they did."""
    path = tmp_path / "tiny.jsonl"
    path.write_bytes(b"\n" * 8_000_000 + GOOD + b"\n")
    events, dead = bounded(lambda: _read(path, 1_000))
    assert events["_line"].to_list() == [8_000_001]
    assert dead == {}


@pytest.mark.parametrize("batch_size", [1, 250_000])
def test_invalid_utf8_on_the_fast_path_is_a_dead_letter(tmp_path: Path,
                                                        batch_size: int) -> None:
    """pyarrow's JSON reader does not check UTF-8: a run it could read whole used to
    accept a string with a bad byte as an event (and Polars panicked reading it back)."""
    path = tmp_path / "bad-utf8.jsonl"
    bad = b'{"user_id":"b","ts":1704067200,"type":"view","item_id":"\xff\xfe"}'
    path.write_bytes(b"\n".join([GOOD, bad, GOOD]) + b"\n")
    events, dead = _read(path, batch_size)
    assert events["_line"].to_list() == [1, 3]
    assert events["item_id"].to_list() == [None, None]
    assert dead[2].reason == "record: invalid UTF-8 at byte 56"
    assert dead[2].raw == bad.decode("utf-8", "backslashreplace")


# --- end to end: Engine.ingest ------------------------------------------------------


@fuzz(8)
@given(lines=st.lists(st.one_of(good_lines(), bad_lines, any_lines), min_size=1, max_size=12),
       rows=st.lists(csv_rows(), max_size=8))
def test_fuzz_engine_ingest_keeps_every_bad_record(
    tmp_path_factory: pytest.TempPathFactory, lines: list[Line], rows: list[Line]
) -> None:
    root = tmp_path_factory.mktemp("ingest")
    jsonl, csv = root / "in.jsonl", root / "in.csv"
    _write_jsonl(jsonl, lines)
    csv.write_bytes(b"\n".join([HEADER, *(r.data for r in rows)]) + b"\n")
    with open_store(root / "db", writer=True) as store:
        summary = Engine(load_spec(SPEC), store).ingest([jsonl, csv])
        dead = store.dead_letters()
    where = {(str(d["source"]), int(str(d["line"]))): str(d["reason"]) for d in dead}
    assert summary.rejected == len(dead)
    for number, line in enumerate(lines, start=2):
        if line.why is not None:
            assert where[(str(jsonl), number)].startswith(line.why)
        if line.user is not None:
            assert (str(jsonl), number) not in where
    for number, row in enumerate(rows, start=2):
        if row.why is not None:
            assert where[(str(csv), number)].startswith(row.why)
        if row.user is not None:
            assert (str(csv), number) not in where
