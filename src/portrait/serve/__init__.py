"""The HTTP API (``portrait serve``): FastAPI + uvicorn over one embedded database.

Modules: ``app`` (the application), ``ingest`` / ``profiles`` / ``population`` /
``ops`` (routes), ``batcher`` (the writer thread), ``readers`` + ``queries``
(the read side), ``keys`` + ``auth`` (API keys), ``problems`` (the error
model), ``metrics`` (Prometheus). The endpoints, auth and error model are
described in docs/api.md.
"""

from __future__ import annotations

from portrait.serve.app import create_app
from portrait.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "openapi_document", "run"]


def run(settings: ServeSettings, *, access_log: bool = False) -> None:
    """Serve until interrupted (uvicorn, one process: the writer lock allows no more)."""
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                access_log=access_log, log_level="info")


def openapi_document() -> dict[str, object]:
    """The OpenAPI document of the app (what ``/openapi.json`` serves; docs/openapi.json)."""
    from pathlib import Path

    return create_app(ServeSettings(db=Path("portrait-data"))).openapi()
