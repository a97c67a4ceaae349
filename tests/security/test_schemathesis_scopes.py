"""Schemathesis over every API operation with every kind of key, not only admin.

``tests/serve/test_schemathesis.py`` drives the API with an admin key. Here each
operation gets generated valid requests with no key, and with ``read``,
``ingest`` and ``read_aggregate`` keys: never a 500, every answer matches the
document, and the scopes hold everywhere: no key is 401 (except ``/healthz``
and ``/metrics``), a key without the operation's scope is 403, a key with it
is neither.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.security.common import Live, live_server

from portrait.serve.keys import KeyStore

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
OPEN = {("GET", "/healthz"), ("GET", "/metrics")}
NEEDS = {("POST", "/v1/events"): "ingest", ("DELETE", "/v1/users/{user_id}"): "admin",
         ("GET", "/v1/segments"): "read_aggregate", ("POST", "/v1/audiences"): "read_aggregate",
         ("GET", "/v1/features/{name}/distribution"): "read_aggregate"}
ADMITS = {"read": {"read", "read_aggregate"}, "ingest": {"ingest"},
          "read_aggregate": {"read_aggregate"}}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_server(tmp_path_factory.mktemp("scopes") / "db", flush_ms=1.0) as server:
        yield server


def _expect(scope: str | None, method: str, path: str, status: int, case: Any) -> None:
    need = None if (method, path) in OPEN else NEEDS.get((method, path), "read")
    where = f"{method} {path} with {scope or 'no'} key: {status}"
    if need is None:
        assert status not in (401, 403), where
    elif scope is None:
        assert status == 401, where
    elif need not in ADMITS[scope]:
        assert status == 403, where
    elif scope == "read_aggregate" and path == "/v1/audiences" and (case.body or {}).get(
            "export") is not None:
        assert status == 403, where  # an export lists users: needs read
    else:
        assert status not in (401, 403), where


def _check(operation: Any, scope: str | None, key: str | None,
           seen: set[tuple[str, int]]) -> None:
    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    @settings(max_examples=3, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        headers = {} if key is None else {"X-API-Key": key}
        response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
        _expect(scope, operation.method.upper(), operation.path, response.status_code, case)
        seen.add((str(scope), response.status_code))

    run()


def test_every_operation_with_every_scope(live: Live) -> None:
    aggregate, _ = KeyStore(live.db).create(("read_aggregate",))
    keys: dict[str | None, str | None] = {None: None, "read": live.read, "ingest": live.ingest,
                                          "read_aggregate": aggregate}
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 15
    seen: set[tuple[str, int]] = set()
    for operation in operations:
        for scope, key in keys.items():
            _check(operation, scope, key, seen)
    # every kind of answer was seen: refusals and successes, for each kind of key
    assert {("None", 401), ("read", 403), ("ingest", 403), ("read_aggregate", 403)} <= seen
    assert {("read", 200), ("ingest", 200), ("read_aggregate", 200)} <= seen
