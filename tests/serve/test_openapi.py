"""docs/openapi.json is the app's current OpenAPI document.

Regenerate it with ``python -m portrait.serve > docs/openapi.json``.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from portrait.client import Client
from portrait.serve import openapi_document

COMMITTED = Path(__file__).parents[2] / "docs" / "openapi.json"


def test_committed_spec_is_current() -> None:
    committed = orjson.loads(COMMITTED.read_bytes())
    assert committed == openapi_document(), (
        "docs/openapi.json is stale: run `python -m portrait.serve > docs/openapi.json`"
    )


def test_served_spec_is_the_committed_one(api: Client) -> None:
    assert api.openapi() == orjson.loads(COMMITTED.read_bytes())


def test_every_route_documents_its_problems() -> None:
    doc = openapi_document()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path in ("/healthz", "/metrics"):
                continue
            assert "4XX" in op["responses"], f"{method} {path}"
            assert "security" in op, f"{method} {path} is not behind a key"
    assert "Problem" in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
