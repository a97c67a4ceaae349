"""ALS model: interactions, planted clusters, exact fold-in, persistence, registry."""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from tests.models.cases_cf import GROUPS, PARAMS, group_of, planted_events, planted_model

from portrait.errors import StoreError, UsageError
from portrait.models.cf import (
    DEFAULT_INTERACTIONS,
    ALSModel,
    interactions,
    signed_confidence,
)
from portrait.models.registry import ModelHandle, ModelRegistry, RetrainPolicy


@pytest.fixture(scope="module")
def model() -> ALSModel:
    return planted_model()


def _dense_solve(y: np.ndarray, idx: np.ndarray, w: np.ndarray, reg: float,
                 alpha: float) -> np.ndarray:
    """The weighted least squares over *all* rows of ``y``, written out in full."""
    n, f = y.shape
    total = np.zeros(n)
    for i, v in zip(idx, w, strict=True):
        if i >= 0:
            total[i] += v
    conf = np.where(total != 0, 1.0 + alpha * np.abs(total), 1.0)
    pref = (total > 0).astype(float)
    c = np.diag(conf)
    return np.linalg.solve(y.T @ c @ y + reg * np.eye(f), y.T @ c @ pref)


# ---- interactions ------------------------------------------------------------
def test_interactions_sum_type_weights_per_pair() -> None:
    ev = pl.DataFrame({
        "user_id": ["a", "a", "a", "a", "b", "b", "b"],
        "item_id": ["x", "x", "y", None, "x", "z", "z"],
        "type": ["click", "impression", "impression", "purchase", "view", "search", "cart"],
        "ts": [1, 2, 3, 4, 5, 6, 7],
    })
    got = {(r["user_id"], r["item_id"]): r["weight"] for r in interactions(ev).to_dicts()}
    want: dict[tuple[str, str], float] = defaultdict(float)
    for r in ev.to_dicts():
        if r["item_id"] is not None and r["type"] in DEFAULT_INTERACTIONS:
            want[(r["user_id"], r["item_id"])] += DEFAULT_INTERACTIONS[r["type"]]
    assert got == dict(want)
    assert got[("a", "x")] == 1.5  # a click more than cancels an ignored impression
    assert got[("a", "y")] == -0.5


def test_interactions_count_per_category_copies_once_and_drop_zero_sums() -> None:
    ev = pl.DataFrame({
        "user_id": ["a", "a", "a", "a", "a"],
        "item_id": ["m", "m", "m", "n", "n"],
        "type": ["like", "like", "like", "view", "view"],
        "category": ["Action", "Comedy", "Action", "Drama", "Drama"],
        "ts": [10, 10, 20, 30, 31],
    })
    got = interactions(ev, {"like": 2.0, "view": 0.0}).to_dicts()
    assert got == [{"user_id": "a", "item_id": "m", "weight": 4.0}]


def test_signed_confidence_is_hu_koren_volinsky() -> None:
    w = np.array([2.0, -0.5, -3.0, 0.25])
    assert np.allclose(signed_confidence(w, 2.0), [5.0, -2.0, -7.0, 1.5])


# ---- planted clusters --------------------------------------------------------
def test_recommendations_and_neighbours_stay_in_the_planted_group(model: ALSModel) -> None:
    inter = interactions(planted_events())
    ids = np.array(model.item_ids)
    for user, part in inter.group_by("user_id"):
        u = model.user_index([user[0]])[0]
        scores = model.scores(model.user_factors[u])
        scores[model.item_index(part["item_id"].to_list())] = -np.inf
        top = ids[np.argsort(-scores)[:5]]
        assert {group_of(i) for i in top} == {group_of(str(user[0]))}, (user, top)
    for i, item in enumerate(model.item_ids):
        near, sims = model.similar_items(i, 5)
        assert i not in near
        assert np.all(np.diff(sims) <= 1e-7)
        assert {group_of(ids[j]) for j in near} == {group_of(item)}, item


# ---- fold-in is the exact solve ----------------------------------------------
def test_fold_in_equals_the_dense_weighted_least_squares(model: ALSModel) -> None:
    rng = np.random.default_rng(3)
    y = model.item_factors.astype(np.float64)
    for _ in range(20):
        n = int(rng.integers(1, 30))
        idx = rng.integers(-1, y.shape[0], n)  # duplicates and unknown (-1) included
        w = rng.choice([-1.5, -0.5, 1.0, 2.0, 5.0], n)
        want = _dense_solve(y, idx, w, PARAMS.regularization, PARAMS.alpha)
        got = model.fold_in(idx, w)
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5), np.abs(got - want).max()


def test_fold_in_matches_implicits_recalculate_user(model: ALSModel) -> None:
    rng = np.random.default_rng(4)
    ref = model.to_implicit()
    n_items = len(model.item_ids)
    for _ in range(10):
        idx = rng.choice(n_items, 12, replace=False)
        w = rng.choice([-0.5, 1.0, 2.0, 5.0], 12)
        row = sp.csr_matrix((signed_confidence(w, PARAMS.alpha).astype(np.float32),
                             (np.zeros(12, int), idx)), shape=(1, n_items))
        theirs = ref.recalculate_user(0, row)
        assert np.allclose(model.fold_in(idx, w), theirs, rtol=1e-4, atol=1e-5)
        ids, scores = ref.recommend(0, row, N=5, recalculate_user=True)
        ours = model.scores(model.fold_in(idx, w))
        assert np.allclose(ours[ids], scores, rtol=1e-4, atol=1e-5)


def test_fold_in_of_a_trained_user_is_close_to_the_fitted_factors(model: ALSModel) -> None:
    inter = interactions(planted_events()).filter(pl.col("user_id") == "g2_u07")
    x = model.fold_in(model.item_index(inter["item_id"].to_list()), inter["weight"].to_numpy())
    fitted = model.user_factors[model.user_index(["g2_u07"])[0]]
    cos = x @ fitted / np.linalg.norm(x) / np.linalg.norm(fitted)
    assert cos > 0.99  # the fit's CG steps approach the same optimum


def test_fold_in_item_equals_the_dense_solve_and_scores_in_its_group(model: ALSModel) -> None:
    x = model.user_factors.astype(np.float64)
    users = model.user_index([f"g1_u{u:02d}" for u in range(8)])
    w = np.full(users.size, 2.0)
    got = model.fold_in_item(users, w)
    assert np.allclose(got, _dense_solve(x, users, w, PARAMS.regularization, PARAMS.alpha),
                       rtol=1e-5, atol=1e-5)
    m = planted_model()
    m.update_items(pl.DataFrame({"user_id": [f"g1_u{u:02d}" for u in range(8)],
                                 "item_id": ["g1_brand_new"] * 8, "weight": [2.0] * 8}))
    pred = m.predict(pl.DataFrame({"user_id": ["g1_u20", "g3_u20"],
                                   "item_id": ["g1_brand_new", "g1_brand_new"]}))
    assert pred[0] > 0.2 > pred[1]


def test_an_ignored_impression_shrinks_the_items_score_towards_zero(model: ALSModel) -> None:
    inter = interactions(planted_events()).filter(pl.col("user_id") == "g0_u03")
    idx = model.item_index(inter["item_id"].to_list())
    w = inter["weight"].to_numpy()
    base = model.scores(model.fold_in(idx, w))
    for j in np.setdiff1d(np.arange(len(model.item_ids)), idx):
        shown = model.scores(model.fold_in(np.r_[idx, j], np.r_[w, -0.5]))
        ratio = shown[j] / base[j]
        assert 0 < ratio < 1, (model.item_ids[j], base[j], shown[j])  # Sherman-Morrison


def test_fold_in_without_known_items_is_zero(model: ALSModel) -> None:
    assert not model.fold_in(np.array([-1, -1]), np.array([1.0, 2.0])).any()
    assert not model.fold_in(np.array([3, 3]), np.array([1.0, -1.0])).any()  # sums to 0


# ---- update, predict, unknowns -----------------------------------------------
def test_update_replaces_known_users_and_appends_new_ones() -> None:
    m = planted_model()
    n = len(m.user_ids)
    frame = pl.DataFrame({"user_id": ["g0_u01", "g0_u01", "zz_new", "zz_new"],
                          "item_id": ["g3_i00", "g3_i01", "g2_i05", "unknown"],
                          "weight": [5.0, 2.0, 3.0, 1.0]})
    m.update(frame)
    assert len(m.user_ids) == n + 1
    assert m.user_ids[-1] == "zz_new"
    idx = m.item_index(["g3_i00", "g3_i01"])
    assert np.array_equal(m.user_factors[m.user_index(["g0_u01"])[0]],
                          m.fold_in(idx, np.array([5.0, 2.0])))
    pred = m.predict(pl.DataFrame({"user_id": ["g0_u01", "g0_u01", "zz_new", "ghost"],
                                   "item_id": ["g3_i02", "g0_i02", "g2_i06", "g2_i06"]}))
    assert pred[0] > pred[1]
    assert pred[2] > 0
    assert np.isnan(pred[3])


def test_unknown_ids_map_to_minus_one(model: ALSModel) -> None:
    assert model.item_index(["g0_i00", "nope"]).tolist() == [0, -1]
    assert model.user_index(["nobody"]).tolist() == [-1]


def test_fit_rejects_empty_or_malformed_input() -> None:
    with pytest.raises(UsageError, match="no interactions"):
        ALSModel().fit(pl.DataFrame({"user_id": ["a"], "item_id": ["x"], "weight": [0.0]}))
    with pytest.raises(UsageError, match="weight"):
        ALSModel().fit(pl.DataFrame({"user_id": ["a"], "item_id": ["x"]}))


def test_fit_returns_a_new_model_and_records_metadata() -> None:
    blank = ALSModel(PARAMS)
    fitted = blank.fit(interactions(planted_events()), trained_at=T_FIT)
    assert fitted is not blank
    assert not blank.item_ids
    assert fitted.trained_at == T_FIT
    assert fitted.n_interactions == interactions(planted_events()).height


T_FIT = 1_700_000_000_000_000


# ---- persistence -------------------------------------------------------------
def test_save_load_round_trip_is_exact(model: ALSModel, tmp_path: Path) -> None:
    model.save(tmp_path / "m")
    back = ALSModel.load(tmp_path / "m")
    assert back.params == model.params
    assert back.item_ids == model.item_ids
    assert np.array_equal(back.user_factors, model.user_factors)
    assert np.array_equal(back.item_factors, model.item_factors)
    with np.load(tmp_path / "m" / "als.npz", allow_pickle=False) as z:
        assert z["user_ids"].dtype.kind == "U"


def test_loading_a_broken_model_names_the_directory(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_text('{"format": "other"}')
    with pytest.raises(StoreError, match="bad"):
        ALSModel.load(tmp_path / "bad")
    with pytest.raises(StoreError, match="missing"):
        ALSModel.load(tmp_path / "missing")


# ---- registry ----------------------------------------------------------------
def test_registry_versions_and_atomic_current(model: ALSModel, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    assert reg.versions("als") == []
    assert reg.current("als") is None
    other = planted_model(seed=1)
    assert reg.save("als", model) == 1
    assert model.version == 1
    assert reg.save("als", other) == 2
    assert reg.versions("als") == [1, 2]
    assert reg.current("als") == 2
    assert (tmp_path / "als" / "CURRENT").read_text() == "v000002\n"
    assert sorted(p.name for p in (tmp_path / "als").iterdir()) == [
        "CURRENT", "v000001", "v000002"]  # no temporary leftovers
    live = reg.load("als", ALSModel)
    assert live.version == 2
    assert np.array_equal(live.item_factors, other.item_factors)
    first = reg.load("als", ALSModel, version=1)
    assert np.array_equal(first.item_factors, model.item_factors)
    reg.promote("als", 1)  # rollback
    assert reg.load("als", ALSModel).version == 1
    with pytest.raises(StoreError):
        reg.load("als", ALSModel, version=7)
    with pytest.raises(UsageError):
        reg.versions("../escape")


def test_concurrent_saves_get_distinct_versions(model: ALSModel, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    got: list[int] = []
    savers = [threading.Thread(target=lambda: got.append(reg.save("als", planted_model())))
              for _ in range(4)]
    for t in savers:
        t.start()
    for t in savers:
        t.join()
    assert sorted(got) == [1, 2, 3, 4]
    assert reg.versions("als") == [1, 2, 3, 4]
    assert reg.current("als") in got


def test_a_failed_save_leaves_no_version_and_stale_temp_dirs_are_ignored(
    tmp_path: Path
) -> None:
    class Broken:
        def save(self, directory: Path) -> None:
            directory.mkdir()
            (directory / "half.npz").write_bytes(b"partial")
            raise OSError("disk full")

    reg = ModelRegistry(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        reg.save("als", Broken())  # type: ignore[arg-type]
    assert list((tmp_path / "als").iterdir()) == []
    (tmp_path / "als" / ".tmp-crashed").mkdir()
    assert reg.versions("als") == []
    assert reg.current("als") is None


def test_retrain_policy() -> None:
    class Meta:
        def __init__(self, trained_at: int | None) -> None:
            self.trained_at = trained_at

    hour = 3_600_000_000
    both = RetrainPolicy(every_events=1000, every_seconds=3600)
    assert both.due(Meta(None), 0, 0)
    assert not both.due(Meta(0), 999, hour - 1)
    assert both.due(Meta(0), 1000, 0)
    assert both.due(Meta(0), 0, hour)
    assert not RetrainPolicy(every_events=10).due(Meta(0), 9, 100 * hour)
    assert not RetrainPolicy().due(Meta(0), 10**9, 10**15)


def test_model_handle_swaps_whole_models_under_concurrent_reads() -> None:
    models = [planted_model(seed=s) for s in range(2)]
    expected = [float(m.predict(pl.DataFrame({"user_id": ["g0_u00"],
                                              "item_id": ["g0_i00"]}))[0]) for m in models]
    handle = ModelHandle(models[0])
    seen: list[tuple[int, float]] = []
    stop = threading.Event()
    query = pl.DataFrame({"user_id": ["g0_u00"], "item_id": ["g0_i00"]})

    def read() -> None:
        while not stop.is_set():
            m = handle.get()
            seen.append((models.index(m), float(m.predict(query)[0])))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for k in range(50):
        assert handle.swap(models[(k + 1) % 2]) is models[k % 2]
    stop.set()
    for t in readers:
        t.join()
    assert handle.swaps == 50
    assert seen
    assert all(v == expected[i] for i, v in seen)


def test_groups_constant_matches_data() -> None:
    assert {group_of(u) for u in planted_events()["user_id"].unique()} == set(range(GROUPS))
