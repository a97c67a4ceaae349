"""All the features of a spec together: one state frame, one row per user."""

from __future__ import annotations

from functools import reduce
from typing import TYPE_CHECKING

import polars as pl

from portrait.features.base import USER, Aggregator, empty_states
from portrait.features.maps import Decayed, Distinct, TopK
from portrait.features.scalar import Avg, Count, Extremum, FirstLast, Sum
from portrait.features.window import Windowed

if TYPE_CHECKING:
    from portrait.spec.model import FeatureSpec, Spec

_KINDS: dict[str, type[Aggregator]] = {
    "count": Count,
    "sum": Sum,
    "avg": Avg,
    "min": Extremum,
    "max": Extremum,
    "first": FirstLast,
    "last": FirstLast,
    "distinct": Distinct,
    "top_k": TopK,
    "decayed": Decayed,
}


def build_aggregator(spec: FeatureSpec) -> Aggregator:
    """The aggregator for one feature (windowed when the spec has ``window``)."""
    try:
        cls = _KINDS[spec.kind]
    except KeyError:
        raise NotImplementedError(f"no aggregator for kind {spec.kind!r}") from None
    inner = cls(spec)
    return Windowed(spec, inner) if spec.window_us else inner


class ProfileAggregator:
    """Runs every feature of a spec over frames keyed by ``user_id``."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.aggs = [build_aggregator(f) for f in spec.features.values()]
        self.schema: dict[str, pl.DataType] = {USER: pl.String()}
        for agg in self.aggs:
            self.schema.update(agg.state_schema)

    def empty(self) -> pl.DataFrame:
        return empty_states({k: v for k, v in self.schema.items() if k != USER})

    def conform(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Columns in schema order with schema dtypes (missing ones null)."""
        cols = [
            pl.col(c).cast(dt) if c in frame.columns else pl.lit(None, dt).alias(c)
            for c, dt in self.schema.items()
        ]
        return frame.select(cols)

    def _join(self, frames: list[pl.DataFrame], users: pl.DataFrame) -> pl.DataFrame:
        joined = reduce(
            lambda acc, f: acc.join(f, on=USER, how="left"), frames, users
        )
        return self.conform(joined)

    def partial(self, events: pl.DataFrame) -> pl.DataFrame:
        """The state of ``events`` alone (one row per user present in them)."""
        users = events.select(USER).unique()
        return self._join([agg.partial(events) for agg in self.aggs], users)

    def merge(self, *states: pl.DataFrame) -> pl.DataFrame:
        """Merge state frames (rows of the same user are combined)."""
        both = pl.concat([self.conform(s) for s in states])
        users = both.select(USER).unique()
        parts = [agg.combine(both.select(USER, *agg.state_schema)) for agg in self.aggs]
        return self._join(parts, users)

    def prune(self, states: pl.DataFrame, watermark: int) -> pl.DataFrame:
        for agg in self.aggs:
            states = agg.prune(states, watermark)
        return states

    def read(self, states: pl.DataFrame, at: int) -> pl.DataFrame:
        """``user_id`` + one column per feature: the values at ``at``.

        Keyed features (``top_k``, keyed ``decayed``) are
        ``List(Struct(key, value))`` columns, the shape the rule language reads.
        """
        cols = [states[USER]] + [agg.read(states, at) for agg in self.aggs]
        return pl.DataFrame(cols)
