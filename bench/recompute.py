"""Full recomputation of the reference spec's features with DuckDB SQL.

This is what a batch job would run after every new file: read all events
(history + new), compute every feature of every user at the watermark. The
SQL mirrors ``src/portrait/data/spec.yaml`` feature by feature;
:func:`check_reference_spec` fails if the spec changes under it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from naive import (
    ACTIVITY_HALF_LIFE_US,
    AFFINITY_HALF_LIFE_US,
    AFFINITY_WEIGHTS,
    DECAY_EPSILON,
    TOP_K,
    WINDOW_US,
)

_PURCHASES = (("type", ("purchase",)),)
EXPECTED_FEATURES: dict[str, tuple[Any, ...]] = {
    # name: (kind, field, key, where, window_us, half_life_us, weights, default_weight, k)
    "events_total": ("count", None, None, (), None, None, (), 1.0, None),
    "purchases_30d": ("count", None, None, _PURCHASES, WINDOW_US, None, (), 1.0, None),
    "spend_total": ("sum", "price", None, _PURCHASES, None, None, (), 1.0, None),
    "avg_rating": ("avg", "rating", None, (("type", ("rating",)),), None, None, (), 1.0, None),
    "max_price": ("max", "price", None, (), None, None, (), 1.0, None),
    "first_seen": ("first", "ts", None, (), None, None, (), 1.0, None),
    "last_seen": ("last", "ts", None, (), None, None, (), 1.0, None),
    "last_item": ("last", "item_id", None, (), None, None, (), 1.0, None),
    "distinct_items": ("distinct", "item_id", None, (), None, None, (), 1.0, None),
    "top_categories": ("top_k", None, "category", (), None, None, (), 1.0, TOP_K),
    "category_affinity": (
        "decayed", None, "category", (), None, AFFINITY_HALF_LIFE_US,
        tuple(sorted(AFFINITY_WEIGHTS.items())), 1.0, None,
    ),
    "activity": ("decayed", None, None, (), None, ACTIVITY_HALF_LIFE_US, (), 1.0, None),
}


def check_reference_spec(spec: Any) -> None:
    """Fail if the spec is not the one the SQL and the naive loop implement."""
    got = {
        name: (f.kind, f.field, f.key, f.where, f.window_us, f.half_life_us, f.weights,
               f.default_weight, f.k)
        for name, f in spec.features.items()
    }
    if got != EXPECTED_FEATURES:
        diff = sorted(set(got.items()) ^ set(EXPECTED_FEATURES.items()))
        raise SystemExit(f"the reference spec changed; update bench/recompute.py, naive.py: {diff}")


_WEIGHT_CASES = " ".join(f"WHEN '{t}' THEN {w!r}" for t, w in AFFINITY_WEIGHTS.items())
_FEATURES_SQL = f"""
WITH cat_counts AS (
    SELECT user_id, category, count(*) AS n
    FROM ev WHERE category IS NOT NULL
    GROUP BY user_id, category
), top AS (
    SELECT user_id,
           list(struct_pack(key := category, value := n) ORDER BY n DESC, category)
               AS top_categories
    FROM (
        SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY n DESC, category) AS rk
        FROM cat_counts
    )
    WHERE rk <= {TOP_K}
    GROUP BY user_id
), aff AS (
    SELECT user_id,
           list(struct_pack(key := category, value := v) ORDER BY v DESC, category)
               AS category_affinity
    FROM (
        SELECT user_id, category,
               sum(CASE type {_WEIGHT_CASES} ELSE 1.0 END
                   * pow(2.0, -($wm - ts) / {float(AFFINITY_HALF_LIFE_US)!r})) AS v
        FROM ev WHERE category IS NOT NULL
        GROUP BY user_id, category
    )
    WHERE v >= {DECAY_EPSILON!r}
    GROUP BY user_id
), scalars AS (
    SELECT user_id,
           count(*) AS events_total,
           count(*) FILTER (WHERE type = 'purchase' AND ts > $wm - {WINDOW_US} AND ts <= $wm)
               AS purchases_30d,
           coalesce(sum(price) FILTER (WHERE type = 'purchase'), 0.0) AS spend_total,
           avg(rating) FILTER (WHERE type = 'rating') AS avg_rating,
           max(price) AS max_price,
           min(ts) AS first_seen,  -- the value is ts itself: no tie-break needed
           max(ts) AS last_seen,
           arg_max(item_id, (ts, event_id)) FILTER (WHERE item_id IS NOT NULL) AS last_item,
           count(DISTINCT item_id) AS distinct_items,
           sum(pow(2.0, -($wm - ts) / {float(ACTIVITY_HALF_LIFE_US)!r})) AS activity
    FROM ev
    GROUP BY user_id
)
SELECT s.*, top.top_categories, aff.category_affinity
FROM scalars s LEFT JOIN top USING (user_id) LEFT JOIN aff USING (user_id)
"""


def recompute(
    paths: Sequence[Path], con: duckdb.DuckDBPyConnection | None = None
) -> tuple[int, pa.Table]:
    """(watermark µs, one row per user with every feature at the watermark)."""
    con = con or duckdb.connect()
    con.sql("SET enable_progress_bar = false")
    files = ", ".join(f"'{p}'" for p in paths)
    con.sql(
        "CREATE OR REPLACE TEMP TABLE ev AS SELECT event_id, user_id, epoch_us(ts) AS ts, type, "
        f"item_id, category, price, rating FROM read_parquet([{files}])"
    )
    wm = con.sql("SELECT max(ts) FROM ev").fetchall()[0][0]
    table = con.sql(_FEATURES_SQL, params={"wm": wm}).to_arrow_table()
    con.sql("DROP TABLE ev")
    return int(wm), table


def rows_for(table: pa.Table, users: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The recomputed features of ``users`` in the form :func:`normalise` compares."""
    import pyarrow.compute as pc

    picked = table.filter(pc.is_in(table.column("user_id"), pa.array(list(users)))).to_pylist()
    out = {}
    for row in picked:
        uid = row.pop("user_id")
        row["top_categories"] = [(d["key"], d["value"]) for d in row["top_categories"] or []]
        row["category_affinity"] = {d["key"]: d["value"] for d in row["category_affinity"] or []}
        out[uid] = row
    return out
