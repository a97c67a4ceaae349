"""Imports every module that registers a contract case."""
from tests.models import (
    cases_cf,  # noqa: F401
    cases_models,  # noqa: F401
)
