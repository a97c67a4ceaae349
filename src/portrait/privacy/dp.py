"""Differential privacy for aggregate answers: the discrete Laplace mechanism and a budget.

Who gets noise: every API key without the ``admin`` scope, on the aggregate
reads (segment sizes, feature histograms, audience counts). Admins see exact
numbers. Individual reads (a profile, a member list) are governed by scopes,
not by noise.

**Mechanism.** Counts are integers, so they get the *discrete* Laplace
(two-sided geometric) mechanism from OpenDP (``make_laplace`` over integer
vectors): exact integer arithmetic, none of the floating-point attacks on a
naive continuous Laplace. An answer is a vector of counts whose L1
sensitivity (how much one user, added or removed, can change it in total)
the caller states; noise scale ``b = sensitivity / epsilon`` per count, and
the answer costs ``epsilon`` (OpenDP's privacy map checks it). Anything
derived from noisy counts (quantiles from a noisy histogram, clamping at 0)
is post-processing and costs nothing more.

**Budget.** Each key has a total ``epsilon`` (default 10); every fresh noisy
answer spends ``epsilon`` per query (default 0.5), recorded in a ledger file
next to the database (``privacy-ledger.json``, replaced atomically). A query
that would overspend is refused (:class:`BudgetExhaustedError`, HTTP 403).
The same query at the same data version returns the *same* noisy answer from
a cache and spends nothing: asking again reveals nothing new, and a page that
reloads does not drain the budget.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portrait.errors import BudgetExhaustedError
from portrait.fsutil import fsync_path

LEDGER = "privacy-ledger.json"
DEFAULT_EPSILON = 0.5
DEFAULT_BUDGET = 10.0
MECHANISM = "discrete_laplace"


@dataclass(frozen=True)
class Noised:
    """A noisy answer and how it was made (goes into the response as ``privacy``)."""

    values: list[int]
    epsilon: float
    sensitivity: int
    scale: float
    spent: float  # by this key so far, this answer included
    budget: float

    def to_json(self) -> dict[str, Any]:
        return {"mechanism": MECHANISM, "epsilon": self.epsilon, "sensitivity": self.sensitivity,
                "scale": self.scale, "budget_spent": round(self.spent, 12),
                "budget": self.budget}


def discrete_laplace(counts: Sequence[int], sensitivity: int, epsilon: float) -> list[int]:
    """``counts`` plus discrete Laplace noise of scale ``sensitivity / epsilon`` each (OpenDP).

    The returned vector is ``epsilon``-DP for inputs at L1 distance ``sensitivity``.
    """
    if epsilon <= 0 or sensitivity < 1:
        raise ValueError("epsilon must be > 0 and sensitivity >= 1")
    import opendp.prelude as dp

    dp.enable_features("contrib")
    scale = sensitivity / epsilon
    meas = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int),
                             scale=scale)
    assert meas.map(sensitivity) <= epsilon * (1 + 1e-9)  # type: ignore[no-untyped-call]
    return [int(x) for x in meas([int(c) for c in counts])]


class Ledger:
    """Per-key privacy budget, persisted next to the database; thread-safe."""

    def __init__(self, db: Path, *, budget: float = DEFAULT_BUDGET,
                 epsilon: float = DEFAULT_EPSILON) -> None:
        self.path = Path(db) / LEDGER
        self.budget = budget
        self.epsilon = epsilon
        self._lock = threading.Lock()
        self._answers: dict[Hashable, Noised] = {}

    def spent(self, key_id: str) -> float:
        with self._lock:
            return float(self._load().get(key_id, 0.0))

    def noisy(self, key_id: str, query: Hashable, counts: Sequence[int], sensitivity: int
              ) -> Noised:
        """The noisy ``counts`` for ``key_id``: cached per (key, query) or paid from its budget.

        ``query`` must identify the question *and* the data version it was asked of.
        """
        cache_key = (key_id, query)
        with self._lock:
            hit = self._answers.get(cache_key)
            if hit is not None:
                return hit
            spent = self._load()
            used = float(spent.get(key_id, 0.0))
            if used + self.epsilon > self.budget + 1e-12:
                raise BudgetExhaustedError(
                    f"privacy budget spent: key {key_id} has used epsilon {used:g} of "
                    f"{self.budget:g} and this query costs {self.epsilon:g} (aggregate "
                    "answers for keys without admin scope are differentially private)")
            values = discrete_laplace(counts, sensitivity, self.epsilon)
            spent[key_id] = used + self.epsilon
            self._save(spent)
            out = Noised(values, self.epsilon, sensitivity, sensitivity / self.epsilon,
                         used + self.epsilon, self.budget)
            self._answers[cache_key] = out
            return out

    def _load(self) -> dict[str, float]:
        try:
            found = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): float(v) for k, v in found.get("spent", {}).items()}

    def _save(self, spent: dict[str, float]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"spent": spent}, sort_keys=True) + "\n")
        fsync_path(tmp)
        os.replace(tmp, self.path)
