"""The profile spec: loading, validation, feature definitions and segment rules."""

from __future__ import annotations

from portrait.spec.loader import load_spec, parse_spec
from portrait.spec.model import KINDS, FeatureSpec, SegmentSpec, Spec
from portrait.spec.rules import Rule, evaluate, parse_rule, referenced_features, to_polars

__all__ = [
    "KINDS",
    "FeatureSpec",
    "Rule",
    "SegmentSpec",
    "Spec",
    "evaluate",
    "load_spec",
    "parse_rule",
    "parse_spec",
    "referenced_features",
    "to_polars",
]
