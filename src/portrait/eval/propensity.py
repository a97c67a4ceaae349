"""``propensity``: P(purchase in the next horizon) from the profile at ``T``.

Examples: every customer with a purchase on or before ``T``; label: at least
one purchase in ``(T, T + horizon]``. Every model is fitted point-in-time on
the profiles read at ``T - horizon`` with labels from ``(T - horizon, T]``
(all known at ``T``), and its F1 threshold is the one that maximised F1 on
that training data. Profiles come from the engine replay.

* ``rfm`` (baseline): the classic score — recency, frequency and monetary
  quintiles (1–5 each) summed — calibrated by a logistic regression.
* ``static_profile`` (baseline): the decayed-profile model applied to the
  profiles of the first cut, never updated.
* ``decayed h=H`` (dynamic): a logistic regression on the log decayed
  purchase count at half-life ``H``; ``decayed profile`` uses every
  half-life plus recency, frequency and spend, also at every refresh
  interval (the freshness-value curve).
* ``lightgbm`` (dynamic): :class:`portrait.models.propensity.PropensityModel`
  — LightGBM with held-out isotonic calibration — on the ``decayed
  profile`` features, refitted point-in-time at every cut; its F1 threshold
  is the one that maximised F1 on its held-out calibration rows.
* ``river online`` (dynamic): ``OnlinePropensity`` from the same module —
  River scaler + logistic regression — on the same features, one model for
  the whole replay: at cut ``T`` it first learns (one pass, seeded
  shuffle) the examples read at ``T - horizon`` whose labels ``(T -
  horizon, T]`` just became known, so it has learned every earlier cut's
  examples and nothing whose outcome ends after ``T``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from portrait.eval import metrics as M
from portrait.eval.protocol import REFRESH_EVENT, Progress, Protocol
from portrait.eval.ranking import hl_tag
from portrait.eval.replay import USER, Replay, SnapshotRequest, cut_requests
from portrait.events.schema import DeadLetter
from portrait.models.propensity import LABEL, OnlinePropensity, PropensityModel
from portrait.spec.loader import parse_spec
from portrait.timeutil import format_us

US_PER_DAY = 86_400_000_000
CALIBRATED = ("rfm", "decayed profile", "lightgbm", "river online")  # calibration curves


def propensity_spec(half_lives: tuple[str, ...]) -> str:
    lines = [
        "version: 1",
        "features:",
        "  orders: {kind: count, where: {type: [purchase]}}",
        "  spend: {kind: sum, field: price, where: {type: [purchase]}}",
        "  last_order: {kind: last, field: ts, where: {type: [purchase]}}",
    ]
    lines += [
        f"  orders_h{hl_tag(h)}: {{kind: decayed, half_life: {h}, "
        "weights: {purchase: 1}, default: 0}"
        for h in half_lives
    ]
    return "\n".join(lines) + "\n"


def _columns(proto: Protocol) -> list[str]:
    return ["orders", "spend", "last_order"] + [f"orders_h{hl_tag(h)}" for h in proto.half_lives]


def _labels(events: pl.DataFrame, users: pl.Series, lo: int, hi: int) -> np.ndarray:
    buyers = events.filter((pl.col("ts") > lo) & (pl.col("ts") <= hi)).select(USER).unique()
    return users.is_in(buyers[USER].implode()).to_numpy().astype(np.int8)


def _recency_days(frame: pl.DataFrame, at: int) -> np.ndarray:
    out: np.ndarray = (at - frame["last_order"].cast(pl.Int64).fill_null(0).to_numpy()) / US_PER_DAY
    return out


def rfm_score(frame: pl.DataFrame, at: int) -> np.ndarray:
    """R + F + M quintile scores (each 1–5, 5 best) of the profiles in ``frame``."""
    recency = _recency_days(frame, at)
    freq = frame["orders"].fill_null(0).to_numpy().astype(np.float64)
    money = frame["spend"].fill_null(0).to_numpy() / np.maximum(freq, 1.0)
    out: np.ndarray = _quintile(-recency) + _quintile(freq) + _quintile(money)
    return out


def _quintile(v: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    out: np.ndarray = np.ceil(rankdata(v) / max(len(v), 1) * 5).clip(1, 5)
    return out


def _features(frame: pl.DataFrame, at: int, proto: Protocol, only: str | None) -> np.ndarray:
    if only is not None:
        one: np.ndarray = np.log1p(frame[f"orders_h{hl_tag(only)}"].fill_null(0).to_numpy())
        return one[:, None]
    cols = [np.log1p(frame[f"orders_h{hl_tag(h)}"].fill_null(0).to_numpy())
            for h in proto.half_lives]
    cols.append(np.log1p(np.maximum(_recency_days(frame, at), 0)))
    cols.append(np.log1p(frame["orders"].fill_null(0).to_numpy()))
    cols.append(np.log1p(frame["spend"].fill_null(0).to_numpy()))
    return np.stack(cols, axis=1)


def _feature_names(proto: Protocol) -> list[str]:
    """The columns of ``_features(..., only=None)``, for the models that take frames."""
    decayed = [f"log_orders_h{hl_tag(h)}" for h in proto.half_lives]
    return [*decayed, "log_recency_days", "log_orders", "log_spend"]


def _feature_frame(frame: pl.DataFrame, at: int, proto: Protocol,
                   y: np.ndarray | None = None) -> pl.DataFrame:
    x = pl.DataFrame(_features(frame, at, proto, None), schema=_feature_names(proto),
                     orient="row")
    return x if y is None else x.with_columns(pl.Series(LABEL, y))


def _fit(x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    model = make_pipeline(StandardScaler(), LogisticRegression(random_state=seed, max_iter=1000))
    model.fit(x, y)
    return model


def evaluate(
    events: pl.DataFrame,
    proto: Protocol,
    workdir: Path,
    progress: Progress | None = None,
    rejects: Sequence[DeadLetter] = (),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every method over every cut; ``events`` validated, ``rejects`` dead-lettered."""
    say = progress or (lambda _m: None)
    h = proto.horizon_us
    reqs: list[SnapshotRequest] = []
    for cut in proto.cuts_us:
        users = events.filter(pl.col("ts") <= cut).select(USER).unique().sort(USER)[USER]
        reqs.extend(cut_requests(proto, cut, users))
    first = proto.cuts_us[0]
    reqs.append(SnapshotRequest(("static", first), first, None))
    spec = parse_spec(propensity_spec(proto.half_lives), source="<eval spec>")
    say(f"replaying {events.height:,} events through the engine ({len(reqs)} snapshot reads)")
    with Replay(spec, events, workdir, rejects) as replay:
        snaps = replay.snapshots(reqs, _columns(proto))
        batches = replay.batches

    scores: dict[tuple[str, str, str | None, str | None], list[tuple[np.ndarray, ...]]] = {}
    codes = events.select(USER).unique().sort(USER).with_row_index("g")
    static: tuple[Any, float] | None = None
    online = OnlinePropensity(_feature_names(proto), horizon=proto.horizon)
    for cut in proto.cuts_us:
        say(f"scoring cut {format_us(cut)}")
        train = snaps[("train", cut)].filter(pl.col("orders") > 0)
        train_at = cut - h
        y_train = _labels(events, train[USER], train_at, cut)
        fresh = snaps[(cut, REFRESH_EVENT)].sort(USER)
        y = _labels(events, fresh[USER], cut, cut + h)
        groups = fresh.select(USER).join(codes, on=USER, how="left")["g"].to_numpy()

        def add(key: tuple[str, str, str | None, str | None], p: np.ndarray, thr: float,
                y: np.ndarray = y, groups: np.ndarray = groups) -> None:
            scores.setdefault(key, []).append((y, p, (p >= thr).astype(np.int8), groups))

        def fit(x: np.ndarray, y_train: np.ndarray = y_train) -> tuple[Any, float]:
            model = _fit(x, y_train, proto.seed)
            return model, M.best_f1_threshold(y_train, model.predict_proba(x)[:, 1])

        rfm, thr = fit(rfm_score(train, train_at)[:, None])
        add(("rfm", "baseline", None, None),
            rfm.predict_proba(rfm_score(fresh, cut)[:, None])[:, 1], thr)
        for hl in proto.half_lives:
            model, thr = fit(_features(train, train_at, proto, hl))
            add((f"decayed h={hl}", "dynamic", hl, REFRESH_EVENT),
                model.predict_proba(_features(fresh, cut, proto, hl))[:, 1], thr)
        model, thr = fit(_features(train, train_at, proto, None))
        static = static or (model, thr)
        for refresh in proto.refresh:
            snap = snaps[(cut, refresh)].sort(USER)
            add(("decayed profile", "dynamic", "all", refresh),
                model.predict_proba(_features(snap, cut, proto, None))[:, 1], thr)
        ordered = train.sort(USER)  # row order matters to these models; the read order varies
        y_ordered = _labels(events, ordered[USER], train_at, cut)
        _add_models(add, online, proto, _feature_frame(ordered, train_at, proto, y_ordered),
                    _feature_frame(fresh, cut, proto))
        # the first cut's profiles and model, never updated
        s_frame = fresh.select(USER).join(snaps[("static", first)], on=USER, how="left")
        add(("static_profile", "baseline", None, None),
            static[0].predict_proba(_features(s_frame, first, proto, None))[:, 1], static[1])
    rows, calib = _rows(scores, proto)
    info = {"n_events": events.height, "replay_batches": batches, "calibration": calib}
    return rows, info


def _add_models(add: Callable[..., None], online: OnlinePropensity, proto: Protocol,
                train: pl.DataFrame, fresh: pl.DataFrame) -> None:
    """``lightgbm`` refitted on this cut's training rows; ``river online`` learns them."""
    key = ("all", REFRESH_EVENT)
    gbm = PropensityModel(_feature_names(proto), horizon=proto.horizon, seed=proto.seed)
    gbm.fit(train)
    add(("lightgbm", "dynamic", *key), gbm.predict(fresh), gbm.threshold)
    online.update(train.sample(fraction=1.0, shuffle=True, seed=proto.seed))
    thr = M.best_f1_threshold(train[LABEL].to_numpy(), online.predict(train))
    add(("river online", "dynamic", *key), online.predict(fresh), thr)


def _rows(scores: dict[tuple[str, str, str | None, str | None], list[tuple[np.ndarray, ...]]],
          proto: Protocol) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    calib: dict[str, Any] = {}
    for (method, kind, hl, refresh), parts in scores.items():
        y, p, pred, groups = (np.concatenate([part[j] for part in parts]) for j in range(4))
        stats = {
            "auc": (M.roc_auc, (y, p)),
            "f1": (M.f1, (y, pred)),
            "brier": (M.brier, (y, p)),
        }
        name = method if refresh in (None, REFRESH_EVENT) or method != "decayed profile" \
            else f"{method} refresh={refresh}"
        for metric, (fn, arrays) in stats.items():
            n_boot = max(proto.n_bootstrap // 5, 50)
            value, lo, hi = M.bootstrap_stat(fn, arrays, groups, n_boot=n_boot, seed=proto.seed)
            rows.append({
                "task": "propensity", "method": name, "kind": kind, "metric": metric,
                "value": float(value), "ci_low": float(lo), "ci_high": float(hi),
                "n_users": len(np.unique(groups)), "users": "warm",
                "half_life": hl, "refresh": refresh, "n_examples": len(y),
            })
        if refresh in (None, REFRESH_EVENT) and method in CALIBRATED:
            calib[method] = M.calibration_bins(y, p, 10)
    return rows, calib
