"""CSV event files: header on line 1, one record per row, every cell text.

Rows are *records*: a record usually is one physical line, but a quoted cell
may hold newlines, so a record can span several lines. A record's ``line`` is
the physical line it starts on (the header is line 1, so the first record is
on line 2). Blank lines are records that are skipped silently; they still
count for ``skip_rows``/``rows_end``.

Fast path: a run of lines without any ``"`` is split on commas with Polars
(no Python loop per record). Otherwise the run goes through :mod:`csv`, which
may borrow lines past the run to finish a quoted cell.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

import polars as pl

from portrait.events.lines import LineRun, LineSource
from portrait.events.rules import FATAL, check
from portrait.events.schema import DeadLetter
from portrait.events.staging import field_name, stage_frame
from portrait.events.validate import dead_letters


@dataclass
class Records:
    """Records split into cells: one text column per header name, plus where and what they were."""

    cells: pl.DataFrame
    lines: pl.Series
    raws: pl.Series
    fatal: pl.Series
    count: int  # records consumed, blank ones included
    first_line: int  # physical line where these records start


class CsvFile:
    """Reads records from a CSV line source; the header is read on construction."""

    def __init__(self, src: LineSource, source: str) -> None:
        self.src, self.source = src, source
        self.names: list[str] = []
        self.problems: list[str] = []
        self.empty = False
        header = src.take(1)
        if header is None:
            self.empty = True
            return
        self._read_header(header.line(0))

    def _read_header(self, data: bytes) -> None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.problems.append(f"record: invalid UTF-8 in the CSV header at byte {exc.start}")
            text = data.decode("utf-8", "backslashreplace")
        names = [n.strip() for n in next(csv.reader([text]), [])]
        if not any(names):
            self.problems.append("record: the CSV header (line 1) is empty")
        seen: set[str] = set()
        for name in names:
            if name in seen:
                self.problems.append(f"record: column {field_name(name)} repeats in the CSV header")
            seen.add(name)
        self.names = names

    @property
    def width(self) -> int:
        return len(self.names)

    def read(self, count: int) -> Records | None:
        """The next ``count`` records (or fewer); None at the end of the file."""
        if self.empty:
            return None
        run = self.src.take(count)
        if run is None:
            return None
        if b'"' not in run.data:
            try:
                return self._fast(run, run.data.decode("utf-8"))
            except UnicodeDecodeError:
                pass
        return self._slow(run)

    def _fast(self, run: LineRun, text: str) -> Records:
        raw = pl.Series("raw", [text]).str.split("\n").explode().str.strip_suffix("\r")
        frame = pl.DataFrame([raw, pl.int_range(0, run.count, eager=True).alias("i")])
        frame = frame.filter(pl.col("raw").str.strip_chars() != "")
        parts = pl.col("raw").str.split(",")
        n = parts.list.len()
        fatal = pl.when(n != self.width).then(
            pl.format(f"record: expected {self.width} columns, got {{}}", n)
        )
        names = _unique_names(self.names)
        cells = frame.select(
            [parts.list.get(j, null_on_oob=True).alias(name) for j, name in enumerate(names)]
        ) if names else pl.DataFrame(height=frame.height)
        extra = frame.select(fatal.alias(FATAL), (pl.col("i") + run.first_line).alias("line"))
        return Records(cells, extra["line"], frame["raw"], extra[FATAL], run.count, run.first_line)

    def _slow(self, run: LineRun) -> Records:
        fed: list[str] = []
        bad_utf8: dict[int, int] = {}
        own = run.lines()
        borrowed = 0

        def decode(data: bytes) -> str:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad_utf8[len(fed)] = exc.start
                text = data.decode("utf-8", "backslashreplace")
            fed.append(text)
            return text + "\n"

        def feed():  # type: ignore[no-untyped-def]
            nonlocal borrowed
            for data in own:
                yield decode(data)
            while (more := self.src.take(1)) is not None:  # finish a quoted cell
                borrowed += 1
                yield decode(more.data)

        reader = csv.reader(feed())
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
            elif cells is not None and (not cells or (len(cells) == 1 and not cells[0].strip())):
                start = end
                continue  # a blank line
            elif cells is not None and len(cells) != self.width:
                why = f"record: expected {self.width} columns, got {len(cells)}"
                cells = None
            rows.append(cells)
            lines.append(run.first_line + start)
            raws.append("\n".join(fed[start:end]))
            fatal.append(why)
            start = end
        return Records(
            _cells_frame(rows, self.names),
            pl.Series("line", lines, dtype=pl.Int64),
            pl.Series("raw", raws, dtype=pl.String),
            pl.Series(FATAL, fatal, dtype=pl.String),
            count,
            run.first_line,
        )

    def validate(self, recs: Records) -> tuple[pl.DataFrame, list[DeadLetter]]:
        """Validate records; returns (events, dead letters)."""
        named = recs.cells.select([c for c in recs.cells.columns if not c.startswith("\0")])
        staged = stage_frame(named, mode="csv", lines=recs.lines, record_errors=self.problems)
        staged = staged.with_columns(recs.fatal.alias(FATAL))
        events, rejected = check(staged)
        raws = recs.raws
        return events, dead_letters(rejected, self.source, lambda rows: raws.gather(rows).to_list())


def _cells_frame(rows: list[list[str] | None], names: list[str]) -> pl.DataFrame:
    width = len(names)
    if width == 0:
        return pl.DataFrame(height=len(rows))
    filled = [r if r is not None else [None] * width for r in rows]
    columns = list(zip(*filled, strict=True)) if filled else [()] * width
    unique = _unique_names(names)
    return pl.DataFrame(
        {name: pl.Series(name, col, dtype=pl.String) for name, col in zip(unique, columns, strict=True)}
    )


def _unique_names(names: list[str]) -> list[str]:
    """Header names with repeats hidden (prefixed with NUL) so a frame can hold them."""
    seen: set[str] = set()
    out = []
    for i, name in enumerate(names):
        out.append(name if name not in seen else f"\0{i}")
        seen.add(name)
    return out

