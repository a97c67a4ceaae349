"""Turn a row of read feature values into the profile JSON contract (DESIGN.md).

``{"user_id", "as_of", "features": {...}, "segments": [...]}``: keyed features
are objects key -> value (in rank order), times are RFC 3339 UTC strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from portrait.timeutil import format_us

if TYPE_CHECKING:
    from portrait.spec.model import FeatureSpec


def feature_value(spec: FeatureSpec, value: Any) -> Any:
    """One feature's read value in its JSON form."""
    if spec.keyed:
        items = value or []
        if spec.kind == "top_k":
            return {item["key"]: int(item["value"]) for item in items}
        return {item["key"]: item["value"] for item in items}
    if value is not None and spec.kind in ("first", "last", "min", "max") and spec.field == "ts":
        return format_us(int(value))
    return value


def profile_json(
    user_id: str,
    as_of: int | None,
    specs: Mapping[str, FeatureSpec],
    row: Mapping[str, Any],
    segments: list[str],
) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "as_of": None if as_of is None else format_us(as_of),
        "features": {name: feature_value(spec, row.get(name)) for name, spec in specs.items()},
        "segments": segments,
    }
