"""Validation against the event contract v1: records or frames in, events and dead letters out.

Both entry points return ``(events, rejects)``: ``events`` has the
:data:`~portrait.events.schema.EVENT_SCHEMA` columns in order plus ``_line``
(Int64), ``event_id`` still null where the input had none (fill it with
:func:`derive_event_ids`); ``rejects`` is one :class:`DeadLetter` per rejected
record, in input order, with a reason that names every problem
(``"price: must be finite and >= 0, got -5; quantity: must be an integer >= 1, got 0"``).

Normalisation: strings are stripped (an empty optional string is null),
``type`` is lower-cased, ``ts`` becomes epoch µs UTC, ``quantity`` an integer,
``-0.0`` becomes ``0.0``, ``attrs`` canonical JSON text (sorted keys).
Limits: user_id 256 characters, type 64, text 65,536, attrs 65,536 (as JSON),
other strings 1,024.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Literal

import polars as pl

from portrait.events.eventid import derive_event_ids
from portrait.events.framestage import stage_frame
from portrait.events.rules import REASON, ROW, check
from portrait.events.schema import LINE_COLUMN, DeadLetter
from portrait.events.staging import stage_records

__all__ = ["derive_event_ids", "validate_frame", "validate_records"]

RawFormat = Literal["json", "csv"]
RawsOf = Callable[[list[int]], list[str]]  # 0-based rows -> their raw texts


def validate_records(
    records: Sequence[object], *, source: str, lines: Sequence[int], raws: Sequence[str]
) -> tuple[pl.DataFrame, list[DeadLetter]]:
    """Validate already-decoded JSON values (an HTTP body, a JSONL chunk).

    Typing is strict, as JSON allows it to be: a string is not a number, a
    number is not a string, a boolean is neither. ``lines[i]`` and ``raws[i]``
    say where record ``i`` came from and what it looked like; they go into its
    dead letter if it is rejected. Never raises on bad records.
    """
    if not len(records) == len(lines) == len(raws):
        raise ValueError(
            f"records, lines and raws differ in length: {len(records)}, {len(lines)}, {len(raws)}"
        )
    staged = stage_records(records).with_columns(
        pl.Series(LINE_COLUMN, list(lines), dtype=pl.Int64)
    )
    events, rejected = check(staged)
    return events, dead_letters(rejected, source, lambda rows: [raws[r] for r in rows])


def validate_frame(
    frame: pl.DataFrame,
    *,
    source: str,
    lines: pl.Series | None = None,
    raw_format: RawFormat = "json",
) -> tuple[pl.DataFrame, list[DeadLetter]]:
    """Validate a columnar frame, vectorised.

    ``raw_format="csv"``: every cell is text (numbers parsed from text, an
    empty cell is null) and a dead letter's raw is the row as a CSV line.
    ``raw_format="json"``: columns keep their native types (Parquet); a column
    of an unexpected type is parsed like CSV text, and a dead letter's raw is
    the row as a JSON object. Columns outside the contract reject every row.
    ``lines`` defaults to 1..n.
    """
    if raw_format not in ("json", "csv"):
        raise ValueError(f"raw_format must be 'json' or 'csv', got {raw_format!r}")
    if lines is None:
        lines = pl.int_range(1, frame.height + 1, eager=True, dtype=pl.Int64)
    elif lines.len() != frame.height:
        raise ValueError(f"lines has {lines.len()} values for {frame.height} rows")
    staged = stage_frame(frame, mode="csv" if raw_format == "csv" else "native", lines=lines)
    events, rejected = check(staged)
    return events, dead_letters(rejected, source, lambda rows: row_raws(frame, rows, raw_format))


def dead_letters(rejected: pl.DataFrame, source: str, raws_of: RawsOf) -> list[DeadLetter]:
    """DeadLetters for the rejected rows of :func:`~portrait.events.rules.check`."""
    if rejected.height == 0:
        return []
    rows: list[int] = rejected[ROW].to_list()
    raws = raws_of(rows)
    uids = (
        rejected["_user_id"].to_list()
        if "_user_id" in rejected.columns
        else [None] * rejected.height
    )
    return [
        DeadLetter(source=source, line=line, reason=reason, raw=raw, user_id=uid or None)
        for line, reason, raw, uid in zip(
            rejected[LINE_COLUMN].to_list(), rejected[REASON].to_list(), raws, uids, strict=True
        )
    ]


def row_raws(frame: pl.DataFrame, rows: list[int], raw_format: RawFormat) -> list[str]:
    """The raw text of some rows of a frame: a CSV line or a JSON object each."""
    picked = frame[rows]
    if raw_format == "csv":
        out = []
        for values in picked.iter_rows():
            buf = io.StringIO()
            csv.writer(buf, lineterminator="").writerow(["" if v is None else v for v in values])
            out.append(buf.getvalue())
        return out
    return [
        json.dumps(row, default=_jsonable, ensure_ascii=False)
        for row in picked.iter_rows(named=True)
    ]


def _jsonable(v: object) -> object:
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, timedelta):
        return v.total_seconds()
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "backslashreplace")
    return repr(v)
