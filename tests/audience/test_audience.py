"""Audience queries: count and export over profile features and model outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from portrait.audience import export, output_features, select
from portrait.engine.engine import Engine
from portrait.errors import RuleError, UsageError
from portrait.events.schema import EVENT_SCHEMA
from portrait.spec.loader import parse_spec
from portrait.spec.rules import evaluate, parse_rule
from portrait.store import open_store

T0 = 1_709_251_200_000_000
HOUR = 3_600_000_000

SPEC = parse_spec("""
version: 1
features:
  spend: {kind: sum, field: price, where: {type: [purchase]}}
  affinity: {kind: decayed, key: category, half_life: 30d, weights: {view: 1, purchase: 3}}
""")


def ev(i: int, user: str, cat: str, type_: str = "view", price: float | None = None
       ) -> dict[str, Any]:
    return {**dict.fromkeys(EVENT_SCHEMA), "event_id": f"e{i}", "user_id": user,
            "ts": T0 + i * HOUR, "type": type_, "category": cat, "price": price}


@pytest.fixture
def values(tmp_path: Path) -> pl.DataFrame:
    rows = []
    for u in range(40):
        cat = "Comedy" if u % 2 else "Drama"
        for j in range(u % 5 + 1):
            rows.append(ev(u * 10 + j, f"u{u:02d}", cat))
        if u % 4 == 0:
            rows.append(ev(u * 10 + 9, f"u{u:02d}", cat, "purchase", float(u)))
    with open_store(tmp_path / "db", writer=True) as store:
        engine = Engine(SPEC, store)
        engine.ingest_events(pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row"))
        return engine.read_at()


def outputs(values: pl.DataFrame) -> pl.DataFrame:
    n = values.height
    return values.select("user_id").with_columns(
        p_purchase_30d=pl.Series([i / n for i in range(n)]),
        rfm_segment=pl.Series(["champions" if i % 3 == 0 else "lost" for i in range(n)]),
    )


def test_members_are_exactly_the_users_the_rule_holds_for(values: pl.DataFrame) -> None:
    query = "affinity['Comedy'] > 1 and p_purchase_30d > 0.3 or rfm_segment == 'champions'"
    out = outputs(values)
    got = select(values, query, dict(SPEC.features), out)
    rule = parse_rule(query, features={**SPEC.features, **_decl(out)})
    joined = values.join(out, on="user_id")
    want = sorted(r["user_id"] for r in joined.iter_rows(named=True)
                  if evaluate(rule, _flat(r)))
    assert got.members["user_id"].to_list() == want
    assert 0 < got.count < got.population == 40
    assert got.members.columns == [
        "user_id", "affinity[Comedy]", "p_purchase_30d", "rfm_segment",
    ]


def test_export_csv_and_parquet_round_trip(values: pl.DataFrame, tmp_path: Path) -> None:
    aud = select(values, "spend >= 8", dict(SPEC.features))
    assert aud.members["user_id"].to_list() == ["u08", "u12", "u16", "u20", "u24", "u28",
                                                 "u32", "u36"]
    csv = export(aud, tmp_path / "out" / "a.csv")
    pq = export(aud, tmp_path / "out" / "a.parquet")
    assert pl.read_csv(csv).equals(aud.members)
    assert pl.read_parquet(pq).equals(aud.members)
    with pytest.raises(UsageError, match=r"\.csv or \.parquet"):
        export(aud, tmp_path / "a.xlsx")


def test_unknown_names_are_clear_errors(values: pl.DataFrame) -> None:
    with pytest.raises(RuleError, match="p_purchase_30d"):
        select(values, "p_purchase_30d > 0.3", dict(SPEC.features))


def _decl(out: pl.DataFrame) -> dict[str, Any]:
    return dict(output_features(out))


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """The evaluator reads a keyed feature as a dict."""
    flat = dict(row)
    flat["affinity"] = {e["key"]: e["value"] for e in row["affinity"] or []}
    return flat
