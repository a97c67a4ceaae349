"""Staging: input records -> the staged frame that :mod:`portrait.events.rules` checks.

Staging sorts values into typed columns and reports *type* problems (a number
where a string belongs, an attrs that is not an object). Value problems
(ranges, lengths, impossible dates) are left to the rules.

Two ways in:

* :func:`stage_records` takes decoded JSON values (strict: ``"12.5"`` is not a
  price, ``123`` is not a user id, ``true`` is not a number). A Python loop,
  for the slow path and for API bodies.
* :func:`stage_frame` takes a columnar frame, vectorised. ``mode`` says what a
  column's type means: ``"json"`` (typed by a strict JSON reader), ``"csv"``
  (every cell is text, numbers are parsed from text, an empty cell is null) or
  ``"native"`` (Parquet: native types; a column of another type is parsed like
  CSV text).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import orjson
import polars as pl

from portrait.events.rules import FATAL, RECORD_ERR, err_col, show_str
from portrait.events.schema import EVENT_SCHEMA, LINE_COLUMN, NUMERIC_FIELDS, STRING_FIELDS

StageMode = Literal["json", "csv", "native"]
UNKNOWN = "unknown field (put free-form fields under attrs)"
_SHOW = 40


class Unreadable:
    """Placeholder in a record list for a record that could not be decoded."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def json_type(v: object) -> str:
    """The JSON name of a Python value's type (``list``, ``object``, ``string``...)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    return {dict: "object", list: "list"}.get(type(v), type(v).__name__)


def show(v: object) -> str:
    """A short, printable display of a decoded value for a reason."""
    if isinstance(v, str):
        return repr(v) if len(v) <= _SHOW else f"{v[:_SHOW]!r}… ({len(v)} characters)"
    if isinstance(v, bool | float) or v is None:
        return repr(v)
    if isinstance(v, int):
        return repr(v) if abs(v) < 10**30 else f"an integer of {len(hex(v)) * 1.2:.0f}+ digits"
    return json_type(v)


def field_name(key: object) -> str:
    """A field name fit for a reason: as is when short and printable, else its repr, cut."""
    if isinstance(key, str) and key.isprintable() and len(key) <= 64:
        return key
    text = repr(key)
    return text if len(text) <= 66 else text[:64] + "…"


def canonical_json(value: dict[object, object]) -> str:
    """attrs as canonical JSON text (sorted keys). Raises TypeError if it cannot be."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


class _BadJSON:
    """A text cell that should hold JSON but does not decode."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _attrs_of(v: object) -> tuple[str | None, str | None]:
    if isinstance(v, _BadJSON):
        return None, v.reason
    if type(v) is not dict:
        return None, f"attrs: must be a JSON object, got {json_type(v)}"
    try:
        return canonical_json(v), None
    except (TypeError, ValueError) as exc:
        return None, f"attrs: cannot be stored as JSON ({str(exc)[:80]})"


class _Columns:
    """Column lists being filled by :func:`stage_records`, with per-field problems."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.values: dict[str, list[object]] = {
            f: [None] * n for f in (*STRING_FIELDS, *NUMERIC_FIELDS, "ts_str", "ts_num", "attrs")
        }
        self.errors: dict[str, dict[int, str]] = {}

    def error(self, field: str, row: int, reason: str) -> None:
        bucket = self.errors.setdefault(field, {})
        bucket[row] = f"{bucket[row]}; {reason}" if row in bucket else reason

    def put(self, key: str, row: int, v: object) -> None:
        kind = _KIND[key]
        if kind == "str":
            if type(v) is str:
                self.values[key][row] = v
            else:
                self.error(key, row, f"{key}: must be a string, got {show(v)}")
        elif kind == "num":
            self._number(key, row, v)
        elif kind == "ts":
            if type(v) is str:
                self.values["ts_str"][row] = v
            elif isinstance(v, int | float) and not isinstance(v, bool):
                self._number("ts", row, v, target="ts_num")
            else:
                self.error("ts", row, f"ts: must be an RFC 3339 string or an epoch number, got {show(v)}")
        else:
            text, why = _attrs_of(v)
            if why is None:
                self.values["attrs"][row] = text
            else:
                self.error("attrs", row, why)

    def _number(self, key: str, row: int, v: object, target: str | None = None) -> None:
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.error(key, row, f"{key}: must be a number, got {show(v)}")
            return
        try:
            self.values[target or key][row] = float(v)
        except OverflowError:
            self.error(key, row, f"{key}: number out of range, got {show(v)}")

    def series(self, name: str, field: str) -> pl.Series:
        dtype = pl.Float64 if name in (*NUMERIC_FIELDS, "ts_num") else pl.String
        values = self.values[name]
        try:
            return pl.Series(name, values, dtype=dtype)
        except Exception:  # noqa: BLE001 - lone surrogates cannot become UTF-8
            for row, v in enumerate(values):
                if isinstance(v, str) and not _is_utf8(v):
                    values[row] = None
                    self.error(field, row, f"{field}: invalid Unicode (lone surrogate), got {show(v)}")
            return pl.Series(name, values, dtype=dtype)


_KIND: dict[str, str] = {f: "str" for f in STRING_FIELDS}
_KIND |= {f: "num" for f in NUMERIC_FIELDS} | {"ts": "ts", "attrs": "attrs"}


def _is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def stage_records(records: Sequence[object]) -> pl.DataFrame:
    """Decoded JSON values -> staged frame (strict JSON typing), without ``_line``."""
    cols = _Columns(len(records))
    for row, rec in enumerate(records):
        if type(rec) is not dict:
            if isinstance(rec, Unreadable):
                cols.error(FATAL, row, rec.reason)
            else:
                cols.error(FATAL, row, f"record: must be a JSON object, got {json_type(rec)}")
            continue
        for key, v in rec.items():
            if key not in _KIND:
                cols.error(RECORD_ERR, row, f"{field_name(key)}: {UNKNOWN}")
            elif v is not None:
                cols.put(key, row, v)
    out = [cols.series(name, "ts" if name.startswith("ts_") else name) for name in cols.values]
    for field, bucket in cols.errors.items():
        name = field if field in (FATAL, RECORD_ERR) else err_col(field)
        out.append(_sparse(name, cols.n, bucket))
    return pl.DataFrame(out)


def _sparse(name: str, n: int, bucket: dict[int, str]) -> pl.Series:
    full: list[str | None] = [None] * n
    for row, text in bucket.items():
        full[row] = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return pl.Series(name, full, dtype=pl.String)


# ---------------------------------------------------------------- columnar


def _nulls(n: int) -> pl.Series:
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
        if dtype.is_nested() or dtype == pl.Object:
            self.fail_unless(name, pl.col(name).is_not_null(),
                             pl.lit(f"{name}: unsupported column type {dtype}"))
            return False
        if dtype == pl.Binary:
            bad = pl.col(name).is_not_null() & pl.col(name).cast(pl.String, strict=False).is_null()
            self.fail_unless(name, bad, pl.lit(f"{name}: invalid UTF-8"))
        return True

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
            text, why = _attrs_of(decode(raw))
            texts.append(text)
            whys.append(why)
        empty = _nulls(values.len())
        self.columns["attrs"] = empty.scatter(rows, pl.Series(texts, dtype=pl.String))
        if any(w is not None for w in whys):
            self.errors["attrs"] = empty.scatter(rows, pl.Series(whys, dtype=pl.String))


def _identity(v: object) -> object:
    return v


def _loads_text(raw: object) -> object:
    try:
        return orjson.loads(str(raw))
    except orjson.JSONDecodeError as exc:
        return _BadJSON(f"attrs: malformed JSON ({exc})")


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
    staged = frame.select(st.exprs) if st.exprs else pl.DataFrame(height=frame.height)
    extra = [s.alias(name) for name, s in st.columns.items()]
    extra += [s.alias(err_col(f)) for f, s in st.errors.items()]
    problems = [*record_errors, *unknown]
    if problems:
        extra.append(pl.repeat("; ".join(problems), frame.height, eager=True).alias(RECORD_ERR))
    extra.append(lines.cast(pl.Int64).alias(LINE_COLUMN))
    return staged.with_columns(extra)
