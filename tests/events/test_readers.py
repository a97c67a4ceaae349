"""Readers: every format, batching, resuming, line numbers, fingerprints."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portrait.errors import SourceError, UsageError
from portrait.events.readers import EventBatch, read_events, source_fingerprint
from portrait.events.schema import EVENT_COLUMNS, EVENT_SCHEMA, LINE_COLUMN
from portrait.events.validate import derive_event_ids

FIELDS = [
    "event_id",
    "user_id",
    "ts",
    "type",
    "item_id",
    "category",
    "price",
    "quantity",
    "rating",
    "text",
    "lat",
    "lon",
]


def sample_events(n: int = 20) -> list[dict[str, Any]]:
    """Varied, valid events: some with ids, string and number times, optional fields."""
    out = []
    for i in range(n):
        e: dict[str, Any] = {
            "user_id": f"u{i % 4}",
            "ts": 1_704_067_200 + i * 3600 if i % 3 else f"2024-01-0{1 + i % 5}T0{i % 10}:00:00Z",
            "type": ["view", "cart", "purchase"][i % 3],
        }
        if i % 2:
            e["event_id"] = f"e{i}"
        if i % 4 == 1:
            e |= {"item_id": f"i{i}", "category": "Sci-Fi", "price": i + 0.5, "quantity": 1 + i % 3}
        if i % 5 == 2:
            e |= {"rating": 4.5, "text": f"great, said {i}", "lat": 48.85, "lon": 2.35}
        out.append(e)
    return out


def write_jsonl(path: Path, rows: list[Any], *, blank_every: int = 0) -> Path:
    lines = []
    for i, row in enumerate(rows):
        if blank_every and i and i % blank_every == 0:
            lines.append(b"  ")
        lines.append(orjson.dumps(row))
    data = b"\n".join(lines) + b"\n"
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def csv_text(rows: list[dict[str, Any]], fields: list[str] = FIELDS) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    for row in rows:
        w.writerow(["" if row.get(f) is None else row.get(f) for f in fields])
    return buf.getvalue()


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    data = csv_text(rows).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]], row_group_size: int = 7) -> Path:
    frame = pl.DataFrame(
        {f: [r.get(f) for r in rows] for f in FIELDS if f != "ts"}
        | {"ts_text": [str(r["ts"]) for r in rows]}
    )
    # a Parquet ts column holds one type: strings here, parsed like CSV text
    frame = frame.rename({"ts_text": "ts"}).select(FIELDS)
    frame.write_parquet(path, row_group_size=row_group_size)
    return path


def read_all(path: Path | str, **kw: Any) -> tuple[pl.DataFrame, list[Any], list[EventBatch]]:
    batches = list(read_events(path, **kw))
    events = pl.concat([b.events for b in batches]) if batches else pl.DataFrame()
    rejects = [d for b in batches for d in b.rejects]
    return events, rejects, batches


WRITERS = {
    "a.jsonl": write_jsonl,
    "a.ndjson": write_jsonl,
    "a.json": write_jsonl,
    "a.jsonl.gz": write_jsonl,
    "a.ndjson.gz": write_jsonl,
    "A.JSONL": write_jsonl,
    "a.csv": write_csv,
    "a.csv.gz": write_csv,
    "a.parquet": write_parquet,
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_format_reads_the_same_events(tmp_path: Path, name: str) -> None:
    rows = sample_events()
    events, rejects, batches = read_all(WRITERS[name](tmp_path / name, rows))
    assert rejects == []
    reference, _, _ = read_all(write_jsonl(tmp_path / "ref.jsonl", rows))
    assert events.drop(LINE_COLUMN).equals(reference.drop(LINE_COLUMN))
    assert events.columns == [*EVENT_COLUMNS, LINE_COLUMN]
    assert events.schema == pl.Schema({**EVENT_SCHEMA, LINE_COLUMN: pl.Int64()})
    assert events["event_id"].null_count() == 0
    offset = 1 if name.lower().startswith("a.csv") else 0  # CSV: the header is line 1
    assert events[LINE_COLUMN].to_list() == [i + 1 + offset for i in range(len(rows))]
    assert batches[0].source == str(tmp_path / name)


def test_derived_ids_are_equal_across_formats(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "event_id"} for r in sample_events()]
    ids = [
        read_all(write(tmp_path / name, rows))[0]["event_id"].to_list()
        for name, write in [
            ("x.jsonl", write_jsonl),
            ("x.csv", write_csv),
            ("x.parquet", write_parquet),
        ]
    ]
    assert ids[0] == ids[1] == ids[2]
    assert all(i.startswith("h:") for i in ids[0])
    assert len(set(ids[0])) == len(rows)


@pytest.mark.parametrize("name", ["b.jsonl", "b.csv", "b.parquet", "b.csv.gz"])
def test_small_batches_give_the_same_events_as_one(tmp_path: Path, name: str) -> None:
    path = WRITERS["a" + name[1:]](tmp_path / name, sample_events(23))
    whole, _, one = read_all(path)
    split, _, many = read_all(path, batch_size=3)
    assert len(one) == 1
    assert len(many) >= 8
    assert split.equals(whole)
    assert all(b.events.height <= 3 for b in many)
    ends = [b.rows_end for b in many]
    assert ends == sorted(ends)
    assert ends[-1] == 23
    assert [b.first_row for b in many[1:]] == [e + 1 + (".csv" in name) for e in ends[:-1]]


@pytest.mark.parametrize("name", ["c.jsonl", "c.csv", "c.parquet", "c.jsonl.gz"])
def test_resuming_at_any_checkpoint_gives_exactly_the_rest(tmp_path: Path, name: str) -> None:
    path = WRITERS["a" + name[1:]](tmp_path / name, sample_events(17))
    whole, _, _ = read_all(path)
    _, _, batches = read_all(path, batch_size=4)
    seen = 0
    for b in batches:
        seen += b.events.height
        rest, _, _ = read_all(path, batch_size=5, skip_rows=b.rows_end)
        expected = whole.slice(seen)
        assert (rest.height if rest.columns else 0) == expected.height
        if expected.height:
            assert rest.equals(expected)
    assert list(read_events(path, skip_rows=10_000)) == []


def test_jsonl_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    rows = sample_events(6)
    path.write_bytes(
        b"\n".join(
            [
                orjson.dumps(rows[0]),
                b"",
                orjson.dumps(rows[1]),
                b" \t",
                b"",
                orjson.dumps(rows[2]),
                b"{oops",
                orjson.dumps(rows[3]),
            ]
        )
        + b"\n\n"
    )
    events, rejects, batches = read_all(path)
    assert events[LINE_COLUMN].to_list() == [1, 3, 6, 8]
    assert [(d.line, d.raw) for d in rejects] == [(7, "{oops")]
    assert batches[-1].rows_end == 9
    resumed, _, _ = read_all(path, skip_rows=3)
    assert resumed[LINE_COLUMN].to_list() == [6, 8]


def test_jsonl_without_final_newline_crlf_and_bom(tmp_path: Path) -> None:
    rows = sample_events(3)
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(orjson.dumps(r) for r in rows))
    events, rejects, batches = read_all(path)
    assert rejects == []
    assert events.height == 3
    assert batches[0].first_row == 1
    assert batches[0].rows_end == 3


def test_jsonl_fast_and_slow_paths_agree(tmp_path: Path) -> None:
    rows = [
        *sample_events(30),
        {"user_id": "x", "ts": 0, "type": "v", "attrs": {"b": [1, {"c": 2}], "a": 1}},
    ]
    clean, _, _ = read_all(write_jsonl(tmp_path / "fast.jsonl", rows[:30]))
    mixed, _, _ = read_all(write_jsonl(tmp_path / "slow.jsonl", rows))  # attrs -> slow path
    assert mixed.slice(0, 30).equals(clean)
    assert mixed["attrs"].to_list()[-1] == '{"a":1,"b":[1,{"c":2}]}'
    # a run whose first line has a number ts and later lines strings takes the fast path too
    swapped, rejects, _ = read_all(write_jsonl(tmp_path / "swap.jsonl", rows[1:30]))
    assert rejects == []
    assert swapped.drop(LINE_COLUMN).equals(clean.slice(1).drop(LINE_COLUMN))


def test_csv_quotes_multiline_cells_crlf_and_bom(tmp_path: Path) -> None:
    text = (
        "\ufeffuser_id,ts,type,text\r\n"
        'u1,2024-01-01T00:00:00Z,view,"hello, world"\r\n'
        "\r\n"
        'u2,2024-01-01T00:00:00Z,view,"two\r\nlines ""quoted"""\r\n'
        "u3,1704067200,view,\r\n"
    )
    path = tmp_path / "q.csv"
    path.write_bytes(text.encode())
    for bs in (1, 2, 100):
        events, rejects, batches = read_all(path, batch_size=bs)
        assert rejects == []
        assert events["text"].to_list() == ["hello, world", 'two\r\nlines "quoted"', None]
        assert events[LINE_COLUMN].to_list() == [2, 4, 6]
        assert batches[-1].rows_end == 4  # data records: u1, blank, u2 (two lines), u3
    resumed, _, _ = read_all(path, skip_rows=3)
    assert resumed["user_id"].to_list() == ["u3"]


def test_csv_header_problems_reject_every_row(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("user_id,ts,type,colour,type\nu1,0,view,red,view\n")
    events, rejects, _ = read_all(path)
    assert events.height == 0
    assert rejects[0].reason == (
        "record: column type repeats in the CSV header; "
        "colour: unknown field (put free-form fields under attrs)"
    )


def test_parquet_row_groups_and_skip_inside_a_group(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "g.parquet", sample_events(20), row_group_size=6)
    whole, _, _ = read_all(path)
    for skip in (0, 1, 5, 6, 7, 13, 19, 20):
        rest, _, batches = read_all(path, batch_size=4, skip_rows=skip)
        assert (rest.height if rest.columns else 0) == 20 - skip
        if skip < 20:
            assert rest.equals(whole.slice(skip))
            assert batches[0].first_row == skip + 1
            assert batches[-1].rows_end == 20


def test_empty_files_yield_nothing(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_bytes(b"")
    (tmp_path / "b.jsonl").write_bytes(b"\n  \n\n")
    (tmp_path / "e.csv").write_bytes(b"")
    (tmp_path / "h.csv").write_bytes(b"user_id,ts,type\n")
    (tmp_path / "e.parquet").write_bytes(b"")
    (tmp_path / "e.jsonl.gz").write_bytes(gzip.compress(b""))
    pl.DataFrame(schema={"user_id": pl.String, "ts": pl.Int64, "type": pl.String}).write_parquet(
        tmp_path / "z.parquet"
    )
    for name in ["e.jsonl", "b.jsonl", "e.csv", "h.csv", "e.parquet", "e.jsonl.gz", "z.parquet"]:
        assert list(read_events(tmp_path / name)) == [], name


def test_unusable_files_raise_before_any_batch(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("{}")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    (tmp_path / "dir.jsonl").mkdir()
    cases = {
        "x.txt": "unknown file type",
        "bad.parquet": "not a readable Parquet file",
        "bad.jsonl.gz": "cannot read",
        "dir.jsonl": "is a directory",
        "missing.csv": "no such file",
    }
    for name, why in cases.items():
        path = str(tmp_path / name)
        with pytest.raises(SourceError, match=why) as info:
            read_events(path)  # raises on the call, not on the first next()
        assert path in str(info.value)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.jsonl"
    path.write_text("{}\n")

    def deny(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", deny)
    with pytest.raises(SourceError, match="cannot read") as info:
        read_events(path)
    assert str(path) in str(info.value)


def test_bad_arguments(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", sample_events(2))
    with pytest.raises(UsageError):
        read_events(path, batch_size=0)
    with pytest.raises(UsageError):
        read_events(path, skip_rows=-1)


def test_source_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"x" * 3_000_000)
    first = source_fingerprint(path)
    assert first == source_fingerprint(str(path))
    size, digest = first.split(":")
    assert size == "3000000"
    assert len(digest) == 64
    with path.open("ab") as f:
        f.write(b"y")
    assert source_fingerprint(path) != first
    path.write_bytes(b"x" * 2_000_000 + b"z" + b"x" * 999_999)  # same size, middle changed
    assert source_fingerprint(path) == first  # documented: only head and tail are hashed
    with pytest.raises(SourceError, match="no such file"):
        source_fingerprint(tmp_path / "nope.csv")


TRICKY_CSV = [
    'u1,2024-01-01T00:00:00Z,view,"say ""hi"", ok"',
    'u2,2024-01-01T00:00:00Z,view,""',
    '"u3","1704067200","view","x,y,z"',
    "u4,1704067200,view,plain",
    '"u5",1704067200,view,"é ünïcödé, 🎉"',
    'u6,1704067200,view,"a","extra"',
    '"u7",1704067200,view',
]


def _tricky(tmp_path: Path, name: str, extra: list[str]) -> tuple[pl.DataFrame, list[Any]]:
    path = tmp_path / name
    path.write_text("\n".join(["user_id,ts,type,text", *TRICKY_CSV, *extra]) + "\n")
    events, rejects, _ = read_all(path)
    return events, rejects


def test_csv_quoted_fast_path_equals_the_csv_module(tmp_path: Path) -> None:
    fast, fast_rejects = _tricky(tmp_path, "fast.csv", [])
    # a cell spanning lines sends the whole run through the csv module
    slow, slow_rejects = _tricky(tmp_path, "slow.csv", ['u8,1704067200,view,"two\nlines"'])
    assert slow.slice(0, fast.height).equals(fast)
    assert fast["text"].to_list() == ['say "hi", ok', None, "x,y,z", "plain", "é ünïcödé, 🎉"]
    assert [(d.line, d.reason) for d in fast_rejects] == [
        (7, "record: expected 4 columns, got 5"),
        (8, "record: expected 4 columns, got 3"),
    ]
    assert [(d.line, d.reason, d.raw) for d in slow_rejects] == [
        (d.line, d.reason, d.raw) for d in fast_rejects
    ]


def test_csv_stray_quotes_follow_the_csv_module(tmp_path: Path) -> None:
    path = tmp_path / "stray.csv"
    path.write_text('user_id,ts,type,text\nu1,1704067200,view,5" screen\nu2,1704067200,view,ok\n')
    events, rejects, _ = read_all(path)
    assert rejects == []
    assert events["text"].to_list() == ['5" screen', "ok"]


def test_truncated_gzip_raises_source_error(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in sample_events(2000)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="cannot read") as info:
        list(read_events(path))
    assert str(path) in str(info.value)


def test_reading_does_not_mutate_batches_it_returned(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "event_id"} for r in sample_events(5)]
    batch = next(read_events(write_jsonl(tmp_path / "p.jsonl", rows)))
    before = batch.events.clone()
    nulled = batch.events.with_columns(pl.lit(None, pl.String).alias("event_id"))
    again = derive_event_ids(nulled)
    assert nulled["event_id"].null_count() == 5  # input left as it was
    assert again.equals(before)


_lines = st.one_of(
    st.builds(
        lambda u, t, p: orjson.dumps({"user_id": u, "ts": t, "type": "view", "price": p}),
        st.sampled_from(["a", "b", " c "]),
        st.one_of(st.integers(0, 2_000_000_000), st.just("2024-01-01T00:00:00+01:00")),
        st.one_of(st.none(), st.floats(-1, 100, allow_nan=False)),
    ),
    st.sampled_from([b"", b"  ", b"{bad", b"[1]", b'{"user_id":1}', b'{"attrs":{"a":1}}']),
)


@settings(max_examples=25, deadline=None)
@given(st.lists(_lines, max_size=30), st.integers(1, 7))
def test_jsonl_any_split_and_resume_point_gives_the_same_result(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], batch_size: int
) -> None:
    path = tmp_path_factory.mktemp("prop") / "p.jsonl"
    path.write_bytes(b"\n".join(lines))
    whole = list(read_events(path))
    parts = list(read_events(path, batch_size=batch_size))

    def flat(batches: list[EventBatch]) -> tuple[list[Any], list[Any]]:
        rows = [r for b in batches for r in b.events.iter_rows()]
        return rows, [d for b in batches for d in b.rejects]

    assert flat(parts) == flat(whole)
    assert len(flat(whole)[0]) + len(flat(whole)[1]) == sum(1 for x in lines if x.strip())
    for b in parts:
        rest = list(read_events(path, batch_size=batch_size, skip_rows=b.rows_end))
        later = [p for p in parts if p.first_row > b.rows_end]
        assert flat(rest) == flat(later)


@pytest.mark.parametrize("block", [1, 5, 64])
def test_tiny_read_blocks_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    rows = sample_events(15)
    path = write_jsonl(tmp_path / "t.jsonl", rows, blank_every=4)
    csv_path = tmp_path / "t.csv"
    csv_path.write_text(csv_text(rows).replace("great, said 2", "great,\nsaid 2"))
    want = [read_all(p, batch_size=4)[0] for p in (path, csv_path)]
    monkeypatch.setattr("portrait.events.lines.BLOCK_BYTES", block)
    for p, expected in zip((path, csv_path), want, strict=True):
        for bs in (1, 4, 1000):
            got, rejects, _ = read_all(p, batch_size=bs)
            assert rejects == []
            assert got.equals(expected)
