"""Audiences for ad targeting: a query over profile features and model outputs.

A query is written in the segment rule language (``portrait.spec.rules``:
comparisons, ``and``/``or``/``not``, ``feature['key']`` for keyed features),
e.g. ``genre_affinity['Comedy'] > 1 and p_purchase_30d > 0.3``. The names it
may use are the spec's features plus the model outputs of
:func:`portrait.models.outputs.model_outputs` (``p_purchase_<N>d``,
``p_churn_<N>d``, ``rfm_segment``, ``cluster``, ``interest_shift``, ...),
which are computed from the same profile values, so they are as fresh as the
profiles. The rule is compiled to one Polars expression and evaluated over
every user's profile at ``at`` (default: the watermark) — no per-user Python.

The result is a frame of the members (``user_id`` plus the columns the query
reads, map lookups flattened to ``feature[key]``); :func:`export` writes it as
CSV or Parquet.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from portrait.errors import UsageError
from portrait.spec.model import FeatureSpec
from portrait.spec.rules import (
    And,
    Compare,
    Lookup,
    Not,
    Or,
    Ref,
    Rule,
    operand_to_polars,
    parse_rule,
    to_polars,
)

USER = "user_id"


@dataclass(frozen=True)
class Audience:
    query: str
    members: pl.DataFrame  # user_id + the values the query reads
    population: int  # users evaluated
    withheld: int = 0  # users the query selected who withdrew advertising consent

    @property
    def count(self) -> int:
        return self.members.height


def output_features(outputs: pl.DataFrame) -> dict[str, FeatureSpec]:
    """Rule-language declarations for model output columns (numbers or strings)."""
    out: dict[str, FeatureSpec] = {}
    for name, dtype in outputs.schema.items():
        if name == USER:
            continue
        if dtype == pl.String:
            out[name] = FeatureSpec(name=name, kind="last", line=0, field="category")
        elif dtype.is_numeric() or dtype == pl.Boolean:
            out[name] = FeatureSpec(name=name, kind="sum", line=0, field="price")
    return out


def parse_query(
    query: str, features: dict[str, FeatureSpec], outputs: pl.DataFrame | None = None
) -> Rule:
    """Parse ``query`` against the spec's features and the model output columns."""
    names = dict(features)
    if outputs is not None:
        for name, spec in output_features(outputs).items():
            names.setdefault(name, spec)
    return parse_rule(query, features=names, source="<audience query>", label="query")


def _operands(rule: Rule) -> list[Ref | Lookup]:
    """The feature references of ``rule``, in reading order."""
    if isinstance(rule, Compare):
        return [op for op in (rule.left, rule.right) if isinstance(op, Ref | Lookup)]
    if isinstance(rule, Not):
        return _operands(rule.operand)
    if isinstance(rule, And | Or):
        return [op for sub in rule.operands for op in _operands(sub)]
    return []


def select(
    values: pl.DataFrame, query: str, features: dict[str, FeatureSpec],
    outputs: pl.DataFrame | None = None, *, withdrawn: Collection[str] = (),
) -> Audience:
    """Members of ``query`` among the profile ``values`` (+ ``outputs`` by ``user_id``),
    less the ``withdrawn`` users (no advertising consent: never in an audience)."""
    rule = parse_query(query, features, outputs)
    frame = values
    if outputs is not None and outputs.width > 1:
        extra = [c for c in outputs.columns if c == USER or c not in values.columns]
        frame = values.join(outputs.select(extra), on=USER, how="left")
    shown: list[pl.Expr] = []
    for op in _operands(rule):
        if isinstance(op, Lookup):
            shown.append(operand_to_polars(op).alias(f"{op.name}[{op.key}]"))
        else:
            shown.append(pl.col(op.name))
    members = frame.filter(to_polars(rule).fill_null(False)).select(USER, *_unique(shown))
    kept = members.filter(~pl.col(USER).is_in(list(withdrawn))) if withdrawn else members
    return Audience(query=query, members=kept.sort(USER), population=frame.height,
                    withheld=members.height - kept.height)


def _unique(exprs: list[pl.Expr]) -> list[pl.Expr]:
    seen: set[str] = set()
    out = []
    for e in exprs:
        name = e.meta.output_name()
        if name not in seen:
            seen.add(name)
            out.append(e)
    return out


def export(audience: Audience, path: Path) -> Path:
    """Write the members as ``.csv`` or ``.parquet`` (chosen by the suffix)."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise UsageError(f"{path}: audience export must end in .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if suffix == ".csv":
        audience.members.write_csv(tmp)
    else:
        audience.members.write_parquet(tmp)
    tmp.replace(path)
    return path
