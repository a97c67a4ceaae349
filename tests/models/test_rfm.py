"""RFM scores and segments: hand-built customers land in the documented segments."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from portrait.models.rfm import SEGMENTS, rfm_segments, segment_expr, segment_of

DAY = 86_400_000_000
AT = 1_000 * DAY


def _customers(rows: list[tuple[str, int, int, float]]) -> pl.DataFrame:
    """(user, days since the last order, orders, spend) -> profile columns."""
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "last_order": [AT - r[1] * DAY for r in rows],
            "orders": [r[2] for r in rows],
            "spend": [r[3] for r in rows],
        },
        schema={"user_id": pl.String, "last_order": pl.Int64, "orders": pl.Int64,
                "spend": pl.Float64},
    )


def _segments(frame: pl.DataFrame) -> dict[str, tuple[int, int, int, str]]:
    out = rfm_segments(frame, AT)
    return {r["user_id"]: (r["r"], r["f"], r["m"], r["rfm_segment"])
            for r in out.iter_rows(named=True)}


def test_hand_built_customers_get_the_documented_segments() -> None:
    # five users: each measure ranks them 1..5, so every score is used once
    first = _segments(_customers([
        ("ann", 1, 50, 900.0),  # newest, most orders -> R5 F5
        ("bob", 2, 1, 20.0),  # R4 F1
        ("cat", 3, 5, 80.0),  # R3 F3
        ("dan", 4, 10, 300.0),  # R2 F4
        ("eve", 5, 2, 10.0),  # R1 F2
    ]))
    assert first == {
        "ann": (5, 5, 5, "champions"),
        "bob": (4, 1, 2, "new_customers"),
        "cat": (3, 3, 3, "potential_loyalist"),
        "dan": (2, 4, 4, "at_risk"),
        "eve": (1, 2, 1, "lost"),
    }
    second = _segments(_customers([
        ("pam", 40, 99, 5.0),  # R2 F5
        ("quinn", 10, 20, 4.0),  # R4 F4
        ("sam", 30, 1, 3.0),  # R3 F1
        ("tom", 5, 3, 2.0),  # R5 F3
        ("val", 400, 2, 1.0),  # R1 F2
    ]))
    assert {u: s[3] for u, s in second.items()} == {
        "pam": "cant_lose", "quinn": "loyal", "sam": "hibernating",
        "tom": "potential_loyalist", "val": "lost",
    }
    assert {s[3] for s in [*first.values(), *second.values()]} == set(SEGMENTS)


def test_ties_share_a_score_and_a_customer_without_orders_scores_lowest() -> None:
    rows = [(f"one{i}", 10 + i, 1, 15.0) for i in range(6)]
    rows += [("two", 3, 2, 30.0), ("three", 2, 3, 45.0), ("four", 1, 4, 60.0)]
    frame = _customers(rows).vstack(pl.DataFrame(
        {"user_id": ["never"], "last_order": [None], "orders": [0], "spend": [None]},
        schema=_customers(rows).schema,
    ))
    got = _segments(frame)
    # the six one-order customers tie: one customer (never) is below them, share 0.1 -> F1
    assert {got[f"one{i}"][1] for i in range(6)} == {1}
    assert got["two"][1] == 4  # 7 of 10 below: 1 + floor(3.5)
    assert got["never"][:3] == (1, 1, 1)
    assert got["four"][:2] == (5, 5)


def test_the_vectorised_map_equals_the_table_on_every_cell() -> None:
    grid = pl.DataFrame({"r": [r for r in range(1, 6) for _ in range(5)],
                         "f": [f for _ in range(5) for f in range(1, 6)]})
    got = grid.with_columns(segment_expr().alias("s"))
    assert got["s"].to_list() == [segment_of(r, f) for r, f in grid.iter_rows()]
    assert set(got["s"]) == set(SEGMENTS)


def test_datetime_and_epoch_microsecond_inputs_agree() -> None:
    frame = _customers([("a", 1, 3, 10.0), ("b", 20, 1, 5.0), ("c", 7, 2, 50.0)])
    as_dt = frame.with_columns(
        pl.from_epoch("last_order", time_unit="us").dt.replace_time_zone("UTC"))
    at = datetime.fromtimestamp(AT / 1e6, tz=UTC)
    assert rfm_segments(as_dt, int(at.timestamp() * 1_000_000)).equals(rfm_segments(frame, AT))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(1, 30), st.floats(0, 1e4)),
                min_size=1, max_size=60))
def test_scores_are_1_to_5_and_monotone_in_each_measure(
    rows: list[tuple[int, int, float]],
) -> None:
    frame = _customers([(str(i), d, n, s) for i, (d, n, s) in enumerate(rows)])
    got = rfm_segments(frame, AT)
    for score, measure in (("r", "last_order"), ("f", "orders"), ("m", "spend")):
        v = frame[measure].cast(pl.Float64).to_numpy()  # larger is better for all three
        s = got[score].to_numpy()
        assert set(s.tolist()) <= {1, 2, 3, 4, 5}
        order = np.argsort(v, kind="stable")
        assert np.all(np.diff(s[order]) >= 0), score  # better measure, no lower score
