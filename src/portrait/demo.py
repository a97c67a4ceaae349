"""``portrait demo``: the sample shop, end to end, on the embedded store.

Ingests three files in arrival order — history, the newest day, then late
events with some malformed records and duplicates — and shows the summary of
each run, a few profiles, a time-travel read, segment members and the dead
letters. (The next milestone replaces the sample with MovieLens-1M.)
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from portrait.engine import Engine
from portrait.spec.loader import load_spec
from portrait.store import open_store
from portrait.timeutil import parse_time_arg

FILES = ("sample_history.jsonl", "sample_recent.jsonl", "sample_late.jsonl")


def run_demo(db: Path, console: Console | None = None) -> None:
    out = console or Console()
    data = resources.files("portrait") / "data"
    if db.exists():
        shutil.rmtree(db)
    spec = load_spec(str(data / "spec.yaml"))
    out.rule("[bold]portrait demo: a toy shop, 3 files, late and bad events included")
    with open_store(db, writer=True) as store:
        engine = Engine(spec, store)
        for name in FILES:
            summary = engine.ingest([str(data / name)])
            out.print(f"ingest {name:22s} -> {summary.to_json()}")
    with open_store(db) as store:
        engine = Engine(None, store)
        for user in ("u000", "u001", "u007"):
            _show(out, engine.profile(user))
        past = engine.profile("u001", parse_time_arg("2024-04-01T00:00:00Z"))
        out.print(
            "[bold]time travel[/]: u001 as of 2024-04-01 ->",
            {k: past["features"][k] for k in ("events_total", "spend_total", "last_item")},
        )
        for seg in engine.spec.segments:
            members = engine.segment_members(seg)
            out.print(f"[bold]segment {seg}[/]: {len(members)} users: {', '.join(members[:8])}")
        letters = store.dead_letters()
        out.print(f"[bold]dead letters[/]: {len(letters)}")
        for d in letters:
            out.print(f"  {Path(str(d['source'])).name}:{d['line']}: {d['reason']}")
    out.print(f"\ndatabase in {db}/ — try: portrait profile u001 --db {db} --json")


def _fmt(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 else f"{value:.2e}"
    return str(value)


def _show(out: Console, profile: dict[str, object]) -> None:
    table = Table(title=f"{profile['user_id']} as of {profile['as_of']}", show_header=False)
    features = profile["features"]
    assert isinstance(features, dict)
    for name, value in features.items():
        table.add_row(name, _fmt(value))
    segs = profile["segments"]
    table.add_row("segments", ", ".join(segs) if isinstance(segs, list) and segs else "-")
    out.print(table)
