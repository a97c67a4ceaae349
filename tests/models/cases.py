"""Model cases for the contract suite: each model module contributes one.

A :class:`Case` builds a fresh model and the data for fit / update / predict.
``update_data`` may be None for models without an online update.
``grow_bytes`` is how much ``nbytes()`` may grow over ``update_rounds`` updates
(new users or items legitimately add rows; nothing else may accumulate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], Any]  # a fresh, unfitted model
    fit_data: Callable[[], Any]
    update_data: Callable[[int], Any] | None  # round -> data
    predict_data: Callable[[], Any]
    grow_bytes: int = 0
    update_rounds: int = 20


CASES: list[Case] = []


def register(case: Case) -> Case:
    CASES.append(case)
    return case
