"""Shared by the benchmarks: the commit measured, and one dated result row appended to a
section of BENCHMARKS.md."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git_rev() -> str:
    """The short commit, ``+dirty`` when tracked code (``src/``, ``bench/``) differs from it."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src",
                                "bench"], cwd=REPO, check=True, capture_output=True,
                               text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def append_row(md: Path, section: str, header: str, row: str) -> None:
    """Add ``row`` after the last result row of ``section`` (made with ``header``, which
    starts with the ``section`` line, when missing)."""
    text = md.read_text(encoding="utf-8") if md.exists() else ""
    if section not in text:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "# Benchmarks\n\n") + header
        md.write_text(text + row, encoding="utf-8")
        return
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(section))
    end = start + 1
    while end < len(lines) and not lines[end].startswith("## "):
        end += 1
    dated = [i for i in range(start, end) if lines[i].startswith("| 20")]  # "| 2026-..."
    table = [i for i in range(start, end) if lines[i].startswith("|")]
    last_row = max(dated or table, default=end - 1)
    lines.insert(last_row + 1, row)
    md.write_text("".join(lines), encoding="utf-8")
