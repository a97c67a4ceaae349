"""Fixtures of the API tests: a real server (``portrait serve`` on a free loopback port).

The database is seeded once per session with the shop sample (46 users,
~3,000 events, a few bad records) and trained models, so every endpoint has
something to show. Tests that post events use user ids of their own, so the
order of the tests does not matter.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.serve.harness import Served, seed, serving

from portrait.client import Client
from portrait.engine import Engine
from portrait.store import open_store


@pytest.fixture(scope="session")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded database with trained models, copied by each server that needs one."""
    db = tmp_path_factory.mktemp("seeded") / "db"
    seed(db)
    return db


@pytest.fixture(scope="session")
def served(seeded: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(seeded, tmp_path_factory.mktemp("serve")) as server:
        yield server


@pytest.fixture
def api(served: Served) -> Iterator[Client]:
    with Client(served.url, served.admin) as client:
        yield client


@pytest.fixture
def engine(served: Served) -> Iterator[Engine]:
    """A read-only engine of the served database, in this process."""
    with open_store(served.db) as store:
        yield Engine(None, store)


