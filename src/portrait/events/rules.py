"""The event-contract rules, vectorised over a *staged* frame.

Readers turn their input into a staged frame (one row per source record, see
:mod:`portrait.events.staging`); :func:`check` applies every rule of the event
contract v1 with Polars expressions and splits the rows into accepted events
and rejected rows with a reason. Reason strings are only built for rejected
rows, so a clean batch never formats a message.

Staged columns (all optional except ``_line``):

* ``event_id``, ``user_id``, ``type``, ``item_id``, ``category``, ``text``: String, raw;
* ``ts_str`` (String), ``ts_num`` (Float64, epoch s/ms) or ``ts_us`` (Int64, µs);
* ``price``, ``quantity``, ``rating``, ``lat``, ``lon``: Float64;
* ``attrs``: canonical JSON text;
* ``_err:<field>``: a problem found while staging (a wrong type), already a full reason;
* ``_err:record``: problems reported before the field problems (unknown fields);
* ``_fatal``: the record could not be read at all; the only reason given;
* ``_line``: Int64, where the record came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from portrait.events import tsparse
from portrait.events.schema import EVENT_COLUMNS, EVENT_SCHEMA, LINE_COLUMN

FATAL = "_fatal"
RECORD_ERR = "_err:record"
ROW = "_row"
REASON = "_reason"
TS_SOURCES = ("ts_str", "ts_num", "ts_us")
MAX_LEN = {"user_id": 256, "type": 64, "text": 65_536, "attrs": 65_536}
DEFAULT_MAX_LEN = 1024
REQUIRED_STRINGS = ("user_id", "type")
OPTIONAL_STRINGS = ("event_id", "item_id", "category", "text")
_TS = "_ts"
_TS_PROBLEM = "_ts_problem"
_SHOW = 40


def err_col(field: str) -> str:
    """The staged column holding type problems of ``field``."""
    return f"_err:{field}"


def show_str(e: pl.Expr) -> pl.Expr:
    """A short display of a string value for a reason (long values are cut)."""
    n = e.str.len_chars()
    cut = pl.format("'{}…' ({} characters)", e.str.slice(0, _SHOW), n)
    return pl.when(n > _SHOW).then(cut).otherwise(pl.format("'{}'", e))


def show_num(x: pl.Expr) -> pl.Expr:
    """A display of a number: integral values without ``.0``, so 5, 5.0 and '5' read alike."""
    integral = x.is_finite() & (x == x.floor()) & (x.abs() < 1e18)
    as_int = x.cast(pl.Int64, strict=False).cast(pl.String)
    return pl.when(integral).then(as_int).otherwise(x.cast(pl.String))


@dataclass(frozen=True)
class Rule:
    """A field's checks: ordered (condition, message) pairs; the first that holds is its reason."""

    field: str
    checks: list[tuple[pl.Expr, pl.Expr]]

    def bad(self) -> pl.Expr:
        return pl.any_horizontal([c.fill_null(False) for c, _ in self.checks])

    def reason(self) -> pl.Expr:
        expr = pl.lit(None, pl.String)
        for c, m in reversed(self.checks):
            expr = pl.when(c.fill_null(False)).then(m).otherwise(expr)
        return expr


def _with_err(field: str, cols: set[str], checks: list[tuple[pl.Expr, pl.Expr]]) -> Rule:
    if err_col(field) in cols:
        e = pl.col(err_col(field))
        checks = [(e.is_not_null(), e), *checks]
    return Rule(field, checks)


def _string_rule(field: str, cols: set[str]) -> Rule:
    raw, n = pl.col(field), pl.col(f"_n:{field}")
    checks: list[tuple[pl.Expr, pl.Expr]] = []
    if field in REQUIRED_STRINGS:
        checks.append((raw.is_null(), pl.lit(f"{field}: required field is missing")))
        msg = pl.format(f"{field}: must be a non-empty string, got {{}}", show_str(raw))
        checks.append((n == 0, msg))
    if f"_long:{field}" in cols:
        limit = MAX_LEN.get(field, DEFAULT_MAX_LEN)
        chars = pl.col(f"_v:{field}").str.len_chars()
        msg = pl.format(f"{field}: too long (max {limit} characters), got {{}} characters", chars)
        checks.append((chars > limit, msg))
    return _with_err(field, cols, checks)


def _ts_rule(cols: set[str]) -> Rule:
    sources = [pl.col(c).is_null() for c in TS_SOURCES if c in cols]
    missing = pl.all_horizontal(sources) if sources else pl.lit(True)
    checks = [(missing, pl.lit("ts: required field is missing"))]
    if "ts_num" in cols:
        num = pl.col("ts_num")
        msg = pl.format("ts: epoch number must be finite with |x| < 1e14, got {}", show_num(num))
        checks.append((num.is_not_null() & pl.col(_TS).is_null(), msg))
    if _TS_PROBLEM in cols:
        problem = pl.col(_TS_PROBLEM)
        msg = pl.format("ts: {}, got {}", problem, show_str(pl.col("ts_str")))
        checks.append((problem.is_not_null(), msg))
    return _with_err("ts", cols, checks)


_NUMBER_RULES: dict[str, tuple[Callable[[pl.Expr], pl.Expr], str]] = {
    "price": (lambda x: x.is_finite() & (x >= 0), "must be finite and >= 0"),
    "quantity": (
        lambda x: x.is_finite() & (x >= 1) & (x == x.floor()) & (x <= 2.0**53),
        "must be an integer >= 1",
    ),
    "rating": (lambda x: x.is_finite(), "must be finite"),
    "lat": (
        lambda x: x.is_finite() & x.is_between(-90, 90),
        "must be finite and between -90 and 90",
    ),
    "lon": (
        lambda x: x.is_finite() & x.is_between(-180, 180),
        "must be finite and between -180 and 180",
    ),
}


def _number_rule(field: str, cols: set[str]) -> Rule:
    ok, what = _NUMBER_RULES[field]
    x = pl.col(field)
    msg = pl.format(f"{field}: {what}, got {{}}", show_num(x))
    return _with_err(field, cols, [(x.is_not_null() & ~ok(x), msg)])


def _attrs_rule(cols: set[str]) -> Rule:
    n = pl.col("attrs").str.len_chars()
    limit = MAX_LEN["attrs"]
    msg = pl.format(f"attrs: too long (max {limit} characters as JSON), got {{}} characters", n)
    return _with_err("attrs", cols, [(n > limit, msg)])


def _rules(cols: set[str]) -> list[Rule]:
    rules: list[Rule] = []
    for field in EVENT_COLUMNS:
        if field == "ts":
            rules.append(_ts_rule(cols))
        elif field not in cols:
            continue
        elif field == "attrs":
            rules.append(_attrs_rule(cols))
        elif field in _NUMBER_RULES:
            rules.append(_number_rule(field, cols))
        else:
            rules.append(_string_rule(field, cols))
    return [r for r in rules if r.checks]


def _complete(staged: pl.DataFrame) -> pl.DataFrame:
    """Add absent columns the rules need: required strings, and any field that has a
    staged error column but no value column."""
    need: dict[str, pl.DataType] = {f: pl.String() for f in REQUIRED_STRINGS}
    need |= {f: d for f, d in EVENT_SCHEMA.items() if f != "ts" and err_col(f) in staged.columns}
    missing = [pl.lit(None, d).alias(c) for c, d in need.items() if c not in staged.columns]
    return staged.with_columns(missing) if missing else staged


def _has_values(frame: pl.DataFrame, column: str) -> bool:
    return column in frame.columns and frame[column].null_count() < frame.height


def _string_prep(frame: pl.DataFrame, field: str) -> list[pl.Expr]:
    """``_v:`` (normalised value) and, for long values only, a ``_long:`` marker column.

    A low-cardinality ``type`` column is normalised on its distinct values when
    they are already clean, which skips two full passes over the column.
    """
    v = pl.col(field)
    if field == "type":
        distinct = frame[field].unique()
        if not distinct.equals(distinct.str.strip_chars().str.to_lowercase()):
            v = v.str.strip_chars().str.to_lowercase()
    else:
        v = v.str.strip_chars()
    exprs = [v.alias(f"_v:{field}")]
    longest = frame[field].str.len_bytes().max()
    if isinstance(longest, int) and longest > MAX_LEN.get(field, DEFAULT_MAX_LEN):
        exprs.append(pl.lit(True).alias(f"_long:{field}"))
    return exprs


def _prepare(staged: pl.DataFrame) -> pl.DataFrame:
    """Add normalised strings (``_v:``), their byte lengths (``_n:``) and the time (``_ts``)."""
    strings = [f for f in (*REQUIRED_STRINGS, *OPTIONAL_STRINGS) if f in staged.columns]
    exprs = [e for f in strings for e in _string_prep(staged, f)]
    sources = []
    if _has_values(staged, "ts_us"):
        sources.append(pl.col("ts_us"))
    if _has_values(staged, "ts_num"):
        sources.append(tsparse.epoch_to_us(pl.col("ts_num")))
    if _has_values(staged, "ts_str"):
        sources.append(tsparse.string_to_us(pl.col("ts_str").str.strip_chars()))
    ts = pl.coalesce(sources) if sources else pl.lit(None, pl.Int64)
    frame = staged.with_row_index(ROW).with_columns(*exprs, ts.alias(_TS))
    return frame.with_columns(pl.col(f"_v:{f}").str.len_bytes().alias(f"_n:{f}") for f in strings)


def _resolve_slow_times(frame: pl.DataFrame) -> pl.DataFrame:
    """Parse, one by one, the time strings the vectorised path could not place."""
    if not _has_values(frame, "ts_str"):
        return frame
    todo = pl.col("ts_str").is_not_null() & pl.col(_TS).is_null()
    if err_col("ts") in frame.columns:
        todo &= pl.col(err_col("ts")).is_null()
    pending = frame.filter(todo).select(ROW, "ts_str")
    if pending.height == 0:
        return frame
    rows: list[int] = pending[ROW].to_list()
    values, whys = zip(*(tsparse.parse_string_slow(t) for t in pending["ts_str"]), strict=True)
    ts = frame[_TS].clone().scatter(rows, pl.Series(values, dtype=pl.Int64))
    problems = pl.repeat(None, frame.height, dtype=pl.String, eager=True)
    problems = problems.scatter(rows, pl.Series(whys, dtype=pl.String))
    return frame.with_columns(ts.alias(_TS), problems.alias(_TS_PROBLEM))


def _value(field: str, cols: set[str]) -> pl.Expr:
    dtype = EVENT_SCHEMA[field]
    if field == "ts":
        return pl.col(_TS).alias("ts")
    if field not in cols:
        return pl.lit(None, dtype).alias(field)
    if field in REQUIRED_STRINGS or field in OPTIONAL_STRINGS:
        return pl.when(pl.col(f"_n:{field}") > 0).then(pl.col(f"_v:{field}")).alias(field)
    if field == "quantity":
        return pl.col(field).cast(pl.Int64, strict=False).alias(field)
    if dtype == pl.Float64:  # one canonical zero: -0.0 -> 0.0
        x = pl.col(field)
        return pl.when(x == 0).then(pl.lit(0.0)).otherwise(x).alias(field)
    return pl.col(field).cast(dtype).alias(field)


def check(staged: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Apply the contract to a staged frame.

    Returns ``(events, rejected)``: events has the :data:`EVENT_SCHEMA` columns
    plus ``_line`` (event_id left null where absent); rejected has ``_row``
    (0-based position in ``staged``), ``_line`` and ``_reason``.
    """
    # rechunk: Polars 2.1 can panic filtering multi-chunk frames (row groups)
    frame = _resolve_slow_times(_prepare(_complete(staged.rechunk()))).rechunk()
    cols = set(frame.columns)
    rules = _rules(cols)
    bad = pl.any_horizontal([r.bad() for r in rules])
    head = [pl.col(c) for c in (FATAL, RECORD_ERR) if c in cols]
    if head:
        bad = bad | pl.any_horizontal([c.is_not_null() for c in head])
    frame = frame.with_columns(bad.alias("_bad"))
    values = [_value(f, cols) for f in EVENT_COLUMNS]
    line = pl.col(LINE_COLUMN).cast(pl.Int64)
    events = frame.filter(~pl.col("_bad")).select([*values, line])
    parts = [pl.col(RECORD_ERR)] if RECORD_ERR in cols else []
    joined = pl.concat_str(
        [*parts, *(r.reason() for r in rules)], separator="; ", ignore_nulls=True
    )
    reason = pl.col(FATAL) if FATAL in cols else pl.lit(None, pl.String)
    reason = pl.coalesce(reason, joined).alias(REASON)
    uid = (
        pl.col("user_id").cast(pl.String, strict=False).str.strip_chars()
        if "user_id" in cols
        else pl.lit(None, pl.String)
    )
    rejected = frame.filter(pl.col("_bad")).select(
        pl.col(ROW).cast(pl.Int64), line, reason, uid.alias("_user_id")
    )
    return events, rejected
