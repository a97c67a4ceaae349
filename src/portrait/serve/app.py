"""The FastAPI application: routes, one error model, metrics, and the writer's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

import portrait
from portrait.serve import dashboard, ingest, ops, population, problems, profiles, users
from portrait.serve.metrics import LatencyMiddleware
from portrait.serve.settings import ServeSettings
from portrait.serve.state import ServerState

DESCRIPTION = """Dynamic user profiles over HTTP: post events as they happen, read profiles,
their history, segments, recommendations, audiences and drift.

Every request but `/healthz`, `/metrics` and this document needs an `X-API-Key` header
(scopes: `ingest`, `read`, `admin`). Errors are RFC 7807 problem details
(`application/problem+json`). See docs/api.md."""


def create_app(settings: ServeSettings) -> FastAPI:
    """The app for one database; the writer starts with the app (lifespan) and stops with it."""
    state = ServerState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(state.open)
        try:
            yield
        finally:
            await run_in_threadpool(state.close)

    app = FastAPI(title="portrait", version=portrait.__version__, description=DESCRIPTION,
                  lifespan=lifespan, generate_unique_id_function=lambda route: route.name,
                  docs_url=None, redoc_url=None)  # their pages load scripts from a CDN
    app.state.portrait = state
    for module in (ingest, profiles, population, users, ops):
        app.include_router(module.router)
    dashboard.mount_dashboard(app, settings.report_dir)
    problems.install(app)
    app.add_middleware(LatencyMiddleware, metrics=state.metrics)
    app.add_middleware(problems.CatchAll)  # outside the timing: a 500 is timed too
    _document(app, [problems.Problem, *ingest.BODY_MODELS])
    return app


def _document(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Add schemas that routes reference by hand (the problem, the event bodies)."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = base()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                found = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(found.pop("$defs", {}))
                schemas[model.__name__] = found
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
