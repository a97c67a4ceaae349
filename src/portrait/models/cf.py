"""Implicit-feedback ALS with exact online fold-in (collaborative filtering).

Interactions
------------
:func:`interactions` turns events into one ``(user_id, item_id, weight)`` row
per pair: the sum of ``weights[type]`` over the user's events on the item
(types not in ``weights`` and events without ``item_id`` are ignored; events
that differ only in ``category`` count once, because the MovieLens converter
writes one event per genre). Weights may be negative: an ``impression`` that
was never clicked weighs -0.5, and a click on it (+2) more than cancels it.
Pairs that sum to exactly 0 carry no information and are dropped.

Confidence convention (checked against ``implicit/cpu/_als.pyx``)
-----------------------------------------------------------------
implicit reads each stored value ``v`` of the user x item matrix as a
*signed confidence*: preference ``p = 1`` with confidence ``c = v`` when
``v > 0``, preference ``p = 0`` with confidence ``c = -v`` when ``v < 0``;
missing entries have ``p = 0, c = 1``. Per user it solves exactly (Cholesky,
``posv``; the fit uses a few CG steps towards the same optimum)::

    (YtY + reg*I + sum_i (c_i - 1) y_i y_i^T) x = sum_{i: p_i = 1} c_i y_i

with a plain ``reg * I`` (not scaled by the number of interactions), and its
``alpha`` just multiplies ``v``. Taken literally, ``c = |w|`` would give an
ignored impression (``w = -0.5``) *less* weight than an item never shown
(``c = 0.5 < 1``), pulling its score up, not down. So this module uses the
confidence of Hu, Koren & Volinsky (2008), ``c = 1 + alpha * |w|``, and hands
implicit the signed value ``sign(w) * (1 + alpha * |w|)`` with implicit's own
``alpha`` fixed at 1 (:func:`signed_confidence`). Every observed pair then
counts at least as much as an unobserved one, a negative sum means "shown,
not wanted" with confidence growing with the number of ignored impressions,
and implicit's solver and ours agree (the tests compare them).

Fold-in
-------
:meth:`ALSModel.fold_in` is that exact solve for one user against the fixed
item factors: ``YtY + reg*I`` is computed once per model (float64), each call
only touches the user's own items (two small matrix products and one LAPACK
``posv``), so a user with 200 items costs well under a millisecond.
:meth:`ALSModel.update` folds in users from their *full current* rows
(existing users are replaced, new ones appended); :meth:`ALSModel.fold_in_item`
is the symmetric solve for a new item against the user factors.

Persistence is ``als.npz`` (fixed-width unicode ids, float32 factors, loaded
with ``allow_pickle=False``) plus ``meta.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy.linalg import lapack

from portrait.errors import StoreError, UsageError
from portrait.fsutil import fsync_path

DEFAULT_INTERACTIONS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "cart": 3.0,
    "purchase": 5.0,
    "like": 2.0,
    "rating": 1.0,
    "dislike": 0.5,  # still a consumption (MovieLens: the user watched it)
    "review": 2.0,
    "impression": -0.5,  # shown and never clicked; a click (+2) more than cancels it
}
COLUMNS = ("user_id", "item_id", "weight")
FORMAT = "portrait.als"
FORMAT_VERSION = 1
NPZ, META = "als.npz", "meta.json"
_ID_BYTES = 64  # rough per-id overhead of a str and its dict slot, for nbytes()


def collapse_categories(events: pl.DataFrame) -> pl.DataFrame:
    """One row per (user, item, ts, type): per-category copies of an event count once."""
    keys = [c for c in ("user_id", "item_id", "ts", "type") if c in events.columns]
    if "ts" not in keys:
        return events
    return events.unique(subset=keys, keep="first", maintain_order=True)


def interactions(
    events: pl.DataFrame, weights: Mapping[str, float] = DEFAULT_INTERACTIONS
) -> pl.DataFrame:
    """``user_id, item_id, weight``: the summed type weights of each pair (see module doc)."""
    w = pl.col("type").replace_strict(dict(weights), default=None, return_dtype=pl.Float64)
    ev = events.filter(pl.col("item_id").is_not_null() & pl.col("type").is_in(list(weights)))
    return (
        collapse_categories(ev)
        .group_by("user_id", "item_id")
        .agg(w.sum().alias("weight"))
        .filter(pl.col("weight") != 0)
        .sort("user_id", "item_id")
    )


def signed_confidence(weights: np.ndarray, alpha: float) -> np.ndarray:
    """``sign(w) * (1 + alpha*|w|)``: the value implicit reads as (preference, confidence)."""
    w = np.asarray(weights, dtype=np.float64)
    out: np.ndarray = np.sign(w) * (1.0 + alpha * np.abs(w))
    return out


@dataclass(frozen=True)
class ALSParams:
    """ALS hyper-parameters; ``alpha`` scales confidence ``c = 1 + alpha*|w|``."""

    factors: int = 64
    regularization: float = 0.05
    alpha: float = 1.0
    iterations: int = 15
    seed: int = 0
    num_threads: int = 1


class _Ids:
    """An append-only id <-> row index map."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}
        self.chars = 0
        self.add(ids)

    def add(self, ids: Iterable[str]) -> None:
        for s in ids:
            if s not in self.pos:
                self.pos[s] = len(self.ids)
                self.ids.append(s)
                self.chars += len(s)

    def index(self, ids: Iterable[Any]) -> np.ndarray:
        get = self.pos.get
        out: np.ndarray = np.fromiter((get(str(s), -1) for s in ids), dtype=np.int64)
        return out

    def array(self) -> np.ndarray:
        return np.array(self.ids, dtype=str) if self.ids else np.zeros(0, dtype="<U1")

    def nbytes(self) -> int:
        return 4 * self.chars + _ID_BYTES * len(self.ids)


class _Rows:
    """A float32 row buffer that grows by doubling (amortised O(1) appends)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.n = data.shape[0]

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.n]

    def append(self, rows: np.ndarray) -> None:
        need = self.n + rows.shape[0]
        if need > self.data.shape[0]:
            grown = np.zeros((max(need, 2 * self.data.shape[0]), self.data.shape[1]), np.float32)
            grown[: self.n] = self.view
            self.data = grown
        self.data[self.n : need] = rows
        self.n = need


def _ids(column: pl.Series) -> list[str]:
    return column.cast(pl.String).to_list()


def _check(frame: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UsageError(f"ALS input lacks column(s) {missing}; has {frame.columns}")
    return frame.select(
        pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String), *columns[2:]
    ).drop_nulls(["user_id", "item_id"])


def _solve(gram_reg: np.ndarray, y: np.ndarray, weights: np.ndarray, alpha: float) -> np.ndarray:
    """The exact implicit-ALS least squares for one row (see module doc), float64."""
    c = 1.0 + alpha * np.abs(weights)
    a = gram_reg + (y.T * (c - 1.0)) @ y
    b = y.T @ np.where(weights > 0, c, 0.0)
    _, x, info = lapack.dposv(a, b, lower=False, overwrite_a=True, overwrite_b=True)
    if info != 0:
        raise UsageError(f"ALS fold-in: posv failed (info={info}); raise regularization")
    out: np.ndarray = x
    return out


def _aggregate(idx: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum weights per known index (``idx >= 0``); drop pairs summing to 0."""
    idx = np.asarray(idx, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    keep = idx >= 0
    uniq, inv = np.unique(idx[keep], return_inverse=True)
    sums = np.bincount(inv, weights=w[keep], minlength=uniq.size)
    nz = sums != 0
    return uniq[nz], sums[nz]


class ALSModel:
    """Implicit ALS over an interactions frame; see the module doc.

    ``fit`` returns a *new* fitted model (the receiver is untouched, so a
    live model can keep serving while its successor trains); ``update``
    folds users in place.
    """

    def __init__(self, params: ALSParams | None = None) -> None:
        self.params = params or ALSParams()
        self.version = 0
        self.trained_at: int | None = None
        self.n_interactions = 0
        f = self.params.factors
        self._users, self._items = _Ids(), _Ids()
        self._user_rows = _Rows(np.zeros((0, f), np.float32))
        self._item_rows = _Rows(np.zeros((0, f), np.float32))
        self._xtx: np.ndarray | None = None  # X^T X + reg I, built on first fold_in_item
        self._caches()

    # ---- training -------------------------------------------------------
    def fit(self, data: pl.DataFrame, *, trained_at: int | None = None) -> Self:
        """Train on ``user_id, item_id, weight`` rows; returns the fitted model."""
        frame = _check(data, COLUMNS).group_by("user_id", "item_id").agg(pl.col("weight").sum())
        frame = frame.filter(pl.col("weight") != 0)
        if frame.height == 0:
            raise UsageError("ALS fit: no interactions with a non-zero weight")
        users = frame.select("user_id").unique().sort("user_id").with_row_index("u")
        items = frame.select("item_id").unique().sort("item_id").with_row_index("i")
        j = frame.join(users, on="user_id").join(items, on="item_id")
        conf = signed_confidence(j["weight"].to_numpy(), self.params.alpha)
        shape = (users.height, items.height)
        cui = sp.csr_matrix((conf.astype(np.float32), (j["u"].to_numpy(), j["i"].to_numpy())),
                            shape=shape)
        uf, itf = _train(cui, self.params)
        model = type(self)(self.params)
        model._users, model._items = _Ids(_ids(users["user_id"])), _Ids(_ids(items["item_id"]))
        model._user_rows, model._item_rows = _Rows(uf), _Rows(itf)
        model.trained_at, model.n_interactions = trained_at, frame.height
        model._caches()
        return model

    def update(self, data: pl.DataFrame) -> None:
        """Fold in every user of ``data`` from their full current rows (unknown items ignored)."""
        frame = _check(data, COLUMNS).sort("user_id", maintain_order=True)
        if frame.height == 0:
            return
        users = frame["user_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], users.size]
        item_idx = self._items.index(frame["item_id"].to_list())
        weights = frame["weight"].to_numpy().astype(np.float64)
        vecs = np.stack([self.fold_in(item_idx[s:e], weights[s:e])
                         for s, e in zip(starts, ends, strict=True)])
        ids = [str(users[s]) for s in starts]
        rows = self._users.index(ids)
        old = rows >= 0
        self._user_rows.view[rows[old]] = vecs[old]
        self._users.add(i for i, o in zip(ids, old, strict=True) if not o)
        self._user_rows.append(vecs[~old])
        self._xtx = None

    def update_items(self, data: pl.DataFrame) -> None:
        """Fold in every item of ``data`` (its full rows by known users), appending new ones."""
        frame = _check(data, COLUMNS).sort("item_id", maintain_order=True)
        for item, part in frame.group_by("item_id", maintain_order=True):
            vec = self.fold_in_item(self._users.index(part["user_id"].to_list()),
                                    part["weight"].to_numpy())
            row = self._items.index([item[0]])[0]
            if row >= 0:
                self._item_rows.view[row] = vec
            else:
                self._items.add([str(item[0])])
                self._item_rows.append(vec[None, :])
        self._caches()

    # ---- the exact solves -------------------------------------------------
    def fold_in(self, item_idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """A user's factors from their (item index, weight) pairs; indices < 0 ignored."""
        idx, w = _aggregate(item_idx, weights)
        if idx.size == 0:
            return np.zeros(self.params.factors, np.float32)
        y = self._item_rows.view[idx].astype(np.float64)
        out: np.ndarray = _solve(self._yty, y, w, self.params.alpha).astype(np.float32)
        return out

    def fold_in_item(self, user_idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """A new item's factors from its (user index, weight) pairs, against the user factors."""
        idx, w = _aggregate(user_idx, weights)
        if idx.size == 0:
            return np.zeros(self.params.factors, np.float32)
        if self._xtx is None:
            self._xtx = _gram(self._user_rows.view, self.params.regularization)
        x = self._user_rows.view[idx].astype(np.float64)
        out: np.ndarray = _solve(self._xtx, x, w, self.params.alpha).astype(np.float32)
        return out

    # ---- scoring ----------------------------------------------------------
    def scores(self, user_vec: np.ndarray) -> np.ndarray:
        """``user_vec . y_i`` for every item (float32)."""
        out: np.ndarray = self._item_rows.view @ np.asarray(user_vec, np.float32)
        return out

    def similar_items(self, item_idx: int, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` items closest to ``item_idx`` by factor cosine (itself excluded)."""
        sims = self._unit @ self._unit[item_idx]
        sims[item_idx] = -np.inf
        n = min(n, sims.size - 1)
        top = np.argpartition(-sims, n - 1)[:n] if n > 0 else np.zeros(0, np.int64)
        top = top[np.argsort(-sims[top], kind="stable")]
        return top, sims[top]

    def predict(self, data: pl.DataFrame) -> np.ndarray:
        """Scores of ``user_id, item_id`` pairs; NaN where the user or the item is unknown."""
        frame = _check(data, COLUMNS[:2])
        u = self._users.index(frame["user_id"].to_list())
        i = self._items.index(frame["item_id"].to_list())
        out = np.full(frame.height, np.nan)
        ok = (u >= 0) & (i >= 0)
        uf, itf = self._user_rows.view[u[ok]], self._item_rows.view[i[ok]]
        out[ok] = np.einsum("ij,ij->i", uf.astype(np.float64), itf.astype(np.float64))
        return out

    # ---- index maps and views ---------------------------------------------
    def user_index(self, ids: Iterable[Any]) -> np.ndarray:
        return self._users.index(ids)

    def item_index(self, ids: Iterable[Any]) -> np.ndarray:
        return self._items.index(ids)

    @property
    def user_ids(self) -> list[str]:
        return self._users.ids

    @property
    def item_ids(self) -> list[str]:
        return self._items.ids

    @property
    def user_factors(self) -> np.ndarray:
        return self._user_rows.view

    @property
    def item_factors(self) -> np.ndarray:
        return self._item_rows.view

    @property
    def item_norms(self) -> np.ndarray:
        out: np.ndarray = self._norms
        return out

    def to_implicit(self) -> Any:
        """An ``implicit`` ALS with these factors; feed it :func:`signed_confidence` values."""
        from implicit.cpu.als import AlternatingLeastSquares

        p = self.params
        m = AlternatingLeastSquares(factors=p.factors, regularization=p.regularization,
                                    alpha=1.0, num_threads=p.num_threads)
        m.user_factors, m.item_factors = self.user_factors.copy(), self.item_factors.copy()
        return m

    # ---- persistence ----------------------------------------------------
    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / NPZ, user_ids=self._users.array(), item_ids=self._items.array(),
                 user_factors=self.user_factors, item_factors=self.item_factors)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": self.version,
                "trained_at": self.trained_at, "n_interactions": self.n_interactions,
                "params": asdict(self.params)}
        (directory / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @staticmethod
    def erase_user(directory: Path, user_id: str) -> bool:
        """Rewrite a saved model without ``user_id``'s factor row (erasure); True if it had one.

        The file is replaced atomically (temporary file, fsync, rename). Item
        factors still carry the user's past interactions, blended with
        everyone's, until the next training (which no longer sees them).
        """
        path = Path(directory) / NPZ
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        keep = arrays["user_ids"] != user_id
        if bool(keep.all()):
            return False
        arrays["user_ids"] = arrays["user_ids"][keep]
        arrays["user_factors"] = arrays["user_factors"][keep]
        _replace_npz(path, arrays)
        return True

    @staticmethod
    def rename_users(directory: Path, mapping: dict[str, str]) -> bool:
        """Rewrite a saved model with its user ids renamed (old -> new); True if any was."""
        path = Path(directory) / NPZ
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        old = arrays["user_ids"]
        new = np.array([mapping.get(str(u), str(u)) for u in old.tolist()])
        if bool((new == old).all()):
            return False
        arrays["user_ids"] = new
        _replace_npz(path, arrays)
        return True

    @classmethod
    def load(cls, directory: Path) -> Self:
        directory = Path(directory)
        try:
            meta = json.loads((directory / META).read_text())
            if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
                raise StoreError(f"{directory / META}: not a {FORMAT} v{FORMAT_VERSION} model")
            with np.load(directory / NPZ, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("user_ids", "item_ids", "user_factors",
                                            "item_factors")}
        except (OSError, ValueError, KeyError) as exc:
            raise StoreError(f"{directory}: cannot load ALS model: {exc}") from exc
        model = cls(ALSParams(**meta["params"]))
        model.version, model.trained_at = int(meta["version"]), meta["trained_at"]
        model.n_interactions = int(meta["n_interactions"])
        model._users, model._items = _Ids(arrays["user_ids"].tolist()), _Ids(
            arrays["item_ids"].tolist())
        model._user_rows = _Rows(arrays["user_factors"])
        model._item_rows = _Rows(arrays["item_factors"])
        model._caches()
        return model

    def nbytes(self) -> int:
        """Factor buffers + item caches + the id maps (estimated) + the two Gram matrices."""
        gram = 2 * self.params.factors**2 * 8
        arrays = (self._user_rows.data, self._item_rows.data, self._unit, self._norms)
        return int(sum(a.nbytes for a in arrays)) + self._users.nbytes() + self._items.nbytes() \
            + gram

    def _caches(self) -> None:
        """Recompute what depends on the item factors (after fit, load, new items)."""
        y = self._item_rows.view
        self._yty = _gram(y, self.params.regularization)
        self._norms = np.linalg.norm(y, axis=1).astype(np.float32)
        safe = np.where(self._norms > 0, self._norms, 1.0)
        self._unit = (y / safe[:, None]).astype(np.float32)
        self._xtx = None


def _gram(m: np.ndarray, reg: float) -> np.ndarray:
    m64 = m.astype(np.float64)
    out: np.ndarray = m64.T @ m64 + reg * np.eye(m.shape[1])
    return out


def _train(cui: Any, params: ALSParams) -> tuple[np.ndarray, np.ndarray]:
    """implicit's CPU ALS on a signed-confidence matrix: (user, item) factors, float32."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(
            factors=params.factors, regularization=params.regularization, alpha=1.0,
            iterations=params.iterations, random_state=params.seed,
            num_threads=params.num_threads,
        )
        als.fit(cui, show_progress=False)
    return np.asarray(als.user_factors, np.float32), np.asarray(als.item_factors, np.float32)


def _replace_npz(path: Path, arrays: dict[str, Any]) -> None:
    """Rewrite a saved model's arrays atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)
