"""Propensity: P(purchase in the next N days) and P(churn in the next N days).

Targets (``target_name``): ``p_purchase_{N}d`` — at least one event of the
purchase type in ``(t, t + N days]``; ``p_churn_{N}d`` — no event of any type
in ``(t, t + N days]`` for a user with an event at or before ``t``.

Examples are point-in-time (:func:`training_frame`): the features are the
profile values read at ``t`` (only events with ``ts <= t``, the engine's
exact time travel), the label comes from ``(t, t + horizon]``. A model
trained at ``t`` may only be used once ``t + horizon`` has passed.

Features are named numeric columns of a Polars frame (:func:`feature_matrix`:
integers, floats and booleans as float64, null and missing values NaN); the
models list the columns they use and refuse frames that lack one. Turn
timestamps into ages (seconds or days before ``t``) before a model sees them.

* :class:`PropensityModel` (batch): a small LightGBM binary classifier
  (deterministic: fixed seed, one thread, ``min_data_in_leaf`` scaled to the
  data) fitted on a seeded ``1 - holdout`` share of the rows; an isotonic
  regression fitted on the held-out rows maps its scores to calibrated
  probabilities, kept as two threshold arrays (``np.interp``, clipped at the
  ends), and ``threshold`` is the probability that maximised F1 on the
  held-out rows. ``update`` refits from scratch on the new snapshot: a batch
  model is retrained, not patched. Persisted as LightGBM text, an npz of the
  isotonic arrays (no pickle) and a JSON meta file (feature names, horizon,
  target, ``trained_at`` = the snapshot time of the training rows).
* :class:`OnlinePropensity`: River's ``StandardScaler`` followed by a River
  ``LogisticRegression`` (plain SGD), learning one row at a time, in frame
  order, as outcomes become known (``learn_one``; a missing value is an
  absent key, i.e. the running mean). Persisted as JSON: the scaler's
  counts, means and variances, the weights, the intercept and the
  optimizer's step count — everything the next step depends on, so a
  loaded model keeps learning exactly as the original would.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, Self, runtime_checkable

import lightgbm as lgb
import numpy as np
import polars as pl
from river import linear_model, optim, preprocessing, utils
from sklearn.isotonic import IsotonicRegression

from portrait.errors import UsageError
from portrait.timeutil import parse_duration

USER = "user_id"
LABEL = "label"
AT = "at"
DAY_US = 86_400_000_000
Target = Literal["purchase", "churn"]


@runtime_checkable
class ReadsAt(Protocol):
    """Anything that reads profile values as of a time (``Engine.read_at``)."""

    def read_at(self, at: int | None = None, user_ids: list[str] | None = None) -> pl.DataFrame:
        ...


def target_name(target: Target, horizon: str) -> str:
    """``p_purchase_90d`` / ``p_churn_30d``: what a model's probability means."""
    days = parse_duration(horizon) / DAY_US
    span = f"{int(days)}d" if days == int(days) else horizon
    return f"p_{target}_{span}"


def feature_matrix(frame: pl.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """``frame[columns]`` as a float64 matrix, null -> NaN; a missing column is an error."""
    lacking = [c for c in columns if c not in frame.columns]
    if lacking:
        raise UsageError(f"feature column(s) {lacking} not in frame (has {frame.columns})")
    if not columns:
        return np.empty((frame.height, 0))
    odd = {c: str(frame.schema[c]) for c in columns if not _numeric(frame.schema[c])}
    if odd:
        raise UsageError(f"feature column(s) not numeric: {odd} (turn times into ages first)")
    cast = frame.select(pl.col(c).cast(pl.Float64).fill_null(math.nan) for c in columns)
    out: np.ndarray = cast.to_numpy().astype(np.float64, copy=False)
    return out


def _numeric(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() or dtype in (pl.Boolean, pl.Null)


def _epoch_us(events: pl.DataFrame) -> pl.Expr:
    ts = pl.col("ts")
    return ts.dt.epoch("us") if isinstance(events.schema["ts"], pl.Datetime) else ts.cast(pl.Int64)


def training_frame(
    reads: ReadsAt | Callable[[int], pl.DataFrame],
    events: pl.DataFrame,
    at: int,
    horizon: str | int,
    *,
    target: Target = "purchase",
    purchase: str = "purchase",
) -> pl.DataFrame:
    """Point-in-time examples: profile values read at ``at`` + ``at`` + ``label``.

    ``reads`` is an engine (``read_at``) or a function ``at -> values``; it
    must answer from events with ``ts <= at`` only (the engine's reads do).
    Users: those with an event at or before ``at`` in ``events``. Labels from
    ``events`` in ``(at, at + horizon]`` (``horizon`` in µs or ``"90d"``).
    """
    h = parse_duration(horizon) if isinstance(horizon, str) else int(horizon)
    ts = events.select(USER, "type", _epoch_us(events).alias("ts"))
    users = ts.filter(pl.col("ts") <= at).select(USER).unique()
    window = ts.filter((pl.col("ts") > at) & (pl.col("ts") <= at + h))
    if target == "purchase":
        window = window.filter(pl.col("type") == purchase)
    hit = users[USER].is_in(window[USER].unique().implode())
    label = ~hit if target == "churn" else hit
    values = reads.read_at(at) if isinstance(reads, ReadsAt) else reads(at)
    examples = users.with_columns(label.cast(pl.Int8).alias(LABEL),
                                  pl.lit(at, dtype=pl.Int64).alias(AT))
    return values.join(examples, on=USER, how="inner").sort(USER)


def _labels(frame: pl.DataFrame) -> np.ndarray:
    if LABEL not in frame.columns:
        raise UsageError(f"training frame needs a {LABEL!r} column (has {frame.columns})")
    y: np.ndarray = frame[LABEL].cast(pl.Float64).to_numpy()
    if y.size == 0 or np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        raise UsageError(f"{LABEL!r} must be 0/1 without nulls ({y.size} rows)")
    return y


def _trained_at(frame: pl.DataFrame) -> int | None:
    return int(frame[AT].max()) if AT in frame.columns and frame.height else None  # type: ignore[arg-type]


def best_f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The highest probability ``t`` maximising F1 of ``p >= t`` (1.0 with no positives)."""
    if not y.any():
        return 1.0
    order = np.argsort(-p, kind="stable")
    ps, tp = p[order], np.cumsum(y[order])
    last = np.r_[ps[1:] != ps[:-1], True]  # cut only between distinct scores
    k = np.arange(1, len(ps) + 1)
    f1 = 2 * tp / (k + y.sum())
    return float(ps[last][int(np.argmax(f1[last]))])


class PropensityModel:
    """LightGBM + held-out isotonic calibration on point-in-time snapshots (see module doc)."""

    def __init__(
        self,
        features: Sequence[str],
        *,
        horizon: str = "90d",
        target: Target = "purchase",
        seed: int = 0,
        rounds: int = 150,
        holdout: float = 0.25,
    ) -> None:
        self.features = tuple(features)
        self.horizon, self.target, self.seed = horizon, target, seed
        self.rounds, self.holdout = rounds, holdout
        self.trained_at: int | None = None
        self.threshold = 0.5
        self._booster: lgb.Booster | None = None
        self._text = ""
        self._iso_x = np.zeros(0)
        self._iso_y = np.zeros(0)

    @property
    def name(self) -> str:
        return target_name(self.target, self.horizon)

    def _params(self, n_rows: int) -> dict[str, Any]:
        return {
            "objective": "binary", "learning_rate": 0.05, "num_leaves": 15,
            "min_data_in_leaf": max(5, min(50, n_rows // 50)), "lambda_l2": 1.0,
            "seed": self.seed, "deterministic": True, "force_col_wise": True,
            "num_threads": 1, "verbose": -1,
        }

    def fit(self, frame: pl.DataFrame) -> Self:
        x, y = feature_matrix(frame, self.features), _labels(frame)
        if y.min() == y.max():
            raise UsageError(f"{self.name}: every label is {y[0]:.0f}; nothing to learn")
        order = np.random.default_rng(self.seed).permutation(len(y))
        n_cal = min(max(1, round(len(y) * self.holdout)), len(y) - 1)
        cal, fit = order[:n_cal], order[n_cal:]
        data = lgb.Dataset(x[fit], y[fit], feature_name=list(self.features), free_raw_data=True)
        booster = lgb.train(self._params(len(fit)), data, num_boost_round=self.rounds)
        self._set_booster(booster.model_to_string())
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(self._raw(x[cal]), y[cal])
        self._iso_x = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self._iso_y = np.asarray(iso.y_thresholds_, dtype=np.float64)
        self.threshold = best_f1_threshold(y[cal], self._calibrate(self._raw(x[cal])))
        self.trained_at = _trained_at(frame)
        return self

    def update(self, frame: pl.DataFrame) -> None:
        """Refit from scratch on ``frame``, the newest point-in-time snapshot."""
        self.fit(frame)

    def _set_booster(self, text: str) -> None:
        self._text = text
        self._booster = lgb.Booster(model_str=text)

    def _raw(self, x: np.ndarray) -> np.ndarray:
        if self._booster is None:
            raise UsageError(f"{type(self).__name__} ({self.name}) is not fitted")
        out: np.ndarray = np.asarray(self._booster.predict(x, num_threads=1), dtype=np.float64)
        return out

    def _calibrate(self, raw: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.interp(raw, self._iso_x, self._iso_y)
        return out

    def scores(self, frame: pl.DataFrame) -> np.ndarray:
        """LightGBM's uncalibrated probabilities (what the isotonic map calibrates)."""
        return self._raw(feature_matrix(frame, self.features))

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        """Calibrated probabilities, one per row of ``frame``."""
        return self._calibrate(self.scores(frame))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "model.txt").write_text(self._text, encoding="utf-8")
        np.savez(directory / "calibration.npz", x=self._iso_x, y=self._iso_y)
        meta = {
            "kind": "lightgbm+isotonic", "name": self.name, "features": list(self.features),
            "horizon": self.horizon, "target": self.target, "seed": self.seed,
            "rounds": self.rounds, "holdout": self.holdout, "threshold": self.threshold,
            "trained_at": self.trained_at,
        }
        (directory / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> Self:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        model = cls(meta["features"], horizon=meta["horizon"], target=meta["target"],
                    seed=meta["seed"], rounds=meta["rounds"], holdout=meta["holdout"])
        model._set_booster((directory / "model.txt").read_text(encoding="utf-8"))
        with np.load(directory / "calibration.npz", allow_pickle=False) as arrays:
            model._iso_x, model._iso_y = arrays["x"], arrays["y"]
        model.threshold, model.trained_at = float(meta["threshold"]), meta["trained_at"]
        return model

    def nbytes(self) -> int:
        """The model text plus the calibration arrays (fixed by rounds x leaves, not by data)."""
        return len(self._text) + self._iso_x.nbytes + self._iso_y.nbytes


class OnlinePropensity:
    """River StandardScaler -> LogisticRegression (SGD), learned row by row (see module doc)."""

    def __init__(
        self,
        features: Sequence[str],
        *,
        horizon: str = "90d",
        target: Target = "purchase",
        lr: float = 0.01,
        l2: float = 0.0,
    ) -> None:
        self.features = tuple(features)
        self.horizon, self.target, self.lr, self.l2 = horizon, target, lr, l2
        self._reset()

    def _reset(self) -> None:
        self.trained_at: int | None = None
        self.n_learned = 0
        # river is untyped: its objects are held as Any
        self._scaler: Any = preprocessing.StandardScaler()
        self._lr: Any = linear_model.LogisticRegression(optimizer=optim.SGD(self.lr), l2=self.l2)

    @property
    def name(self) -> str:
        return target_name(self.target, self.horizon)

    def fit(self, frame: pl.DataFrame) -> Self:
        """Start from scratch and learn every row of ``frame`` once."""
        self._reset()
        self.update(frame)
        return self

    def update(self, frame: pl.DataFrame) -> None:
        """Learn each row (features + ``label``) once, in frame order."""
        x, y = feature_matrix(frame, self.features), _labels(frame)
        for row, label in zip(x.tolist(), y.tolist(), strict=True):
            xi = {f: v for f, v in zip(self.features, row, strict=True) if not math.isnan(v)}
            self._scaler.learn_one(xi)
            self._lr.learn_one(self._scaler.transform_one(xi), label > 0)
        self.n_learned += len(y)
        self.trained_at = _trained_at(frame) or self.trained_at

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        """P(target) per row; a missing value counts as the running mean."""
        x = pl.DataFrame(feature_matrix(frame, self.features), schema=list(self.features),
                         orient="row")
        known = [f for f in self.features if self._scaler.counts.get(f, 0)]
        if not known or x.height == 0:
            return np.full(x.height, 1.0 / (1.0 + math.exp(-self._lr.intercept)))
        flat = [f for f in known if self._scaler.vars.get(f, 0.0) <= 0.0]
        scaled = self._scaler.transform_many(x.select(known)).fill_nan(0.0)
        scaled = scaled.with_columns(pl.lit(0.0).alias(f) for f in flat)  # as transform_one
        proba = self._lr.predict_proba_many(scaled)
        out: np.ndarray = proba["True"].to_numpy().astype(np.float64)
        return out

    def state(self) -> dict[str, Any]:
        """Everything the next update depends on, as plain JSON values."""
        return {
            "kind": "river-logreg", "name": self.name, "features": list(self.features),
            "horizon": self.horizon, "target": self.target, "lr": self.lr, "l2": self.l2,
            "trained_at": self.trained_at, "n_learned": self.n_learned,
            "scaler": {"counts": dict(self._scaler.counts), "means": dict(self._scaler.means),
                       "vars": dict(self._scaler.vars)},
            "weights": dict(self._lr.weights), "intercept": self._lr.intercept,
            "n_iterations": self._lr.optimizer.n_iterations,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        model = cls(state["features"], horizon=state["horizon"], target=state["target"],
                    lr=state["lr"], l2=state["l2"])
        sc = state["scaler"]
        model._scaler = preprocessing.StandardScaler._from_state(
            counts=sc["counts"], means=sc["means"], vars=sc["vars"])
        model._lr._weights = utils.VectorDict(dict(state["weights"]))  # no public setter
        model._lr.intercept = float(state["intercept"])
        model._lr.optimizer.n_iterations = int(state["n_iterations"])
        model.trained_at, model.n_learned = state["trained_at"], int(state["n_learned"])
        return model

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.state(), indent=1)
        (directory / "online.json").write_text(text, encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> Self:
        return cls.from_state(json.loads((directory / "online.json").read_text(encoding="utf-8")))

    def nbytes(self) -> int:
        """8 bytes per number held: 3 scaler statistics + 1 weight per feature, + intercept."""
        sc = self._scaler
        return 8 * (len(sc.counts) + len(sc.means) + len(sc.vars) + len(self._lr.weights) + 2)
