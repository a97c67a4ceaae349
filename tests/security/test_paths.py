"""Names that become paths stay in their directory (issue #6, item 8).

Every place where a name from outside becomes a file path: the dashboard's
report files and assets, audience exports (over real HTTP, with paths sent
byte for byte: ``../``, ``%2e%2e%2f``, absolute paths, NUL, newlines), user ids
(never paths), model names in the registry, dataset names and the members of
a downloaded archive. Symbolic links that point out of a served directory are
not followed. ``tests/serve/test_dashboard_browser.py`` checks one encoded
``../`` on the report route; this covers the rest.
"""

from __future__ import annotations

import http.client
import io
import os
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest
from tests.security.common import PROBLEM, Live, live_server

from portrait.datasets.archive import extract_members
from portrait.datasets.fetch import fetch, is_cached
from portrait.errors import DatasetError, StoreError, UnknownDatasetError, UsageError
from portrait.models.registry import ModelRegistry

SECRET = "TOP-SECRET-OUTSIDE"


def _raw_get(url: str, path: str, key: str) -> tuple[int, str, bytes]:
    """GET ``path`` exactly as given (httpx would normalise ``..`` and encodings)."""
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname or "", where.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.putheader("X-API-Key", key)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type") or "", resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Reports to serve, and files outside them that links point at."""
    root = tmp_path_factory.mktemp("paths")
    outside = root / "outside"
    outside.mkdir()
    (outside / "report.md").write_text(f"# {SECRET}\n")
    (outside / "secret.md").write_text(SECRET)
    (outside / "secret.png").write_text(SECRET)
    good = root / "reports" / "good"
    good.mkdir(parents=True)
    (good / "report.md").write_text("# Good report\n")
    (good / "plot.png").write_bytes(b"\x89PNG fake")
    (good / "leak.png").symlink_to(outside / "secret.png")  # a file linking out
    (good / "leak.md").symlink_to(outside / "secret.md")
    (root / "reports" / "linked").symlink_to(outside)  # a report directory linking out
    (root / "reports" / "mdlink").mkdir()
    (root / "reports" / "mdlink" / "report.md").symlink_to(outside / "report.md")
    return root


@pytest.fixture(scope="module")
def live(tree: Path) -> Iterator[Live]:
    with live_server(tree / "db", report_dir=tree / "reports", flush_ms=1.0) as server:
        r = httpx.post(f"{server.url}/v1/events", headers={"X-API-Key": server.admin},
                       json={"user_id": "p1", "ts": "2024-01-01T00:00:00Z", "type": "view"})
        assert r.status_code == 200, r.text
        yield server


def _refused(live: Live, path: str, *, secret: str = SECRET) -> int:
    status, media, body = _raw_get(live.url, path, live.admin)
    assert 400 <= status < 500, (path, status, body[:200])
    assert secret.encode() not in body, path
    if status == 404:
        assert media == PROBLEM, (path, media)
    return status


# --- dashboard reports ----------------------------------------------------------


def test_only_reports_inside_the_report_directory_are_listed(live: Live) -> None:
    meta = httpx.get(f"{live.url}/ui/meta", headers={"X-API-Key": live.read})
    assert meta.status_code == 200
    assert [r["name"] for r in meta.json()["reports"]] == ["good"]
    assert SECRET not in meta.text
    ok = httpx.get(f"{live.url}/ui/reports/good/report.md", headers={"X-API-Key": live.read})
    assert ok.status_code == 200
    assert ok.text == "# Good report\n"
    png = httpx.get(f"{live.url}/ui/reports/good/plot.png", headers={"X-API-Key": live.read})
    assert png.content == b"\x89PNG fake"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/reports/good/leak.png",
        "/ui/reports/good/leak.md",
        "/ui/reports/linked/report.md",
        "/ui/reports/linked/secret.md",
        "/ui/reports/mdlink/report.md",
    ],
)
def test_links_out_of_the_report_directory_are_not_followed(live: Live, path: str) -> None:
    assert _refused(live, path) == 404


@pytest.mark.parametrize(
    "path",
    [
        "/ui/reports/../outside/secret.md",
        "/ui/reports/good/../../outside/secret.md",
        "/ui/reports/%2e%2e/secret.md",
        "/ui/reports/good/%2e%2e%2f%2e%2e%2foutside%2fsecret.md",
        "/ui/reports/good/..%2F..%2Foutside%2Fsecret.md",
        "/ui/reports/%2e%2e%2foutside/secret.md",
        "/ui/reports/good/%2Ftmp%2Fsecret.md",
        "/ui/reports//etc/passwd",
        "/ui/reports/good/report.md%00.png",
        "/ui/reports/good/secret.md%00",
        "/ui/reports/good/report.md%0a",
        "/ui/reports/good/..%5c..%5coutside%5csecret.md",
        "/ui/reports/good/.%2e/.%2e/outside/secret.md",
        "/ui/reports/outside/secret.md",
    ],
)
def test_report_names_cannot_leave_the_report_directory(live: Live, path: str) -> None:
    _refused(live, path)


@pytest.mark.parametrize(
    "path",
    [
        "/ui/assets/../dashboard.py",
        "/ui/assets/%2e%2e/dashboard.py",
        "/ui/assets/..%2fdashboard.py",
        "/ui/assets/%2e%2e%2f%2e%2e%2fserve%2fdashboard.py",
        "/ui/assets/vendor/..%2f..%2fdashboard.py",
        "/ui/assets/..%5cdashboard.py",
        "/ui/assets//etc/passwd",
        "/ui/assets/%2fetc%2fpasswd",
        "/ui/assets/app.js%00.png",
    ],
)
def test_assets_cannot_leave_the_static_directory(live: Live, path: str) -> None:
    assert _raw_get(live.url, "/ui/assets/app.js", live.read)[0] == 200
    _refused(live, path, secret="def mount_dashboard")
    _refused(live, path, secret="root:")


# --- audience exports ------------------------------------------------------------


@pytest.fixture(scope="module")
def export(live: Live) -> dict[str, Any]:
    r = httpx.post(f"{live.url}/v1/audiences", headers={"X-API-Key": live.admin},
                   json={"query": "last_item == '../../../../tmp/x' or events_total >= 0",
                         "export": "csv"})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()["export"]
    return out


def test_exports_are_written_in_the_export_directory_under_generated_names(
    live: Live, export: dict[str, Any]
) -> None:
    path = Path(export["path"])
    assert path.parent == live.db / "exports"
    assert export["url"] == f"/v1/exports/{path.name}"
    got = httpx.get(live.url + export["url"], headers={"X-API-Key": live.read})
    assert got.status_code == 200
    assert got.text.splitlines()[0].startswith("user_id")


@pytest.mark.parametrize(
    "name",
    [
        "..%2Fapi-keys.json",
        "%2e%2e%2fapi-keys.json",
        "%2e%2e%2f%2e%2e%2foutside%2fsecret.md",
        "..",
        "%2Fetc%2Fpasswd",
        "{name}%00",
        "{name}%0a",
        "{name}%2F..%2F..%2Fapi-keys.json",
        "..%2Fexports%2F{name}",
    ],
)
def test_export_names_cannot_leave_the_export_directory(
    live: Live, export: dict[str, Any], name: str
) -> None:
    real = Path(export["path"]).name
    keys = (live.db / "api-keys.json").read_text()
    _refused(live, "/v1/exports/" + name.format(name=real), secret=keys[:60])
    _refused(live, "/v1/exports/" + name.format(name=real), secret=SECRET)


def test_an_export_name_linking_out_is_not_followed(live: Live, tree: Path) -> None:
    link = live.db / "exports" / "audience-20240101T000000Z-0123abcd.csv"
    link.symlink_to(tree / "outside" / "secret.md")
    try:
        assert _refused(live, f"/v1/exports/{link.name}") == 404
    finally:
        link.unlink()


# --- user ids are never paths ------------------------------------------------------


@pytest.mark.parametrize("user", ["..%2F..%2Fapi-keys.json", "%2e%2e", "%2Fetc%2Fpasswd",
                                  "exports%2F..%2F..%2Foutside"])
def test_user_ids_are_not_paths(live: Live, tree: Path, user: str) -> None:
    keys = (live.db / "api-keys.json").read_bytes()
    before = _files(tree / "outside") | _files(tree / "reports")
    status, _, body = _raw_get(live.url, f"/v1/profiles/{user}", live.admin)
    assert status == 404
    assert b"UnknownUserError" in body
    r = httpx.request("DELETE", f"{live.url}/v1/users/{user}", headers={"X-API-Key": live.admin})
    assert r.status_code == 200, r.text
    assert r.json()["found"] is False
    assert (live.db / "api-keys.json").read_bytes() == keys
    assert (tree / "outside" / "secret.md").read_text() == SECRET
    assert _files(tree / "outside") | _files(tree / "reports") == before


# --- model registry --------------------------------------------------------------

BAD_MODEL_NAMES = ["../x", "../../etc", "/abs", "a/b", "a\\b", "..", ".", ".hidden", "",
                   "a\x00b", "%2e%2e", "x" * 101, "-rf", "é"]


@pytest.mark.parametrize("name", BAD_MODEL_NAMES)
def test_model_names_cannot_leave_the_registry(tmp_path: Path, name: str) -> None:
    root = tmp_path / "reg" / "models"
    reg = ModelRegistry(root)
    model = cast(Any, object())
    for call in (lambda: reg.save(name, model), lambda: reg.load(name, cast(Any, object)),
                 lambda: reg.versions(name), lambda: reg.current(name),
                 lambda: reg.promote(name, 1), lambda: reg.version_path(name, 1)):
        with pytest.raises(UsageError, match="model name"):
            call()
    assert list(tmp_path.rglob("*")) == []


def test_a_current_pointer_cannot_leave_its_model(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "als").mkdir(parents=True)
    (tmp_path / "v000001").mkdir()
    for text in ("../../v000001", "/etc/passwd", "v000001/../../x", "v1"):
        (root / "als" / "CURRENT").write_text(text + "\n")
        with pytest.raises(StoreError, match="expected a version like v000001"):
            ModelRegistry(root).load("als", cast(Any, object))


def test_a_model_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="model name"):
        ModelRegistry(tmp_path).versions("als\n")


# --- datasets ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../movielens-1m", "/etc", "movielens-1m/../../x", "..",
                                  "movielens-1m\x00", "%2e%2e"])
def test_dataset_names_are_looked_up_never_joined(tmp_path: Path, name: str) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(UnknownDatasetError, match="unknown dataset"):
        fetch(name, cache)
    with pytest.raises(UnknownDatasetError):
        is_cached(name, cache)
    assert not cache.exists()


MEMBERS = {"ratings.dat": "pkg/data/ratings.dat"}
HOSTILE_ENTRIES = ["../../escape.dat", "/tmp/abs-escape.dat", "pkg/../../../escape2.dat",
                   "../ratings.dat", "pkg/data/../../ratings.dat"]


def _zip(path: Path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_archive_members_are_written_under_registry_names_only(tmp_path: Path) -> None:
    archive = tmp_path / "in" / "pkg.whl"
    archive.parent.mkdir()
    _zip(archive, {**dict.fromkeys(HOSTILE_ENTRIES, b"EVIL"), "pkg/data/ratings.dat": b"GOOD"})
    dest = tmp_path / "cache" / "raw"
    got = extract_members(archive, MEMBERS, dest)
    assert got["ratings.dat"].path == dest / "ratings.dat"
    assert (dest / "ratings.dat").read_bytes() == b"GOOD"
    assert _files(tmp_path) == {"in/pkg.whl", "cache/raw/ratings.dat"}
    assert not Path("/tmp/abs-escape.dat").exists()


def test_a_member_found_by_suffix_is_still_written_under_its_registry_name(
    tmp_path: Path
) -> None:
    archive = tmp_path / "pkg.zip"
    _zip(archive, {"../../../../x/pkg/data/ratings.dat": b"NESTED"})
    extract_members(archive, MEMBERS, tmp_path / "raw")
    assert (tmp_path / "raw" / "ratings.dat").read_bytes() == b"NESTED"
    assert _files(tmp_path) == {"pkg.zip", "raw/ratings.dat"}


def test_links_in_a_tar_archive_are_not_extracted(tmp_path: Path) -> None:
    target = tmp_path / "outside.txt"
    target.write_text(SECRET)
    archive = tmp_path / "pkg.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            info = tarfile.TarInfo("pkg/data/ratings.dat")
            info.type, info.linkname = kind, str(target)
            tf.addfile(info)
        hostile = tarfile.TarInfo("../../escape.dat")
        hostile.size = 4
        tf.addfile(hostile, io.BytesIO(b"EVIL"))
    with pytest.raises(DatasetError, match="has no member"):
        extract_members(archive, MEMBERS, tmp_path / "raw")
    assert target.read_text() == SECRET
    assert _files(tmp_path) == {"outside.txt", "pkg.tar.gz"}


def test_a_link_already_in_the_cache_is_replaced_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "outside.txt"
    target.write_text(SECRET)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "ratings.dat").symlink_to(target)
    archive = tmp_path / "pkg.zip"
    _zip(archive, {"pkg/data/ratings.dat": b"GOOD"})
    extract_members(archive, MEMBERS, raw)
    assert target.read_text() == SECRET
    assert not (raw / "ratings.dat").is_symlink()
    assert (raw / "ratings.dat").read_bytes() == b"GOOD"
    assert os.listdir(raw) == ["ratings.dat"]
