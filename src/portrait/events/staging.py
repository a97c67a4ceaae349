"""Staging: decoded JSON records -> the staged frame :mod:`portrait.events.rules` checks.

Staging sorts values into typed columns and reports *type* problems (a number
where a string belongs, an attrs that is not an object); value problems
(ranges, lengths, impossible dates) are left to the rules. Typing is strict,
as JSON allows: ``"12.5"`` is not a price, ``123`` is not a user id, ``true``
is not a number. This is a Python loop, for the slow JSON Lines path and for
API bodies; columnar input goes through :mod:`portrait.events.framestage`.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import polars as pl

from portrait.events.rules import FATAL, RECORD_ERR, err_col
from portrait.events.schema import NUMERIC_FIELDS, STRING_FIELDS

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
    if isinstance(v, dict):
        return "object"
    return "list" if isinstance(v, list) else type(v).__name__


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
    """A field name fit for a reason: as is when short, printable and free of the reason's
    separators (``:`` and ``;``), else its repr, cut."""
    plain = isinstance(key, str) and key.isprintable() and 0 < len(key) <= 64
    if plain and isinstance(key, str) and key.strip() == key and not set(key) & {":", ";"}:
        return key
    text = repr(key)
    return text if len(text) <= 66 else text[:64] + "…"


def canonical_json(value: dict[object, object]) -> str:
    """attrs as canonical JSON text (sorted keys). Raises TypeError if it cannot be."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


class BadJSON:
    """A text cell that should hold JSON but does not decode (reason ready)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def attrs_text(v: object) -> tuple[str | None, str | None]:
    """A decoded attrs value -> (canonical JSON text, None) or (None, reason)."""
    if isinstance(v, BadJSON):
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
                self.error(
                    "ts", row, f"ts: must be an RFC 3339 string or an epoch number, got {show(v)}"
                )
        else:
            text, why = attrs_text(v)
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
        except Exception:
            for row, v in enumerate(values):
                if isinstance(v, str) and not _is_utf8(v):
                    values[row] = None
                    self.error(
                        field, row, f"{field}: invalid Unicode (lone surrogate), got {show(v)}"
                    )
            return pl.Series(name, values, dtype=dtype)


_KIND: dict[str, str] = dict.fromkeys(STRING_FIELDS, "str")
_KIND |= dict.fromkeys(NUMERIC_FIELDS, "num") | {"ts": "ts", "attrs": "attrs"}


def _is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_STR_TARGET = dict(zip(STRING_FIELDS, STRING_FIELDS, strict=True)) | {"ts": "ts_str"}
_NUM_TARGET = dict(zip(NUMERIC_FIELDS, NUMERIC_FIELDS, strict=True)) | {"ts": "ts_num"}
_BIG = 2**1000  # ints beyond this overflow float(); they take the careful path


def stage_records(records: Sequence[object]) -> pl.DataFrame:
    """Decoded JSON values -> staged frame (strict JSON typing), without ``_line``."""
    cols = _Columns(len(records))
    strs = {k: cols.values[t] for k, t in _STR_TARGET.items()}
    nums = {k: cols.values[t] for k, t in _NUM_TARGET.items()}
    for row, rec in enumerate(records):
        if type(rec) is not dict:
            if isinstance(rec, Unreadable):
                cols.error(FATAL, row, rec.reason)
            else:
                cols.error(FATAL, row, f"record: must be a JSON object, got {json_type(rec)}")
            continue
        for key, v in rec.items():
            t = type(v)  # the common, well-typed cases first: one dict lookup each
            if t is str:
                target = strs.get(key)
                if target is not None:
                    target[row] = v
                    continue
            elif t is float or (t is int and -_BIG < v < _BIG):
                target = nums.get(key)
                if target is not None:
                    target[row] = float(v)
                    continue
            elif v is None and key in _KIND:
                continue
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
