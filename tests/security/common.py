"""Shared pieces of the security tests: hypothesis settings, a live server, a time bound.

``PORTRAIT_NO_SHRINK=1`` skips shrinking (as in ``tests/test_properties.py``): a
failure is reported as first found. ``PORTRAIT_FUZZ_SCALE=N`` runs N times the
examples of every fuzz test here (a longer hunt than CI's).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, settings
from tests.serve.harness import SPEC, free_port, start_in_thread

from portrait.serve import ServeSettings
from portrait.serve.keys import KeyStore

T = TypeVar("T")
# Generous on purpose: a linear pass over the inputs used here takes well under a
# second; a quadratic one, or a recursion per nesting level, takes far longer or fails.
BOUND_S = 10.0
PROBLEM = "application/problem+json"


def fuzz(max_examples: int) -> settings:
    """Hypothesis settings of this package: no deadline, no shrinking on request."""
    no_shrink = bool(os.environ.get("PORTRAIT_NO_SHRINK"))
    scale = int(os.environ.get("PORTRAIT_FUZZ_SCALE", "1"))
    return settings(
        max_examples=max_examples * scale,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.function_scoped_fixture],
        phases=[p for p in Phase if not (no_shrink and p == Phase.shrink)],
    )


def bounded(call: Callable[[], T], *, limit_s: float = BOUND_S) -> T:
    """``call()``, asserting it took less than ``limit_s`` seconds."""
    started = time.perf_counter()
    out = call()
    took = time.perf_counter() - started
    assert took < limit_s, f"took {took:.1f} s (bound {limit_s} s)"
    return out


@dataclass
class Live:
    """A server run by uvicorn in a thread of this process, over a new database."""

    url: str
    db: Path
    admin: str
    read: str
    ingest: str


@contextlib.contextmanager
def live_server(db: Path, **options: Any) -> Iterator[Live]:
    """``create_app`` over a new database at ``db`` (the reference spec) until the block ends."""
    keys = KeyStore(db)
    admin, _ = keys.create(("admin",))
    read, _ = keys.create(("read",))
    ingest, _ = keys.create(("ingest",))
    port = free_port()
    server, thread = start_in_thread(ServeSettings(db=db, spec=SPEC, port=port, **options))
    try:
        yield Live(f"http://127.0.0.1:{port}", db, admin, read, ingest)
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive()
