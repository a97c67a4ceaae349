"""A Python client for the portrait HTTP API (``portrait serve``; docs/api.md).

>>> from portrait.client import Client                      # doctest: +SKIP
>>> with Client("http://127.0.0.1:8000", api_key) as api:   # doctest: +SKIP
...     api.ingest([{"user_id": "u1", "ts": "2024-03-01T10:00:00Z", "type": "view"}])
...     api.profile("u1")["features"]["events_total"]

A problem response raises the project's own error class, the one the server
named (``UnknownUserError``, ``AuthenticationError``, ...), with the HTTP
``status`` and the whole ``problem`` body as attributes; an unnamed one falls
back to a class chosen by status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from portrait import errors
from portrait.errors import PortraitError

Time = str | int | float | datetime
_BY_STATUS: dict[int, type[PortraitError]] = {
    400: errors.BadRequestError,
    401: errors.AuthenticationError,
    403: errors.PermissionDeniedError,
    404: errors.NotFoundError,
    409: errors.ModelNotReadyError,
    413: errors.PayloadTooLargeError,
    422: errors.UnprocessableRequestError,
    503: errors.UnavailableError,
}


def error_from(response: httpx.Response) -> PortraitError:
    """The exception for a problem response (never raises itself)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"status": response.status_code, "detail": response.text[:500] or "no detail"}
    found = getattr(errors, str(body.get("error", "")), None)
    if not (isinstance(found, type) and issubclass(found, PortraitError)):
        status = response.status_code
        found = _BY_STATUS.get(status, errors.BadRequestError if status < 500 else PortraitError)
    exc = found.__new__(found)  # skip subclass __init__s (SpecError's source/line)
    detail = body.get("detail") or f"HTTP {response.status_code}: {response.text[:500]}"
    Exception.__init__(exc, str(detail))
    exc.status = response.status_code  # type: ignore[attr-defined]
    exc.problem = body  # type: ignore[attr-defined]
    return exc


def _time(value: Time | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise errors.UsageError(f"naive datetime {value!r}: give it a timezone")
        return value.isoformat()
    return str(value)


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class Client:
    """One API (``base_url``) with one API key; a context manager (closes its connections)."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"X-API-Key": api_key} if api_key is not None else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                  timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise error_from(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._call(method, path, **kwargs).json()

    # -- ingest -------------------------------------------------------------
    def ingest(self, events: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
               wait: bool = True) -> dict[str, Any]:
        """Post one event or a list (<= 10,000); per-event results.

        ``wait=False`` returns once the events are queued (``async=1``): not
        yet durable nor visible (docs/api.md, "sync or async").
        """
        body = dict(events) if isinstance(events, Mapping) else {"events": list(events)}
        params = {"async": "1"} if not wait else None
        result: dict[str, Any] = self._json("POST", "/v1/events", json=body, params=params)
        return result

    # -- one user -----------------------------------------------------------
    def profile(self, user_id: str, *, at: Time | None = None,
                explain: str | None = None) -> dict[str, Any]:
        """The profile now or as of ``at``; ``explain`` adds the events behind a value."""
        params = _params(at=_time(at), explain=explain)
        result: dict[str, Any] = self._json("GET", f"/v1/profiles/{quote(user_id, safe='')}",
                                            params=params)
        return result

    def history(self, user_id: str, *, features: Sequence[str] = (),
                points: int = 20) -> dict[str, Any]:
        """Feature values at ``points`` times from the user's first event to now."""
        params: dict[str, Any] = {"points": points}
        if features:
            params["feature"] = list(features)
        result: dict[str, Any] = self._json(
            "GET", f"/v1/profiles/{quote(user_id, safe='')}/history", params=params)
        return result

    def events(self, user_id: str, *, limit: int = 50) -> dict[str, Any]:
        """The user's ``limit`` most recent logged events, newest first."""
        result: dict[str, Any] = self._json(
            "GET", f"/v1/profiles/{quote(user_id, safe='')}/events", params={"limit": limit})
        return result

    def recommendations(self, user_id: str, *, k: int = 20,
                        diversity: float = 0.0) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "GET", f"/v1/recommendations/{quote(user_id, safe='')}",
            params={"k": k, "diversity": diversity})
        return result

    # -- population ---------------------------------------------------------
    def segments(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/v1/segments")
        return result

    def members(self, segment: str, *, offset: int = 0, limit: int = 100,
                at: Time | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "GET", f"/v1/segments/{quote(segment, safe='')}/members",
            params=_params(offset=offset, limit=limit, at=_time(at)))
        return result

    def segment_changes(self, segment: str, *, user: str | None = None, after: int = 0,
                        limit: int = 1000) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "GET", f"/v1/segments/{quote(segment, safe='')}/changes",
            params=_params(user=user, after=after, limit=limit))
        return result

    def audience(self, query: str, *, export: str | None = None,
                 at: Time | None = None) -> dict[str, Any]:
        """Count an audience; ``export="csv"|"parquet"`` also writes it on the server."""
        body = _params(query=query, export=export, at=_time(at))
        result: dict[str, Any] = self._json("POST", "/v1/audiences", json=body)
        return result

    def download(self, url: str, dest: str | Path) -> Path:
        """Save an export (the ``url`` of :meth:`audience`'s ``export``) to ``dest``."""
        path = Path(dest)
        with self._http.stream("GET", url) as response:
            if response.status_code >= 400:
                response.read()
                raise error_from(response)
            with path.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        return path

    def drift(self, *, ref: Time | None = None, at: Time | None = None,
              top: int = 10) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "GET", "/v1/drift", params=_params(ref=_time(ref), at=_time(at), top=top))
        return result

    def distribution(self, name: str, *, bins: int = 20) -> dict[str, Any]:
        """The population's histogram and quantiles of one numeric feature (the watermark)."""
        result: dict[str, Any] = self._json(
            "GET", f"/v1/features/{quote(name, safe='')}/distribution", params={"bins": bins})
        return result

    # -- operations ---------------------------------------------------------
    def forget(self, user_id: str) -> dict[str, Any]:
        """``DELETE /v1/users/{user_id}`` (admin): erase a user; returns the receipt."""
        result: dict[str, Any] = self._json("DELETE", f"/v1/users/{quote(user_id, safe='')}")
        return result

    def health(self) -> dict[str, Any]:
        """``/healthz`` (a stopped writer raises UnavailableError)."""
        result: dict[str, Any] = self._json("GET", "/healthz")
        return result

    def metrics(self) -> str:
        return self._call("GET", "/metrics").text

    def openapi(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/openapi.json")
        return result
