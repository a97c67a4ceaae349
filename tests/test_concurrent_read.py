"""Reads while an ingest runs: every read succeeds and sees a committed batch.

A ``portrait ingest`` (installed entry point, small batches) adds a file to a
populated database while two readers loop: ``portrait profile U --json``
subprocesses, and a Python process holding one read-only store and engine
(opened before the ingest's first commit) that reads profiles and the whole
population. The same ingest is replayed in-process beforehand, uninterrupted
and with the same batches, recording every watched user's profile after each
commit. Then:

* every read exits 0, or 1 with "unknown user" while the user had no batch;
* every profile read equals the profile after *some* committed batch, and
  successive reads of one reader never go back to an earlier batch (so
  ``events_total`` never decreases);
* a whole-population read is one batch's population: its ``events_total``
  sum is the number of events accepted up to that batch;
* the reads after the ingest equal the final state.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import portrait
from portrait.engine import Engine
from portrait.errors import UnknownUserError
from portrait.spec.loader import load_spec
from portrait.store import open_store
from portrait.timeutil import format_us

PORTRAIT = str(Path(sys.executable).with_name("portrait"))
SPEC = Path(portrait.__file__).parent / "data" / "spec.yaml"
BATCH = 100  # many commits, so that reads land between them
BASE_S = 1_709_251_200  # 2024-03-01T00:00:00Z
DAY_S = 86_400
OLD_USERS = [f"u{i:03d}" for i in range(150)]
NEW_USERS = [f"n{i:02d}" for i in range(20)]
# a heavy and a light old user, two users only in the live file, one never seen
WATCHED = ["u000", "u149", "n00", "n19", "ghost"]

_READER = r"""
import json, sys, time
from pathlib import Path
from portrait.engine import Engine
from portrait.errors import UnknownUserError
from portrait.store import open_store

db, out, stop, users = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
store = open_store(db)
engine = Engine(None, store)
with out.open("w") as f:
    f.write(json.dumps({"ready": True}) + "\n")
    f.flush()
    while True:
        last = stop.exists()
        for u in users:
            try:
                rec = {"user": u, "profile": engine.profile(u)}
            except UnknownUserError:
                rec = {"user": u, "unknown": True}
            except Exception as exc:
                rec = {"user": u, "error": repr(exc)}
            f.write(json.dumps(rec) + "\n")
        try:
            values = engine.read_at()
            rec = {"population": int(values["events_total"].sum()), "users": values.height}
        except Exception as exc:
            rec = {"error": repr(exc)}
        f.write(json.dumps(rec) + "\n")
        f.flush()
        if last:
            break
store.close()
"""


def events(rng: random.Random, n: int, users: list[str], days: tuple[int, int], first_id: int
           ) -> list[str]:
    lo, hi = days
    lines = []
    for i in range(n):
        kind = rng.choice(["view", "view", "click", "cart", "purchase", "rating"])
        # user i of the list is chosen with weight 1 / (i + 1): heavy and light users
        user = rng.choices(users, weights=[1 / (k + 1) for k in range(len(users))])[0]
        ev: dict[str, Any] = {
            "event_id": f"e{first_id + i:06d}", "user_id": user,
            "ts": format_us((BASE_S + rng.randrange(lo * DAY_S, hi * DAY_S)) * 1_000_000),
            "type": kind, "item_id": f"i{rng.randrange(300)}",
            "category": rng.choice(["Books", "Sci-Fi", "Drama", "Toys"]),
        }
        if kind in ("cart", "purchase"):
            ev["price"], ev["quantity"] = round(rng.uniform(1, 90), 2), 1
        if kind == "rating":
            ev["rating"] = rng.randint(1, 5)
        lines.append(json.dumps(ev))
    return lines


def normal(profile: dict[str, Any] | None) -> Any:
    """A profile as it reads back from JSON (the form the CLI prints)."""
    return None if profile is None else json.loads(json.dumps(profile))


class History:
    """Each watched user's profile (None: unknown) after each commit, and accepted totals."""

    def __init__(self) -> None:
        self.profiles: dict[str, list[Any]] = {u: [] for u in WATCHED}
        self.accepted: list[int] = []

    def record(self, engine: Engine) -> None:
        for u in WATCHED:
            try:
                self.profiles[u].append(normal(engine.profile(u)))
            except UnknownUserError:
                self.profiles[u].append(None)
        self.accepted.append(engine.store.meta().accepted)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("concurrent")
    rng = random.Random(20240301)
    base = root / "base.jsonl"
    base.write_text("\n".join(events(rng, 3000, OLD_USERS, (0, 40), 0)) + "\n")
    live_lines = events(rng, 5000, OLD_USERS + NEW_USERS * 3, (10, 50), 100_000)
    live_lines[50:50] = live_lines[:30]  # duplicates
    live_lines[400:400] = ['{"user_id": "u000", "ts": "2024-02-30T00:00:00Z", "type": "view"}',
                           '{"user_id": ', "[]"]  # bad records
    live = root / "live.jsonl"
    live.write_text("\n".join(live_lines) + "\n")
    ref = root / "ref"
    with open_store(ref, writer=True) as store:
        engine = Engine(load_spec(SPEC), store, batch_size=BATCH)
        engine.ingest([base])
    start = root / "start"
    shutil.copytree(ref, start)
    history = History()
    with open_store(ref, writer=True) as store:
        engine = Engine(None, store, batch_size=BATCH)
        history.record(engine)
        summary = engine.ingest([live], progress=lambda *_: history.record(engine))
    return {"root": root, "start": start, "live": live, "history": history,
            "summary": summary.to_json()}


class Order:
    """Checks that one reader's reads of one user follow the committed batches in order."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.at: dict[str, int] = {}
        self.problems: list[str] = []
        self.batches_seen: set[int] = set()

    def saw(self, user: str, profile: Any, where: str) -> None:
        states = self.history.profiles[user]
        lo = self.at.get(user, 0)
        later = [k for k in range(lo, len(states)) if states[k] == profile]
        if later:
            self.at[user] = later[0]
            self.batches_seen.add(later[0])
            return
        what = "unknown" if profile is None else (
            f"events_total={profile['features']['events_total']}")
        earlier = [k for k in range(lo) if states[k] == profile]
        if earlier:
            self.problems.append(f"{where}: {user} went back from batch {lo} to {earlier[-1]}")
        else:
            self.problems.append(f"{where}: {user} read {what} as of "
                                 f"{profile and profile['as_of']}, the state of no batch"
                                 f"{self._near(states, profile)}")

    @staticmethod
    def _near(states: list[Any], profile: Any) -> str:
        """Which batches the read's parts come from (to tell a torn read)."""
        if profile is None:
            return ""
        total = [k for k, p in enumerate(states)
                 if p and p["features"]["events_total"] == profile["features"]["events_total"]]
        as_of = [k for k, p in enumerate(states) if p and p["as_of"] == profile["as_of"]]
        return f" (events_total of batches {total}, as_of of batches {as_of})"


CliRead = tuple[str, int, str, str]  # user, exit code, stdout, stderr


def run_with_readers(setup: dict[str, Any], db: Path, out: Path
                     ) -> tuple[subprocess.CompletedProcess[str], list[CliRead]]:
    """The ingest, with the API reader process and the CLI reader loop running alongside."""
    stop = out.with_suffix(".stop")
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(db), str(out), str(stop),
                               *WATCHED])
    cli_reads: list[CliRead] = []
    try:
        limit = time.monotonic() + 120
        while not (out.exists() and out.read_text().startswith('{"ready"')):
            assert reader.poll() is None, "the reader died"
            assert time.monotonic() < limit, "the reader did not start"
            time.sleep(0.05)
        args = [PORTRAIT, "ingest", str(setup["live"]), "--db", str(db), "--batch-size",
                str(BATCH), "--quiet"]
        ingest = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def cli_loop() -> None:
            env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
            i = 0
            while ingest.poll() is None:
                user = WATCHED[i % len(WATCHED)]
                i += 1
                p = subprocess.run([PORTRAIT, "profile", user, "--db", str(db), "--json"],
                                   capture_output=True, text=True, env=env, timeout=120,
                                   check=False)
                cli_reads.append((user, p.returncode, p.stdout, p.stderr))

        thread = threading.Thread(target=cli_loop)
        thread.start()
        stdout, stderr = ingest.communicate(timeout=600)
        thread.join(timeout=300)
        stop.touch()
        reader.wait(timeout=120)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    return subprocess.CompletedProcess(args, ingest.returncode, stdout, stderr), cli_reads


def check_cli_reads(history: History, cli_reads: list[CliRead]) -> tuple[list[str], Order]:
    problems: list[str] = []
    order = Order(history)
    for user, rc, text, err in cli_reads:
        if rc == 0:
            order.saw(user, json.loads(text), "portrait profile")
        elif rc == 1 and "unknown user" in err:
            order.saw(user, None, "portrait profile")
        else:
            problems.append(f"portrait profile {user} exited {rc}: {err.strip()[:300]}")
    return problems + order.problems, order


def check_api_reads(history: History, reads: list[dict[str, Any]]) -> tuple[list[str], Order]:
    problems: list[str] = []
    order = Order(history)
    last_total = 0
    for rec in reads:
        if "error" in rec:
            problems.append(f"API read failed: {rec}")
        elif "population" in rec:
            if rec["population"] not in history.accepted:
                problems.append(f"API population read sums to {rec['population']} events, "
                                f"no batch had that many (torn read)")
            elif rec["population"] < last_total:
                problems.append(f"API population went back from {last_total} to "
                                f"{rec['population']}")
            last_total = max(last_total, rec["population"])
        else:
            order.saw(rec["user"], rec.get("profile"), "API profile")
    last = {r["user"]: r.get("profile") for r in reads if "user" in r and "error" not in r}
    if last != {u: states[-1] for u, states in history.profiles.items()}:
        problems.append("the API reader's last reads are not the final state")
    return problems + order.problems, order


def test_reads_during_ingest_see_committed_batches_only(setup: dict[str, Any], tmp_path: Path
                                                        ) -> None:
    history: History = setup["history"]
    db = tmp_path / "db"
    shutil.copytree(setup["start"], db)
    out = tmp_path / "reads.jsonl"
    ingest, cli_reads = run_with_readers(setup, db, out)
    assert ingest.returncode == 0, ingest.stderr
    assert json.loads(ingest.stdout) == setup["summary"]
    problems, cli_order = check_cli_reads(history, cli_reads)
    reads = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    api_problems, api_order = check_api_reads(history, reads)
    problems += api_problems
    for user in ("u000", "n19", "ghost"):  # an old user, a new one, one never seen
        p = subprocess.run([PORTRAIT, "profile", user, "--db", str(db), "--json"],
                           capture_output=True, text=True, timeout=120, check=False)
        got = json.loads(p.stdout) if p.returncode == 0 else None
        if got != history.profiles[user][-1]:
            problems.append(f"final portrait profile {user}: exit {p.returncode}, not the "
                            f"final state")
    assert not problems, "\n".join(problems[:30])
    # the readers really did overlap the ingest
    assert cli_reads, "no portrait profile ran during the ingest"
    assert len(api_order.batches_seen) >= 3, sorted(api_order.batches_seen)
    print(f"{len(cli_reads)} CLI reads over batches {sorted(cli_order.batches_seen)}, "
          f"{len(reads)} API reads over {len(api_order.batches_seen)} batches")
