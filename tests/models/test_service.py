"""Models over a real database: train, recommend with the feedback loop, outputs, audiences."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from typer.testing import CliRunner

from portrait.cli import app
from portrait.engine.engine import Engine
from portrait.events.schema import EVENT_SCHEMA
from portrait.models import service
from portrait.models.cf import ALSModel
from portrait.spec.loader import parse_spec
from portrait.store import open_store

T0 = 1_709_251_200_000_000
HOUR = 3_600_000_000
DAY = 24 * HOUR
SPEC = """
version: 1
features:
  events_total: {kind: count}
  spend: {kind: sum, field: price, where: {type: [purchase]}}
  purchases_30d: {kind: count, where: {type: [purchase]}, window: 30d}
  affinity: {kind: decayed, key: category, half_life: 14d,
             weights: {view: 1, click: 2, purchase: 5}}
segments:
  buyer: "purchases_30d >= 1"
interactions: {view: 1, click: 2, purchase: 5, impression: -0.5}
"""


class Log:
    """Events with ids unique across every Log of a test (a reused id is a duplicate)."""

    made = 0

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, user: str, item: str, type_: str, ts: int, price: float | None = None
            ) -> None:
        Log.made += 1
        self.rows.append({**dict.fromkeys(EVENT_SCHEMA), "event_id": f"e{Log.made}",
                          "user_id": user, "ts": ts, "type": type_, "item_id": item,
                          "category": item.split("-", maxsplit=1)[0], "price": price})

    def frame(self) -> pl.DataFrame:
        out = pl.DataFrame(self.rows, schema=EVENT_SCHEMA, orient="row")
        self.rows = []
        return out


def planted(log: Log, rng: random.Random) -> None:
    """Two tastes: 'a' users view a-items, 'b' users b-items; some purchase."""
    for group in "ab":
        for u in range(30):
            for _ in range(12):
                item = f"{group}-{rng.randrange(20):02d}"
                log.add(f"{group}{u:02d}", item, "view", T0 + rng.randrange(60 * DAY))
            if u % 3 == 0:
                log.add(f"{group}{u:02d}", f"{group}-{rng.randrange(20):02d}", "purchase",
                        T0 + rng.randrange(60 * DAY), 20.0)


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    """A store of planted tastes (see :func:`planted`), shared with test_consent.py."""
    yield from planted_engine(tmp_path)


def planted_engine(tmp_path: Path) -> Any:
    log = Log()
    planted(log, random.Random(3))
    with open_store(tmp_path / "db", writer=True) as store:
        eng = Engine(parse_spec(SPEC), store)
        eng.ingest_events(log.frame())
        yield eng


def items_of(recs: list[Any]) -> list[str]:
    return [r.item_id for r in recs]


def test_train_then_recommend_follows_taste_and_feedback(engine: Engine) -> None:
    summary = service.train(engine, horizon="30d")
    assert summary["als"]["users"] == 60
    # tuned point-in-time on this store: taste, not (noise) popularity
    assert summary["recommender"]["weights"][1] == 0.0
    assert summary["recommender"]["recall@20"] >= summary["recommender"][
        "default_weights_recall@20"]
    assert summary["p_purchase_30d"]["version"] == 1 or "skipped" in summary["p_purchase_30d"]
    recs = service.recommend(engine, "a00", 5)
    assert len(recs) == 5
    assert all(i.startswith("a-") for i in items_of(recs)), items_of(recs)
    consumed = set(engine.store.events(["a00"])["item_id"].to_list())
    assert not consumed & set(items_of(recs))
    # feedback: a00 clicks and buys b-items -> b-items enter, with a reason naming them
    wm = engine.store.meta().watermark
    assert wm is not None
    log = Log()
    for n, item in enumerate(("b-01", "b-02", "b-03")):
        log.add("a00", item, "click", wm + (n + 1) * HOUR)
    log.add("a00", "b-04", "purchase", wm + 5 * HOUR, 30.0)
    engine.ingest_events(log.frame())
    after = service.recommend(engine, "a00", 10)
    b_items = [r for r in after if r.item_id.startswith("b-")]
    assert len(b_items) >= 3, items_of(after)
    assert "b-04" not in items_of(after)  # bought: consumed
    # the reason names what moved it: a clicked item or the new interest
    assert all("you liked b-0" in r.reason or "interest in b" in r.reason
               or r.reason.startswith("people with your taste") for r in b_items), after


def test_ignored_impressions_push_an_item_down(engine: Engine) -> None:
    service.train(engine)
    top = service.recommend(engine, "b05", 5)[0].item_id
    wm = engine.store.meta().watermark
    assert wm is not None
    log = Log()
    for n in range(3):
        log.add("b05", top, "impression", wm + (n + 1) * HOUR)
    engine.ingest_events(log.frame())
    assert top not in items_of(service.recommend(engine, "b05", 5))
    # an impression that is clicked is a consumption: never recommended again
    log.add("b05", top, "click", wm + 10 * HOUR)
    engine.ingest_events(log.frame())
    assert top not in items_of(service.recommend(engine, "b05", 20))


def test_new_user_gets_cold_start_then_personal(engine: Engine) -> None:
    service.train(engine)
    cold = service.recommend(engine, "newbie", 5)
    assert all(r.reason.startswith("popular") for r in cold)
    wm = engine.store.meta().watermark
    assert wm is not None
    log = Log()
    for n in range(4):
        log.add("newbie", f"b-{n:02d}", "view", wm + (n + 1) * HOUR)
    engine.ingest_events(log.frame())
    warm = service.recommend(engine, "newbie", 5)
    assert sum(r.item_id.startswith("b-") for r in warm) >= 4, items_of(warm)


def test_retrain_is_scheduled_and_swaps_versions(engine: Engine) -> None:
    assert service.retrain_due(engine)[0]
    service.train(engine)
    reg = service.registry(engine)
    old = service.recommender(engine)
    due, why = service.retrain_due(engine)
    assert not due, why
    log = Log()
    planted(log, random.Random(9))  # doubles the data: > 10% new events
    engine.ingest_events(log.frame())
    due, why = service.retrain_due(engine)
    assert due, why
    service.train(engine)
    assert reg.versions("als") == [1, 2]
    assert reg.current("als") == 2
    assert reg.load("als", ALSModel, version=1).n_interactions < reg.load(
        "als", ALSModel).n_interactions
    assert old.recommend(service.UserContext(), 3)  # the old snapshot keeps serving


def test_model_outputs_are_profile_fields_and_audiences_use_them(engine: Engine,
                                                                 tmp_path: Path) -> None:
    service.train(engine)
    values = engine.read_at()
    out = service.model_outputs(engine, values)
    assert out.height == values.height == 60
    for col in ("p_purchase_30d", "cluster", "interest_shift", "burst"):
        assert col in out.columns, out.columns
    p = out["p_purchase_30d"].to_numpy()
    assert ((p >= 0) & (p <= 1)).all()
    one = service.user_outputs(engine, "a03")
    assert set(one) >= {"p_purchase_30d", "cluster", "interest_shift"}


def test_cli_models_recommend_profile_audience(engine: Engine, tmp_path: Path) -> None:
    db = str(Path(engine.store.root))  # type: ignore[attr-defined]
    engine.store.close()
    runner = CliRunner()
    got = runner.invoke(app, ["models", "train", "--db", db])
    assert got.exit_code == 0, got.output
    assert orjson.loads(got.stdout)["trained"] is True
    again = orjson.loads(runner.invoke(app, ["models", "train", "--if-due", "--db", db]).stdout)
    assert again["trained"] is False
    rec = runner.invoke(app, ["recommend", "a01", "-k", "4", "--json", "--db", db])
    assert rec.exit_code == 0, rec.output
    body = orjson.loads(rec.stdout)
    assert body["user_id"] == "a01"
    assert len(body["items"]) == 4
    assert all(set(i) == {"item_id", "score", "reason", "sources"} for i in body["items"])
    prof = orjson.loads(runner.invoke(app, ["profile", "a01", "--json", "--db", db]).stdout)
    assert "p_purchase_30d" in prof["models"]
    out = tmp_path / "aud.parquet"
    aud = runner.invoke(app, ["audience", "affinity['a'] > 1 and p_purchase_30d <= 1",
                              "--out", str(out), "--json", "--db", db])
    assert aud.exit_code == 0, aud.output
    res = orjson.loads(aud.stdout)
    members = pl.read_parquet(out)
    assert res["count"] == members.height == 30
    assert members["user_id"].str.starts_with("a").all()
    bad = runner.invoke(app, ["audience", "nope > 1", "--db", db])
    assert bad.exit_code != 0
    assert "nope" in bad.output
