"""CSV records through Python's :mod:`csv`: the slow path, for what Polars cannot be
trusted with (quoted cells spanning lines, stray quotes, invalid UTF-8).

A Python loop per record, tracking the physical lines of each record so that
dead letters carry the line a record starts on and its original text.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from portrait.events.lines import LineRun, LineSource
from portrait.events.rules import FATAL

# A cell past every contract limit but still parsed, so that the reason can name its
# field ("text: too long ..."); csv's default of 128 KiB would reject the whole row.
FIELD_LIMIT = 16 << 20
_BLANK = " \t\r"  # all a blank line holds, as for LineRun.blank (not str.isspace)


@dataclass
class Records:
    """Records split into cells: one text column per header name, plus where and what they were."""

    cells: pl.DataFrame
    lines: pl.Series
    raws: pl.Series
    fatal: pl.Series
    count: int  # records consumed, blank ones included
    first_line: int  # physical line where these records start


def parse_slow(run: LineRun, src: LineSource, names: list[str]) -> Records:
    """Records of a run through :mod:`csv`, borrowing lines from ``src`` to finish a cell."""
    fed: list[str] = []
    bad_utf8: dict[int, int] = {}
    own = run.data.split(b"\n")  # keeps \r: a quoted cell may hold \r\n

    def decode(data: bytes) -> str:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_utf8[len(fed)] = exc.start
            text = data.decode("utf-8", "backslashreplace")
        fed.append(text)
        return text + "\n"

    def feed() -> Iterator[str]:
        for data in own:
            yield decode(data)
        while (more := src.take(1)) is not None:  # finish a quoted cell
            yield decode(more.data)

    reader = csv.reader(feed())
    limit = csv.field_size_limit(FIELD_LIMIT)  # process-wide; restored below
    try:
        return _parse(run, reader, (own, fed, bad_utf8), names)
    finally:
        csv.field_size_limit(limit)


def _parse(
    run: LineRun,
    reader: Any,
    state: tuple[list[bytes], list[str], dict[int, int]],
    names: list[str],
) -> Records:
    own, fed, bad_utf8 = state
    width = len(names)
    rows: list[list[str] | None] = []
    lines: list[int] = []
    raws: list[str] = []
    fatal: list[str | None] = []
    count = start = 0
    while start < len(own):
        why: str | None = None
        try:
            cells: list[str] | None = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            cells, why = None, f"record: malformed CSV ({exc})"
        end = reader.line_num
        count += 1
        bad = [i for i in range(start, end) if i in bad_utf8]
        if bad:
            cells, why = None, f"record: invalid UTF-8 at byte {bad_utf8[bad[0]]}"
        elif cells is not None and end - start == 1 and not fed[start].strip(_BLANK):
            start = end
            continue  # a blank line
        elif cells is not None and len(cells) != width:
            why = f"record: expected {width} columns, got {len(cells)}"
            cells = None
        rows.append(cells)
        lines.append(run.first_line + start)
        raws.append("\n".join(fed[start:end]).removesuffix("\r"))
        fatal.append(why)
        start = end
    return Records(
        _cells_frame(rows, names),
        pl.Series("line", lines, dtype=pl.Int64),
        pl.Series("raw", raws, dtype=pl.String),
        pl.Series(FATAL, fatal, dtype=pl.String),
        count,
        run.first_line,
    )


def _cells_frame(rows: list[list[str] | None], names: list[str]) -> pl.DataFrame:
    width = len(names)
    if width == 0:
        return pl.DataFrame(height=len(rows))
    filled = [r if r is not None else [None] * width for r in rows]
    columns = list(zip(*filled, strict=True)) if filled else [()] * width
    unique = unique_names(names)
    return pl.DataFrame(
        {
            name: pl.Series(name, col, dtype=pl.String)
            for name, col in zip(unique, columns, strict=True)
        }
    )


def unique_names(names: list[str]) -> list[str]:
    """Header names with repeats hidden (prefixed with NUL) so a frame can hold them."""
    seen: set[str] = set()
    out = []
    for i, name in enumerate(names):
        out.append(name if name not in seen else f"\0{i}")
        seen.add(name)
    return out
