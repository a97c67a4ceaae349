"""CSV event files: header on line 1, one record per row, every cell text.

Rows are *records*: a record usually is one physical line, but a quoted cell
may hold newlines, so a record can span several lines. A record's ``line`` is
the physical line it starts on (the header is line 1, so the first record is
on line 2). Blank lines are records that are skipped silently; they still
count for ``skip_rows``/``rows_end``.

Three ways through a run of lines, fastest first (no Python loop per record in
the first two): no ``"`` at all -> split on commas with Polars; quotes, but
every line well-formed RFC 4180 -> Polars' CSV parser, one record per line;
anything else (a quoted cell spanning lines, stray quotes, invalid UTF-8) ->
:mod:`csv`, which may borrow lines past the run to finish a quoted cell
(:mod:`portrait.events.csvslow`).
"""

from __future__ import annotations

import csv

import polars as pl

from portrait.events.csvslow import Records, parse_slow, unique_names
from portrait.events.framestage import stage_frame
from portrait.events.lines import LineRun, LineSource
from portrait.events.rules import FATAL, check
from portrait.events.schema import DeadLetter
from portrait.events.staging import field_name
from portrait.events.validate import dead_letters

_CELL = r'(?:"(?:[^"]|"")*"|[^",]*)'
_STRICT_LINE = rf"^{_CELL}(?:,{_CELL})*$"  # RFC 4180: quotes only around whole cells
_QUOTED_CELL = r'"(?:[^"]|"")*"'


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
        try:
            text = run.data.decode("utf-8")
        except UnicodeDecodeError:
            return self._slow(run)
        frame = self._lines(run, text)
        if b'"' not in run.data:
            return self._fast(run, frame)
        return self._quoted(run, frame) or self._slow(run)

    @staticmethod
    def _lines(run: LineRun, text: str) -> pl.DataFrame:
        """The run's non-blank lines (``raw``) and their numbers (``line``)."""
        raw = pl.Series("raw", [text]).str.split("\n").explode().str.strip_suffix("\r")
        end = run.first_line + run.count
        line = pl.int_range(run.first_line, end, eager=True, dtype=pl.Int64).alias("line")
        return pl.DataFrame([raw, line]).filter(pl.Series(~run.blank()))

    def _records(self, run: LineRun, frame: pl.DataFrame, cells: pl.DataFrame) -> Records:
        """Records from one line each; ``frame`` has ``raw``, ``line`` and field counts ``n``."""
        fatal = pl.repeat(None, frame.height, dtype=pl.String, eager=True)
        wrong = frame.select(pl.arg_where(pl.col("n") != self.width)).to_series()
        if wrong.len():
            counts = frame["n"].gather(wrong)
            msgs = [f"record: expected {self.width} columns, got {c}" for c in counts]
            fatal = fatal.scatter(wrong, pl.Series(msgs, dtype=pl.String))
        return Records(
            cells, frame["line"], frame["raw"], fatal.alias(FATAL), run.count, run.first_line
        )

    def _fast(self, run: LineRun, frame: pl.DataFrame) -> Records:
        """No quote anywhere: split every line on commas."""
        frame = frame.with_columns(pl.col("raw").str.split(",").alias("parts"))
        frame = frame.with_columns(pl.col("parts").list.len().alias("n"))
        names = unique_names(self.names)
        cells = (
            frame.select(
                pl.col("parts").list.get(j, null_on_oob=True).alias(name)
                for j, name in enumerate(names)
            )
            if names
            else pl.DataFrame(height=frame.height)
        )
        return self._records(run, frame, cells)

    def _quoted(self, run: LineRun, frame: pl.DataFrame) -> Records | None:
        """Quoted cells, none spanning lines: Polars' CSV parser, one record per line.

        Only when every line is well-formed RFC 4180 (quotes around whole cells);
        otherwise None, and the :mod:`csv` module decides.
        """
        if not frame.select(pl.col("raw").str.contains(_STRICT_LINE).all()).item():
            return None
        unquoted = pl.col("raw").str.replace_all(_QUOTED_CELL, "")
        n = unquoted.str.count_matches(",", literal=True) + 1
        frame = frame.with_columns(n.cast(pl.Int64).alias("n"))
        names = unique_names(self.names)
        if not names:
            return self._records(run, frame, pl.DataFrame(height=frame.height))
        good = frame.select(pl.arg_where(pl.col("n") == self.width)).to_series()
        text = "\n".join(frame["raw"].gather(good).to_list())
        generic = [f"c{j}" for j in range(len(names))]
        parsed = (
            pl.read_csv(
                text.encode(),
                has_header=False,
                new_columns=generic,
                infer_schema=False,
                quote_char='"',
                raise_if_empty=False,
            )
            if good.len()
            else pl.DataFrame(schema=dict.fromkeys(generic, pl.String))
        )
        if parsed.height != good.len():
            return None
        if good.len() == frame.height:
            return self._records(run, frame, parsed.rename(dict(zip(generic, names, strict=True))))
        cells = pl.DataFrame(
            {
                name: pl.repeat(None, frame.height, dtype=pl.String, eager=True).scatter(
                    good, parsed[col]
                )
                for col, name in zip(generic, names, strict=True)
            }
        )
        return self._records(run, frame, cells)

    def _slow(self, run: LineRun) -> Records:
        return parse_slow(run, self.src, self.names)

    def validate(self, recs: Records) -> tuple[pl.DataFrame, list[DeadLetter]]:
        """Validate records; returns (events, dead letters)."""
        named = recs.cells.select([c for c in recs.cells.columns if not c.startswith("\0")])
        staged = stage_frame(named, mode="csv", lines=recs.lines, record_errors=self.problems)
        staged = staged.with_columns(recs.fatal.alias(FATAL))
        events, rejected = check(staged)
        raws = recs.raws
        return events, dead_letters(rejected, self.source, lambda rows: raws.gather(rows).to_list())
