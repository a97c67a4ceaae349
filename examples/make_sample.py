"""Regenerate the small sample shipped in ``src/portrait/data`` (deterministic).

    python examples/make_sample.py

Three JSONL files of a toy shop (60 users, 90 days, ~3,000 events): the
history, a newer day, and a file of *late* events (older times, arriving
last) with a few malformed records and duplicates, to show that late data
lands exactly and bad data is dead-lettered, not lost.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src" / "portrait" / "data"
CATEGORIES = ["Sci-Fi", "Comedy", "Drama", "Books", "Garden", "Kitchen", "Toys", "Sports"]
TYPES = ["view"] * 12 + ["click"] * 5 + ["cart"] * 3 + ["purchase"] * 2 + ["rating"]
START = datetime(2024, 3, 1, tzinfo=UTC)


def event(rng: random.Random, user: int, ts: datetime, n: int) -> dict[str, object]:
    taste = CATEGORIES[user % len(CATEGORIES)]
    cat = taste if rng.random() < 0.6 else rng.choice(CATEGORIES)
    etype = rng.choice(TYPES)
    ev: dict[str, object] = {
        "event_id": f"e{n:06d}",
        "user_id": f"u{user:03d}",
        "ts": ts.isoformat().replace("+00:00", "Z"),
        "type": etype,
        "item_id": f"{cat[:3].lower()}-{rng.randint(1, 40):03d}",
        "category": cat,
    }
    if etype in ("cart", "purchase"):
        ev["price"] = round(rng.uniform(3, 80), 2)
        ev["quantity"] = rng.randint(1, 3)
    if etype == "rating":
        ev["rating"] = rng.randint(1, 5)
    return ev


def main() -> None:
    rng = random.Random(7)
    events = []
    for n in range(3000):
        user = min(59, int(rng.paretovariate(1.2)) - 1)
        ts = START + timedelta(seconds=rng.randint(0, 90 * 86400))
        events.append(event(rng, user, ts, n))
    events.sort(key=lambda e: str(e["ts"]))
    cut = START + timedelta(days=89)
    history = [e for e in events if str(e["ts"]) < cut.isoformat()]
    recent = [e for e in events if str(e["ts"]) >= cut.isoformat()]
    late = history[-200:]  # withheld history, delivered after the recent day
    history = history[:-200]
    bad = [
        '{"user_id": "u001", "ts": "2024-03-05T10:00:00Z", "type": "purchase", "price": -5}',
        '{"user_id": "", "ts": "2024-03-05T10:00:00Z", "type": "view"}',
        '{"user_id": "u002", "ts": "2024-02-30T10:00:00Z", "type": "view"}',
        '{"user_id": "u003", "ts": "2024-03-05T10:00:00Z", "type": "view"',
        '["not", "an", "object"]',
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sample_history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in history))
    (OUT / "sample_recent.jsonl").write_text("".join(json.dumps(e) + "\n" for e in recent))
    lines = [json.dumps(e) for e in late] + bad + [json.dumps(e) for e in late[:10]]
    (OUT / "sample_late.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
