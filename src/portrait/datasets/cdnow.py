"""CDNOW master file (Fader & Hardie, shipped in ``lifetimes``) to purchase events.

``CDNOW_master.txt`` is whitespace-aligned text with a header line
(`` customer_id  date number_of_cds  dollar_value``) and rows like
`` 00002 19970112  5   77.00``: one row per order. A customer can have several
identical rows on one day; they are distinct orders and stay distinct events
(their ids are line numbers, never content hashes).

Each row becomes a ``purchase`` at 00:00 UTC of its date with ``price`` = the
order's total in dollars (not a unit price) and ``quantity`` = the number of
CDs (null when below 1, counted in the notes). ``event_id`` is
``cdnow:{line}`` with ``line`` the 1-based data line (the header is line 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

from portrait.datasets.contract import Conversion, midnight_utc, to_event_frame
from portrait.errors import DatasetError

MASTER = "CDNOW_master.txt"
ROW = (
    r"^\s*(?<customer_id>\d+)\s+(?<date>\d{8})\s+(?<number_of_cds>-?\d+)"
    r"\s+(?<dollar_value>-?\d+(?:\.\d*)?)\s*$"
)
FIELDS = ("customer_id", "date", "number_of_cds", "dollar_value")


def parse_master(text: str, source: str = MASTER) -> pl.DataFrame:
    """Rows of the master file as text fields plus ``line`` (1-based data line)."""
    lines = pl.DataFrame({"raw": text.splitlines()}, schema={"raw": pl.String})
    lines = lines.with_row_index("line")
    header = lines["raw"][0] if lines.height else ""
    if "customer_id" not in header:
        raise DatasetError(f"{source}:1: expected the header '{' '.join(FIELDS)}', got {header!r}")
    body = lines.slice(1).filter(pl.col("raw").str.strip_chars() != "")
    parsed = body.with_columns(pl.col("raw").str.extract_groups(ROW).alias("f")).unnest("f")
    bad = parsed.filter(pl.col("customer_id").is_null())
    if bad.height:
        line, raw = bad.row(0)[:2]
        raise DatasetError(
            f"{source}:{line + 1}: not '{' '.join(FIELDS)}': {raw!r} ({bad.height} such lines)"
        )
    return parsed.select("line", *FIELDS)


def purchase_events(master: pl.DataFrame) -> pl.DataFrame:
    """Contract events from :func:`parse_master` rows."""
    cds = pl.col("number_of_cds").cast(pl.Int64)
    day = pl.col("date").str.strptime(pl.Date, "%Y%m%d")
    return to_event_frame(
        master.select(
            pl.format("cdnow:{}", "line").alias("event_id"),
            pl.col("customer_id").cast(pl.Int64).cast(pl.String).alias("user_id"),
            midnight_utc(day).alias("ts"),
            pl.lit("purchase").alias("type"),
            pl.col("dollar_value").cast(pl.Float64).alias("price"),
            pl.when(cds >= 1).then(cds).alias("quantity"),
        )
    )


def convert(raw: Mapping[str, Path]) -> Conversion:
    """``{"CDNOW_master.txt": path}`` -> the events frame."""
    path = raw[MASTER]
    master = parse_master(path.read_text(encoding="utf-8"), str(path))
    below_one = int((master["number_of_cds"].cast(pl.Int64) < 1).sum())
    notes = {
        "orders": master.height,
        "quantity_below_1_set_to_null": below_one,
        "price": "dollar_value: the order total in US dollars",
    }
    return Conversion({"events": purchase_events(master)}, notes)
