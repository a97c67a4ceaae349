"""The micro-batcher: one writer thread owns the Engine and commits posted events in groups.

Requests validate their events in their own threads and :meth:`submit` them;
the writer takes the first waiting submission, keeps taking more until
``flush_events`` events are gathered or ``flush_ms`` have passed since that
first one arrived, and commits them all with one
:meth:`~portrait.engine.engine.Engine.ingest_events` (one durable store
commit). Under load, submissions that arrive during a commit are all taken by
the next one (group commit), so the commit cost is shared.

Each submission gets a future resolved after the commit with the status of
each of its events: ``accepted``, or ``duplicate`` (its ``event_id`` was
already stored, or came earlier in the same group: the first copy wins, as in
the engine). Dead letters of the group are committed with it; their ``line``
is their position in the group (unique within the commit, as the store
requires).

After each commit, and before any of its requests is answered, ``publish``
hands the engine to the live view (:mod:`portrait.serve.live`), so a request
answered 200 can read its own events at once.

When no event has arrived for ``refresh_idle_s`` and the watermark moved since
the last time, the writer re-evaluates every user's segments at the watermark
(:meth:`~portrait.engine.engine.Engine.refresh_segments`), so exits caused by
decay or a window expiring are logged for users who post nothing more, and
purges raw events past the retention period (``apply_retention``), as
``portrait ingest`` does at the end of each command.

If a commit fails the writer stops taking events (the engine's in-memory
caches may no longer match the store): every waiting request gets a 503 and
``/healthz`` says so; restarting the server recovers from the store.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import polars as pl

from portrait.engine.engine import Engine, retention_cutoff, split_retained
from portrait.errors import UnavailableError
from portrait.events.schema import DeadLetter, empty_events

ACCEPTED, DUPLICATE, EXPIRED = "accepted", "duplicate", "expired"
T = TypeVar("T")


@dataclass
class Committed:
    """What a submission learns after its group was committed."""

    statuses: list[str]  # one per submitted event, in order
    watermark: int | None
    cutoff: int | None = None  # the retention cutoff the writer applied (EXPIRED events)


@dataclass
class Ticket:
    events: pl.DataFrame
    rejects: list[DeadLetter]
    received: float = field(default_factory=time.perf_counter)
    future: Future[Committed] = field(default_factory=Future)

    @property
    def size(self) -> int:
        return self.events.height + len(self.rejects)


@dataclass(frozen=True)
class GroupStats:
    """One commit, for the metrics."""

    accepted: int
    duplicates: int
    rejected: int
    commit_s: float
    lags_s: list[float]  # per submission: arrival -> committed
    watermark: int | None


_STOP = object()


@dataclass
class Task:
    """Work for the writer thread between two commits (erasure): ``fn(engine)``."""

    fn: Callable[[Engine], Any]
    future: Future[Any] = field(default_factory=Future)


class MicroBatcher:
    """See the module docstring. ``start()`` once, ``stop()`` at shutdown (drains the queue)."""

    def __init__(self, open_engine: Callable[[], Engine], *, flush_events: int = 20_000,
                 flush_ms: float = 5.0, max_queued: int = 1_000_000,
                 on_commit: Callable[[GroupStats], None] | None = None,
                 publish: Callable[[Engine], None] | None = None,
                 refresh_idle_s: float = 5.0) -> None:
        self._open_engine = open_engine
        self._engine: Engine | None = None
        self._ready = threading.Event()
        self.flush_events = flush_events
        self.flush_s = flush_ms / 1000.0
        self.max_queued = max_queued
        self.on_commit = on_commit
        self.publish = publish  # writer thread: after opening and after each commit
        self.refresh_idle_s = refresh_idle_s  # idle this long: re-evaluate segments (if moved)
        self.failure: BaseException | None = None
        self._queue: queue.Queue[object] = queue.Queue()
        self._lock = threading.Lock()
        self._queued = 0
        self._thread = threading.Thread(target=self._run, name="portrait-writer", daemon=True)

    @property
    def queued(self) -> int:
        """Events (and rejects) submitted but not yet committed."""
        return self._queued

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.failure is None

    @property
    def compaction_error(self) -> Exception | None:
        """Why the store's background compaction stopped, if it did."""
        eng = self._engine
        return None if eng is None else getattr(eng.store, "compaction_error", None)

    @property
    def engine(self) -> Engine:
        """The writer's engine (only the writer thread may use it)."""
        if self._engine is None:
            raise UnavailableError("the ingest writer has not started")
        return self._engine

    def start(self) -> None:
        """Start the writer thread; it opens the engine (the store's single writer lock).

        SQLite connections belong to their thread, so the writer opens, uses
        and closes its store in its own thread. Raises what opening raised.
        """
        self._thread.start()
        self._ready.wait()
        if self.failure is not None:
            raise self.failure

    def stop(self, timeout: float = 60.0) -> None:
        """Commit what is queued, then end the writer thread (it closes the store)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def submit(self, events: pl.DataFrame, rejects: list[DeadLetter]) -> Future[Committed]:
        """Queue validated events and their rejects; the future resolves after the commit."""
        ticket = Ticket(events, rejects)
        with self._lock:
            if not self.alive:
                raise UnavailableError(f"the ingest writer has stopped: {self.failure!r}")
            if self._queued + ticket.size > self.max_queued:
                raise UnavailableError(
                    f"ingest queue is full ({self._queued:,} events waiting); retry shortly"
                )
            self._queued += ticket.size
        self._queue.put(ticket)
        return ticket.future

    # -- the writer thread ------------------------------------------------
    def _run(self) -> None:
        try:
            self._engine = self._open_engine()
            if self.publish is not None:
                self.publish(self._engine)
        except BaseException as exc:
            self.failure = exc
            if self._engine is not None:
                self._engine.store.close()
            return
        finally:
            self._ready.set()
        try:
            self._loop()
        finally:
            self._engine.store.close()

    def _loop(self) -> None:
        refreshed = self.engine.watermark
        while True:
            try:
                first = self._queue.get(timeout=self.refresh_idle_s)
            except queue.Empty:  # idle: what time alone caused (segment exits, retention)
                if self.engine.watermark != refreshed:
                    refreshed = self.engine.watermark
                    self._refresh()
                continue
            if first is _STOP:
                return
            if isinstance(first, Task):
                self._run_task(first)
                continue
            assert isinstance(first, Ticket)
            group, stop = self._gather(first)
            if group:
                self._commit(group)
            if stop:
                return

    def call(self, fn: Callable[[Engine], T]) -> Future[T]:
        """Run ``fn(engine)`` in the writer thread after the commits queued before it."""
        with self._lock:
            if not self.alive:
                raise UnavailableError(f"the ingest writer has stopped: {self.failure!r}")
        task = Task(fn)
        self._queue.put(task)
        return task.future

    def _run_task(self, task: Task) -> None:
        try:
            result = task.fn(self.engine)
        except BaseException as exc:  # the engine's caches may be off: stop, as for a commit
            self.failure = self.failure or exc
            task.future.set_exception(exc)
        else:
            task.future.set_result(result)

    def _refresh(self) -> None:
        """Segments of everyone at the watermark (decay, windows), committed; then published."""
        try:
            if self.engine.spec.segments:
                self.engine.refresh_segments()
            self.engine.apply_retention()
            if self.publish is not None:
                self.publish(self.engine)
        except BaseException as exc:  # the writer's caches may be off: stop taking events
            self.failure = self.failure or exc

    def _gather(self, first: Ticket) -> tuple[list[Ticket], bool]:
        group, size = [first], first.size
        deadline = first.received + self.flush_s
        while size < self.flush_events:
            wait = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return group, True
            if isinstance(item, Task):  # commit what came before it, then run it
                self._commit(group)
                self._run_task(item)
                return [], False
            assert isinstance(item, Ticket)
            group.append(item)
            size += item.size
        return group, False

    def _commit(self, group: list[Ticket]) -> None:
        started = time.perf_counter()
        try:
            if self.failure is not None:
                raise UnavailableError(f"the ingest writer has stopped: {self.failure!r}")
            frames = [t.events for t in group if t.events.height]
            events = pl.concat(frames, how="vertical_relaxed") if frames else empty_events()
            rejects = _renumber(group)
            # Past the retention cutoff: refused here, in the writer, where the cutoff
            # is exact (a purge may have just moved it).
            cutoff = retention_cutoff(self.engine.watermark, *self.engine.store.retention())
            expired = (events["ts"] < cutoff) if cutoff is not None else None
            kept = events
            if expired is not None and expired.any():
                late = sum(t.size for t in group)
                kept, dead = split_retained(events, "api", cutoff)
                rejects += [dataclasses.replace(d, line=late + i + 1) for i, d in enumerate(dead)]
            accepted, dups = self.engine.ingest_events(kept, rejects)
            fresh = self.engine.last_fresh  # the engine's own de-duplication, not a second one
            if self.publish is not None:  # readers see the commit before anyone is answered
                self.publish(self.engine)
        except BaseException as exc:
            self.failure = self.failure or exc
            for t in group:
                t.future.set_exception(UnavailableError(f"commit failed: {exc!r}"))
            self._release(group)
            return
        done = time.perf_counter()
        fresh_of_kept = iter(fresh.to_list())
        statuses = [EXPIRED if gone else (ACCEPTED if next(fresh_of_kept) else DUPLICATE)
                    for gone in (expired.to_list() if expired is not None
                                 else [False] * events.height)]
        wm = self.engine.watermark
        start = 0
        for t in group:
            mine = statuses[start:start + t.events.height]
            start += t.events.height
            t.future.set_result(Committed(mine, wm, cutoff))
        self._release(group)
        if self.on_commit is not None:
            self.on_commit(GroupStats(accepted, dups, len(rejects), done - started,
                                      [done - t.received for t in group], wm))

    def _release(self, group: list[Ticket]) -> None:
        with self._lock:
            self._queued -= sum(t.size for t in group)


def _renumber(group: list[Ticket]) -> list[DeadLetter]:
    """Dead letters with ``line`` = position in the group (unique within one commit)."""
    out: list[DeadLetter] = []
    offset = 0
    for t in group:
        out.extend(dataclasses.replace(d, line=offset + d.line) for d in t.rejects)
        offset += t.size
    return out
