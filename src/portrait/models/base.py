"""The contract every model keeps (checked by ``tests/models/test_contract.py``).

* ``fit``, ``update`` and ``predict`` never mutate their inputs;
* ``save(dir)`` writes only non-executable formats (npz without pickle,
  JSON, LightGBM text) and ``load(dir)`` gives a model whose ``predict``
  equals the original's;
* ``nbytes()`` bounds the memory the model holds; it does not grow with the
  number of ``update`` calls beyond what new users / items add.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Self


class Model(Protocol):
    """What every model offers; inputs are Polars frames or NumPy arrays."""

    def fit(self, data: Any) -> Self: ...

    def update(self, data: Any) -> None: ...

    def predict(self, data: Any) -> Any: ...

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path) -> Self: ...

    def nbytes(self) -> int: ...
