"""The profile spec as plain, immutable, hashable values.

A :class:`Spec` is what :func:`portrait.spec.loader.parse_spec` returns once the
YAML has been checked: every feature is a :class:`FeatureSpec` with its options
normalised (durations in microseconds, ``where`` and ``weights`` sorted), and
every segment carries its parsed :class:`~portrait.spec.rules.Rule`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from portrait.events.schema import STRING_FIELDS

if TYPE_CHECKING:
    from portrait.spec.rules import Rule

KINDS: tuple[str, ...] = (
    "count", "sum", "avg", "min", "max", "first", "last", "distinct", "top_k", "decayed",
)

ValueType = Literal["number", "string", "map"]
_V = TypeVar("_V")


class FrozenMap(Mapping[str, _V]):
    """A read-only, hashable mapping that keeps insertion order.

    >>> m = FrozenMap({"b": 1, "a": 2})
    >>> list(m), m["a"], hash(m) == hash(FrozenMap({"a": 2, "b": 1}))
    (['b', 'a'], 2, True)
    """

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[str, _V] | None = None) -> None:
        self._data: dict[str, _V] = dict(items or {})

    def __getitem__(self, key: str) -> _V:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


@dataclass(frozen=True)
class FeatureSpec:
    """One feature of the spec, with its options checked and normalised.

    Times are microseconds. ``where`` is ``((field, (value, ...)), ...)``
    sorted by field, values as strings; ``weights`` is ``((type, weight), ...)``
    sorted by type. Which options a kind takes is enforced by the loader.
    """

    name: str
    kind: str
    line: int
    field: str | None = None
    key: str | None = None
    where: tuple[tuple[str, tuple[str, ...]], ...] = ()
    window_us: int | None = None
    half_life_us: int | None = None
    weights: tuple[tuple[str, float], ...] = ()
    default_weight: float = 1.0
    k: int | None = None

    @property
    def keyed(self) -> bool:
        """True when the value is a map key -> number (``top_k``, keyed ``decayed``)."""
        return self.kind == "top_k" or (self.kind == "decayed" and self.key is not None)

    @property
    def value_type(self) -> ValueType:
        """What a read of this feature gives: ``"number"``, ``"string"`` or ``"map"``.

        ``first``/``last`` of a string field are strings (of ``ts``: epoch
        microseconds); every other scalar feature is a number.
        """
        if self.keyed:
            return "map"
        if self.kind in ("first", "last") and self.field in STRING_FIELDS:
            return "string"
        return "number"

    def weight(self, event_type: str) -> float:
        """The ``decayed`` weight of one event type (``default_weight`` if unlisted)."""
        for name, value in self.weights:
            if name == event_type:
                return value
        return self.default_weight


@dataclass(frozen=True)
class SegmentSpec:
    """A rule segment: ``text`` as written, ``rule`` parsed, ``line`` in the spec."""

    name: str
    rule: Rule
    text: str
    line: int


@dataclass(frozen=True)
class Spec:
    """A whole, valid profile spec. ``features`` and ``segments`` keep file order."""

    version: int
    features: Mapping[str, FeatureSpec]
    segments: Mapping[str, SegmentSpec]
    text: str
    # event type -> weight for the models (collaborative filtering); empty: the
    # defaults of ``portrait.models.cf.DEFAULT_INTERACTIONS``. Negative allowed.
    interactions: Mapping[str, float] = FrozenMap()
    # privacy: attrs keys sealed at rest (privacy/crypto.py), features masked for
    # keys without the admin scope (derived from personal fields, say)
    personal_attrs: tuple[str, ...] = ()
    personal_features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", FrozenMap(self.features))
        object.__setattr__(self, "segments", FrozenMap(self.segments))
        object.__setattr__(self, "interactions", FrozenMap(self.interactions))
