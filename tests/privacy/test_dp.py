"""The discrete Laplace mechanism and the budget ledger (privacy/dp.py).

The noise is checked statistically against the distribution it must have:
P(noise = k) proportional to exp(-|k| / b) with b = sensitivity / epsilon, whose
variance is 2 q / (1 - q)^2 and P(0) = (1 - q) / (1 + q) with q = exp(-1 / b). With
20,000 draws the tolerances below are several standard errors wide (the test is
seeded by the OS: it fails by chance with probability well under 1e-6).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from portrait.errors import BudgetExhaustedError
from portrait.privacy.dp import Ledger, discrete_laplace

N = 20_000


@pytest.mark.parametrize(("sensitivity", "epsilon"), [(1, 0.5), (3, 0.5), (2, 2.0)])
def test_noise_has_the_discrete_laplace_distribution(sensitivity: int, epsilon: float) -> None:
    b = sensitivity / epsilon
    q = math.exp(-1 / b)
    true = 1000
    noise = np.array(discrete_laplace([true] * N, sensitivity, epsilon)) - true
    var = 2 * q / (1 - q) ** 2
    assert abs(noise.mean()) < 6 * math.sqrt(var / N)  # unbiased
    # the variance of a sample variance ~ var^2 * (kurtosis - 1) / N; kurtosis <= 6 here
    assert abs(noise.var() / var - 1) < 6 * math.sqrt(5 / N)
    p0 = (1 - q) / (1 + q)
    assert abs((noise == 0).mean() - p0) < 6 * math.sqrt(p0 * (1 - p0) / N)
    # symmetric, and integer-valued by construction
    assert abs((noise > 0).mean() - (noise < 0).mean()) < 6 * math.sqrt(0.5 / N)


def test_more_privacy_means_more_noise() -> None:
    tight = np.array(discrete_laplace([0] * N, 1, 4.0))
    loose = np.array(discrete_laplace([0] * N, 1, 0.25))
    assert loose.std() > 10 * tight.std()


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        discrete_laplace([1], 1, 0.0)
    with pytest.raises(ValueError, match="sensitivity"):
        discrete_laplace([1], 0, 1.0)


def test_ledger_spends_refuses_caches_and_persists(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, budget=1.0, epsilon=0.5)
    first = ledger.noisy("k1", ("q", 1), [10, 20], sensitivity=2)
    assert first.spent == 0.5
    assert ledger.noisy("k1", ("q", 1), [10, 20], sensitivity=2) is first  # asked again: free
    assert ledger.spent("k1") == 0.5
    ledger.noisy("k1", ("q", 2), [10, 20], sensitivity=2)
    with pytest.raises(BudgetExhaustedError, match="privacy budget spent"):
        ledger.noisy("k1", ("q", 3), [10, 20], sensitivity=2)
    assert ledger.noisy("k2", ("q", 3), [1], sensitivity=1).spent == 0.5  # per key
    reopened = Ledger(tmp_path, budget=1.0, epsilon=0.5)  # a restart keeps what was spent
    assert reopened.spent("k1") == 1.0
    with pytest.raises(BudgetExhaustedError):
        reopened.noisy("k1", ("q", 1), [10, 20], sensitivity=2)
