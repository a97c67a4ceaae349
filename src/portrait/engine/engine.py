"""The engine: ``P(t+1) = f(P(t), D(t))`` over micro-batches.

For every batch of validated events it

1. drops duplicates (``event_id`` seen before, in the store or earlier in the
   same batch — the first copy wins);
2. computes the batch's partial state per user (one vectorised group-by per
   feature, :class:`~portrait.features.ProfileAggregator`);
3. merges it into the touched users' current states and prunes them at the
   new watermark (largest event time seen);
4. commits events, states, dead letters and the source checkpoint as one
   atomic store batch.

Because merge is associative and commutative, the result does not depend on
arrival order or batching: late events are simply merged. Reads at the
watermark or later use the state; reads before it (time travel) rebuild the
user's state from the event log with ``ts <= at`` — exact by construction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import polars as pl

from portrait.engine.output import profile_json
from portrait.errors import StoreError, UnknownSegmentError, UnknownUserError
from portrait.events.readers import read_events, source_fingerprint
from portrait.events.schema import EVENT_COLUMNS, LINE_COLUMN, DeadLetter
from portrait.features import ProfileAggregator
from portrait.features.base import USER
from portrait.privacy.consent import behaviour, decisions
from portrait.spec.loader import parse_spec
from portrait.spec.model import Spec
from portrait.spec.rules import evaluate, referenced_features, to_polars
from portrait.store.base import Checkpoint, Commit, Store
from portrait.timeutil import format_us

DEFAULT_BATCH_SIZE = 2_000_000
PURGE_STEP_US = 86_400_000_000  # retention purges when its cutoff moved a day: log rewrites
ROW_BATCH_MAX = 256  # about where the Python fold stops being cheaper (BENCHMARKS.md)
T = TypeVar("T")


@dataclass
class IngestSummary:
    """Counts of one ``ingest`` call (the CLI prints ``to_json()``)."""

    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    watermark: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "watermark": None if self.watermark is None else format_us(self.watermark),
        }


ProgressFn = Callable[[str, int, IngestSummary], None]


class Engine:
    """Profiles from events, incrementally. ``Engine(spec, store).ingest(paths)``.

    ``spec`` may be None for a store that already has one; a different spec
    from the one a store was built with is refused (it would need a rebuild).
    """

    def __init__(
        self, spec: Spec | None, store: Store, *, batch_size: int = DEFAULT_BATCH_SIZE,
        row_batch_max: int = ROW_BATCH_MAX,
    ) -> None:
        meta = store.meta()
        if spec is None:
            if meta.spec_text is None:
                raise StoreError("this database has no spec yet: pass --spec on the first ingest")
            spec = parse_spec(meta.spec_text, source="<spec stored in the database>")
        elif meta.spec_text is not None:
            stored = parse_spec(meta.spec_text, source="<spec stored in the database>")
            if _spec_key(stored) != _spec_key(spec):
                raise StoreError(
                    "this database was built with a different spec; ingest into a new --db "
                    "(or omit --spec to use the stored one)"
                )
        if store.pseudo is not None:  # the events it sees carry pseudonyms
            spec = _pseudonymised_spec(spec, store.pseudo.one)
        self.spec = spec
        self.store = store
        store.set_personal_attrs(spec.personal_attrs)
        self.batch_size = batch_size
        # Batches up to this many new events are folded row by row in Python
        # (ProfileAggregator.fold_batch), larger ones with vectorised Polars.
        self.row_batch_max = row_batch_max
        self.agg = ProfileAggregator(spec)
        self.watermark: int | None = meta.watermark
        self._states: pl.DataFrame | None = None
        self._overlay = self.agg.empty()
        self._run: tuple[str, bool] | None = None
        self._spec_saved = meta.spec_text is not None
        self._members: pl.DataFrame | None = None  # writer cache of store.memberships()
        self._keyed = frozenset(n for n, f in spec.features.items() if f.keyed)
        self._rule_features = frozenset().union(
            *(referenced_features(seg.rule) for seg in spec.segments.values()))
        self.last_committed = self.agg.empty()  # states written by the latest commit
        self.last_fresh = pl.Series("fresh", [], dtype=pl.Boolean)  # see _apply

    # -- ingest ----------------------------------------------------------
    def ingest(
        self, paths: Iterable[str | os.PathLike[str]], *, progress: ProgressFn | None = None
    ) -> IngestSummary:
        """Ingest files (JSONL, CSV, Parquet); re-running after a crash resumes.

        A command is identified by the fingerprints of its files, in order.
        If the same command was interrupted, files it finished are not read
        again (their counts are reused) and the file it was in resumes after
        its last committed batch, so the summary equals an uninterrupted
        run's. Otherwise every file is read from the start (events already
        ingested count as duplicates).
        """
        files = [(str(p), source_fingerprint(p)) for p in paths]
        run_key = hashlib.sha256("\n".join(fp for _, fp in files).encode()).hexdigest()
        resuming = self.store.run_finished(run_key) is False
        self._run = (run_key, False)
        summary = IngestSummary(watermark=self.watermark)
        for path, fp in files:
            self._ingest_file(path, fp, resuming, summary, progress)
        self._apply(_no_events(), [], refresh_segments=True)
        self._run = (run_key, True)
        self._commit_pending(None)
        self._run = None
        self.apply_retention()
        summary.watermark = self.watermark
        return summary

    # -- retention -------------------------------------------------------
    def split_retained(self, events: pl.DataFrame, source: str
                       ) -> tuple[pl.DataFrame, list[DeadLetter]]:
        """Events within the retention period, and dead letters for those before it.

        An event older than ``watermark - retention`` is refused: its raw row
        would be purged at once, and with it the record that it was counted, so
        a copy sent later could not be recognised as a duplicate.
        """
        return split_retained(events, source, retention_cutoff(self.watermark,
                                                               *self.store.retention()))

    def apply_retention(self) -> dict[str, int]:
        """Purge logged events older than ``watermark - retention`` (when a retention is set
        and the cutoff moved by a day or more since the last purge). Counts by kind."""
        retention, purged = self.store.retention()
        if retention is None or self.watermark is None:
            return {"events": 0, "files_rewritten": 0}
        cutoff = self.watermark - retention
        if purged is not None and cutoff < purged + PURGE_STEP_US:
            return {"events": 0, "files_rewritten": 0}
        return self.store.purge_before(cutoff)

    def _ingest_file(
        self,
        path: str,
        fp: str,
        resuming: bool,
        summary: IngestSummary,
        progress: ProgressFn | None,
    ) -> None:
        cp = self.store.checkpoint(fp)
        if cp is not None and cp.complete and resuming:
            pass  # finished by the interrupted run of this same command
        elif cp is None or cp.complete:
            cp = Checkpoint(fp, path, 0, 0, 0, 0, complete=False)
        if cp.complete:
            self._tally(summary, cp)
            return
        batches = read_events(path, batch_size=self.batch_size, skip_rows=cp.rows_done)
        pending = next(batches, None)
        if pending is None:  # empty file, or nothing left after a resume
            self._apply(_no_events(), [])
            cp = Checkpoint(fp, path, cp.rows_done, cp.accepted, cp.rejected, cp.duplicates, True)
            self._commit_pending(cp)
        while pending is not None:
            batch, pending = pending, next(batches, None)
            events, expired = self.split_retained(batch.events, batch.source)
            rejects = [*batch.rejects, *expired]
            accepted, dups = self._apply(events, rejects)
            cp = Checkpoint(
                fp,
                path,
                batch.rows_end,
                cp.accepted + accepted,
                cp.rejected + len(rejects),
                cp.duplicates + dups,
                complete=pending is None,
            )
            self._commit_pending(cp)
            if progress is not None:
                progress(path, batch.rows_end, summary)
        self._tally(summary, cp)

    @staticmethod
    def _tally(summary: IngestSummary, cp: Checkpoint) -> None:
        summary.accepted += cp.accepted
        summary.rejected += cp.rejected
        summary.duplicates += cp.duplicates

    def ingest_events(
        self, events: pl.DataFrame, rejects: Sequence[DeadLetter] = ()
    ) -> tuple[int, int]:
        """Ingest an already validated batch (API, streams). Returns (accepted, duplicates)."""
        accepted, dups = self._apply(events, list(rejects))
        self._commit_pending(None)
        return accepted, dups

    def current_states(self) -> pl.DataFrame:
        """Every user's current state row (the writer's cache; loaded on first use)."""
        return self._load_states()

    def forget(self, user_id: str) -> dict[str, int]:
        """Erase ``user_id`` from the store and from this engine's caches (counts by kind).

        See :mod:`portrait.privacy.erasure` for what is erased and what is not.
        """
        removed = self.store.forget(user_id)
        keep = pl.col(USER) != self.store.resolve(user_id)  # caches hold stored ids
        if self._states is not None:
            self._states = self._states.filter(keep)
        self._overlay = self._overlay.filter(keep)
        if self._members is not None:
            self._members = self._members.filter(keep)
        self.last_committed = self.agg.empty()
        return removed

    def refresh_segments(self) -> int:
        """Re-evaluate every user's segments at the watermark and log what changed.

        Decay and windows move users out of segments without any new event of
        theirs; ``ingest`` does this at the end of every command, a server (which
        only ever calls :meth:`ingest_events`) calls it when idle. Returns the
        number of entries and exits logged (one durable commit, even when 0).
        """
        self._apply(_no_events(), [], refresh_segments=True)
        changes = self._pending.segment_changes
        self._commit_pending(None)
        return 0 if changes is None else changes.height

    def _load_states(self) -> pl.DataFrame:
        """All current states (writer cache): the base plus the recent overlay."""
        if self._states is None:
            found = self.store.states()
            self._states = self.agg.conform(found) if found.height else self.agg.empty()
            self._overlay = self.agg.empty()
        if self._overlay.height:
            keep = self._states.join(self._overlay.select(USER), on=USER, how="anti")
            self._states = pl.concat([keep, self._overlay])
            self._overlay = self.agg.empty()
        return self._states

    def _old_states(self, users: pl.DataFrame) -> pl.DataFrame:
        """Current states of ``users`` (those that have one), from the cache.

        Recent batches live in a small overlay folded into the base only when
        it grows past a quarter of it, so a small batch costs O(batch), not
        O(all users).
        """
        if self._states is None:
            self._load_states()
        assert self._states is not None
        recent = self._overlay.join(users, on=USER, how="semi")
        rest = users.join(recent.select(USER), on=USER, how="anti")
        base = self._states.join(rest, on=USER, how="semi")
        return pl.concat([base, recent]) if recent.height else base

    def _apply(
        self, events: pl.DataFrame, rejects: list[DeadLetter], *, refresh_segments: bool = False
    ) -> tuple[int, int]:
        """Dedup + aggregate one batch; the result waits in ``_pending`` for commit.

        ``refresh_segments``: re-evaluate every user's segments at the watermark
        (the end of an ingest command: decay and windows move members out
        without any new event of theirs).
        """
        pseudo = self.store.pseudo
        identities: dict[str, str] | None = None
        if pseudo is not None and events.height:  # nothing raw is stored (privacy/pseudonym.py)
            identities = {}  # for re-keying (an encrypted store keeps them)
            events = events.with_columns(pseudo.column(events[USER], identities).alias(USER))
        if events.height:
            first = events["event_id"].is_first_distinct()
            fresh = first & ~self.store.seen(events["event_id"])
            new = events.filter(fresh).select(EVENT_COLUMNS)
        else:
            fresh = pl.Series("fresh", [], dtype=pl.Boolean)
            new = events.select(EVENT_COLUMNS) if events.width else _no_events()
        self.last_fresh = fresh  # per event of the batch: accepted (True) or a duplicate
        dups = events.height - new.height
        merged = self.agg.empty()
        new_users = 0
        if new.height:
            batch_max = new["ts"].max()
            assert isinstance(batch_max, int)
            self.watermark = batch_max if self.watermark is None else max(self.watermark, batch_max)
            if new.height <= self.row_batch_max:  # small (API) batches: plain Python
                old = self._old_states(behaviour(new).select(USER).unique())
                merged = self.agg.fold_batch(old, new, self.watermark)
            else:
                partial = self.agg.partial(new, watermark=self.watermark)
                old = self._old_states(partial.select(USER))
                merged = self.agg.merge_into(old, partial, self.watermark)
                merged = self.agg.prune(merged, self.watermark)
            new_users = merged.height - old.height
        changes = None
        if self.spec.segments and self.watermark is not None:
            if refresh_segments:
                changes = self._segment_changes(self._load_states(), None, refresh=True)
            elif merged.height:
                changes = self._segment_changes(merged, new, refresh=False)
        consents = decisions(new) if new.height else None
        self._pending = Commit(
            consents=consents if consents is not None and consents.height else None,
            events=new,
            states=merged,
            dead_letters=rejects,
            watermark=self.watermark,
            duplicates=dups,
            new_users=new_users,
            spec_text=None if self._spec_saved else self.spec.text,
            segment_changes=changes,
            identities=identities,
        )
        return new.height, dups

    def _segment_changes(
        self, states: pl.DataFrame, new: pl.DataFrame | None, *, refresh: bool
    ) -> pl.DataFrame | None:
        """Entries and exits of ``states``' users, evaluated at the watermark.

        The previous memberships come from the store (cached); the cause of a
        change is the user's latest event of the batch, or, for ``refresh``,
        the passing of time (decay, windows) up to the watermark.
        """
        assert self.watermark is not None
        if self._members is None:
            self._members = self.store.memberships().select(USER, "segment")
        if states.height <= self.row_batch_max:  # a few users: the Python read is cheaper
            cols = self.agg.state_columns(self._rule_features)
            pairs = [
                (row[USER], seg)
                for row in states.select(USER, *cols).to_dicts()
                for seg in self.segments_of(
                    self.agg.read_row(row, self.watermark, self._rule_features))
            ]
            now = pl.DataFrame(pairs, schema={USER: pl.String, "segment": pl.String},
                               orient="row")
        else:
            values = self.agg.read(states, self.watermark, self._rule_features)
            flags = self.segments_frame(values)
            now = (
                flags.unpivot(index=USER, variable_name="segment", value_name="member")
                .filter(pl.col("member"))
                .select(USER, "segment")
            )
        before = self._members
        if not refresh:
            before = before.join(states.select(USER), on=USER, how="semi")
        keys = [USER, "segment"]
        enter = now.join(before, on=keys, how="anti").with_columns(change=pl.lit("enter"))
        leave = before.join(now, on=keys, how="anti").with_columns(change=pl.lit("exit"))
        changes = pl.concat([enter, leave])
        if changes.height == 0:
            return None
        if new is None:
            cause = pl.lit(f"re-evaluated at {format_us(self.watermark)} (decay / window expiry)")
            changes = changes.with_columns(cause=cause)
        else:
            last = (
                new.sort("ts", "event_id")
                .group_by(USER)
                .agg(pl.col("event_id").last(), pl.col("type").last(), pl.col("ts").last())
            )
            changes = changes.join(last, on=USER, how="left").with_columns(
                cause=pl.format("event {} ({}) at {}", "event_id", "type",
                                pl.from_epoch("ts", time_unit="us").dt.strftime(
                                    "%Y-%m-%dT%H:%M:%S%.fZ"))
            )
        return changes.select(
            pl.lit(self.watermark, dtype=pl.Int64).alias("ts"), USER, "segment", "change", "cause"
        ).sort(USER, "segment", "change")

    def _commit_pending(self, checkpoint: Checkpoint | None) -> None:
        pending = self._pending
        pending.checkpoint = checkpoint
        pending.run = self._run
        self.store.commit(pending)
        self._spec_saved = True
        self.last_committed = pending.states
        if pending.segment_changes is not None and self._members is not None:
            ch = pending.segment_changes
            keys = [USER, "segment"]
            gone = ch.filter(pl.col("change") == "exit").select(keys)
            came = ch.filter(pl.col("change") == "enter").select(keys)
            self._members = pl.concat(
                [self._members.join(gone, on=keys, how="anti"), came]
            )
        if pending.states.height and self._states is not None:
            keep = self._overlay.join(pending.states.select(USER), on=USER, how="anti")
            self._overlay = pl.concat([keep, pending.states])
            if self._overlay.height * 4 > self._states.height:
                self._load_states()

    # -- reads -----------------------------------------------------------
    def read_at(self, at: int | None = None, user_ids: list[str] | None = None) -> pl.DataFrame:
        """Feature values (one column per feature) for users, as of ``at``.

        ``at`` defaults to the watermark. Before the watermark, states are
        rebuilt from the event log (exact time travel).
        """
        wm = self.store.meta().watermark
        if wm is None:
            return self.agg.read(self.agg.empty(), 0)
        at = wm if at is None else at
        if at >= wm:
            states = self._load_states() if self._states is not None and user_ids is None else None
            if states is None:
                states = self.store.states(user_ids)
            states = self.agg.conform(states) if states.height else self.agg.empty()
        else:
            log = self.store.events(user_ids, until=at)
            states = self.agg.partial(log) if log.height else self.agg.empty()
            # Every known user has a profile at any time: empty before their
            # first event (the same answer for one user and for all users).
            known = self.store.states(user_ids)
            present = known.select(USER) if known.height else pl.DataFrame(schema={USER: pl.String})
            states = self.agg.conform(present.join(states, on=USER, how="left"))
        return self.agg.read(states, at)

    def segments_frame(self, values: pl.DataFrame) -> pl.DataFrame:
        """``user_id`` + one boolean column per segment."""
        exprs = [to_polars(seg.rule).alias(name) for name, seg in self.spec.segments.items()]
        return values.select(USER, *exprs)

    def _consistent(self, read: Callable[[], T]) -> T:
        """Run ``read`` on one committed state of the store (retry if compaction raced)."""
        for attempt in range(5):
            try:
                with self.store.pinned():
                    return read()
            except FileNotFoundError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def profile(self, user_id: str, at: int | None = None) -> dict[str, Any]:
        """The profile JSON (DESIGN.md contract) of one user as of ``at``."""
        return self._consistent(lambda: self._profile(user_id, at))

    def _profile(self, user_id: str, at: int | None) -> dict[str, Any]:
        wm = self.store.meta().watermark
        if wm is not None and (at is None or at >= wm):  # one state row, read in Python
            states = self.store.states([user_id])
            if states.height == 0:
                raise UnknownUserError(f"unknown user {user_id!r}")
            row = self.agg.conform(states).row(0, named=True)
            return self.profile_of_row(user_id, row, wm if at is None else at)
        values = self.read_at(at, [user_id])
        if values.height == 0:
            raise UnknownUserError(f"unknown user {user_id!r}")
        seg = self.segments_frame(values).row(0, named=True)
        members = [name for name in self.spec.segments if seg[name]]
        as_of = wm if at is None else at
        return profile_json(
            user_id, as_of, dict(self.spec.features), values.row(0, named=True), members
        )

    def profile_of_row(self, user_id: str, row: Mapping[str, Any], at: int) -> dict[str, Any]:
        """The profile JSON from the user's current state row, at ``at >= watermark``.

        Plain Python (``read_row`` and the rule evaluator): no Polars plan, so
        it costs tens of microseconds. Equal to the frame path (property tests).
        """
        values = self.agg.read_row(row, at)
        return profile_json(user_id, at, self.spec.features, values, self.segments_of(values))

    def segments_of(self, values: Mapping[str, Any]) -> list[str]:
        """The segments one user's read values (``read_row``) are in, in spec order."""
        if not self.spec.segments:
            return []
        keyed = self._keyed
        rule_values = {
            name: {kv["key"]: kv["value"] for kv in v} if name in keyed else v
            for name, v in values.items()
        }
        return [name for name, seg in self.spec.segments.items()
                if evaluate(seg.rule, rule_values)]

    def segment_members(self, name: str, at: int | None = None) -> list[str]:
        """Users in segment ``name`` as of ``at`` (sorted)."""
        return self._consistent(lambda: self._segment_members(name, at))

    def check_segment(self, name: str) -> None:
        """:class:`UnknownSegmentError` unless the spec defines segment ``name``."""
        if name not in self.spec.segments:
            known = ", ".join(self.spec.segments) or "none"
            raise UnknownSegmentError(f"unknown segment {name!r} (defined: {known})")

    def _segment_members(self, name: str, at: int | None) -> list[str]:
        self.check_segment(name)
        values = self.read_at(at)
        seg = self.segments_frame(values)
        return sorted(seg.filter(pl.col(name))[USER].to_list())


def retention_cutoff(watermark: int | None, retention: int | None, purged: int | None
                     ) -> int | None:
    """Events before this time are refused: past the retention period, or before the last
    purge (whose events are gone from the log, so a resent copy could not be recognised
    as a duplicate, even after the retention was turned off). None: no limit."""
    limits = [c for c in (purged, None if retention is None or watermark is None
                          else watermark - retention) if c is not None]
    return max(limits) if limits else None


def split_retained(events: pl.DataFrame, source: str, cutoff: int | None
                   ) -> tuple[pl.DataFrame, list[DeadLetter]]:
    """``events`` with ``ts >= cutoff``, and dead letters for the others (line from
    ``_line``; raw is the validated event as JSON)."""
    if cutoff is None or events.height == 0:
        return events, []
    old = events["ts"] < cutoff
    if not old.any():
        return events, []
    why = f"ts: before the retention cutoff {format_us(cutoff)} (raw events are purged)"
    dead = []
    for row in events.filter(old).to_dicts():
        line = int(row.pop(LINE_COLUMN, 0) or 0)
        raw = {k: format_us(v) if k == "ts" else v for k, v in row.items() if v is not None}
        dead.append(DeadLetter(source, line, f"{why}: {raw['ts']}",
                               orjson.dumps(raw).decode(), row["user_id"]))
    return events.filter(~old), dead


def _no_events() -> pl.DataFrame:
    from portrait.events.schema import EVENT_SCHEMA

    return pl.DataFrame(schema=EVENT_SCHEMA)


def _pseudonymised_spec(spec: Spec, one: Callable[[str], str]) -> Spec:
    """``spec`` with the user ids its ``where`` clauses name replaced by their pseudonyms,
    so that the filters match the pseudonymised events the engine folds."""
    features = {}
    for name, f in spec.features.items():
        where = tuple((field, tuple(sorted(one(v) for v in values)) if field == USER else values)
                      for field, values in f.where)
        features[name] = f if where == f.where else dataclasses.replace(f, where=where)
    if all(features[n] is f for n, f in spec.features.items()):
        return spec
    return dataclasses.replace(spec, features=features)


def _spec_key(spec: Spec) -> tuple[Any, ...]:
    """What a spec means, without where it was written (lines, comments)."""
    feats = tuple((n, dataclasses.replace(f, line=0)) for n, f in spec.features.items())
    segs = tuple((n, s.text) for n, s in spec.segments.items())
    return feats, segs
