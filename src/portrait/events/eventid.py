"""Content-derived event ids for events that arrive without one.

``event_id = "h:" + md5_hex(key)``, where ``key`` serialises the *normalised*
event (strings stripped, empty ones null; ts in epoch µs; canonical attrs) in
this field order: user_id, ts, type, item_id, category, price, quantity,
rating, text, lat, lon, attrs. Values are written as

* a string: its text;
* ts (epoch µs) and quantity: the decimal integer;
* a float: the decimal IEEE-754 bit pattern as an unsigned 64-bit integer, so
  the key never depends on how a library prints floats (-0.0 is folded into 0.0);
* null: nothing (an empty field; a normalised string is never empty).

**Plain key** (every string free of NUL): the 12 values joined with ``"\\x00"``.
Example: user ``u1`` viewing at epoch 0 -> ``"u1\\x000\\x00view" + "\\x00" * 9``.
**Framed key** (some string holds a NUL, which could fake a separator):
``"\\x00"`` then each field as ``~`` (null) or ``<UTF-8 byte length>:<value>``,
joined with ``|``. A plain key never starts with NUL (user_id is a non-empty,
NUL-free string), so the two forms cannot collide, and each form splits back
into its fields in exactly one way.

The keys are built with Polars; the hash runs in DuckDB (``md5``) over a
large batch, with hashlib over a small one (starting DuckDB costs more than
hashing an API post). :func:`event_key` is the slow reference.
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
)  # fmt: skip
_STRINGS = ("user_id", "type", "item_id", "category", "text", "attrs")
_FLOATS = frozenset({"price", "rating", "lat", "lon"})
PREFIX = "h:"
_NUL = "\x00"


def _text(field: str) -> pl.Expr:
    """A field as text (null stays null)."""
    c = pl.col(field)
    if field in _STRINGS:
        return c
    if field in _FLOATS:
        zero = pl.when(c == 0).then(pl.lit(0.0)).otherwise(c)  # -0.0 -> 0.0
        return zero.reinterpret(dtype=pl.UInt64).cast(pl.String)
    return c.cast(pl.Int64).cast(pl.String)


_PLAIN = pl.concat_str([_text(f).fill_null("") for f in HASHED_FIELDS], separator=_NUL)
_FRAMED = pl.concat_str(
    [
        pl.lit(_NUL),
        pl.concat_str(
            [
                pl.concat_str(
                    [_text(f).str.len_bytes().cast(pl.String), pl.lit(":"), _text(f)]
                ).fill_null("~")
                for f in HASHED_FIELDS
            ],
            separator="|",
        ),
    ]
)


def event_keys(events: pl.DataFrame) -> pl.Series:
    """The key of every row (see the module docstring), vectorised."""
    keys = events.select(_PLAIN.alias("k")).to_series()
    filled = [f for f in _STRINGS if events[f].null_count() < events.height]
    if not filled:
        return keys
    has_nul = pl.any_horizontal([pl.col(f).str.contains(_NUL, literal=True) for f in filled])
    framed = events.select(pl.arg_where(has_nul.fill_null(False))).to_series()
    if framed.len():
        keys = keys.scatter(framed, events[framed].select(_FRAMED).to_series())
    return keys


SMALL = 20_000  # up to this many keys, hashlib in a loop beats starting DuckDB (~15 ms)


def hash_events(events: pl.DataFrame) -> pl.Series:
    """``h:<md5>`` ids for every row of ``events`` (validated columns): keys by Polars,
    md5 by hashlib for a small batch (an API post), by DuckDB for a large one."""
    if events.height <= SMALL:
        md5 = hashlib.md5
        small = [PREFIX + md5(k.encode(), usedforsecurity=False).hexdigest()
                 for k in event_keys(events).to_list()]
        return pl.Series("event_id", small, pl.String)
    keys = pl.DataFrame([event_keys(events).alias("k")]).to_arrow()
    with duckdb.connect() as con:
        con.register("event_keys", keys)
        table = con.sql(f"SELECT '{PREFIX}' || md5(k) FROM event_keys").to_arrow_table()
    ids = pl.from_arrow(table.column(0))
    assert isinstance(ids, pl.Series)
    return ids.alias("event_id").cast(pl.String)


def derive_event_ids(events: pl.DataFrame) -> pl.DataFrame:
    """Fill null ``event_id`` with ``'h:' + md5`` of the normalised content.

    Equal events (after normalisation: ts as µs, stripped strings, canonical
    attrs) get equal ids in every process and with every library version.
    Rows that carry an id keep it; ``events`` itself is not modified.
    """
    missing = events["event_id"].is_null()
    count = int(missing.sum())
    if count == 0:
        return events
    if count == events.height:
        return events.with_columns(hash_events(events))
    rows = missing.arg_true()
    ids = events["event_id"].clone().scatter(rows, hash_events(events[rows]))
    return events.with_columns(ids)


def _value_text(field: str, v: object) -> str:
    if field in _FLOATS:
        return str(struct.unpack("<Q", struct.pack("<d", float(v) + 0.0))[0])  # type: ignore[arg-type]
    if field in _STRINGS:
        return str(v)
    return str(int(v))  # type: ignore[call-overload]


def event_key(event: Mapping[str, object]) -> str:
    """The reference, one event at a time: the key that :func:`hash_events` hashes."""
    values = [event.get(f) for f in HASHED_FIELDS]
    texts = [
        None if v is None else _value_text(f, v) for f, v in zip(HASHED_FIELDS, values, strict=True)
    ]
    if not any(isinstance(v, str) and _NUL in v for v in values):
        return _NUL.join("" if t is None else t for t in texts)
    framed = ["~" if t is None else f"{len(t.encode())}:{t}" for t in texts]
    return _NUL + "|".join(framed)


def event_id_of(event: Mapping[str, object]) -> str:
    """The reference id of one normalised event (slow; for tests and single events)."""
    return PREFIX + hashlib.md5(event_key(event).encode(), usedforsecurity=False).hexdigest()
