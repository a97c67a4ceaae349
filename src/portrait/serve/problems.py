"""The one error model of the API: RFC 7807 problem details, mapped here only.

Every error response is ``application/problem+json``::

    {"type": "urn:portrait:problem:unknown-user", "title": "Not Found",
     "status": 404, "detail": "unknown user 'u9'", "instance": "/v1/profiles/u9",
     "error": "UnknownUserError"}

``status`` comes from the :class:`~portrait.errors.PortraitError` hierarchy
(``http_status``), ``error`` names the class (the Python client raises the
same class again). Request validation failures (query/path parameters) are
422 with ``errors`` listing each one; an unknown route is 404 and a wrong
method 405. Anything else is a bug: 500 with no internals in the body (the
traceback goes to the server log).
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as StarletteRequest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portrait.errors import (
    BadRequestError,
    NotFoundError,
    PortraitError,
    UnavailableError,
    UnprocessableRequestError,
)

PROBLEM_MEDIA = "application/problem+json"
log = logging.getLogger("portrait.serve")


class Problem(BaseModel):
    """RFC 7807 problem details (+ ``error``: the portrait error class)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    error: str
    errors: list[dict[str, Any]] | None = None


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {
        "description": text,
        "content": {PROBLEM_MEDIA: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for code, text in (("4XX", "Problem (client error)"), ("5XX", "Problem (server error)"))
}


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA


def _slug(name: str) -> str:
    base = name.removesuffix("Error") or name
    return re.sub(r"(?<!^)(?=[A-Z])", "-", base).lower()


def problem(status: int, error: str, detail: str, instance: str | None = None,
            errors: list[dict[str, Any]] | None = None) -> Problem:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return Problem(type=f"urn:portrait:problem:{_slug(error)}", title=title, status=status,
                   detail=detail, instance=instance, error=error, errors=errors)


def problem_of(exc: BaseException, instance: str | None = None) -> Problem:
    """The problem for any exception: the single mapping of the API."""
    if isinstance(exc, PortraitError):
        return problem(exc.http_status, type(exc).__name__, str(exc), instance)
    if isinstance(exc, RequestValidationError):
        errors = [_validation_item(e) for e in exc.errors()]
        detail = "; ".join(f"{e['where']}: {e['message']}" for e in errors) or "invalid request"
        return problem(422, UnprocessableRequestError.__name__, detail, instance, errors)
    if isinstance(exc, StarletteHTTPException):
        return _http_problem(exc, instance)
    return problem(500, "InternalError", "internal server error (see the server log)", instance)


def _http_problem(exc: StarletteHTTPException, instance: str | None) -> Problem:
    code = exc.status_code
    if code == 404:
        return problem(404, NotFoundError.__name__, f"no such route: {instance}", instance)
    if code == 405:
        return problem(405, BadRequestError.__name__, "method not allowed for this route",
                       instance)
    if code == 503:
        return problem(503, UnavailableError.__name__, str(exc.detail), instance)
    error = BadRequestError.__name__ if 400 <= code < 500 else "InternalError"
    return problem(code, error, str(exc.detail), instance)


def _validation_item(err: Any) -> dict[str, Any]:
    loc = [str(p) for p in err.get("loc", ())]
    where = f"{loc[0]} parameter {'.'.join(loc[1:])!r}" if len(loc) > 1 else ".".join(loc)
    return {"where": where, "message": str(err.get("msg", "invalid")),
            "type": str(err.get("type", "invalid"))}


def respond(exc: BaseException, request: Request) -> ProblemResponse:
    body = problem_of(exc, request.url.path)
    if body.status >= 500:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    headers = {"Retry-After": "1"} if body.status == 503 else None
    if body.status == 401:
        headers = {"WWW-Authenticate": 'ApiKey header="X-API-Key"'}
    return ProblemResponse(body.model_dump(exclude_none=True), status_code=body.status,
                           headers=headers)


def install(app: FastAPI) -> None:
    """Route every error of ``app`` through :func:`problem_of`."""

    async def handler(request: Request, exc: Exception) -> ProblemResponse:
        return respond(exc, request)

    for cls in (PortraitError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(cls, handler)


class CatchAll:
    """Pure ASGI middleware: an unexpected exception becomes a 500 problem *here*.

    Starlette's own last-resort handler answers too, but then re-raises, and
    the server drops the connection; here the exception ends with the answer
    (and the traceback in the log), so the client's connection stays usable.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:
                raise
            await respond(exc, StarletteRequest(scope))(scope, receive, send)
