"""One contract suite for every :class:`~portrait.store.base.Store` back-end.

Each back-end is a :class:`Backend` in :data:`BACKENDS` (today the embedded
SQLite + Parquet store; Redis / PostgreSQL back-ends add an entry). The
generic tests use only the ``Store`` protocol, checked against a plain Python
model of what was committed. Checks that only make sense for a back-end that
keeps files (orphan cleanup, where a user's rows live, compaction limits) go
through the optional hooks of the ``Backend`` and are skipped, with a reason,
by back-ends that have no such thing.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import portrait
from portrait.engine import Engine
from portrait.errors import StoreError
from portrait.events.schema import EVENT_SCHEMA, DeadLetter
from portrait.features import ProfileAggregator
from portrait.spec.loader import parse_spec
from portrait.store import embedded as embedded_mod
from portrait.store.base import Checkpoint, Commit, Store, StoreMeta
from portrait.store.embedded import EmbeddedStore
from portrait.timeutil import parse_rfc3339

SPEC_TEXT = (Path(portrait.__file__).parent / "data" / "spec.yaml").read_text()
SPEC = parse_spec(SPEC_TEXT)
AGG = ProfileAggregator(SPEC)
US = 1_000_000
T0 = parse_rfc3339("2024-03-01T00:00:00Z")
TYPES = ("view", "view", "click", "cart", "purchase", "rating")
CATEGORIES = ("Books", "Sci-Fi", "Drama", "Toys")
PROTOCOL_METHODS = ("meta", "set_spec", "commit", "states", "has_user", "events", "seen",
                    "dead_letters", "checkpoint", "close")


# ---------------------------------------------------------------- back-ends


@dataclass
class Backend:
    """How the suite opens one back-end, plus optional hooks for file-based back-ends."""

    name: str
    open: Callable[[bool], Store]  # open(writer) -> a store on the same database
    data_files: Callable[[], dict[str, list[Path]]] | None = None  # kind -> files in use
    stray_files: Callable[[], list[Path]] | None = None  # files on disk the store does not use
    add_orphans: Callable[[], list[Path]] | None = None  # simulate a crash before a commit
    max_files: dict[str, int] = field(default_factory=dict)  # kind -> most files after compaction
    settle: Callable[[Store], None] | None = None  # wait for background work (compaction)
    opened: list[Store] = field(default_factory=list)

    def writer(self) -> Store:
        store = self.open(True)
        self.opened.append(store)
        return store

    def reader(self) -> Store:
        store = self.open(False)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


def _embedded(tmp_path: Path, *, background: bool = False) -> Backend:
    root = tmp_path / "db"

    def manifest() -> dict[str, list[Path]]:
        with contextlib.closing(sqlite3.connect(root / "portrait.sqlite")) as db:
            rows = db.execute("SELECT kind, name FROM files ORDER BY kind, seq").fetchall()
        out: dict[str, list[Path]] = {"log": [], "state": []}
        for kind, name in rows:
            out[kind].append(root / name)
        return out

    def stray() -> list[Path]:
        used = {p for files in manifest().values() for p in files}
        on_disk = [p for sub in ("log", "state") for p in (root / sub).iterdir()]
        return sorted(p for p in on_disk if p not in used)

    def add_orphans() -> list[Path]:
        """What a kill between the Parquet writes and the SQLite commit leaves behind:
        the next batch's files (here: copies of real data, so reading them would double
        count), temporary files, and a compaction output that never made the manifest."""
        used = manifest()
        with contextlib.closing(sqlite3.connect(root / "portrait.sqlite")) as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM batches").fetchone()[0] + 1
        made = []
        for kind in ("log", "state"):
            made.append(root / kind / f"{seq:08d}.parquet")
            shutil.copy(used[kind][-1], made[-1])
            made.append(root / kind / f"{seq + 1:08d}.parquet.tmp")
            shutil.copy(used[kind][-1], made[-1])
            made.append(root / kind / f"{seq:08d}-c{time.time_ns() // 1000}.parquet")
            shutil.copy(used[kind][0], made[-1])
        return made

    def open_store(writer: bool) -> Store:
        store = EmbeddedStore(root, writer=writer)
        if writer and background:
            store.start_background_compaction()
        return store

    def settle(store: Store) -> None:
        assert isinstance(store, EmbeddedStore)
        store.wait_compacted()
        assert store.compaction_error is None

    return Backend(
        "embedded-background-compaction" if background else "embedded",
        open_store,
        settle=settle if background else None,
        data_files=manifest,
        stray_files=stray,
        add_orphans=add_orphans,
        max_files={"state": embedded_mod.MAX_STATE_FILES, "log": embedded_mod.MAX_SMALL_LOG_FILES},
    )


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "embedded": _embedded,
    # the server's mode: merges run in a thread of their own, beside the commits
    "embedded-background": lambda tmp: _embedded(tmp, background=True),
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = BACKENDS[request.param](tmp_path)
    try:
        yield b
    finally:
        b.close_all()


def need(hook: object, backend: Backend, what: str) -> None:
    if hook is None:
        pytest.skip(f"{backend.name} has no {what}")


# ---------------------------------------------------------------- a model of the store


def make_events(rng: random.Random, n: int, users: list[str], first_id: int) -> pl.DataFrame:
    rows = []
    for i in range(n):
        kind = rng.choice(TYPES)
        rows.append({
            "event_id": f"e{first_id + i:06d}", "user_id": rng.choice(users),
            "ts": T0 + rng.randrange(10 * 86_400) * US, "type": kind,
            "item_id": f"i{rng.randrange(30)}", "category": rng.choice(CATEGORIES),
            "price": float(rng.randrange(1, 100)) if kind in ("cart", "purchase") else None,
            "quantity": rng.randint(1, 3) if kind in ("cart", "purchase") else None,
            "rating": float(rng.randint(1, 5)) if kind == "rating" else None,
        })
    return pl.DataFrame(rows, schema=EVENT_SCHEMA)


def letter(line: int, user: str | None = "u0", source: str = "f.jsonl") -> DeadLetter:
    raw = json.dumps(
        {"user_id": user, "ts": "2024-03-01T00:00:00Z", "type": "view", "price": -line}
    )
    return DeadLetter(source, line, f"price: must be finite and >= 0, got {-line}", raw)


class Model:
    """What a correct store returns, kept in plain Python next to the store under test."""

    def __init__(self) -> None:
        self.events = pl.DataFrame(schema=EVENT_SCHEMA)
        self.states: dict[str, pl.DataFrame] = {}
        self.dead: dict[tuple[str, int], dict[str, object]] = {}
        self.checkpoints: dict[str, Checkpoint] = {}
        self.watermark: int | None = None
        self.rejected = self.duplicates = 0
        self.spec_saved = False

    def commit(
        self, store: Store, events: pl.DataFrame, *, dead: list[DeadLetter] | None = None,
        checkpoint: Checkpoint | None = None, duplicates: int = 0,
        states: pl.DataFrame | None = None,
    ) -> Commit:
        """Commit ``events`` with the full new state rows of the users they touch."""
        self.events = pl.concat([self.events, events])
        if events.height:
            top = events["ts"].max()
            assert isinstance(top, int)
            self.watermark = top if self.watermark is None else max(self.watermark, top)
        if states is None:
            users = events["user_id"].unique().to_list()
            touched = self.events.filter(pl.col("user_id").is_in(users))
            states = AGG.partial(touched) if touched.height else AGG.empty()
            if self.watermark is not None:
                states = AGG.prune(states, self.watermark)
        new_users = sum(u not in self.states for u in states["user_id"])
        commit = Commit(
            events=events, states=states, dead_letters=list(dead or []),
            watermark=self.watermark, checkpoint=checkpoint, duplicates=duplicates,
            new_users=new_users, spec_text=None if self.spec_saved else SPEC_TEXT,
        )
        store.commit(commit)
        self.spec_saved = True
        for row in states.iter_slices(1):
            self.states[row["user_id"][0]] = row
        fp = checkpoint.fingerprint if checkpoint else None
        for d in commit.dead_letters:
            self.dead.setdefault((fp or d.source, d.line), {
                "source": d.source, "line": d.line, "reason": d.reason, "raw": d.raw})
        if checkpoint is not None:
            self.checkpoints[checkpoint.fingerprint] = checkpoint
        self.rejected += len(commit.dead_letters)
        self.duplicates += duplicates
        return commit

    def meta(self) -> StoreMeta:
        return StoreMeta(
            spec_text=SPEC_TEXT if self.spec_saved else None, watermark=self.watermark,
            accepted=self.events.height, rejected=self.rejected, duplicates=self.duplicates,
            users=len(self.states),
        )

    def state_frame(self, users: list[str] | None = None) -> pl.DataFrame:
        rows = [r for u, r in self.states.items() if users is None or u in users]
        return AGG.conform(pl.concat(rows)).sort("user_id") if rows else AGG.empty()


def states_of(store: Store, users: list[str] | None = None) -> pl.DataFrame:
    found = store.states(users)
    return AGG.conform(found).sort("user_id") if found.height else AGG.empty()


def events_of(
    store: Store, users: list[str] | None = None, until: int | None = None
) -> pl.DataFrame:
    return store.events(users, until).select(list(EVENT_SCHEMA)).sort("event_id")


def letters_of(store: Store) -> list[dict[str, object]]:
    return [{k: d[k] for k in ("source", "line", "reason", "raw")} for d in store.dead_letters()]


def assert_reads_match(
    store: Store, model: Model, users: list[str], *, check_seen: bool = True
) -> None:
    """Every read of ``store`` equals the model."""
    assert store.meta() == model.meta()
    assert_frame_equal(states_of(store), model.state_frame())
    assert_frame_equal(events_of(store), model.events.sort("event_id"))
    for u in users:
        assert_frame_equal(states_of(store, [u]), model.state_frame([u]))
        assert store.has_user(u) == (u in model.states)
        mine = model.events.filter(pl.col("user_id") == u).sort("event_id")
        assert_frame_equal(events_of(store, [u]), mine)
        until = T0 + 5 * 86_400 * US
        assert_frame_equal(events_of(store, [u], until), mine.filter(pl.col("ts") <= until))
    assert_frame_equal(states_of(store, users[:2]), model.state_frame(users[:2]))
    if check_seen:
        assert_seen(store, model)
    assert letters_of(store) == list(model.dead.values())
    for fp, cp in model.checkpoints.items():
        assert store.checkpoint(fp) == cp


def assert_seen(store: Store, model: Model) -> None:
    ids = pl.Series("event_id", [*model.events["event_id"].tail(50), "never-seen", "e999999"])
    expected = [True] * min(50, model.events.height) + [False, False]
    assert store.seen(ids).to_list() == expected, "seen() disagrees with the event log"


# ---------------------------------------------------------------- tests


def test_store_implements_the_protocol(backend: Backend) -> None:
    store = backend.writer()
    for name in PROTOCOL_METHODS:
        assert callable(getattr(store, name, None)), f"{backend.name} lacks Store.{name}"


def test_new_store_is_empty(backend: Backend) -> None:
    store = backend.writer()
    assert store.meta() == StoreMeta(None, None, 0, 0, 0, 0)
    assert store.states().height == 0
    assert store.states(["u0"]).height == 0
    assert store.events().height == 0
    assert not store.has_user("u0")
    assert store.seen(pl.Series("event_id", ["a", "b"])).to_list() == [False, False]
    assert store.dead_letters() == []
    assert store.checkpoint("nope") is None


def test_commit_then_read_back_everything(backend: Backend) -> None:
    rng = random.Random(1)
    users = ["u0", "u1", "u2"]
    store = backend.writer()
    model = Model()
    cp = Checkpoint("10:abc", "f.jsonl", 40, 30, 2, 3, complete=False)
    model.commit(store, make_events(rng, 30, users, 0), dead=[letter(7), letter(9, "u1")],
                 checkpoint=cp, duplicates=3)
    assert_reads_match(store, model, [*users, "nobody"])
    meta = store.meta()
    assert (meta.accepted, meta.rejected, meta.duplicates, meta.users) == (30, 2, 3, 3)
    assert meta.spec_text == SPEC_TEXT
    assert store.dead_letters(limit=1) == store.dead_letters()[:1]
    store.close()
    assert_reads_match(backend.reader(), model, users)  # durable across a reopen


def test_totals_add_up_and_watermark_never_goes_back(backend: Backend) -> None:
    rng = random.Random(2)
    store = backend.writer()
    model = Model()
    first = make_events(rng, 20, ["u0", "u1"], 0)
    model.commit(store, first, duplicates=1)
    late = make_events(rng, 5, ["u1", "u2"], 100).with_columns(pl.lit(T0 - 86_400 * US).alias("ts"))
    model.commit(store, late, dead=[letter(3)], duplicates=2)
    model.commit(store, pl.DataFrame(schema=EVENT_SCHEMA), dead=[letter(4)], duplicates=5)
    assert store.meta().watermark == first["ts"].max()
    assert_reads_match(store, model, ["u0", "u1", "u2"])


def test_newest_state_row_of_a_user_wins(backend: Backend) -> None:
    rng = random.Random(3)
    store = backend.writer()
    model = Model()
    first = make_events(rng, 10, ["u0", "u1"], 0)
    model.commit(store, first)
    # a later commit may carry a state that reads *smaller* (e.g. pruned): newest, not largest
    tiny = AGG.partial(first.filter(pl.col("user_id") == "u0").head(1))
    model.commit(store, make_events(rng, 0, ["u0"], 50), states=tiny)
    assert_frame_equal(states_of(store, ["u0"]), AGG.conform(tiny))
    assert store.states()["user_id"].to_list().count("u0") == 1
    assert_reads_match(store, model, ["u0", "u1"])


def test_checkpoints_are_replaced_per_fingerprint(backend: Backend) -> None:
    rng = random.Random(4)
    store = backend.writer()
    model = Model()
    a1 = Checkpoint("1:a", "a.jsonl", 10, 8, 2, 0, complete=False)
    b1 = Checkpoint("2:b", "b.csv", 5, 5, 0, 0, complete=True)
    a2 = Checkpoint("1:a", "a.jsonl", 20, 17, 2, 1, complete=True)
    for cp in (a1, b1, a2):
        model.commit(store, make_events(rng, 5, ["u0"], rng.randrange(10**5)), checkpoint=cp)
    model.commit(store, make_events(rng, 5, ["u1"], 200_000))  # no checkpoint: API batch
    assert store.checkpoint("1:a") == a2
    assert store.checkpoint("2:b") == b1
    assert store.checkpoint("3:c") is None


def test_dead_letters_of_one_file_line_are_kept_once(backend: Backend) -> None:
    store = backend.writer()
    model = Model()
    cp = Checkpoint("9:f", "f.jsonl", 10, 0, 2, 0, complete=True)
    nothing = pl.DataFrame(schema=EVENT_SCHEMA)
    model.commit(store, nothing, dead=[letter(1), letter(2)], checkpoint=cp)
    # the same file ingested again (any path): its dead letters are not repeated
    again = [DeadLetter("copy.jsonl", d.line, d.reason, d.raw) for d in (letter(1), letter(2))]
    model.commit(store, nothing, dead=again, checkpoint=cp)
    kept = [(d["source"], d["line"]) for d in store.dead_letters()]
    assert kept == [("f.jsonl", 1), ("f.jsonl", 2)]


def test_distinct_dead_letters_without_a_file_are_all_kept(backend: Backend) -> None:
    """Regression: without a checkpoint (API / stream batches, ``Engine.ingest_events``)
    dead letters were keyed by (source, line) alone, so a *different* rejected record
    that came with the same source and line in a later batch was dropped silently."""
    store = backend.writer()
    model = Model()
    model.commit(store, pl.DataFrame(schema=EVENT_SCHEMA), dead=[letter(1, "u0", "api")])
    model.commit(store, pl.DataFrame(schema=EVENT_SCHEMA), dead=[letter(1, "u7", "api")])
    raws = [json.loads(str(d["raw"]))["user_id"] for d in store.dead_letters()]
    assert raws == ["u0", "u7"], "a rejected record was lost"


def test_many_commits_compaction_keeps_every_read_identical(backend: Backend) -> None:
    """More commits than MAX_STATE_FILES and MAX_SMALL_LOG_FILES: compaction runs
    (several times) and every read stays equal to the model after every commit."""
    rng = random.Random(5)
    users = [f"u{i}" for i in range(12)]
    store = backend.writer()
    early_reader = backend.reader()
    model = Model()
    commits = 2 * max([17, *backend.max_files.values()]) + 3
    for i in range(commits):
        touched = rng.sample(users, rng.randint(1, 4))
        cp = Checkpoint("7:big", "big.jsonl", 10 * (i + 1), 0, 0, 0, complete=i == commits - 1)
        model.commit(store, make_events(rng, rng.randint(1, 25), touched, 1000 * i),
                     dead=[letter(i + 1)] if i % 5 == 0 else [], checkpoint=cp, duplicates=i % 3)
        assert_reads_match(store, model, users[:3] + touched)
    assert_reads_match(store, model, users)
    assert_reads_match(early_reader, model, users)
    if backend.settle is not None:
        backend.settle(store)
        assert_reads_match(store, model, users)
    if backend.data_files is not None:
        files = backend.data_files()
        for kind, most in backend.max_files.items():
            n = len(files[kind])
            assert 1 <= n <= most, f"{kind}: {n} files, no compaction?"
    if backend.stray_files is not None:
        assert backend.stray_files() == [], "files replaced by compaction must be deleted"


def test_orphans_are_ignored_by_readers_and_removed_by_the_next_writer(backend: Backend) -> None:
    need(backend.add_orphans, backend, "files to orphan")
    assert backend.add_orphans is not None
    assert backend.stray_files is not None
    rng = random.Random(6)
    users = ["u0", "u1", "u2"]
    store = backend.writer()
    model = Model()
    for i in range(3):
        model.commit(store, make_events(rng, 15, users, 100 * i))
    store.close()
    orphans = backend.add_orphans()
    assert sorted(orphans) == backend.stray_files()
    assert_reads_match(backend.reader(), model, users)  # a reader never sees them
    store = backend.writer()
    assert backend.stray_files() == [], "the writer must delete orphan files on open"
    assert_reads_match(store, model, users)
    model.commit(store, make_events(rng, 15, users, 1000))  # takes the orphans' file names
    assert_reads_match(store, model, users)
    assert_reads_match(backend.reader(), model, users)


def test_read_only_store_refuses_writes(backend: Backend, tmp_path: Path) -> None:
    rng = random.Random(7)
    store = backend.writer()
    model = Model()
    model.commit(store, make_events(rng, 10, ["u0"], 0))
    reader = backend.reader()
    attempt = Commit(events=make_events(rng, 5, ["u9"], 500), states=AGG.empty())
    with pytest.raises(StoreError):
        reader.commit(attempt)
    with pytest.raises(StoreError):
        reader.set_spec("version: 1\nfeatures: {n: {kind: count}}\n")
    assert_reads_match(reader, model, ["u0", "u9"])
    assert_reads_match(store, model, ["u0", "u9"])


def test_reader_on_a_missing_database_fails_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no portrait database"):
        EmbeddedStore(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_reader_opened_before_a_commit_sees_it(backend: Backend) -> None:
    rng = random.Random(8)
    users = ["u0", "u1"]
    store = backend.writer()
    model = Model()
    model.commit(store, make_events(rng, 10, users[:1], 0))
    reader = backend.reader()
    assert_reads_match(reader, model, users)
    cp = Checkpoint("3:x", "x.csv", 3, 2, 1, 0, complete=True)
    model.commit(store, make_events(rng, 10, users, 100), dead=[letter(2)], checkpoint=cp)
    assert reader.has_user("u1")
    assert_reads_match(reader, model, users, check_seen=False)  # seen: next test


def test_reader_seen_reflects_later_commits(backend: Backend) -> None:
    """Regression: ``seen`` cached the event ids on its first call and only the same
    store object's own commits refreshed it, so a reader (or any second store object)
    answered "not seen" for events another writer had committed since."""
    rng = random.Random(10)
    store = backend.writer()
    model = Model()
    model.commit(store, make_events(rng, 10, ["u0"], 0))
    reader = backend.reader()
    assert_seen(reader, model)
    model.commit(store, make_events(rng, 10, ["u0", "u1"], 100))
    assert_seen(reader, model)


def test_everything_about_one_user_is_in_files_found_by_user_id(
    backend: Backend, tmp_path: Path
) -> None:
    """Erasure needs every data file to carry ``user_id``: the user's rows in every
    file, taken together, are exactly the user's events and newest state."""
    need(backend.data_files, backend, "data files")
    assert backend.data_files is not None
    rng = random.Random(9)
    users = ["eve", "u1", "u2", "u3"]
    store = backend.writer()
    model = Model()
    for i in range(20):  # with compactions in between
        model.commit(store, make_events(rng, 12, rng.sample(users, 2), 100 * i))
    files = backend.data_files()
    logged = []
    for path in files["log"]:
        frame = pl.read_parquet(path)
        assert "user_id" in frame.columns, path
        logged.append(frame.filter(pl.col("user_id") == "eve").select(list(EVENT_SCHEMA)))
    mine = model.events.filter(pl.col("user_id") == "eve").sort("event_id")
    assert_frame_equal(pl.concat(logged).sort("event_id"), mine)
    holding = []
    for path in files["state"]:
        frame = pl.read_parquet(path)
        assert "user_id" in frame.columns, path
        if frame.filter(pl.col("user_id") == "eve").height:
            holding.append(path)
    assert holding, "eve's state is in no state file"


def test_dead_letters_of_one_user_are_found_by_user_id(backend: Backend, tmp_path: Path) -> None:
    """Regression: the embedded store's docstring promises that every dead letter
    carries ``user_id`` (erasure must find them), but dead letters kept only source,
    line, reason and raw: a user's rejected records could not be located. Whatever
    the file format the record came in."""
    rows = [
        {"user_id": "eve", "ts": "2024-03-01T00:00:00Z", "type": "view"},
        {"user_id": "eve", "ts": "2024-03-01T00:00:00Z", "type": "purchase", "price": -1},
        {"user_id": "bob", "ts": "2024-03-01T00:00:00Z", "type": "purchase", "price": -1},
        {"user_id": "eve", "ts": "2024-02-30T00:00:00Z", "type": "view"},
    ]
    jsonl, csv, parquet = tmp_path / "eve.jsonl", tmp_path / "eve.csv", tmp_path / "eve.parquet"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    frame = pl.DataFrame(rows, schema={"user_id": pl.String, "ts": pl.String,
                                       "type": pl.String, "price": pl.Float64})
    frame.write_csv(csv)
    frame.write_parquet(parquet)
    store = backend.writer()
    Engine(SPEC, store).ingest([jsonl, csv, parquet])
    assert events_of(store, ["eve"]).height == 1  # the same good event three times
    letters = store.dead_letters()
    assert len(letters) == 9
    found = {(Path(str(d["source"])).suffix, d["line"]) for d in letters
             if d.get("user_id") == "eve"}
    # CSV lines count the header: record k is on line k + 1
    want = {(".jsonl", 2), (".jsonl", 4), (".csv", 3), (".csv", 5), (".parquet", 2),
            (".parquet", 4)}
    assert found == want, f"eve's dead letters not found by user_id: {letters}"


def test_one_writer_at_a_time(backend: Backend, tmp_path: Path) -> None:
    """A second writer (another process) waits until the first one closes."""
    need(backend.data_files, backend, "writer lock file")
    store = backend.writer()
    root = tmp_path / "db"
    code = (
        "from portrait.store.embedded import EmbeddedStore; print('trying', flush=True); "
        f"s = EmbeddedStore({str(root)!r}, writer=True); print('got', flush=True); s.close()"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None
        assert other.stdout.readline().strip() == "trying"
        with pytest.raises(subprocess.TimeoutExpired):
            other.wait(timeout=2)
        store.close()
        out, _ = other.communicate(timeout=60)
        assert out.strip() == "got"
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
