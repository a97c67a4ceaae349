"""Models over one database: train, persist, load and serve them.

This is the glue the CLI (and later the HTTP API) calls; the models
themselves are pure (``cf``, ``propensity``, ``cluster``, ``rfm``, ``drift``).
Everything lives in ``<db>/models/<name>/vNNNNNN/`` with an atomic
``CURRENT`` pointer (:class:`~portrait.models.registry.ModelRegistry`), so a
retrain never disturbs a reader: the new version appears all at once.

``train`` (``portrait models train``), as of the watermark ``T``:

* ``als``: implicit ALS on every logged interaction, weighted by the spec's
  ``interactions`` (else :data:`~portrait.models.cf.DEFAULT_INTERACTIONS`);
* the recommender's blend weights, learned point-in-time on the last horizon
  (:mod:`portrait.recommend.tuning`; kept in ``trained.json``);
* ``p_purchase_<H>`` / ``p_churn_<H>``: LightGBM, calibrated, trained
  point-in-time on the profiles read at ``T - H`` with labels from
  ``(T - H, T]`` (skipped, with the reason, when the log has no purchases or
  one class is missing), over the spec's numeric scalar features;
* ``clusters``: incremental k-means over the same features at ``T``.

Serving is always fresh: a recommendation folds the user's *current* events
into the ALS model at request time (new users too) and re-ranks with the
catalogue's popularity at the watermark; propensities and clusters are
predicted from the profile values as read now, so they change as soon as the
profile does (:func:`model_outputs`). A retrain is due after 10% more events
or a week of event time (:func:`retrain_due`, a
:class:`~portrait.models.registry.RetrainPolicy`); ``portrait models train
--if-due`` checks it, so a cron line keeps the models current.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import polars as pl

from portrait.errors import UnknownUserError, UsageError
from portrait.models.cf import DEFAULT_INTERACTIONS, ALSModel, ALSParams, interactions
from portrait.models.cluster import ProfileClusters
from portrait.models.drift import user_signals
from portrait.models.propensity import PropensityModel, target_name, training_frame
from portrait.models.registry import ModelRegistry, RetrainPolicy
from portrait.models.rfm import rfm_segments
from portrait.recommend.catalog import Catalog
from portrait.recommend.core import Rec, Recommender, RecommendParams, UserContext
from portrait.recommend.tuning import tune
from portrait.timeutil import format_us, parse_duration, parse_time_arg

if TYPE_CHECKING:
    from portrait.engine.engine import Engine

USER = "user_id"
ALS = "als"
CLUSTERS = "clusters"
MIN_CLASS = 10  # examples of each class a propensity model needs
TRAINED = "trained.json"


def registry(engine: Engine) -> ModelRegistry:
    root = getattr(engine.store, "root", None)
    if root is None:
        raise UsageError("this store keeps no model files")
    return ModelRegistry(Path(root) / "models")


def forget_user(engine: Engine, user_id: str) -> int:
    """Remove ``user_id``'s factors from every saved ALS version; returns how many changed.

    The other models hold no per-user rows (propensity models and clusters
    keep only weights and centroids)."""
    root = getattr(engine.store, "root", None)
    if root is None or not (Path(root) / "models").is_dir():
        return 0
    from portrait.models.cf import ALSModel

    reg = registry(engine)
    stored = engine.store.resolve(user_id)
    return sum(ALSModel.erase_user(reg.version_path(ALS, v), stored)
               for v in reg.versions(ALS))


def rename_users(root: Path, mapping: dict[str, str]) -> int:
    """Rename users (old id -> new id) in every saved ALS version (pseudonym re-key)."""
    if not (Path(root) / "models").is_dir():
        return 0
    reg = ModelRegistry(Path(root) / "models")
    return sum(ALSModel.rename_users(reg.version_path(ALS, v), mapping)
               for v in reg.versions(ALS))


def interaction_weights(engine: Engine) -> dict[str, float]:
    """The spec's ``interactions`` over the defaults."""
    return {**DEFAULT_INTERACTIONS, **dict(engine.spec.interactions)}


def numeric_features(engine: Engine) -> list[str]:
    """The spec's numeric scalar features (the propensity and cluster inputs)."""
    return [
        name for name, f in engine.spec.features.items()
        if f.value_type == "number" and not (f.kind in ("first", "last", "min", "max")
                                             and f.field == "ts")
    ]


# --------------------------------------------------------------------- training


def train(engine: Engine, *, horizon: str = "30d", seed: int = 0,
          factors: int = 64, clusters: int = 8) -> dict[str, Any]:
    """Train every model as of the watermark; returns a JSON-able summary."""
    wm = engine.store.meta().watermark
    if wm is None:
        raise UsageError("the database is empty: ingest events before training models")
    reg = registry(engine)
    events = engine.store.events(personal=False)
    out: dict[str, Any] = {"as_of": format_us(wm), "events": events.height}
    started = time.perf_counter()
    inter = interactions(events, interaction_weights(engine))
    if inter.height:
        als = ALSModel(ALSParams(factors=factors, seed=seed)).fit(inter, trained_at=wm)
        version = reg.save(ALS, als)
        out[ALS] = {"version": version, "users": len(als.user_ids), "items": len(als.item_ids),
                    "interactions": als.n_interactions}
        tuned = tune(events, interaction_weights(engine), lambda t, us: _affinities(engine, t, us),
                     wm, parse_duration(horizon), seed=seed)
        out["recommender"] = (
            {"skipped": "too few users with new items in the last horizon to tune on"}
            if tuned is None else
            {"weights": list(tuned.weights), "recall@20": round(tuned.recall, 4),
             "default_weights_recall@20": round(tuned.default_recall, 4),
             "tuned_on_users": tuned.users}
        )
    else:
        out[ALS] = {"skipped": "no events with an item_id and a weighted type"}
    feats = numeric_features(engine)
    values = engine.read_at()
    for target in ("purchase", "churn"):
        name = target_name(target, horizon)
        out[name] = _train_propensity(engine, reg, events, (target, horizon, seed), feats,
                                      wm=wm)
    if feats and values.height >= clusters:
        model = ProfileClusters(min(clusters, values.height), seed, features=feats).fit(values)
        out[CLUSTERS] = {"version": reg.save(CLUSTERS, model), "k": model.k,
                         "features": list(feats)}
    else:
        out[CLUSTERS] = {"skipped": f"needs numeric features and >= {clusters} users"}
    out["seconds"] = round(time.perf_counter() - started, 3)
    summary = {**out, "accepted_events": engine.store.meta().accepted}
    reg.root.mkdir(parents=True, exist_ok=True)  # nothing may have been saved
    tmp = reg.root / (TRAINED + ".tmp")
    tmp.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    tmp.replace(reg.root / TRAINED)
    return out


def _train_propensity(engine: Engine, reg: ModelRegistry, events: pl.DataFrame,
                      job: tuple[str, str, int], feats: list[str], *, wm: int
                      ) -> dict[str, Any]:
    target, horizon, seed = job
    name = target_name(target, horizon)  # type: ignore[arg-type]
    if not feats:
        return {"skipped": "the spec has no numeric features"}
    if target == "purchase" and not (events["type"] == "purchase").any():
        return {"skipped": "no purchase events"}
    at = wm - parse_duration(horizon)
    frame = training_frame(engine, events, at, horizon, target=target)  # type: ignore[arg-type]
    positives = int(frame["label"].sum()) if frame.height else 0
    if min(positives, frame.height - positives) < MIN_CLASS:
        return {"skipped": f"needs >= {MIN_CLASS} examples of each class at "
                           f"{format_us(at)} (got {positives} of {frame.height})"}
    model = PropensityModel(feats, horizon=horizon, target=target, seed=seed)  # type: ignore[arg-type]
    model = model.fit(frame)
    return {"version": reg.save(name, model), "trained_on": format_us(at),
            "examples": frame.height, "positives": positives}


def last_training(engine: Engine) -> dict[str, Any] | None:
    """The summary of the last ``train`` (None before the first)."""
    path = registry(engine).root / TRAINED
    return dict(orjson.loads(path.read_bytes())) if path.is_file() else None


def retrain_due(engine: Engine) -> tuple[bool, str]:
    """Whether a retrain is due, and why: no model yet, >= 10% more events, or a week of
    event time since the last training (a :class:`RetrainPolicy`)."""
    last = last_training(engine)
    if last is None or registry(engine).current(ALS) is None:
        return True, "no trained model yet"
    meta = engine.store.meta()
    trained = int(last.get("accepted_events") or 0)
    policy = RetrainPolicy(every_events=max(1, trained // 10), every_seconds=7 * 86_400)
    model = reg_meta(last)
    new = max(meta.accepted - trained, 0)
    due = policy.due(model, new, meta.watermark or 0)
    return due, f"{new} new events since the model of {last['as_of']}"


class _Trained:
    def __init__(self, trained_at: int | None) -> None:
        self.trained_at = trained_at


def reg_meta(last: Mapping[str, Any]) -> _Trained:
    return _Trained(parse_time_arg(str(last["as_of"])))


# --------------------------------------------------------------------- serving


def recommender(engine: Engine) -> Recommender:
    """The current ALS model and the catalogue at the watermark."""
    reg = registry(engine)
    if reg.current(ALS) is None:
        raise UsageError("no recommendation model yet: run `portrait models train` first")
    model = reg.load(ALS, ALSModel)
    wm = engine.store.meta().watermark or 0
    catalog = Catalog.from_events(engine.store.events(personal=False), wm,
                                  weights=interaction_weights(engine))
    last = last_training(engine) or {}
    tuned = (last.get("recommender") or {}).get("weights")
    params = RecommendParams() if tuned is None else RecommendParams(
        learned_weights=tuple(float(w) for w in tuned))  # type: ignore[arg-type]
    return Recommender(model, catalog, params)


def _affinity_feature(engine: Engine) -> str | None:
    return next((n for n, f in engine.spec.features.items()
                 if f.kind == "decayed" and f.key == "category"), None)


def _affinities(engine: Engine, at: int | None, users: list[str]) -> dict[str, dict[str, float]]:
    """Users' decayed category affinities read at ``at`` (the spec's first such map)."""
    name = _affinity_feature(engine)
    if name is None or not users:
        return {}
    values = engine.read_at(at, users)
    return {
        str(u): {str(e["key"]): float(e["value"]) for e in (entries or [])}
        for u, entries in zip(values[USER].to_list(), values[name].to_list(), strict=True)
    }


def category_affinity(engine: Engine, user_id: str) -> dict[str, float]:
    """The user's decayed category affinity from the profile, now."""
    stored = engine.store.resolve(user_id)
    return _affinities(engine, None, [stored]).get(stored, {})


def recommend(engine: Engine, user_id: str, k: int = 20, *, diversity: float = 0.0,
              rec: Recommender | None = None) -> list[Rec]:
    """Top ``k`` for one user from their current events (cold start: popularity)."""
    rec = rec or recommender(engine)
    if not engine.store.consents(user_id).get("personalisation", True):
        # no personalisation consent: what a user without history gets (privacy/consent.py)
        empty = engine.store.events([user_id], personal=False).clear()
        return rec.recommend(UserContext.from_events(empty, interaction_weights(engine), {}),
                             k, diversity=diversity)
    events = engine.store.events([user_id], personal=False)
    if events.height == 0 and not engine.store.has_user(user_id):
        events = events.clear()  # an unknown user is a cold start, not an error
    ctx = UserContext.from_events(events, interaction_weights(engine),
                                  category_affinity(engine, user_id))
    return rec.recommend(ctx, k, diversity=diversity)


def recommendations_json(user_id: str, recs: list[Rec], *, as_of: int | None) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "as_of": None if as_of is None else format_us(as_of),
        "items": [{"item_id": r.item_id, "score": round(r.score, 6), "reason": r.reason,
                   "sources": list(r.sources)} for r in recs],
    }


def model_outputs(engine: Engine, values: pl.DataFrame, at: int | None = None) -> pl.DataFrame:
    """``user_id`` + every model output for the profiles in ``values`` (read at ``at``).

    ``p_purchase_<H>`` / ``p_churn_<H>`` (calibrated probabilities),
    ``cluster``, ``rfm_segment`` (when the spec has ``last_order``, ``orders``
    and ``spend``) and the drift signals ``interest_shift``,
    ``max_events_per_window``, ``burst``. Only what has been trained appears.
    """
    reg = registry(engine)
    out = values.select(USER)
    for name in reg.names():
        if name.startswith(("p_purchase_", "p_churn_")):
            model = reg.load(name, PropensityModel)
            out = out.with_columns(pl.Series(name, model.predict(values), dtype=pl.Float64))
        elif name == CLUSTERS:
            model_c = reg.load(name, ProfileClusters)
            out = out.with_columns(pl.Series("cluster", model_c.predict(values), dtype=pl.Int32))
    when = engine.store.meta().watermark if at is None else at
    cols = set(values.columns)
    if when is not None and {"last_order", "orders", "spend"} <= cols:
        rfm = rfm_segments(values, when).select(USER, "rfm_segment")
        out = out.join(rfm, on=USER, how="left")
    if when is not None and values.height:
        users = values[USER].to_list() if values.height <= 1000 else None
        signals = user_signals(engine.store.events(users, until=when, personal=False), when)
        out = out.join(signals, on=USER, how="left")
    return out


def outputs_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """One user's model outputs as the profile's ``models`` object (no nulls or NaN)."""
    return {
        k: v for k, v in row.items()
        if k != USER and v is not None and not (isinstance(v, float) and math.isnan(v))
    }


def user_outputs(engine: Engine, user_id: str, at: int | None = None) -> dict[str, Any]:
    """The ``models`` object of one user's profile."""
    values = engine.read_at(at, [user_id])
    if values.height == 0:
        raise UnknownUserError(f"unknown user {user_id!r}")
    frame = model_outputs(engine, values, at)
    return outputs_json(frame.row(0, named=True)) if frame.height else {}
