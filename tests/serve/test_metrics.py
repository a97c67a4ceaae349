"""GET /metrics: Prometheus text with the ingest, freshness and latency metrics."""

from __future__ import annotations

import re

from tests.serve.harness import event

from portrait.client import Client


def _value(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in metrics"
    return float(found[1])


def test_metrics_text(api: Client) -> None:
    before = api.metrics()
    accepted = _value(before, 'portrait_ingest_events_total{result="accepted"}')
    api.ingest([event("met-a", "2024-05-01T00:00:00Z"), event("met-a", "2024-05-01T00:01:00Z"),
                {"user_id": "met-a"}])
    api.profile("met-a")
    text = api.metrics()
    assert _value(text, 'portrait_ingest_events_total{result="accepted"}') == accepted + 2
    assert _value(text, 'portrait_ingest_events_total{result="rejected"}') >= 1
    assert _value(text, "portrait_ingest_commits_total") >= 1
    assert _value(text, "portrait_ingest_commit_lag_seconds_count") >= 1
    assert _value(text, "portrait_ingest_events_per_second") > 0
    assert 0 <= _value(text, "portrait_freshness_seconds") < 60
    assert _value(text, "portrait_watermark_timestamp_seconds") > 1.7e9
    assert _value(text, "portrait_ingest_queue_events") >= 0
    route = '{method="GET",route="/v1/profiles/{user_id}"}'
    assert _value(text, "portrait_http_request_duration_seconds_count" + route) >= 1
    assert 'portrait_http_request_duration_seconds_bucket{le="0.005",method="POST",' \
           'route="/v1/events"}' in text
    assert re.search(r'portrait_http_requests_total\{method="POST",route="/v1/events",'
                     r'status="200"\} \d', text)


def test_healthz_reports_the_writer_and_background_compaction(api: Client) -> None:
    """The server compacts in the background; /healthz says the writer is up and that
    compaction has not failed, and counts what the store holds."""
    for i in range(3):  # a few commits, so compaction has work to wake up for
        api.ingest([event("hz-a", f"2024-05-0{i + 1}T00:00:00Z")])
    body = api.health()
    assert body["status"] == "ok"
    assert body["writer"] is True
    assert body["compaction_error"] is None
    assert body["events"] >= 3
