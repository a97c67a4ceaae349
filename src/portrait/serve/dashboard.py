"""The dashboard: a static single-page app at ``/`` plus the two reads only it needs.

The page (``static/index.html`` + ``app.js``, no build step, no CDN; uPlot
vendored under ``static/vendor/``) asks for an API key once, keeps it in the
browser's ``localStorage`` and calls the public API with it. The assets need
no key; everything with data in it does:

* ``GET /ui/meta`` (read): the spec's features (kind, value type, keyed) so
  the page knows which maps are decayed interests, and the evaluation reports
  it can show;
* ``GET /ui/reports/{name}/{file}`` (read): one file of one evaluation report
  (``report.md``, ``report.json`` or a PNG), read-only.

Reports are found under ``report_dir``: a directory holding ``report.md``
(``portrait eval --out DIR``) or a directory of such directories (the demo's
``portrait-report/``). It defaults to ``$PORTRAIT_REPORT``, else
``./portrait-report`` when that exists. These routes are left out of the
OpenAPI document: they serve the page, not API clients.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import FileResponse, HTMLResponse
from starlette.staticfiles import StaticFiles

from portrait.engine.engine import Engine
from portrait.errors import NotFoundError
from portrait.serve.auth import Read
from portrait.serve.responses import JSON
from portrait.serve.state import server
from portrait.spec.model import FeatureSpec

STATIC = Path(__file__).parent / "static"
REPORT_ENV = "PORTRAIT_REPORT"
DEFAULT_REPORT = Path("portrait-report")
REPORT_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.(md|json|png)$")
MEDIA = {"md": "text/markdown; charset=utf-8", "json": "application/json",
         "png": "image/png"}
# The page loads only its own files; data comes from this origin; report plots are blobs.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


@dataclass(frozen=True)
class Report:
    """One evaluation report directory."""

    name: str
    path: Path
    title: str
    modified: float  # epoch seconds of report.md

    def to_json(self) -> dict[str, Any]:
        files = sorted(p.name for p in self.path.iterdir() if REPORT_FILE.match(p.name))
        return {"name": self.name, "title": self.title, "modified": self.modified,
                "files": files}


def report_root(report_dir: Path | None) -> Path | None:
    """The report directory to serve: the argument, ``$PORTRAIT_REPORT``, ``./portrait-report``."""
    if report_dir is not None:
        return report_dir
    env = os.environ.get(REPORT_ENV)
    if env:
        return Path(env)
    return DEFAULT_REPORT if DEFAULT_REPORT.is_dir() else None


def find_reports(root: Path | None) -> list[Report]:
    """The reports under ``root`` (itself or its sub-directories), newest first."""
    if root is None or not root.is_dir():
        return []
    base = root.resolve()  # links out of the root are not followed
    dirs = [root] if _holds_report(root) else sorted(
        d for d in root.iterdir() if d.is_dir() and d.resolve().parent == base
        and _holds_report(d))
    found = [_report(d) for d in dirs]
    return sorted(found, key=lambda r: (-r.modified, r.name))


def _holds_report(directory: Path) -> bool:
    """``directory/report.md`` is a file of ``directory``, not a link to one elsewhere."""
    md = directory / "report.md"
    return md.is_file() and md.resolve().parent == directory.resolve()


def _report(directory: Path) -> Report:
    md = directory / "report.md"
    with md.open(encoding="utf-8", errors="replace") as f:
        first = f.readline().strip()
    title = first.lstrip("#").strip() if first.startswith("#") else directory.name
    return Report(directory.name, directory, title, md.stat().st_mtime)


def report_file(root: Path | None, name: str, file: str) -> Path:
    """The path of ``file`` in report ``name``; NotFoundError for anything else."""
    reports = {r.name: r for r in find_reports(root)}
    report = reports.get(name)
    if report is None or not REPORT_FILE.match(file):
        raise NotFoundError(f"no evaluation report file {name!r}/{file!r}")
    path = report.path / file
    if not path.is_file() or path.resolve().parent != report.path.resolve():
        raise NotFoundError(f"no evaluation report file {name!r}/{file!r}")
    return path


def json_type(feature: FeatureSpec) -> str:
    """What the profile JSON holds: ``number``, ``string``, ``map`` or ``time`` (RFC 3339)."""
    if feature.field == "ts" and feature.kind in ("first", "last", "min", "max"):
        return "time"
    return feature.value_type


def features_json(engine: Engine) -> list[dict[str, Any]]:
    """What the page needs to know about each feature of the spec."""
    return [{"name": f.name, "kind": f.kind, "keyed": f.keyed, "value_type": json_type(f),
             "half_life_s": None if f.half_life_us is None else f.half_life_us / 1e6,
             "window_s": None if f.window_us is None else f.window_us / 1e6}
            for f in engine.spec.features.values()]


def mount_dashboard(app: FastAPI, report_dir: Path | None = None) -> None:
    """Serve the dashboard at ``/`` (and ``/ui``), its assets under ``/ui/assets``."""
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache",
               "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    for path in ("/", "/ui", "/ui/"):
        app.add_api_route(path, index, methods=["GET"], include_in_schema=False,
                          response_class=HTMLResponse)

    @app.get("/ui/meta", include_in_schema=False)
    def meta(request: Request, _key: Read) -> JSON:
        root = report_root(report_dir)
        features = server(request).readers.read(features_json)
        return JSON({"features": features,
                     "report_dir": None if root is None else str(root),
                     "reports": [r.to_json() for r in find_reports(root)]})

    @app.get("/ui/reports/{name}/{file}", include_in_schema=False)
    def get_report_file(name: str, file: str, _key: Read) -> FileResponse:
        path = report_file(report_root(report_dir), name, file)
        return FileResponse(path, media_type=MEDIA[path.suffix[1:]],
                            headers={"Cache-Control": "no-cache"})

    app.mount("/ui/assets", StaticFiles(directory=STATIC), name="dashboard-assets")
