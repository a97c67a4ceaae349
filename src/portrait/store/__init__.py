"""Stores: the event log, profile state, dead letters and checkpoints.

``open_store(path)`` gives the embedded default (SQLite + Parquet on local
disk). Server back-ends implement the same :class:`~portrait.store.base.Store`
protocol and run the same contract tests (``tests/store/``).
"""

from portrait.store.base import Checkpoint, Commit, Store, StoreMeta
from portrait.store.embedded import EmbeddedStore, open_store

__all__ = ["Checkpoint", "Commit", "EmbeddedStore", "Store", "StoreMeta", "open_store"]
