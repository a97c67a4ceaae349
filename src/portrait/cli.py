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

from portrait.errors import PortraitError, SourceError, StoreError
from portrait.timeutil import parse_time_arg

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


def _open_engine(db: Path, spec: Path | None = None, *, writer: bool = False) -> Any:
    from portrait.engine import Engine
    from portrait.spec.loader import load_spec
    from portrait.store import open_store

    spec_obj = load_spec(spec) if spec is not None else None  # validated before any event
    if writer and spec_obj is None and not (db / "portrait.sqlite").exists():
        raise StoreError(f"{str(db)!r} is a new database: pass --spec on the first ingest")
    store = open_store(db, writer=writer)
    return Engine(spec_obj, store)


@app.command()
def ingest(
    files: Annotated[list[Path], typer.Argument(help="JSONL (.gz), CSV or Parquet files")],
    spec: Annotated[Path | None, typer.Option(help="profile spec (needed for a new db)")] = None,
    db: Annotated[Path, typer.Option(help=DB_HELP)] = DEFAULT_DB,
    batch_size: Annotated[int, typer.Option(min=1, help="events per micro-batch")] = 500_000,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Ingest event files; print {"accepted", "rejected", "duplicates", "watermark"}."""
    try:
        for f in files:
            if not f.exists():
                raise SourceError(f"{str(f)!r}: no such file")
            if not f.is_file():
                raise SourceError(f"{str(f)!r}: not a regular file")
        engine = _open_engine(db, spec, writer=True)
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
) -> None:
    """Members of a segment, one user id per line."""
    try:
        at_us = parse_time_arg(at) if at is not None else None
        members = _open_engine(db).segment_members(name, at_us)
    except PortraitError as exc:
        _fail(exc)
    sys.stdout.write("".join(f"{m}\n" for m in members))


@app.command()
def demo(
    db: Annotated[Path | None, typer.Option(help=DB_HELP)] = None,
    sample: Annotated[bool, typer.Option("--sample", help="the small toy shop instead")] = False,
    out: Annotated[Path, typer.Option(help="report directory")] = Path("portrait-report"),
    cache_dir: Annotated[Path | None, typer.Option(help="dataset cache")] = None,
) -> None:
    """The main job: MovieLens-1M through the engine, profiles, quick evaluation."""
    from portrait.demo import run_demo, run_movielens_demo

    try:
        if sample:
            run_demo(db or Path("portrait-data/demo"))
        else:
            run_movielens_demo(db or Path("portrait-data/movielens"), out, cache=cache_dir)
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


def _mount_datasets() -> None:
    from portrait.datasets.cli import app as datasets_app

    app.add_typer(datasets_app, name="datasets", help="real public datasets (pip packages)")


_mount_datasets()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
