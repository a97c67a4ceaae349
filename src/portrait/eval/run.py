"""``portrait eval``: a dataset, its protocol and tasks, and the report.

Each dataset has a fixed protocol (quick and full differ only in the number
of cuts and bootstrap draws), chosen before any result was seen and recorded
in the report; nothing here is tuned per run.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from portrait.errors import UsageError
from portrait.eval import propensity, ranking
from portrait.eval.protocol import Progress, Protocol
from portrait.eval.replay import validated_events
from portrait.eval.report import verdicts, write_report

PROTOCOLS: dict[str, Protocol] = {
    "movielens-1m": Protocol(
        horizon="30d",
        n_cuts=5,
        last_quantile=0.9,
        half_lives=("1d", "7d", "30d", "180d"),
        refresh=("event", "1h", "1d", "7d"),
    ),
    "cdnow": Protocol(
        horizon="90d",
        n_cuts=4,
        last_quantile=1.0,
        half_lives=("30d", "90d", "180d", "365d"),
        refresh=("event", "1d", "7d", "30d"),
    ),
}
GOALS: dict[str, list[dict[str, str]]] = {
    "movielens-1m": [
        {"task": "next_category", "metric": "acc@1"},
        {"task": "next_category", "metric": "acc@3"},
        {"task": "next_item", "metric": "recall@20"},
        {"task": "next_item", "metric": "ndcg@20"},
    ],
    "cdnow": [{"task": "propensity", "metric": "auc"}],
}


def protocol_for(dataset: str, quick: bool) -> Protocol:
    try:
        proto = PROTOCOLS[dataset]
    except KeyError:
        known = ", ".join(sorted(PROTOCOLS))
        raise UsageError(f"no evaluation for dataset {dataset!r} (evaluable: {known})") from None
    if quick:
        proto = replace(proto, n_cuts=3, n_bootstrap=500)
    return proto


def machine() -> str:
    cpu = platform.processor() or platform.system()
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {cpu}"


def evaluate_events(
    dataset: str,
    events: pl.DataFrame,
    out: Path,
    *,
    quick: bool = False,
    proto: Protocol | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate an event frame (dataset Parquet columns) and write the report to ``out``.

    Returns the report as written to ``report.json``, verdicts included.
    """
    started = time.perf_counter()
    say = progress or (lambda _m: None)
    frame, rejects = validated_events(events, source=dataset)
    proto = (proto or protocol_for(dataset, quick)).with_cuts(frame["ts"])
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".replay"
    if work.exists():
        shutil.rmtree(work)
    if dataset == "cdnow":
        rows, info = propensity.evaluate(frame, proto, work, say, rejects)
        notes = [propensity.__doc__.strip().splitlines()[0]] if propensity.__doc__ else []
        curves = {"calibration": info.pop("calibration")}
    else:
        rows, info = ranking.evaluate(frame, proto, work, say, rejects)
        notes = ranking.report_notes()
        curves = {}
    shutil.rmtree(work, ignore_errors=True)
    report: dict[str, Any] = {
        "dataset": dataset,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
        "protocol": {**proto.to_json(), "quick": quick, "notes": notes, **info,
                     "rejected_events": len(rejects)},
        "results": rows,
        "curves": curves,
        "goals": GOALS.get(dataset, []),
    }
    write_report(out, report)
    report["verdicts"] = verdicts(report)  # as written into report.json
    return report


def run_eval(
    dataset: str,
    out: Path,
    *,
    quick: bool = False,
    cache: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fetch ``dataset`` (cached), evaluate it, write ``out/report.{json,md}``."""
    from portrait.datasets import fetch

    protocol_for(dataset, quick)  # refuse an unknown dataset before fetching
    fetched = fetch(dataset, cache, progress=progress)
    events = pl.read_parquet(fetched.files["events"])
    return evaluate_events(dataset, events, out, quick=quick, progress=progress)
