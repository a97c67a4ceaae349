"""The live view: the writer's committed states, published to readers after every commit.

The server's writer thread owns the only engine that writes, and that engine
keeps every user's current state row in memory. After each commit, and
*before* the commit's requests are answered, the writer publishes an
immutable :class:`LiveView`: the watermark plus, for each user, where their
newest state row is (a frame and a row number). A profile read at the
watermark (or later) then costs a dict lookup, one row pulled out of a frame,
and a plain-Python read of it (:meth:`~portrait.engine.engine.Engine.profile_of_row`:
``read_row`` per feature and the rule evaluator): no disk, no Polars plan, no
lock held while reading. Reads before the watermark (time travel), history,
explanations and population reads keep using the per-thread read-only
engines (:mod:`portrait.serve.readers`).

Consistency: a view is exactly one committed batch (rows and watermark swap
together, as one attribute assignment). Visibility: an event is readable as
soon as its commit returned; a synchronous ``POST /v1/events`` answers after
that, so a client that got 200 reads its own writes.

Memory: rows of recent commits are kept by reference to the commit's states
frame (in two levels, so a publication copies a bounded map, not every recent
row: 7.6 ms per commit for 250,000 entries); when they cover more than a
quarter of the base, the view is rebuilt
from the engine's (already folded) state cache, the way the engine folds its
own overlay.

Answers are cached per user and are valid while the user's row and the
watermark are unchanged (decay and windows move with the watermark, so a
new watermark is a new answer for everyone, computed lazily on the next read).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from portrait.engine.engine import Engine
from portrait.errors import UnknownUserError
from portrait.features.base import USER

REBUILD_MIN_ROWS = 1_000  # below this many recent rows, never rebuild the base
RECENT_MAX = 4_096  # recent rows copied per publication; past this, merged into ``older``


@dataclass(frozen=True)
class LiveView:
    """One committed state of the store, as the writer has it in memory."""

    seq: int  # publication number (1, 2, ...)
    watermark: int | None
    base: pl.DataFrame
    base_seq: int  # the publication that built ``base``
    index: Mapping[str, int]  # user -> row of ``base``
    recent: Mapping[str, tuple[pl.DataFrame, int, int]] = field(default_factory=dict)
    # user -> (states frame of a later commit, row, publication). Two levels, so a
    # publication copies at most RECENT_MAX entries: ``recent`` (newest) over ``older``.
    older: Mapping[str, tuple[pl.DataFrame, int, int]] = field(default_factory=dict)

    def locate(self, user_id: str) -> tuple[pl.DataFrame, int, int] | None:
        """Where ``user_id``'s newest state row is: (frame, row, publication), or None."""
        hit = self.recent.get(user_id) or self.older.get(user_id)
        if hit is not None:
            return hit
        i = self.index.get(user_id)
        return None if i is None else (self.base, i, self.base_seq)


class Live:
    """Publishes views (writer thread) and answers profile reads from them (any thread)."""

    def __init__(self, *, cache: int = 100_000) -> None:
        self.view: LiveView | None = None
        self._engine: Engine | None = None
        self._cap = cache
        self._cache: collections.OrderedDict[str, tuple[tuple[int, int | None], dict[str, Any]]]
        self._cache = collections.OrderedDict()
        self._lock = threading.Lock()

    # -- the writer thread ---------------------------------------------------
    def publish_all(self, engine: Engine) -> None:
        """A view of every user's state (at start, and when recent rows grew large)."""
        self._engine = engine
        base = engine.current_states()
        seq = (self.view.seq if self.view else 0) + 1
        index = dict(zip(base[USER].to_list(), range(base.height), strict=True))
        self.view = LiveView(seq, engine.watermark, base, seq, index)

    def publish(self, engine: Engine) -> None:
        """After a commit: the rows it wrote and the new watermark."""
        view = self.view
        if view is None:
            self.publish_all(engine)
            return
        states = engine.last_committed
        seq = view.seq + 1
        if states.height == 0:
            self.view = dataclasses.replace(view, seq=seq, watermark=engine.watermark)
            return
        recent = dict(view.recent)
        recent.update((u, (states, i, seq)) for i, u in enumerate(states[USER].to_list()))
        older = view.older
        if len(recent) > RECENT_MAX:  # a copy of the large level every RECENT_MAX rows only
            older, recent = {**older, **recent}, {}
        rows = len(recent) + len(older)  # at most: a user may be in both
        if rows > REBUILD_MIN_ROWS and rows * 4 > view.base.height:
            self.publish_all(engine)
            return
        self.view = dataclasses.replace(view, seq=seq, watermark=engine.watermark,
                                        recent=recent, older=older)

    # -- readers ---------------------------------------------------------------
    def profile(self, user_id: str, at: int | None = None) -> dict[str, Any] | None:
        """The profile at the watermark (or ``at`` after it); None when this view cannot
        answer (no view yet, or ``at`` before the watermark: time travel reads the log).

        Raises :class:`UnknownUserError` for a user without events.
        """
        view, engine = self.view, self._engine
        if view is None or engine is None or view.watermark is None:
            return None
        if at is not None and at < view.watermark:
            return None
        where = view.locate(engine.store.resolve(user_id))  # pure: no database access
        if where is None:
            raise UnknownUserError(f"unknown user {user_id!r}")
        frame, row, seq = where
        when = view.watermark if at is None else at
        version = (seq, when)
        with self._lock:
            hit = self._cache.get(user_id)
            if hit is not None and hit[0] == version:
                self._cache.move_to_end(user_id)
                return hit[1]
        out = engine.profile_of_row(user_id, frame.row(row, named=True), when)
        if self._cap and at is None:
            with self._lock:
                self._cache[user_id] = (version, out)
                while len(self._cache) > self._cap:
                    self._cache.popitem(last=False)
        return out

    def drop(self, user_id: str) -> None:
        """Forget a cached answer (erasure)."""
        with self._lock:
            self._cache.pop(user_id, None)  # keyed by the id as asked
