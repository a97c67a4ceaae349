"""Consent per purpose: events that grant or withdraw it, and what each purpose governs.

A consent event is an ordinary event with ``type`` ``consent_grant`` or
``consent_withdraw`` and the purpose in ``category``: ``personalisation``,
``advertising`` or ``analytics``. It is logged like any event (so a rebuild
replays it) but feeds no feature: consent is not behaviour. Each commit keeps
the latest decision per (user, purpose) in the store (by event time, then
``event_id``: late and out-of-order consent events give the same answer), so
a withdrawal takes effect on the next read after its commit.

What each purpose governs, without consent (the default is granted: a user
is opted out by a withdrawal):

* ``personalisation``: recommendations are the non-personalised ones (the
  popularity a new user gets), whatever the user's history;
* ``advertising``: the user never appears in an audience (count or export);
* ``analytics``: the user is left out of population statistics: the
  population and segment sizes (``GET /v1/segments``), feature
  distributions (``GET /v1/features/{name}/distribution``) and the drift
  report (its PSI, interest shifts and bursts; ``portrait drift``,
  ``GET /v1/drift``). Their own profile, segment memberships (a segment
  member list is operational, not a statistic) and recommendations are
  unchanged.

Events with another purpose are logged and otherwise ignored.
"""

from __future__ import annotations

from typing import Any

import polars as pl

GRANT, WITHDRAW = "consent_grant", "consent_withdraw"
CONSENT_TYPES = (GRANT, WITHDRAW)
PURPOSES = ("personalisation", "advertising", "analytics")
CONSENT_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(), "purpose": pl.String(), "granted": pl.Boolean(),
    "ts": pl.Int64(), "event_id": pl.String(),
}


def decisions(events: pl.DataFrame) -> pl.DataFrame:
    """The consent events of a batch as (user_id, purpose, granted, ts, event_id) rows."""
    found = events.filter(pl.col("type").is_in(CONSENT_TYPES)
                          & pl.col("category").is_in(PURPOSES))
    return found.select(
        "user_id", pl.col("category").alias("purpose"),
        (pl.col("type") == GRANT).alias("granted"), "ts", "event_id",
    )


def behaviour(events: pl.DataFrame) -> pl.DataFrame:
    """The events that feed features: all but consent events."""
    return events.filter(~pl.col("type").is_in(CONSENT_TYPES))


def counted(store: Any, frame: pl.DataFrame, purpose: str = "analytics") -> pl.DataFrame:
    """The rows of ``frame`` whose user has not withdrawn consent to ``purpose``."""
    out = store.withdrawn(purpose)
    return frame if not out else frame.filter(~pl.col("user_id").is_in(sorted(out)))
