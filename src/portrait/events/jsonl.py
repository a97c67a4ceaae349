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

from portrait.events.lines import LineRun
from portrait.events.rules import check
from portrait.events.schema import (
    EVENT_SCHEMA,
    NUMERIC_FIELDS,
    STRING_FIELDS,
    DeadLetter,
    empty_events,
)
from portrait.events.staging import Unreadable, stage_frame
from portrait.events.validate import dead_letters, validate_records

_MIN_BLOCK = 4 << 20


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
    frame = _fast_parse(run, keep)
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
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    floats = [c for c, d in frame.schema.items() if d == pl.Float64]
    if floats and frame.select(pl.any_horizontal(~pl.col(floats).is_finite()).any()).item():
        return None  # NaN / Infinity literals: not JSON, orjson rejects them
    return frame


def _slow(run: LineRun, keep: np.ndarray, source: str) -> tuple[pl.DataFrame, list[DeadLetter]]:
    lines = run.lines()
    records: list[object] = []
    raws: list[str] = []
    numbers: list[int] = []
    for i in keep.tolist():
        data = lines[i]
        numbers.append(run.first_line + i)
        try:
            raws.append(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raws.append(data.decode("utf-8", "backslashreplace"))
            records.append(Unreadable(f"record: invalid UTF-8 at byte {exc.start}"))
            continue
        try:
            records.append(orjson.loads(data))
        except orjson.JSONDecodeError as exc:
            records.append(Unreadable(f"json: malformed JSON ({str(exc)[:200]})"))
    return validate_records(records, source=source, lines=numbers, raws=raws)
