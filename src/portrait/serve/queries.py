"""The read side of the API as plain functions: an Engine (and caches) in, JSON dicts out.

Each runs inside :meth:`~portrait.serve.readers.Readers.read` (one committed
snapshot). They call the same engine and model-service functions as the CLI,
so the API and ``portrait profile / segment / recommend / audience / drift``
give the same answers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl

from portrait.engine.engine import Engine
from portrait.engine.output import feature_value
from portrait.errors import UnknownFeatureError, UnknownUserError, UsageError
from portrait.events.schema import EVENT_COLUMNS
from portrait.privacy.consent import counted
from portrait.serve.dashboard import json_type
from portrait.serve.readers import Readers
from portrait.spec.model import FeatureSpec
from portrait.spec.rules import referenced_features
from portrait.timeutil import format_us, parse_time_arg

USER = "user_id"
EVENT_FIELDS = tuple(c for c in EVENT_COLUMNS if c != USER)  # one logged event, as JSON
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
_YEAR4 = re.compile(r"^\d{4}-")


def time_arg(text: str | None) -> int | None:
    """A time parameter as epoch µs; a UsageError (400) when it cannot be read or shown."""
    if text is None:
        return None
    at = parse_time_arg(text)
    try:
        shown = format_us(at)  # answers carry it as RFC 3339, which has 4-digit years
    except (ValueError, OverflowError) as exc:
        raise UsageError(f"time {text!r} is out of range (years 1000 to 9999)") from exc
    if not _YEAR4.match(shown):
        raise UsageError(f"time {text!r} is out of range (years 1000 to 9999)")
    return at


def profile(readers: Readers, engine: Engine, user_id: str, at: int | None) -> dict[str, Any]:
    """The profile (DESIGN.md contract) plus ``models`` when models are trained (cached)."""
    stamp = readers.models_stamp(engine)
    key = ("profile", user_id, at, readers.version(engine), stamp)

    def make() -> dict[str, Any]:
        out = engine.profile(user_id, at)
        if stamp:
            from portrait.models import service

            out["models"] = service.user_outputs(engine, user_id, at)
        return out

    return dict(readers.cached(key, make))


def explanation(engine: Engine, user_id: str, target: str, at: int | None) -> dict[str, Any]:
    from portrait.models.explain import explain

    return explain(engine, user_id, target, at=at)


def _times(first: int, end: int, points: int) -> list[int]:
    """``points`` times evenly spaced from ``first`` to ``end`` (both included).

    One point (``end``) when ``points`` is 1 or the user's first event is the watermark.
    """
    if points == 1 or end <= first:
        return [end]
    return [first + round(i * (end - first) / (points - 1)) for i in range(points)]


def history(readers: Readers, engine: Engine, user_id: str, names: list[str], points: int
            ) -> dict[str, Any]:
    """:func:`user_history`, cached per data version."""
    key = ("history", user_id, tuple(names), points, readers.version(engine))
    return readers.cached(key, lambda: user_history(engine, user_id, names, points))


def _check_features(engine: Engine, names: list[str]) -> None:
    specs = engine.spec.features
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise UnknownFeatureError(
            f"unknown feature {unknown[0]!r} (features: {', '.join(specs) or 'none'})"
        )


def user_history(engine: Engine, user_id: str, names: list[str], points: int
                 ) -> dict[str, Any]:
    """Feature values at ``points`` times from the user's first event to the watermark.

    Exact time travel, as :meth:`Engine.read_at` does it, but the user's
    events are read once: the state at ``t`` is the partial aggregate of the
    events with ``ts <= t``; at the watermark it is the stored state.
    """
    specs = engine.spec.features
    _check_features(engine, names)
    names = names or list(specs)
    events = engine.store.events([user_id])
    wm = engine.store.meta().watermark
    if wm is None or events.height == 0:
        raise UnknownUserError(f"unknown user {user_id!r}")
    first = events["ts"].min()
    assert isinstance(first, int)
    out = []
    for t in _times(first, wm, points):
        row = _values_at(engine, user_id, events, t, wm)
        out.append({"at": format_us(t),
                    "values": {n: feature_value(specs[n], row.get(n)) for n in names}})
    return {"user_id": user_id, "start": format_us(first), "end": format_us(wm),
            "features": names, "points": out}


def _values_at(engine: Engine, user_id: str, events: pl.DataFrame, t: int, wm: int
               ) -> dict[str, Any]:
    if t >= wm:
        frame = engine.read_at(None, [user_id])
    else:
        agg = engine.agg
        log = events.filter(pl.col("ts") <= t)
        states = agg.partial(log) if log.height else agg.empty()
        present = pl.DataFrame({USER: [engine.store.resolve(user_id)]}, schema={USER: pl.String})
        frame = agg.read(agg.conform(present.join(states, on=USER, how="left")), t)
    if frame.height == 0:
        raise UnknownUserError(f"unknown user {user_id!r}")
    return frame.row(0, named=True)


def events(readers: Readers, engine: Engine, user_id: str, limit: int) -> dict[str, Any]:
    """:func:`recent_events`, cached per data version."""
    key = ("events", user_id, limit, readers.version(engine))
    return readers.cached(key, lambda: recent_events(engine, user_id, limit))


def recent_events(engine: Engine, user_id: str, limit: int) -> dict[str, Any]:
    """The user's ``limit`` most recent logged events, newest first.

    Ordered by event time, then by ``event_id`` (both descending), so the
    order does not depend on how the log is laid out on disk. Each event
    holds its non-null fields only; ``ts`` is RFC 3339 UTC and ``attrs`` an
    object.
    """
    log = engine.store.events([user_id])
    if log.height == 0:
        raise UnknownUserError(f"unknown user {user_id!r}")
    newest = log.sort(["ts", "event_id"], descending=True).head(limit)
    out = []
    for row in newest.select(EVENT_FIELDS).iter_rows(named=True):
        ev = {k: v for k, v in row.items() if v is not None}
        ev["ts"] = format_us(ev["ts"])
        if "attrs" in ev:
            ev["attrs"] = orjson.loads(ev["attrs"])
        out.append(ev)
    return {"user_id": user_id, "count": len(out), "events": out}


def recommendations(readers: Readers, engine: Engine, user_id: str, k: int,
                    diversity: float) -> dict[str, Any]:
    from portrait.models import service

    rec = readers.recommender(engine)
    recs = service.recommend(engine, user_id, k, diversity=diversity, rec=rec)
    return service.recommendations_json(user_id, recs, as_of=engine.store.meta().watermark)


def segments(readers: Readers, engine: Engine) -> dict[str, Any]:
    """Rules and sizes; users who withdrew analytics consent are not counted."""
    pop = readers.population(engine)
    flags = counted(engine.store, pop.flags)
    sizes = {name: int(flags[name].sum()) for name in engine.spec.segments}
    wm = pop.version[0]
    return {
        "as_of": None if wm is None else format_us(wm),
        "population": flags.height,
        "segments": [
            {"name": name, "rule": seg.text, "features": sorted(referenced_features(seg.rule)),
             "size": sizes[name]}
            for name, seg in engine.spec.segments.items()
        ],
    }


def members(readers: Readers, engine: Engine, name: str, page: tuple[int, int],
            at: int | None) -> dict[str, Any]:
    """One page (``offset``, ``limit``) of the sorted members of segment ``name``."""
    engine.check_segment(name)
    offset, limit = page
    if at is None:
        pop = readers.population(engine)
        everyone = sorted(pop.flags.filter(pl.col(name))[USER].to_list())
        as_of = pop.version[0]
    else:
        everyone = engine.segment_members(name, at)
        as_of = at
    return {"segment": name, "as_of": None if as_of is None else format_us(as_of),
            "total": len(everyone), "offset": offset, "limit": limit,
            "members": everyone[offset:offset + limit]}


def distribution_feature(engine: Engine, name: str) -> FeatureSpec:
    """The spec of ``name`` if it holds one number per user, else the reason why not."""
    _check_features(engine, [name])
    spec = engine.spec.features[name]
    if spec.keyed:
        raise UsageError(
            f"feature {name!r} is keyed ({spec.kind} by {spec.key}): it holds a map of "
            "numbers per user, not one number, so it has no distribution"
        )
    if spec.value_type != "number":
        raise UsageError(
            f"feature {name!r} holds {spec.value_type}s ({spec.kind} of {spec.field}): "
            "only numeric features have a distribution"
        )
    return spec


def distribution(readers: Readers, engine: Engine, name: str, bins: int) -> dict[str, Any]:
    """:func:`population_distribution` of the population at the watermark (cached)."""
    spec = distribution_feature(engine, name)
    pop = readers.population(engine)
    key = ("distribution", name, bins, pop.version)
    return readers.cached(key, lambda: population_distribution(
        spec, counted(engine.store, pop.values)[name], bins, pop.version[0]))


def population_distribution(spec: FeatureSpec, values: pl.Series, bins: int,
                            at: int | None) -> dict[str, Any]:
    """The histogram (``bins`` equal-width bins over [min, max]) and quantiles of ``values``.

    ``nulls`` counts the users without a finite value; all-equal values make
    one bin. Times (``first_seen``...) are counted in epoch µs and shown in
    epoch seconds.
    """
    found = _finite(spec, values)
    quantiles: dict[str, float | None] = dict.fromkeys(QUANTILES)
    counts, edges = np.array([], dtype=np.int64), np.array([0.0])
    if found.size:
        lo, hi = float(found.min()), float(found.max())
        if lo == hi:
            counts, edges = np.array([found.size]), np.array([lo, hi])
        else:
            counts, edges = np.histogram(found, bins=bins, range=(lo, hi))
        qs = np.quantile(found, list(QUANTILES.values()))
        quantiles = {k: float(q) for k, q in zip(QUANTILES, qs, strict=True)}
    return _distribution(spec, values, found, (counts, edges), quantiles=quantiles, at=at)


def bounded_distribution(spec: FeatureSpec, values: pl.Series, bins: int,
                         bounds: tuple[float, float], at: int | None) -> dict[str, Any]:
    """The histogram of ``values`` clamped into public ``bounds`` (in the shown unit: epoch
    seconds for times), ``bins`` equal-width bins; exact counts (noise is added by the
    caller); quantiles left to :func:`histogram_quantiles`."""
    found = _finite(spec, values)
    lo, hi = bounds
    hist = np.histogram(np.clip(found, lo, hi), bins=bins, range=(lo, hi))
    return _distribution(spec, values, found, hist, quantiles=dict.fromkeys(QUANTILES), at=at)


def _finite(spec: FeatureSpec, values: pl.Series) -> np.ndarray:
    """The finite values, in the shown unit (epoch seconds for times)."""
    floats = values.cast(pl.Float64)
    found: np.ndarray = floats.filter(floats.is_finite()).to_numpy()
    return found * 1e-6 if json_type(spec) == "time" else found


def _distribution(spec: FeatureSpec, values: pl.Series, found: np.ndarray,
                  hist: tuple[np.ndarray, np.ndarray], *, quantiles: dict[str, float | None],
                  at: int | None) -> dict[str, Any]:
    """The ``Distribution`` answer (schemas.py) of a histogram (counts, edges)."""
    counts, edges = hist
    rows = [{"lo": float(edges[i]), "hi": float(edges[i + 1]), "count": int(c)}
            for i, c in enumerate(counts)]
    return {"feature": spec.name, "value_type": "time" if json_type(spec) == "time" else "number",
            "at": None if at is None else format_us(at), "users": values.len(),
            "nulls": values.len() - int(found.size), "bins": rows, "quantiles": quantiles}


def histogram_quantiles(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Quantiles read off a histogram: the middle of the bin where the cumulative count
    reaches each level (post-processing of noisy counts costs no privacy)."""
    total = sum(r["count"] for r in rows)
    out: dict[str, float | None] = dict.fromkeys(QUANTILES)
    if total <= 0:
        return out
    for name, q in QUANTILES.items():
        seen = 0
        for r in rows:
            seen += r["count"]
            if seen >= q * total:
                out[name] = (r["lo"] + r["hi"]) / 2
                break
    return out


def changes(engine: Engine, name: str, user_id: str | None, page: tuple[int, int]
            ) -> dict[str, Any]:
    """The entry/exit log of a segment, oldest first, after change ``seq`` (a cursor)."""
    engine.check_segment(name)
    after, limit = page
    log = engine.store.segment_changes(user_id=user_id, segment=name, after=after,
                                       limit=limit + 1)
    more = log.height > limit
    log = log.head(limit)
    rows = log.with_columns(pl.col("ts").map_elements(format_us, return_dtype=pl.String))
    return {"segment": name, "changes": rows.to_dicts(),
            "next_after": int(log["seq"][-1]) if more and log.height else None}


def audience(readers: Readers, engine: Engine, query: str, at: int | None) -> Any:
    """The :class:`~portrait.audience.Audience` of ``query`` at ``at`` (default: watermark)."""
    from portrait.audience import select
    from portrait.models import service

    if at is None:
        pop = readers.population(engine)
        values, outputs = pop.values, readers.outputs(engine, pop)
    else:
        values = engine.read_at(at)
        outputs = service.model_outputs(engine, values, at)
    return select(values, query, dict(engine.spec.features), outputs,
                  withdrawn=engine.store.withdrawn("advertising"))


def drift(engine: Engine, ref: int | None, at: int | None, top: int) -> dict[str, Any]:
    from portrait.models.drift import DAY_US, drift_report

    wm = engine.store.meta().watermark
    if wm is None and at is None:
        raise UsageError("the database has no events yet: nothing to compare")
    at_us = wm if at is None else at
    assert at_us is not None
    ref_us = at_us - 30 * DAY_US if ref is None else ref
    return drift_report(engine, ref_us, at_us, top=top)


def export_dir(db: Path) -> Path:
    return db / "exports"
