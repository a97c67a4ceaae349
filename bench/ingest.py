"""Ingest benchmark: portrait vs a hand-written Python loop and a DuckDB recompute.

Run it on purpose (not part of the tests)::

    .venv/bin/python bench/ingest.py [--events N] [--users U] [--seed S] [--out DIR]

In one run, on the same synthetic events (``bench/synth.py``) and the
reference spec (``src/portrait/data/spec.yaml``), it measures

(a) portrait ingest end to end, durable commit included, from a Parquet file
    and from a JSON Lines file (a fresh database each; the clock runs from
    before ``open_store`` to after the last commit);
(b) the naive per-event Python loop (``bench/naive.py``) on the first
    ``--naive-events`` events of the same file;
(c) catching up on 1% new events (some late): warm (the Engine that ingested
    the history) and cold (a new process opening that database), against a
    full DuckDB SQL recomputation over all events (``bench/recompute.py``).

Then it checks ~100 users: portrait's profile (warm and cold databases) must
equal the DuckDB recomputation and the naive loop (floats within 1e-9
relative); it exits 1 if they disagree. The last line of output is one JSON
object; a dated row goes to ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import naive  # noqa: E402
import portrait  # noqa: E402
import recompute  # noqa: E402
import synth  # noqa: E402
from portrait.engine import Engine  # noqa: E402
from portrait.spec.loader import load_spec  # noqa: E402
from portrait.store import open_store  # noqa: E402
from portrait.timeutil import format_us, parse_rfc3339  # noqa: E402

SPEC = Path(portrait.__file__).resolve().parent / "data" / "spec.yaml"
from record import append_row, git_rev  # noqa: E402  (bench/ is on sys.path above)

BENCHMARKS_MD = REPO / "BENCHMARKS.md"
SECTION = "## Ingest benchmark (`bench/ingest.py`)"
REL_TOL = 1e-9
DISTINCT_EXACT_LIMIT = 10_000  # DESIGN.md: exact up to 10,000 values, then a sketch
SKETCH_REL_TOL = 0.05


def log(msg: str) -> None:
    print(msg, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- data -----------------------------------------------------------------
def prepare_data(args: argparse.Namespace) -> tuple[Path, float]:
    """Generate the files once per (events, users, seed) in a child process.

    A child keeps the generator's memory out of this process's peak RSS.
    Returns the data directory and the generation seconds (0 when cached).
    """
    data = Path(args.out) / f"data-{args.events}-{args.users}-{args.seed}"
    if (data / "done").exists():
        return data, 0.0
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--generate", str(data), "--events", str(args.events),
         "--users", str(args.users), "--seed", str(args.seed)],
        check=True,
    )
    return data, time.perf_counter() - t0


def generate_files(data: Path, events: int, users: int, seed: int) -> None:
    data.mkdir(parents=True, exist_ok=True)
    ds = synth.generate(events, users, seed)
    synth.write_parquet(ds.history, data / "history.parquet")
    synth.write_jsonl(ds.history, data / "history.jsonl")
    synth.write_parquet(ds.new, data / "new.parquet")
    synth.write_jsonl(ds.new, data / "new.jsonl")
    (data / "done").write_text("ok\n")


# -- portrait -------------------------------------------------------------
def fresh_db(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def timed_ingest(db: Path, paths: list[Path]) -> tuple[float, Engine, Any]:
    """Seconds from before ``open_store`` to after the last commit (store left open)."""
    t0 = time.perf_counter()
    engine = Engine(load_spec(SPEC), open_store(db, writer=True))
    summary = engine.ingest(paths)
    return time.perf_counter() - t0, engine, summary


def cold_catchup_child(db: Path, path: Path) -> None:
    """In a new process: open the existing db, ingest ``path``; print the seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    store = open_store(db, writer=True)
    engine = Engine(load_spec(SPEC), store)
    summary = engine.ingest([path])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    store.close()
    print(orjson.dumps({"seconds": seconds, "cpu": cpu, "summary": summary.to_json()}).decode())


def run_cold_catchup(db: Path, path: Path) -> tuple[float, float, dict[str, Any]]:
    """(seconds inside the child, wall seconds of the child process, child's output)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--cold-catchup", str(db), str(path)],
        check=True, capture_output=True, text=True,
    )
    wall = time.perf_counter() - t0
    out = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return out["seconds"], wall, out


def expect_counts(label: str, summary: dict[str, Any], accepted: int) -> None:
    if (summary["accepted"], summary["rejected"], summary["duplicates"]) != (accepted, 0, 0):
        raise SystemExit(f"FAIL {label}: expected {accepted} accepted, none rejected: {summary}")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- naive ----------------------------------------------------------------
def time_naive(path: Path, limit: int) -> tuple[int, float]:
    """Events and seconds of the naive loop (read + loop + read at watermark)."""
    t0 = time.perf_counter()
    profiles = naive.NaiveProfiles()
    n = profiles.update_all(naive.iter_dicts(path, limit=limit))
    profiles.read()
    return n, time.perf_counter() - t0


# -- correctness check ------------------------------------------------------
def sample_users(data: Path, seed: int, k: int = 100) -> list[str]:
    """Heavy users, random users, users of the catch-up batch (late and brand new)."""
    rng = random.Random(seed)
    hist = pl.scan_parquet(data / "history.parquet")
    new = pl.read_parquet(data / "new.parquet", columns=["user_id", "ts"])
    counts = hist.group_by("user_id").len().collect()
    counts = counts.sort(["len", "user_id"], descending=[True, False])
    wm = hist.select(pl.col("ts").max()).collect().item()
    hist_users = counts["user_id"].to_list()
    known = set(hist_users)
    late = sorted(set(new.filter(pl.col("ts") <= wm)["user_id"]) & known)
    touched = sorted(set(new["user_id"]) & known)
    brand_new = sorted(set(new["user_id"]) - known)
    picked: list[str] = []
    for pool, n in ((hist_users[:15], 15), (late, 15), (brand_new, 10), (touched, 25),
                    (hist_users, k)):
        taken = set(picked)
        left = [u for u in pool if u not in taken]
        picked += rng.sample(left, min(n, len(left), k - len(picked)))
    return picked


def normalise(profile: dict[str, Any]) -> dict[str, Any]:
    """A portrait profile JSON in the comparable form of the naive loop and SQL."""
    f = dict(profile["features"])
    for name in ("first_seen", "last_seen"):
        f[name] = None if f[name] is None else parse_rfc3339(f[name])
    f["top_categories"] = list(f["top_categories"].items())
    f["category_affinity"] = dict(f["category_affinity"])
    return f


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=0.0)
    return bool(a == b)


def diff(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Features where ``got`` differs from ``expected`` (floats within 1e-9 relative)."""
    bad = []
    for name, want in expected.items():
        have = got.get(name)
        if isinstance(want, dict):
            ok = isinstance(have, dict) and want.keys() == have.keys() and all(
                _close(want[k], have[k]) for k in want
            )
        elif name == "distinct_items" and want > DISTINCT_EXACT_LIMIT:
            ok = have is not None and abs(have - want) <= SKETCH_REL_TOL * want
        else:
            ok = _close(want, have)
        if not ok:
            bad.append(f"{name}: expected {want!r}, got {have!r}")
    return bad


def check(
    data: Path, users: list[str], wm: int, table: Any, engines: dict[str, Engine]
) -> tuple[bool, list[str]]:
    """Compare portrait (each engine) with the DuckDB rows and the naive loop."""
    wanted = set(users)
    oracle = naive.NaiveProfiles()
    for name in ("history.parquet", "new.parquet"):
        oracle.update_all(naive.iter_dicts(data / name, users=wanted))
    by_naive = oracle.read(at=wm, users=users)
    by_sql = recompute.rows_for(table, users)
    problems: list[str] = []
    for uid in users:
        if uid not in by_naive or uid not in by_sql:
            problems.append(f"{uid}: missing (naive: {uid in by_naive}, sql: {uid in by_sql})")
            continue
        problems += [f"{uid} naive vs sql: {p}" for p in diff(by_sql[uid], by_naive[uid])]
        for label, engine in engines.items():
            profile = engine.profile(uid)
            if profile["as_of"] != format_us(wm):
                problems.append(f"{uid} {label}: as_of {profile['as_of']} != {format_us(wm)}")
            got = normalise(profile)
            problems += [f"{uid} {label} vs sql: {p}" for p in diff(by_sql[uid], got)]
    return not problems, problems


# -- report ---------------------------------------------------------------
def machine() -> dict[str, Any]:
    import psutil

    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "cpu": model,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "polars": pl.__version__,
    }


def src_digest() -> str:
    """Short hash of the package sources measured (the tree may be uncommitted)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(portrait.__file__).resolve().parent.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


HEADER = f"""{SECTION}

`.venv/bin/python bench/ingest.py [--events N] [--users U] [--seed S] [--out DIR]`
generates skewed synthetic events (default 2,000,000 events, 200,000 users,
50 categories, 5 types, 90 days; files under `/tmp/portrait-bench`), runs
the reference spec `src/portrait/data/spec.yaml`, checks ~100 profiles
against a DuckDB recomputation and a naive loop (exit 1 on disagreement),
prints one JSON line and appends a row here. Columns:

- **events/s**: `events_per_s`, portrait ingest of the Parquet file, end to
  end (open store → last durable commit), fresh database.
- **jsonl ev/s**: `jsonl_events_per_s`, the same from JSON Lines.
- **naive ev/s**: `naive_events_per_s`, a hand-written per-event Python loop
  over event dicts (`bench/naive.py`; read + loop + read at the watermark) on
  the first `naive_events` events; **× naive** = `ratio_vs_naive`.
- **catch-up warm / cold (s)**: ingesting 1% new events (90% within a day
  after the history's watermark, 10% late by up to 3 days, 1% from new
  users) into the history database — warm with the Engine that ingested it, cold in a new
  process; **recompute (s)**: DuckDB SQL over all events, all features (best
  of two runs).
- **× recompute**: `catchup_ratio_vs_recompute` = recompute / warm catch-up
  (cold ratio in brackets).
- **state B/user**: `state_bytes_per_user`, bytes of `state/` files on disk
  after the history ingest / users. **peak RSS**: `peak_rss_mb` of the
  benchmark process (ru_maxrss, generation excluded).
- **CPU-time**: the same three ratios with CPU seconds (all threads of the
  process, `cpu_s`) instead of wall seconds: `cpu_events_per_s`,
  `cpu_ratio_vs_naive`, `cpu_catchup_ratio_vs_recompute`. Less disturbed by
  other load, and conservative for portrait and DuckDB, which use both cores.

The machine column gives the 1-minute load average at start → end: the
machine is shared, and with a load above its core count every timing is
inflated. Where the time goes, phase by phase:
`.venv/bin/python bench/ingest_phases.py FILE [--catchup NEW] [--keep-db]`.

Targets (2-core machine): events/s ≥ 1,000,000; × naive ≥ 5; × recompute ≥ 50;
state B/user ≤ 1024.

"""
COLUMNS = (
    "date (UTC)", "commit", "machine", "events", "users", "events/s", "jsonl ev/s", "naive ev/s",
    "× naive", "catch-up warm / cold (s)", "recompute (s)", "× recompute", "state B/user",
    "peak RSS (MB)", "CPU-time: events/s · × naive · × recompute", "check",
)
HEADER += "| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|\n"


def record(result: dict[str, Any]) -> None:
    """Append a dated row to the benchmark section of BENCHMARKS.md."""
    m = result["machine"]
    t = result["timings_s"]
    row = (
        f"| {result['date']} | {result['commit']} | {m['cores']} cores, {m['cpu']}, "
        f"{m['ram_gb']:.0f} GB, load {m['load_avg_1m_at_start']:.1f}→{m['load_avg_1m_at_end']:.1f} "
        f"| {result['events']:,} | {result['users']:,} "
        f"| {result['events_per_s']:,.0f} | {result['jsonl_events_per_s']:,.0f} "
        f"| {result['naive_events_per_s']:,.0f} | {result['ratio_vs_naive']:.1f} "
        f"| {t['catchup_warm']:.3f} / {t['catchup_cold']:.3f} | {t['recompute']:.2f} "
        f"| {result['catchup_ratio_vs_recompute']:.1f} "
        f"({result['cold_catchup_ratio_vs_recompute']:.1f}) "
        f"| {result['state_bytes_per_user']:.0f} | {result['peak_rss_mb']:.0f} "
        f"| {result['cpu_events_per_s']:,.0f} · {result['cpu_ratio_vs_naive']:.1f} · "
        f"{result['cpu_catchup_ratio_vs_recompute']:.1f} "
        f"| {result['check']} |\n"
    )
    append_row(BENCHMARKS_MD, SECTION, HEADER, row)


# -- main -----------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default="/tmp/portrait-bench", help="data and databases (not the repo)")
    p.add_argument("--naive-events", type=int, default=500_000,
                   help="events timed in the naive loop (a prefix of the history; >= 200,000)")
    p.add_argument("--sample", type=int, default=100, help="users checked")
    p.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    p.add_argument("--generate", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--cold-catchup", nargs=2, metavar=("DB", "FILE"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


class Bench:
    """One benchmark run: its files, databases, timings and facts, phase by phase."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.load_at_start = os.getloadavg()[0]
        self.commit, self.src_digest = git_rev(), src_digest()  # the code measured, not later
        self.t: dict[str, float] = {}
        self.cpu: dict[str, float] = {}  # CPU seconds (all threads): robust to a busy machine
        self.facts: dict[str, Any] = {}
        self.data, self.t["generate"] = prepare_data(args)
        self.hist_pq, self.new_pq = self.data / "history.parquet", self.data / "new.parquet"
        self.n_new = pl.scan_parquet(self.new_pq).select(pl.len()).collect().item()
        self.n_users = (
            pl.scan_parquet(self.hist_pq).select(pl.col("user_id").n_unique()).collect().item()
        )
        self.db_pq, self.db_js = self.out / "db-parquet", self.out / "db-jsonl"
        log(f"data: {args.events:,} events, {self.n_users:,} users, "
            f"+{self.n_new:,} catch-up events in {self.data}")

    @contextlib.contextmanager
    def cpu_clock(self, name: str) -> Iterator[None]:
        c0 = time.process_time()
        try:
            yield
        finally:
            self.cpu[name] = min(self.cpu.get(name, math.inf), time.process_time() - c0)

    def ingest(self) -> Engine:
        """(a) Parquet then JSON Lines into fresh databases; returns the warm Parquet Engine."""
        n = self.args.events
        with self.cpu_clock("ingest_parquet"):
            secs, warm, summary = timed_ingest(fresh_db(self.db_pq), [self.hist_pq])
        self.t["ingest_parquet"] = secs
        expect_counts("parquet ingest", summary.to_json(), n)
        self.facts["rss_after_ingest"] = peak_rss_mb()
        self.facts["state_bytes"] = dir_bytes(self.db_pq / "state")
        self.facts["log_bytes"] = dir_bytes(self.db_pq / "log")
        log(f"(a) parquet ingest: {self.t['ingest_parquet']:.2f} s "
            f"({n / self.t['ingest_parquet']:,.0f} events/s), "
            f"state {self.facts['state_bytes']:,} B, log {self.facts['log_bytes']:,} B")
        with self.cpu_clock("ingest_jsonl"):
            secs, engine_js, summary = timed_ingest(
                fresh_db(self.db_js), [self.data / "history.jsonl"]
            )
        self.t["ingest_jsonl"] = secs
        expect_counts("jsonl ingest", summary.to_json(), n)
        engine_js.store.close()
        log(f"(a) jsonl ingest:   {secs:.2f} s ({n / secs:,.0f} events/s)")
        return warm

    def catchup(self, warm: Engine) -> tuple[int, Any]:
        """(c) warm (same Engine) into db-parquet, cold (new process) into db-jsonl, recompute."""
        with self.cpu_clock("catchup_warm"):
            t0 = time.perf_counter()
            summary = warm.ingest([self.new_pq])
            self.t["catchup_warm"] = time.perf_counter() - t0
        expect_counts("warm catch-up", summary.to_json(), self.n_new)
        cold, process, child = run_cold_catchup(self.db_js, self.new_pq)
        self.t["catchup_cold"], self.t["catchup_cold_process"] = cold, process
        self.cpu["catchup_cold"] = child["cpu"]
        expect_counts("cold catch-up", child["summary"], self.n_new)
        runs = []
        for _ in range(2):  # best of two: the conservative side for the ratio
            with self.cpu_clock("recompute"):
                t0 = time.perf_counter()
                wm, table = recompute.recompute([self.hist_pq, self.new_pq])
                runs.append(time.perf_counter() - t0)
        self.t["recompute"], self.t["recompute_worst"] = min(runs), max(runs)
        log(f"(c) catch-up {self.n_new:,} events: warm {self.t['catchup_warm']:.3f} s, cold "
            f"{cold:.3f} s (process {process:.2f} s); "
            f"DuckDB recompute {self.t['recompute']:.2f} s ({table.num_rows:,} users)")
        return wm, table

    def naive(self) -> None:
        """(b) the naive loop on a prefix of the same events."""
        with self.cpu_clock("naive"):
            n, self.t["naive"] = time_naive(self.hist_pq, max(self.args.naive_events, 200_000))
        self.facts["naive_events"] = n
        log(f"(b) naive loop: {n:,} events (a prefix of the history) in {self.t['naive']:.2f} s "
            f"({n / self.t['naive']:,.0f} events/s)")

    def check(self, warm: Engine, wm: int, table: Any) -> bool:
        """portrait (warm and cold dbs) == DuckDB == naive on a sample of users."""
        t0 = time.perf_counter()
        users = sample_users(self.data, self.args.seed, self.args.sample)
        cold = Engine(None, open_store(self.db_js))
        engines = {"portrait-warm": warm, "portrait-cold": cold}
        ok, problems = check(self.data, users, wm, table, engines)
        if warm.watermark != wm:
            ok, problems = False, [*problems, f"watermark {warm.watermark} != {wm}"]
        cold.store.close()
        warm.store.close()
        self.t["check"] = time.perf_counter() - t0
        self.facts["checked_users"] = len(users)
        verdict = "ok" if ok else f"FAILED ({len(problems)} differences)"
        log(f"check: portrait == DuckDB recompute == naive loop on {len(users)} users: {verdict}")
        for p in problems[:30]:
            log(f"  {p}")
        return ok

    def result(self, ok: bool) -> dict[str, Any]:
        t, f, n = self.t, self.facts, self.args.events
        eps = n / t["ingest_parquet"]
        naive_eps = f["naive_events"] / t["naive"]
        return {
            "events_per_s": round(eps),
            "jsonl_events_per_s": round(n / t["ingest_jsonl"]),
            "naive_events_per_s": round(naive_eps),
            "naive_events": f["naive_events"],
            "naive_note": f"naive loop timed on the first {f['naive_events']:,} events "
                          "of the history (a subsample)",
            "ratio_vs_naive": round(eps / naive_eps, 2),
            "catchup_ratio_vs_recompute": round(t["recompute"] / t["catchup_warm"], 2),
            "cold_catchup_ratio_vs_recompute": round(t["recompute"] / t["catchup_cold"], 2),
            "catchup_events": self.n_new,
            "state_bytes_per_user": round(f["state_bytes"] / self.n_users, 1),
            "log_bytes_per_event": round(f["log_bytes"] / n, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_rss_mb_after_parquet_ingest": round(f["rss_after_ingest"], 1),
            "events": n,
            "users": self.n_users,
            "seed": self.args.seed,
            "check": "ok" if ok else "FAILED",
            "checked_users": f["checked_users"],
            "timings_s": {k: round(v, 4) for k, v in t.items()},
            "cpu_s": {k: round(v, 4) for k, v in self.cpu.items()},
            "cpu_events_per_s": round(n / self.cpu["ingest_parquet"]),
            "cpu_ratio_vs_naive": round(
                (n / self.cpu["ingest_parquet"]) / (f["naive_events"] / self.cpu["naive"]), 2
            ),
            "cpu_catchup_ratio_vs_recompute": round(
                self.cpu["recompute"] / self.cpu["catchup_warm"], 2
            ),
            "machine": {**machine(), "load_avg_1m_at_start": round(self.load_at_start, 2)},
            "commit": self.commit,
            "src_digest": self.src_digest,
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.generate:
        generate_files(Path(args.generate), args.events, args.users, args.seed)
        return 0
    if args.cold_catchup:
        cold_catchup_child(Path(args.cold_catchup[0]), Path(args.cold_catchup[1]))
        return 0
    recompute.check_reference_spec(load_spec(SPEC))
    bench = Bench(args)
    warm = bench.ingest()
    wm, table = bench.catchup(warm)
    bench.naive()
    ok = bench.check(warm, wm, table)
    result = bench.result(ok)
    if ok and not args.no_record:
        record(result)
    print(orjson.dumps(result).decode(), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
