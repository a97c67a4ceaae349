"""Versioned models on disk, a retrain policy, and a hot-swappable live handle.

Layout::

    <root>/<name>/v000001/     one directory per version (the model's own files
    <root>/<name>/v000002/     + registry.json: name, version, class, saved_at)
    <root>/<name>/CURRENT      "v000002\\n": the version readers load by default

A save writes the model into a hidden temporary directory next to the
versions, fsyncs every file and the directory, renames it to the next free
``vNNNNNN`` (a rename onto an existing, non-empty directory fails, so two
concurrent savers never share a version) and fsyncs the parent; only then is
``CURRENT`` replaced (write a temporary file, fsync, ``os.replace``, fsync the
directory). A crash leaves either the old ``CURRENT`` or the new one, each
pointing at a complete version; an abandoned ``.tmp-*`` directory is ignored.
Concurrent saves each get their own version; ``CURRENT`` ends at whichever
was promoted last.

:class:`ModelHandle` is what a server holds: ``get()`` returns the live model,
``swap(new)`` replaces the reference under a lock. A model is only ever
swapped in fully built (``ALSModel.fit`` returns a new object), so readers
never see a half-trained one; requests already running keep the model they
took.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from portrait.errors import StoreError, UsageError
from portrait.fsutil import fsync_path
from portrait.models.base import Model

CURRENT = "CURRENT"
INFO = "registry.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")
_VERSION = re.compile(r"v(\d{6})\Z")
_RENAME_TRIES = 100
M = TypeVar("M")  # anything a handle holds
L = TypeVar("L", bound=Model)  # a loadable model class


def version_dir(version: int) -> str:
    return f"v{version:06d}"


class ModelRegistry:
    """Numbered, immutable model versions under ``root`` (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _home(self, name: str) -> Path:
        if not _NAME.match(name):
            raise UsageError(f"model name {name!r}: use letters, digits, '_', '.', '-'")
        return self.root / name

    def names(self) -> list[str]:
        """Models with a current version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / CURRENT).is_file())

    def versions(self, name: str) -> list[int]:
        """Saved versions of ``name``, ascending (empty when there are none)."""
        home = self._home(name)
        if not home.is_dir():
            return []
        found = (_VERSION.match(p.name) for p in home.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def current(self, name: str) -> int | None:
        """The version ``CURRENT`` points at, or None before the first save."""
        path = self._home(name) / CURRENT
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return None
        m = _VERSION.match(text)
        if not m:
            raise StoreError(f"{path}: expected a version like v000001, got {text!r}")
        return int(m.group(1))

    def save(self, name: str, model: Model) -> int:
        """Write ``model`` as the next version, make it current; returns the version."""
        home = self._home(name)
        home.mkdir(parents=True, exist_ok=True)
        tmp = home / f".tmp-{uuid.uuid4().hex}"
        try:
            version = self._publish(home, tmp, model)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_path(home)
        self.promote(name, version)
        if hasattr(model, "version"):
            setattr(model, "version", version)  # noqa: B010
        return version

    def _publish(self, home: Path, tmp: Path, model: Model) -> int:
        """Write ``model`` into ``tmp``, fsync it, rename it to the next free version."""
        model.save(tmp)
        cls = type(model)
        for _ in range(_RENAME_TRIES):
            version = max(self.versions(home.name), default=0) + 1
            info = {"name": home.name, "version": version, "saved_at_us": time.time_ns() // 1000,
                    "class": f"{cls.__module__}.{cls.__qualname__}"}
            (tmp / INFO).write_text(json.dumps(info, sort_keys=True) + "\n")
            _fsync_tree(tmp)
            try:
                os.rename(tmp, home / version_dir(version))
            except OSError:
                if (home / version_dir(version)).exists():
                    continue  # a concurrent saver took this number
                raise
            return version
        raise StoreError(f"{home}: no free version after {_RENAME_TRIES} tries")

    def promote(self, name: str, version: int) -> None:
        """Point ``CURRENT`` at ``version`` atomically (also a rollback)."""
        home = self._home(name)
        if not (home / version_dir(version)).is_dir():
            raise StoreError(f"{home}: no version {version}")
        tmp = home / f".{CURRENT}.{uuid.uuid4().hex}"
        with tmp.open("w") as fh:
            fh.write(version_dir(version) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, home / CURRENT)
        fsync_path(home)

    def version_path(self, name: str, version: int) -> Path:
        """The directory of one saved version."""
        return self._home(name) / version_dir(version)

    def load(self, name: str, cls: type[L], version: int | None = None) -> L:
        """Load ``version`` (default: current) of ``name`` with ``cls.load``."""
        v = self.current(name) if version is None else version
        if v is None:
            raise StoreError(f"{self._home(name)}: no saved model")
        path = self._home(name) / version_dir(v)
        if not path.is_dir():
            raise StoreError(f"{path}: no such model version")
        model = cls.load(path)
        if hasattr(model, "version"):
            setattr(model, "version", v)  # noqa: B010
        return model


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*"), reverse=True):  # files before their dirs
        fsync_path(path)
    fsync_path(directory)


class _Trained(Protocol):
    trained_at: int | None


@dataclass(frozen=True)
class RetrainPolicy:
    """Retrain after ``every_events`` new events or ``every_seconds`` of age (either)."""

    every_events: int | None = None
    every_seconds: float | None = None

    def due(self, meta: _Trained, new_events: int, now: int) -> bool:
        """Whether a model trained at ``meta.trained_at`` (epoch µs) is due at ``now`` (µs)."""
        if meta.trained_at is None:
            return True
        if self.every_events is not None and new_events >= self.every_events:
            return True
        age_s = (now - meta.trained_at) / 1e6
        return self.every_seconds is not None and age_s >= self.every_seconds


class ModelHandle(Generic[M]):
    """The live model: ``get`` a reference, ``swap`` in a fully built successor."""

    def __init__(self, model: M) -> None:
        self._lock = threading.Lock()
        self._model = model
        self._swaps = 0

    def get(self) -> M:
        with self._lock:
            return self._model

    def swap(self, new: M) -> M:
        """Make ``new`` live; returns the model it replaced."""
        with self._lock:
            old, self._model = self._model, new
            self._swaps += 1
        return old

    @property
    def swaps(self) -> int:
        with self._lock:
            return self._swaps

