"""The ``portrait`` command line (DESIGN.md, "Command line (v1)").

Machine-readable output (``--json``, the ingest summary) goes to stdout;
progress and errors go to stderr. Exit codes: 0 ok, 1 not found (unknown user
or segment), 2 unusable arguments, unreadable file, bad spec or store.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from portrait.errors import PortraitError, SourceError, StoreError, UsageError
from portrait.timeutil import format_us, parse_time_arg

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="portrait: dynamic user profiles from behaviour events.",
)
err = Console(stderr=True)
DB_HELP = "database directory"
DEFAULT_DB = Path("portrait-data")


def _emit(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def _fail(exc: PortraitError) -> None:
    sys.stderr.write(f"error: {exc}\n")  # never wrapped: scripts grep it
    raise typer.Exit(exc.exit_code)


def _audit(db: Path, action: str, stored_id: str | None, detail: str | None = None) -> None:
    """An audit row for a read, export or erasure from the command line (privacy/audit.py)."""
    import sqlite3

    from portrait.privacy.audit import AuditLog, cli_actor

    try:
        AuditLog(db).record(cli_actor(), action, stored_id, detail)
    except sqlite3.Error as exc:  # no audit row, no answer
        raise StoreError(f"cannot write the audit log in {str(db)!r}: {exc}") from exc


def _open_engine(db: Path, spec: Path | None = None, *, writer: bool = False,
                 pseudonymise: bool = False, encrypt: bool = False) -> Any:
    """An engine over ``db``; with ``pseudonymise``/``encrypt``, privacy is turned on for
    a new database first (privacy/setup.py), so the engine starts with it."""
    from portrait.engine import Engine
    from portrait.spec.loader import load_spec
    from portrait.store import open_store

    spec_obj = load_spec(spec) if spec is not None else None  # validated before any event
    if writer and spec_obj is None and not (db / "portrait.sqlite").exists():
        raise StoreError(f"{str(db)!r} is a new database: pass --spec on the first ingest")
    store = open_store(db, writer=writer)
    try:
        if pseudonymise or encrypt:
            from portrait.privacy.setup import protect

            protect(store, pseudonymise=pseudonymise, encrypt=encrypt)
        return Engine(spec_obj, store)
    except BaseException:
        store.close()
        raise


@app.command()
def ingest(
    files: Annotated[list[Path], typer.Argument(help="JSONL (.gz), CSV or Parquet files")],
    spec: Annotated[Path | None, typer.Option(help="profile spec (needed for a new db)")] = None,
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
    batch_size: Annotated[int, typer.Option(min=1, help="events per micro-batch")] = 500_000,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    *,
    pseudonymise: Annotated[bool, typer.Option(
        "--pseudonymise",
        help="a new database stores user ids as keyed HMAC pseudonyms (key: "
             "$PORTRAIT_PSEUDONYM_KEY, or ~/.config/portrait/pseudonym.key, made if absent)",
    )] = False,
    encrypt: Annotated[bool, typer.Option(
        "--encrypt",
        help="a new database encrypts personal fields (text, lat/lon, the spec's personal "
             "attrs) under per-user keys wrapped by a master key ($PORTRAIT_MASTER_KEY, or "
             "~/.config/portrait/master.key, made if absent)",
    )] = False,
) -> None:
    """Ingest event files; print {"accepted", "rejected", "duplicates", "watermark"}."""
    try:
        for f in files:
            if not f.exists():
                raise SourceError(f"{str(f)!r}: no such file")
            if not f.is_file():
                raise SourceError(f"{str(f)!r}: not a regular file")
        engine = _open_engine(db, spec, writer=True, pseudonymise=pseudonymise,
                              encrypt=encrypt)
        engine.batch_size = batch_size
        try:
            summary = _run_ingest(engine, files, quiet)
        finally:
            engine.store.close()
    except PortraitError as exc:
        _fail(exc)
    _emit(summary.to_json())


def _run_ingest(engine: Any, files: list[Path], quiet: bool) -> Any:
    if quiet or not err.is_terminal:
        return engine.ingest(files)
    sizes = {str(f): max(1, f.stat().st_size) for f in files}
    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[rows]} rows"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("ingest", total=len(files), rows=0, rate="")

        def on_batch(path: str, rows: int, _summary: Any) -> None:
            rate = rows / max(1e-9, time.perf_counter() - started)
            bar.update(task, description=Path(path).name, rows=f"{rows:,}", rate=f"{rate:,.0f}/s")

        summary = engine.ingest(files, progress=on_batch)
        bar.update(task, completed=len(sizes))
    return summary


@app.command()
def profile(
    user_id: Annotated[str, typer.Argument(help="user id")],
    at: Annotated[str | None, typer.Option(help="as of this time (RFC 3339 or epoch)")] = None,
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
    json: Annotated[bool, typer.Option("--json", help="print the profile as JSON")] = False,
) -> None:
    """One user's profile, now (the watermark) or as of --at."""
    try:
        at_us = parse_time_arg(at) if at is not None else None
        engine = _open_engine(db)
        result = engine.profile(user_id, at_us)
        _audit(db, "profile.read", engine.store.resolve(user_id))
        if (db / "models").is_dir():  # only then pay for importing the model libraries
            from portrait.models import service

            if service.registry(engine).names():
                result["models"] = service.user_outputs(engine, user_id, at_us)
    except PortraitError as exc:
        _fail(exc)
    if json:
        _emit(result)
        return
    table = Table(title=f"{result['user_id']} as of {result['as_of']}")
    table.add_column("feature")
    table.add_column("value")
    for name, value in result["features"].items():
        table.add_row(name, orjson.dumps(value).decode() if isinstance(value, dict) else str(value))
    table.add_row("segments", ", ".join(result["segments"]) or "-")
    for name, value in result.get("models", {}).items():
        table.add_row(f"model: {name}", str(value))
    Console().print(table)


@app.command()
def deadletters(
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
    json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="at most this many")] = None,
) -> None:
    """Rejected events with their source, line and reason."""
    try:
        from portrait.store import open_store

        store = open_store(db)
        rows = store.dead_letters(limit)
    except PortraitError as exc:
        _fail(exc)
    if json:
        _emit(rows)
        return
    for r in rows:
        sys.stdout.write(f"{r['source']}:{r['line']}: {r['reason']}\n")


@app.command()
def segment(
    name: Annotated[str, typer.Argument(help="segment name from the spec")],
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
    at: Annotated[str | None, typer.Option(help="as of this time")] = None,
    changes: Annotated[
        bool, typer.Option("--changes", help="the entry/exit log instead (JSON lines)")
    ] = False,
    user: Annotated[str | None, typer.Option(help="with --changes: only this user")] = None,
) -> None:
    """Members of a segment, one user id per line (or its change log with --changes)."""
    try:
        engine = _open_engine(db)
        if changes:
            engine.check_segment(name)
            log = engine.store.segment_changes(user_id=user, segment=name)
            for row in log.iter_rows(named=True):
                row["ts"] = format_us(row["ts"])
                sys.stdout.write(orjson.dumps(row).decode() + "\n")
            return
        at_us = parse_time_arg(at) if at is not None else None
        members = engine.segment_members(name, at_us)
    except PortraitError as exc:
        _fail(exc)
    sys.stdout.write("".join(f"{m}\n" for m in members))


@app.command()
def explain(
    user_id: Annotated[str, typer.Argument(help="user id")],
    target: Annotated[str, typer.Argument(help="feature, feature['key'] or segment name")],
    *,
    at: Annotated[str | None, typer.Option(help="as of this time (RFC 3339 or epoch)")] = None,
    top: Annotated[int, typer.Option(min=1, help="top contributing events to list")] = 10,
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
    json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """The events that drove a feature value, or why a user is (not) in a segment."""
    from portrait.models.explain import explain as explain_target

    try:
        at_us = parse_time_arg(at) if at is not None else None
        result = explain_target(_open_engine(db), user_id, target, at=at_us, top=top)
    except PortraitError as exc:
        _fail(exc)
    if json:
        _emit(result)
        return
    console = Console()
    if result["target_type"] == "segment":
        verdict = "member" if result["member"] else "not a member"
        console.print(f"{user_id}: {verdict} of {target} ({result['rule']}) as of "
                      f"{result['as_of']}", markup=False, highlight=False)
        cond = Table()
        for col in ("condition", "left", "right", "holds"):
            cond.add_column(col)
        for c in result["conditions"]:
            cond.add_row(*(str(c[k]) for k in ("condition", "left", "right", "holds")))
        console.print(cond)
        for part in result["features"].values():
            console.print(_contributions_table(user_id, result["as_of"], part))
        return
    console.print(_contributions_table(user_id, result["as_of"], result))


def _contributions_table(user_id: str, as_of: str, part: dict[str, Any]) -> Table:
    name = part["feature"] if part["key"] is None else f"{part['feature']}[{part['key']!r}]"
    value = part["value"]
    shown = orjson.dumps(value).decode() if isinstance(value, dict) else str(value)
    table = Table(title=f"{user_id}: {name} = {shown} as of {as_of} ({part['events']} events)")
    cols = ("ts", "event_id", "type", "item_id", "category", "contribution", "share")
    for col in cols:
        table.add_column(col)
    for row in part["contributions"]:
        share = row["share"]
        table.add_row(*(str(row[c]) for c in cols[:-1]),
                      "-" if share is None else f"{share:.1%}")
    return table


@app.command()
def drift(
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
    ref: Annotated[str | None, typer.Option(help="reference time (default: at - 30 days)")] = None,
    at: Annotated[str | None, typer.Option(help="current time (default: the watermark)")] = None,
    top: Annotated[int, typer.Option(min=1, help="users with the largest interest shift")] = 10,
    json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """Population drift (PSI per feature), interest shifts and bot-like bursts."""
    from portrait.models.drift import DAY_US, drift_report

    try:
        engine = _open_engine(db)
        wm = engine.store.meta().watermark
        if wm is None and at is None:
            raise StoreError(f"{str(db)!r} has no events yet")
        at_us = parse_time_arg(at) if at is not None else wm
        ref_us = parse_time_arg(ref) if ref is not None else at_us - 30 * DAY_US
        report = drift_report(engine, ref_us, at_us, top=top)
    except PortraitError as exc:
        _fail(exc)
    if json:
        _emit(report)
        return
    console = Console()
    psi = Table(title=f"population drift: {report['ref']} -> {report['at']}")
    for col in ("feature", "psi", "level"):
        psi.add_column(col)
    for row in report["population"]:
        value = "-" if row["psi"] is None else f"{row['psi']:.4f}"
        psi.add_row(row["feature"], value, row["level"])
    console.print(psi)
    shift = Table(title="largest interest shifts (Jensen-Shannon, 7d vs 90d half-life)")
    for col in ("user_id", "interest_shift", "short_top", "long_top"):
        shift.add_column(col)
    for row in report["interest_shift"]:
        shift.add_row(row["user_id"], f"{row['interest_shift']:.4f}", str(row["short_top"]),
                      str(row["long_top"]))
    console.print(shift)
    rule = report["burst_rule"]
    bursts = Table(title=f"bursts (> {rule['threshold']} events in {rule['window_s']:g} s, "
                         "or a robust outlier)")
    bursts.add_column("user_id")
    bursts.add_column("max_events_per_window")
    for row in report["bursts"]:
        bursts.add_row(row["user_id"], str(row["max_events_per_window"]))
    console.print(bursts)


@app.command()
def demo(
    db: Annotated[Path | None, typer.Option(help=DB_HELP)] = None,
    sample: Annotated[bool, typer.Option("--sample", help="the small toy shop instead")] = False,
    out: Annotated[Path, typer.Option(help="report directory")] = Path("portrait-report"),
    cache_dir: Annotated[Path | None, typer.Option(help="dataset cache")] = None,
    *,
    serve: Annotated[bool, typer.Option(
        help="end with the dashboard serving the MovieLens-1M profiles (Ctrl-C stops)")] = True,
    port: Annotated[int, typer.Option(min=0, max=65535, help="dashboard port")] = 8000,
) -> None:
    """The main job: MovieLens-1M through the engine, profiles, evaluation, then the dashboard."""
    from portrait.demo import run_demo, run_movielens_demo, serve_dashboard

    try:
        if sample:
            run_demo(db or Path("portrait-data/demo"))
        else:
            db = db or Path("portrait-data/movielens")
            run_movielens_demo(db, out, cache=cache_dir)
            if serve:
                serve_dashboard(db, out, port=port)
    except PortraitError as exc:
        _fail(exc)


@app.command("eval")
def evaluate(
    dataset: Annotated[str, typer.Option(help="movielens-1m or cdnow")],
    out: Annotated[Path, typer.Option(help="report directory")],
    quick: Annotated[bool, typer.Option("--quick", help="3 cuts, fewer bootstrap draws")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="dataset cache")] = None,
) -> None:
    """Replay evaluation: writes report.json, report.md and plots to --out."""
    from portrait.eval.run import run_eval

    try:
        report = run_eval(dataset, out, quick=quick, cache=cache_dir,
                          progress=lambda m: err.print(m, highlight=False))
    except PortraitError as exc:
        _fail(exc)
    for v in report["verdicts"]:
        err.print(f"{v['task']} / {v['metric']}: {v['text']}", highlight=False)
    _emit({"report": str(out / "report.md"), "json": str(out / "report.json"),
           "verdicts": report["verdicts"]})


@app.command()
def recommend(
    user_id: Annotated[str, typer.Argument(help="user id (unknown users get cold-start picks)")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=1000, help="how many items")] = 20,
    diversity: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="MMR diversity: 0 = pure relevance")
    ] = 0.0,
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
    json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """Top-k items for a user, each with a short reason (needs `portrait models train`)."""
    from portrait.models import service

    try:
        engine = _open_engine(db)
        recs = service.recommend(engine, user_id, k, diversity=diversity)
        result = service.recommendations_json(
            user_id, recs, as_of=engine.store.meta().watermark
        )
    except PortraitError as exc:
        _fail(exc)
    if json:
        _emit(result)
        return
    table = Table(title=f"recommendations for {user_id} as of {result['as_of']}")
    for col in ("#", "item", "score", "why"):
        table.add_column(col)
    for n, item in enumerate(result["items"], 1):
        table.add_row(str(n), item["item_id"], f"{item['score']:.3f}", item["reason"])
    Console().print(table)


@app.command()
def audience(
    query: Annotated[str, typer.Argument(help="rule over features and model outputs")],
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
    at: Annotated[str | None, typer.Option(help="as of this time")] = None,
    out: Annotated[Path | None, typer.Option(help="export members to .csv or .parquet")] = None,
    json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """Count (and export) the users a targeting query selects."""
    from portrait.audience import export, select
    from portrait.models import service

    try:
        engine = _open_engine(db)
        at_us = parse_time_arg(at) if at is not None else None
        values = engine.read_at(at_us)
        outputs = service.model_outputs(engine, values, at_us)
        aud = select(values, query, dict(engine.spec.features), outputs,
                     withdrawn=engine.store.withdrawn("advertising"))
        path = export(aud, out) if out is not None else None
        if path is not None:
            _audit(db, "audience.export", None, f"{aud.count} users; query {query!r}")
    except PortraitError as exc:
        _fail(exc)
    result = {"query": query, "count": aud.count, "population": aud.population,
              "withheld_without_consent": aud.withheld,
              "export": None if path is None else str(path)}
    if json:
        _emit(result)
        return
    where = f"; written to {path}" if path is not None else ""
    sys.stdout.write(f"{aud.count} of {aud.population} users{where}\n")


models_app = typer.Typer(help="behaviour models: train, check freshness", no_args_is_help=True)


@models_app.command("train")
def models_train(
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
    horizon: Annotated[str, typer.Option(help="propensity horizon (e.g. 30d)")] = "30d",
    if_due: Annotated[
        bool, typer.Option("--if-due", help="only when the retrain policy says so")
    ] = False,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Train ALS, propensity and cluster models as of the watermark (JSON summary)."""
    from portrait.models import service

    try:
        engine = _open_engine(db)
        if if_due:
            due, why = service.retrain_due(engine)
            if not due:
                _emit({"trained": False, "reason": why})
                return
        result = service.train(engine, horizon=horizon, seed=seed)
    except PortraitError as exc:
        _fail(exc)
    _emit({"trained": True, **result})


app.add_typer(models_app, name="models")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port")] = 8000,
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
    spec: Annotated[Path | None, typer.Option(help="profile spec (needed for a new db)")] = None,
    access_log: Annotated[bool, typer.Option(help="log every request")] = False,
    *,
    pseudonymise: Annotated[bool, typer.Option(
        "--pseudonymise", help="a new database stores user ids as keyed pseudonyms")] = False,
    encrypt: Annotated[bool, typer.Option(
        "--encrypt", help="a new database encrypts personal fields at rest")] = False,
    report: Annotated[Path | None, typer.Option(
        help="evaluation reports the dashboard shows (default: $PORTRAIT_REPORT or "
             "./portrait-report)")] = None,
) -> None:
    """The HTTP API (docs/api.md); the first start makes and prints an admin API key."""
    from portrait.serve import ServeSettings, run
    from portrait.serve.keys import KeyStore
    from portrait.spec.loader import load_spec

    try:
        if spec is not None:
            load_spec(spec)  # a bad spec fails here, before the server starts
        elif not (db / "portrait.sqlite").exists():
            raise StoreError(f"{str(db)!r} is a new database: pass --spec to serve it")
        keys = KeyStore(db)
        if not keys.stored():
            secret, _ = keys.create(("admin",))
            sys.stdout.write(f"admin API key (shown once; stored hashed in {keys.path}): "
                             f"{secret}\n")
            sys.stdout.flush()
    except PortraitError as exc:
        _fail(exc)
    run(ServeSettings(db=db, spec=spec, host=host, port=port, report_dir=report,
                      pseudonymise=pseudonymise, encrypt=encrypt), access_log=access_log)


@app.command()
def forget(
    user_id: Annotated[str, typer.Argument(help="the user to erase")],
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
) -> None:
    """Erase a user: events, profile, dead letters, segment log, model factors (JSON receipt)."""
    from portrait.privacy.erasure import forget as erase

    try:
        if not (db / "portrait.sqlite").exists():
            raise StoreError(f"no portrait database at {str(db)!r}")
        engine = _open_engine(db, writer=True)
        try:
            _audit(db, "user.erase", engine.store.resolve(user_id))
            receipt = erase(engine, user_id)
        finally:
            engine.store.close()
    except PortraitError as exc:
        _fail(exc)
    _emit(receipt)


@app.command()
def retention(
    age: Annotated[str, typer.Argument(help="keep raw events this long before the watermark "
                                            "(e.g. 365d, 52w), or 'off'")],
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
) -> None:
    """Set the raw-event retention and purge what is past it now (docs/semantics.md)."""
    from portrait.timeutil import format_duration, format_us, parse_duration

    try:
        if age.strip().lower() == "off":
            keep = None
        else:
            try:
                keep = parse_duration(age)
            except ValueError as exc:
                raise UsageError(str(exc)) from exc
        if not (db / "portrait.sqlite").exists():
            raise StoreError(f"no portrait database at {str(db)!r}")
        engine = _open_engine(db, writer=True)
        try:
            engine.store.set_retention(keep)
            purged = engine.apply_retention()
            _, cutoff = engine.store.retention()
        finally:
            engine.store.close()
    except PortraitError as exc:
        _fail(exc)
    _emit({"retention": None if keep is None else format_duration(keep),
           "purged_before": None if cutoff is None else format_us(cutoff), "purged": purged})


@app.command()
def audit(
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
    user: Annotated[str | None, typer.Option(help="only the rows about this user")] = None,
    limit: Annotated[int, typer.Option(min=1, help="newest rows to show")] = 100,
) -> None:
    """The append-only audit log: who read, exported or erased whose data (JSON)."""
    from portrait.privacy.audit import AuditLog

    try:
        if not (db / "portrait.sqlite").exists():
            raise StoreError(f"no portrait database at {str(db)!r}")
        stored = None
        if user is not None:
            engine = _open_engine(db)
            stored = engine.store.resolve(user)
            engine.store.close()
        rows = AuditLog(db).rows(target=stored, limit=limit)
    except PortraitError as exc:
        _fail(exc)
    _emit(rows)


keys_app = typer.Typer(
    help="API keys of portrait serve (scopes: ingest, read, read_aggregate, admin)",
    no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    scope: Annotated[str, typer.Option(
        help="comma-separated: ingest, read, read_aggregate (differentially private), admin")
    ] = "read",
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
) -> None:
    """Make a key and print it once (only its SHA-256 is stored)."""
    from portrait.serve.keys import KeyStore, parse_scopes

    try:
        secret, key = KeyStore(db).create(parse_scopes(scope))
    except PortraitError as exc:
        _fail(exc)
    err.print(f"key {key.key_id} with scopes {','.join(key.scopes)}: store it now, it is "
              "not shown again", highlight=False)
    sys.stdout.write(secret + "\n")


@keys_app.command("list")
def keys_list(db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB) -> None:
    """The keys (ids, scopes, creation times; never the keys themselves) as JSON."""
    from portrait.serve.keys import KeyStore

    try:
        keys = KeyStore(db).stored()
    except PortraitError as exc:
        _fail(exc)
    _emit([{"id": k.key_id, "scopes": list(k.scopes), "created": k.created} for k in keys])


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id (from keys list)")],
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
) -> None:
    """Remove a key; exits 1 if there is no key with that id."""
    from portrait.serve.keys import KeyStore

    try:
        found = KeyStore(db).revoke(key_id)
    except PortraitError as exc:
        _fail(exc)
    if not found:
        sys.stderr.write(f"error: no API key with id {key_id!r}\n")
        raise typer.Exit(1)


def _rotate(db: Path, what: str, new_key_file: Path | None) -> None:
    """``keys rotate-master`` / ``keys rekey``: the receipt, audited."""
    from portrait.privacy.rekey import rekey_pseudonyms, rotate_master
    from portrait.store import open_store

    run = rotate_master if what == "rotate_master" else rekey_pseudonyms
    try:
        with open_store(db, writer=True) as store:
            receipt = run(store, new_key_file)
    except PortraitError as exc:
        _fail(exc)
    _audit(db, what, None)
    _emit(receipt)


@keys_app.command("rotate-master")
def keys_rotate_master(
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
    new_key_file: Annotated[Path | None, typer.Option(
        help="write the new master key here (default: replace the key file in use)")] = None,
) -> None:
    """Re-wrap every per-user data key under a new master key (data files untouched)."""
    _rotate(db, "rotate_master", new_key_file)


@keys_app.command("rekey")
def keys_rekey(
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
    new_key_file: Annotated[Path | None, typer.Option(
        help="write the new pseudonym key here (default: replace the key file in use)")] = None,
) -> None:
    """Move every user to a pseudonym under a new key (an encrypted database only)."""
    _rotate(db, "rekey_pseudonyms", new_key_file)


app.add_typer(keys_app, name="keys")


def _mount_datasets() -> None:
    from portrait.datasets.cli import app as datasets_app

    app.add_typer(datasets_app, name="datasets", help="real public datasets (pip packages)")


_mount_datasets()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
