"""The baseline a user would write by hand: one Python loop over event dicts.

It computes the features of the reference spec (``src/portrait/data/spec.yaml``)
into per-user dicts: counters, a list of purchase times for the 30-day window,
running (value, reference time) pairs for the decayed sums with the same
half-life formula, a set for distinct items and a counter for top-k. ``read``
gives every user's values at ``at`` in the form :func:`normalise` compares.

It doubles as the slow, obvious oracle of the correctness check.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DAY_US = 86_400 * 1_000_000
WINDOW_US = 30 * DAY_US
AFFINITY_HALF_LIFE_US = 7 * DAY_US
ACTIVITY_HALF_LIFE_US = 1 * DAY_US
AFFINITY_WEIGHTS = {"view": 1.0, "cart": 3.0, "purchase": 5.0}
DECAY_EPSILON = 1e-6
TOP_K = 3


def iter_dicts(
    path: Path, limit: int | None = None, users: set[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Events of a Parquet file as dicts, ``ts`` as epoch µs (first ``limit`` rows)."""
    left = limit
    wanted = None if users is None else pa.array(sorted(users))
    for raw in pq.ParquetFile(path).iter_batches(batch_size=65_536):
        if left is not None and left <= 0:
            return
        rows = raw if left is None else raw.slice(0, left)
        if left is not None:
            left -= rows.num_rows
        ts = pc.cast(rows.column("ts"), pa.int64())
        rows = rows.set_column(rows.schema.get_field_index("ts"), "ts", ts)
        if wanted is not None:
            rows = rows.filter(pc.is_in(rows.column("user_id"), wanted))
        yield from rows.to_pylist()


def _decay_add(state: list[float], weight: float, ts: int, half_life: float) -> None:
    """Add ``weight`` at ``ts`` to a [value at ref, ref] pair."""
    value, ref = state
    if ts > ref:
        state[0] = value * 2.0 ** (-(ts - ref) / half_life) + weight
        state[1] = ts
    else:
        state[0] = value + weight * 2.0 ** (-(ref - ts) / half_life)


class NaiveProfiles:
    """Per-user feature state in plain dicts, updated one event at a time."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, Any]] = {}
        self.watermark: int | None = None

    def update_all(self, events: Iterable[dict[str, Any]]) -> int:
        n = 0
        for event in events:
            self.update(event)
            n += 1
        return n

    def update(self, e: dict[str, Any]) -> None:
        ts: int = e["ts"]
        if self.watermark is None or ts > self.watermark:
            self.watermark = ts
        u = self.users.get(e["user_id"])
        if u is None:
            u = self.users[e["user_id"]] = {
                "n": 0, "purchases": [], "spend": 0.0, "rating_sum": 0.0, "rating_n": 0,
                "max_price": None, "first": None, "last": None, "last_item": None,
                "items": set(), "cats": {}, "affinity": {}, "activity": [0.0, ts],
            }
        u["n"] += 1
        typ, price, eid = e["type"], e["price"], e["event_id"]
        if typ == "purchase":
            u["purchases"].append(ts)
            if price is not None:
                u["spend"] += price
        if typ == "rating" and e["rating"] is not None:
            u["rating_sum"] += e["rating"]
            u["rating_n"] += 1
        if price is not None and (u["max_price"] is None or price > u["max_price"]):
            u["max_price"] = price
        key = (ts, eid)
        if u["first"] is None or key < u["first"]:
            u["first"] = key
        if u["last"] is None or key > u["last"]:
            u["last"] = key
        item = e["item_id"]
        if item is not None:
            if u["last_item"] is None or key > u["last_item"][0]:
                u["last_item"] = (key, item)
            u["items"].add(item)
        cat = e["category"]
        if cat is not None:
            u["cats"][cat] = u["cats"].get(cat, 0) + 1
            aff = u["affinity"].get(cat)
            if aff is None:
                aff = u["affinity"][cat] = [0.0, ts]
            _decay_add(aff, AFFINITY_WEIGHTS.get(typ, 1.0), ts, AFFINITY_HALF_LIFE_US)
        _decay_add(u["activity"], 1.0, ts, ACTIVITY_HALF_LIFE_US)

    def read(
        self, at: int | None = None, users: Iterable[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Feature values at ``at`` (default: the watermark) of every (or the given) user."""
        at = self.watermark if at is None else at
        assert at is not None, "no events"
        ids = self.users if users is None else users
        return {uid: _read_user(self.users[uid], at) for uid in ids if uid in self.users}


def _read_user(u: dict[str, Any], at: int) -> dict[str, Any]:
    top = sorted(u["cats"].items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_K]
    affinity = {}
    for cat, (value, ref) in u["affinity"].items():
        v = value * 2.0 ** (-(at - ref) / AFFINITY_HALF_LIFE_US)
        if v >= DECAY_EPSILON:
            affinity[cat] = v
    value, ref = u["activity"]
    return {
        "events_total": u["n"],
        "purchases_30d": sum(1 for t in u["purchases"] if at - WINDOW_US < t <= at),
        "spend_total": u["spend"],
        "avg_rating": u["rating_sum"] / u["rating_n"] if u["rating_n"] else None,
        "max_price": u["max_price"],
        "first_seen": u["first"][0],
        "last_seen": u["last"][0],
        "last_item": None if u["last_item"] is None else u["last_item"][1],
        "distinct_items": len(u["items"]),
        "top_categories": [(k, n) for k, n in top],
        "category_affinity": affinity,
        "activity": value * 2.0 ** (-(at - ref) / ACTIVITY_HALF_LIFE_US),
    }
