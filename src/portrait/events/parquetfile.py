"""Parquet event files: native column types, one row per event.

A row's ``line`` is its 1-based row index in the file. Whole row groups
before ``skip_rows`` are skipped using the file's metadata, without reading
them. A dead letter's raw is the row as a JSON object.
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


def open_parquet(path: str, source: str) -> pq.ParquetFile:
    """Open a Parquet file, or raise SourceError naming it."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise SourceError(f"{source}: not a readable Parquet file ({exc})") from exc


def row_blocks(pf: pq.ParquetFile, source: str, batch_size: int, skip_rows: int) -> Iterator[RowBlock]:
    """Blocks of at most ``batch_size`` rows, starting after ``skip_rows`` rows."""
    meta = pf.metadata
    groups: list[int] = []
    row = 0  # rows before the current group
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if groups or row + n > skip_rows:
            groups.append(g)
        else:
            row += n
    if not groups:
        return
    drop = skip_rows - row  # rows still to skip inside the first kept group
    try:
        for batch in pf.iter_batches(batch_size=batch_size, row_groups=groups, use_threads=True):
            if drop >= batch.num_rows:
                drop -= batch.num_rows
                row += batch.num_rows
                continue
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            if drop:
                frame, row, drop = frame.slice(drop), row + drop, 0
            yield RowBlock(frame, row + 1)
            row += frame.height
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"{source}: corrupt Parquet data after row {row} ({exc})") from exc
