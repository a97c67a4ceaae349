"""The micro-batch engine: source -> validate -> de-duplicate -> aggregate -> commit."""

from portrait.engine.engine import Engine, IngestSummary

__all__ = ["Engine", "IngestSummary"]
