"""Reading event files in validated batches, resumable at any batch boundary.

Supported files (by name, case-insensitive): ``.jsonl``, ``.ndjson`` and
``.json`` (JSON Lines), ``.jsonl.gz``/``.ndjson.gz``, ``.csv``, ``.csv.gz``
and ``.parquet``.

What a *row* is (``skip_rows``, ``EventBatch.first_row``/``rows_end`` and a
dead letter's ``line``):

* JSON Lines: the physical line, 1-based. Blank lines count as lines but are
  skipped silently.
* CSV: a dead letter's ``line`` and ``first_row`` are physical line numbers
  (the header is line 1, so the first data row is line 2), while
  ``skip_rows``/``rows_end`` count data records (header excluded, blank lines
  included). Without quoted multi-line cells, record ``k`` is on line ``k + 1``.
* Parquet: the 1-based row index.

``rows_end`` is a checkpoint: ``read_events(path, skip_rows=batch.rows_end)``
continues exactly after ``batch``. A file that cannot be used at all (missing,
a directory, unreadable, unknown type, not Parquet) raises
:class:`~portrait.errors.SourceError` when :func:`read_events` is called,
before any batch; bad records never raise, they come back as dead letters.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import polars as pl

from portrait.errors import SourceError, UsageError
from portrait.events.csvfile import CsvFile
from portrait.events.eventid import derive_event_ids
from portrait.events.jsonl import validate_run
from portrait.events.lines import LineSource
from portrait.events.parquetfile import parquet_rows, row_blocks
from portrait.events.schema import DeadLetter
from portrait.events.validate import validate_frame

FORMATS: dict[str, str] = {
    ".jsonl.gz": "jsonl",
    ".ndjson.gz": "jsonl",
    ".csv.gz": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}
_STREAM_ERRORS = (OSError, EOFError, zlib.error)


@dataclass
class EventBatch:
    """Validated events and dead letters from consecutive rows of one file."""

    source: str  # the path as given by the user
    first_row: int  # 1-based row (line for JSONL/CSV, row for Parquet) where this batch starts
    rows_end: int  # rows consumed from the start of the file through this batch (checkpoint)
    events: pl.DataFrame  # EVENT_SCHEMA columns in order + "_line"; event_id always filled
    rejects: list[DeadLetter] = field(default_factory=list)


def file_format(source: str) -> str:
    """``jsonl``, ``csv`` or ``parquet`` from the file name; SourceError if unknown."""
    name = source.lower()
    for suffix, kind in FORMATS.items():
        if name.endswith(suffix):
            return kind
    raise SourceError(f"{source}: unknown file type (supported: {', '.join(FORMATS)})")


def _check_file(source: str) -> Path:
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{source}: no such file")
    if path.is_dir():
        raise SourceError(f"{source}: is a directory, not an event file")
    return path


def _open(path: Path, source: str) -> BinaryIO:
    """Open a (possibly gzip-compressed) file for binary reading, checking it can be read."""
    try:
        if not path.name.lower().endswith(".gz"):
            return path.open("rb")
        stream = gzip.open(path, "rb")  # noqa: SIM115 - returned open, closed by the reader
    except OSError as exc:
        raise SourceError(f"{source}: cannot read ({exc})") from exc
    try:
        stream.peek(1)  # not gzip -> BadGzipFile now, not in the middle of a run
    except _STREAM_ERRORS as exc:
        stream.close()
        raise SourceError(f"{source}: cannot read ({exc})") from exc
    return stream  # type: ignore[return-value]


def read_events(
    path: str | os.PathLike[str], *, batch_size: int = 250_000, skip_rows: int = 0
) -> Iterator[EventBatch]:
    """Validated batches of the events in ``path`` (see the module docstring for rows).

    Each batch covers at most ``batch_size`` rows. An empty file yields nothing.
    """
    if batch_size < 1 or skip_rows < 0:
        raise UsageError(
            f"batch_size must be >= 1 and skip_rows >= 0, got {batch_size}, {skip_rows}"
        )
    source = os.fspath(path)
    checked = _check_file(source)
    kind = file_format(source)
    if kind == "parquet":
        if checked.stat().st_size == 0:
            return iter(())
        parquet_rows(source, source)  # a bad footer fails here, before any batch
        return _parquet(source, batch_size, skip_rows)
    stream = _open(checked, source)
    if kind == "csv":
        return _csv(stream, source, batch_size, skip_rows)
    return _jsonl(stream, source, batch_size, skip_rows)


def _jsonl(stream: BinaryIO, source: str, batch_size: int, skip_rows: int) -> Iterator[EventBatch]:
    with stream:
        try:
            src = LineSource(stream)
            src.skip(skip_rows)
            while (run := src.take(batch_size)) is not None:
                events, rejects = validate_run(run, source)
                if events.height or rejects:
                    end = run.first_line + run.count - 1
                    yield EventBatch(source, run.first_line, end, derive_event_ids(events), rejects)
        except _STREAM_ERRORS as exc:
            raise SourceError(f"{source}: cannot read ({exc})") from exc


def _csv(stream: BinaryIO, source: str, batch_size: int, skip_rows: int) -> Iterator[EventBatch]:
    with stream:
        try:
            reader = CsvFile(LineSource(stream), source)
            done = 0
            while done < skip_rows and (recs := reader.read(min(skip_rows - done, 1 << 20))):
                done += recs.count
            while (recs := reader.read(batch_size)) is not None:
                done += recs.count
                events, rejects = reader.validate(recs)
                if events.height or rejects:
                    yield EventBatch(
                        source, recs.first_line, done, derive_event_ids(events), rejects
                    )
        except _STREAM_ERRORS as exc:
            raise SourceError(f"{source}: cannot read ({exc})") from exc


def _parquet(source: str, batch_size: int, skip_rows: int) -> Iterator[EventBatch]:
    for block in row_blocks(source, source, batch_size, skip_rows):
        n = block.frame.height
        lines = pl.int_range(block.first_row, block.first_row + n, eager=True, dtype=pl.Int64)
        events, rejects = validate_frame(block.frame, source=source, lines=lines, raw_format="json")
        end = block.first_row + n - 1
        yield EventBatch(source, block.first_row, end, derive_event_ids(events), rejects)


def source_fingerprint(path: str | os.PathLike[str]) -> str:
    """Identity of a file for checkpoints: ``"<size>:<sha256 hex of first 1 MiB + last 64 KiB>"``.

    Cheap on any size; a file that was appended to or rewritten gets a new one.
    """
    source = os.fspath(path)
    checked = _check_file(source)
    try:
        with checked.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            digest = hashlib.sha256(f.read(1 << 20))
            f.seek(max(0, size - (64 << 10)))
            digest.update(f.read(64 << 10))
    except OSError as exc:
        raise SourceError(f"{source}: cannot read ({exc})") from exc
    return f"{size}:{digest.hexdigest()}"
