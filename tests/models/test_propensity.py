"""Propensity models: signal found, calibration sane, online state exact, point-in-time."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from tests.eval import synth
from tests.models.cases_models import FEATURES, purchases

from portrait.engine import Engine
from portrait.errors import UsageError
from portrait.eval.metrics import roc_auc
from portrait.eval.propensity import propensity_spec
from portrait.eval.replay import validated_events
from portrait.models.propensity import (
    OnlinePropensity,
    PropensityModel,
    best_f1_threshold,
    feature_matrix,
    target_name,
    training_frame,
)
from portrait.spec.loader import parse_spec
from portrait.store import open_store

DAY = synth.DAY_US


def _labels(frame: pl.DataFrame) -> np.ndarray:
    out: np.ndarray = frame["label"].to_numpy()
    return out


@pytest.fixture(scope="module")
def gbm() -> PropensityModel:
    return PropensityModel(FEATURES, horizon="30d", seed=0).fit(purchases(3000, 1))


def test_the_batch_model_finds_a_planted_signal(gbm: PropensityModel) -> None:
    test = purchases(3000, 2)
    assert roc_auc(_labels(test), gbm.predict(test)) > 0.8
    noise = PropensityModel(("noise",), seed=0).fit(purchases(3000, 1))
    assert abs(roc_auc(_labels(test), noise.predict(test)) - 0.5) < 0.06


def test_isotonic_output_is_a_monotone_map_of_the_score_into_0_1(gbm: PropensityModel) -> None:
    test = purchases(3000, 3)
    raw, p = gbm.scores(test), gbm.predict(test)
    assert np.all((p >= 0.0) & (p <= 1.0))
    assert np.all(np.diff(p[np.argsort(raw, kind="stable")]) >= 0.0)
    # calibrated: predicted and observed rates agree in each fifth of the scores
    y = _labels(test)
    for part in np.array_split(np.argsort(p), 5):
        assert abs(p[part].mean() - y[part].mean()) < 0.07
    assert 0.0 < gbm.threshold < 1.0


def test_the_batch_model_persists_as_text_npz_and_json(
    gbm: PropensityModel, tmp_path: Path
) -> None:
    gbm.save(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["features"] == list(FEATURES)
    assert (meta["horizon"], meta["name"]) == ("30d", "p_purchase_30d")
    assert meta["trained_at"] == 2_000_000
    assert (tmp_path / "model.txt").read_text().startswith("tree")
    loaded = PropensityModel.load(tmp_path)
    test = purchases(200, 4)
    assert np.array_equal(loaded.predict(test), gbm.predict(test))
    assert loaded.threshold == gbm.threshold


def test_the_online_model_learns_and_continues_exactly_after_load(tmp_path: Path) -> None:
    model = OnlinePropensity(FEATURES, lr=0.05).fit(purchases(2000, 1))
    test = purchases(2000, 2)
    assert roc_auc(_labels(test), model.predict(test)) > 0.8
    model.save(tmp_path)
    loaded = OnlinePropensity.load(tmp_path)
    for r in range(5):
        batch = purchases(37, 10 + r)
        model.update(batch)
        loaded.update(batch)
        assert np.array_equal(model.predict(test), loaded.predict(test))
    assert model.state() == loaded.state()
    assert model.n_learned == 2000 + 5 * 37


def _reference_online(frame: pl.DataFrame, lr: float) -> tuple[dict[str, float], float]:
    """Welford scaling, then one logistic SGD step per row (intercept step 0.01), by hand."""
    n = dict.fromkeys(FEATURES, 0)
    mean = dict.fromkeys(FEATURES, 0.0)
    var = dict.fromkeys(FEATURES, 0.0)
    w, b = dict.fromkeys(FEATURES, 0.0), 0.0
    for row in frame.iter_rows(named=True):
        x = {f: float(row[f]) for f in FEATURES if row[f] is not None}
        for f, v in x.items():
            n[f] += 1
            old = mean[f]
            mean[f] += (v - old) / n[f]
            var[f] += ((v - old) * (v - mean[f]) - var[f]) / n[f]
        z = {f: (v - mean[f]) / math.sqrt(var[f]) if var[f] else 0.0 for f, v in x.items()}
        g = 1.0 / (1.0 + math.exp(-(b + sum(w[f] * v for f, v in z.items())))) - row["label"]
        b -= 0.01 * g
        for f, v in z.items():
            w[f] -= lr * g * v
    return w, b


def test_the_online_model_equals_a_hand_written_reference() -> None:
    frame = purchases(300, 5)
    model = OnlinePropensity(FEATURES, lr=0.05).fit(frame)
    w, b = _reference_online(frame, 0.05)
    state = model.state()
    assert state["intercept"] == pytest.approx(b, rel=1e-9, abs=1e-12)
    for f in FEATURES:
        assert state["weights"][f] == pytest.approx(w[f], rel=1e-9, abs=1e-12)


def test_memory_of_the_online_model_is_fixed_by_its_features() -> None:
    model = OnlinePropensity(FEATURES).fit(purchases(100, 1))
    assert model.nbytes() == 8 * (4 * len(FEATURES) + 2)


def test_bad_frames_are_refused_by_name() -> None:
    with pytest.raises(UsageError, match="orders"):
        feature_matrix(pl.DataFrame({"x": [1.0]}), ["orders"])
    one_class = purchases(100, 1).with_columns(pl.lit(1, dtype=pl.Int8).alias("label"))
    with pytest.raises(UsageError, match="every label is 1"):
        PropensityModel(FEATURES).fit(one_class)
    with pytest.raises(UsageError, match="not fitted"):
        PropensityModel(FEATURES).predict(purchases(5, 1))
    with pytest.raises(UsageError, match=r"not numeric.*last_seen"):
        feature_matrix(pl.DataFrame({"last_seen": ["2020-01-01"]}), ["last_seen"])
    assert np.isnan(feature_matrix(pl.DataFrame({"a": [1, None]}), ["a"])[1, 0])


def test_target_names_and_the_f1_threshold() -> None:
    assert target_name("purchase", "90d") == "p_purchase_90d"
    assert target_name("churn", "720h") == "p_churn_30d"
    y, p = np.array([0, 1, 1, 0, 1]), np.array([0.1, 0.9, 0.8, 0.7, 0.2])
    assert best_f1_threshold(y, p) == 0.2  # 3 TP, 1 FP: F1 6/7 beats 0.8 at t = 0.8
    assert best_f1_threshold(np.zeros(3), p[:3]) == 1.0


# --------------------------------------------------------------------------- point in time


def _engine(tmp: Path, events: pl.DataFrame) -> Engine:
    spec = parse_spec(propensity_spec(("30d",)), source="<t>")
    engine = Engine(spec, open_store(tmp, writer=True))
    engine.ingest_events(events)
    return engine


def test_training_frame_features_at_t_ignore_planted_future_events(tmp_path: Path) -> None:
    events, _ = validated_events(synth.purchases(n_users=60, days=300), source="t")
    t = int(np.quantile(events["ts"].to_numpy(), 0.5))
    users = events.filter(pl.col("ts") <= t)["user_id"].unique().sort()
    buyer, quiet = users[0], users[1]
    planted = events.filter(pl.col("user_id") == quiet).head(1).with_columns(
        pl.lit(t + 5 * DAY).alias("ts"), pl.lit("planted").alias("event_id"),
        pl.lit(1000.0).alias("price"),
    )
    stranger = planted.with_columns(pl.lit("stranger").alias("user_id"),
                                    pl.lit("planted:s").alias("event_id"))
    dirty = pl.concat([events, planted, stranger]).sort("ts")
    clean_engine = _engine(tmp_path / "clean", events)
    dirty_engine = _engine(tmp_path / "dirty", dirty)
    clean = training_frame(clean_engine, events, t, "30d")
    got = training_frame(dirty_engine, dirty, t, "30d")
    features = [c for c in got.columns if c != "label"]
    assert got.select(features).equals(clean.select(features))  # nothing after t leaks in
    assert "stranger" not in got["user_id"].to_list()
    assert got.filter(pl.col("user_id") == quiet)["label"].item() == 1
    assert got["at"].unique().to_list() == [t]
    # labels: a purchase in (t, t + 30d]; churn: no event at all in that window
    window = dirty.filter((pl.col("ts") > t) & (pl.col("ts") <= t + 30 * DAY))
    active = set(window["user_id"].to_list())
    assert got["label"].to_list() == [int(u in active) for u in got["user_id"]]
    churn = training_frame(dirty_engine.read_at, dirty, t, 30 * DAY, target="churn")
    assert churn["label"].to_list() == [int(u not in active) for u in churn["user_id"]]
    assert buyer in got["user_id"].to_list()
    clean_engine.store.close()
    dirty_engine.store.close()
