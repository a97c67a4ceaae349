"""JSON Lines: one JSON object per physical line; blank lines are skipped.

Fast path: pyarrow's JSON reader parses a whole run of lines against an
explicit, strict schema (a number where a string belongs, an unknown field,
an attrs object, mixed types... all make it fail). When it fails, or when it
returns something the contract's JSON reading would not (NaN, a different row
count), the run is decoded line by line with orjson and validated as records,
so the result never depends on which path ran.
"""

from __future__ import annotations

import io

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.json as pj

from portrait.events.framestage import stage_frame
from portrait.events.lines import LineRun
from portrait.events.rules import check
from portrait.events.schema import (
    EVENT_SCHEMA,
    NUMERIC_FIELDS,
    STRING_FIELDS,
    DeadLetter,
    empty_events,
)
from portrait.events.staging import Unreadable
from portrait.events.validate import dead_letters, validate_records

_MIN_BLOCK = 4 << 20
_OPEN_BRACE = ord("{")


def _schema(ts_type: pa.DataType) -> pa.Schema:
    fields = []
    for name in EVENT_SCHEMA:
        if name in STRING_FIELDS:
            fields.append((name, pa.string()))
        elif name in NUMERIC_FIELDS:
            fields.append((name, pa.float64()))
        elif name == "ts":
            fields.append((name, ts_type))
    return pa.schema(fields)  # no attrs: a run with attrs takes the slow path


_SCHEMAS = {"string": _schema(pa.string()), "number": _schema(pa.float64())}


def validate_run(run: LineRun, source: str) -> tuple[pl.DataFrame, list[DeadLetter]]:
    """Validate a run of JSONL lines; returns (events, dead letters)."""
    keep = np.flatnonzero(~run.blank())
    if len(keep) == 0:
        return empty_events(), []
    frame = None if b'"attrs"' in run.data else _fast_parse(run, keep)
    if frame is None:
        return _slow(run, keep, source)
    lines = pl.Series(keep + run.first_line, dtype=pl.Int64)
    events, rejected = check(stage_frame(frame, mode="json", lines=lines))

    def raws_of(rows: list[int]) -> list[str]:
        return [run.line(int(keep[r])).decode("utf-8", "backslashreplace") for r in rows]

    return events, dead_letters(rejected, source, raws_of)


def _first_ts_kind(run: LineRun, first: int) -> str:
    try:
        value = orjson.loads(run.line(first))
    except orjson.JSONDecodeError:
        return "string"
    ts = value.get("ts") if isinstance(value, dict) else None
    return "number" if isinstance(ts, int | float) and not isinstance(ts, bool) else "string"


def _fast_parse(run: LineRun, keep: np.ndarray) -> pl.DataFrame | None:
    """The run as a typed frame, or None where only the line-by-line path can be trusted."""
    starts, ends = run.bounds()
    first = np.frombuffer(run.data, dtype=np.uint8)[starts[keep]]
    if not (first == _OPEN_BRACE).all():
        return None  # a line that is not an object: pyarrow crashes on a leading null
    block = max(_MIN_BLOCK, int((ends - starts).max()) + 2)
    kind = _first_ts_kind(run, int(keep[0]))
    for attempt in (kind, "number" if kind == "string" else "string"):
        try:
            table = pj.read_json(
                io.BytesIO(run.data),
                read_options=pj.ReadOptions(block_size=block),
                parse_options=pj.ParseOptions(
                    explicit_schema=_SCHEMAS[attempt], unexpected_field_behavior="error"
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            if "Column(/ts)" in str(exc) and attempt == kind:
                continue  # the first line's ts type was not the run's
            return None
        break
    else:
        return None
    if table.num_rows != len(keep):
        return None
    try:  # pyarrow does not check that strings are UTF-8: a bad byte must be a dead letter
        table.validate(full=True)
    except pa.ArrowInvalid:
        return None
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    floats = [c for c, d in frame.schema.items() if d == pl.Float64]
    if floats and frame.select(pl.any_horizontal(~pl.col(floats).is_finite()).any()).item():
        return None  # NaN / Infinity literals: not JSON, orjson rejects them
    return frame


def _slow(run: LineRun, keep: np.ndarray, source: str) -> tuple[pl.DataFrame, list[DeadLetter]]:
    """Line by line with orjson: the reference reading of JSON Lines."""
    rows = keep.tolist()
    numbers = [run.first_line + i for i in rows]
    try:
        text = run.data.decode("utf-8")
    except UnicodeDecodeError:
        raws, records = _decode_lines(run.lines(), rows)
    else:
        lines = text.split("\n")
        raws = [lines[i].removesuffix("\r") for i in rows]
        records = [_loads(raw) for raw in raws]
    return validate_records(records, source=source, lines=numbers, raws=raws)


def _loads(text: str) -> object:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return Unreadable(f"json: malformed JSON ({str(exc)[:200]})")


def _decode_lines(lines: list[bytes], rows: list[int]) -> tuple[list[str], list[object]]:
    """Raws and records of some lines, one of which at least is not UTF-8."""
    raws: list[str] = []
    records: list[object] = []
    for i in rows:
        try:
            raw = lines[i].decode("utf-8")
        except UnicodeDecodeError as exc:
            raws.append(lines[i].decode("utf-8", "backslashreplace"))
            records.append(Unreadable(f"record: invalid UTF-8 at byte {exc.start}"))
        else:
            raws.append(raw)
            records.append(_loads(raw))
    return raws, records
