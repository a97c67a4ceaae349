"""``POST /v1/events``: one event or ``{"events": [...]}`` (up to 10,000), per-event results.

By default the reply comes once the events are durably committed (fsynced
files and an fsynced SQLite transaction), so a read that follows sees them.
With ``?async=1`` the reply is ``202`` as soon as the events are validated and
queued: lower latency, but they become visible a few milliseconds later and
a crash before the commit loses them (post them again: duplicates are
recognised by ``event_id``, or by content when there is none).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import polars as pl
from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from portrait.events.schema import DeadLetter
from portrait.serve import body
from portrait.serve.auth import Ingest
from portrait.serve.batcher import EXPIRED, Committed
from portrait.serve.problems import PROBLEM_RESPONSES
from portrait.serve.responses import JSON
from portrait.serve.schemas import EventBatchIn, EventIn, IngestResult
from portrait.serve.state import server
from portrait.timeutil import format_us

router = APIRouter(tags=["ingest"])

_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"anyOf": [
            {"$ref": "#/components/schemas/EventIn"},
            {"$ref": "#/components/schemas/EventBatchIn"},
        ]}}},
    }
}
BODY_MODELS = (EventIn, EventBatchIn)  # registered as components by the app


def _prepare(raw: bytes, max_events: int) -> tuple[int, pl.DataFrame, list[DeadLetter]]:
    records = body.parse_records(raw, max_events)
    events, rejects = body.validate(records)
    return len(records), events, rejects


def results(n: int, events: pl.DataFrame, rejects: list[DeadLetter],
            committed: Committed | None) -> dict[str, Any]:
    """The response: counts and one result per posted event, in request order."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for d in rejects:
        out[d.line - 1] = {"index": d.line - 1, "status": "rejected", "reason": d.reason}
    statuses = committed.statuses if committed is not None else ["queued"] * events.height
    expired = 0
    for line, event_id, ts, status in zip(events["_line"].to_list(),
                                          events["event_id"].to_list(), events["ts"].to_list(),
                                          statuses, strict=True):
        out[line - 1] = {"index": line - 1, "status": status, "event_id": event_id}
        if status == EXPIRED:
            assert committed is not None
            assert committed.cutoff is not None
            expired += 1
            out[line - 1] = {"index": line - 1, "status": "rejected", "event_id": event_id,
                             "reason": f"ts: {format_us(ts)} is before the retention cutoff "
                                       f"{format_us(committed.cutoff)} (raw events are purged)"}
    accepted = sum(1 for s in statuses if s == "accepted")
    wm = committed.watermark if committed is not None else None
    return {
        "accepted": accepted,
        "duplicates": sum(1 for s in statuses if s == "duplicate"),
        "rejected": len(rejects) + expired,
        "queued": 0 if committed is not None else events.height,
        "durable": committed is not None,
        "watermark": None if wm is None else format_us(wm),
        "results": out,
    }


@router.post(
    "/v1/events",
    response_model=IngestResult,
    summary="Ingest one event or a batch",
    responses={202: {"model": IngestResult, "description": "queued, not yet committed"},
               **PROBLEM_RESPONSES},
    openapi_extra=_BODY,
)
async def post_events(
    request: Request,
    _key: Ingest,
    async_: Annotated[bool, Query(alias="async", description="reply once queued (202)")] = False,
) -> JSON:
    st = server(request)
    raw = await body.read_body(request, st.settings.max_body_bytes)
    n, events, rejects = await run_in_threadpool(_prepare, raw, st.settings.max_batch_events)
    future = st.writer().submit(events, rejects)
    if async_:
        return JSON(results(n, events, rejects, None), status_code=202)
    committed = await asyncio.wrap_future(future)
    return JSON(results(n, events, rejects, committed))
