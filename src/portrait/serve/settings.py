"""Typed settings of the HTTP server (``portrait serve``).

Defaults suit one machine: a writer that flushes after 5 ms or 20,000 events,
bodies up to 32 MiB (10,000 events of ~3 KiB), and a cap on events queued
but not yet committed so a burst cannot exhaust memory (past it, 503).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

MAX_BATCH_EVENTS = 10_000


class ServeSettings(BaseModel):
    """What a server needs; ``extra="forbid"`` so a misspelt option fails."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    db: Path
    spec: Path | None = None  # only for a new database
    pseudonymise: bool = False  # a new database stores user ids as keyed pseudonyms
    encrypt: bool = False  # a new database encrypts personal fields (privacy/crypto.py)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    flush_events: int = Field(default=20_000, ge=1)  # flush a micro-batch at this many events
    flush_ms: float = Field(default=5.0, ge=0.0)  # ... or this long after its first event arrived
    # idle this long: decay/window exits, retention. The pass reads every user, so it
    # waits for a real lull: a commit arriving meanwhile waits for it (bench/serve.py)
    segment_refresh_s: float = Field(default=5.0, gt=0.0)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_batch_events: int = Field(default=MAX_BATCH_EVENTS, ge=1)
    max_queued_events: int = Field(default=1_000_000, ge=1)
    catalog_ttl_s: float = Field(default=10.0, ge=0.0)  # recommendation popularity refresh
    profile_cache: int = Field(default=10_000, ge=0)  # profile answers kept (LRU)
    dp_epsilon: float = Field(default=0.5, gt=0.0)  # per aggregate answer, read_aggregate keys
    dp_budget: float = Field(default=10.0, gt=0.0)  # total epsilon per read_aggregate key
    report_dir: Path | None = None  # evaluation reports for the dashboard (else $PORTRAIT_REPORT)
