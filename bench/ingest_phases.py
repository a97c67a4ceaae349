"""Where portrait's ingest time goes: a per-phase breakdown of one ingest.

    .venv/bin/python bench/ingest_phases.py FILE... [--db DIR] [--catchup FILE] [--keep-db]

Wraps the engine's, aggregators' and store's methods with timers from the
outside (nothing in ``src/`` changes), ingests the files into a fresh
database, and prints inclusive seconds per phase, then one JSON line. With
``--catchup`` the same Engine then ingests that file and gets its own table;
with ``--keep-db`` the files go into an existing database (cold catch-up).
The wrapped names follow the code as of this writing; a missing one is
reported and skipped, so the tool degrades instead of breaking.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

import portrait.engine.engine as engine_mod
import portrait.events.readers as readers_mod
import portrait.store.embedded as store_mod
from portrait.engine import Engine
from portrait.features.base import Aggregator
from portrait.spec.loader import load_spec
from portrait.store import open_store

SPEC = Path(engine_mod.__file__).resolve().parents[1] / "data" / "spec.yaml"


class Clock:
    """Inclusive seconds and calls per phase name."""

    def __init__(self) -> None:
        self.secs: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.missing: list[str] = []

    def add(self, name: str, secs: float) -> None:
        self.secs[name] += secs
        self.calls[name] += 1

    def wrap(self, owner: Any, attr: str, name: str, *, gen: bool = False) -> None:
        orig = getattr(owner, attr, None)
        if orig is None:
            self.missing.append(f"{owner!r}.{attr}")
            return
        setattr(owner, attr, self._gen(orig, name) if gen else self._fn(orig, name))

    def _fn(self, orig: Callable[..., Any], name: str) -> Callable[..., Any]:
        @functools.wraps(orig)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - t0)

        return timed

    def _gen(self, orig: Callable[..., Iterator[Any]], name: str) -> Callable[..., Iterator[Any]]:
        @functools.wraps(orig)
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            t0 = time.perf_counter()
            it = orig(*args, **kwargs)
            self.add(name, time.perf_counter() - t0)
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    self.add(name, time.perf_counter() - t0)
                    return
                self.add(name, time.perf_counter() - t0)
                yield item

        return timed

    def reset(self) -> None:
        self.secs.clear()
        self.calls.clear()


def instrument(clock: Clock) -> None:
    """Module-level wrappers: reader, validation, ids, store writes and commit."""
    clock.wrap(engine_mod, "read_events", "1 read+validate (engine's next(batches))", gen=True)
    clock.wrap(readers_mod, "row_blocks", "1.1 parquet -> polars", gen=True)
    clock.wrap(readers_mod, "validate_frame", "1.2 validate_frame (parquet)")
    clock.wrap(readers_mod, "validate_run", "1.2 validate_run (jsonl parse+validate)")
    clock.wrap(readers_mod, "derive_event_ids", "1.3 derive_event_ids")
    clock.wrap(engine_mod.Engine, "_apply", "2 apply (dedup+aggregate)")
    clock.wrap(engine_mod.Engine, "_load_states", "2.0 load states")
    clock.wrap(engine_mod.Engine, "_commit_pending", "3 commit_pending (store.commit + cache)")
    clock.wrap(store_mod.EmbeddedStore, "seen", "2.1 dedup: store.seen")
    clock.wrap(store_mod.EmbeddedStore, "_logged_ids", "2.1.1 dedup: load logged ids")
    clock.wrap(store_mod.EmbeddedStore, "states", "2.0.1 store.states (read state files)")
    clock.wrap(store_mod.EmbeddedStore, "commit", "3.1 store.commit")
    if hasattr(store_mod, "SeenSet"):
        clock.wrap(store_mod.SeenSet, "add", "3.2 dedup set: add committed ids")
    clock.wrap(store_mod.EmbeddedStore, "_write_parquet", "3.1.1 parquet writes (thread sum)")
    clock.wrap(store_mod, "_fsync_path", "3.1.2 fsync (files+dirs)")
    clock.wrap(store_mod.EmbeddedStore, "_bump", "3.1.3 sqlite meta bump")
    clock.wrap(store_mod.EmbeddedStore, "_maybe_compact", "3.1.4 compaction check/run")
    clock.wrap(store_mod.EmbeddedStore, "_replace", "3.1.4.1 compaction rewrite")


def instrument_engine(clock: Clock, engine: Engine) -> None:
    """Per-feature wrappers on the engine's aggregator instances."""
    agg = engine.agg
    clock.wrap(agg, "partial", "2.2 partial (all features + join)")
    clock.wrap(agg, "merge", "2.3 merge (all features + join)")
    clock.wrap(agg, "prune", "2.4 prune (all features)")
    clock.wrap(agg, "_join", "2.x join of per-feature frames")
    for a in agg.aggs:
        kind = type(a).__name__
        clock.wrap(a, "partial", f"2.2.f partial {a.name} ({kind})")
        clock.wrap(a, "combine", f"2.3.f combine {a.name} ({kind})")
        if type(a).finish is not Aggregator.finish:
            clock.wrap(a, "finish", f"2.5.f finish {a.name} ({kind})")
        if type(a).prune is not Aggregator.prune:  # only real prunes
            clock.wrap(a, "prune", f"2.4.f prune {a.name} ({kind})")


def report(clock: Clock, total: float, title: str) -> dict[str, Any]:
    print(f"\n{title}: {total:.2f} s wall")
    print(f"{'phase':58s} {'s':>8s} {'%':>6s} {'calls':>6s}")
    for name in sorted(clock.secs):
        s = clock.secs[name]
        print(f"{name:58s} {s:8.3f} {100 * s / total:6.1f} {clock.calls[name]:6d}")
    return {"total_s": round(total, 4), **{k: round(v, 4) for k, v in sorted(clock.secs.items())}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--db", default="/tmp/portrait-bench/db-phases")
    p.add_argument("--catchup", help="a file ingested afterwards by the same Engine")
    p.add_argument("--keep-db", action="store_true",
                   help="ingest into the existing database (the cold catch-up case)")
    args = p.parse_args(argv)
    db = Path(args.db)
    if db.exists() and not args.keep_db:
        shutil.rmtree(db)
    clock = Clock()
    instrument(clock)
    t0 = time.perf_counter()
    engine = Engine(load_spec(SPEC), open_store(db, writer=True))
    instrument_engine(clock, engine)
    engine.ingest(args.files)
    out = {"ingest": report(clock, time.perf_counter() - t0, f"ingest {' '.join(args.files)}")}
    if args.catchup:
        clock.reset()
        t0 = time.perf_counter()
        engine.ingest([args.catchup])
        out["catchup"] = report(clock, time.perf_counter() - t0, f"warm catch-up {args.catchup}")
    engine.store.close()
    if clock.missing:
        print("not wrapped (renamed?):", ", ".join(clock.missing), file=sys.stderr)
    print(orjson.dumps(out).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
