"""MovieLens 1M, as RecBole atomic files, to rating events, items and users.

The files (``ml-1m.inter``, ``ml-1m.item``, ``ml-1m.user``) are tab-separated
with a ``name:type`` header and no quoting (titles contain ``"`` and ``'``).
In them a movie's id is its title with the year (``Toy Story (1995)``) and a
user's id carries a ``1m_`` prefix, which is stripped.

One rating becomes **one event per genre of the movie**: the contract's
``category`` holds a single value, and exploding keeps per-genre affinities
exact (a 5-star Animation/Comedy rating counts fully for both). The price:
per-event counts count a movie once per genre, so count movies with a
``distinct`` on ``item_id`` and divide item-level sums by ``n_genres``. A movie
without genres gives a single event with a null category.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

from portrait.datasets.contract import (
    Conversion,
    epoch_seconds_to_ts,
    require_columns,
    to_event_frame,
)
from portrait.errors import DatasetError

INTER, ITEM, USER = "ml-1m.inter", "ml-1m.item", "ml-1m.user"
USER_PREFIX = "1m_"


def read_atomic(path: Path, columns: tuple[str, ...]) -> pl.DataFrame:
    """A RecBole atomic file as text columns named without their ``:type`` suffix."""
    frame = pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False)
    frame = frame.rename({c: c.split(":", 1)[0].strip() for c in frame.columns})
    require_columns(frame, columns, str(path))
    return frame


def genre_lists() -> pl.Expr:
    """The space-separated ``genre`` column as a list (empty when there is none)."""
    words = pl.col("genre").fill_null("").str.split(" ")
    return words.list.eval(pl.element().filter(pl.element() != "")).alias("genres")


def rating_type(rating: pl.Expr) -> pl.Expr:
    """4-5 stars: ``like``; 3: ``rating``; 1-2: ``dislike`` (null rating: null)."""
    return (
        pl.when(rating >= 4)
        .then(pl.lit("like"))
        .when(rating >= 3)
        .then(pl.lit("rating"))
        .when(rating.is_not_null())
        .then(pl.lit("dislike"))
    )


def rating_events(inter: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """Events of the contract, one per (rating, genre); ids ``ml1m:{line}:{genre}``.

    ``line`` is the 1-based data line of the rating in ``ml-1m.inter``.
    """
    ratings = inter.with_row_index("line", offset=1).select(
        "line",
        pl.col("user_id").str.strip_prefix(USER_PREFIX),
        "item_id",
        pl.col("rating").cast(pl.Float64),
        epoch_seconds_to_ts(pl.col("timestamp")).alias("ts"),
    )
    genres = genre_lists()
    nonempty = pl.when(genres.list.len() > 0).then(genres)
    category = items.select("item_id", nonempty.alias("category"))
    events = ratings.join(category, on="item_id", how="left").explode("category")
    event_id = (
        pl.when(pl.col("category").is_null())
        .then(pl.format("ml1m:{}", "line"))
        .otherwise(pl.format("ml1m:{}:{}", "line", "category"))
    )
    return to_event_frame(
        events.with_columns(event_id.alias("event_id"), rating_type(pl.col("rating")).alias("type"))
    )


def item_table(items: pl.DataFrame) -> pl.DataFrame:
    """item_id, title, year (Int32, null if missing), genres (List(String)), n_genres."""
    return items.select(
        "item_id",
        pl.col("movie_title").alias("title"),
        pl.col("release_year").cast(pl.Float64).cast(pl.Int32).alias("year"),
        genre_lists(),
    ).with_columns(pl.col("genres").list.len().cast(pl.Int32).alias("n_genres"))


def user_table(users: pl.DataFrame) -> pl.DataFrame:
    """user_id (prefix stripped), age and occupation (Int32 codes), gender, zip_code."""
    return users.select(
        pl.col("user_id").str.strip_prefix(USER_PREFIX),
        pl.col("age").cast(pl.Float64).cast(pl.Int32),
        "gender",
        pl.col("occupation").cast(pl.Float64).cast(pl.Int32),
        "zip_code",
    )


def check_unique_items(items: pl.DataFrame, source: str) -> None:
    """Each movie once: a repeated id would multiply its ratings in the join."""
    repeated = items.filter(pl.col("item_id").is_duplicated())
    if repeated.height:
        first = repeated["item_id"][0]
        raise DatasetError(f"{source}: item_id {first!r} appears more than once")


def convert(raw: Mapping[str, Path]) -> Conversion:
    """``{"ml-1m.inter": path, ...}`` -> events, items and users frames."""
    inter = read_atomic(raw[INTER], ("user_id", "item_id", "rating", "timestamp"))
    items = read_atomic(raw[ITEM], ("item_id", "movie_title", "release_year", "genre"))
    users = read_atomic(raw[USER], ("user_id", "age", "gender", "occupation", "zip_code"))
    check_unique_items(items, str(raw[ITEM]))
    item_frame = item_table(items)
    events = rating_events(inter, items)
    unknown = inter.join(items, on="item_id", how="anti").height
    notes = {
        "ratings": inter.height,
        "events_per_rating": "one per genre of the movie (see docs/datasets.md)",
        "movies_without_genre": int((item_frame["n_genres"] == 0).sum()),
        "ratings_of_movies_missing_from_ml-1m.item": unknown,
    }
    return Conversion({"events": events, "items": item_frame, "users": user_table(users)}, notes)
