"""Replay events through the real engine, in event-time order, and read snapshots.

A :class:`Replay` owns an embedded store in a work directory. Snapshot
requests ``(key, at, users)`` are served in time order: the events with
``ts <= at`` that are not yet ingested go in as one micro-batch through
:meth:`Engine.ingest_events` (dedup, partial state, merge, commit), then
the profiles are read at ``at`` — exactly what a serving system that
refreshed its profiles at ``at`` would hold. Nothing after ``at`` has been
ingested when ``at`` is read, so a snapshot cannot leak the future; the
leakage test plants future events and checks exactly that.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from portrait.engine import Engine
from portrait.eval.protocol import Protocol, phase_of, staleness_offsets
from portrait.events.schema import EVENT_COLUMNS, DeadLetter
from portrait.events.validate import validate_frame
from portrait.spec.model import Spec
from portrait.store import open_store

USER = "user_id"


def validated_events(frame: pl.DataFrame, source: str) -> tuple[pl.DataFrame, list[DeadLetter]]:
    """A dataset frame -> the engine's validated events, ts-sorted, and the rejects.

    The same validation as ``portrait ingest`` (times to epoch µs, ids
    derived when absent, bad rows dead-lettered with their row and field).
    """
    events, rejects = validate_frame(frame, source=source)
    return events.select(EVENT_COLUMNS).sort(["ts", "event_id"]), rejects


@dataclass(frozen=True)
class SnapshotRequest:
    """Read ``columns`` of ``users`` (all when None) at ``at``; results grouped by ``key``."""

    key: Hashable
    at: int
    users: pl.Series | None = None


def cut_requests(proto: Protocol, cut: int, users: pl.Series) -> list[SnapshotRequest]:
    """The reads one cut needs.

    Key ``("train", cut)``: every user at ``cut - horizon`` (training
    profiles). Key ``(cut, refresh)`` for each refresh interval: ``users``
    read at ``cut`` minus the staleness of that interval, each user at the
    offset of their phase (:func:`phase_of`).
    """
    reqs = [SnapshotRequest(("train", cut), cut - proto.horizon_us, None)]
    phase = phase_of(users, proto.phases, proto.seed)
    for refresh in proto.refresh:
        offsets = staleness_offsets(refresh, proto.phases)
        for k, off in enumerate(offsets):
            sel = users if len(offsets) == 1 else users.filter(pl.Series(phase == k))
            if sel.len():
                reqs.append(SnapshotRequest((cut, refresh), cut - off, sel))
    return reqs


class Replay:
    """Feeds validated, ts-sorted events to an :class:`Engine` as time advances.

    ``rejects`` (the validation's dead letters) are committed with the first
    batch, so the replay store keeps them like an ingest would.
    """

    def __init__(
        self,
        spec: Spec,
        events: pl.DataFrame,
        workdir: str | Path,
        rejects: Sequence[DeadLetter] = (),
    ) -> None:
        self.events = events.select(EVENT_COLUMNS)
        self._ts = self.events["ts"].to_numpy()
        if len(self._ts) and np.any(np.diff(self._ts) < 0):
            raise ValueError("replay events must be sorted by ts")
        self.store = open_store(workdir, writer=True)
        self.engine = Engine(spec, self.store)
        self._pos = 0
        self._rejects = list(rejects)
        self.batches = 0

    def __enter__(self) -> Replay:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def advance(self, until: int) -> int:
        """Ingest every event with ``ts <= until`` not ingested yet; returns how many."""
        end = int(np.searchsorted(self._ts, until, side="right"))
        if end <= self._pos and not self._rejects:
            return 0
        batch = self.events.slice(self._pos, end - self._pos)
        self.engine.ingest_events(batch, self._rejects)
        self._rejects = []
        self.batches += 1
        done = end - self._pos
        self._pos = end
        return done

    @property
    def ingested(self) -> int:
        return self._pos

    def read(self, at: int, columns: Iterable[str]) -> pl.DataFrame:
        """Profiles of every user seen so far, as of ``at`` (must not be before the replay)."""
        self.advance(at)
        values = self.engine.read_at(at)
        return values.select(USER, *columns)

    def snapshots(
        self,
        requests: Iterable[SnapshotRequest],
        columns: Iterable[str],
    ) -> dict[Hashable, pl.DataFrame]:
        """Serve ``requests`` in time order; frames of one key are concatenated."""
        cols = list(columns)
        by_time: dict[int, list[SnapshotRequest]] = {}
        for req in requests:
            by_time.setdefault(req.at, []).append(req)
        parts: dict[Hashable, list[pl.DataFrame]] = {}
        for at in sorted(by_time):
            values = self.read(at, cols)
            for req in by_time[at]:
                part = values if req.users is None else values.join(
                    pl.DataFrame({USER: req.users}), on=USER, how="semi"
                )
                parts.setdefault(req.key, []).append(part)
        return {k: pl.concat(v) for k, v in parts.items()}

    def close(self) -> None:
        self.store.close()
