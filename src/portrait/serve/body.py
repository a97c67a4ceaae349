"""Event bodies of ``POST /v1/events``: size limits, JSON, shape, then the shared validation.

A body is one event object or ``{"events": [...]}``. Whole-request problems
(too large, not JSON, wrong shape) are errors of the request (413 / 400 /
422); a bad *event* inside a good request is not: it is rejected on its own
with the reason naming the field, exactly as a bad line of a file is
(:func:`portrait.events.validate.validate_records`), and goes to the dead
letters with source ``"api"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import orjson
import polars as pl
from starlette.requests import Request

from portrait.errors import BadRequestError, PayloadTooLargeError, UnprocessableRequestError
from portrait.events.schema import DeadLetter
from portrait.events.staging import json_type
from portrait.events.validate import derive_event_ids, validate_records

SOURCE = "api"


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes before reading them when it can."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {int(declared):,} bytes is over the "
                                   f"limit of {limit:,} bytes; split the batch")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is over the limit of {limit:,} bytes; "
                                       "split the batch")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_records(raw: bytes, max_events: int) -> list[object]:
    """The posted events as decoded JSON values (each checked later, one by one)."""
    if not raw.strip():
        raise BadRequestError("empty request body: send one event object or "
                              '{"events": [...]}')
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"malformed JSON: {exc}") from exc
    if isinstance(body, list):
        raise UnprocessableRequestError(
            'a JSON array is not accepted: wrap a batch as {"events": [...]}'
        )
    if not isinstance(body, dict):
        raise UnprocessableRequestError(
            f'expected one event object or {{"events": [...]}}, got a JSON {json_type(body)}'
        )
    if "events" not in body:
        return [body]
    extra = sorted(str(k) for k in body if k != "events")
    if extra:
        raise UnprocessableRequestError(
            f'a batch object has only "events"; unexpected: {", ".join(extra)}'
        )
    events = body["events"]
    if not isinstance(events, list):
        raise UnprocessableRequestError(f'"events" must be a list, got a JSON {json_type(events)}')
    if len(events) > max_events:
        raise PayloadTooLargeError(f"batch of {len(events):,} events is over the limit of "
                                   f"{max_events:,} per request; split it")
    return list(events)


class _Raws(Sequence[str]):
    """Raw JSON text of each record, made only for the few that are rejected."""

    def __init__(self, records: list[object]) -> None:
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...

    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        if isinstance(i, slice):
            return [_raw(r) for r in self._records[i]]
        return _raw(self._records[i])


def _raw(record: object) -> str:
    """A record as JSON text; a placeholder for one orjson cannot write (nested past 255
    levels: it decodes up to 1,024), which is rejected, not a server error."""
    try:
        return orjson.dumps(record).decode()
    except orjson.JSONEncodeError as exc:
        return f"<a JSON {json_type(record)} that cannot be shown: {exc}>"


def validate(records: list[object]) -> tuple[pl.DataFrame, list[DeadLetter]]:
    """Validated events (``_line`` = 1-based position in the request) and dead letters."""
    lines = range(1, len(records) + 1)
    events, rejects = validate_records(records, source=SOURCE, lines=lines, raws=_Raws(records))
    if events.height:
        events = derive_event_ids(events)
    return events, rejects
