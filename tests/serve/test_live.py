"""The live view (serve/live.py): after every commit it answers each user's profile as the
engine does, whichever level (recent, older, base) holds the user's newest row."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.serve.harness import DATA, SPEC

from portrait.engine import Engine
from portrait.events.readers import read_events
from portrait.serve import live
from portrait.spec.loader import load_spec
from portrait.store import open_store


@pytest.mark.parametrize(("history_events", "level"), [
    (None, "older"),  # a large base: recent rows move to `older`, no rebuild
    (40, "rebuilt"),  # a small base: recent rows soon outgrow it, the view is rebuilt
])
def test_every_read_equals_the_engine_whichever_level_holds_the_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, history_events: int | None,
        level: str) -> None:
    monkeypatch.setattr(live, "RECENT_MAX", 3)  # merge into `older` past 3 recent rows
    monkeypatch.setattr(live, "REBUILD_MIN_ROWS", 2)
    batches = [b.events for b in read_events(str(DATA / "sample_recent.jsonl"), batch_size=3)]
    with open_store(tmp_path / "db", writer=True) as store:
        engine = Engine(load_spec(SPEC), store)
        history = read_events(str(DATA / "sample_history.jsonl"),
                              batch_size=history_events or 1_000_000)
        engine.ingest_events(next(iter(history)).events)
        view = live.Live()
        view.publish(engine)
        assert view.view is not None
        base_seq, seen, levels = view.view.base_seq, set(), {"older": 0, "rebuilt": 0}
        for events in batches:
            engine.ingest_events(events)
            view.publish(engine)
            current = view.view
            levels["older"] += bool(current.older)
            levels["rebuilt"] += current.base_seq != base_seq
            base_seq = current.base_seq
            seen |= set(events["user_id"].to_list())
            for user in sorted(seen):
                assert view.profile(user) == engine.profile(user), user
    assert levels[level] > 0, levels
