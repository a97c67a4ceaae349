"""Shared by the benchmarks: append one dated result row to a section of BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path


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
