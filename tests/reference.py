"""A slow, obvious reference implementation of the profile spec (DESIGN.md v1).

Pure Python, one event at a time, straight from the definitions of "Profile
spec (v1)" and "Time semantics (v1)". It shares nothing with
:mod:`portrait.features` (no Polars, no aggregator code); only the rule
evaluator (:func:`portrait.spec.rules.evaluate`) and the time formatter are
reused, so that the output has exactly the ``profile --json`` shape of
:mod:`portrait.engine.output`.

Events are dicts with the normalised contract fields: ``ts`` is an int of
epoch microseconds, missing or null fields are ``None``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from portrait.spec.model import FeatureSpec, Spec
from portrait.spec.rules import evaluate
from portrait.timeutil import format_us

DECAY_EPSILON = 1e-6  # keyed ``decayed`` maps drop keys whose |value| is below this
INT_FIELDS = ("ts", "quantity")  # integer-valued contract fields
FLOAT_FIELDS = ("price", "rating", "lat", "lon")
NUMBER_FIELDS = INT_FIELDS + FLOAT_FIELDS

Event = dict[str, Any]


def dedup(events: Iterable[Event]) -> list[Event]:
    """The events with each ``event_id`` kept once (the first copy wins)."""
    seen: set[str] = set()
    out: list[Event] = []
    for event in events:
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        out.append(event)
    return out


def as_text(value: Any) -> str:
    """A field value as the string ``where``, ``distinct`` and keys compare."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def as_number(text: str) -> float | None:
    """A ``where`` value as a finite number, or None when it is not one."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def matches_where(spec: FeatureSpec, event: Event) -> bool:
    """Every ``where`` field of the event is in its list of values.

    Numeric fields (and ``ts``) compare as numbers, so ``rating: [5]`` matches
    5.0 and a value that is not a number matches nothing; others as strings.
    """
    for field, allowed in spec.where:
        value = event.get(field)
        if value is None:
            return False
        if field in NUMBER_FIELDS:
            if float(value) not in {as_number(v) for v in allowed}:
                return False
        elif as_text(value) not in allowed:
            return False
    return True


def in_window(spec: FeatureSpec, event: Event, at: int) -> bool:
    """``at - window < ts <= at`` (no window: ``ts <= at``)."""
    if event["ts"] > at:
        return False
    return spec.window_us is None or event["ts"] > at - spec.window_us


def selected(spec: FeatureSpec, events: list[Event], at: int) -> list[Event]:
    """The events a feature reads: in time, matching ``where``, with non-null inputs."""
    out = []
    for event in events:
        if not in_window(spec, event, at) or not matches_where(spec, event):
            continue
        if spec.field is not None and event.get(spec.field) is None:
            continue
        if spec.key is not None and event.get(spec.key) is None:
            continue
        out.append(event)
    return out


def typed(field: str, value: Any) -> Any:
    """A field value with the type the profile reports (int fields int, floats float)."""
    if value is None:
        return None
    if field in INT_FIELDS:
        return int(value)
    if field in FLOAT_FIELDS:
        return float(value)
    return value


def value_of(spec: FeatureSpec, events: list[Event], at: int) -> Any:
    """The raw value of one feature (``first``/``last`` of ``ts`` as epoch µs)."""
    chosen = selected(spec, events, at)
    field = spec.field
    kind = spec.kind
    if kind == "count":
        return len(chosen)
    if kind == "sum":
        assert field is not None
        total: Any = 0 if field in INT_FIELDS else 0.0
        for event in chosen:
            total += typed(field, event[field])
        return total
    if kind == "avg":
        assert field is not None
        if not chosen:
            return None
        return sum(float(e[field]) for e in chosen) / len(chosen)
    if kind in ("min", "max"):
        assert field is not None
        if not chosen:
            return None
        values = [typed(field, e[field]) for e in chosen]
        return min(values) if kind == "min" else max(values)
    if kind in ("first", "last"):
        assert field is not None
        if not chosen:
            return None
        ordered = sorted(chosen, key=lambda e: (e["ts"], e["event_id"]))
        pick = ordered[0] if kind == "first" else ordered[-1]
        return typed(field, pick[field])
    if kind == "distinct":
        assert field is not None
        return len({as_text(typed(field, e[field])) for e in chosen})
    if kind == "top_k":
        return top_k(spec, chosen)
    if kind == "decayed":
        return decayed(spec, chosen, at)
    raise AssertionError(f"unknown kind {kind!r}")


def top_k(spec: FeatureSpec, chosen: list[Event]) -> dict[str, int]:
    """The k most frequent keys -> counts; ties broken by key order."""
    assert spec.key is not None
    assert spec.k is not None
    counts = Counter(as_text(e[spec.key]) for e in chosen)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return dict(ranked[: spec.k])


def decayed(spec: FeatureSpec, chosen: list[Event], at: int) -> float | dict[str, float]:
    """``sum(weight(type) * 2 ** (-(at - ts) / half_life))``, per key when keyed.

    A keyed map keeps the keys with ``|value| >= DECAY_EPSILON``, largest value first.
    """
    assert spec.half_life_us is not None
    weights = dict(spec.weights)

    def term(event: Event) -> float:
        weight = weights.get(event["type"], spec.default_weight)
        return float(weight * 2.0 ** (-(at - event["ts"]) / spec.half_life_us))

    if spec.key is None:
        return float(sum(term(e) for e in chosen))
    per_key: dict[str, float] = {}
    for event in chosen:
        key = as_text(event[spec.key])
        per_key[key] = per_key.get(key, 0.0) + term(event)
    kept = [(k, v) for k, v in per_key.items() if abs(v) >= DECAY_EPSILON]
    kept.sort(key=lambda kv: (-kv[1], kv[0]))
    return dict(kept)


def json_value(spec: FeatureSpec, value: Any) -> Any:
    """A raw value in its ``profile --json`` form (times as RFC 3339 strings)."""
    if value is not None and spec.field == "ts" and spec.kind in ("first", "last", "min", "max"):
        return format_us(int(value))
    return value


def reference_profile(spec: Spec, events: list[Event], user_id: str, at: int) -> dict[str, Any]:
    """The profile of ``user_id`` as of ``at`` built from ``events`` (any order, duplicates ok)."""
    mine = [e for e in dedup(events) if e["user_id"] == user_id and e["ts"] <= at]
    values = {name: value_of(f, mine, at) for name, f in spec.features.items()}
    members = [name for name, seg in spec.segments.items() if evaluate(seg.rule, values)]
    return {
        "user_id": user_id,
        "as_of": format_us(at),
        "features": {name: json_value(f, values[name]) for name, f in spec.features.items()},
        "segments": members,
    }
