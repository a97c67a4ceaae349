"""A small HyperLogLog used by ``distinct`` once a user passes the exact limit.

Registers are ``2**P`` bytes (P = 12: 4 KiB, standard error ~1.6%). The hash
is BLAKE2b-64 of the UTF-8 key, so sketches are stable across processes and
versions; merge is an element-wise max, so the sketch of a set does not depend
on the order or grouping in which its keys were added.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

import numpy as np

P = 12
M = 1 << P
_ALPHA = 0.7213 / (1 + 1.079 / M)


def _hash64(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def add(registers: np.ndarray, keys: Iterable[str]) -> np.ndarray:
    """A copy of ``registers`` with ``keys`` added."""
    out = registers.copy()
    for key in keys:
        h = _hash64(key)
        idx = h >> (64 - P)
        rest = (h << P) & ((1 << 64) - 1)
        rank = (64 - P + 1) if rest == 0 else (65 - rest.bit_length())
        rank = min(rank, 64 - P + 1)
        out[idx] = max(out[idx], rank)
    return out


def empty() -> np.ndarray:
    return np.zeros(M, dtype=np.uint8)


def merge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.maximum(a, b)
    return out


def estimate(registers: np.ndarray) -> int:
    """Cardinality estimate with the small-range (linear counting) correction."""
    inv = np.power(2.0, -registers.astype(np.float64)).sum()
    est = _ALPHA * M * M / inv
    zeros = int((registers == 0).sum())
    if est <= 2.5 * M and zeros:
        est = M * math.log(M / zeros)
    return int(est + 0.5)


def to_bytes(registers: np.ndarray) -> bytes:
    return registers.astype(np.uint8).tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).copy()
