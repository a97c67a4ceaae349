"""Columnar staging: a frame (CSV cells, Parquet columns, a strict JSON parse) -> staged frame.

``mode`` says what a column's type means: ``"json"`` (typed by a strict JSON
reader), ``"csv"`` (every cell is text, numbers are parsed from text, an empty
cell is null) or ``"native"`` (Parquet: native types; a column of another type
is parsed like CSV text). Vectorised; messages are formatted only for the rows
that have a problem.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import orjson
import polars as pl

from portrait.events.rules import RECORD_ERR, err_col, show_str
from portrait.events.schema import EVENT_SCHEMA, LINE_COLUMN, NUMERIC_FIELDS, STRING_FIELDS
from portrait.events.staging import UNKNOWN, BadJSON, attrs_text, field_name

StageMode = Literal["json", "csv", "native"]


def _nulls(n: int) -> pl.Series:
    """A fresh all-null String series (fresh: ``scatter`` writes in place)."""
    return pl.repeat(None, n, dtype=pl.String, eager=True)


def _messages(frame: pl.DataFrame, mask: pl.Expr, message: pl.Expr) -> pl.Series | None:
    """Messages for the rows where ``mask`` holds (formatted only for those rows)."""
    rows = frame.select(pl.arg_where(mask.fill_null(False))).to_series()
    if rows.len() == 0:
        return None
    texts = frame[rows].select(message).to_series()
    return _nulls(frame.height).scatter(rows, texts)


class _FrameStager:
    def __init__(self, frame: pl.DataFrame, mode: StageMode) -> None:
        self.frame, self.mode = frame, mode
        self.exprs: list[pl.Expr] = []
        self.columns: dict[str, pl.Series] = {}
        self.errors: dict[str, pl.Series] = {}

    def fail_unless(self, field: str, mask: pl.Expr, message: pl.Expr) -> None:
        found = _messages(self.frame, mask, message)
        if found is not None:
            self.errors[field] = found

    def text(self, name: str) -> pl.Expr:
        """The column as text; in csv mode an empty cell is null."""
        c, dtype = pl.col(name), self.frame.schema[name]
        t = c if dtype == pl.String else c.cast(pl.String, strict=False)
        if self.mode == "csv":
            t = pl.when(t != "").then(t)
        return t

    def supported(self, name: str) -> bool:
        dtype = self.frame.schema[name]
        # Duration: no cast to text (Polars raises on the first value, even non-strict)
        if dtype.is_nested() or dtype == pl.Object or isinstance(dtype, pl.Duration):
            self.fail_unless(
                name, pl.col(name).is_not_null(), pl.lit(f"{name}: unsupported column type {dtype}")
            )
            return False
        if dtype == pl.Binary:
            self._decode(name)
        return True

    def _decode(self, name: str) -> None:
        """A Binary column as text: a value that is not UTF-8 is null, and a problem of its
        row (a non-strict cast raises on it in Polars, failing the whole file)."""
        texts: list[str | None] = []
        whys: list[str | None] = []
        for raw in self.frame[name].to_list():
            text = why = None
            if isinstance(raw, bytes):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    why = f"{name}: invalid UTF-8 at byte {exc.start}"
            texts.append(text)
            whys.append(why)
        self.frame = self.frame.with_columns(pl.Series(name, texts, dtype=pl.String))
        if any(why is not None for why in whys):
            self.errors[name] = pl.Series(whys, dtype=pl.String)

    def string_field(self, name: str) -> None:
        if self.supported(name):
            self.exprs.append(self.text(name).alias(name))

    def number_field(self, name: str, target: str) -> None:
        c, dtype = pl.col(name), self.frame.schema[name]
        if dtype.is_numeric():
            self.exprs.append(c.cast(pl.Float64).alias(target))
        elif self.supported(name):
            t = self.text(name)
            num = t.str.strip_chars().cast(pl.Float64, strict=False)
            self.exprs.append(num.alias(target))
            if target == "ts_num":
                self.exprs.append(pl.when(num.is_null()).then(t).alias("ts_str"))
            else:
                msg = pl.format(f"{name}: must be a number, got {{}}", show_str(t))
                self.fail_unless(name, t.is_not_null() & num.is_null(), msg)

    def ts_field(self) -> None:
        c, dtype = pl.col("ts"), self.frame.schema["ts"]
        if isinstance(dtype, pl.Datetime):
            if dtype.time_zone is None:
                msg = pl.format("ts: timestamp without time zone, got {}", c.cast(pl.String))
                self.fail_unless("ts", c.is_not_null(), msg)
            else:
                self.exprs.append(c.dt.epoch("us").alias("ts_us"))
        elif dtype == pl.Date:
            self.exprs.append((c.dt.epoch("d").cast(pl.Int64) * 86_400_000_000).alias("ts_us"))
        elif self.mode == "json" and dtype == pl.String:
            self.exprs.append(c.alias("ts_str"))
        else:
            self.number_field("ts", "ts_num")

    def attrs_field(self) -> None:
        dtype = self.frame.schema["attrs"]
        if dtype == pl.Null:
            return
        if isinstance(dtype, pl.Struct):
            values = self.frame["attrs"]
            decode: Callable[[object], object] = _identity
        elif self.supported("attrs"):
            values = self.frame.select(self.text("attrs")).to_series()
            decode = _loads_text
        else:
            return
        rows = values.is_not_null().arg_true()
        texts: list[str | None] = []
        whys: list[str | None] = []
        for raw in values.gather(rows).to_list():
            text, why = attrs_text(decode(raw))
            texts.append(text)
            whys.append(why)
        self.columns["attrs"] = _nulls(values.len()).scatter(
            rows, pl.Series(texts, dtype=pl.String)
        )
        if any(w is not None for w in whys):
            self.errors["attrs"] = _nulls(values.len()).scatter(
                rows, pl.Series(whys, dtype=pl.String)
            )


def _identity(v: object) -> object:
    return v


def _loads_text(raw: object) -> object:
    try:
        return orjson.loads(str(raw))
    except orjson.JSONDecodeError as exc:
        return BadJSON(f"attrs: malformed JSON ({exc})")


def stage_frame(
    frame: pl.DataFrame,
    *,
    mode: StageMode,
    lines: pl.Series,
    record_errors: Sequence[str] = (),
) -> pl.DataFrame:
    """A columnar frame -> staged frame (see the module docstring for ``mode``)."""
    st = _FrameStager(frame, mode)
    unknown = [f"{field_name(c)}: {UNKNOWN}" for c in frame.columns if c not in EVENT_SCHEMA]
    for name in frame.columns:
        if name in STRING_FIELDS:
            st.string_field(name)
        elif name in NUMERIC_FIELDS:
            st.number_field(name, name)
        elif name == "ts":
            st.ts_field()
        elif name == "attrs":
            st.attrs_field()
    staged = st.frame.select(st.exprs) if st.exprs else pl.DataFrame(height=frame.height)
    extra = [s.alias(name) for name, s in st.columns.items()]
    extra += [s.alias(err_col(f)) for f, s in st.errors.items()]
    problems = [*record_errors, *unknown]
    if problems:
        extra.append(pl.repeat("; ".join(problems), frame.height, eager=True).alias(RECORD_ERR))
    extra.append(lines.cast(pl.Int64).alias(LINE_COLUMN))
    return staged.with_columns(extra)
