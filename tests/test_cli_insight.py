"""``portrait explain`` and ``portrait drift`` end to end.

Most calls run the typer app in-process (``CliRunner``: the same argument
parsing, exit codes and separate stdout / stderr, without a 2-second
interpreter start per call); one test goes through the installed
``portrait`` script, as tests/test_cli.py does for every command.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import portrait
from portrait.cli import app

PORTRAIT = str(Path(sys.executable).with_name("portrait"))
SPEC = Path(portrait.__file__).parent / "data" / "spec.yaml"
T0 = 1_709_251_200  # 2024-03-01T00:00:00Z, epoch seconds


def script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the installed ``portrait`` script."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([PORTRAIT, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def cli(*args: str | Path) -> Any:
    """Run the CLI in-process; the result has ``exit_code``, ``stdout`` and ``stderr``."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def ok_json(*args: str | Path) -> Any:
    result = cli(*args)
    assert result.exit_code == 0, f"portrait {args} exited {result.exit_code}: {result.stderr}"
    return json.loads(result.stdout)


def _events() -> list[dict[str, Any]]:
    """alice: Sci-Fi for weeks, then Books; bob: steady Drama; bot: 100 views in 30 s."""
    rows: list[dict[str, Any]] = []
    for day in range(40):
        rows.append({"user_id": "alice", "ts": T0 + day * 86_400, "type": "view",
                     "item_id": f"s{day}", "category": "Sci-Fi" if day < 30 else "Books"})
        rows.append({"user_id": "bob", "ts": T0 + day * 86_400 + 3600, "type": "view",
                     "item_id": f"d{day}", "category": "Drama"})
    rows.append({"user_id": "alice", "ts": T0 + 39 * 86_400 + 60, "type": "purchase",
                 "item_id": "b1", "category": "Books", "price": 70.0, "quantity": 1})
    rows.append({"user_id": "alice", "ts": T0 + 38 * 86_400 + 60, "type": "purchase",
                 "item_id": "b2", "category": "Books", "price": 40.0, "quantity": 1})
    rows += [{"user_id": "bot", "ts": T0 + 30 * 86_400 + i * 0.3, "type": "view",
              "item_id": "x", "category": "Toys"} for i in range(100)]
    for i, r in enumerate(rows):
        r["event_id"] = f"e{i}"
    return rows


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("insight")
    events = root / "events.jsonl"
    events.write_text("".join(json.dumps(r) + "\n" for r in _events()))
    ok_json("ingest", events, "--spec", SPEC, "--db", root / "db")
    return root / "db"


def test_explain_feature_json(db: Path) -> None:
    got = ok_json("explain", "alice", "category_affinity['Books']", "--db", db, "--json",
                  "--top", "2")
    assert got["target"] == "category_affinity['Books']"
    assert got["target_type"] == "feature"
    assert (got["feature"], got["key"], got["feature_kind"]) == (
        "category_affinity", "Books", "decayed")
    profile = ok_json("profile", "alice", "--db", db, "--json")
    assert math.isclose(got["value"], profile["features"]["category_affinity"]["Books"],
                        rel_tol=1e-9)
    assert math.isclose(got["total"], got["value"], rel_tol=1e-9)
    assert got["events"] == 12  # 10 Books views + 2 purchases
    assert [c["event_id"] for c in got["contributions"]] == ["e80", "e81"]  # the purchases
    for c in got["contributions"]:
        assert set(c) == {"event_id", "ts", "type", "item_id", "category", "key",
                          "contribution", "share"}
        assert c["ts"].endswith("Z")


def test_explain_segment_json_and_at(db: Path) -> None:
    got = ok_json("explain", "alice", "big_spender", "--db", db, "--json")
    assert got["target_type"] == "segment"
    assert got["member"] is True
    assert got["referenced_features"] == ["purchases_30d", "spend_total"]
    assert [c["holds"] for c in got["conditions"]] == [True, True]
    assert set(got["features"]) == {"spend_total", "purchases_30d"}
    before = ok_json("explain", "alice", "big_spender", "--at", "2024-03-20", "--db", db,
                     "--json")
    assert before["as_of"] == "2024-03-20T00:00:00Z"
    assert before["member"] is False
    assert before["features"]["spend_total"]["contributions"] == []


def test_explain_table_and_errors(db: Path) -> None:
    table = cli("explain", "alice", "spend_total", "--db", db)
    assert table.exit_code == 0, table.stderr
    assert "spend_total" in table.stdout
    assert "b1" in table.stdout
    for args, code, needle in [
        (("mallory", "events_total"), 1, "unknown user 'mallory'"),
        (("alice", "whales"), 1, "unknown feature or segment 'whales'"),
        (("alice", "events_total['x']"), 2, "not a map"),
        (("alice", "events_total", "--at", "someday"), 2, "someday"),
    ]:
        proc = cli("explain", *args, "--db", db)
        assert proc.exit_code == code, (args, proc.stderr)
        assert proc.stdout == ""
        assert "Traceback" not in proc.stderr
        assert needle in proc.stderr, proc.stderr


def test_drift_json_shape_and_findings(db: Path) -> None:
    got = ok_json("drift", "--db", db, "--json")
    assert set(got) == {"ref", "at", "population", "interest_shift", "bursts", "burst_rule"}
    assert got["at"] == "2024-04-09T01:00:00Z"  # the watermark (bob's last view)
    assert got["ref"] == "2024-03-10T01:00:00Z"  # 30 days before it
    assert got["population"], "one row per numeric feature"
    for row in got["population"]:
        assert set(row) == {"feature", "psi", "level", "bins"}
        assert row["level"] in ("stable", "moderate", "significant", "empty")
    names = [row["feature"] for row in got["population"]]
    assert "events_total" in names
    assert "age_days(last_seen)" in names
    assert "category_affinity['Sci-Fi']" in names
    assert "last_item" not in names
    shifts = got["interest_shift"]
    assert shifts[0]["user_id"] == "alice"
    assert shifts[0]["short_top"] == "Books"
    assert shifts[0]["long_top"] == "Sci-Fi"
    assert {s["user_id"]: s["interest_shift"] for s in shifts}["bob"] == pytest.approx(0.0)
    assert got["bursts"] == [{"user_id": "bot", "max_events_per_window": 100}]
    custom = ok_json("drift", "--db", db, "--json", "--ref", "2024-03-05",
                     "--at", "2024-03-25")
    assert (custom["ref"], custom["at"]) == ("2024-03-05T00:00:00Z", "2024-03-25T00:00:00Z")


def test_drift_table(db: Path) -> None:
    proc = cli("drift", "--db", db)
    assert proc.exit_code == 0, proc.stderr
    for needle in ("population drift", "events_total", "alice", "bot"):
        assert needle in proc.stdout, needle
    missing = cli("drift", "--db", db.parent / "nothing-here")
    assert missing.exit_code == 2
    assert str(db.parent / "nothing-here") in missing.stderr
    assert not (db.parent / "nothing-here").exists()


def test_installed_script_runs_both_commands(db: Path) -> None:
    explained = script("explain", "alice", "events_total", "--db", db, "--json")
    assert explained.returncode == 0, explained.stderr
    assert json.loads(explained.stdout)["total"] == 42
    unknown = script("drift", "--db", db, "--json", "--at", "never")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert "error: bad time 'never'" in unknown.stderr
