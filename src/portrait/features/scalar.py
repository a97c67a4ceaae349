"""Scalar kinds: count, sum, avg, min, max, first, last.

Each state is one or two numbers per user; ``combine`` is a plain group-by
aggregation, so merge laws hold by construction (up to float rounding for
``sum``/``avg`` of floats, see docs/semantics.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from portrait.events.schema import EVENT_SCHEMA
from portrait.features.base import USER, Aggregator, old


def _field_dtype(field: str | None) -> pl.DataType:
    assert field is not None
    return EVENT_SCHEMA[field]


class Count(Aggregator):
    """Number of matching events."""

    parts = {"n": pl.Int64()}

    def lift(self, events: pl.DataFrame) -> pl.DataFrame:
        return events.select(USER, pl.lit(1, pl.Int64).alias(self.col("n")))

    def partial(self, events: pl.DataFrame) -> pl.DataFrame:
        sel = self.select_events(events)
        return sel.group_by(USER).agg(pl.len().cast(pl.Int64).alias(self.col("n")))

    def combine(self, states: pl.DataFrame) -> pl.DataFrame:
        return states.group_by(USER).agg(pl.col(self.col("n")).sum())

    def fused_partial(self, ref: int, watermark: int) -> list[pl.Expr]:
        return [self.mask().sum().cast(pl.Int64).alias(self.col("n"))]

    def pair_merge(self, watermark: int) -> list[pl.Expr]:
        n = self.col("n")
        return [(pl.col(n).fill_null(0) + old(n).fill_null(0)).alias(n)]

    def read(self, states: pl.DataFrame, at: int) -> pl.Series:
        return states[self.col("n")].fill_null(0).alias(self.name)

    def read_row(self, row: Mapping[str, Any], at: int) -> Any:
        return row.get(self.col("n")) or 0

    def read_entries(self, entries: list[dict[str, Any]], at: int) -> Any:
        return len(entries)

    def fold(self, row: dict[str, Any], events: list[dict[str, Any]], watermark: int) -> None:
        n = self.col("n")
        row[n] = (row.get(n) or 0) + len(events)


class Sum(Aggregator):
    """Sum of a numeric field (Int64 for ``quantity``, Float64 otherwise)."""

    def __init__(self, spec):  # type: ignore[no-untyped-def]
        super().__init__(spec)
        self.parts = {"s": _field_dtype(spec.field)}

    def lift(self, events: pl.DataFrame) -> pl.DataFrame:
        dt = self.parts["s"]
        return events.select(USER, pl.col(self.fname).cast(dt).alias(self.col("s")))

    def combine(self, states: pl.DataFrame) -> pl.DataFrame:
        return states.group_by(USER).agg(pl.col(self.col("s")).sum())

    def fused_partial(self, ref: int, watermark: int) -> list[pl.Expr]:
        dt = self.parts["s"]
        value = pl.col(self.fname).cast(dt).filter(self.mask())
        return [value.sum().alias(self.col("s"))]

    def pair_merge(self, watermark: int) -> list[pl.Expr]:
        c = self.col("s")
        return [pl.sum_horizontal(pl.col(c), old(c)).cast(self.parts["s"]).alias(c)]

    def read(self, states: pl.DataFrame, at: int) -> pl.Series:
        return states[self.col("s")].fill_null(0).alias(self.name)

    def _zero(self) -> int | float:
        return 0 if self.parts["s"] == pl.Int64 else 0.0

    def read_row(self, row: Mapping[str, Any], at: int) -> Any:
        found = row.get(self.col("s"))
        return self._zero() if found is None else found

    def read_entries(self, entries: list[dict[str, Any]], at: int) -> Any:
        cast = int if self.parts["s"] == pl.Int64 else float
        return sum((cast(e[self.fname]) for e in entries), self._zero())

    def fold(self, row: dict[str, Any], events: list[dict[str, Any]], watermark: int) -> None:
        s = self.col("s")
        row[s] = (row.get(s) or self._zero()) + self.read_entries(events, watermark)


class Avg(Aggregator):
    """Mean of a numeric field; null when no event has it."""

    parts = {"s": pl.Float64(), "n": pl.Int64()}

    def lift(self, events: pl.DataFrame) -> pl.DataFrame:
        return events.select(
            USER,
            pl.col(self.fname).cast(pl.Float64).alias(self.col("s")),
            pl.lit(1, pl.Int64).alias(self.col("n")),
        )

    def combine(self, states: pl.DataFrame) -> pl.DataFrame:
        return states.group_by(USER).agg(pl.col(self.col("s")).sum(), pl.col(self.col("n")).sum())

    def fused_partial(self, ref: int, watermark: int) -> list[pl.Expr]:
        m = self.mask()
        return [
            pl.col(self.fname).cast(pl.Float64).filter(m).sum().alias(self.col("s")),
            m.sum().cast(pl.Int64).alias(self.col("n")),
        ]

    def pair_merge(self, watermark: int) -> list[pl.Expr]:
        s, n = self.col("s"), self.col("n")
        return [
            pl.sum_horizontal(pl.col(s), old(s)).alias(s),
            pl.sum_horizontal(pl.col(n), old(n)).cast(pl.Int64).alias(n),
        ]

    def read(self, states: pl.DataFrame, at: int) -> pl.Series:
        n = states[self.col("n")].fill_null(0)
        s = states[self.col("s")].fill_null(0.0)
        return (s / n.cast(pl.Float64)).fill_nan(None).alias(self.name)

    def read_row(self, row: Mapping[str, Any], at: int) -> Any:
        n = row.get(self.col("n")) or 0
        return (row.get(self.col("s")) or 0.0) / n if n else None

    def read_entries(self, entries: list[dict[str, Any]], at: int) -> Any:
        if not entries:
            return None
        return sum(float(e[self.fname]) for e in entries) / len(entries)

    def fold(self, row: dict[str, Any], events: list[dict[str, Any]], watermark: int) -> None:
        s, n = self.col("s"), self.col("n")
        row[s] = (row.get(s) or 0.0) + sum(float(e[self.fname]) for e in events)
        row[n] = (row.get(n) or 0) + len(events)


class Extremum(Aggregator):
    """``min`` or ``max`` of a numeric field; null when no event has it."""

    def __init__(self, spec):  # type: ignore[no-untyped-def]
        super().__init__(spec)
        self.parts = {"m": _field_dtype(spec.field)}
        self.is_max = spec.kind == "max"

    def lift(self, events: pl.DataFrame) -> pl.DataFrame:
        dt = self.parts["m"]
        return events.select(USER, pl.col(self.fname).cast(dt).alias(self.col("m")))

    def combine(self, states: pl.DataFrame) -> pl.DataFrame:
        c = pl.col(self.col("m"))
        return states.group_by(USER).agg(c.max() if self.is_max else c.min())

    def fused_partial(self, ref: int, watermark: int) -> list[pl.Expr]:
        v = pl.col(self.fname).cast(self.parts["m"]).filter(self.mask())
        return [(v.max() if self.is_max else v.min()).alias(self.col("m"))]

    def pair_merge(self, watermark: int) -> list[pl.Expr]:
        m = self.col("m")
        pick = pl.max_horizontal if self.is_max else pl.min_horizontal
        return [pick(pl.col(m), old(m)).alias(m)]

    def read(self, states: pl.DataFrame, at: int) -> pl.Series:
        return states[self.col("m")].alias(self.name)

    def read_row(self, row: Mapping[str, Any], at: int) -> Any:
        return row.get(self.col("m"))

    def read_entries(self, entries: list[dict[str, Any]], at: int) -> Any:
        values = [e[self.fname] for e in entries]
        if not values:
            return None
        return max(values) if self.is_max else min(values)

    def fold(self, row: dict[str, Any], events: list[dict[str, Any]], watermark: int) -> None:
        m = self.col("m")
        values = [e[self.fname] for e in events]
        if row.get(m) is not None:
            values.append(row[m])
        if values:
            row[m] = max(values) if self.is_max else min(values)


class FirstLast(Aggregator):
    """The field value of the earliest (``first``) or latest (``last``) event.

    Ties in time are broken by ``event_id`` (smallest first, largest last), so
    the answer never depends on arrival order.
    """

    def __init__(self, spec):  # type: ignore[no-untyped-def]
        super().__init__(spec)
        self.parts = {"ts": pl.Int64(), "eid": pl.String(), "v": _field_dtype(spec.field)}
        self.is_last = spec.kind == "last"

    def lift(self, events: pl.DataFrame) -> pl.DataFrame:
        return events.select(
            USER,
            pl.col("ts").alias(self.col("ts")),
            pl.col("event_id").alias(self.col("eid")),
            pl.col(self.fname).cast(self.parts["v"]).alias(self.col("v")),
        )

    @property
    def trivial_mask(self) -> bool:
        """No ``where`` and a field that is never null: plain first()/last() work."""
        return not self.spec.where and self.spec.field in ("ts", "user_id", "type", "event_id")

    def _pick(self, frame: pl.DataFrame, ts: str, eid: str) -> pl.DataFrame:
        """The row with the extreme (ts, eid) per user (frame rows need no order)."""
        order = frame.sort([ts, eid], descending=self.is_last, nulls_last=True)
        return order.unique(USER, keep="first", maintain_order=True)

    def partial(self, events: pl.DataFrame) -> pl.DataFrame:
        """Vectorised: filter, one sort by (ts, event_id), first row per user."""
        return self.combine(self.lift(self.select_events(events)))

    def partial_sorted(self, events: pl.DataFrame) -> pl.DataFrame:
        """Like ``partial`` on a batch already sorted by (ts, event_id): no sort."""
        picked = self.lift(self.select_events(events)).unique(
            USER, keep="last" if self.is_last else "first", maintain_order=True
        )
        return picked

    def fused_partial(self, ref: int, watermark: int) -> list[pl.Expr] | None:
        """On a batch pre-sorted by (ts, event_id), only when the mask is trivial."""
        if not self.trivial_mask:
            return None
        v = pl.col(self.fname).cast(self.parts["v"])
        cols = (pl.col("ts"), pl.col("event_id"), v)
        picked = [c.last() if self.is_last else c.first() for c in cols]
        return [e.alias(self.col(p)) for e, p in zip(picked, ("ts", "eid", "v"), strict=True)]

    def pair_merge(self, watermark: int) -> list[pl.Expr]:
        ts, eid = self.col("ts"), self.col("eid")
        a_ts, a_eid, b_ts, b_eid = old(ts), old(eid), pl.col(ts), pl.col(eid)
        if self.is_last:
            better = (a_ts > b_ts) | ((a_ts == b_ts) & (a_eid > b_eid))
        else:
            better = (a_ts < b_ts) | ((a_ts == b_ts) & (a_eid < b_eid))
        old_wins = a_ts.is_not_null() & (b_ts.is_null() | better)
        cols = (ts, eid, self.col("v"))
        return [pl.when(old_wins).then(old(c)).otherwise(pl.col(c)).alias(c) for c in cols]

    def combine(self, states: pl.DataFrame) -> pl.DataFrame:
        ts, eid = self.col("ts"), self.col("eid")
        cols = [USER, ts, eid, self.col("v")]
        keep = states.select(cols).filter(pl.col(ts).is_not_null())
        picked = self._pick(keep, ts, eid)
        missing = states.select(USER).unique().join(picked.select(USER), on=USER, how="anti")
        return pl.concat([picked, missing], how="diagonal")

    def read(self, states: pl.DataFrame, at: int) -> pl.Series:
        return states[self.col("v")].alias(self.name)

    def read_row(self, row: Mapping[str, Any], at: int) -> Any:
        return row.get(self.col("v"))

    def read_entries(self, entries: list[dict[str, Any]], at: int) -> Any:
        if not entries:
            return None
        pick = max if self.is_last else min
        return pick(entries, key=lambda e: (e["ts"], e["event_id"]))[self.fname]

    def fold(self, row: dict[str, Any], events: list[dict[str, Any]], watermark: int) -> None:
        ts, eid, v = self.col("ts"), self.col("eid"), self.col("v")
        found = [(e["ts"], e["event_id"], e[self.fname]) for e in events]
        if row.get(ts) is not None:
            found.append((row[ts], row[eid], row[v]))
        if found:
            pick = max if self.is_last else min
            row[ts], row[eid], row[v] = pick(found, key=lambda t: (t[0], t[1]))
