"""Hypothesis strategies: random profile specs and random event streams.

Specs are built as YAML text and parsed with :func:`portrait.spec.loader.parse_spec`,
so the loader is exercised by every example: random subsets of every kind,
random ``where`` (numbers spelled several ways), windows, half-lives,
weights (zero, negative, a default), ``k``, and 0-3 segment rules.
Events live in a short time range (three days) with a handful of users and
times that hit window edges and exact half-lives (so windows and decay
matter), and carry explicit ``event_id`` values, ties in ``ts``, null fields
and duplicates. Numbers are chosen so that sums are exact (integer prices
and quantities, ratings in halves, coordinates in quarters).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from portrait.spec.loader import parse_spec
from portrait.spec.model import FeatureSpec, Spec
from portrait.timeutil import parse_duration, parse_rfc3339

US = 1_000_000
BASE_TS = parse_rfc3339("2024-03-01T00:00:00Z")
SPAN_S = 3 * 86_400  # events fall in [BASE_TS, BASE_TS + 3 days]

USERS = ("u0", "u1", "u2", "u3")
TYPES = ("view", "click", "cart", "purchase", "rating")
CATEGORIES = ("Books", "Sci-Fi", "Drama", "Toys", "yes")
ITEMS = ("i0", "i1", "i2", "i3", "i4", "i5")
TEXTS = ("good", "bad movie", "héllo wörld", "a, b", 'say "hi"', "x")

NUMERIC_FIELDS = ("price", "quantity", "rating", "lat", "lon")
SPEC_FIELDS = (
    "event_id", "user_id", "ts", "type", "item_id", "category",
    "price", "quantity", "rating", "text", "lat", "lon",
)
KEY_FIELDS = ("type", "item_id", "category", "text", "event_id")
WINDOWS = ("30m", "1h", "6h", "1d", "2d", "1w")
HALF_LIVES = ("30m", "1h", "6h", "1d", "2d")
WEIGHT_VALUES = (0, 0.5, 1, 2, 3, 5, -1, -2.5)

Event = dict[str, Any]


# --- specs -------------------------------------------------------------------


def _yaml(value: Any) -> str:
    """A YAML flow scalar for a string (JSON strings are valid YAML)."""
    return json.dumps(value, ensure_ascii=False)


@st.composite
def where_clauses(draw: st.DrawFn) -> dict[str, list[str]]:
    """0-2 ``where`` fields, each with 1-3 allowed values (written as YAML)."""
    pools: dict[str, list[str]] = {
        "type": [_yaml(t) for t in TYPES],
        "category": [_yaml(c) for c in CATEGORIES],
        "item_id": [_yaml(i) for i in ITEMS],
        "user_id": [_yaml(u) for u in USERS],
        "text": [_yaml(t) for t in TEXTS],
        "quantity": ["1", "2.0", "3", '"2"', "1e0"],
        "rating": ["3.0", "4.5", "5", '"4"', "x"],
        "price": ["0", "10", "100.0"],
    }
    fields = draw(st.lists(st.sampled_from(sorted(pools)), max_size=2, unique=True))
    return {
        f: draw(st.lists(st.sampled_from(pools[f]), min_size=1, max_size=3, unique=True))
        for f in fields
    }


@st.composite
def feature_options(draw: st.DrawFn, kind: str) -> dict[str, str]:
    """The options of one feature of ``kind``, as YAML flow text per option."""
    opts: dict[str, str] = {"kind": kind}
    if kind in ("sum", "avg", "min", "max"):
        opts["field"] = draw(st.sampled_from(NUMERIC_FIELDS))
    elif kind in ("first", "last", "distinct"):
        opts["field"] = draw(st.sampled_from(SPEC_FIELDS))
    elif kind == "top_k":
        opts["key"] = draw(st.sampled_from(KEY_FIELDS))
        opts["k"] = str(draw(st.integers(1, 4)))
    elif kind == "decayed":
        if draw(st.booleans()):
            opts["key"] = draw(st.sampled_from(KEY_FIELDS))
        opts["half_life"] = draw(st.sampled_from(HALF_LIVES))
        weighted = draw(st.lists(st.sampled_from(TYPES), max_size=3, unique=True))
        weights = {t: str(draw(st.sampled_from(WEIGHT_VALUES))) for t in weighted}
        default = draw(st.sampled_from((None, "0", "2", "0.5", "-1")))
        if default is not None and draw(st.booleans()):
            weights["default"] = default
        elif default is not None:
            opts["default"] = default
        if weights:
            opts["weights"] = "{" + ", ".join(f"{k}: {v}" for k, v in weights.items()) + "}"
    where = draw(where_clauses())
    if where:
        opts["where"] = "{" + ", ".join(f"{f}: [{', '.join(v)}]" for f, v in where.items()) + "}"
    if draw(st.integers(0, 2)) == 0:
        opts["window"] = draw(st.sampled_from(WINDOWS))
    return opts


def _threshold(draw: st.DrawFn, feature: FeatureSpec) -> str:
    """A number to compare ``feature`` with, away from float tie zones.

    Decayed values are sums of powers of two computed with ``exp``, so their
    thresholds end in ``.37`` (never a sum of dyadic terms); other numbers
    here are exact (integer sums, averages of halves) and may tie exactly.
    """
    if feature.kind == "decayed":
        return f"{draw(st.integers(-1, 6))}.37"
    if feature.field == "ts" and feature.kind in ("first", "last"):
        return str(BASE_TS + draw(st.integers(0, SPAN_S)) * US)
    return draw(st.sampled_from(("0", "1", "2", "3", "4.5", "100", "-1", "1.5")))


@st.composite
def comparison(draw: st.DrawFn, features: dict[str, FeatureSpec]) -> str:
    """One comparison over a random feature of the spec."""
    name = draw(st.sampled_from(sorted(features)))
    feature = features[name]
    op = draw(st.sampled_from(("<", "<=", ">", ">=", "==", "!=")))
    if feature.keyed:
        pool = {"type": TYPES, "item_id": ITEMS, "category": CATEGORIES, "text": TEXTS}
        key = draw(st.sampled_from(pool.get(feature.key or "", ("e0001", "e0002"))))
        escaped = key.replace("\\", "\\\\").replace("'", "\\'")
        return f"{name}['{escaped}'] {op} {_threshold(draw, feature)}"
    if feature.value_type == "string" and draw(st.integers(0, 5)) > 0:
        literal = draw(st.sampled_from(("view", "i2", "Books", "u1", "m", "e0003")))
        return f"{name} {op} '{literal}'"
    return f"{name} {op} {_threshold(draw, feature)}"


@st.composite
def rule_text(draw: st.DrawFn, features: dict[str, FeatureSpec], depth: int = 0) -> str:
    """A random rule: comparisons joined with and/or, maybe negated or grouped."""
    shape = draw(st.integers(0, 3 if depth < 2 else 0))
    if shape == 0:
        return draw(comparison(features))
    if shape == 1:
        return f"not ({draw(rule_text(features, depth + 1))})"
    joiner = " and " if shape == 2 else " or "
    parts = draw(st.lists(rule_text(features, depth + 1), min_size=2, max_size=3))
    return "(" + joiner.join(parts) + ")"


def spec_yaml(features: dict[str, dict[str, str]], segments: dict[str, str]) -> str:
    lines = ["version: 1", "features:"]
    for name, opts in features.items():
        lines.append(f"  {name}: {{{', '.join(f'{k}: {v}' for k, v in opts.items())}}}")
    if segments:
        lines.append("segments:")
        lines.extend(f"  {name}: {_yaml(rule)}" for name, rule in segments.items())
    return "\n".join(lines) + "\n"


@st.composite
def specs(draw: st.DrawFn, kinds: tuple[str, ...] | None = None, max_features: int = 8) -> Spec:
    """A random valid spec: a random subset of kinds (repeats allowed) + 0-3 segments."""
    all_kinds = kinds or (
        "count", "sum", "avg", "min", "max", "first", "last", "distinct", "top_k", "decayed",
    )
    chosen = draw(st.lists(st.sampled_from(all_kinds), min_size=1, max_size=max_features))
    features = {f"f{i}_{kind}": draw(feature_options(kind)) for i, kind in enumerate(chosen)}
    parsed = parse_spec(spec_yaml(features, {}))
    rules = draw(st.lists(rule_text(dict(parsed.features)), max_size=3))
    segments = {f"seg{i}": rule for i, rule in enumerate(rules)}
    return parse_spec(spec_yaml(features, segments), source="<generated spec>")


# --- events ------------------------------------------------------------------


def _maybe(strategy: st.SearchStrategy[Any], null_chance: int = 4) -> st.SearchStrategy[Any]:
    """``strategy`` or None (about one time in ``null_chance``)."""
    pick = st.tuples(st.integers(0, null_chance - 1), strategy)
    return pick.map(lambda t: None if t[0] == 0 else t[1])


@st.composite
def event_times(draw: st.DrawFn, durations: tuple[int, ...] = ()) -> st.SearchStrategy[int]:
    """A strategy of event times: a small pool of instants (ties) plus any earlier time.

    The pool holds an anchor, the latest time, and instants one window or
    half-life (``durations``, µs; by default all of them) before it, give or
    take 1 µs, so that window edges and exact halvings are hit.
    """
    anchor_s = draw(st.integers(SPAN_S // 2, SPAN_S))
    anchor = BASE_TS + anchor_s * US
    durations = durations or tuple(parse_duration(d) for d in WINDOWS + HALF_LIVES)
    edges = draw(st.lists(
        st.tuples(st.sampled_from(sorted(durations)), st.sampled_from((-1, 0, 1))), max_size=4
    ))
    seconds = draw(st.lists(st.integers(0, anchor_s), max_size=4))
    pool = [anchor, *(anchor - d + e for d, e in edges), *(BASE_TS + s * US for s in seconds)]
    micros = st.one_of(st.just(0), st.just(0), st.just(0), st.integers(1, US - 1))
    earlier = st.builds(lambda s, u: BASE_TS + s * US + u, st.integers(0, anchor_s - 1), micros)
    return st.one_of(st.sampled_from(pool), earlier)


@st.composite
def event_lists(
    draw: st.DrawFn, min_size: int = 0, max_size: int = 30, durations: tuple[int, ...] = ()
) -> list[Event]:
    """Random events (each with a unique ``event_id``), then some duplicated copies.

    ``durations`` (µs) are the windows and half-lives whose edges the times should hit.
    """
    times = draw(event_times(durations))
    n = draw(st.integers(min_size, max_size))
    events: list[Event] = []
    for i in range(n):
        events.append({
            "event_id": f"e{i:04d}",
            "user_id": draw(st.sampled_from(USERS)),
            "ts": draw(times),
            "type": draw(st.sampled_from(TYPES)),
            "item_id": draw(_maybe(st.sampled_from(ITEMS))),
            "category": draw(_maybe(st.sampled_from(CATEGORIES))),
            "price": draw(_maybe(st.integers(0, 200).map(float), 3)),
            "quantity": draw(_maybe(st.integers(1, 5), 3)),
            "rating": draw(_maybe(st.integers(2, 10).map(lambda h: h / 2), 3)),
            "text": draw(_maybe(st.sampled_from(TEXTS), 2)),
            "lat": draw(_maybe(st.integers(-360, 360).map(lambda q: q / 4), 3)),
            "lon": draw(_maybe(st.integers(-720, 720).map(lambda q: q / 4), 3)),
            "attrs": None,
        })
    if events:
        dups = draw(st.lists(st.sampled_from(events), max_size=len(events) // 3 + 1))
        events.extend(dict(e) for e in dups)
    return events


def spec_durations(spec: Spec) -> tuple[int, ...]:
    """The windows and half-lives of ``spec``, µs."""
    found = {f.window_us for f in spec.features.values()}
    found |= {f.half_life_us for f in spec.features.values()}
    return tuple(sorted(d for d in found if d))


@st.composite
def specs_and_events(
    draw: st.DrawFn, max_features: int = 8, min_size: int = 0, max_size: int = 30
) -> tuple[Spec, list[Event]]:
    """A random spec, and random events whose times hit its window edges."""
    spec = draw(specs(max_features=max_features))
    durations = spec_durations(spec)
    return spec, draw(event_lists(min_size=min_size, max_size=max_size, durations=durations))


@dataclass(frozen=True)
class Plan:
    """How one set of events is fed to the engine.

    ``runs`` is a list of runs (a new Engine and store object each); a run is
    a list of ``ingest`` calls; a call is a list of files; a file is
    ``(format, events)``.
    """

    runs: list[list[list[tuple[str, list[Event]]]]]
    batch_size: int

    @property
    def files(self) -> list[tuple[str, list[Event]]]:
        return [f for run in self.runs for call in run for f in call]


def _split(draw: st.DrawFn, items: list[Any], max_parts: int) -> list[list[Any]]:
    """Cut ``items`` into 1..max_parts consecutive non-empty parts (one part if empty)."""
    if len(items) <= 1:
        return [items]
    cuts = draw(st.lists(st.integers(1, len(items) - 1), max_size=max_parts - 1, unique=True))
    bounds = [0, *sorted(cuts), len(items)]
    return [items[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def plans(draw: st.DrawFn, events: list[Event], formats: tuple[str, ...] = ("jsonl",)) -> Plan:
    """A random order, split into files, ``ingest`` calls and runs, and a batch size.

    Late events come for free: a random order puts old events after new ones.
    """
    order = draw(st.permutations(events))
    files = [(draw(st.sampled_from(formats)), part) for part in _split(draw, order, 5)]
    calls = _split(draw, files, 3)
    runs = _split(draw, calls, 3)
    return Plan(runs=runs, batch_size=draw(st.integers(1, 8)))
