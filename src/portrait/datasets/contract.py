"""The shape of converted datasets: event frames and conversion results.

Converted event files carry exactly the columns of the event contract
(:data:`portrait.events.schema.EVENT_SCHEMA`), in that order, except that
``ts`` is a timezone-aware ``Datetime("us", "UTC")`` rather than epoch
microseconds: the file is self-describing for any Parquet reader, and the
engine's reader turns it into epoch microseconds on ingest. Rows are sorted by
``(ts, event_id)`` so a replay in file order is a replay in event-time order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from portrait.errors import DatasetError
from portrait.events.schema import EVENT_SCHEMA

TS_TYPE = pl.Datetime("us", "UTC")
EVENT_FILE_SCHEMA: dict[str, pl.DataType] = {**EVENT_SCHEMA, "ts": TS_TYPE}


@dataclass(frozen=True)
class Conversion:
    """What a converter produced: output key (``"events"``) -> frame, plus notes.

    ``notes`` are counts of anything the converter changed or dropped; they
    are recorded in the manifest so nothing is altered silently.
    """

    frames: dict[str, pl.DataFrame]
    notes: dict[str, Any] = field(default_factory=dict)


def epoch_seconds_to_ts(expr: pl.Expr) -> pl.Expr:
    """Epoch seconds (any numeric or numeric text) -> ``Datetime("us", "UTC")``."""
    us = (expr.cast(pl.Float64) * 1_000_000).round().cast(pl.Int64)
    return us.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def midnight_utc(day: pl.Expr) -> pl.Expr:
    """A ``Date`` -> 00:00 UTC of that day as ``Datetime("us", "UTC")``."""
    return day.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def to_event_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """Contract columns in contract order (absent ones as typed nulls), sorted."""
    columns = [
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in EVENT_FILE_SCHEMA.items()
    ]
    return frame.select(columns).sort("ts", "event_id")


def require_columns(frame: pl.DataFrame, names: tuple[str, ...], source: str) -> None:
    """Raise :class:`DatasetError` naming ``source`` and any missing column."""
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise DatasetError(f"{source}: missing column(s) {missing}; found {frame.columns}")
