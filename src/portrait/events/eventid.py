"""Content-derived event ids for events that arrive without one.

``event_id = "h:" + md5_hex(key)`` where ``key`` is the normalised event
serialised field by field, in this order: user_id, ts, type, item_id, category,
price, quantity, rating, text, lat, lon, attrs. Each field is written as

* ``~`` when null;
* ``<UTF-8 byte length>:<text>`` for a string (so no content can fake a separator);
* the decimal integer for ts (epoch µs) and quantity;
* the decimal IEEE-754 bit pattern (unsigned 64-bit) for a float, so the key
  never depends on how a library prints floats; -0.0 is folded into 0.0;

and the fields are joined with ``|``. Example: user ``u1`` viewing nothing at
epoch 0 -> ``2:u1|0|4:view|~|~|~|~|~|~|~|~|~``. The hash runs in DuckDB
(``md5``) over the whole batch; :func:`event_key` is the slow reference.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

import duckdb
import polars as pl

HASHED_FIELDS: tuple[str, ...] = (
    "user_id", "ts", "type", "item_id", "category", "price",
    "quantity", "rating", "text", "lat", "lon", "attrs",
)
_STRINGS = frozenset({"user_id", "type", "item_id", "category", "text", "attrs"})
_FLOATS = frozenset({"price", "rating", "lat", "lon"})
PREFIX = "h:"


def _sql_token(field: str) -> str:
    if field in _STRINGS:
        return f"coalesce(strlen({field})::VARCHAR || ':' || {field}, '~')"
    return f"coalesce({field}::VARCHAR, '~')"


_KEY_SQL = " || '|' || ".join(_sql_token(f) for f in HASHED_FIELDS)
_HASH_SQL = f"SELECT '{PREFIX}' || md5({_KEY_SQL}) AS event_id FROM events_to_hash"


def hash_events(events: pl.DataFrame) -> pl.Series:
    """``h:<md5>`` ids for every row of ``events`` (validated columns), vectorised."""
    frame = events.select(
        [
            (pl.col(f) + 0.0).reinterpret(dtype=pl.UInt64).alias(f) if f in _FLOATS
            else pl.col(f).cast(pl.Int64 if f in ("ts", "quantity") else pl.String)
            for f in HASHED_FIELDS
        ]
    )
    with duckdb.connect() as con:
        con.register("events_to_hash", frame.to_arrow())
        table = con.sql(_HASH_SQL).to_arrow_table()
    ids = pl.from_arrow(table.column(0))
    assert isinstance(ids, pl.Series)
    return ids.alias("event_id").cast(pl.String)


def derive_event_ids(events: pl.DataFrame) -> pl.DataFrame:
    """Fill null ``event_id`` with ``'h:' + md5`` of the normalised content.

    Equal events (after normalisation: ts as µs, stripped strings, canonical
    attrs) get equal ids in every process and with every library version.
    Rows that carry an id keep it.
    """
    missing = events["event_id"].is_null()
    count = int(missing.sum())
    if count == 0:
        return events
    if count == events.height:
        return events.with_columns(hash_events(events))
    rows = missing.arg_true()
    ids = events["event_id"].scatter(rows, hash_events(events[rows]))
    return events.with_columns(ids)


def event_key(event: Mapping[str, object]) -> str:
    """The reference, one event at a time: the key that :func:`hash_events` hashes."""
    parts = []
    for field in HASHED_FIELDS:
        v = event.get(field)
        if v is None:
            parts.append("~")
        elif field in _STRINGS:
            text = str(v)
            parts.append(f"{len(text.encode())}:{text}")
        elif field in _FLOATS:
            bits = struct.unpack("<Q", struct.pack("<d", float(v) + 0.0))[0]  # type: ignore[arg-type]
            parts.append(str(bits))
        else:
            parts.append(str(int(v)))  # type: ignore[call-overload]
    return "|".join(parts)


def event_id_of(event: Mapping[str, object]) -> str:
    """The reference id of one normalised event (slow; for tests and single events)."""
    return PREFIX + hashlib.md5(event_key(event).encode(), usedforsecurity=False).hexdigest()
