"""One contract suite for every model (see ``portrait.models.base``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from tests.models import cases_all  # noqa: F401  (registers every case)
from tests.models.cases import CASES, Case


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, pl.DataFrame):
        return isinstance(b, pl.DataFrame) and a.equals(b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, pl.DataFrame):
        return a.equals(b)
    return bool(np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float),
                            rtol=1e-6, atol=1e-9, equal_nan=True))


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def case(request: pytest.FixtureRequest) -> Case:
    return request.param  # type: ignore[no-any-return]


def test_there_is_a_case_for_every_model() -> None:
    """Every class in ``portrait.models`` with the Model methods has a contract case."""
    import importlib
    import inspect
    import pkgutil

    import portrait.models

    models = set()
    for info in pkgutil.iter_modules(portrait.models.__path__):
        module = importlib.import_module(f"portrait.models.{info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and name != "Model" and all(
                hasattr(cls, m) for m in ("fit", "update", "predict", "save", "load", "nbytes")
            ):
                models.add(f"{info.name}.{name}")
    assert len({c.name for c in CASES}) == len(CASES)
    assert models == {c.name for c in CASES}


def test_fit_update_predict_do_not_mutate_inputs(case: Case) -> None:
    model = case.make()
    data = case.fit_data()
    before = copy.deepcopy(data)
    model = model.fit(data)
    assert _same(data, before), "fit mutated its input"
    if case.update_data is not None:
        upd = case.update_data(0)
        before = copy.deepcopy(upd)
        model.update(upd)
        assert _same(upd, before), "update mutated its input"
    query = case.predict_data()
    before = copy.deepcopy(query)
    first = model.predict(query)
    assert _same(query, before), "predict mutated its input"
    assert _close(first, model.predict(query)), "predict is not repeatable"


def test_save_load_round_trip(case: Case, tmp_path: Path) -> None:
    model = case.make().fit(case.fit_data())
    if case.update_data is not None:
        model.update(case.update_data(0))
    model.save(tmp_path / "m")
    for path in (tmp_path / "m").rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:2]
            assert head[:1] != b"\x80", f"{path.name} looks pickled"
    loaded = type(model).load(tmp_path / "m")
    query = case.predict_data()
    assert _close(model.predict(query), loaded.predict(query))
    if case.update_data is not None:  # both keep learning the same way
        model.update(case.update_data(1))
        loaded.update(case.update_data(1))
        assert _close(model.predict(query), loaded.predict(query))


def test_memory_is_bounded(case: Case) -> None:
    model = case.make().fit(case.fit_data())
    start = model.nbytes()
    assert start > 0
    if case.update_data is None:
        return
    for r in range(case.update_rounds):
        model.update(case.update_data(r))
    assert model.nbytes() <= start + case.grow_bytes, (
        f"{case.name}: {start} -> {model.nbytes()} bytes after {case.update_rounds} updates"
    )
