"""Behaviour models over profiles and the event log.

Every model here follows :class:`portrait.models.base.Model`: ``fit`` on a
frame, ``update`` online, ``predict``, ``save``/``load`` without pickle
(``.npz`` with ``allow_pickle=False``, JSON, LightGBM's text format), and
``nbytes`` for the bounded-memory check. One contract suite
(``tests/models/test_contract.py``) runs every model.

Modules:

* ``cf.py``         implicit-feedback ALS (the ``implicit`` library), online
                    fold-in of a user's events against fixed item factors,
                    item-item similarity, versioned persistence.
* ``propensity.py`` purchase-in-N-days / churn: LightGBM on point-in-time
                    profile snapshots (isotonic-calibrated) and an online
                    River logistic regression updated as outcomes arrive.
* ``rfm.py``        RFM scores and named segments (champions, loyal, ...).
* ``cluster.py``    incremental k-means over profile vectors.
* ``drift.py``      per-user interest shift, bot-like bursts, population PSI.
* ``explain.py``    top contributing events of a feature value or segment.
* ``registry.py``   ``<db>/models/<name>/vNNNNNN.*`` + an atomic ``CURRENT``.
"""
