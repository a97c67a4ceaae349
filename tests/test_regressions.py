"""Regression tests: each one pins an engine bug found by tests/test_properties.py.

Each test is the minimal example of its bug, named after it; the expected
values come from DESIGN.md ("Profile spec (v1)", "Time semantics (v1)").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from portrait.engine.engine import Engine
from portrait.events.schema import EVENT_SCHEMA
from portrait.spec.loader import parse_spec
from portrait.store import open_store

T0 = 1_709_251_200_000_000  # 2024-03-01T00:00:00Z in epoch µs
HOUR = 3_600_000_000


def event(event_id: str, ts: int, **fields: Any) -> dict[str, Any]:
    return {**dict.fromkeys(EVENT_SCHEMA), "event_id": event_id, "user_id": "u", "ts": ts,
            "type": "view", **fields}


def frame(events: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(events, schema=EVENT_SCHEMA, orient="row")


def features_after(
    tmp_path: Path, spec_text: str, batches: list[list[dict[str, Any]]], at: int | None = None
) -> dict[str, Any]:
    """Ingest each batch in turn into a new db, then read user ``u``'s features."""
    spec = parse_spec(spec_text)
    with open_store(tmp_path / "db", writer=True) as store:
        engine = Engine(spec, store)
        for batch in batches:
            engine.ingest_events(frame(batch))
        features: dict[str, Any] = engine.profile("u", at)["features"]
        return features


@pytest.mark.parametrize(
    "feature",
    [
        "{kind: distinct, field: event_id, window: 1d}",
        "{kind: top_k, key: event_id, k: 2, window: 1d}",
        "{kind: decayed, key: event_id, half_life: 1h, window: 1d}",
    ],
)
def test_windowed_feature_on_event_id_can_be_read(tmp_path: Path, feature: str) -> None:
    """Windowed drops ``event_id`` from its entries unless the kind is first/last, so the
    inner kind cannot find the column it reads (ColumnNotFoundError on every read)."""
    got = features_after(tmp_path, f"version: 1\nfeatures:\n  f: {feature}\n", [[event("e1", T0)]])
    assert got["f"] in (1, {"e1": 1}, {"e1": 1.0})


@pytest.mark.parametrize(
    "feature",
    ["{kind: distinct, field: user_id, window: 1d}", "{kind: first, field: user_id, window: 1d}"],
)
def test_windowed_feature_on_user_id_can_be_read(tmp_path: Path, feature: str) -> None:
    """Windowed.read unnests entries holding a ``user_id`` field next to its own
    ``user_id`` row column (DuplicateError on every read)."""
    got = features_after(tmp_path, f"version: 1\nfeatures:\n  f: {feature}\n", [[event("e1", T0)]])
    assert got["f"] in (1, "u")


def test_windowed_decayed_keyed_by_type_can_be_ingested(tmp_path: Path) -> None:
    """Windowed decayed keyed by ``type`` lists ``type`` twice in its entry struct
    (the key and the weight input): DuplicateError, and the whole ingest fails."""
    spec = "version: 1\nfeatures:\n  f: {kind: decayed, key: type, half_life: 1h, window: 1d}\n"
    got = features_after(tmp_path, spec, [[event("e1", T0)]])
    assert got["f"] == {"view": 1.0}


def test_keyed_decayed_with_negative_weight_does_not_depend_on_batching(tmp_path: Path) -> None:
    """Decayed.prune drops every key whose value is below DECAY_EPSILON, negative ones
    included (the loader accepts negative weights): a key's -1 is forgotten when the
    next event of that key comes in a later batch, so the value depends on the split."""
    spec = (
        "version: 1\nfeatures:\n"
        "  f: {kind: decayed, key: category, half_life: 1h, weights: {view: -1, purchase: 3}}\n"
    )
    events = [event("e1", T0, category="A"), event("e2", T0, category="A", type="purchase")]
    one_batch = features_after(tmp_path / "one", spec, [events])
    two_batches = features_after(tmp_path / "two", spec, [events[:1], events[1:]])
    assert one_batch["f"] == pytest.approx({"A": 2.0})
    assert two_batches["f"] == pytest.approx(one_batch["f"])


def test_where_number_matches_numeric_field_whatever_its_spelling(tmp_path: Path) -> None:
    """``where`` compares the field cast to text with the spec values as written, so
    ``rating: [5]`` never matches a rating of 5 (read as 5.0 -> "5.0") and
    ``quantity: [2.0]`` never matches a quantity of 2: the feature silently stays 0."""
    spec = (
        "version: 1\nfeatures:\n"
        "  r5: {kind: count, where: {rating: [5]}}\n"
        "  q2: {kind: count, where: {quantity: [2.0]}}\n"
    )
    got = features_after(tmp_path, spec, [[event("e1", T0, rating=5.0, quantity=2)]])
    assert got == {"r5": 1, "q2": 1}


def test_segment_members_agree_with_profiles_before_first_event(tmp_path: Path) -> None:
    """Before a user's first event, ``profile(u, at)`` gives an empty profile that is in
    segment ``idle`` (``n == 0``), but ``segment_members('idle', at)`` leaves ``u`` out:
    the two reads answer the same question differently."""
    spec = parse_spec('version: 1\nfeatures:\n  n: {kind: count}\nsegments:\n  idle: "n == 0"\n')
    with open_store(tmp_path / "db", writer=True) as store:
        engine = Engine(spec, store)
        engine.ingest_events(frame([event("e1", T0)]))
        at = T0 - HOUR
        in_profile = "idle" in engine.profile("u", at)["segments"]
        assert in_profile == ("u" in engine.segment_members("idle", at))
