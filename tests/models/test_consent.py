"""Consent per purpose (privacy/consent.py): withdrawals take effect on the next read,
the latest decision by event time wins whatever the arrival order, consent events feed
no feature, and erasure removes the decisions too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.models.test_service import DAY, HOUR, SPEC, Log, items_of, planted_engine

from portrait.audience import select
from portrait.engine.engine import Engine
from portrait.events.schema import EVENT_SCHEMA
from portrait.models import service
from portrait.privacy.erasure import forget
from portrait.spec.loader import parse_spec
from portrait.store import open_store


def consent(log: Log, user: str, purpose: str, granted: bool, ts: int) -> None:
    Log.made += 1
    log.rows.append({**dict.fromkeys(EVENT_SCHEMA), "event_id": f"c{Log.made}",
                     "user_id": user, "ts": ts, "category": purpose,
                     "type": "consent_grant" if granted else "consent_withdraw"})


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    yield from planted_engine(tmp_path)


def test_personalisation_withdrawn_means_non_personalised_recommendations(engine: Engine
                                                                          ) -> None:
    service.train(engine, horizon="30d")
    wm = engine.store.meta().watermark
    assert wm is not None
    personal = items_of(service.recommend(engine, "a00", 8))
    assert all(i.startswith("a-") for i in personal)
    cold = items_of(service.recommend(engine, "never-seen", 8))
    before = engine.profile("a00")["features"]
    log = Log()
    consent(log, "a00", "personalisation", False, wm + HOUR)
    engine.ingest_events(log.frame())
    assert items_of(service.recommend(engine, "a00", 8)) == cold  # the next read
    assert engine.profile("a00")["features"]["events_total"] == before["events_total"]
    consent(log, "a00", "personalisation", True, wm + 2 * HOUR)
    engine.ingest_events(log.frame())
    assert items_of(service.recommend(engine, "a00", 8)) == personal


def test_advertising_withdrawn_means_never_in_an_audience(engine: Engine) -> None:
    wm = engine.store.meta().watermark
    assert wm is not None
    log = Log()
    consent(log, "a01", "advertising", True, wm + 3 * HOUR)  # the latest decision ...
    consent(log, "b02", "advertising", False, wm + HOUR)
    engine.ingest_events(log.frame())
    consent(log, "a01", "advertising", False, wm + HOUR)  # ... arriving first: still granted
    consent(log, "b05", "marketing", False, wm + HOUR)  # not a purpose: ignored
    engine.ingest_events(log.frame())
    assert engine.store.withdrawn("advertising") == {"b02"}
    assert engine.store.consents("a01") == {"advertising": True}
    values = engine.read_at()
    aud = select(values, "events_total > 0", dict(engine.spec.features),
                 withdrawn=engine.store.withdrawn("advertising"))
    assert "b02" not in aud.members["user_id"].to_list()
    assert aud.withheld == 1
    assert aud.count == values.height - 1
    forget(engine, "b02")
    assert engine.store.withdrawn("advertising") == set()


def test_consent_only_users_have_no_profile_and_count_no_user(tmp_path: Path) -> None:
    with open_store(tmp_path / "db", writer=True) as store:
        eng = Engine(parse_spec(SPEC), store)
        log = Log()
        log.add("x1", "a-01", "view", 10 * DAY)
        consent(log, "x2", "analytics", False, 10 * DAY)
        eng.ingest_events(log.frame())
        assert store.meta().users == 1
        assert eng.read_at()["user_id"].to_list() == ["x1"]
        consent(log, "x1", "analytics", False, 11 * DAY)  # an existing user, consent only
        eng.ingest_events(log.frame())
        assert store.meta().users == 1
        assert eng.profile("x1")["features"]["events_total"] == 1


def test_analytics_withdrawn_means_left_out_of_population_statistics(engine: Engine) -> None:
    from portrait.models.drift import drift_report, profiles_for_drift
    from portrait.serve import queries
    from portrait.serve.readers import Readers

    wm = engine.store.meta().watermark
    assert wm is not None
    readers = Readers(engine.store.root)

    def stats() -> tuple[dict[str, Any], dict[str, Any]]:
        return readers.read(lambda e: (queries.segments(readers, e),
                                       queries.distribution(readers, e, "events_total", 5)))

    segs, dist = stats()
    drifted = profiles_for_drift(engine, wm)
    assert "a03" in drifted["user_id"].to_list()
    before = engine.profile("a03")
    log = Log()
    consent(log, "a03", "analytics", False, wm + HOUR)
    engine.ingest_events(log.frame())
    assert engine.store.withdrawn("analytics") == {"a03"}
    segs2, dist2 = stats()
    assert segs2["population"] == segs["population"] - 1
    members = {s["name"]: s["size"] for s in segs["segments"]}
    for seg in segs2["segments"]:  # a03's segments count one fewer, the others the same
        was_member = seg["name"] in before["segments"]
        assert seg["size"] == members[seg["name"]] - int(was_member), seg["name"]
    assert dist2["users"] == dist["users"] - 1
    assert "a03" not in profiles_for_drift(engine, wm)["user_id"].to_list()
    report = drift_report(engine, wm - 20 * DAY, wm, top=1000)
    assert all(r["user_id"] != "a03" for r in report["interest_shift"] + report["bursts"])
    after = engine.profile("a03", wm)  # their own profile is unchanged
    assert after["features"] == before["features"]
    assert after["segments"] == before["segments"]
