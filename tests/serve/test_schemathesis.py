"""Property-based API tests from /openapi.json (schemathesis), against a real server.

Every operation gets a few generated requests, valid (positive) and invalid
(negative), sent with an admin key; operations with a user, segment or
feature in their path also get valid requests for one that exists, to reach
past the 404. No response may be a 500, and each must match its
documented status codes, content type and schema. Bounded: a few examples
per operation and mode, no shrinking. The server has its own copy of the
seeded database, as generated events (with any timestamps) change it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
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
from tests.serve.harness import Served, serving

MAX_EXAMPLES = 5
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
KNOWN = {"user_id": "u001", "name": "big_spender"}  # in the seeded database
KNOWN_FEATURE = {"name": "spend_total"}  # for /v1/features/{name}/...


@pytest.fixture(scope="module")
def fuzzed(seeded: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(seeded, tmp_path_factory.mktemp("fuzz")) as server:
        yield server


def _variants(operation: Any) -> list[tuple[GenerationMode, dict[str, str] | None]]:
    names = {p.name for p in operation.path_parameters}
    has_input = bool(names or operation.query or operation.body)
    out: list[tuple[GenerationMode, dict[str, str] | None]] = [(GenerationMode.POSITIVE, None)]
    if has_input:
        out.append((GenerationMode.NEGATIVE, None))
    known = {**KNOWN, **KNOWN_FEATURE} if "/features/" in operation.path else KNOWN
    if names and names <= set(known) and "/exports/" not in operation.path:
        out.append((GenerationMode.POSITIVE, {n: known[n] for n in names}))
    return out


def _check(operation: Any, mode: GenerationMode, path: dict[str, str] | None, key: str) -> None:
    @given(case=operation.as_strategy(mode, path_parameters=path))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        case.call_and_validate(headers={"X-API-Key": key}, checks=CHECKS, timeout=30)

    run()


def test_api_conforms(fuzzed: Served) -> None:
    # Driven by hand: schemathesis' lazy pytest loader does not run under pytest 9.
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 15
    for operation in operations:
        for mode, path in _variants(operation):
            _check(operation, mode, path, fuzzed.admin)
