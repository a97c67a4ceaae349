"""``X-API-Key`` checks as FastAPI dependencies: ``Depends(require("read"))``.

No key or an unknown key -> 401; a key without the scope -> 403 (both as
problem details). ``/healthz``, ``/metrics`` and the OpenAPI document need no
key (the server listens on loopback by default).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from portrait.serve.keys import ApiKey
from portrait.serve.state import server

HEADER = "X-API-Key"
api_key_header = APIKeyHeader(name=HEADER, auto_error=False,
                              description="an API key made by `portrait keys create`")


def require(scope: str) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency that admits keys with ``scope`` (or ``admin``)."""

    async def check(request: Request,
                    key: Annotated[str | None, Security(api_key_header)] = None) -> ApiKey:
        return server(request).keys.authorize(key, scope)

    check.__name__ = f"require_{scope}"
    return check


Ingest = Annotated[ApiKey, Depends(require("ingest"))]
Read = Annotated[ApiKey, Depends(require("read"))]
# Aggregates: keys with read (exact answers) or only read_aggregate (differentially private)
Aggregate = Annotated[ApiKey, Depends(require("read_aggregate"))]
Admin = Annotated[ApiKey, Depends(require("admin"))]
