"""Incremental k-means over profile vectors.

:class:`ProfileClusters` groups users by named numeric profile columns.

* **Standardisation.** ``fit`` fixes a scaler: each feature's mean and
  standard deviation over the fit frame (NaN ignored; a constant feature
  gets scale 1). Every later ``update`` and ``predict`` uses that same
  scaler, so centres stay comparable over time; a missing value (null or
  NaN) becomes the fit mean, i.e. 0 after scaling.
* **fit** runs scikit-learn ``KMeans`` (k-means++, ``n_init`` seeded
  restarts) on the scaled rows; each centre's count is its cluster size.
* **update** is the mini-batch k-means step (Sculley, 2010) written out:
  the rows are assigned to their nearest centre, then each centre moves to
  the weighted mean of its old position (weight: its count) and its new
  rows, and the count grows by their number — a per-centre learning rate
  of 1/count. ``decay`` (default 1: none) multiplies the counts before each
  update, so that with ``decay < 1`` old profiles fade and centres keep
  following drift. The state is exactly the centres, counts and scaler:
  a saved and loaded model continues identically.
* **predict** is the nearest centre (squared Euclidean distance in the
  scaled space), as int32 cluster ids.

Persisted as ``clusters.npz`` (centres, counts, scaler; ``allow_pickle=False``)
and ``meta.json`` (k, seed, decay, feature names). Memory is fixed: k x d
centres, k counts and 2 x d scaler values, whatever the number of updates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np
import polars as pl
from sklearn.cluster import KMeans

from portrait.errors import UsageError

USER = "user_id"


def _matrix(frame: pl.DataFrame, columns: Sequence[str]) -> np.ndarray:
    lacking = [c for c in columns if c not in frame.columns]
    if lacking:
        raise UsageError(f"feature column(s) {lacking} not in frame (has {frame.columns})")
    cast = frame.select(pl.col(c).cast(pl.Float64).fill_null(math.nan) for c in columns)
    out: np.ndarray = cast.to_numpy().astype(np.float64, copy=False).reshape(frame.height, -1)
    return out


def _numeric(frame: pl.DataFrame) -> list[str]:
    return [c for c, t in frame.schema.items() if c != USER and (t.is_numeric() or t == pl.Boolean)]


class ProfileClusters:
    """k centres over standardised profile vectors, updated in mini-batches (see module doc)."""

    def __init__(
        self,
        k: int,
        seed: int = 0,
        *,
        features: Sequence[str] | None = None,
        decay: float = 1.0,
        n_init: int = 4,
    ) -> None:
        if k < 1 or not 0.0 < decay <= 1.0:
            raise UsageError(f"ProfileClusters needs k >= 1 and 0 < decay <= 1 (k={k}, "
                             f"decay={decay})")
        self.k, self.seed, self.decay, self.n_init = k, seed, decay, n_init
        self.features: tuple[str, ...] = tuple(features or ())
        self.centers = np.zeros((0, 0))
        self.counts = np.zeros(0)
        self.mean = np.zeros(0)
        self.scale = np.zeros(0)

    def _scaled(self, frame: pl.DataFrame) -> np.ndarray:
        if not self.centers.size:
            raise UsageError(f"{type(self).__name__} is not fitted")
        z: np.ndarray = np.nan_to_num((_matrix(frame, self.features) - self.mean) / self.scale)
        return z

    def fit(self, frame: pl.DataFrame) -> Self:
        """Fix the scaler and the starting centres from ``frame``'s rows."""
        self.features = self.features or tuple(_numeric(frame))
        x = _matrix(frame, self.features)
        if x.shape[0] < self.k or not self.features:
            raise UsageError(f"cannot fit {self.k} clusters on {x.shape[0]} rows x "
                             f"{len(self.features)} numeric features")
        seen = np.maximum((~np.isnan(x)).sum(axis=0), 1)
        self.mean = np.nansum(x, axis=0) / seen
        std = np.sqrt(np.nansum((x - self.mean) ** 2, axis=0) / seen)
        self.scale = np.where(std > 0, std, 1.0)
        z = np.nan_to_num((x - self.mean) / self.scale)
        km = KMeans(n_clusters=self.k, n_init=self.n_init, random_state=self.seed).fit(z)
        self.centers = np.asarray(km.cluster_centers_, dtype=np.float64)
        self.counts = np.bincount(km.labels_, minlength=self.k).astype(np.float64)
        return self

    def _nearest(self, z: np.ndarray) -> np.ndarray:
        d2 = (z * z).sum(axis=1)[:, None] - 2.0 * z @ self.centers.T
        d2 += (self.centers * self.centers).sum(axis=1)[None, :]
        out: np.ndarray = np.argmin(d2, axis=1).astype(np.int32)
        return out

    def update(self, frame: pl.DataFrame) -> None:
        """One mini-batch step with the new or changed profiles in ``frame``."""
        z = self._scaled(frame)
        labels = self._nearest(z)
        n = np.bincount(labels, minlength=self.k).astype(np.float64)
        sums = np.zeros_like(self.centers)
        np.add.at(sums, labels, z)
        old = self.counts * self.decay
        total = old + n
        moved = n > 0
        self.centers[moved] = (
            old[moved, None] * self.centers[moved] + sums[moved]
        ) / total[moved, None]
        self.counts = total

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        """The nearest centre of each row (int32 cluster ids)."""
        return self._nearest(self._scaled(frame))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / "clusters.npz", centers=self.centers, counts=self.counts,
                 mean=self.mean, scale=self.scale)
        meta = {"kind": "minibatch-kmeans", "k": self.k, "seed": self.seed,
                "decay": self.decay, "n_init": self.n_init, "features": list(self.features)}
        (directory / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> Self:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        model = cls(meta["k"], meta["seed"], features=meta["features"], decay=meta["decay"],
                    n_init=meta["n_init"])
        with np.load(directory / "clusters.npz", allow_pickle=False) as arrays:
            model.centers, model.counts = arrays["centers"], arrays["counts"]
            model.mean, model.scale = arrays["mean"], arrays["scale"]
        return model

    def nbytes(self) -> int:
        return int(self.centers.nbytes + self.counts.nbytes + self.mean.nbytes
                   + self.scale.nbytes)
