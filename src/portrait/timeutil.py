"""Time helpers. Internally every time is an ``int`` of epoch microseconds, UTC.

Rules (documented contract):

* RFC 3339 strings with an offset (``2024-01-02T03:04:05+08:00``) or ``Z`` are
  converted to UTC; a string without offset is rejected (no naive times).
  A plain date ``YYYY-MM-DD`` means midnight UTC.
* Epoch numbers: ``|x| < 1e11`` are seconds, ``1e11 <= |x| < 1e14`` are
  milliseconds (1e11 s would be the year 5138, 1e11 ms is 1973-03-03), larger
  values are rejected as out of range.
* Durations: an integer followed by ``s``, ``m``, ``h``, ``d`` or ``w``.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from portrait.errors import UsageError

US_PER_S = 1_000_000
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
EPOCH_MS_THRESHOLD = 1e11
EPOCH_MAX = 1e14
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_duration(text: str) -> int:
    """``'7d'`` -> microseconds. Raises ``ValueError`` on anything else.

    >>> parse_duration("90m") == 90 * 60 * 1_000_000
    True
    """
    m = _DURATION.match(str(text))
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"bad duration {text!r}: use a positive integer with s, m, h, d or w")
    return int(m.group(1)) * _UNIT_S[m.group(2)] * US_PER_S


def format_duration(us: int) -> str:
    """Microseconds -> the largest exact unit of ``parse_duration`` (``'365d'``, ``'90m'``)."""
    seconds, rest = divmod(us, US_PER_S)
    if rest:
        return f"{us}us"
    for unit in ("w", "d", "h", "m", "s"):
        if seconds % _UNIT_S[unit] == 0:
            return f"{seconds // _UNIT_S[unit]}{unit}"
    raise AssertionError("unreachable: every whole second is a multiple of 1 s")


def epoch_number_to_us(x: float) -> int:
    """Epoch seconds or milliseconds (told apart by magnitude) -> microseconds."""
    if not math.isfinite(x) or abs(x) >= EPOCH_MAX:
        raise ValueError(f"epoch value out of range: {x!r}")
    if abs(x) < EPOCH_MS_THRESHOLD:
        return round(x * US_PER_S)
    return round(x * 1000)


def parse_rfc3339(text: str) -> int:
    """An RFC 3339 string (offset required, or a bare date) -> epoch microseconds."""
    s = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
        s += "T00:00:00+00:00"
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset")
    return to_us(dt)


def to_us(dt: datetime) -> int:
    """An aware datetime -> epoch microseconds (exact integer arithmetic)."""
    delta = dt.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds


def parse_time_arg(text: str) -> int:
    """A user-supplied time (``--at``): RFC 3339, a date, or epoch s/ms."""
    try:
        return epoch_number_to_us(float(text))
    except ValueError:
        pass
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise UsageError(
            f"bad time {text!r}: use RFC 3339 with an offset (2024-01-31T12:00:00Z), "
            "a date (2024-01-31) or epoch seconds/milliseconds"
        ) from exc


def format_us(us: int) -> str:
    """Epoch microseconds -> RFC 3339 UTC string (``Z``; fraction only if non-zero).

    >>> format_us(0)
    '1970-01-01T00:00:00Z'
    >>> format_us(1_500_000)
    '1970-01-01T00:00:01.500000Z'
    """
    secs, micros = divmod(int(us), US_PER_S)
    base = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{micros:06d}Z" if micros else f"{base}Z"
