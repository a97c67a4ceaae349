"""Contract cases (and their generated data) for propensity and clustering models."""

from __future__ import annotations

import numpy as np
import polars as pl
from tests.models.cases import Case, register

from portrait.models.cluster import ProfileClusters
from portrait.models.propensity import OnlinePropensity, PropensityModel

FEATURES = ("recency_days", "orders", "noise")
CENTRES = np.array([[0.0, 0.0, 0.0], [10.0, 10.0, 0.0], [0.0, 10.0, 10.0], [10.0, 0.0, 10.0]])


def purchases(n: int, seed: int, missing: float = 0.05) -> pl.DataFrame:
    """Users whose purchase odds fall with recency and rise with orders (plus noise)."""
    rng = np.random.default_rng(seed)
    recency = rng.exponential(60.0, n)
    orders = rng.poisson(3.0, n).astype(np.float64)
    logit = 1.5 - recency / 30.0 + 0.4 * orders
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    recency[rng.random(n) < missing] = np.nan
    return pl.DataFrame({
        "user_id": [f"u{seed}:{i}" for i in range(n)],
        "recency_days": recency, "orders": orders, "noise": rng.normal(size=n),
        "at": np.full(n, 1_000_000 * (seed + 1), dtype=np.int64), "label": label,
    }).with_columns(pl.col("recency_days").fill_nan(None))


def blobs(n: int, seed: int, spread: float = 0.5) -> tuple[pl.DataFrame, np.ndarray]:
    """``n`` profiles around the four CENTRES; returns (frame, true cluster)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(CENTRES), n)
    x = CENTRES[truth] + rng.normal(scale=spread, size=(n, CENTRES.shape[1]))
    frame = pl.DataFrame({"user_id": [f"b{seed}:{i}" for i in range(n)],
                          **{f"v{j}": x[:, j] for j in range(x.shape[1])}})
    return frame, truth


register(Case(
    name="propensity.PropensityModel",
    make=lambda: PropensityModel(FEATURES, horizon="30d", seed=0, rounds=40),
    fit_data=lambda: purchases(600, 0),
    update_data=lambda r: purchases(150, 100 + r),
    predict_data=lambda: purchases(120, 7).drop("label"),
    update_rounds=5,
))

register(Case(
    name="propensity.OnlinePropensity",
    make=lambda: OnlinePropensity(FEATURES, horizon="30d", target="churn", lr=0.05),
    fit_data=lambda: purchases(400, 0),
    update_data=lambda r: purchases(40, 100 + r),
    predict_data=lambda: purchases(120, 7).drop("label"),
))

register(Case(
    name="cluster.ProfileClusters",
    make=lambda: ProfileClusters(4, seed=0, decay=0.99),
    fit_data=lambda: blobs(300, 0)[0],
    update_data=lambda r: blobs(30, 100 + r)[0],
    predict_data=lambda: blobs(80, 7)[0],
))
