"""The event contract v1 as a columnar schema.

A *validated* batch of events is a Polars DataFrame with exactly the columns
of :data:`EVENT_SCHEMA` (in that order) plus ``_line`` (the 1-based line or
row of the source record, kept for provenance). Times are epoch microseconds
UTC (see :mod:`portrait.timeutil`). ``attrs`` is canonical JSON text (sorted
keys) or null.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "user_id": pl.String(),
    "ts": pl.Int64(),
    "type": pl.String(),
    "item_id": pl.String(),
    "category": pl.String(),
    "price": pl.Float64(),
    "quantity": pl.Int64(),
    "rating": pl.Float64(),
    "text": pl.String(),
    "lat": pl.Float64(),
    "lon": pl.Float64(),
    "attrs": pl.String(),
}
EVENT_COLUMNS: tuple[str, ...] = tuple(EVENT_SCHEMA)
LINE_COLUMN = "_line"
REQUIRED_FIELDS: tuple[str, ...] = ("user_id", "ts", "type")
STRING_FIELDS: tuple[str, ...] = ("event_id", "user_id", "type", "item_id", "category", "text")
NUMERIC_FIELDS: tuple[str, ...] = ("price", "quantity", "rating", "lat", "lon")
# Fields a spec may name: every contract field except free-form attrs/text blobs.
SPEC_FIELDS: tuple[str, ...] = (
    "event_id", "user_id", "ts", "type", "item_id", "category",
    "price", "quantity", "rating", "text", "lat", "lon",
)
# Personal whatever the spec says: sealed at rest (privacy/crypto.py), shown to admin
# keys only (with attrs, serve/profiles.py).
PERSONAL_FIELDS: tuple[str, ...] = ("text", "lat", "lon")
# Fields that can key a map feature (top_k, keyed decayed, distinct).
KEY_FIELDS: tuple[str, ...] = ("type", "item_id", "category", "text", "event_id")


@dataclass(frozen=True)
class DeadLetter:
    """A rejected record, kept raw with where it came from and why.

    ``reason`` names the field: ``"price: must be finite and >= 0, got -5"``;
    several problems are joined with ``"; "``.
    """

    source: str
    line: int
    reason: str
    raw: str
    user_id: str | None = None  # when the record had a usable one (for erasure)


def empty_events() -> pl.DataFrame:
    """A validated batch with no rows."""
    return pl.DataFrame(schema={**EVENT_SCHEMA, LINE_COLUMN: pl.Int64()})
