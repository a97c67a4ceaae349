"""The dashboard in a real browser: Debian Chromium (Playwright) against ``portrait serve``.

The server holds the shop sample with trained models and an evaluation
report directory (``$PORTRAIT_REPORT``). What the page draws is compared with
the engine in this process: the bars with the profile, the time-travel chart
with ``Engine.profile(user, at)`` at each plotted time, the segment sizes
over time with a replay of the change log, the PSI table with
``drift_report``, the recent events with the store's log, the feature
histograms with NumPy over ``Engine.read_at()``. Screenshots go to
``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from tests.eval.test_report import sample
from tests.serve.conftest import Served, serving

from portrait.engine import Engine
from portrait.eval.report import write_report
from portrait.models import service
from portrait.models.drift import DAY_US, drift_report
from portrait.serve.dashboard import REPORT_ENV
from portrait.store import open_store
from portrait.timeutil import format_us, parse_time_arg

USER = "u001"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 15_000


@dataclass
class Dash:
    served: Served
    report: Path  # the directory of one evaluation report
    shots: Path  # where screenshots go


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Debian's chromium is not installed: `make test` installs it "
                    "(apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def dash(seeded: Path, tmp_path_factory: pytest.TempPathFactory,
         pytestconfig: pytest.Config) -> Iterator[Dash]:
    root = tmp_path_factory.mktemp("dashboard")
    reports = root / "reports"
    write_report(reports / "synthetic", sample())
    shots = pytestconfig.rootpath / "test-artifacts" / "dashboard"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    with ExitStack() as stack:
        env = pytest.MonkeyPatch()
        env.setenv(REPORT_ENV, str(reports))  # read by the server process at start
        try:
            served = stack.enter_context(serving(seeded, root))
        finally:
            env.undo()
        yield Dash(served, reports / "synthetic", shots)


@pytest.fixture(scope="module")
def engine(dash: Dash) -> Iterator[Engine]:
    with open_store(dash.served.db) as store:
        yield Engine(None, store)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, dash: Dash) -> Iterator[Page]:
    """A fresh browser context; fails the test on a script error or a request off the server."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    errors: list[str] = []
    outside: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    base = dash.served.url
    pg.on("request", lambda req: None if req.url.startswith((base, "blob:", "data:"))
          else outside.append(req.url))
    yield pg
    context.close()
    # the browser logs API answers 401 (wrong key) and 404 (unknown user) as failed loads
    errors = [e for e in errors if not re.search(r"status of 40[14] ", e)]
    assert not errors, errors
    assert not outside, f"the dashboard must work offline, it requested {outside}"


def ready(page: Page) -> None:
    page.wait_for_selector("body[data-ready=true]")


def login(page: Page, dash: Dash, hash_: str = "") -> None:
    page.goto(f"{dash.served.url}/{hash_}")
    page.fill("#key-input", dash.served.read)
    page.click("#key-save")
    ready(page)


def charts(page: Page) -> dict[str, Any]:
    found = page.evaluate("window.__charts")
    assert isinstance(found, dict)
    return found


def top_interests(features: dict[str, Any], name: str, n: int = 10) -> list[tuple[str, float]]:
    return sorted(features[name].items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def test_search_a_user_and_check_the_charts(page: Page, dash: Dash, engine: Engine) -> None:
    page.goto(dash.served.url + "/")
    expect(page.locator("#key-dialog")).to_be_visible()
    page.fill("#key-input", "prt_not-a-key")
    page.click("#key-save")
    expect(page.locator("#key-error")).to_contain_text("unknown API key")
    page.fill("#key-input", dash.served.read)
    page.click("#key-save")
    ready(page)
    assert page.evaluate("localStorage.getItem('portrait.apiKey')") == dash.served.read

    page.fill("#search-input", USER)
    page.press("#search-input", "Enter")
    page.wait_for_url(re.compile(rf"#/user/{USER}$"))
    ready(page)
    expect(page.locator("#user-id")).to_have_text(USER)
    want = engine.profile(USER)
    got = charts(page)
    assert got["profile"]["features"] == want["features"]
    assert got["profile"]["segments"] == want["segments"]
    check_interests(page, got, want)
    check_history(page, engine, got, want)
    page.screenshot(path=dash.shots / "user.png", full_page=True)
    check_other_feature(page, engine, want)
    check_changes_and_recommendations(page, engine, want)
    check_recent_events(page, engine)
    follow_segment_then_member(page, dash, engine, want["segments"][0])


def check_interests(page: Page, got: dict[str, Any], want: dict[str, Any]) -> None:
    # top interests: the keyed decayed feature, largest first, bars scaled to the largest
    top = top_interests(want["features"], "category_affinity")
    assert [(r["key"], r["value"]) for r in got["interests"]["category_affinity"]] == top
    assert set(got["interests"]) == {"category_affinity"}  # keyed decayed only
    rows = page.locator('[data-chart="interests:category_affinity"] .bar-row')
    assert rows.count() == len(top)
    for i, (key, value) in enumerate(top):
        row = rows.nth(i)
        assert row.get_attribute("data-key") == key
        assert float(row.get_attribute("data-value") or "nan") == pytest.approx(value)
        width = row.locator(".bar-fill").evaluate("e => parseFloat(e.style.width)")
        assert width == pytest.approx(100 * value / top[0][1], abs=0.01)


def check_history(page: Page, engine: Engine, got: dict[str, Any], want: dict[str, Any]
                  ) -> None:
    # the time-travel chart: every plotted value is the engine's value at that time
    hist = got["history"]
    assert hist["feature"] == "category_affinity"
    assert len(hist["at"]) == 30
    assert hist["at"][0] == want["features"]["first_seen"]
    assert hist["at"][-1] == want["as_of"]
    labels = [s["label"] for s in hist["series"]]
    assert labels == [k for k, _ in top_interests(want["features"], "category_affinity", 6)]
    for i, at in enumerate(hist["at"]):
        then = engine.profile(USER, parse_time_arg(at))["features"]["category_affinity"]
        for s in hist["series"]:
            assert s["values"][i] == pytest.approx(then.get(s["label"], 0.0), rel=1e-9)
    chart = page.locator('[data-card="history"] .chart[data-drawn="true"]')
    expect(chart.locator("canvas")).to_have_count(1)
    assert chart.get_attribute("data-points") == "30"
    assert chart.get_attribute("data-series") == str(len(labels))


def check_other_feature(page: Page, engine: Engine, want: dict[str, Any]) -> None:
    # another feature in the same chart
    page.select_option("#history-feature", "events_total")
    page.wait_for_selector('.chart[data-chart="history:events_total"][data-drawn="true"]')
    expect(page.locator('[data-card="history"]')).to_have_attribute("data-state", "ready")
    hist = charts(page)["history"]
    totals = hist["series"][0]["values"]
    assert totals == [engine.profile(USER, parse_time_arg(at))["features"]["events_total"]
                      for at in hist["at"]]
    assert totals == sorted(totals)
    assert totals[-1] == want["features"]["events_total"]
    expect(page.locator('[data-card="history"] .chart[data-drawn="true"] canvas')).to_have_count(1)


def check_changes_and_recommendations(page: Page, engine: Engine, want: dict[str, Any]) -> None:
    # segment changes of this user, newest first
    log = engine.store.segment_changes(user_id=USER).sort("seq", descending=True)
    assert [c["seq"] for c in charts(page)["timeline"]] == log["seq"].to_list()
    items = page.locator('[data-card="timeline"] li')
    assert items.count() == min(25, log.height)
    assert items.first.get_attribute("data-segment") == log["segment"][0]
    assert items.first.get_attribute("data-change") == log["change"][0]

    # memberships and recommendations with reasons
    for name in engine.spec.segments:
        member = page.locator(f'[data-card="memberships"] tr[data-segment="{name}"]')
        assert member.get_attribute("data-member") == str(name in want["segments"]).lower()
    recs = service.recommend(engine, USER, 10)
    wanted = service.recommendations_json(USER, recs, as_of=engine.store.meta().watermark)
    shown = page.locator('[data-card="recommendations"] tr[data-item]')
    assert [shown.nth(i).get_attribute("data-item") for i in range(shown.count())] == [
        i["item_id"] for i in wanted["items"]]
    assert all(r["reason"] for r in charts(page)["recommendations"])


def check_recent_events(page: Page, engine: Engine) -> None:
    # the user's newest logged events, newest first (event time, then id), as logged
    log = engine.store.events([USER]).sort(["ts", "event_id"], descending=True).head(20)
    want = log["event_id"].to_list()
    assert [e["event_id"] for e in charts(page)["events"]] == want
    rows = page.locator('[data-card="events"] tr[data-event-id]')
    assert [rows.nth(i).get_attribute("data-event-id") for i in range(rows.count())] == want
    first = log.row(0, named=True)
    assert rows.first.get_attribute("data-type") == first["type"]
    assert rows.first.locator("time").get_attribute("datetime") == format_us(first["ts"])
    if first["item_id"] is not None:
        expect(rows.first).to_contain_text(first["item_id"])


def shown_histogram(page: Page, feature: str) -> list[int]:
    bars = page.locator(f'[data-chart="distribution:{feature}"] .bar-row')
    return [int(bars.nth(i).get_attribute("data-value") or -1) for i in range(bars.count())]


def check_distributions(page: Page, dash: Dash, engine: Engine) -> None:
    """The histogram drawn for a feature is the API's, which is NumPy's over the population."""
    values = engine.read_at()
    key = {"X-API-Key": dash.served.read}
    first = next(f for f in engine.spec.features.values()
                 if not f.keyed and f.value_type == "number")
    for name in (first.name, "spend_total", "first_seen"):
        if name != first.name:
            page.select_option("#distribution-feature", name)
            page.wait_for_selector(f'[data-chart="distribution:{name}"]')
            expect(page.locator('[data-card="distribution"]')).to_have_attribute(
                "data-state", "ready")
        api = httpx.get(f"{dash.served.url}/v1/features/{name}/distribution?bins=20",
                        headers=key).json()
        got = charts(page)["distribution"]
        assert got["feature"] == name
        counts = [b["count"] for b in api["bins"]]
        assert got["counts"] == counts
        assert shown_histogram(page, name) == counts
        column = values[name].cast(pl.Float64)
        found = column.filter(column.is_finite()).to_numpy()
        want, _ = np.histogram(found, bins=20, range=(found.min(), found.max()))
        assert counts == want.tolist()
        assert sum(counts) == api["users"] - api["nulls"] == found.size
        widths = page.locator(f'[data-chart="distribution:{name}"] .bar-fill').evaluate_all(
            "els => els.map(e => parseFloat(e.style.width))")
        assert widths == pytest.approx([100 * c / max(counts) for c in counts], abs=0.01)


def follow_segment_then_member(page: Page, dash: Dash, engine: Engine, segment: str) -> None:
    """Follow a membership to the segment page, then a member back to a user page."""
    page.click(f'#user-segments a[data-segment="{segment}"]')
    page.wait_for_url(re.compile(rf"#/segment/{segment}$"))
    ready(page)
    members = engine.segment_members(segment)
    assert page.locator("#members a").all_inner_texts() == members[:60]
    expect(page.locator("#segment-rule")).to_have_text(engine.spec.segments[segment].text)
    sizes = charts(page)["segmentSizes"][segment]
    seg_log = engine.store.segment_changes(segment=segment)
    assert sizes["size"][-1] == sum(1 if c == "enter" else -1 for c in seg_log["change"])
    assert sizes["complete"] is True
    expect(page.locator('[data-card="sizes"] .chart[data-drawn="true"] canvas')).to_have_count(1)
    page.screenshot(path=dash.shots / "segment.png", full_page=True)
    other = members[-1]
    page.click(f'#members a[data-user="{other}"]')
    ready(page)
    expect(page.locator("#user-id")).to_have_text(other)
    assert charts(page)["profile"]["features"] == engine.profile(other)["features"]


def replay_sizes(engine: Engine, names: list[str], as_of: int
                 ) -> tuple[list[float], dict[str, list[int]]]:
    """Segment sizes after each distinct change time (the slow, obvious way), held until now."""
    log = engine.store.segment_changes().sort(["ts", "seq"])
    times = sorted(set(log["ts"].to_list()))
    sizes: dict[str, list[int]] = {n: [] for n in names}
    for t in times:
        upto = log.filter(log["ts"] <= t)
        for n in names:
            mine = upto.filter(upto["segment"] == n)["change"].to_list()
            sizes[n].append(mine.count("enter") - mine.count("exit"))
    if times and as_of > times[-1]:
        times.append(as_of)
        for n in names:
            sizes[n].append(sizes[n][-1])
    return [t / 1e6 for t in times], sizes


def test_population_page_and_report(page: Page, dash: Dash, engine: Engine) -> None:
    login(page, dash, "#/population")
    meta = engine.store.meta()
    assert meta.watermark is not None
    values = engine.read_at()
    expect(page.locator("#stat-users .value")).to_have_text(f"{values.height:,}")
    expect(page.locator("#stat-events .value")).to_have_text(f"{meta.accepted:,}")
    got = charts(page)
    names = list(engine.spec.segments)
    assert got["segments"] == [{"name": n, "size": len(engine.segment_members(n))} for n in names]
    for n in names:
        bar = page.locator(f'[data-chart="segment-sizes"] .bar-row[data-key="{n}"]')
        assert int(bar.get_attribute("data-value") or -1) == len(engine.segment_members(n))

    times, sizes = replay_sizes(engine, names, meta.watermark)
    for n in names:
        assert got["segmentSizes"][n]["t"] == pytest.approx(times)
        assert got["segmentSizes"][n]["size"] == sizes[n]
    expect(page.locator('[data-card="sizes"] .chart[data-drawn="true"] canvas')).to_have_count(1)

    report = drift_report(engine, meta.watermark - 30 * DAY_US, meta.watermark, top=10)
    assert got["drift"]["ref"] == format_us(meta.watermark - 30 * DAY_US)
    want = sorted(report["population"], key=lambda r: -r["psi"])
    shown = got["drift"]["rows"]
    assert [r["feature"] for r in shown] == [r["feature"] for r in want]
    for s, w in zip(shown, want, strict=True):
        assert s["level"] == w["level"]
        assert s["psi"] == pytest.approx(w["psi"]) or (math.isnan(w["psi"]) and s["psi"] is None)
    rows = page.locator('[data-card="drift"] tr[data-feature]')
    assert rows.count() == len(want)
    assert rows.first.locator(".badge").inner_text() == want[0]["level"]
    shift = page.locator('[data-card="drift"] tr[data-user]')
    assert [shift.nth(i).get_attribute("data-user") for i in range(shift.count())] == [
        r["user_id"] for r in report["interest_shift"]]
    check_distributions(page, dash, engine)
    page.screenshot(path=dash.shots / "population.png", full_page=True)

    # the evaluation report, with its plots fetched through the API key
    page.click('[data-report="synthetic"] a')
    page.wait_for_url(re.compile(r"#/report/synthetic$"))
    ready(page)
    md = (dash.report / "report.md").read_text(encoding="utf-8")
    pngs = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert len(pngs) >= 3
    expect(page.locator("article.report h1")).to_have_text(md.splitlines()[0].lstrip("# "))
    images = page.locator('article.report img[data-loaded="true"]')
    expect(images).to_have_count(len(pngs))
    assert [images.nth(i).get_attribute("data-file") for i in range(len(pngs))] == pngs
    assert min(images.nth(i).evaluate("e => e.naturalWidth") for i in range(len(pngs))) > 100
    assert page.locator("article.report table").count() >= 2
    page.screenshot(path=dash.shots / "report.png", full_page=True)


def test_unknown_user_and_a_phone_screen(page: Page, dash: Dash) -> None:
    login(page, dash, "#/user/nobody-at-all")
    error = page.locator("#view .error")
    expect(error).to_have_attribute("data-error", "UnknownUserError")
    expect(error).to_contain_text("nobody-at-all")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{dash.served.url}/#/user/{USER}")
    ready(page)
    expect(page.locator('[data-card="history"] .chart[data-drawn="true"] canvas')).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=dash.shots / "user-phone.png", full_page=True)


def test_page_routes_need_the_key_and_stay_in_the_report(dash: Dash) -> None:
    url, key = dash.served.url, {"X-API-Key": dash.served.read}
    page = httpx.get(url + "/")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)  # nothing from elsewhere
    assert httpx.get(url + "/ui/assets/vendor/uplot/uPlot.iife.min.js").status_code == 200
    assert httpx.get(url + "/ui/meta").status_code == 401
    meta = httpx.get(url + "/ui/meta", headers=key).json()
    assert [r["name"] for r in meta["reports"]] == ["synthetic"]
    assert {f["name"]: f["value_type"] for f in meta["features"]}["first_seen"] == "time"
    assert httpx.get(url + "/ui/reports/synthetic/report.md").status_code == 401
    md = httpx.get(url + "/ui/reports/synthetic/report.md", headers=key)
    assert md.status_code == 200
    assert md.text == (dash.report / "report.md").read_text(encoding="utf-8")
    for bad in ("synthetic/..%2F..%2Fdb%2Fapi-keys.json", "synthetic/api-keys.json",
                "nope/report.md", "synthetic/missing.png", "synthetic/.hidden.md"):
        r = httpx.get(f"{url}/ui/reports/{bad}", headers=key)
        assert r.status_code == 404, bad
        assert r.headers["content-type"] == "application/problem+json"
    spec = httpx.get(url + "/openapi.json").json()
    assert not any(p == "/" or p.startswith("/ui") for p in spec["paths"])
