"""Oracle tests: the engine equals a slow reference for random specs and events.

For random specs (:mod:`strategies`) and random events with duplicates, ties
and late arrivals, the events are written to real files (JSON Lines, CSV,
Parquet), shuffled, split into files, ``ingest`` calls and runs (a new
Engine and store object per run on the same database directory, with a tiny
random ``batch_size``; some batches go through ``ingest_events``, the API
path), and every profile is compared with
:func:`reference.reference_profile` — after every ``ingest`` call at the
watermark, and at the end at the watermark, at past times (time travel) and
at a future time. Then: two different splits give the same profiles; each
aggregator obeys the merge laws; id-less events are de-duplicated by content;
state stays bounded (windows and decayed keys pruned, ``distinct`` sketched).

Comparison rules: ints, strings and None exactly; floats with
``math.isclose(rel_tol=1e-9, abs_tol=1e-6)``; ``decayed`` maps key-wise with
a missing key read as 0 (1e-6: the documented pruning epsilon); ``top_k``
maps and segment lists exactly.

Knobs (environment): ``PORTRAIT_PROPERTY_EXAMPLES`` (default 40) sizes the
fast tests; ``-m slow`` or ``PORTRAIT_SLOW=1`` runs the large variant
(``PORTRAIT_SLOW_EXAMPLES``, default 600); ``PORTRAIT_NO_SHRINK=1`` reports a
failure without shrinking it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import polars as pl
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from portrait.engine.engine import ROW_BATCH_MAX, Engine
from portrait.errors import UnknownUserError
from portrait.events.schema import EVENT_SCHEMA
from portrait.features import build_aggregator, hll
from portrait.features.base import USER
from portrait.features.maps import DISTINCT_EXACT_LIMIT
from portrait.privacy.pseudonym import Pseudonymizer
from portrait.privacy.setup import protect
from portrait.spec.loader import parse_spec
from portrait.spec.model import FeatureSpec, Spec
from portrait.store import open_store
from portrait.timeutil import US_PER_S, format_us
from reference import DECAY_EPSILON, Event, dedup, reference_profile
from strategies import (
    BASE_TS,
    US,
    Plan,
    event_lists,
    plans,
    spec_durations,
    specs,
    specs_and_events,
)

FAST = settings(
    max_examples=int(os.environ.get("PORTRAIT_PROPERTY_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # PORTRAIT_NO_SHRINK=1 reports the first failure as found (shrinking a failing
    # engine run can take minutes).
    phases=[p for p in Phase if not (os.environ.get("PORTRAIT_NO_SHRINK") and p == Phase.shrink)],
)
SLOW = settings(FAST, max_examples=int(os.environ.get("PORTRAIT_SLOW_EXAMPLES", "600")))
REL_TOL = 1e-9
ABS_TOL = DECAY_EPSILON
HOUR = 3600 * US


# --- comparing profiles --------------------------------------------------------


def same_value(got: Any, want: Any, *, exact_floats: bool = False) -> bool:
    """Engine value ``got`` equals reference value ``want`` under the module's rules."""
    if isinstance(want, dict) and isinstance(got, dict):
        if all(isinstance(v, int) for v in (*want.values(), *got.values())):
            return list(got.items()) == list(want.items())  # top_k: counts and rank order
        keys = set(got) | set(want)
        return all(
            same_value(float(got.get(k, 0.0)), float(want.get(k, 0.0)), exact_floats=exact_floats)
            for k in keys
        )
    if got is None or want is None or isinstance(want, str | bool):
        return got == want and type(got) is type(want)
    if type(got) is not type(want):
        return False
    if isinstance(want, float) and not exact_floats:
        return math.isclose(got, want, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return bool(got == want)


def assert_same_profile(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    """Field by field, with a message naming the feature, the user and the time."""
    where = f"{what}, user {want['user_id']}, as of {want['as_of']}"
    assert set(got) == {"user_id", "as_of", "features", "segments"}, where
    assert got["user_id"] == want["user_id"], where
    assert got["as_of"] == want["as_of"], where
    assert list(got["features"]) == list(want["features"]), where
    for name, value in want["features"].items():
        assert same_value(got["features"][name], value), (
            f"{where}: feature {name}: engine {got['features'][name]!r} != reference {value!r}"
        )
    assert got["segments"] == want["segments"], f"{where}: segments"


# --- writing events to files ---------------------------------------------------

FILE_COLUMNS = tuple(c for c in EVENT_SCHEMA if c != "attrs")
TS_STYLES = ("rfc3339", "epoch", "offset", "mixed")
_OFFSET = timezone(timedelta(hours=5, minutes=30))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ts_text(ts: int, style: str, index: int) -> str | int:
    """``ts`` (epoch µs) as RFC 3339 (UTC or +05:30) or epoch s/ms where that is exact."""
    if style == "mixed":
        style = TS_STYLES[index % 3]
    if style == "epoch" and ts % US_PER_S == 0:
        return ts // US_PER_S
    if style == "epoch" and ts % 1000 == 0:
        return ts // 1000  # epoch milliseconds
    if style == "offset":
        return (_EPOCH + timedelta(microseconds=ts)).astimezone(_OFFSET).isoformat()
    return format_us(ts)


def _plain(field: str, value: Any) -> Any:
    """Integral prices and latitudes go out as JSON integers (read back as floats)."""
    if isinstance(value, float) and value.is_integer() and field in ("price", "lat"):
        return int(value)
    return value


def write_jsonl(path: Path, events: list[Event], ts_style: str, omit_nulls: bool) -> None:
    lines = []
    for i, event in enumerate(events):
        record = {
            f: ts_text(event[f], ts_style, i) if f == "ts" else _plain(f, event.get(f))
            for f in FILE_COLUMNS
            if not (omit_nulls and event.get(f) is None)
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    path.write_text("".join(lines), encoding="utf-8")


def write_csv(path: Path, events: list[Event], ts_style: str) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FILE_COLUMNS)
        for i, event in enumerate(events):
            cells = [
                ts_text(event[f], ts_style, i) if f == "ts" else _plain(f, event.get(f))
                for f in FILE_COLUMNS
            ]
            writer.writerow(["" if c is None else str(c) for c in cells])


def events_frame(events: list[Event]) -> pl.DataFrame:
    """A validated batch (``EVENT_SCHEMA`` columns) of ``events``."""
    rows = [{c: e.get(c) for c in EVENT_SCHEMA} for e in events]
    return pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")


def write_parquet(path: Path, events: list[Event], ts_style: str) -> None:
    """``ts`` as a UTC timestamp column, or as RFC 3339 text."""
    frame = events_frame(events).drop("attrs")
    if ts_style == "rfc3339":
        frame = frame.with_columns(pl.col("ts").map_elements(format_us, pl.String))
    else:
        frame = frame.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    frame.write_parquet(path)


def write_events(
    stem: Path, fmt: str, events: list[Event], style: int, *, strip_ids: bool = False
) -> Path:
    """``events`` as a ``fmt`` file at ``stem`` + suffix; ``style`` picks times and nulls.

    With ``strip_ids`` the file has no ``event_id`` values (the reader derives them).
    """
    if strip_ids:
        events = [{**e, "event_id": None} for e in events]
    ts_style = TS_STYLES[style % len(TS_STYLES)]
    path = stem.with_suffix("." + fmt)
    if fmt == "jsonl":
        write_jsonl(path, events, ts_style, omit_nulls=style % 2 == 0)
    elif fmt == "csv":
        write_csv(path, events, ts_style)
    else:
        write_parquet(path, events, ts_style)
    return path


# --- driving the engine --------------------------------------------------------


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary directory, in RAM where possible (the store fsyncs every batch)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=base, prefix="portrait-props-") as d:
        yield Path(d)


def run_plan(
    spec: Spec,
    plan: Plan,
    root: Path,
    *,
    check_each_call: bool = True,
    respec: bool = False,
    strip_ids: bool = False,
    private: bool = False,
) -> Path:
    """Feed ``plan`` to a database under ``root``; check profiles after every call.

    After each ``ingest`` call: the summary counts and watermark are those of
    the reference, and every user seen so far has the reference profile at the
    watermark. Returns the database directory.
    """
    db = root / "db"
    ingested: list[Event] = []
    n_file = 0
    for r, run in enumerate(plan.runs):
        with open_store(db, writer=True) as store:
            if private and r == 0:  # pseudonyms + encryption at rest (keys: the environment)
                protect(store, pseudonymise=True, encrypt=True)
            # Both write paths: small batches folded in Python (the default for
            # batches this small) or, on odd batch sizes, always the Polars frame path.
            engine = Engine(spec if r == 0 or respec else None, store, batch_size=plan.batch_size,
                            row_batch_max=0 if plan.batch_size % 2 else ROW_BATCH_MAX)
            for call in run:
                before = {e["event_id"] for e in ingested}
                paths, accepted, duplicates = [], 0, 0
                for fmt, events in call:
                    ingested.extend(events)
                    if fmt == "frame":  # the API path: an already validated batch
                        got = engine.ingest_events(events_frame(events))
                        accepted, duplicates = accepted + got[0], duplicates + got[1]
                        continue
                    n_file += 1
                    stem = root / f"f{n_file:03d}"
                    paths.append(write_events(stem, fmt, events, n_file, strip_ids=strip_ids))
                summary = engine.ingest(paths).to_json()
                new = {e["event_id"] for e in ingested} - before
                total = sum(len(events) for _, events in call)
                assert summary["rejected"] == 0
                assert accepted + summary["accepted"] == len(new)
                assert duplicates + summary["duplicates"] == total - len(new)
                if check_each_call:
                    check_watermark(engine, spec, ingested, summary["watermark"])
    return db


def check_watermark(engine: Engine, spec: Spec, events: list[Event], wm_text: str | None) -> None:
    uniq = dedup(events)
    if not uniq:
        assert wm_text is None
        return
    wm = max(e["ts"] for e in uniq)
    assert wm_text == format_us(wm)
    for user in sorted({e["user_id"] for e in uniq}):
        want = reference_profile(spec, events, user, wm)
        assert_same_profile(engine.profile(user), want, "after an ingest call")


def read_times(draw: st.DrawFn, spec: Spec, uniq: list[Event]) -> list[int]:
    """Past times (on, just before and after event times and window edges) and a future one."""
    times = sorted({e["ts"] for e in uniq})
    windows = sorted({f.window_us for f in spec.features.values() if f.window_us}) or [HOUR]
    near_event = st.tuples(st.sampled_from(times), st.sampled_from((-1, 0, 1))).map(sum)
    window_edge = st.tuples(
        st.sampled_from(times), st.sampled_from(windows), st.sampled_from((-1, 0, 1))
    ).map(sum)
    anywhere = st.integers(times[0] - HOUR, times[-1] + HOUR)
    past = draw(st.lists(st.one_of(near_event, window_edge, anywhere), min_size=1, max_size=3))
    future = times[-1] + draw(st.sampled_from((1, HOUR, 100 * HOUR)))
    return [*past, future]


def check_final(db: Path, spec: Spec, events: list[Event], ats: list[int], *,
                stored_id: Callable[[str], str] = str) -> None:
    """A fresh read-only engine gives the reference profile of every user at every time,
    the reference members of every segment, and the reference running totals."""
    uniq = dedup(events)
    users = sorted({e["user_id"] for e in uniq})
    with open_store(db) as store:
        meta = store.meta()
        assert (meta.accepted, meta.rejected, meta.users) == (len(uniq), 0, len(users))
        engine = Engine(None, store)
        with pytest.raises(UnknownUserError):
            engine.profile("nobody")
        if not uniq:
            return
        wm = max(e["ts"] for e in uniq)
        for at in (wm, *ats):
            wants = {u: reference_profile(spec, events, u, at) for u in users}
            for user, want in wants.items():
                what = "at the watermark" if at == wm else "time travel / future"
                assert_same_profile(engine.profile(user, at), want, what)
                if at == wm:
                    assert_same_profile(engine.profile(user), want, "at the default time")
            # Every known user has a profile at any time (empty before their first
            # event), and segment members agree with it.
            for name in spec.segments:
                members = sorted(stored_id(u) for u in users if name in wants[u]["segments"])
                assert engine.segment_members(name, at) == members, (name, format_us(at))


def engine_equals_reference(spec: Spec, events: list[Event], data: st.DataObject) -> None:
    formats = data.draw(
        st.sampled_from((("jsonl",), ("jsonl", "csv", "parquet"), ("jsonl", "frame"))), "formats"
    )
    plan = data.draw(plans(events, formats), "plan")
    respec = data.draw(st.booleans(), "respec")
    uniq = dedup(events)
    with scratch_dir() as root:
        db = run_plan(spec, plan, root, respec=respec)
        ats = read_times(data.draw, spec, uniq) if uniq else []
        check_final(db, spec, events, ats)


# --- 1. engine == reference ------------------------------------------------------


@FAST
@given(case=specs_and_events(), data=st.data())
def test_engine_equals_reference(case: tuple[Spec, list[Event]], data: st.DataObject) -> None:
    engine_equals_reference(*case, data)


@pytest.mark.slow
@pytest.mark.skipif(
    "'slow' not in config.getoption('markexpr') and not os.environ.get('PORTRAIT_SLOW')",
    reason="slow: run with -m slow or PORTRAIT_SLOW=1",
)
@SLOW
@given(case=specs_and_events(max_features=12, max_size=80), data=st.data())
def test_engine_equals_reference_many(case: tuple[Spec, list[Event]], data: st.DataObject) -> None:
    engine_equals_reference(*case, data)


@settings(FAST, max_examples=max(FAST.max_examples // 3, 1))
@given(case=specs_and_events(), data=st.data())
def test_private_store_equals_reference(case: tuple[Spec, list[Event]], data: st.DataObject
                                        ) -> None:
    """With user ids pseudonymised and personal fields sealed in the vault, every
    profile after every call, at every time (time travel rebuilds from the decrypted
    log) and every segment equals the reference, read by raw id (``where`` filters on
    user ids included)."""
    spec, events = case
    plan = data.draw(plans(events, ("jsonl", "csv", "parquet", "frame")), "plan")
    uniq = dedup(events)
    # the one designed difference: a first/last of user_id reads the stored pseudonym
    assume(all(f.field != "user_id" for f in spec.features.values()))
    keys = {"PORTRAIT_PSEUDONYM_KEY": "property-test-pseudonym-key-0123456789",
            "PORTRAIT_MASTER_KEY": "4e" * 32}
    with mock.patch.dict(os.environ, keys), scratch_dir() as root:
        db = run_plan(spec, plan, root, private=True)
        ats = read_times(data.draw, spec, uniq) if uniq else []
        pseudo = Pseudonymizer(keys["PORTRAIT_PSEUDONYM_KEY"].encode())
        check_final(db, spec, events, ats, stored_id=pseudo.one)  # members: pseudonyms


# --- 2. order and split independence ----------------------------------------------


def profiles_of(db: Path, users: list[str], ats: list[int | None]) -> dict[tuple[str, Any], Any]:
    with open_store(db) as store:
        engine = Engine(None, store)
        return {(u, at): engine.profile(u, at) for u in users for at in ats}


@settings(FAST, max_examples=max(FAST.max_examples // 3, 1))
@given(case=specs_and_events(min_size=1), data=st.data())
def test_order_and_split_do_not_matter(case: tuple[Spec, list[Event]], data: st.DataObject) -> None:
    """Two different orders and splits of the same events give the same profiles."""
    spec, events = case
    formats = ("jsonl", "csv", "parquet", "frame")
    first = data.draw(plans(events, formats), "first plan")
    second = data.draw(plans(events, formats), "second plan")
    uniq = dedup(events)
    users = sorted({e["user_id"] for e in uniq})
    ats: list[int | None] = [None, *read_times(data.draw, spec, uniq)]
    with scratch_dir() as root:
        (root / "a").mkdir()
        (root / "b").mkdir()
        got_a = profiles_of(run_plan(spec, first, root / "a", check_each_call=False), users, ats)
        got_b = profiles_of(run_plan(spec, second, root / "b", check_each_call=False), users, ats)
    for key, a in got_a.items():
        b = got_b[key]
        assert (a["as_of"], a["segments"]) == (b["as_of"], b["segments"]), key
        for name, value in a["features"].items():
            assert same_value(b["features"][name], value), (key, name, b["features"][name], value)


# --- 3. events without ids: de-duplication by content ------------------------------


@settings(FAST, max_examples=max(FAST.max_examples // 3, 1))
@given(case=specs_and_events(min_size=1, max_size=20), data=st.data())
def test_events_without_ids_count_once(case: tuple[Spec, list[Event]], data: st.DataObject) -> None:
    """Id-less events get content ids: the same event in two files (any format) counts once."""
    spec, events = case
    from portrait.events.eventid import event_id_of

    with_ids = [{**e, "event_id": event_id_of(e)} for e in events]
    plan = data.draw(plans(with_ids, ("jsonl", "csv", "parquet")), "plan")
    again = data.draw(plans(with_ids, ("jsonl", "csv", "parquet")), "again")
    both = Plan(runs=[*plan.runs, *again.runs], batch_size=plan.batch_size)
    uniq = dedup(with_ids)
    with scratch_dir() as root:
        db = run_plan(spec, both, root, strip_ids=True)
        check_final(db, spec, with_ids, read_times(data.draw, spec, uniq))


# --- 4. merge laws of every aggregator kind ------------------------------------------

KINDS = ("count", "sum", "avg", "min", "max", "first", "last", "distinct", "top_k", "decayed")


def conformed(agg: Any, states: pl.DataFrame) -> pl.DataFrame:
    """``user_id`` + the aggregator's state columns, in schema order and dtypes."""
    cols = [pl.col(USER)]
    for name, dtype in agg.state_schema.items():
        col = pl.col(name) if name in states.columns else pl.lit(None)
        cols.append(col.cast(dtype).alias(name))
    return states.select(cols)


def merged(agg: Any, *states: pl.DataFrame) -> pl.DataFrame:
    return conformed(agg, agg.combine(pl.concat([conformed(agg, s) for s in states])))


def values_at(agg: Any, feature: FeatureSpec, states: pl.DataFrame, at: int) -> dict[str, Any]:
    """user -> the feature's value at ``at``, in its profile JSON form."""
    from portrait.engine.output import feature_value

    read = agg.read(states, at).to_list()
    return {u: feature_value(feature, v) for u, v in zip(states[USER], read, strict=True)}


def assert_same_values(got: dict[str, Any], want: dict[str, Any], law: str) -> None:
    assert sorted(got) == sorted(want), law
    for user, value in want.items():
        assert same_value(got[user], value), f"{law}: user {user}: {got[user]!r} != {value!r}"


@pytest.mark.parametrize("kind", KINDS)
@settings(FAST, max_examples=max(FAST.max_examples // 3, 1))
@given(data=st.data())
def test_merge_laws(kind: str, data: st.DataObject) -> None:
    """Associative, commutative, identity (empty frame, null rows), and a homomorphism:
    merging the states of parts = the state of the whole; pruning changes no read."""
    spec = data.draw(specs(kinds=(kind,), max_features=1), "spec")
    feature = next(iter(spec.features.values()))
    agg = build_aggregator(feature)
    durations = spec_durations(spec)
    events = dedup(data.draw(event_lists(min_size=1, max_size=40, durations=durations), "events"))
    cut = sorted(data.draw(st.lists(st.integers(0, len(events)), min_size=2, max_size=2)))
    parts = [events[: cut[0]], events[cut[0] : cut[1]], events[cut[1] :]]
    a, b, c = (conformed(agg, agg.partial(events_frame(p))) for p in parts)
    empty = conformed(agg, agg.partial(events_frame([])))
    nulls = conformed(agg, a.select(USER))
    whole = conformed(agg, agg.partial(events_frame(events)))
    wm = max(e["ts"] for e in events)
    for at in (wm, wm + data.draw(st.sampled_from((1, HOUR, 30 * HOUR)), "later")):
        def read(states: pl.DataFrame, at: int = at) -> dict[str, Any]:
            return values_at(agg, feature, states, at)

        ab = merged(agg, a, b)
        assert_same_values(read(merged(agg, b, a)), read(ab), "commutativity")
        left = merged(agg, ab, c)
        assert_same_values(read(merged(agg, a, merged(agg, b, c))), read(left), "associativity")
        assert_same_values(read(merged(agg, a, empty)), read(a), "identity (empty frame)")
        assert_same_values(read(merged(agg, nulls, a)), read(a), "identity (null row)")
        assert_same_values(read(left), read(whole), "merge of parts = whole")
        assert_same_values(read(agg.prune(left, wm)), read(left), "prune at the watermark")
        want = {
            u: reference_profile(spec, events, u, at)["features"][feature.name]
            for u in read(whole)
        }
        assert_same_values(read(whole), want, "read = reference")


@settings(FAST, max_examples=max(FAST.max_examples // 2, 1))
@given(case=specs_and_events(max_features=12, max_size=60), data=st.data())
def test_one_row_read_equals_frame_read(case: tuple[Spec, list[Event]], data: st.DataObject
                                        ) -> None:
    """The serving path (``read_row``: plain Python over one state row) gives the
    values of ``read`` (Polars over the frame), same types, for every feature
    kind, windowed or not, at the watermark and later (the reads the server does)."""
    from portrait.features import ProfileAggregator

    spec, events = case
    events = dedup(events)
    agg = ProfileAggregator(spec)
    if not events:
        return
    wm = max(e["ts"] for e in events)
    cut = data.draw(st.integers(0, len(events)), "cut")
    old = agg.partial(events_frame(events[:cut]), watermark=wm)
    new = agg.partial(events_frame(events[cut:]), watermark=wm)
    states = agg.prune(agg.merge_into(agg.conform(old), new, wm) if new.height else old, wm)
    states = agg.conform(states)
    rows = states.to_dicts()
    for at in (wm, wm + 1, wm + data.draw(st.sampled_from((HOUR, 30 * HOUR, 90 * 24 * HOUR)))):
        frame = agg.read(states, at).to_dicts()
        for row, want in zip(rows, frame, strict=True):
            got = agg.read_row(row, at)
            for feature in spec.features.values():
                name = feature.name
                assert type(got[name]) is type(want[name]) or want[name] is None, (name, at)
                from portrait.engine.output import feature_value

                g, w = feature_value(feature, got[name]), feature_value(feature, want[name])
                assert same_value(g, w), f"{name} at {at}: {g!r} != {w!r}"
                if isinstance(w, dict):
                    assert list(g) == list(w) or feature.kind == "decayed", name


# --- 5. bounded state ------------------------------------------------------------------


@settings(FAST, max_examples=max(FAST.max_examples // 3, 1))
@given(spec=specs(kinds=("count", "sum", "first", "top_k", "decayed")), data=st.data())
def test_state_is_pruned_at_the_watermark(spec: Spec, data: st.DataObject) -> None:
    """After a batch that touches every user at a final time T, no windowed entry is
    at or before T - window and no decayed key's |value| at T is below the epsilon."""
    events = data.draw(event_lists(min_size=1, durations=spec_durations(spec)), "events")
    plan = data.draw(plans(events), "plan")
    final = max(e["ts"] for e in events) + data.draw(st.integers(0, 3 * 86_400), "gap") * US
    pings = [
        {**dict.fromkeys(EVENT_SCHEMA), "event_id": f"ping-{u}", "user_id": u, "ts": final,
         "type": "view"}
        for u in sorted({e["user_id"] for e in events})
    ]
    runs = [*plan.runs, [[("jsonl", pings)]]]
    with scratch_dir() as root:
        db = run_plan(spec, Plan(runs, plan.batch_size), root, check_each_call=False)
        with open_store(db) as store:
            states = store.states()
        check_final(db, spec, events + pings, [])
    for feature in spec.features.values():
        name = feature.name
        if feature.window_us:
            oldest = states.select(pl.col(f"{name}__e").list.eval(
                pl.element().struct.field("ts").min()).list.first()).to_series()
            assert all(t is None or t > final - feature.window_us for t in oldest), name
        elif feature.kind == "decayed" and feature.key is not None:
            assert feature.half_life_us is not None
            for ref, vals in states.select(f"{name}__ref", f"{name}__vals").iter_rows():
                factor = 2.0 ** ((ref - final) / feature.half_life_us) if ref is not None else 0
                assert all(abs(v * factor) >= DECAY_EPSILON * (1 - 1e-9) for v in vals or []), name


def test_distinct_switches_to_a_sketch() -> None:
    """Exact up to DISTINCT_EXACT_LIMIT values per user, then a HyperLogLog sketch of a
    fixed 4 KiB that stays that size and estimates within 5 %."""
    spec = parse_spec(
        "version: 1\nfeatures:\n  items: {kind: distinct, field: item_id}\n"
        "  n: {kind: count}\n"
    )
    limit = DISTINCT_EXACT_LIMIT

    def batch(user: str, start: int, stop: int) -> list[Event]:
        return [
            {"event_id": f"{user}-{i}", "user_id": user, "ts": BASE_TS + i * US,
             "type": "view", "item_id": f"item-{i % stop}"}
            for i in range(start, stop)
        ]

    with scratch_dir() as root:
        db = root / "db"
        sizes = []
        steps = [
            batch("big", 0, limit) + batch("edge", 0, limit),  # both exactly at the limit
            batch("big", limit, limit + 1),  # one more: the sketch starts
            batch("big", limit + 1, limit + 3_000),
        ]
        for i, events in enumerate(steps):
            path = write_events(root / f"s{i}", "jsonl", events, 0)
            with open_store(db, writer=True) as store:
                Engine(spec, store, batch_size=4_000).ingest([path])
                row = store.states(["big"]).row(0, named=True)
            sizes.append((len(row["items__keys"] or []), len(row["items__hll"] or b"")))
        with open_store(db) as store:
            engine = Engine(None, store)
            assert engine.profile("edge")["features"]["items"] == limit
            big = engine.profile("big")["features"]["items"]
    assert sizes[0] == (limit, 0)
    assert sizes[1] == sizes[2] == (0, hll.M)
    assert abs(big - (limit + 3_000)) <= 0.05 * (limit + 3_000)
