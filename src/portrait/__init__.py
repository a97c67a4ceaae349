"""portrait: dynamic user profiles from behaviour event streams.

The public Python API::

    from portrait import Engine, load_spec, open_store
    engine = Engine(load_spec("spec.yaml"), open_store("portrait-data"))
    engine.ingest(["events.jsonl"])
    engine.profile("u1")
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
