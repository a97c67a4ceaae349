"""Replay evaluation: does a dynamic profile predict what a user does next?

The protocol (``protocol.py``) is temporal. For each cut time ``T`` the
events with ``ts <= T`` are replayed, in event-time order and in
micro-batches, through the real :class:`~portrait.engine.Engine`
(``replay.py``); the profile read at ``T`` is the input of every method and
the events in ``(T, T + horizon]`` are the truth. Several cuts, spaced one
horizon apart so truth windows never overlap, give the examples; users with
no history before ``T`` are scored separately (cold start).

Freshness is modelled, not assumed: a profile refreshed every ``R`` is read
at ``T - offset`` where the offset is the staleness a request at a random
moment would see (``P`` evenly spaced phases of ``R``, users assigned to a
phase by a seeded hash), so "every event", hourly, daily and weekly refresh
are compared on the same users and the same truth (the freshness-value curve).

Tasks: ``next_category`` and ``next_item`` (``ranking.py``, MovieLens-style
ratings) and ``propensity`` (``propensity.py``, CDNOW-style purchases).
Metrics and bootstrap intervals over users are in ``metrics.py``; the report
(JSON rows, Markdown, PNG plots) in ``report.py``; ``run.py`` ties a dataset
to its tasks. Every method of one run sees the same split; baselines are
``kind: "baseline"``, personal continuously-updated profiles ``"dynamic"``.
"""
