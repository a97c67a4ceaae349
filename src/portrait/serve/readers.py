"""Readers: a read-only Engine per worker thread, consistent snapshots, and caches.

SQLite connections belong to the thread that opened them, so each worker
thread of the server opens its own read-only store and engine once and keeps
them. A read runs inside the store's ``pinned()`` snapshot (one committed
batch for everything it reads) and is retried if compaction raced it.

Caches are keyed by the *data version*: the watermark and the number of
accepted events, which change with every commit that adds events (a commit
of only dead letters changes no profile), plus the model versions where
models take part. So a cached answer is exactly what a fresh read of that
version would give:

* profiles, profile histories, recent events and feature distributions
  (one LRU of ``profile_cache`` entries);
* the whole population's values and segment flags at the watermark (one
  version; segments, members, audiences share it);
* the recommender (ALS model + catalogue): rebuilt when a new model is
  trained; its catalogue (item popularity) is refreshed when the watermark
  moved and it is older than ``catalog_ttl_s``. The user's own events are
  read fresh on every request, so new events count at once.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from portrait.engine.engine import Engine
from portrait.errors import ModelNotReadyError
from portrait.store import open_store

T = TypeVar("T")
Version = tuple[int | None, int]


@dataclass
class Population:
    """Every user's values and segment flags at one data version (the watermark)."""

    version: Version
    values: pl.DataFrame
    flags: pl.DataFrame
    outputs: dict[Hashable, pl.DataFrame]  # model outputs per model stamp


@dataclass
class _Rec:
    stamp: tuple[int, float]
    watermark: int | None
    built: float
    rec: Any


class Readers:
    """Per-thread read-only engines over ``db`` plus the shared caches."""

    def __init__(self, db: Path, *, profile_cache: int = 10_000, catalog_ttl_s: float = 10.0
                 ) -> None:
        self.db = Path(db)
        self.catalog_ttl_s = catalog_ttl_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._profiles: collections.OrderedDict[Hashable, dict[str, Any]] = (
            collections.OrderedDict()
        )
        self._profile_cap = profile_cache
        self._population: Population | None = None
        self._pop_lock = threading.Lock()
        self._rec: _Rec | None = None
        self._rec_lock = threading.Lock()

    def engine(self) -> Engine:
        """This thread's read-only engine (opened on first use)."""
        eng: Engine | None = getattr(self._local, "engine", None)
        if eng is None:
            eng = Engine(None, open_store(self.db))
            self._local.engine = eng
        return eng

    def read(self, fn: Callable[[Engine], T]) -> T:
        """``fn(engine)`` on one committed snapshot (retried if compaction raced it)."""
        eng = self.engine()
        for attempt in range(5):
            try:
                with eng.store.pinned():
                    return fn(eng)
            except FileNotFoundError:
                if attempt == 4:
                    raise
                time.sleep(0.01)
        raise AssertionError("unreachable")

    @staticmethod
    def version(engine: Engine) -> Version:
        meta = engine.store.meta()
        return meta.watermark, meta.accepted

    def has_models(self) -> bool:
        """Whether a model was ever trained for this database (one stat call)."""
        return (self.db / "models").is_dir()

    def models_stamp(self, engine: Engine) -> tuple[tuple[str, int | None], ...]:
        """The current version of every trained model (empty when none)."""
        if not self.has_models():
            return ()
        from portrait.models import service

        reg = service.registry(engine)
        return tuple((name, reg.current(name)) for name in reg.names())

    def invalidate(self) -> None:
        """Drop every cached answer, the population and the recommender (after an erasure)."""
        with self._lock:
            self._profiles.clear()
        with self._pop_lock:
            self._population = None
        with self._rec_lock:
            self._rec = None

    # -- answer cache (profiles, histories, events, distributions) -----------
    def cached(self, key: Hashable, make: Callable[[], dict[str, Any]]
                       ) -> dict[str, Any]:
        with self._lock:
            hit = self._profiles.get(key)
            if hit is not None:
                self._profiles.move_to_end(key)
                return hit
        value = make()
        if self._profile_cap:
            with self._lock:
                self._profiles[key] = value
                while len(self._profiles) > self._profile_cap:
                    self._profiles.popitem(last=False)
        return value

    # -- population cache -------------------------------------------------
    def population(self, engine: Engine) -> Population:
        """All users at the watermark (call inside :meth:`read`)."""
        version = self.version(engine)
        with self._pop_lock:
            pop = self._population
            if pop is None or pop.version != version:
                values = engine.read_at()
                pop = Population(version, values, engine.segments_frame(values), {})
                self._population = pop
            return pop

    def outputs(self, engine: Engine, pop: Population) -> pl.DataFrame:
        """Model outputs of the population (cached per model versions)."""
        from portrait.models import service

        stamp = self.models_stamp(engine)
        with self._pop_lock:
            found = pop.outputs.get(stamp)
            if found is None:
                found = service.model_outputs(engine, pop.values)
                pop.outputs[stamp] = found
            return found

    # -- recommender cache ------------------------------------------------
    def recommender(self, engine: Engine) -> Any:
        """The serving :class:`~portrait.recommend.core.Recommender` (see the module doc)."""
        from portrait.models import service

        reg = service.registry(engine)
        version = reg.current(service.ALS)
        if version is None:
            raise ModelNotReadyError(
                "no recommendation model yet: run `portrait models train` first"
            )
        trained = reg.root / service.TRAINED
        stamp = (version, trained.stat().st_mtime if trained.exists() else 0.0)
        wm = engine.store.meta().watermark
        with self._rec_lock:
            c = self._rec
            fresh = c is not None and c.stamp == stamp and (
                c.watermark == wm or time.monotonic() - c.built < self.catalog_ttl_s
            )
            if c is None or not fresh:
                c = _Rec(stamp, wm, time.monotonic(), service.recommender(engine))
                self._rec = c
            return c.rec
