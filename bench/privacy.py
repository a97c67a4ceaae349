"""Privacy cost benchmark: ingest with privacy on against off, same run.

Run it on purpose (not part of the tests)::

    .venv/bin/python bench/privacy.py [--events N] [--users U] [--rounds R]
                                      [--personal-share S] [--no-record]

The same synthetic events (``bench/synth.py``, the reference spec plus
``privacy.personal_attrs: [email]``) are ingested end to end (durable
commits) from one Parquet file into fresh databases, alternately with privacy
off and on, ``--rounds`` times each, so both see the same machine state.
A share ``--personal-share`` (default 0.3) of the events carries personal
fields: a free-text ``text`` (four random words), ``lat``/``lon`` and an
``attrs`` object with an ``email`` (personal) and a ``device`` (not).
*On* means what the demo does: user ids stored as keyed HMAC-SHA256
pseudonyms (``privacy/pseudonym.py``) and personal fields encrypted at rest
with AES-256-GCM under per-user data keys (``privacy/crypto.py``).
Reported: the median events/s of each and their ratio; the issue's goal is
a cost of at most 30% (ratio >= 0.70). The profiles of 200 users are
checked equal between the two databases (read by raw id), and the decrypted
log of the private database equal to the plain one. The last line is one
JSON object with ``privacy_off_events_per_s``, ``privacy_on_events_per_s``,
``ratio``; a full run appends a dated row to ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
from record import append_row, git_rev  # noqa: E402  (bench/ is on sys.path above)

BENCHMARKS_MD = REPO / "BENCHMARKS.md"
SECTION = "## Privacy cost (`bench/privacy.py`)"
GOAL_RATIO = 0.70


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ingest(db: Path, path: Path, spec: Path, *, private: bool) -> float:
    from portrait.engine import Engine
    from portrait.privacy.setup import protect
    from portrait.spec.loader import load_spec
    from portrait.store import open_store

    t0 = time.perf_counter()
    with open_store(db, writer=True) as store:
        if private:
            protect(store, pseudonymise=True, encrypt=True)
        Engine(load_spec(spec), store).ingest([path])
    return time.perf_counter() - t0


def with_personal_fields(events: Any, share: float, seed: int) -> Any:
    """``events`` with ``share`` of them given text, coordinates and attrs (vectorised)."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    n = events.height
    mask = rng.random(n) < share
    words = [f"w{i}" for i in rng.integers(0, 50_000, size=(n, 4)).ravel().tolist()]
    text = pl.Series(words).reshape((n, 4)).arr.join(" ") if n else pl.Series([], dtype=str)
    email = pl.Series(rng.integers(0, 10**9, size=n)).cast(pl.String)
    return events.with_columns(
        text=pl.when(pl.Series(mask)).then(text).otherwise(None),
        lat=pl.when(pl.Series(mask)).then(pl.Series(rng.uniform(-60, 60, n))).otherwise(None),
        lon=pl.when(pl.Series(mask)).then(pl.Series(rng.uniform(-170, 170, n))).otherwise(None),
        attrs=pl.when(pl.Series(mask)).then(
            pl.concat_str(pl.lit('{"device":"ios","email":"m'), email,
                          pl.lit('@mail.example"}'))).otherwise(None),
    )


def workload(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path, Any]:
    """(events file, spec file, the events) of the run: synthetic, or ``--dataset``'s."""
    import polars as pl

    import portrait
    import synth

    spec = tmp / "spec.yaml"
    data = Path(portrait.__file__).resolve().parent / "data"
    if args.dataset is None:
        spec.write_text((data / "spec.yaml").read_text()
                        + "\nprivacy:\n  personal_attrs: [email]\n")
        ds = synth.generate(args.events, args.users, args.seed)
        history = with_personal_fields(ds.history, args.personal_share, args.seed)
        path = tmp / "events.parquet"
        synth.write_parquet(history, path)
        return path, spec, history
    from portrait.datasets.fetch import fetch

    path = fetch(args.dataset).files["events"]
    history = pl.read_parquet(path)
    name = "movielens.yaml" if args.dataset.startswith("movielens") else "spec.yaml"
    spec.write_text((data / name).read_text())
    args.users = history["user_id"].n_unique()
    personal = [c for c in ("text", "lat", "lon") if c in history.columns]
    args.personal_share = round(float(history.select(pl.any_horizontal(
        pl.col(c).is_not_null() for c in personal).mean()).item() or 0.0), 3)
    return path, spec, history


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--personal-share", type=float, default=0.3)
    p.add_argument("--dataset", default=None,
                   help="ingest a real event dataset instead: movielens-1m (the demo's)")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("PORTRAIT_PSEUDONYM_KEY", "bench-key-" + "0" * 32)
    os.environ.setdefault("PORTRAIT_MASTER_KEY", "b3" * 32)

    from portrait.engine import Engine
    from portrait.store import open_store

    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="portrait-bench-privacy-") as tmpdir:
        tmp = Path(tmpdir)
        path, spec, history = workload(args, tmp)
        n = history.height
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.rounds):
            for private in (False, True) if r % 2 == 0 else (True, False):
                db = tmp / f"db-{int(private)}-{r}"
                times[private].append(ingest(db, path, spec, private=private))
                log(f"  round {r} privacy {'on ' if private else 'off'}: "
                    f"{n / times[private][-1]:,.0f} events/s")
        users = random.Random(7).sample(sorted(set(history["user_id"].to_list())), 200)
        with open_store(tmp / "db-0-0") as a, open_store(tmp / "db-1-0") as b:
            ea, eb = Engine(None, a), Engine(None, b)
            for u in users:
                if ea.profile(u) != eb.profile(u):
                    log(f"profiles differ for {u}")
                    return 1
            plain, opened = (s.events().drop("user_id").sort("event_id") for s in (a, b))
            if not plain.equals(opened):
                log("the decrypted log differs from the plain one")
                return 1
    off = n / statistics.median(times[False])
    on = n / statistics.median(times[True])
    result = {
        "bench": "privacy", "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "commit": git_rev(), "events": n, "users": args.users, "rounds": args.rounds,
        "personal_share": args.personal_share, "encrypted": True,
        "dataset": args.dataset or "synthetic",
        "privacy_off_events_per_s": round(off), "privacy_on_events_per_s": round(on),
        "ratio": round(on / off, 3), "goal_ratio": GOAL_RATIO,
        "goal_met": on / off >= GOAL_RATIO, "profiles_checked": len(users),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_start": [round(x, 2) for x in load0],
                    "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
    }
    log(f"privacy off {off:,.0f} events/s, on {on:,.0f} events/s: ratio {on / off:.3f} "
        f"(goal >= {GOAL_RATIO}: {'met' if result['goal_met'] else 'MISSED'})")
    if not args.no_record:
        _record(result)
    print(orjson.dumps(result).decode())
    return 0


def _record(r: dict[str, object]) -> None:
    m = r["machine"]
    assert isinstance(m, dict)
    row = (f"| {r['date']} | {r['commit']} | {m['cores']} cores, load "
           f"{m['load_avg_at_start'][0]} → {m['load_avg_at_end'][0]} | {r['dataset']}, "
           f"{r['events']:,} / {r['users']:,}, personal {r['personal_share']:.0%} | "
           f"{r['privacy_off_events_per_s']:,} | "
           f"{r['privacy_on_events_per_s']:,} | {r['ratio']} | "
           f"{'met' if r['goal_met'] else 'missed'} |\n")
    header = (f"{SECTION}\n\nIngest from one Parquet file, durable commits, fresh databases, "
              "alternately without and with pseudonymous user ids (keyed HMAC-SHA256 before "
              "anything is stored) and, from d0bd9fd on, personal fields encrypted at rest "
              "(30% of events carry text, lat/lon and a personal attrs key), median of the "
              "rounds; 200 profiles checked equal. Goal "
              "(issue #6): privacy costs at most 30% (ratio >= 0.70).\n\n| date (UTC) | "
              "commit | machine | events / users | off ev/s | on ev/s | ratio | goal |\n"
              "|---|---|---|---|---|---|---|---|\n")
    append_row(BENCHMARKS_MD, SECTION, header, row)


if __name__ == "__main__":
    raise SystemExit(main())
