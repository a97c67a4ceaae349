"""Drift: per-user interest shift, bot-like bursts, and population drift (PSI).

Pure functions over Polars frames (the event log frame of
:data:`portrait.events.schema.EVENT_SCHEMA`, or read profiles), vectorised:
group-bys and rolling windows, never a Python loop per user. Times are epoch
microseconds UTC.

**Interest shift** (per user). Two time-decayed distributions over the
user's categories as of ``at``, a short one (half-life 7 days) and a long one
(90 days)::

    mass_h(c) = sum over the user's events e with category c and ts <= at of
                weight(type_e) * 2 ** (-(at - ts_e) / h)
    P_h(c)    = mass_h(c) / sum_c' mass_h(c')

and their Jensen–Shannon divergence in bits, in ``[0, 1]``::

    M  = (P_short + P_long) / 2
    JS = KL(P_short || M) / 2 + KL(P_long || M) / 2,   KL(p || q) = sum p log2(p / q)

0 means the recent mix equals the long-run mix; 1 means the user now acts
on categories disjoint from their history. The normalisation cancels any
common factor, so the masses are computed relative to the user's latest
event (``2 ** (-(last - ts) / h)``): the result is the same and never
underflows for old events. Weights must be >= 0 (a distribution needs
non-negative masses). A user without a categorised event has no row in
:func:`interest_shift` (one whose events all weigh 0 gets null) and a null
``interest_shift`` in :func:`user_signals`.

**Bursts** (per user). ``max_events_per_window`` is the largest number of
the user's events in any sliding window ``(t - window, t]`` (a rolling count
ending at each event). ``burst`` is true when it exceeds ``threshold``
(default 30 events per 60 s), or when it is a robust outlier of the
population: ``max > median + mad_k * max(1.4826 * MAD, 1)`` over the users in
the frame (``mad_k`` = 10; the floor of one event keeps a population where
nearly everyone has one event per minute from flagging a user with two), and
only when the population has at least :data:`MIN_ROBUST_POPULATION` users.

**PSI** (population). For each numeric feature, bins are the quantiles
``i / bins`` (i = 1..bins-1) of the *reference* values; tied quantiles
collapse into one edge, so a point mass gets its own bin and a constant
column two bins, ``(-inf, c]`` and ``(c, inf)``. Bins are right-closed.
Nulls (and NaN) form a bin of their own. With ``a_i`` / ``e_i`` the current
/ reference shares of bin i (each floored at :data:`PSI_EPSILON` so an empty
bin stays finite)::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

level: ``stable`` (< 0.1), ``moderate`` (< 0.25), ``significant``; ``empty``
(psi null) when either period has no rows. Keyed features
(``List(Struct(key, value))``, as :meth:`Engine.read_at` returns them) are
expanded into one column ``name['key']`` per key for the ``top_keys`` keys
held by most reference users; a missing key reads 0, as in segment rules.
:func:`population_drift` reads profiles at both times, keeps the users with
at least one event by then, turns time-valued features (first/last/min/max of
``ts``) into their age in days at the read time (``age_days(name)``), and
skips string features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from portrait.features.base import USER
from portrait.privacy.consent import counted
from portrait.timeutil import US_PER_S, format_us

if TYPE_CHECKING:
    from portrait.engine import Engine

DAY_US = 86_400 * US_PER_S
SHORT_HALF_LIFE_US = 7 * DAY_US
LONG_HALF_LIFE_US = 90 * DAY_US
BURST_WINDOW_US = 60 * US_PER_S
BURST_THRESHOLD = 30
MAD_K = 10.0
MAD_SCALE = 1.4826  # MAD -> standard deviation under normality
MIN_ROBUST_POPULATION = 20
PSI_EPSILON = 1e-4
PSI_STABLE = 0.1
PSI_MODERATE = 0.25
LN2 = 0.6931471805599453

SIGNAL_SCHEMA: dict[str, pl.DataType] = {
    USER: pl.String(),
    "interest_shift": pl.Float64(),
    "max_events_per_window": pl.Int64(),
    "burst": pl.Boolean(),
}


# --- interest shift --------------------------------------------------------


def _weight(weights: Mapping[str, float] | None) -> pl.Expr:
    if not weights:
        return pl.lit(1.0, pl.Float64)
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"interest weights must be >= 0, got {dict(weights)!r}")
    return pl.col("type").replace_strict(dict(weights), default=1.0, return_dtype=pl.Float64)


def _kl_terms(p: str, m: str) -> pl.Expr:
    """``p * log2(p / m)`` with ``0 * log 0 = 0``."""
    return pl.when(pl.col(p) > 0).then(pl.col(p) * (pl.col(p) / pl.col(m)).log(2)).otherwise(0.0)


def interest_shift(
    events: pl.DataFrame,
    at: int,
    *,
    short: int = SHORT_HALF_LIFE_US,
    long: int = LONG_HALF_LIFE_US,
    weights: Mapping[str, float] | None = None,
    key: str = "category",
) -> pl.DataFrame:
    """``user_id, interest_shift, short_top, long_top`` for every user with a ``key``.

    ``short`` / ``long`` are half-lives in microseconds; ``weights`` maps
    event types to weights (unlisted types weigh 1).
    """
    w = _weight(weights)
    sel = events.filter((pl.col("ts") <= at) & pl.col(key).is_not_null())
    age = (pl.col("ts").max().over(USER) - pl.col("ts")).cast(pl.Float64)
    mass = sel.select(
        USER,
        pl.col(key).cast(pl.String).alias("_k"),
        (w * (-age * (LN2 / short)).exp()).alias("_s"),
        (w * (-age * (LN2 / long)).exp()).alias("_l"),
    ).group_by(USER, "_k").agg(pl.col("_s").sum(), pl.col("_l").sum())
    dist = mass.with_columns(
        (pl.col("_s") / pl.col("_s").sum().over(USER)).alias("_p"),
        (pl.col("_l") / pl.col("_l").sum().over(USER)).alias("_q"),
    ).with_columns(((pl.col("_p") + pl.col("_q")) / 2).alias("_m"))
    out = dist.sort(USER, "_k").group_by(USER).agg(
        ((_kl_terms("_p", "_m") + _kl_terms("_q", "_m")).sum() / 2)
        .clip(0.0, 1.0)
        .alias("interest_shift"),
        pl.col("_k").sort_by("_s", descending=True, maintain_order=True).first().alias("short_top"),
        pl.col("_k").sort_by("_l", descending=True, maintain_order=True).first().alias("long_top"),
    )
    bad = ~pl.col("interest_shift").is_finite()  # zero total mass (all weights 0)
    return out.with_columns(
        pl.when(bad).then(None).otherwise(pl.col("interest_shift")).alias("interest_shift")
    ).sort(USER)


# --- bursts ------------------------------------------------------------------


def bursts(
    events: pl.DataFrame,
    *,
    window_us: int = BURST_WINDOW_US,
    threshold: int = BURST_THRESHOLD,
    mad_k: float | None = MAD_K,
) -> pl.DataFrame:
    """``user_id, max_events_per_window, burst`` for every user in ``events``.

    ``mad_k=None`` turns the robust-outlier rule off (threshold only).
    """
    if events.height == 0:
        cols = (USER, "max_events_per_window", "burst")
        return pl.DataFrame(schema={c: SIGNAL_SCHEMA[c] for c in cols})
    counts = (
        events.select(USER, "ts")
        .sort(USER, "ts")
        .rolling(index_column="ts", period=f"{window_us}i", group_by=USER)
        .agg(pl.len().alias("_n"))
        .group_by(USER)
        .agg(pl.col("_n").max().cast(pl.Int64).alias("max_events_per_window"))
    )
    flag = pl.col("max_events_per_window") > threshold
    if mad_k is not None and counts.height >= MIN_ROBUST_POPULATION:
        flag = flag | (pl.col("max_events_per_window") > robust_limit(counts, mad_k))
    return counts.with_columns(flag.alias("burst")).sort(USER)


def robust_limit(counts: pl.DataFrame, mad_k: float = MAD_K) -> float:
    """``median + mad_k * max(1.4826 * MAD, 1)`` of ``max_events_per_window``."""
    x = counts["max_events_per_window"].to_numpy().astype(np.float64)
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med)))
    return med + mad_k * max(MAD_SCALE * mad, 1.0)


def user_signals(
    events: pl.DataFrame,
    at: int,
    *,
    window_us: int = BURST_WINDOW_US,
    threshold: int = BURST_THRESHOLD,
    weights: Mapping[str, float] | None = None,
) -> pl.DataFrame:
    """``user_id, interest_shift, max_events_per_window, burst`` (events with ts <= at).

    One row per user in ``events``; these column names are stable (they
    become profile fields).
    """
    upto = events.filter(pl.col("ts") <= at)
    shift = interest_shift(upto, at, weights=weights).select(USER, "interest_shift")
    burst = bursts(upto, window_us=window_us, threshold=threshold)
    users = upto.select(USER).unique()
    out = users.join(shift, on=USER, how="left").join(burst, on=USER, how="left")
    return out.select(pl.col(c).cast(dt) for c, dt in SIGNAL_SCHEMA.items()).sort(USER)


# --- population stability index ----------------------------------------------

_MAP = pl.List(pl.Struct({"key": pl.String(), "value": pl.Float64()}))


def _is_map(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)


def expand_keys(
    reference: pl.DataFrame, current: pl.DataFrame, column: str, top_keys: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One ``column['key']`` column per key held by most reference rows (missing = 0).

    Keys come from ``current`` only when the reference holds none at all.
    """
    keys = _top_keys(reference, column, top_keys) or _top_keys(current, column, top_keys)

    def pick(frame: pl.DataFrame) -> pl.DataFrame:
        entries = pl.col(column).list
        return frame.select(
            entries.filter(pl.element().struct.field("key") == k)
            .list.first()
            .struct.field("value")
            .cast(pl.Float64)
            .fill_null(0.0)
            .alias(f"{column}[{k!r}]")
            for k in keys
        )

    return pick(reference), pick(current)


def _top_keys(frame: pl.DataFrame, column: str, top_keys: int) -> list[str]:
    long = frame.select(pl.col(column).alias("_e")).explode("_e").drop_nulls("_e").unnest("_e")
    ranked = long.group_by("key").len().sort(["len", "key"], descending=[True, False])
    keys: list[str] = ranked["key"].head(top_keys).to_list()
    return keys


def _psi_one(ref: np.ndarray, cur: np.ndarray, bins: int) -> tuple[float | None, int]:
    """PSI of one column (float arrays, NaN = null) and the number of value bins."""
    if ref.size == 0 or cur.size == 0:
        return None, 0
    ref_ok = ref[~np.isnan(ref)]
    edges = np.unique(np.quantile(ref_ok, np.arange(1, bins) / bins)) if ref_ok.size else ref_ok
    n_bins = len(edges) + 1

    def shares(x: np.ndarray) -> np.ndarray:
        ok = ~np.isnan(x)
        idx = np.searchsorted(edges, x[ok], side="left")  # right-closed bins
        counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
        counts = np.append(counts, float((~ok).sum()))
        return np.maximum(counts / x.size, PSI_EPSILON)

    e, a = shares(ref), shares(cur)
    return float(np.sum((a - e) * np.log(a / e))), n_bins


def psi_level(value: float | None) -> str:
    """``stable`` / ``moderate`` / ``significant`` (``empty`` when undefined)."""
    if value is None:
        return "empty"
    if value < PSI_STABLE:
        return "stable"
    return "moderate" if value < PSI_MODERATE else "significant"


def _numeric_columns(frame: pl.DataFrame) -> list[str]:
    return [c for c, dt in frame.schema.items() if c != USER and (dt.is_numeric() or _is_map(dt))]


def psi(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    columns: Sequence[str] | None = None,
    bins: int = 10,
    *,
    top_keys: int = 5,
) -> pl.DataFrame:
    """``feature, psi, level, bins``: the population stability index of each column.

    ``columns`` defaults to every numeric or keyed column of ``reference``
    (``user_id`` excluded); keyed ones are expanded to their ``top_keys``
    keys. ``bins`` is the number of reference quantile bins (ties collapse).
    """
    if bins < 2:
        raise ValueError(f"psi needs at least 2 bins, got {bins}")
    names = list(columns) if columns is not None else _numeric_columns(reference)
    flat_ref, flat_cur = [], []
    for name in names:
        if _is_map(reference.schema[name]):
            r, c = expand_keys(reference, current, name, top_keys)
        else:
            r, c = reference.select(name), current.select(name)
        flat_ref.append(r)
        flat_cur.append(c)
    rows = []
    for r, c in zip(flat_ref, flat_cur, strict=True):
        for col in r.columns:
            value, used = _psi_one(_floats(r[col]), _floats(c[col]), bins)
            rows.append((col, value, psi_level(value), used))
    schema = {"feature": pl.String, "psi": pl.Float64, "level": pl.String, "bins": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def _floats(s: pl.Series) -> np.ndarray:
    return s.cast(pl.Float64).fill_nan(None).to_numpy().astype(np.float64)


# --- engine-level reads --------------------------------------------------------


def profiles_for_drift(engine: Engine, at: int) -> pl.DataFrame:
    """Read profiles at ``at`` of users with an event by then (and analytics consent),
    drift-ready columns."""
    values = counted(engine.store, engine.read_at(at))
    wm = engine.store.meta().watermark
    if wm is not None and at < wm:
        active = engine.store.events(None, until=at, personal=False).select(USER).unique()
        values = values.join(active, on=USER, how="semi")
    cols: list[pl.Expr] = []
    for name, spec in engine.spec.features.items():
        if spec.field == "ts" and spec.kind in ("first", "last", "min", "max"):
            age = (pl.lit(at, pl.Int64) - pl.col(name)).cast(pl.Float64) / DAY_US
            cols.append(age.alias(f"age_days({name})"))
        elif spec.value_type != "string":
            cols.append(pl.col(name))
    return values.select(USER, *cols)


def population_drift(
    engine: Engine, at_ref: int, at_cur: int, *, bins: int = 10, top_keys: int = 5
) -> pl.DataFrame:
    """PSI of every numeric feature between the profiles at ``at_ref`` and ``at_cur``."""
    reference = profiles_for_drift(engine, at_ref)
    current = profiles_for_drift(engine, at_cur)
    return psi(reference, current, bins=bins, top_keys=top_keys)


def drift_report(engine: Engine, at_ref: int, at_cur: int, *, top: int = 10) -> dict[str, Any]:
    """What ``portrait drift --json`` prints (see the CLI for the shape)."""
    table = population_drift(engine, at_ref, at_cur)
    events = counted(engine.store, engine.store.events(None, until=at_cur, personal=False))
    shift = interest_shift(events, at_cur).drop_nulls("interest_shift")
    shift = shift.sort(["interest_shift", USER], descending=[True, False]).head(top)
    flagged = bursts(events).filter(pl.col("burst"))
    flagged = flagged.sort(["max_events_per_window", USER], descending=[True, False])
    return {
        "ref": format_us(at_ref),
        "at": format_us(at_cur),
        "population": table.to_dicts(),
        "interest_shift": shift.to_dicts(),
        "bursts": flagged.select(USER, "max_events_per_window").to_dicts(),
        "burst_rule": {
            "window_s": BURST_WINDOW_US / US_PER_S,
            "threshold": BURST_THRESHOLD,
            "mad_k": MAD_K,
        },
    }
