"""Vectorised event-time parsing: strings and epoch numbers -> epoch microseconds.

The rules are those of :mod:`portrait.timeutil` (the reference, one value at a
time); these Polars expressions are the fast path for the common shapes:

* ``YYYY-MM-DD[Tt ]HH:MM:SS[.fraction](Z|z|+HH:MM|-HH:MM)``: fraction digits past
  the sixth are truncated, like :func:`datetime.fromisoformat`;
* ``YYYY-MM-DD``: midnight UTC;
* epoch numbers: ``|x| < 1e11`` seconds, ``< 1e14`` milliseconds.

A string the fast path cannot place (another ISO 8601 shape, an impossible
date, no offset) is handed to :func:`parse_string_slow`, so both paths accept
exactly the same set and agree on every value.
"""

from __future__ import annotations

import polars as pl

from portrait.timeutil import EPOCH_MAX, EPOCH_MS_THRESHOLD, US_PER_S, parse_rfc3339

_DIGITS = "[0-9]"  # not \d: Rust's \d also matches full-width digits
_DATE = rf"{_DIGITS}{{4}}-{_DIGITS}{{2}}-{_DIGITS}{{2}}"
RFC3339_RE = (
    rf"^{_DATE}[Tt ]{_DIGITS}{{2}}:{_DIGITS}{{2}}:{_DIGITS}{{2}}(\.{_DIGITS}+)?"
    rf"([Zz]|[+-]{_DIGITS}{{2}}:{_DIGITS}{{2}})$"
)
DATE_RE = rf"^{_DATE}$"
# Python's datetime range, in epoch microseconds: 0001-01-01 .. 9999-12-31T23:59:59.999999.
MIN_US = -62_135_596_800 * US_PER_S
MAX_US = 253_402_300_800 * US_PER_S - 1


def _int(s: pl.Expr, offset: int, length: int) -> pl.Expr:
    return s.str.slice(offset, length).cast(pl.Int64, strict=False)


def _days_from_civil(y: pl.Expr, m: pl.Expr, d: pl.Expr) -> pl.Expr:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y = y - (m <= 2).cast(pl.Int64)
    era = y // 400
    yoe = y - era * 400
    mp = pl.when(m > 2).then(m - 3).otherwise(m + 9)
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _days_in_month(y: pl.Expr, m: pl.Expr) -> pl.Expr:
    leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    return (
        pl.when(m == 2)
        .then(pl.lit(28, pl.Int64) + leap.cast(pl.Int64))
        .when(m.is_in([4, 6, 9, 11]))
        .then(pl.lit(30, pl.Int64))
        .otherwise(pl.lit(31, pl.Int64))
    )


def _valid_date(y: pl.Expr, m: pl.Expr, d: pl.Expr) -> pl.Expr:
    return (y >= 1) & (m >= 1) & (m <= 12) & (d >= 1) & (d <= _days_in_month(y, m))


def string_to_us(s: pl.Expr) -> pl.Expr:
    """Stripped time strings -> epoch µs (Int64); null where the fast path cannot decide."""
    y, mo, d = _int(s, 0, 4), _int(s, 5, 2), _int(s, 8, 2)
    hh, mi, ss = _int(s, 11, 2), _int(s, 14, 2), _int(s, 17, 2)
    zulu = s.str.ends_with("Z") | s.str.ends_with("z")
    sign = pl.when(s.str.slice(-6, 1) == "-").then(pl.lit(-1, pl.Int64)).otherwise(1)
    off_h, off_m = _int(s, -5, 2), _int(s, -2, 2)
    off_s = pl.when(zulu).then(pl.lit(0, pl.Int64)).otherwise(sign * (off_h * 3600 + off_m * 60))
    frac = s.str.extract(r"\.([0-9]+)", 1).str.slice(0, 6).str.pad_end(6, "0")
    micros = frac.cast(pl.Int64, strict=False).fill_null(0)
    days = _days_from_civil(y, mo, d)
    secs = days * 86_400 + hh * 3600 + mi * 60 + ss - off_s
    full = secs * US_PER_S + micros
    full_ok = (
        s.str.contains(RFC3339_RE)
        & _valid_date(y, mo, d)
        & (hh < 24)
        & (mi < 60)
        & (ss < 60)
        & (zulu | ((off_h < 24) & (off_m < 60)))
        & full.is_between(MIN_US, MAX_US)
    )
    date_ok = s.str.contains(DATE_RE) & _valid_date(y, mo, d)
    return (
        pl.when(full_ok)
        .then(full)
        .when(date_ok)
        .then(days * 86_400 * US_PER_S)
        .otherwise(pl.lit(None, pl.Int64))
    )


def epoch_ok(x: pl.Expr) -> pl.Expr:
    """Whether an epoch number (Float64) is finite and in range (|x| < 1e14)."""
    return x.is_finite() & (x.abs() < EPOCH_MAX)


def epoch_to_us(x: pl.Expr) -> pl.Expr:
    """Epoch seconds / milliseconds (Float64, told apart by magnitude) -> µs; null if out of range.

    Integral values use exact integer arithmetic; fractional ones round half to even.
    """
    seconds = x.abs() < EPOCH_MS_THRESHOLD
    scale = pl.when(seconds).then(pl.lit(US_PER_S, pl.Int64)).otherwise(pl.lit(1000, pl.Int64))
    integral = x == x.floor()
    exact = x.cast(pl.Int64, strict=False) * scale
    rounded = (x * scale.cast(pl.Float64)).round(0).cast(pl.Int64, strict=False)
    value = pl.when(integral).then(exact).otherwise(rounded)
    return pl.when(epoch_ok(x)).then(value).otherwise(pl.lit(None, pl.Int64))


def parse_string_slow(text: str) -> tuple[int | None, str | None]:
    """One time string the fast path could not place -> (µs, None) or (None, problem).

    The problem is a short phrase without the value (the caller adds ``got ...``).
    """
    try:
        return parse_rfc3339(text), None
    except (ValueError, OverflowError) as exc:
        msg = str(exc)
    if "no UTC offset" in msg:
        return None, "no UTC offset (add Z or +HH:MM)"
    if msg.startswith("offset must be"):
        return None, "impossible date or time (UTC offset must be under 24 hours)"
    if msg.startswith("Invalid isoformat") or text.strip() in msg:
        return None, "not an RFC 3339 time with offset, a date or an epoch number"
    return None, f"impossible date or time ({msg})"
