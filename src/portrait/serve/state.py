"""What one running server holds: settings, keys, the writer (micro-batcher), readers, metrics.

``open()`` (at startup) takes the database's single writer lock, stores the
spec of a new database at once (so readers can open it before the first
event), and starts the writer thread; ``close()`` (at shutdown) commits what
is still queued and releases the lock.
"""

from __future__ import annotations

import sys
from pathlib import Path

from starlette.requests import HTTPConnection

from portrait.engine.engine import Engine
from portrait.errors import StoreError
from portrait.privacy.audit import AuditLog
from portrait.privacy.dp import Ledger
from portrait.serve.batcher import MicroBatcher
from portrait.serve.keys import ApiKey, KeyStore
from portrait.serve.live import Live
from portrait.serve.metrics import Metrics
from portrait.serve.readers import Readers
from portrait.serve.settings import ServeSettings
from portrait.spec.model import Spec

SWITCH_INTERVAL_S = 0.0005


class ServerState:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.keys = KeyStore(settings.db)
        self.readers = Readers(settings.db, profile_cache=settings.profile_cache,
                               catalog_ttl_s=settings.catalog_ttl_s)
        self.live = Live(cache=settings.profile_cache)
        self.audit: AuditLog | None = None  # opened with the writer (the directory exists)
        self.ledger = Ledger(settings.db, budget=settings.dp_budget, epsilon=settings.dp_epsilon)
        self.batcher: MicroBatcher | None = None
        self.metrics = Metrics(lambda: float(self.batcher.queued if self.batcher else 0))

    def open(self) -> None:
        # The writer thread runs hundreds of short Polars calls per commit, each
        # releasing and re-taking the GIL; with the default 5 ms switch interval
        # a busy request thread makes it wait up to 5 ms per call. 0.5 ms keeps
        # commits (and so freshness) fast under read load (bench/serve.py).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        spec = None
        if self.settings.spec is not None:
            from portrait.spec.loader import load_spec

            spec = load_spec(self.settings.spec)
        db = self.settings.db
        if spec is None and not (db / "portrait.sqlite").exists():
            raise StoreError(f"{str(db)!r} is a new database: pass --spec to serve it")
        self.batcher = MicroBatcher(
            lambda: _writer_engine(db, spec, pseudonymise=self.settings.pseudonymise,
                                   encrypt=self.settings.encrypt),
            flush_events=self.settings.flush_events,
            flush_ms=self.settings.flush_ms, max_queued=self.settings.max_queued_events,
            on_commit=self.metrics.on_commit, publish=self.live.publish,
            refresh_idle_s=self.settings.segment_refresh_s,
        )
        self.batcher.start()
        self.audit = AuditLog(self.settings.db, buffered=True)
        _warm_imports()
        wm = self.readers.read(lambda e: e.store.meta().watermark)
        if wm is not None:
            self.metrics.watermark.set(wm / 1e6)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
        if self.audit is not None:
            self.audit.close()

    def record(self, key: ApiKey, action: str, user_id: str | None = None,
               detail: str | None = None) -> None:
        """An audit row (privacy/audit.py): who read, exported or erased whose data."""
        if self.audit is None:
            return
        stored = None
        if user_id is not None and self.batcher is not None:
            stored = self.batcher.engine.store.resolve(user_id)  # pure: no database access
        self.audit.record(key.key_id, action, stored, detail)

    def masked_features(self, key: ApiKey) -> frozenset[str]:
        """The spec's ``privacy.personal_features`` that ``key`` may not see (all but admin)."""
        if "admin" in key.scopes or self.batcher is None:
            return frozenset()
        return frozenset(self.batcher.engine.spec.personal_features)

    def writer(self) -> MicroBatcher:
        if self.batcher is None:
            raise StoreError("the server has not started its writer")
        return self.batcher


def _warm_imports() -> None:
    """Import the model libraries now, not in the first request that needs them (~2 s)."""
    import portrait.audience
    import portrait.models.drift
    import portrait.models.explain
    import portrait.models.service  # noqa: F401


def _writer_engine(db: Path, spec: Spec | None, *, pseudonymise: bool = False,
                   encrypt: bool = False) -> Engine:
    """The writer's engine; a new database gets its spec at once, so readers can open it."""
    from portrait.store import open_store

    store = open_store(db, writer=True)
    store.start_background_compaction()  # a commit (and its requests) never waits for a merge
    try:
        if pseudonymise or encrypt:
            from portrait.privacy.setup import protect

            protect(store, pseudonymise=pseudonymise, encrypt=encrypt)
        if spec is not None and store.meta().spec_text is None:
            store.set_spec(spec.text)
        return Engine(spec, store)
    except BaseException:
        store.close()
        raise


def server(conn: HTTPConnection) -> ServerState:
    """The state of the app serving ``conn``."""
    st = conn.app.state.portrait
    assert isinstance(st, ServerState)
    return st
