"""Parquet event files: native column types, one row per event.

A row's ``line`` is its 1-based row index in the file. Batches are read with
Polars' native reader (``scan_parquet(...).slice(...)``): slices skip the row
groups and pages they do not need, so resuming at ``skip_rows`` does not read
what came before. A dead letter's raw is the row as a JSON object.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from portrait.errors import SourceError


@dataclass
class RowBlock:
    """``frame`` holds rows ``first_row .. first_row + height - 1`` (1-based) of the file."""

    frame: pl.DataFrame
    first_row: int


def parquet_rows(path: str, source: str) -> int:
    """The number of rows of a Parquet file (from its footer), or SourceError naming it."""
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise SourceError(f"{source}: not a readable Parquet file ({exc})") from exc


def row_blocks(path: str, source: str, batch_size: int, skip_rows: int) -> Iterator[RowBlock]:
    """Blocks of at most ``batch_size`` rows, starting after ``skip_rows`` rows."""
    total = parquet_rows(path, source)
    scan = pl.scan_parquet(path, glob=False, hive_partitioning=False)
    row = skip_rows
    while row < total:
        try:
            frame = scan.slice(row, batch_size).collect()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise SourceError(f"{source}: corrupt Parquet data after row {row} ({exc})") from exc
        if frame.height == 0:
            return
        yield RowBlock(frame, row + 1)
        row += frame.height
