"""The store protocol: what the engine needs from any back-end.

A store holds, per database:

* the **event log**: every accepted event, for replay, time travel, backfill
  and erasure (everything about a user is found by ``user_id``);
* the **profile state**: one row per user (the frame of
  :class:`~portrait.features.ProfileAggregator`), always the merge of all
  logged events of that user, pruned at the watermark;
* the **de-duplication set**: the ``event_id`` of every logged event;
* **dead letters**: rejected records, raw, with source, line and reason;
* **checkpoints**: per source file, how far an ingest got, with its counts;
* **meta**: the spec text, the watermark, running totals;
* **segment memberships** and their **change log**: every entry into and exit
  from a rule segment, with its time and cause, written in the same
  transaction as the batch that caused it.

``commit`` applies one micro-batch atomically: after a crash at any point,
a reader sees either all of a batch or none of it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import polars as pl

from portrait.events.schema import DeadLetter

if TYPE_CHECKING:
    from portrait.privacy.pseudonym import Pseudonymizer


@dataclass(frozen=True)
class Checkpoint:
    """Progress of one source file (identified by content fingerprint)."""

    fingerprint: str
    path: str
    rows_done: int
    accepted: int
    rejected: int
    duplicates: int
    complete: bool


@dataclass(frozen=True)
class StoreMeta:
    spec_text: str | None
    watermark: int | None
    accepted: int
    rejected: int
    duplicates: int
    users: int


@dataclass
class Commit:
    """One micro-batch to apply atomically."""

    events: pl.DataFrame  # new, de-duplicated events (EVENT_SCHEMA columns)
    states: pl.DataFrame  # full new state rows of every user the batch touched
    dead_letters: list[DeadLetter] = field(default_factory=list)
    watermark: int | None = None
    checkpoint: Checkpoint | None = None
    duplicates: int = 0
    new_users: int = 0
    run: tuple[str, bool] | None = None  # (run key, finished) of the ingest command
    spec_text: str | None = None
    # Rule-segment entries and exits of this batch (CHANGE columns but ``seq``).
    segment_changes: pl.DataFrame | None = None
    # Consent decisions of this batch (privacy/consent.py CONSENT_SCHEMA); latest wins.
    consents: pl.DataFrame | None = None
    # Stored (pseudonymous) id -> raw id of this batch's users: an encrypted store
    # keeps them in its keyring so its pseudonyms can be re-keyed (others ignore them).
    identities: dict[str, str] | None = None


MEMBERSHIP_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(), "segment": pl.String(), "since": pl.Int64(),
}
CHANGE_SCHEMA: dict[str, pl.DataType] = {
    "seq": pl.Int64(), "ts": pl.Int64(), "user_id": pl.String(), "segment": pl.String(),
    "change": pl.String(), "cause": pl.String(),
}


class Store(Protocol):
    """What the engine needs from a back-end. Implementations: ``EmbeddedStore``."""

    # The key user ids are stored under, or None when they are stored raw
    # (privacy/pseudonym.py): the engine pseudonymises each batch with it.
    pseudo: Pseudonymizer | None

    def set_personal_attrs(self, names: tuple[str, ...]) -> None:
        """The spec's ``privacy.personal_attrs``: the ``attrs`` keys an encrypting store
        seals from now on (a no-op for a store that does not encrypt)."""
        ...

    def meta(self) -> StoreMeta: ...

    def set_spec(self, spec_text: str) -> None: ...

    def commit(self, commit: Commit) -> None: ...

    def states(self, user_ids: list[str] | None = None) -> pl.DataFrame:
        """Current state rows (all users when ``user_ids`` is None)."""
        ...

    def has_user(self, user_id: str) -> bool: ...

    def events(self, user_ids: list[str] | None = None, until: int | None = None, *,
               personal: bool = True) -> pl.DataFrame:
        """Logged events (of ``user_ids``; with ``ts <= until``); ``personal=False`` when
        the caller reads no personal field (an encrypted store may leave them null)."""
        ...

    def seen(self, event_ids: pl.Series) -> pl.Series:
        """Boolean mask: which of ``event_ids`` are already logged."""
        ...

    def dead_letters(self, limit: int | None = None) -> list[dict[str, object]]: ...

    def checkpoint(self, fingerprint: str) -> Checkpoint | None: ...

    def run_finished(self, run_key: str) -> bool | None:
        """Whether the ingest command ``run_key`` finished (None: never seen)."""
        ...

    def memberships(self) -> pl.DataFrame:
        """Current rule-segment memberships (``MEMBERSHIP_SCHEMA``)."""
        ...

    def withdrawn(self, purpose: str) -> set[str]:
        """Stored ids of the users whose latest decision for ``purpose`` is a withdrawal."""
        ...

    def consents(self, user_id: str) -> dict[str, bool]:
        """``purpose -> granted`` of one user's latest decisions (absent: never decided)."""
        ...

    def resolve(self, user_id: str) -> str:
        """The id stored for a raw ``user_id`` (its pseudonym when the store keeps those;
        see ``privacy/pseudonym.py``). Every lookup here resolves its ids itself."""
        ...

    def retention(self) -> tuple[int | None, int | None]:
        """(configured retention in µs or None, latest purge cutoff or None)."""
        ...

    def set_retention(self, retention_us: int | None) -> None: ...

    def purge_before(self, cutoff: int) -> dict[str, int]:
        """Delete logged events with ``ts < cutoff``; states stay (retention)."""
        ...

    def forget(self, user_id: str) -> dict[str, int]:
        """Erase every row of ``user_id`` (events, state, dead letters, memberships,
        segment changes); returns counts by kind (see ``EmbeddedStore.forget``)."""
        ...

    def segment_changes(
        self, user_id: str | None = None, segment: str | None = None, *, after: int = 0,
        limit: int | None = None,
    ) -> pl.DataFrame:
        """The segment change log (``CHANGE_SCHEMA``), oldest first, ``seq > after``."""
        ...

    def pinned(self) -> contextlib.AbstractContextManager[None]:
        """Reads inside see one committed state of the store."""
        ...

    def close(self) -> None: ...
