"""The temporal protocol: cut times, horizon, refresh intervals and staleness.

Cuts are derived from the data, never tuned to a result: the last cut is the
time by which ``last_quantile`` of the events happened, or one horizon
before the last event if that is earlier (so the last truth window is
complete), at midnight UTC; earlier cuts step back one horizon at a time.
Truth windows ``(T, T + horizon]`` therefore never overlap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from portrait.timeutil import format_us, parse_duration

REFRESH_EVENT = "event"  # refreshed on every event: no staleness
Progress = Callable[[str], None]  # receives one human-readable line per step


@dataclass(frozen=True)
class Protocol:
    """Everything that defines a split; recorded verbatim in ``report.json``."""

    horizon: str = "30d"
    n_cuts: int = 3
    last_quantile: float = 0.9
    half_lives: tuple[str, ...] = ("1d", "7d", "30d", "180d")
    refresh: tuple[str, ...] = (REFRESH_EVENT, "1h", "1d", "7d")
    phases: int = 4
    trend_window: str = "30d"
    n_next: int = 10
    n_bootstrap: int = 1000
    seed: int = 0
    cuts_us: tuple[int, ...] = field(default=())

    @property
    def horizon_us(self) -> int:
        return parse_duration(self.horizon)

    @property
    def trend_us(self) -> int:
        return parse_duration(self.trend_window)

    def with_cuts(self, ts: pl.Series) -> Protocol:
        """This protocol with its cut times derived from the event times ``ts`` (µs).

        Cuts given explicitly (``cuts_us``) are kept as they are.
        """
        if self.cuts_us:
            return self
        values = ts.to_numpy()
        by_quantile = int(np.quantile(values, self.last_quantile))
        last = min(by_quantile, int(values.max()) - self.horizon_us)
        last = last - last % 86_400_000_000  # midnight UTC: cuts are readable dates
        cuts = tuple(last - k * self.horizon_us for k in reversed(range(self.n_cuts)))
        return Protocol(**{**self.__dict__, "cuts_us": cuts})

    def to_json(self) -> dict[str, Any]:
        return {
            "cuts": [format_us(c) for c in self.cuts_us],
            "horizon": self.horizon,
            "seeds": [self.seed],
            "n_bootstrap": self.n_bootstrap,
            "half_lives": list(self.half_lives),
            "refresh_intervals": list(self.refresh),
            "staleness_phases": self.phases,
            "trend_window": self.trend_window,
            "n_next": self.n_next,
            "last_quantile": self.last_quantile,
        }


def staleness_offsets(refresh: str, phases: int) -> list[int]:
    """Offsets (µs) at which a profile refreshed every ``refresh`` is read.

    A request at a uniformly random moment sees a profile ``U(0, R)`` old;
    ``phases`` evenly spaced mid-points of ``[0, R)`` stand for that.
    ``"event"`` is always fresh.
    """
    if refresh == REFRESH_EVENT:
        return [0]
    period = parse_duration(refresh)
    return [int((k + 0.5) * period / phases) for k in range(phases)]


def phase_of(user_ids: pl.Series, phases: int, seed: int) -> np.ndarray:
    """A stable pseudo-random phase in ``[0, phases)`` per user (seeded)."""
    salt = f"{seed}:".encode()
    return np.array(
        [_hash32(salt + u.encode()) % phases for u in user_ids.to_list()],
        dtype=np.int64,
    )


def _hash32(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=4).digest())
