"""The event contract v1, rule by rule: validate_records, validate_frame, event ids."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, date, datetime
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portrait.events.eventid import event_id_of, event_key
from portrait.events.schema import EVENT_COLUMNS, EVENT_SCHEMA, LINE_COLUMN
from portrait.events.tsparse import string_to_us
from portrait.events.validate import derive_event_ids, validate_frame, validate_records
from portrait.timeutil import epoch_number_to_us, parse_rfc3339

JAN1 = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z in µs
BASE: dict[str, Any] = {"user_id": "u1", "ts": "2024-01-01T00:00:00Z", "type": "view"}


def run(records: list[Any]) -> tuple[pl.DataFrame, list[Any]]:
    n = len(records)
    return validate_records(records, source="t", lines=list(range(1, n + 1)), raws=["r"] * n)


def accepted(**fields: Any) -> dict[str, Any]:
    events, rejects = run([{**BASE, **fields}])
    assert rejects == [], rejects
    assert events.height == 1
    return events.row(0, named=True)


def rejected(record: Any) -> str:
    events, rejects = run([record])
    assert events.height == 0
    assert len(rejects) == 1
    return rejects[0].reason


def reason(**fields: Any) -> str:
    return rejected({**BASE, **fields})


# ---------------------------------------------------------------- shape


def test_output_has_the_event_schema_plus_line() -> None:
    events, _ = run([BASE, {**BASE, "user_id": "u2"}])
    assert events.columns == [*EVENT_COLUMNS, LINE_COLUMN]
    assert events.schema == pl.Schema({**EVENT_SCHEMA, LINE_COLUMN: pl.Int64()})
    assert events[LINE_COLUMN].to_list() == [1, 2]
    assert events["event_id"].to_list() == [None, None]  # derive_event_ids fills them


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        validate_records([BASE], source="t", lines=[1, 2], raws=["a"])


def test_empty_input() -> None:
    events, rejects = run([])
    assert events.height == 0
    assert rejects == []
    assert events.columns == [*EVENT_COLUMNS, LINE_COLUMN]


def test_dead_letter_keeps_source_line_and_raw() -> None:
    _, rejects = validate_records([{"x": 1}], source="f.jsonl", lines=[7], raws=['{"x": 1}'])
    (dl,) = rejects
    assert (dl.source, dl.line, dl.raw) == ("f.jsonl", 7, '{"x": 1}')
    assert dl.reason.startswith("x: unknown field (put free-form fields under attrs)")


# ---------------------------------------------------------------- required strings


def test_user_id_rules() -> None:
    assert accepted(user_id="  u9 ")["user_id"] == "u9"
    assert accepted(user_id="x" * 256)["user_id"] == "x" * 256
    assert reason(user_id=None) == "user_id: required field is missing"
    assert reason(user_id="   ") == "user_id: must be a non-empty string, got '   '"
    assert reason(user_id=123) == "user_id: must be a string, got 123"
    assert reason(user_id="x" * 257) == "user_id: too long (max 256 characters), got 257 characters"
    assert rejected({"ts": 1, "type": "v"}) == "user_id: required field is missing"


def test_type_is_stripped_and_lower_cased() -> None:
    assert accepted(type=" PurChase ")["type"] == "purchase"
    assert accepted(type="view")["type"] == "view"
    assert reason(type="") == "type: must be a non-empty string, got ''"
    assert reason(type="t" * 65) == "type: too long (max 64 characters), got 65 characters"
    assert reason(type=["view"]) == "type: must be a string, got list"


def test_a_mixed_case_type_among_clean_ones_is_still_lowered() -> None:
    events, _ = run([{**BASE, "type": "view"}, {**BASE, "type": "VIEW"}])
    assert events["type"].to_list() == ["view", "view"]


# ---------------------------------------------------------------- optional strings


@pytest.mark.parametrize("field", ["event_id", "item_id", "category", "text"])
def test_optional_strings(field: str) -> None:
    assert accepted(**{field: " a b "})[field] == "a b"
    assert accepted(**{field: "   "})[field] is None
    assert accepted(**{field: None})[field] is None
    assert reason(**{field: 5}) == f"{field}: must be a string, got 5"


def test_string_limits() -> None:
    assert accepted(item_id="i" * 1024)["item_id"] == "i" * 1024
    assert (
        reason(item_id="i" * 1025) == "item_id: too long (max 1024 characters), got 1025 characters"
    )
    assert accepted(text="t" * 65_536)["text"] == "t" * 65_536
    assert (
        reason(text="t" * 65_537) == "text: too long (max 65536 characters), got 65537 characters"
    )


def test_a_one_megabyte_string_is_rejected_without_copying_it_into_the_reason() -> None:
    big = "é" * (1 << 20)
    for field in ("user_id", "event_id", "item_id", "category", "text"):
        why = reason(**{field: big})
        assert why.startswith(f"{field}: too long")
        assert "1048576 characters" in why
        assert len(why) < 200


# ---------------------------------------------------------------- time


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2024-01-01T00:00:00Z", JAN1),
        ("2024-01-01T00:00:00z", JAN1),
        ("2024-01-01 00:00:00Z", JAN1),
        ("2024-01-01T08:00:00+08:00", JAN1),
        ("2023-12-31T19:00:00-05:00", JAN1),
        ("2024-01-01T00:00:00.5Z", JAN1 + 500_000),
        ("2024-01-01T00:00:00.123456789Z", JAN1 + 123_456),  # truncated like fromisoformat
        ("  2024-01-01T00:00:00Z ", JAN1),
        ("2024-01-01", JAN1),
        ("2024-02-29", JAN1 + 59 * 86_400_000_000),
        ("20240101T000000Z", JAN1),  # other ISO 8601 shapes go to the reference parser
        ("2024-01-01T00:00+00:00", JAN1),
        (1_704_067_200, JAN1),
        (1_704_067_200.25, JAN1 + 250_000),
        (1_704_067_200_000, JAN1),
        (1_704_067_200_123, JAN1 + 123_000),
        (99_999_999_999, 99_999_999_999_000_000),  # largest seconds
        (100_000_000_000, 100_000_000_000_000),  # smallest milliseconds: 1973-03-03
        (-5, -5_000_000),
        (0, 0),
    ],
)
def test_time_normalisation(ts: object, expected: int) -> None:
    assert accepted(ts=ts)["ts"] == expected


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (
            "2023-02-30",
            "ts: impossible date or time (day is out of range for month), got '2023-02-30'",
        ),
        (
            "2023-13-01T00:00:00Z",
            "ts: impossible date or time (month must be in 1..12), got '2023-13-01T00:00:00Z'",
        ),
        ("2024-01-01T00:00:00", "ts: no UTC offset (add Z or +HH:MM), got '2024-01-01T00:00:00'"),
        (
            "2024-01-01T24:00:00Z",
            "ts: impossible date or time (hour must be in 0..23), got '2024-01-01T24:00:00Z'",
        ),
        (
            "yesterday",
            "ts: not an RFC 3339 time with offset, a date or an epoch number, got 'yesterday'",
        ),
        (
            "1704067200",
            "ts: not an RFC 3339 time with offset, a date or an epoch number, got '1704067200'",
        ),
        (1e14, "ts: epoch number must be finite with |x| < 1e14, got 100000000000000"),
        (-1e14, "ts: epoch number must be finite with |x| < 1e14, got -100000000000000"),
        (True, "ts: must be an RFC 3339 string or an epoch number, got True"),
        ({"s": 1}, "ts: must be an RFC 3339 string or an epoch number, got object"),
        (None, "ts: required field is missing"),
        (float("nan"), "ts: epoch number must be finite with |x| < 1e14, got NaN"),
    ],
)
def test_bad_times(ts: object, expected: str) -> None:
    assert reason(ts=ts) == expected


def _time_strings() -> st.SearchStrategy[str]:
    def two(lo: int, hi: int) -> st.SearchStrategy[str]:
        return st.integers(lo, hi).map(lambda v: f"{v:02d}")

    offset = st.one_of(
        st.sampled_from(["Z", "z", ""]),
        st.tuples(st.sampled_from("+-"), two(0, 25), two(0, 61)).map(
            lambda t: f"{t[0]}{t[1]}:{t[2]}"
        ),
    )
    frac = st.one_of(
        st.just(""), st.text("0123456789", min_size=1, max_size=10).map(lambda d: "." + d)
    )
    full = st.tuples(
        st.integers(0, 9999).map(lambda y: f"{y:04d}"),
        two(0, 13),
        two(0, 32),
        st.sampled_from("Tt "),
        two(0, 25),
        two(0, 61),
        two(0, 61),
        frac,
        offset,
    ).map(lambda p: f"{p[0]}-{p[1]}-{p[2]}{p[3]}{p[4]}:{p[5]}:{p[6]}{p[7]}{p[8]}")
    bare = st.tuples(st.integers(0, 9999), two(0, 13), two(0, 32)).map(
        lambda p: f"{p[0]:04d}-{p[1]}-{p[2]}"
    )
    return st.one_of(full, bare, st.text(max_size=30))


def _reference(text: str) -> int | None:
    try:
        return parse_rfc3339(text)
    except (ValueError, OverflowError):
        return None


@settings(max_examples=200, deadline=None)
@given(st.lists(_time_strings(), min_size=1, max_size=20))
def test_vectorised_time_strings_agree_with_the_reference(texts: list[str]) -> None:
    fast = pl.select(string_to_us(pl.Series(texts, dtype=pl.String).str.strip_chars())).to_series()
    for text, got in zip(texts, fast.to_list(), strict=True):
        want = _reference(text)
        if got is not None:  # the fast path decides only what the reference accepts, identically
            assert got == want, text
    events, rejects = run([{**BASE, "ts": t} for t in texts])
    kept = iter(events["ts"].to_list())
    bad_lines = {d.line for d in rejects}
    for line, text in enumerate(texts, start=1):
        want = _reference(text)
        if want is None:
            assert line in bad_lines, text
        else:
            assert next(kept) == want, text


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.integers(-(10**14) + 1, 10**14 - 1),
        st.floats(-1e11, 1e11, allow_nan=False),
        st.floats(1e11, 9e12).map(float),
    )
)
def test_epoch_numbers_agree_with_the_reference(x: float) -> None:
    assert accepted(ts=x)["ts"] == epoch_number_to_us(x)


# ---------------------------------------------------------------- numbers


def test_price() -> None:
    assert accepted(price=0)["price"] == 0.0
    assert accepted(price=12.5)["price"] == 12.5
    assert math.copysign(1, accepted(price=-0.0)["price"]) == 1.0  # one canonical zero
    assert reason(price=-5) == "price: must be finite and >= 0, got -5"
    assert reason(price=-0.5) == "price: must be finite and >= 0, got -0.5"
    assert reason(price=float("nan")) == "price: must be finite and >= 0, got NaN"
    assert reason(price=float("inf")) == "price: must be finite and >= 0, got inf"
    assert reason(price="12.5") == "price: must be a number, got '12.5'"
    assert reason(price=True) == "price: must be a number, got True"
    assert reason(price=10**400).startswith("price: number out of range")


def test_quantity() -> None:
    assert accepted(quantity=1)["quantity"] == 1
    assert accepted(quantity=3.0)["quantity"] == 3
    assert reason(quantity=1.5) == "quantity: must be an integer >= 1, got 1.5"
    assert reason(quantity=0) == "quantity: must be an integer >= 1, got 0"
    assert reason(quantity=-2) == "quantity: must be an integer >= 1, got -2"
    assert reason(quantity="2") == "quantity: must be a number, got '2'"


def test_rating_lat_lon() -> None:
    assert accepted(rating=-3.5)["rating"] == -3.5
    assert reason(rating=float("inf")) == "rating: must be finite, got inf"
    assert accepted(lat=90, lon=-180)["lat"] == 90.0
    assert reason(lat=90.5) == "lat: must be finite and between -90 and 90, got 90.5"
    assert reason(lon=181) == "lon: must be finite and between -180 and 180, got 181"
    assert reason(lon="1") == "lon: must be a number, got '1'"


# ---------------------------------------------------------------- attrs, records


def test_attrs_become_canonical_json() -> None:
    row = accepted(attrs={"b": 1, "a": {"d": [1, 2.5], "c": None}})
    assert row["attrs"] == '{"a":{"c":null,"d":[1,2.5]},"b":1}'
    assert accepted(attrs=None)["attrs"] is None
    assert accepted(attrs={})["attrs"] == "{}"
    assert reason(attrs=[1]) == "attrs: must be a JSON object, got list"
    assert reason(attrs="{}") == "attrs: must be a JSON object, got string"
    assert reason(attrs={"k": "v" * 70_000}).startswith("attrs: too long (max 65536 characters")


@pytest.mark.parametrize(
    ("record", "name"),
    [([1, 2], "list"), ("s", "string"), (5, "number"), (None, "null"), (True, "boolean")],
)
def test_a_record_must_be_an_object(record: object, name: str) -> None:
    assert rejected(record) == f"record: must be a JSON object, got {name}"


def test_unknown_fields_and_several_problems_in_one_reason() -> None:
    why = reason(colour="red", price=-5, quantity=0, user_id="")
    assert why == (
        "colour: unknown field (put free-form fields under attrs); "
        "user_id: must be a non-empty string, got ''; "
        "price: must be finite and >= 0, got -5; "
        "quantity: must be an integer >= 1, got 0"
    )
    assert reason(extra=None) == "extra: unknown field (put free-form fields under attrs)"


def test_lone_surrogates_are_rejected_not_raised() -> None:
    assert reason(user_id="a\ud800b").startswith("user_id: invalid Unicode")
    assert reason(attrs={"k": "\udc00"}).startswith("attrs: cannot be stored as JSON")
    assert "unknown field" in reason(**{"\ud800": 1})


def test_good_and_bad_records_are_split_in_order() -> None:
    records = [BASE, {"x": 1}, {**BASE, "user_id": "u2"}, [], {**BASE, "price": -1}]
    events, rejects = run(records)
    assert events["user_id"].to_list() == ["u1", "u2"]
    assert events[LINE_COLUMN].to_list() == [1, 3]
    assert [d.line for d in rejects] == [2, 4, 5]


# ---------------------------------------------------------------- event ids


def _ids(records: list[dict[str, Any]]) -> list[str]:
    events, rejects = run(records)
    assert rejects == []
    return derive_event_ids(events)["event_id"].to_list()


def test_event_id_is_the_same_for_equal_events_in_any_representation() -> None:
    a = {"user_id": "u1", "ts": "2024-01-01T00:00:00Z", "type": "view", "price": 10}
    b = {"user_id": " u1", "ts": 1_704_067_200, "type": "VIEW", "price": 10.0}
    c = {"user_id": "u1", "ts": 1_704_067_200_000, "type": "view", "price": 10.0, "item_id": ""}
    d = {"user_id": "u1", "ts": "2024-01-01T08:00:00+08:00", "type": "view", "price": 10}
    ids = _ids([a, b, c, d])
    assert len(set(ids)) == 1
    assert ids[0].startswith("h:")
    assert len(ids[0]) == 34


def test_event_id_differs_when_content_differs() -> None:
    base = {"user_id": "u1", "ts": 0, "type": "view"}
    variants = [
        base,
        {**base, "ts": 1},
        {**base, "user_id": "u2"},
        {**base, "price": 0},
        {**base, "quantity": 1},
        {**base, "attrs": {}},
        {**base, "text": "x"},
        {**base, "item_id": "1:x"},
        {**base, "category": "1:x"},
        {**base, "lat": 0.0},
        {**base, "lon": 0.0},
        {**base, "rating": 0.0},
    ]
    assert len(set(_ids(variants))) == len(variants)


def test_event_id_format_is_pinned() -> None:
    """The key layout is a contract (stable across processes and versions): pin one id."""
    key = "\x00".join(
        ["u1", "1704067200000000", "view", "i9", "", "4621819117588971520", "2",
         "", "", "", "", '{"a":1}']
    )  # fmt: skip
    want = "h:" + hashlib.md5(key.encode()).hexdigest()
    record = {**BASE, "item_id": "i9", "price": 10, "quantity": 2, "attrs": {"a": 1}}
    assert _ids([record]) == [want]


def test_a_nul_inside_a_string_cannot_fake_a_field_boundary() -> None:
    a = {**BASE, "item_id": "x\x00y"}
    b = {**BASE, "item_id": "x", "category": "y"}
    ids = _ids([a, b, a])
    assert ids[0] != ids[1]
    assert ids[0] == ids[2]
    fields = ["2:u1", "16:1704067200000000", "4:view", "3:x\x00y", *["~"] * 8]
    framed = "\x00" + "|".join(fields)
    assert ids[0] == "h:" + hashlib.md5(framed.encode()).hexdigest()


def test_given_event_ids_are_kept() -> None:
    ids = _ids([{**BASE, "event_id": "e1"}, BASE])
    assert ids[0] == "e1"
    assert ids[1].startswith("h:")


_event_values = st.fixed_dictionaries(
    {
        "user_id": st.text(min_size=1, max_size=8).filter(lambda s: s.strip() != ""),
        "ts": st.integers(-(10**10), 10**10),
        "type": st.sampled_from(["view", "cart", "buy"]),
    },
    optional={
        "item_id": st.text(max_size=6),
        "category": st.one_of(st.text(max_size=6), st.sampled_from(["\x00", "a\x00b"])),
        "price": st.floats(0, 1e9),
        "quantity": st.integers(1, 10**6),
        "rating": st.floats(-10, 10),
        "text": st.text(max_size=10),
        "lat": st.floats(-90, 90),
        "lon": st.floats(-180, 180),
        "attrs": st.dictionaries(st.text(max_size=3), st.integers(-(2**63), 2**63 - 1), max_size=3),
    },
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_event_values, min_size=1, max_size=10))
def test_vectorised_ids_equal_the_reference(records: list[dict[str, Any]]) -> None:
    events, rejects = run(records)
    assert rejects == []
    got = derive_event_ids(events)["event_id"].to_list()
    want = [event_id_of(row) for row in events.iter_rows(named=True)]
    assert got == want
    assert event_key(events.row(0, named=True))  # non-empty, deterministic


# ---------------------------------------------------------------- frames


def test_validate_frame_csv_cells_are_text() -> None:
    frame = pl.DataFrame(
        {
            "user_id": ["u1", "", "u3", "u4"],
            "ts": ["1704067200", "2024-01-01", " 1704067200000 ", "nope"],
            "type": ["view", "view", "view", "view"],
            "price": ["10", "", "1e1", "abc"],
            "quantity": ["2", "1.0", "", "0"],
        }
    )
    events, rejects = validate_frame(frame, source="f.csv", raw_format="csv")
    assert events["user_id"].to_list() == ["u1", "u3"]
    assert events["ts"].to_list() == [JAN1, JAN1]
    assert events["price"].to_list() == [10.0, 10.0]
    assert events["quantity"].to_list() == [2, None]
    assert [d.line for d in rejects] == [2, 4]
    assert rejects[0].reason == "user_id: required field is missing"
    assert rejects[0].raw == ",2024-01-01,view,,1.0"
    assert rejects[1].reason == (
        "ts: not an RFC 3339 time with offset, a date or an epoch number, got 'nope'; "
        "price: must be a number, got 'abc'; quantity: must be an integer >= 1, got 0"
    )


def test_validate_frame_unknown_column_rejects_every_row() -> None:
    frame = pl.DataFrame(
        {"user_id": ["u1", "u2"], "ts": [1, 2], "type": ["v", "v"], "colour": ["r", None]}
    )
    events, rejects = validate_frame(frame, source="f.parquet", lines=pl.Series([10, 11]))
    assert events.height == 0
    assert [(d.line, d.reason) for d in rejects] == [
        (10, "colour: unknown field (put free-form fields under attrs)"),
        (11, "colour: unknown field (put free-form fields under attrs)"),
    ]
    assert rejects[0].raw == '{"user_id": "u1", "ts": 1, "type": "v", "colour": "r"}'


def test_validate_frame_native_types() -> None:
    frame = pl.DataFrame(
        {
            "user_id": [1, 2, 3, 4],
            "ts": [datetime(2024, 1, 1, 8, tzinfo=UTC)] * 4,
            "type": pl.Series(["View", "view", "view", "view"], dtype=pl.Categorical),
            "price": ["12.5", "x", None, "1"],
            "quantity": pl.Series([1, 2, None, 4], dtype=pl.Int32),
            "attrs": ['{"b":1,"a":2}', None, "[1]", "{bad"],
        }
    )
    events, rejects = validate_frame(frame, source="f.parquet")
    assert events.row(0, named=True) | {"event_id": None} == {
        **dict.fromkeys(EVENT_COLUMNS),
        "user_id": "1",
        "ts": JAN1 + 8 * 3_600_000_000,
        "type": "view",
        "price": 12.5,
        "quantity": 1,
        "attrs": '{"a":2,"b":1}',
        LINE_COLUMN: 1,
    }
    assert [d.reason for d in rejects[:2]] == [
        "price: must be a number, got 'x'",
        "attrs: must be a JSON object, got list",
    ]
    assert rejects[2].reason.startswith("attrs: malformed JSON (")


def test_validate_frame_dates_and_naive_timestamps() -> None:
    frame = pl.DataFrame({"user_id": ["a", "b"], "type": ["v", "v"]}).with_columns(
        pl.Series("ts", [date(2024, 1, 1), None])
    )
    events, rejects = validate_frame(frame, source="f.parquet")
    assert events["ts"].to_list() == [JAN1]
    assert rejects[0].reason == "ts: required field is missing"
    naive = frame.with_columns(pl.Series("ts", [datetime(2024, 1, 1), datetime(2024, 1, 2)]))
    _, rejects = validate_frame(naive, source="f.parquet")
    assert [d.reason for d in rejects] == [
        "ts: timestamp without time zone, got 2024-01-01 00:00:00.000000",
        "ts: timestamp without time zone, got 2024-01-02 00:00:00.000000",
    ]


def test_validate_frame_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="raw_format"):
        validate_frame(pl.DataFrame({"user_id": ["a"]}), source="x", raw_format="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lines"):
        validate_frame(pl.DataFrame({"user_id": ["a"]}), source="x", lines=pl.Series([1, 2]))
