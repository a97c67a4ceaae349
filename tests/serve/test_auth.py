"""API keys: 401 without or with an unknown key, 403 without the scope, keys stored hashed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
from tests.serve.harness import PORTRAIT, Served, event
from typer.testing import CliRunner

from portrait.cli import app
from portrait.client import Client
from portrait.errors import AuthenticationError, PermissionDeniedError, UsageError
from portrait.serve.keys import KeyStore, parse_scopes

READS = ["/v1/profiles/u001", "/v1/segments", "/v1/drift", "/v1/recommendations/u001?k=1",
         "/v1/segments/big_spender/members", "/v1/profiles/u001/history?points=2"]


@pytest.mark.parametrize("path", READS)
def test_missing_or_unknown_key_is_401(served: Served, path: str) -> None:
    for headers in ({}, {"X-API-Key": "prt_not-a-key"}):
        r = httpx.get(served.url + path, headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"].startswith("ApiKey")
        assert r.json()["error"] == "AuthenticationError"


def test_scopes(served: Served) -> None:
    with Client(served.url, served.read) as reader:
        reader.profile("u001")
        with pytest.raises(PermissionDeniedError, match="needs 'ingest'") as info:
            reader.ingest(event("auth-a", "2024-05-01T00:00:00Z"))
        assert info.value.status == 403  # type: ignore[attr-defined]
    with Client(served.url, served.ingest) as writer:
        assert writer.ingest(event("auth-a", "2024-05-01T00:00:00Z"))["accepted"] == 1
        with pytest.raises(PermissionDeniedError, match="needs 'read'"):
            writer.profile("auth-a")
    with Client(served.url, served.admin) as admin:
        assert admin.profile("auth-a")["features"]["events_total"] == 1
    with Client(served.url) as nobody, pytest.raises(AuthenticationError, match="missing"):
        nobody.segments()


def test_open_routes_need_no_key(served: Served) -> None:
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert httpx.get(served.url + path).status_code == 200


def test_keys_cli_prints_a_working_key_once(served: Served) -> None:
    run = subprocess.run([PORTRAIT, "keys", "create", "--scope", "read,ingest", "--db",
                          str(served.db)], capture_output=True, text=True, check=True)
    key = run.stdout.strip()
    assert key.startswith("prt_")
    assert "\n" not in key
    assert "not shown again" in run.stderr
    text = KeyStore(served.db).path.read_text()
    assert key not in text  # only the hash is kept
    with Client(served.url, key) as both:
        both.ingest(event("auth-b", "2024-05-01T00:00:00Z"))
        assert both.profile("auth-b")["features"]["events_total"] == 1
    bad = subprocess.run([PORTRAIT, "keys", "create", "--scope", "root", "--db",
                          str(served.db)], capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert "bad scopes 'root'" in bad.stderr


def test_revoked_key_is_refused(served: Served) -> None:
    keys = KeyStore(served.db)
    secret, stored = keys.create(("read",))
    with Client(served.url, secret) as c:
        c.segments()
        assert keys.revoke(stored.key_id)
        with pytest.raises(AuthenticationError, match="unknown API key"):
            c.segments()


def test_parse_scopes() -> None:
    assert parse_scopes(" read, ingest ,read") == ("ingest", "read")
    with pytest.raises(UsageError):
        parse_scopes("")


def test_keys_list_and_revoke_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "--scope", "admin", "--db", str(tmp_path)])
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip().splitlines()[-1]
    listed = runner.invoke(app, ["keys", "list", "--db", str(tmp_path)])
    rows = json.loads(listed.stdout)
    assert [r["scopes"] for r in rows] == [["admin"]]
    assert secret not in listed.stdout
    gone = runner.invoke(app, ["keys", "revoke", rows[0]["id"], "--db", str(tmp_path)])
    assert gone.exit_code == 0
    assert KeyStore(tmp_path).stored() == []
    again = runner.invoke(app, ["keys", "revoke", rows[0]["id"], "--db", str(tmp_path)])
    assert again.exit_code == 1
    (tmp_path / "api-keys.json").write_text("{not json")
    broken = runner.invoke(app, ["keys", "list", "--db", str(tmp_path)])
    assert broken.exit_code == 2
    assert "not a readable API keys file" in broken.stderr
