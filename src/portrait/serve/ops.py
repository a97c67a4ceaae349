"""Operations: ``/healthz`` and ``/metrics`` (no API key: for probes and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from portrait.serve.responses import JSON
from portrait.serve.schemas import Health
from portrait.serve.state import server
from portrait.timeutil import format_us

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness and the data's state",
            responses={503: {"model": Health, "description": "the writer has stopped"}})
def healthz(request: Request) -> JSON:
    st = server(request)
    batcher = st.batcher
    writer = batcher is not None and batcher.alive
    meta = st.readers.read(lambda e: e.store.meta())
    compaction = None if batcher is None else batcher.compaction_error
    body = {
        "status": "ok" if writer else "degraded",
        "writer": writer,
        "queued": 0 if batcher is None else batcher.queued,
        "watermark": None if meta.watermark is None else format_us(meta.watermark),
        "events": meta.accepted,
        "users": meta.users,
        "compaction_error": None if compaction is None else repr(compaction),
    }
    return JSON(body, status_code=200 if writer else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}})
def metrics(request: Request) -> Response:
    return Response(server(request).metrics.text(), media_type=CONTENT_TYPE_LATEST)
