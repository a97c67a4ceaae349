"""Sliding event-time windows around any kind (river's ``TimeRolling`` idea).

A windowed feature keeps the raw inputs of its inner kind (time, id and the
one or two fields it reads) for events inside the horizon, and reads by
running the inner kind over the entries with ``at - window < ts <= at``. That
is exact for every ``at >= watermark``; entries with ``ts <= watermark -
window`` can never count again and are pruned, which bounds the state by the
window. Reads before the watermark rebuild from the event log instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from portrait.events.schema import EVENT_SCHEMA
from portrait.features.base import USER, Aggregator, old


class Windowed(Aggregator):
    """Wrap ``inner`` so that only events in ``(at - window, at]`` count."""

    def __init__(self, spec, inner: Aggregator) -> None:  # type: ignore[no-untyped-def]
        super().__init__(spec)
        self.inner = inner
        self.window = int(spec.window_us)
        # user_id is the state row's own key, so entries never repeat it.
        needed = {spec.field, spec.key}
        if spec.kind in ("first", "last"):
            needed.add("event_id")
        cols = tuple(
            c for c in inner.event_columns if c != USER and (c != "event_id" or c in needed)
        )
        self.entry_cols = cols
        entry = pl.Struct({c: EVENT_SCHEMA[c] for c in cols})
        self.parts = {"e": pl.List(entry)}

    def lift(self, events: pl.DataFrame) -> pl.DataFrame:
        return events.select(USER, pl.concat_list(pl.struct(self.entry_cols)).alias(self.col("e")))

    def partial(self, events: pl.DataFrame) -> pl.DataFrame:
        sel = self.select_events(events)
        return sel.group_by(USER).agg(pl.struct(self.entry_cols).alias(self.col("e")))

    def partial_at(self, events: pl.DataFrame, watermark: int) -> pl.DataFrame:
        """The batch's entries still inside the window at ``watermark``."""
        keep = self.mask() & (pl.col("ts") > watermark - self.window)
        return (
            events.filter(keep).group_by(USER).agg(pl.struct(self.entry_cols).alias(self.col("e")))
        )

    def pair_merge(self, watermark: int) -> list[pl.Expr]:
        e = self.col("e")
        empty = pl.lit([], self.parts["e"])
        both = pl.concat_list(old(e).fill_null(empty), pl.col(e).fill_null(empty))
        cutoff = watermark - self.window
        kept = both.list.eval(pl.element().filter(pl.element().struct.field("ts") > cutoff))
        return [kept.alias(e)]

    def combine(self, states: pl.DataFrame) -> pl.DataFrame:
        e = self.col("e")
        return states.group_by(USER).agg(pl.col(e).explode().drop_nulls())

    def prune(self, states: pl.DataFrame, watermark: int) -> pl.DataFrame:
        cutoff = watermark - self.window
        e = self.col("e")
        return states.with_columns(
            pl.col(e).list.eval(pl.element().filter(pl.element().struct.field("ts") > cutoff))
        )

    def read(self, states: pl.DataFrame, at: int) -> pl.Series:
        e = self.col("e")
        entries = (
            states.select(USER, pl.col(e))
            .explode(e)
            .drop_nulls(e)
            .unnest(e)
            .filter((pl.col("ts") > at - self.window) & (pl.col("ts") <= at))
        )
        inner_states = self.inner.combine(self.inner.lift(entries))
        aligned = states.select(USER).join(inner_states, on=USER, how="left", maintain_order="left")
        for col, dtype in self.inner.state_schema.items():
            if col not in aligned.columns:
                aligned = aligned.with_columns(pl.lit(None, dtype).alias(col))
        return self.inner.read(aligned, at).alias(self.name)

    def read_row(self, row: Mapping[str, Any], at: int) -> Any:
        low = at - self.window
        inside = [e for e in row.get(self.col("e")) or () if e is not None and low < e["ts"] <= at]
        if USER in (self.spec.field, self.spec.key):  # entries leave out the row's own key
            inside = [{**e, USER: row.get(USER)} for e in inside]
        return self.inner.read_entries(inside, at)

    def fold(self, row: dict[str, Any], events: list[dict[str, Any]], watermark: int) -> None:
        e, cutoff = self.col("e"), watermark - self.window
        kept = [x for x in row.get(e) or () if x is not None and x["ts"] > cutoff]
        kept.extend({c: ev[c] for c in self.entry_cols} for ev in events if ev["ts"] > cutoff)
        row[e] = kept
