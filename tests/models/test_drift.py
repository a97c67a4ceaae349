"""Drift detectors fire on a planted shift and stay quiet without one.

Each detector is also checked against a slow, obvious reference: the JS
divergence of per-user dictionaries (scipy's ``jensenshannon``), a brute-force
sliding-window count, and a hand-computed PSI.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from scipy.spatial.distance import jensenshannon

from portrait.engine.engine import Engine
from portrait.events.schema import EVENT_SCHEMA
from portrait.models.drift import (
    DAY_US,
    SIGNAL_SCHEMA,
    bursts,
    drift_report,
    interest_shift,
    population_drift,
    psi,
    psi_level,
    robust_limit,
    user_signals,
)
from portrait.spec.loader import parse_spec
from portrait.store import open_store

T0 = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z in epoch µs
SEC = 1_000_000


def log(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """An event-log frame (every contract column) from partial rows."""
    full = [{**dict.fromkeys(EVENT_SCHEMA), "type": "view", **r} for r in rows]
    for i, r in enumerate(full):
        r["event_id"] = r["event_id"] or f"e{i}"
    return pl.DataFrame(full, schema=EVENT_SCHEMA, orient="row")


# ---------------------------------------------------------------- interest shift


def _history(user: str, recent: str | None, rng: np.random.Generator) -> list[dict[str, Any]]:
    """~2 events a day for 120 days over A/B/C (mixed); the last 10 days ``recent`` only."""
    rows = []
    for day in range(120):
        for _ in range(2):
            ts = T0 + day * DAY_US + int(rng.integers(0, DAY_US))
            cat = recent if recent is not None and day >= 110 else str(rng.choice(["A", "B", "C"]))
            rows.append({"user_id": user, "ts": ts, "category": cat})
    return rows


def test_interest_shift_fires_on_a_user_who_moves_to_a_new_category() -> None:
    rng = np.random.default_rng(1)
    events = log(_history("mover", "Z", rng) + _history("steady", None, rng))
    at = T0 + 120 * DAY_US
    got = {r["user_id"]: r for r in interest_shift(events, at).iter_rows(named=True)}
    assert got["mover"]["interest_shift"] > 0.15
    assert got["steady"]["interest_shift"] < 0.02
    assert got["mover"]["interest_shift"] > 20 * got["steady"]["interest_shift"]
    assert (got["mover"]["short_top"], got["mover"]["long_top"]) != ("Z", "Z")
    assert got["mover"]["short_top"] == "Z"


def _reference_js(events: pl.DataFrame, at: int, short: int, long: int,
                  weights: dict[str, float]) -> dict[str, float]:
    """Per user, in plain Python: decayed masses at ``at``, normalised, JS in bits."""
    mass: dict[str, dict[str, list[float]]] = {}
    for r in events.iter_rows(named=True):
        if r["ts"] > at or r["category"] is None:
            continue
        w = weights.get(r["type"], 1.0)
        cell = mass.setdefault(r["user_id"], {}).setdefault(r["category"], [0.0, 0.0])
        cell[0] += w * 2 ** (-(at - r["ts"]) / short)
        cell[1] += w * 2 ** (-(at - r["ts"]) / long)
    out = {}
    for user, cats in mass.items():
        p = np.array([v[0] for v in cats.values()])
        q = np.array([v[1] for v in cats.values()])
        out[user] = float(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)
    return out


def test_interest_shift_equals_a_plain_python_reference() -> None:
    rng = np.random.default_rng(7)
    n = 600
    events = log([
        {"user_id": f"u{rng.integers(0, 12)}", "ts": T0 + int(rng.integers(0, 60 * DAY_US)),
         "type": str(rng.choice(["view", "cart", "purchase"])),
         "category": None if rng.random() < 0.1 else str(rng.choice(list("ABCDE")))}
        for _ in range(n)
    ])
    weights = {"view": 1.0, "cart": 3.0, "purchase": 5.0}
    at = T0 + 50 * DAY_US  # some events lie after `at` and must be ignored
    short, long = 3 * DAY_US, 40 * DAY_US
    want = _reference_js(events, at, short, long, weights)
    got = interest_shift(events, at, short=short, long=long, weights=weights)
    assert set(got["user_id"]) == set(want)
    for user, value in got.select("user_id", "interest_shift").iter_rows():
        assert value == pytest.approx(want[user], rel=1e-9, abs=1e-12), user
        assert 0.0 <= value <= 1.0


def test_interest_shift_does_not_change_while_a_user_is_quiet() -> None:
    """Normalisation cancels the common decay factor: reading later changes nothing."""
    events = log(_history("mover", "Z", np.random.default_rng(3)))
    at = T0 + 120 * DAY_US
    now = interest_shift(events, at)["interest_shift"][0]
    later = interest_shift(events, at + 400 * DAY_US)["interest_shift"][0]
    assert later == pytest.approx(now, rel=1e-9)


def test_interest_shift_rejects_negative_weights() -> None:
    with pytest.raises(ValueError, match="weights must be >= 0"):
        interest_shift(log([{"user_id": "u", "ts": T0, "category": "A"}]), T0,
                       weights={"view": -1.0})


# ---------------------------------------------------------------- bursts


def _normal_users(count: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Users with an event every 2-10 minutes over a day."""
    rows = []
    for u in range(count):
        ts = T0 + int(rng.integers(0, 600)) * SEC
        for _ in range(40):
            rows.append({"user_id": f"n{u}", "ts": ts})
            ts += int(rng.integers(120, 600)) * SEC
    return rows


def test_planted_burst_of_100_events_in_30_seconds_is_flagged() -> None:
    rng = np.random.default_rng(2)
    bot = [{"user_id": "bot", "ts": T0 + 3600 * SEC + i * 300_000} for i in range(100)]
    out = bursts(log(_normal_users(30, rng) + bot))
    flagged = out.filter(pl.col("burst"))["user_id"].to_list()
    assert flagged == ["bot"]
    assert out.filter(pl.col("user_id") == "bot")["max_events_per_window"][0] == 100
    normal = out.filter(pl.col("user_id") != "bot")["max_events_per_window"].to_list()
    assert max(normal) <= 2


def test_burst_threshold_is_strict() -> None:
    def user(name: str, n: int) -> list[dict[str, Any]]:
        return [{"user_id": name, "ts": T0 + i * SEC} for i in range(n)]

    out = bursts(log(user("at_limit", 30) + user("over", 31)), threshold=30, mad_k=None)
    assert dict(out.select("user_id", "burst").iter_rows()) == {"at_limit": False, "over": True}


def test_robust_outlier_below_the_threshold_is_flagged_only_with_the_mad_rule() -> None:
    rng = np.random.default_rng(4)
    sprint = [{"user_id": "sprint", "ts": T0 + 5000 * SEC + i * 2 * SEC} for i in range(20)]
    events = log(_normal_users(30, rng) + sprint)
    counts = bursts(events, mad_k=None)
    assert not counts["burst"].any(), "20 events a minute is under the absolute threshold"
    assert robust_limit(counts) < 20
    robust = bursts(events)
    assert robust.filter(pl.col("burst"))["user_id"].to_list() == ["sprint"]


def test_max_events_per_window_equals_brute_force() -> None:
    rng = np.random.default_rng(5)
    pairs = [(f"u{rng.integers(0, 6)}", T0 + int(rng.integers(0, 400)) * SEC)
             for _ in range(300)]
    window = 30 * SEC
    rows = [{"user_id": u, "ts": t} for u, t in pairs]
    got = dict(bursts(log(rows), window_us=window).select("user_id", "max_events_per_window")
               .iter_rows())
    for user in {u for u, _ in pairs}:
        ts = [t for u, t in pairs if u == user]
        want = max(sum(1 for s in ts if t - window < s <= t) for t in ts)
        assert got[user] == want, user


def test_user_signals_columns_rows_and_time_cut() -> None:
    bot = [{"user_id": "bot", "ts": T0 + DAY_US + i * 100_000, "category": "A"}
           for i in range(50)]
    quiet = [{"user_id": "quiet", "ts": T0 + i * 3600 * SEC} for i in range(5)]  # no category
    out = user_signals(log(bot + quiet), at=T0 + DAY_US // 2)
    assert out.schema == pl.Schema(SIGNAL_SCHEMA)
    assert out["user_id"].to_list() == ["quiet"], "the bot's events all lie after `at`"
    assert out["interest_shift"].to_list() == [None]
    later = user_signals(log(bot + quiet), at=T0 + 2 * DAY_US)
    assert later["user_id"].to_list() == ["bot", "quiet"]
    assert later["burst"].to_list() == [True, False]
    assert later["interest_shift"][0] == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- PSI (pure)


def test_psi_matches_a_hand_computation() -> None:
    ref = pl.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]})
    cur = pl.DataFrame({"x": [1.0, 1.0, 1.0, 4.0]})
    # edges: median 2.5 -> bins (-inf, 2.5], (2.5, inf), null; shares .5/.5/0 vs .75/.25/0
    want = 0.25 * math.log(1.5) - 0.25 * math.log(0.5)
    row = psi(ref, cur, bins=2).row(0, named=True)
    assert row == {"feature": "x", "psi": pytest.approx(want, rel=1e-12),
                   "level": "significant", "bins": 2}


def test_psi_same_distribution_is_stable_and_a_shift_is_significant() -> None:
    rng = np.random.default_rng(0)
    n = 5000
    ref = pl.DataFrame({"x": rng.lognormal(3, 1, n), "k": rng.poisson(3, n)})
    same = pl.DataFrame({"x": rng.lognormal(3, 1, n), "k": rng.poisson(3, n)})
    moved = pl.DataFrame({"x": rng.lognormal(4, 1, n), "k": rng.poisson(6, n)})
    stable = psi(ref, same)
    assert stable["level"].to_list() == ["stable", "stable"], stable
    assert stable["psi"].max() < 0.02  # type: ignore[operator]
    shifted = psi(ref, moved)
    assert shifted["level"].to_list() == ["significant", "significant"], shifted
    assert psi(ref, moved, columns=["k"])["feature"].to_list() == ["k"]


def test_psi_ties_constant_columns_nulls_and_empty_frames() -> None:
    const = pl.DataFrame({"c": [0.0] * 100})
    assert psi(const, const).row(0) == ("c", 0.0, "stable", 2)
    assert psi(const, pl.DataFrame({"c": [1.0] * 100}))["level"][0] == "significant"
    # a point mass at 0 (90%) keeps its own bin instead of swallowing the other values
    heavy = pl.DataFrame({"c": [0.0] * 90 + list(range(1, 11))}, schema={"c": pl.Float64})
    assert psi(heavy, heavy)["bins"][0] >= 2
    # nulls are a bin of their own: half the current values missing is a shift
    nulls = pl.DataFrame({"c": [0.0] * 50 + [None] * 50}, schema={"c": pl.Float64})
    assert psi(const, nulls)["level"][0] == "significant"
    assert psi(nulls, nulls)["psi"][0] == pytest.approx(0.0)
    empty = const.clear()
    assert psi(empty, const).row(0) == ("c", None, "empty", 0)
    with pytest.raises(ValueError, match="2 bins"):
        psi(const, const, bins=1)


def test_psi_levels() -> None:
    assert [psi_level(v) for v in (0.0, 0.099, 0.1, 0.249, 0.25, 3.0, None)] == [
        "stable", "stable", "moderate", "moderate", "significant", "significant", "empty"]


def test_psi_expands_keyed_columns_into_their_top_keys() -> None:
    rng = np.random.default_rng(9)
    dtype = pl.List(pl.Struct({"key": pl.String, "value": pl.Float64}))

    def maps(n: int, a_scale: float) -> pl.DataFrame:
        rows = [[{"key": "a", "value": float(rng.exponential(a_scale))},
                 {"key": "b", "value": float(rng.exponential(1.0))}] for _ in range(n)]
        rows += [[{"key": "rare", "value": 1.0}]]
        return pl.DataFrame({"user_id": [f"u{i}" for i in range(n + 1)], "m": rows},
                            schema={"user_id": pl.String, "m": dtype})

    ref, moved = maps(3000, 1.0), maps(3000, 5.0)
    out = dict(psi(ref, moved, top_keys=2).select("feature", "level").iter_rows())
    assert out == {"m['a']": "significant", "m['b']": "stable"}


# ---------------------------------------------------------------- population drift (engine)

SPEC = """\
version: 1
features:
  n_30d:      {kind: count, window: 30d}
  spend_30d:  {kind: sum, field: price, where: {type: [purchase]}, window: 30d}
  last_seen:  {kind: last, field: ts}
  last_item:  {kind: last, field: item_id}
  affinity:   {kind: decayed, key: category, half_life: 1d}
"""


def _month(start: int, users: int, rng: np.random.Generator, *, shifted: bool) -> pl.DataFrame:
    """Each user: Poisson(4) purchases in 30 days; shifted = pricier and into category B."""
    per_user = rng.poisson(4, users) + 1
    n = int(per_user.sum())
    mu = 4.0 if shifted else 3.0
    b_share = 0.8 if shifted else 0.2
    return pl.DataFrame({
        "event_id": [f"{start}-{i}" for i in range(n)],
        "user_id": np.repeat([f"u{u}" for u in range(users)], per_user),
        "ts": start + rng.integers(0, 30 * DAY_US, n),
        "type": "purchase",
        "item_id": [f"i{k}" for k in rng.integers(0, 50, n)],
        "category": np.where(rng.random(n) < b_share, "B", "A"),
        "price": rng.lognormal(mu, 0.5, n),
    }).cast({"ts": pl.Int64}).with_columns(
        pl.lit(None, EVENT_SCHEMA[c]).alias(c) for c in EVENT_SCHEMA
        if c not in ("event_id", "user_id", "ts", "type", "item_id", "category", "price")
    ).select(list(EVENT_SCHEMA))


@pytest.fixture(scope="module", params=[False, True], ids=["stationary", "planted_shift"])
def two_months(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    rng = np.random.default_rng(11)
    users = 800
    db = tmp_path_factory.mktemp("drift") / "db"
    with open_store(db, writer=True) as store:
        engine = Engine(parse_spec(SPEC), store)
        engine.ingest_events(_month(T0, users, rng, shifted=False))
        engine.ingest_events(_month(T0 + 30 * DAY_US, users, rng, shifted=request.param))
    return db, request.param


def test_population_drift_fires_on_a_planted_shift_and_not_without(two_months: Any) -> None:
    db, shifted = two_months
    with open_store(db) as store:
        engine = Engine(None, store)
        table = population_drift(engine, T0 + 30 * DAY_US - 1, T0 + 60 * DAY_US - 1)
    levels = dict(table.select("feature", "level").iter_rows())
    assert set(levels) == {"n_30d", "spend_30d", "age_days(last_seen)",
                           "affinity['A']", "affinity['B']"}, "strings skipped, maps expanded"
    assert levels["n_30d"] == "stable"  # same activity in both months
    assert levels["age_days(last_seen)"] == "stable"
    moved = ("spend_30d", "affinity['A']", "affinity['B']")
    for name in moved:
        assert levels[name] == ("significant" if shifted else "stable"), table


def test_population_drift_reference_holds_only_users_active_by_then(tmp_path: Path) -> None:
    """A user whose first event comes after the reference time is not in its population."""
    rng = np.random.default_rng(12)
    with open_store(tmp_path / "db", writer=True) as store:
        engine = Engine(parse_spec(SPEC), store)
        engine.ingest_events(_month(T0, 200, rng, shifted=False))
        late = _month(T0 + 30 * DAY_US, 400, rng, shifted=False)  # users u200.. are new
        engine.ingest_events(late.filter(pl.col("user_id").str.slice(1).cast(pl.Int64) >= 200))
        table = population_drift(engine, T0 + 30 * DAY_US - 1, T0 + 60 * DAY_US - 1)
        # all 200 reference users are quiet in month 2: their 30d windows empty out
        levels = dict(table.select("feature", "level").iter_rows())
        assert levels["n_30d"] == "significant"
        report = drift_report(engine, T0 + 30 * DAY_US - 1, T0 + 60 * DAY_US - 1, top=3)
    assert set(report) == {"ref", "at", "population", "interest_shift", "bursts", "burst_rule"}
    assert len(report["interest_shift"]) == 3
    assert report["bursts"] == []
