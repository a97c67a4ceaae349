"""Prometheus metrics of one server (its own registry, served at ``GET /metrics``).

=============================================  ==========================================
metric                                         meaning
=============================================  ==========================================
``portrait_ingest_events_total{result}``       posted events: accepted / duplicate / rejected
``portrait_ingest_events_per_second``          accepted events per second, last 10 s
``portrait_ingest_commits_total``              micro-batch commits
``portrait_ingest_commit_seconds``             time of one commit (histogram)
``portrait_ingest_commit_lag_seconds``         a request's arrival -> its events committed,
                                               i.e. visible to readers (histogram)
``portrait_ingest_queue_events``               events queued, not yet committed
``portrait_freshness_seconds``                 wall-clock seconds since the last commit
``portrait_watermark_timestamp_seconds``       the watermark (largest event time), epoch s
``portrait_http_request_duration_seconds``     latency per route template and method
``portrait_http_requests_total``               requests per route, method and status
=============================================  ==========================================
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portrait.serve.batcher import GroupStats

RATE_WINDOW_S = 10.0
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


class Metrics:
    """The instruments; ``on_commit`` is the batcher's hook."""

    def __init__(self, queued: Callable[[], float]) -> None:
        reg = self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter("portrait_ingest_events", "Posted events by result",
                              ["result"], registry=reg)
        for result in ("accepted", "duplicate", "rejected"):
            self.events.labels(result)
        self.commits = Counter("portrait_ingest_commits", "Micro-batch commits", registry=reg)
        self.commit_s = Histogram("portrait_ingest_commit_seconds", "Duration of one commit",
                                  buckets=LATENCY_BUCKETS, registry=reg)
        self.lag_s = Histogram("portrait_ingest_commit_lag_seconds",
                               "Arrival of a request -> its events committed (visible)",
                               buckets=LATENCY_BUCKETS, registry=reg)
        Gauge("portrait_ingest_queue_events", "Events queued, not yet committed",
              registry=reg).set_function(queued)
        Gauge("portrait_ingest_events_per_second", "Accepted events per second (last 10 s)",
              registry=reg).set_function(self.rate)
        Gauge("portrait_freshness_seconds", "Seconds since the last commit",
              registry=reg).set_function(self.freshness)
        self.watermark = Gauge("portrait_watermark_timestamp_seconds",
                               "Largest event time ingested (epoch seconds)", registry=reg)
        self.latency = Histogram("portrait_http_request_duration_seconds",
                                 "Request latency per route", ["route", "method"],
                                 buckets=LATENCY_BUCKETS, registry=reg)
        self.requests = Counter("portrait_http_requests", "Requests per route and status",
                                ["route", "method", "status"], registry=reg)
        self._lock = threading.Lock()
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._last_commit: float | None = None

    def on_commit(self, stats: GroupStats) -> None:
        now = time.monotonic()
        self.events.labels("accepted").inc(stats.accepted)
        self.events.labels("duplicate").inc(stats.duplicates)
        self.events.labels("rejected").inc(stats.rejected)
        self.commits.inc()
        self.commit_s.observe(stats.commit_s)
        for lag in stats.lags_s:
            self.lag_s.observe(lag)
        if stats.watermark is not None:
            self.watermark.set(stats.watermark / 1e6)
        with self._lock:
            self._last_commit = now
            self._recent.append((now, stats.accepted))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def rate(self) -> float:
        with self._lock:
            self._trim(time.monotonic())
            return sum(n for _, n in self._recent) / RATE_WINDOW_S

    def freshness(self) -> float:
        """Seconds since the last commit; 0 before any (nothing is stale yet)."""
        last = self._last_commit
        return 0.0 if last is None else time.monotonic() - last

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.latency.labels(route, method).observe(seconds)
        self.requests.labels(route, method, str(status)).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)


class LatencyMiddleware:
    """Pure ASGI middleware: times every HTTP request under its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            found = scope.get("route")
            route = str(getattr(found, "path_format", None) or "<unmatched>")
            self.metrics.observe(route, scope["method"], status, time.perf_counter() - started)
