"""The aggregator protocol and helpers shared by every kind.

State columns of feature ``f`` are named ``f__<part>`` so that all features of
a spec live side by side in one frame (one row per user) that is written to
Parquet as is. A missing row, or nulls in a row, is the identity state.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import polars as pl

from portrait.events.schema import NUMERIC_FIELDS

if TYPE_CHECKING:
    from portrait.spec.model import FeatureSpec

USER = "user_id"


def where_mask(spec: FeatureSpec) -> pl.Expr:
    """The ``where`` filter of a feature: every listed field must be in its values.

    Numeric fields compare as numbers (``rating: [5]`` matches 5.0); values
    that are not numbers never match a numeric field. Other fields compare
    as text.
    """
    mask = pl.col("ts").is_not_null()  # a column, so it broadcasts inside group-bys
    for field, values in spec.where:
        if field in NUMERIC_WHERE_FIELDS:
            nums = [x for x in (_as_number(v) for v in values) if x is not None]
            test = pl.col(field).cast(pl.Float64).is_in(nums)
        else:
            test = pl.col(field).cast(pl.String).is_in(list(values))
        mask = mask & test.fill_null(False)
    return mask


NUMERIC_WHERE_FIELDS = (*NUMERIC_FIELDS, "ts")


def _as_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class Aggregator(ABC):
    """One feature kind over a Polars frame keyed by ``user_id``.

    Subclasses declare ``parts`` (state column suffix -> dtype) and implement
    the four operations. ``value_dtype`` is the dtype of ``read``'s column.
    """

    parts: dict[str, pl.DataType]

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.name = spec.name

    @property
    def fname(self) -> str:
        """The spec's ``field`` (kinds that read one always have it)."""
        assert self.spec.field is not None, f"{self.name}: {self.spec.kind} needs a field"
        return self.spec.field

    @property
    def kname(self) -> str:
        """The spec's ``key`` (keyed kinds always have it)."""
        assert self.spec.key is not None, f"{self.name}: {self.spec.kind} needs a key"
        return self.spec.key

    def col(self, part: str) -> str:
        """The state column name of ``part``."""
        return f"{self.name}__{part}"

    @property
    def state_schema(self) -> dict[str, pl.DataType]:
        return {self.col(p): dt for p, dt in self.parts.items()}

    @property
    def event_columns(self) -> tuple[str, ...]:
        """Event columns ``lift`` reads (besides user_id)."""
        cols = ["ts", "event_id"]
        for extra in (self.spec.field, self.spec.key):
            if extra is not None and extra not in cols:
                cols.append(extra)
        if self.spec.kind == "decayed" and "type" not in cols:
            cols.append("type")
        return tuple(cols)

    def mask(self) -> pl.Expr:
        """Which events this feature counts: ``where`` and non-null inputs."""
        mask = where_mask(self.spec)
        for required in self.required_non_null():
            mask = mask & pl.col(required).is_not_null()
        return mask

    def select_events(self, events: pl.DataFrame) -> pl.DataFrame:
        """The events this feature counts: ``where`` applied, null inputs dropped."""
        return events.filter(self.mask())

    # Fast paths. ``ProfileAggregator`` runs ``fused_partial`` of every feature
    # in ONE group-by per batch and ``pair_merge`` in one aligned join. They
    # must give the same states as ``partial``/``combine`` (the property tests
    # compare both against the reference).
    def fused_partial(self, ref: int, watermark: int) -> list[pl.Expr] | None:
        """Aggregations over a batch grouped by user, or None (no fused path).

        ``ref`` is a reference time for decayed values (the batch's latest
        time); ``watermark`` the watermark after the batch (for windows).
        """
        return None

    def pair_merge(self, watermark: int) -> list[pl.Expr] | None:
        """Column-wise merge of two aligned states, or None (use ``combine``).

        Evaluated over ``new.join(old, on=user_id, how="left", suffix="_o")``:
        ``pl.col(c)`` is the new side, ``pl.col(c + "_o")`` the old one
        (null when the user is new). Must equal ``combine`` of the two rows.
        """
        return None

    def finish(self, states: pl.DataFrame) -> pl.DataFrame:
        """Post-step after a fused group-by (sketch switch, caps). Default: none."""
        return states

    def required_non_null(self) -> tuple[str, ...]:
        """Event fields that must be present for an event to count."""
        return tuple(c for c in (self.spec.field, self.spec.key) if c is not None)

    def partial(self, events: pl.DataFrame) -> pl.DataFrame:
        """``combine(lift(events))``: the state of a set of events, one row per user."""
        return self.combine(self.lift(self.select_events(events)))

    @abstractmethod
    def lift(self, events: pl.DataFrame) -> pl.DataFrame:
        """One state row per (already selected) event: ``user_id`` + state columns."""

    @abstractmethod
    def combine(self, states: pl.DataFrame) -> pl.DataFrame:
        """Merge rows of the same user. Must be associative and commutative."""

    def prune(self, states: pl.DataFrame, watermark: int) -> pl.DataFrame:
        """Drop state that cannot affect a read at ``at >= watermark``. Default: none."""
        return states

    @abstractmethod
    def read(self, states: pl.DataFrame, at: int) -> pl.Series:
        """The value at ``at`` (epoch µs) for every row of ``states`` (nulls = identity)."""

    # The one-user read path (serving): plain Python over one state row, no
    # Polars plan per call. Must equal ``read`` of a one-row frame (the
    # property tests compare them on random specs and events).
    @abstractmethod
    def read_row(self, row: Mapping[str, Any], at: int) -> Any:
        """The value at ``at`` of one state row (``col(part)`` -> Python value, None = identity)."""

    def read_entries(self, entries: list[dict[str, Any]], at: int) -> Any:
        """The value of a set of raw, already selected events (windowed features read this)."""
        raise NotImplementedError(f"{self.spec.kind} cannot be windowed")

    # The one-user write path (small batches): fold a user's new events into
    # their state row in plain Python. Must read equal to ``merge_into`` of
    # the batch's ``partial`` (the property tests run both).
    @abstractmethod
    def fold(self, row: dict[str, Any], events: list[dict[str, Any]], watermark: int) -> None:
        """Update ``row`` in place with ``events`` (this feature's selection of one user's
        new events, sorted by (ts, event_id)); prune at ``watermark``."""

    def matches(self) -> Callable[[Mapping[str, Any]], bool]:
        """``mask()`` as a Python predicate on one event dict."""
        numeric: list[tuple[str, frozenset[float]]] = []
        text: list[tuple[str, frozenset[str]]] = []
        for field, values in self.spec.where:
            if field in NUMERIC_WHERE_FIELDS:
                nums = frozenset(x for x in (_as_number(v) for v in values) if x is not None)
                numeric.append((field, nums))
            else:
                text.append((field, frozenset(values)))
        required = self.required_non_null()

        def test(e: Mapping[str, Any]) -> bool:
            if any(e[c] is None for c in required):
                return False
            for f, nums in numeric:
                if e[f] is None or float(e[f]) not in nums:
                    return False
            return all(e[f] is not None and str(e[f]) in texts for f, texts in text)

        return test


def old(column: str) -> pl.Expr:
    """The old side of an aligned pair (see ``Aggregator.pair_merge``)."""
    return pl.col(column + OLD_SUFFIX)


OLD_SUFFIX = "_o"


def empty_states(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema={USER: pl.String(), **schema})
