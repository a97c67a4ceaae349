"""Map kinds: ``distinct``, ``top_k`` and ``decayed`` (scalar or keyed).

Map states are parallel list columns per user (``keys`` / ``counts`` or
``vals``). ``combine`` explodes to one row per (user, key), aggregates, and
implodes (key order inside a list is not significant).

Bounds (documented in docs/semantics.md):

* ``distinct`` is exact up to :data:`DISTINCT_EXACT_LIMIT` keys per user, then
  a HyperLogLog sketch (:mod:`portrait.features.hll`);
* ``top_k`` keeps exact counts for up to :data:`TOPK_MAX_KEYS` keys per user,
  then only the most frequent ones;
* ``decayed`` drops a key once the magnitude of its value at the watermark
  is below :data:`DECAY_EPSILON` (it can only shrink further).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import polars as pl

from portrait.features import hll
from portrait.features.base import USER, Aggregator, old

DISTINCT_EXACT_LIMIT = 10_000
TOPK_MAX_KEYS = 10_000
DECAY_EPSILON = 1e-6
TEXT_PREFIX = "_text_"  # fold(): an event field's value as text (see Distinct.fold)
LN2 = 0.6931471805599453


class Distinct(Aggregator):
    """Number of distinct values of a field (exact, then a sketch)."""

    parts = {"keys": pl.List(pl.String()), "hll": pl.Binary()}

    def lift(self, events: pl.DataFrame) -> pl.DataFrame:
        return events.select(
            USER,
            pl.concat_list(pl.col(self.fname).cast(pl.String)).alias(self.col("keys")),
            pl.lit(None, pl.Binary).alias(self.col("hll")),
        )

    def partial(self, events: pl.DataFrame) -> pl.DataFrame:
        """Vectorised: unique (user, value) pairs, then one list per user."""
        pairs = (
            events.filter(self.mask())
            .select(USER, pl.col(self.fname).cast(pl.String).alias("_k"))
            .unique()
        )
        out = pairs.group_by(USER).agg(pl.col("_k").alias(self.col("keys")))
        return self.finish(out.with_columns(pl.lit(None, pl.Binary).alias(self.col("hll"))))

    def pair_merge(self, watermark: int) -> list[pl.Expr]:
        k, h = self.col("keys"), self.col("hll")
        empty = pl.lit([], pl.List(pl.String))
        return [
            old(k).fill_null(empty).list.set_union(pl.col(k).fill_null(empty)).alias(k),
            pl.concat_list(old(h), pl.col(h)).list.drop_nulls().alias(h),  # folded in finish()
        ]

    def combine(self, states: pl.DataFrame) -> pl.DataFrame:
        k, h = self.col("keys"), self.col("hll")
        pairs = states.select(USER, pl.col(k).alias("_k")).explode("_k").drop_nulls("_k").unique()
        keys = pairs.group_by(USER).agg(pl.col("_k").alias(k))
        sketches = states.filter(pl.col(h).is_not_null()).group_by(USER).agg(pl.col(h))
        users = states.select(USER).unique()
        out = users.join(keys, on=USER, how="left").join(sketches, on=USER, how="left")
        out = out.with_columns(pl.col(h).fill_null(pl.lit([], pl.List(pl.Binary))))
        return self.finish(out)

    def finish(self, states: pl.DataFrame) -> pl.DataFrame:
        """Fold lists of sketches (after a combine) and sketch sets above the limit."""
        k, h = self.col("keys"), self.col("hll")
        if isinstance(states.schema[h], pl.List):
            needs = states.filter(pl.col(h).list.len() > 0)
            states = states.filter(pl.col(h).list.len() == 0).with_columns(
                pl.lit(None, pl.Binary).alias(h)
            )
            if needs.height:
                rows = []
                for user, keys, sketches in needs.select(USER, k, h).iter_rows():
                    regs = hll.add(hll.empty(), keys or [])
                    for blob in sketches:
                        regs = hll.merge(regs, hll.from_bytes(blob))
                    rows.append((user, None, hll.to_bytes(regs)))
                schema = {USER: pl.String(), **self.state_schema}
                merged = pl.DataFrame(rows, schema=schema, orient="row")
                states = pl.concat([states, merged], how="diagonal")
        return self._sketch_large(states)

    def _sketch_large(self, states: pl.DataFrame) -> pl.DataFrame:
        """Turn exact key sets above the limit into sketches (rare, per user)."""
        k = self.col("keys")
        big = pl.col(k).list.len() > DISTINCT_EXACT_LIMIT
        large = states.filter(big)
        if large.height == 0:
            return states
        rows = [
            (user, None, hll.to_bytes(hll.add(hll.empty(), keys)))
            for user, keys in large.select(USER, k).iter_rows()
        ]
        sketched = pl.DataFrame(rows, schema={USER: pl.String(), **self.state_schema}, orient="row")
        return pl.concat([states.filter(~big), sketched], how="diagonal")

    def read(self, states: pl.DataFrame, at: int) -> pl.Series:
        exact = states[self.col("keys")].list.len().fill_null(0).cast(pl.Int64)
        blobs = states[self.col("hll")]
        if blobs.null_count() == len(blobs):
            return exact.alias(self.name)
        est = [None if b is None else hll.estimate(hll.from_bytes(b)) for b in blobs.to_list()]
        return pl.Series(est, dtype=pl.Int64).fill_null(exact).alias(self.name)

    def read_row(self, row: Mapping[str, Any], at: int) -> Any:
        blob = row.get(self.col("hll"))
        if blob is not None:
            return hll.estimate(hll.from_bytes(blob))
        return len(row.get(self.col("keys")) or ())

    def read_entries(self, entries: list[dict[str, Any]], at: int) -> Any:
        keys = {str(e[self.fname]) for e in entries}
        if len(keys) <= DISTINCT_EXACT_LIMIT:
            return len(keys)
        # the sketch hashes Polars' text of a value: use the same cast
        raw = pl.Series([e[self.fname] for e in entries]).cast(pl.String).unique().to_list()
        return hll.estimate(hll.add(hll.empty(), raw))

    def fold(self, row: dict[str, Any], events: list[dict[str, Any]], watermark: int) -> None:
        """Event dicts carry ``TEXT_PREFIX + field``: the value as Polars casts it to text."""
        k, h = self.col("keys"), self.col("hll")
        new = {e[TEXT_PREFIX + self.fname] for e in events}
        blob = row.get(h)
        if blob is not None:
            row[h] = hll.to_bytes(hll.add(hll.from_bytes(blob), new))
            row[k] = None
            return
        keys = set(row.get(k) or ()) | new
        if len(keys) > DISTINCT_EXACT_LIMIT:
            row[h], row[k] = hll.to_bytes(hll.add(hll.empty(), keys)), None
        else:
            row[k] = list(keys)


class TopK(Aggregator):
    """The k most frequent keys with their counts (ties broken by key order)."""

    parts = {"keys": pl.List(pl.String()), "counts": pl.List(pl.Int64())}

    def lift(self, events: pl.DataFrame) -> pl.DataFrame:
        return events.select(
            USER,
            pl.concat_list(pl.col(self.kname)).alias(self.col("keys")),
            pl.concat_list(pl.lit(1, pl.Int64)).alias(self.col("counts")),
        )

    def partial(self, events: pl.DataFrame) -> pl.DataFrame:
        sel = self.select_events(events)
        long = sel.group_by(USER, self.kname).agg(pl.len().cast(pl.Int64).alias("_c"))
        return self._implode(long.rename({self.kname: "_k"}))

    def key_partial(self, ref: int) -> list[pl.Expr]:
        """Per (user, key) aggregations of a batch (fused with other map features)."""
        return [self.mask().sum().cast(pl.Int64).alias(f"_c_{self.name}")]

    def implode_long(self, long: pl.DataFrame, ref: int) -> pl.DataFrame:
        """Per-user lists from the fused (user, _key) frame."""
        c = f"_c_{self.name}"
        return (
            long.filter(pl.col(c) > 0)
            .group_by(USER)
            .agg(pl.col("_key").alias(self.col("keys")), pl.col(c).alias(self.col("counts")))
        )

    def finish(self, states: pl.DataFrame) -> pl.DataFrame:
        k, c = self.col("keys"), self.col("counts")
        longest = states.select(pl.col(k).list.len().max()).item()
        if longest is None or longest <= TOPK_MAX_KEYS:
            return states
        long = states.select(USER, pl.col(k).alias("_k"), pl.col(c).alias("_c")).explode(
            ["_k", "_c"]
        )
        capped = self._implode(long.drop_nulls("_k"))
        rest = states.drop(k, c).join(capped, on=USER, how="left", maintain_order="left")
        return rest.select(states.columns)

    def combine(self, states: pl.DataFrame) -> pl.DataFrame:
        k, c = self.col("keys"), self.col("counts")
        long = (
            states.select(USER, pl.col(k).alias("_k"), pl.col(c).alias("_c"))
            .explode(["_k", "_c"])
            .drop_nulls("_k")
            .group_by(USER, "_k")
            .agg(pl.col("_c").sum())
        )
        users = states.select(USER).unique()
        out = self._implode(long)
        return pl.concat([out, users.join(out.select(USER), on=USER, how="anti")], how="diagonal")

    def _implode(self, long: pl.DataFrame) -> pl.DataFrame:
        if long.height and long.group_by(USER).len()["len"].max() > TOPK_MAX_KEYS:  # type: ignore[operator]
            long = long.sort([USER, "_c", "_k"], descending=[False, True, False])
            long = long.group_by(USER, maintain_order=True).head(TOPK_MAX_KEYS)
        return long.group_by(USER).agg(
            pl.col("_k").alias(self.col("keys")), pl.col("_c").alias(self.col("counts"))
        )

    def read(self, states: pl.DataFrame, at: int) -> pl.Series:
        k = self.spec.k or 1
        long = (
            states.select(
                pl.int_range(pl.len()).alias("_row"),
                pl.col(self.col("keys")).alias("key"),
                pl.col(self.col("counts")).cast(pl.List(pl.Float64)).alias("value"),
            )
            .explode(["key", "value"])
            .drop_nulls("key")
            .sort(["_row", "value", "key"], descending=[False, True, False])
            .group_by("_row", maintain_order=True)
            .head(k)
        )
        return _long_to_map(long, states.height, self.name)

    def read_row(self, row: Mapping[str, Any], at: int) -> Any:
        keys = row.get(self.col("keys")) or ()
        counts = row.get(self.col("counts")) or ()
        return _ranked(zip(keys, counts, strict=True), self.spec.k or 1, float)

    def read_entries(self, entries: list[dict[str, Any]], at: int) -> Any:
        return _ranked(Counter(e[self.kname] for e in entries).items(), self.spec.k or 1, float)

    def fold(self, row: dict[str, Any], events: list[dict[str, Any]], watermark: int) -> None:
        k, c = self.col("keys"), self.col("counts")
        counts = Counter(dict(zip(row.get(k) or (), row.get(c) or (), strict=True)))
        counts.update(e[self.kname] for e in events)
        items = list(counts.items())
        if len(items) > TOPK_MAX_KEYS:
            items = sorted(items, key=lambda kv: (-kv[1], kv[0]))[:TOPK_MAX_KEYS]
        row[k], row[c] = [key for key, _ in items], [n for _, n in items]


def _long_to_map(long: pl.DataFrame, height: int, name: str) -> pl.Series:
    """(_row, key, value) rows -> a List(Struct(key, value)) series of ``height``."""
    packed = long.group_by("_row", maintain_order=True).agg(pl.struct("key", "value").alias(name))
    rows = pl.DataFrame({"_row": pl.int_range(height, eager=True)})
    out = rows.join(packed, on="_row", how="left", maintain_order="left")
    dtype = pl.List(pl.Struct({"key": pl.String(), "value": pl.Float64()}))
    return out[name].cast(dtype).fill_null(pl.lit([], dtype))


def _ranked(pairs: Iterable[tuple[str | None, Any]], k: int | None,
            cast: Callable[[Any], float]) -> list[dict[str, Any]]:
    """``[{key, value}]`` by value descending then key (null keys dropped), at most ``k``."""
    ranked = sorted(((-cast(v), key) for key, v in pairs if key is not None))
    if k is not None:
        ranked = ranked[:k]
    return [{"key": key, "value": -neg} for neg, key in ranked]


class Decayed(Aggregator):
    """Time-decayed weighted count: ``sum(w_i * 2 ** (-(at - t_i) / half_life))``.

    The state stores the value at a reference time ``ref`` (the user's latest
    event time), so a read is one multiplication and values never overflow.
    With ``key`` it is a map key -> value sharing one ``ref`` per user.
    """

    def __init__(self, spec):  # type: ignore[no-untyped-def]
        super().__init__(spec)
        self.half_life = float(spec.half_life_us)
        self.keyed = spec.key is not None
        if self.keyed:
            self.parts = {
                "ref": pl.Int64(),
                "keys": pl.List(pl.String()),
                "vals": pl.List(pl.Float64()),
            }
        else:
            self.parts = {"ref": pl.Int64(), "v": pl.Float64()}

    def _weight(self) -> pl.Expr:
        weights = dict(self.spec.weights)
        default = float(self.spec.default_weight)
        if not weights:
            return pl.lit(default, pl.Float64)
        return pl.col("type").replace_strict(weights, default=default, return_dtype=pl.Float64)

    def _decay(self, dt: pl.Expr) -> pl.Expr:
        """``2 ** (dt / half_life)`` for ``dt <= 0`` microseconds."""
        return (dt.cast(pl.Float64) * (LN2 / self.half_life)).exp()

    def lift(self, events: pl.DataFrame) -> pl.DataFrame:
        w = self._weight()
        if self.keyed:
            return events.select(
                USER,
                pl.col("ts").alias(self.col("ref")),
                pl.concat_list(pl.col(self.kname)).alias(self.col("keys")),
                pl.concat_list(w).alias(self.col("vals")),
            )
        return events.select(USER, pl.col("ts").alias(self.col("ref")), w.alias(self.col("v")))

    def partial(self, events: pl.DataFrame) -> pl.DataFrame:
        sel = self.select_events(events)
        ref = pl.col("ts").max().over(USER)
        contrib = (self._weight() * self._decay(pl.col("ts") - ref)).alias("_v")
        if not self.keyed:
            return sel.group_by(USER).agg(
                pl.col("ts").max().alias(self.col("ref")),
                (self._weight() * self._decay(pl.col("ts") - pl.col("ts").max()))
                .sum()
                .alias(self.col("v")),
            )
        long = sel.select(USER, pl.col(self.kname).alias("_k"), ref.alias("_ref"), contrib)
        long = long.group_by(USER, "_k").agg(pl.col("_ref").first(), pl.col("_v").sum())
        return self._implode(long)

    def fused_partial(self, ref: int, watermark: int) -> list[pl.Expr] | None:
        if self.keyed:
            return None
        m = self.mask()
        contrib = (self._weight() * self._decay(pl.col("ts") - ref)).filter(m)
        return [
            pl.when(m.any()).then(pl.lit(ref, pl.Int64)).alias(self.col("ref")),
            contrib.sum().alias(self.col("v")),
        ]

    def pair_merge(self, watermark: int) -> list[pl.Expr] | None:
        if self.keyed:
            return None
        r, v = self.col("ref"), self.col("v")
        ref = pl.max_horizontal(old(r), pl.col(r))
        a = (old(v) * self._decay(old(r) - ref)).fill_null(0.0)
        b = (pl.col(v) * self._decay(pl.col(r) - ref)).fill_null(0.0)
        return [ref.alias(r), (a + b).alias(v)]

    def key_partial(self, ref: int) -> list[pl.Expr]:
        m = self.mask()
        contrib = (self._weight() * self._decay(pl.col("ts") - ref)).filter(m)
        return [contrib.sum().alias(f"_v_{self.name}"), m.any().alias(f"_p_{self.name}")]

    def implode_long(self, long: pl.DataFrame, ref: int) -> pl.DataFrame:
        """Per-user lists from the fused (user, _key) frame."""
        p, v = f"_p_{self.name}", f"_v_{self.name}"
        return (
            long.filter(pl.col(p))
            .group_by(USER)
            .agg(pl.col("_key").alias(self.col("keys")), pl.col(v).alias(self.col("vals")))
            .with_columns(pl.lit(ref, pl.Int64).alias(self.col("ref")))
        )

    def _implode(self, long: pl.DataFrame) -> pl.DataFrame:
        return long.group_by(USER).agg(
            pl.col("_ref").first().alias(self.col("ref")),
            pl.col("_k").alias(self.col("keys")),
            pl.col("_v").alias(self.col("vals")),
        )

    def combine(self, states: pl.DataFrame) -> pl.DataFrame:
        r = self.col("ref")
        valid = states.filter(pl.col(r).is_not_null())
        if not self.keyed:
            v = self.col("v")
            top = pl.col(r).max().over(USER)
            scaled = valid.with_columns((pl.col(v) * self._decay(pl.col(r) - top)).alias(v))
            return scaled.group_by(USER).agg(pl.col(r).max(), pl.col(v).sum())
        long = (
            valid.select(
                USER,
                pl.col(r).max().over(USER).alias("_ref"),
                (pl.col(r) - pl.col(r).max().over(USER)).alias("_dt"),
                pl.col(self.col("keys")).alias("_k"),
                pl.col(self.col("vals")).alias("_v"),
            )
            .explode(["_k", "_v"])
            .drop_nulls("_k")
            .group_by(USER, "_k")
            .agg(pl.col("_ref").first(), (pl.col("_v") * self._decay(pl.col("_dt"))).sum())
        )
        out = self._implode(long)
        users = valid.group_by(USER).agg(pl.col(r).max())
        missing = users.join(out.select(USER), on=USER, how="anti").with_columns(
            pl.lit([], pl.List(pl.String)).alias(self.col("keys")),
            pl.lit([], pl.List(pl.Float64)).alias(self.col("vals")),
        )
        return pl.concat([out, missing.select(out.columns)])

    def prune(self, states: pl.DataFrame, watermark: int) -> pl.DataFrame:
        if not self.keyed or states.height == 0:
            return states
        r, k, v = self.col("ref"), self.col("keys"), self.col("vals")
        long = (
            states.select(
                USER, pl.col(r).alias("_ref"), pl.col(k).alias("_k"), pl.col(v).alias("_v")
            )
            .filter(pl.col("_ref").is_not_null())
            .explode(["_k", "_v"])
            .filter(
                pl.col("_k").is_not_null()
                & ((pl.col("_v") * self._decay(pl.col("_ref") - watermark)).abs() >= DECAY_EPSILON)
            )
        )
        kept = self._implode(long)
        rest = states.drop([k, v]).join(kept.drop(r), on=USER, how="left", maintain_order="left")
        rest = rest.with_columns(
            pl.col(k).fill_null(pl.lit([], pl.List(pl.String))),
            pl.col(v).fill_null(pl.lit([], pl.List(pl.Float64))),
        )
        return rest.select(states.columns)

    def read(self, states: pl.DataFrame, at: int) -> pl.Series:
        r = self.col("ref")
        factor = self._decay(pl.col(r) - at)
        if not self.keyed:
            out = states.select((pl.col(self.col("v")) * factor).fill_null(0.0).alias(self.name))
            return out[self.name]
        long = (
            states.select(
                pl.int_range(pl.len()).alias("_row"),
                pl.col(self.col("keys")).alias("key"),
                pl.col(self.col("vals")).alias("value"),
                factor.alias("_f"),
            )
            .explode(["key", "value"])
            .drop_nulls("key")
            .with_columns(pl.col("value") * pl.col("_f"))
            .filter(pl.col("value").abs() >= DECAY_EPSILON)
            .sort(["_row", "value", "key"], descending=[False, True, False])
        )
        return _long_to_map(long.select("_row", "key", "value"), states.height, self.name)

    def _factor(self, ref: int, at: int) -> float:
        return math.exp(float(ref - at) * (LN2 / self.half_life))

    def read_row(self, row: Mapping[str, Any], at: int) -> Any:
        ref = row.get(self.col("ref"))
        if not self.keyed:
            v = row.get(self.col("v"))
            return 0.0 if v is None or ref is None else v * self._factor(ref, at)
        if ref is None:
            return []
        f = self._factor(ref, at)
        keys = row.get(self.col("keys")) or ()
        vals = row.get(self.col("vals")) or ()
        scaled = [(key, v * f) for key, v in zip(keys, vals, strict=True) if v is not None]
        return _ranked([(key, v) for key, v in scaled if abs(v) >= DECAY_EPSILON], None, float)

    def read_entries(self, entries: list[dict[str, Any]], at: int) -> Any:
        if not entries:
            return [] if self.keyed else 0.0
        weights, default = dict(self.spec.weights), float(self.spec.default_weight)
        ref = max(e["ts"] for e in entries)
        if not self.keyed:
            v = sum(weights.get(e["type"], default) * self._factor(e["ts"], ref) for e in entries)
            return v * self._factor(ref, at)
        sums: dict[str, float] = {}
        for e in entries:
            key = e[self.kname]
            if key is not None:
                c = weights.get(e["type"], default) * self._factor(e["ts"], ref)
                sums[key] = sums.get(key, 0.0) + c
        return self.read_row({self.col("ref"): ref, self.col("keys"): list(sums),
                              self.col("vals"): list(sums.values())}, at)

    def fold(self, row: dict[str, Any], events: list[dict[str, Any]], watermark: int) -> None:
        r = self.col("ref")
        old_ref = row.get(r)
        if events:
            top = max(e["ts"] for e in events)
            ref = top if old_ref is None else max(old_ref, top)
            weights, default = dict(self.spec.weights), float(self.spec.default_weight)
            if not self.keyed:
                v = self.col("v")
                old = 0.0 if old_ref is None else (row.get(v) or 0.0) * self._factor(old_ref, ref)
                row[v] = old + sum(weights.get(e["type"], default) * self._factor(e["ts"], ref)
                                   for e in events)
                row[r] = ref
                return
            sums: dict[str, float] = {}
            if old_ref is not None:
                f = self._factor(old_ref, ref)
                for key, val in zip(row.get(self.col("keys")) or (),
                                    row.get(self.col("vals")) or (), strict=True):
                    sums[key] = val * f
            for e in events:
                c = weights.get(e["type"], default) * self._factor(e["ts"], ref)
                sums[e[self.kname]] = sums.get(e[self.kname], 0.0) + c
            row[r] = ref
        elif old_ref is None or not self.keyed:
            return
        else:
            ref = old_ref
            sums = dict(zip(row.get(self.col("keys")) or (), row.get(self.col("vals")) or (),
                            strict=True))
        f = self._factor(ref, watermark)  # prune as prune() does
        kept = [(key, v) for key, v in sums.items() if abs(v * f) >= DECAY_EPSILON]
        row[self.col("keys")] = [key for key, _ in kept]
        row[self.col("vals")] = [v for _, v in kept]
