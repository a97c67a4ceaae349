"""Keys with only ``read_aggregate``: differentially private aggregates, nothing individual.

Against the shared real server: segment sizes, audience counts and histograms come with
a ``privacy`` block and noise; the same question at the same data version gets the same
answer for free; profiles, member lists, exports and drift (which lists users) are
refused; the budget runs out after budget / epsilon distinct questions. Read and admin
keys keep exact answers (the other serve tests).
"""

from __future__ import annotations

import httpx
import pytest
from tests.serve.harness import Served

from portrait.client import Client
from portrait.engine import Engine
from portrait.errors import BudgetExhaustedError, PermissionDeniedError, UsageError
from portrait.serve.keys import KeyStore


def _aggregate_key(served: Served) -> str:
    secret, _ = KeyStore(served.db).create(("read_aggregate",))
    return secret


def test_segment_sizes_and_audience_counts_are_noisy_and_stable(served: Served,
                                                                engine: Engine) -> None:
    with Client(served.url, _aggregate_key(served)) as agg:
        first = agg.segments()
        assert first["privacy"]["mechanism"] == "discrete_laplace"
        assert first["privacy"]["epsilon"] == 0.5
        n = len(first["segments"])
        assert first["privacy"]["sensitivity"] == n + 1
        assert first["privacy"]["scale"] == (n + 1) / 0.5
        assert agg.segments() == first  # asked again: the same answer, nothing spent
        scale = first["privacy"]["scale"]
        for seg in first["segments"]:  # |noise| > 20 b has probability ~ e^-20
            assert abs(seg["size"] - len(engine.segment_members(seg["name"]))) <= 20 * scale
        aud = agg.audience("events_total > 0")
        assert aud["privacy"]["budget_spent"] == 1.0
        assert aud["count"] >= 0
        with pytest.raises(PermissionDeniedError, match="aggregates only"):
            agg.audience("events_total > 0", export="csv")


def test_nothing_individual_for_aggregate_keys(served: Served) -> None:
    key = {"X-API-Key": _aggregate_key(served)}
    for path in ("/v1/profiles/u001", "/v1/segments/big_spender/members",
                 "/v1/segments/big_spender/changes", "/v1/drift", "/v1/profiles/u001/events"):
        got = httpx.get(served.url + path, headers=key, timeout=30)
        assert got.status_code == 403, path


def test_private_histograms_need_public_bounds(served: Served) -> None:
    secret = _aggregate_key(served)
    with Client(served.url, secret) as agg:
        with pytest.raises(UsageError, match="public bounds"):
            agg.distribution("spend_total")
        key = {"X-API-Key": secret}
        got = httpx.get(f"{served.url}/v1/features/spend_total/distribution",
                        params={"bins": 5, "lo": 0, "hi": 500}, headers=key, timeout=30).json()
        assert got["privacy"]["sensitivity"] == 2
        assert [b["lo"] for b in got["bins"]] == [0, 100, 200, 300, 400]
        assert all(b["count"] >= 0 for b in got["bins"])


def test_the_budget_runs_out(served: Served) -> None:
    with Client(served.url, _aggregate_key(served)) as agg:
        for i in range(20):  # default: budget 10, epsilon 0.5 per distinct question
            agg.audience(f"events_total > {i}")
        with pytest.raises(BudgetExhaustedError, match="privacy budget spent"):
            agg.audience("events_total > 99")
        agg.audience("events_total > 3")  # an answered question stays answered
