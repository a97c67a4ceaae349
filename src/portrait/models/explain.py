"""Explain a profile value: the events that drove it, and why a segment holds.

The events of a feature are the user's logged events with ``ts <= at``
(``engine.store.events([user], until=at)``) that pass the feature's ``where``
and have its ``field`` / ``key`` (the aggregator's own mask), and for a
windowed feature only those with ``at - window < ts <= at``. Each one
contributes to the value as its kind adds it up, so the contributions sum
to the value the engine reads:

==================  =====================================================
kind                contribution of one event
==================  =====================================================
``count``, top_k    1
``sum``             the event's ``field``
``avg``             ``field / n`` (n = number of counted events)
``distinct``        1 for the event that first showed a value (earliest
                    ``(ts, event_id)``); later repeats are not listed
``decayed``         ``weight(type) * 2 ** (-(at - ts) / half_life)``
min, max            the deciding event alone (earliest among equal values)
first, last         the deciding event alone (``(ts, event_id)`` order)
==================  =====================================================

For a keyed feature looked up as ``feature['key']`` only the key's events
count; for a keyed feature named alone, each event carries its ``key`` and
``total`` is the map (top ``k`` for top_k, keys at or above ``1e-6`` for
decayed, as the engine reads them). ``share`` is a contribution over the sum
of all contributions. Known, documented gaps between ``total`` and ``value``:
a top_k key outside the top ``k`` reads 0, a decayed key below ``1e-6`` reads
0, and ``distinct`` above 10,000 values is a sketch estimate; ``note`` says so.

A segment explanation evaluates each comparison of its rule on the user's
read values (three-valued: ``holds`` is null when a side is null) and
explains every feature and key the rule reads.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import polars as pl

from portrait.engine.output import feature_value
from portrait.errors import (
    UnknownFeatureError,
    UnknownSegmentError,
    UnknownTargetError,
    UnknownUserError,
    UsageError,
)
from portrait.events.schema import EVENT_SCHEMA
from portrait.features import build_aggregator
from portrait.features.maps import DECAY_EPSILON, LN2
from portrait.privacy.consent import behaviour
from portrait.spec.rules import (
    And,
    Compare,
    Lookup,
    Not,
    Num,
    Operand,
    Or,
    Ref,
    Rule,
    Str,
    evaluate,
    referenced_features,
)
from portrait.timeutil import format_us

if TYPE_CHECKING:
    from portrait.engine import Engine
    from portrait.spec.model import FeatureSpec

DECIDING = ("min", "max", "first", "last")
ROW_FIELDS = ("event_id", "ts", "type", "item_id", "category")
_LOOKUP = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\[\s*(['\"])(.*)\2\s*\]\s*$")


# --- pure core: contributions of one feature -----------------------------------


def matching_events(
    spec: FeatureSpec, events: pl.DataFrame, at: int, key: str | None = None
) -> pl.DataFrame:
    """The events that count for ``spec`` at ``at`` (``where``, inputs, window, key)."""
    keep = build_aggregator(spec).mask() & (pl.col("ts") <= at)
    if spec.window_us:
        keep = keep & (pl.col("ts") > at - spec.window_us)
    if key is not None and spec.key is not None:
        keep = keep & (pl.col(spec.key).cast(pl.String) == key)
    return events.filter(keep)


def _contribution(spec: FeatureSpec, n: int, at: int) -> pl.Expr:
    """The additive contribution of one event (kinds not in :data:`DECIDING`)."""
    if spec.kind == "sum":
        return pl.col(spec.field or "").cast(pl.Float64)
    if spec.kind == "avg":
        return pl.col(spec.field or "").cast(pl.Float64) / n
    if spec.kind == "decayed":
        weights = dict(spec.weights)
        w = pl.col("type").replace_strict(
            weights, default=spec.default_weight, return_dtype=pl.Float64
        ) if weights else pl.lit(spec.default_weight, pl.Float64)
        age = (pl.lit(at, pl.Int64) - pl.col("ts")).cast(pl.Float64)
        return w * (-age * (LN2 / float(spec.half_life_us or 1))).exp()
    return pl.lit(1.0, pl.Float64)  # count, top_k, distinct (first sightings)


def contributions(
    spec: FeatureSpec, events: pl.DataFrame, at: int, key: str | None = None
) -> pl.DataFrame:
    """The contributing events of ``spec`` with a ``contribution`` column, largest first.

    For min/max/first/last: the deciding event alone (``contribution`` null).
    Keyed features carry ``_key``.
    """
    sel = matching_events(spec, events, at, key).sort("ts", "event_id")
    if spec.key is not None:
        sel = sel.with_columns(pl.col(spec.key).cast(pl.String).alias("_key"))
    if spec.kind in DECIDING:
        return _deciding(spec, sel)
    if spec.kind == "distinct":
        sel = sel.filter(pl.col(spec.field or "").cast(pl.String).is_first_distinct())
    out = sel.with_columns(_contribution(spec, sel.height, at).alias("contribution"))
    return out.sort(
        pl.col("contribution").abs(), "ts", "event_id", descending=True, maintain_order=True
    )


def _deciding(spec: FeatureSpec, sel: pl.DataFrame) -> pl.DataFrame:
    field = spec.field or "ts"
    if spec.kind == "first":
        picked = sel.head(1)
    elif spec.kind == "last":
        picked = sel.tail(1)
    else:  # min / max: the extreme value, earliest event among ties
        picked = sel.sort(field, descending=spec.kind == "max", maintain_order=True).head(1)
    return picked.with_columns(pl.lit(None, pl.Float64).alias("contribution"))


def _total(spec: FeatureSpec, frame: pl.DataFrame, key: str | None) -> Any:
    """What the contributions add up to, in the feature's JSON form."""
    if spec.kind in DECIDING:
        value = frame[spec.field or "ts"][0] if frame.height else None
        return feature_value(spec, value)
    if spec.keyed and key is None:
        return _by_key(spec, frame)
    total = float(frame["contribution"].sum())
    if spec.kind in ("count", "top_k", "distinct"):
        return round(total)
    if spec.kind == "sum" and EVENT_SCHEMA[spec.field or ""] == pl.Int64:
        return round(total)
    return None if spec.kind == "avg" and frame.height == 0 else total


def _by_key(spec: FeatureSpec, frame: pl.DataFrame) -> dict[str, Any]:
    """key -> summed contribution, as the engine reads the map."""
    sums = frame.group_by("_key").agg(pl.col("contribution").sum().alias("v"))
    sums = sums.sort(["v", "_key"], descending=[True, False])
    if spec.kind == "top_k":
        return {k: round(v) for k, v in sums.head(spec.k or 1).iter_rows()}
    return {k: v for k, v in sums.iter_rows() if abs(v) >= DECAY_EPSILON}


# --- engine-level explanations ---------------------------------------------------


def _read_user(engine: Engine, user_id: str, at: int | None) -> tuple[int, pl.DataFrame]:
    """``(at, read values)`` of one user (one row); :class:`UnknownUserError` if never seen."""
    at = engine.store.meta().watermark if at is None else at
    values = engine.read_at(at, [user_id]) if at is not None else pl.DataFrame()
    if at is None or values.height == 0:
        raise UnknownUserError(f"unknown user {user_id!r}")
    return at, values


def _check_feature(engine: Engine, name: str, key: str | None) -> FeatureSpec:
    spec = engine.spec.features.get(name)
    if spec is None:
        known = ", ".join(engine.spec.features) or "none"
        raise UnknownFeatureError(f"unknown feature {name!r} (features: {known})")
    if key is not None and not spec.keyed:
        raise UsageError(f"feature {name!r} ({spec.kind}) is not a map; it takes no ['key']")
    return spec


def _engine_value(spec: FeatureSpec, raw: Any, key: str | None) -> Any:
    """The engine's read value (JSON form); a key lookup reads 0 when absent."""
    value = feature_value(spec, raw)
    if key is None:
        return value
    found = value.get(key)
    if found is None:
        return 0 if spec.kind == "top_k" else 0.0
    return found


def _rows(spec: FeatureSpec, frame: pl.DataFrame, top: int) -> list[dict[str, Any]]:
    """The top contributing events as JSON rows."""
    denom = float(frame["contribution"].sum()) if spec.kind not in DECIDING else 0.0
    rows = []
    for ev in frame.head(top).iter_rows(named=True):
        row: dict[str, Any] = {f: ev[f] for f in ROW_FIELDS}
        row["ts"] = format_us(ev["ts"])
        if spec.key is not None:
            row["key"] = ev["_key"]
        if spec.kind in DECIDING:
            row["contribution"] = feature_value(spec, ev[spec.field or "ts"])
            row["share"] = 1.0
        else:
            row["contribution"] = ev["contribution"]
            row["share"] = ev["contribution"] / denom if denom else None
        rows.append(row)
    return rows


def _note(spec: FeatureSpec, value: Any, total: Any, key: str | None) -> str | None:
    if not isinstance(value, int | float) or not isinstance(total, int | float):
        return None
    if math.isclose(value, total, rel_tol=1e-9, abs_tol=1e-12):
        return None
    if spec.kind == "top_k":
        return f"key {key!r} is not in the top {spec.k}: the feature reads 0 for it"
    if spec.kind == "decayed":
        return f"below {DECAY_EPSILON:g}: the engine drops the key and reads 0"
    if spec.kind == "distinct":
        return "above the exact limit the engine reads a sketch estimate"
    return None


def feature_explanation(
    spec: FeatureSpec, key: str | None, events: pl.DataFrame, raw: Any, *, at: int, top: int
) -> dict[str, Any]:
    """Explanation of one feature (or ``feature['key']``) given events and its read value."""
    frame = contributions(spec, events, at, key)
    value = _engine_value(spec, raw, key)
    total = _total(spec, frame, key)
    out: dict[str, Any] = {
        "feature": spec.name,
        "key": key,
        "feature_kind": spec.kind,
        "value": value,
        "total": total,
        "events": frame.height,
        "contributions": _rows(spec, frame, top),
    }
    note = _note(spec, value, total, key)
    if note is not None:
        out["note"] = note
    return out


def explain_feature(
    engine: Engine,
    user_id: str,
    name: str,
    key: str | None = None,
    *,
    at: int | None = None,
    top: int = 10,
) -> dict[str, Any]:
    """Top contributing events of ``name`` (or ``name['key']``) for ``user_id`` at ``at``."""
    spec = _check_feature(engine, name, key)
    at_us, values = _read_user(engine, user_id, at)
    events = behaviour(engine.store.events([user_id], until=at_us))
    raw = values.row(0, named=True)[name]
    body = feature_explanation(spec, key, events, raw, at=at_us, top=top)
    target = name if key is None else f"{name}[{key!r}]"
    head = {
        "user_id": user_id,
        "as_of": format_us(at_us),
        "target": target,
        "target_type": "feature",
    }
    return head | body


# --- segments ----------------------------------------------------------------------


def _comparisons(rule: Rule) -> list[Compare]:
    """The comparisons of ``rule`` in reading order."""
    if isinstance(rule, Compare):
        return [rule]
    if isinstance(rule, Not):
        return _comparisons(rule.operand)
    if isinstance(rule, And | Or):
        return [c for part in rule.operands for c in _comparisons(part)]
    raise TypeError(f"not a rule node: {rule!r}")


def _text(op: Operand) -> str:
    if isinstance(op, Num):
        return repr(op.value)
    if isinstance(op, Str):
        return repr(op.value)
    if isinstance(op, Lookup):
        return f"{op.name}[{op.key!r}]"
    assert isinstance(op, Ref)
    return op.name


def _operand_value(op: Operand, values: dict[str, Any]) -> Any:
    """An operand as the rule reads it (a missing key reads 0)."""
    if isinstance(op, Num | Str):
        return op.value
    if isinstance(op, Lookup):
        found = values.get(op.name) or {}
        return float(found.get(op.key, 0.0))
    assert isinstance(op, Ref)
    return values.get(op.name)


def _rule_values(engine: Engine, row: dict[str, Any]) -> dict[str, Any]:
    """Read values in the shape :func:`evaluate` takes (maps as dicts)."""
    out = {}
    for name, spec in engine.spec.features.items():
        raw = row[name]
        out[name] = {e["key"]: e["value"] for e in raw or []} if spec.keyed else raw
    return out


def _condition(cmp: Compare, values: dict[str, Any]) -> dict[str, Any]:
    left, right = _operand_value(cmp.left, values), _operand_value(cmp.right, values)
    holds = None if left is None or right is None else evaluate(cmp, values)
    text = f"{_text(cmp.left)} {cmp.op} {_text(cmp.right)}"
    return {"condition": text, "left": left, "right": right, "holds": holds}


def explain_segment(
    engine: Engine, user_id: str, name: str, *, at: int | None = None, top: int = 10
) -> dict[str, Any]:
    """Whether ``user_id`` is in segment ``name``, each condition, and its features' events."""
    seg = engine.spec.segments.get(name)
    if seg is None:
        known = ", ".join(engine.spec.segments) or "none"
        raise UnknownSegmentError(f"unknown segment {name!r} (defined: {known})")
    at_us, frame = _read_user(engine, user_id, at)
    member = bool(engine.segments_frame(frame)[name][0])
    row = frame.row(0, named=True)
    values = _rule_values(engine, row)
    cmps = _comparisons(seg.rule)
    operands = [op for c in cmps for op in (c.left, c.right) if isinstance(op, Ref | Lookup)]
    events = behaviour(engine.store.events([user_id], until=at_us))
    features: dict[str, Any] = {}
    for op in operands:
        key = op.key if isinstance(op, Lookup) else None
        if _text(op) not in features:
            spec = engine.spec.features[op.name]
            explained = feature_explanation(spec, key, events, row[op.name], at=at_us, top=top)
            features[_text(op)] = explained
    return {
        "user_id": user_id,
        "as_of": format_us(at_us),
        "target": name,
        "target_type": "segment",
        "rule": seg.text,
        "member": member,
        "referenced_features": sorted(referenced_features(seg.rule)),
        "conditions": [_condition(c, values) for c in cmps],
        "features": features,
    }


def explain(
    engine: Engine, user_id: str, target: str, *, at: int | None = None, top: int = 10
) -> dict[str, Any]:
    """Explain ``target`` for ``user_id``: a feature, ``feature['key']`` or a segment."""
    lookup = _LOOKUP.match(target)
    if lookup is not None:
        return explain_feature(engine, user_id, lookup[1], lookup[3], at=at, top=top)
    if target in engine.spec.features:
        return explain_feature(engine, user_id, target, at=at, top=top)
    if target in engine.spec.segments:
        return explain_segment(engine, user_id, target, at=at, top=top)
    features = ", ".join(engine.spec.features) or "none"
    segments = ", ".join(engine.spec.segments) or "none"
    raise UnknownTargetError(
        f"unknown feature or segment {target!r} (features: {features}; segments: {segments})"
    )


__all__ = [
    "contributions",
    "explain",
    "explain_feature",
    "explain_segment",
    "feature_explanation",
    "matching_events",
]
