"""Aggregators: the feature kinds of the profile spec as mergeable columnar algebra.

Every kind is a small object with four operations over Polars frames keyed by
``user_id`` (one row per user, one or more state columns per feature):

* ``lift(events)``  one singleton state per (filtered) event;
* ``combine(states)`` group the rows by user and merge them — associative and
  commutative, so ``partial(events) = combine(lift(events))`` and
  ``merge(a, b) = combine(concat(a, b))``;
* ``prune(states, watermark)`` drop what can no longer matter for a read at
  ``at >= watermark`` (expired window entries, decayed keys below epsilon);
* ``read(states, at)`` the feature's value at time ``at``.

See :mod:`portrait.features.profile` for the object that runs all the
features of a spec together.
"""

from portrait.features.profile import ProfileAggregator, build_aggregator

__all__ = ["ProfileAggregator", "build_aggregator"]
