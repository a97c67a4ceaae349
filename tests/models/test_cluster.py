"""Incremental k-means: planted clusters recovered, the update step exact, state exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import adjusted_rand_score
from tests.models.cases_models import CENTRES, blobs

from portrait.errors import UsageError
from portrait.models.cluster import ProfileClusters

COLUMNS = [f"v{j}" for j in range(CENTRES.shape[1])]


def test_planted_clusters_are_recovered() -> None:
    model = ProfileClusters(4, seed=1).fit(blobs(400, 0)[0])
    test, truth = blobs(300, 1)
    assert adjusted_rand_score(truth, model.predict(test)) > 0.99
    assert model.predict(test).dtype == np.int32
    assert model.features == tuple(COLUMNS)  # every numeric column but user_id


def test_updates_follow_drifting_clusters() -> None:
    model = ProfileClusters(4, seed=0, decay=0.5).fit(blobs(400, 0)[0])
    before = model.centers.copy()
    shift = 2.0
    for r in range(10):
        moved = blobs(100, 10 + r)[0].with_columns(pl.col(c) + shift for c in COLUMNS)
        model.update(moved)
    test, truth = blobs(300, 1)
    test = test.with_columns(pl.col(c) + shift for c in COLUMNS)
    assert adjusted_rand_score(truth, model.predict(test)) > 0.99
    step = shift / model.scale  # the shift in the fixed, standardised space
    assert np.allclose(model.centers - before, step, atol=0.15)


def _reference_update(model: ProfileClusters, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sculley's step one row at a time: assignments from the old centres, rate 1/count."""
    centers, counts = model.centers.copy(), model.counts * model.decay
    d = ((z[:, None, :] - model.centers[None, :, :]) ** 2).sum(axis=2)
    for x, c in zip(z, d.argmin(axis=1), strict=True):
        counts[c] += 1
        centers[c] += (x - centers[c]) / counts[c]
    return centers, counts


def test_the_vectorised_update_equals_the_one_row_at_a_time_step() -> None:
    model = ProfileClusters(4, seed=0, decay=0.9).fit(blobs(200, 0)[0])
    batch = blobs(50, 3)[0]
    z = (batch.select(COLUMNS).to_numpy() - model.mean) / model.scale
    want_centers, want_counts = _reference_update(model, z)
    model.update(batch)
    assert np.allclose(model.centers, want_centers, rtol=1e-12, atol=1e-12)
    assert np.array_equal(model.counts, want_counts)


def test_the_scaler_is_fixed_at_fit_and_missing_values_are_the_mean() -> None:
    model = ProfileClusters(4, seed=0).fit(blobs(200, 0)[0])
    mean, scale = model.mean.copy(), model.scale.copy()
    model.update(blobs(50, 1)[0].with_columns(pl.col(c) * 100 for c in COLUMNS))
    assert np.array_equal(model.mean, mean)
    assert np.array_equal(model.scale, scale)
    blank = pl.DataFrame({"user_id": ["x"], **{c: [None] for c in COLUMNS}},
                         schema={"user_id": pl.String, **dict.fromkeys(COLUMNS, pl.Float64)})
    at_mean = pl.DataFrame({"user_id": ["x"], **{c: [m] for c, m in zip(COLUMNS, mean,
                                                                         strict=True)}})
    twin = ProfileClusters(4, seed=0).fit(blobs(200, 0)[0])
    twin.update(blobs(50, 1)[0].with_columns(pl.col(c) * 100 for c in COLUMNS))
    model.update(blank)
    twin.update(at_mean)
    assert np.array_equal(model.centers, twin.centers)  # null == the fit mean, exactly


def test_a_loaded_model_continues_exactly(tmp_path: Path) -> None:
    model = ProfileClusters(4, seed=0, decay=0.95).fit(blobs(200, 0)[0])
    model.save(tmp_path)
    loaded = ProfileClusters.load(tmp_path)
    for r in range(5):
        batch = blobs(20, 50 + r)[0]
        model.update(batch)
        loaded.update(batch)
    assert np.array_equal(model.centers, loaded.centers)
    assert np.array_equal(model.counts, loaded.counts)
    assert model.nbytes() == loaded.nbytes() == 8 * (4 * 3 + 4 + 2 * 3)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(UsageError, match="k >= 1"):
        ProfileClusters(0)
    with pytest.raises(UsageError, match="5 clusters on 3 rows"):
        ProfileClusters(5).fit(blobs(3, 0)[0])
    with pytest.raises(UsageError, match="not fitted"):
        ProfileClusters(2).predict(blobs(3, 0)[0])
