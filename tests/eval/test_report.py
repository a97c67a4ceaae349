"""The evaluation report: files, JSON round trip, tables, bold cells and verdicts."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from portrait.eval.report import verdicts, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROW_KEYS = ["task", "method", "kind", "metric", "value", "ci_low", "ci_high", "n_users",
            "users", "half_life", "refresh", "n_examples"]


def row(*cells: Any, users: str = "warm", half_life: str | None = None,
        refresh: str | None = None) -> dict[str, Any]:
    """A result row from (task, method, kind, metric, value, ci_low, ci_high)."""
    return dict(zip(ROW_KEYS, [*cells, 100, users, half_life, refresh, 250], strict=True))


def sample(cold: bool = True) -> dict[str, Any]:
    results = [
        row("next_item", "popular", "baseline", "recall@20", 0.10, 0.08, 0.12),
        row("next_item", "popular", "baseline", "ndcg@20", 0.06, 0.05, 0.07),
        row("next_item", "itemknn", "baseline", "recall@20", 0.15, 0.13, 0.17),
        row("next_item", "itemknn", "baseline", "ndcg@20", 0.05, 0.04, 0.06),
        # propensity: dynamic AUC CI [0.79, 0.82] does not clear the baseline's 0.80 -> loss;
        # dynamic brier (lower is better) 0.09, CI upper 0.095 < baseline 0.10 -> win
        row("propensity", "logreg", "baseline", "auc", 0.80, 0.78, 0.82),
        row("propensity", "logreg", "baseline", "brier", 0.10, 0.09, 0.11),
        row("propensity", "dyn", "dynamic", "auc", 0.805, 0.79, 0.82, half_life="7d",
            refresh="event"),
        row("propensity", "dyn", "dynamic", "brier", 0.09, 0.085, 0.095, half_life="7d",
            refresh="event"),
    ]
    for hl, bonus in (("1d", 0.0), ("7d", 0.01)):
        for i, refresh in enumerate(["event", "1h", "1d", "7d"]):
            v = 0.20 + bonus - 0.01 * i  # h=7d at event: 0.21 [0.19, 0.23], the best
            method = f"decayed h={hl} refresh={refresh}"
            results += [
                row("next_item", method, "dynamic", "recall@20", v, v - 0.02, v + 0.02,
                    half_life=hl, refresh=refresh),
                row("next_item", method, "dynamic", "ndcg@20", v / 2, v / 2 - 0.01,
                    v / 2 + 0.01, half_life=hl, refresh=refresh),
            ]
    if cold:
        results += [
            row("next_item", "popular", "baseline", "recall@20", 0.03, 0.02, 0.04, users="cold"),
            row("next_item", "decayed h=7d refresh=event", "dynamic", "recall@20", 0.01,
                0.0, 0.02, users="cold", half_life="7d", refresh="event"),
        ]
    return {
        "dataset": "synthetic",
        "generated_at": "2025-01-02T03:04:05Z",
        "machine": "test box",
        "seconds": 12.5,
        "protocol": {"cuts": ["2024-01-01T00:00:00Z"], "horizon": "30d", "seeds": [0],
                     "n_bootstrap": 1000, "refresh_intervals": ["event", "1h", "1d", "7d"],
                     "half_lives": ["1d", "7d"], "notes": ["synthetic numbers"]},
        "results": results,
        "curves": {"calibration": {"logreg": {"mean_pred": [0.1, 0.5, 0.9],
                                              "frac_pos": [0.12, 0.45, 0.85],
                                              "count": [10, 10, 10]}}},
        "goals": [{"task": "next_item", "metric": "recall@20"},
                  {"task": "propensity", "metric": "auc"},
                  {"task": "propensity", "metric": "brier"}],
    }


def table(md: str, heading: str) -> list[list[str]]:
    """Cells of the first markdown table after a heading line."""
    lines = md[md.index(heading + "\n"):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, dict[str, Any], str]:
    report = sample()
    md_path = write_report(tmp_path / "out", report)
    return tmp_path / "out", report, md_path.read_text(encoding="utf-8")


def test_files_exist_and_pngs_are_real(written: tuple[Path, dict[str, Any], str]) -> None:
    out, _, md = written
    pngs = ["methods_next_item.png", "methods_propensity.png", "freshness_next_item.png",
            "calibration.png"]
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 5000, name
        assert f"]({name})" in md  # embedded with a relative link
    assert sorted(p.name for p in out.iterdir()) == sorted([*pngs, "report.json", "report.md"])


def test_json_round_trips_with_verdicts(written: tuple[Path, dict[str, Any], str]) -> None:
    out, report, _ = written
    loaded = json.loads((out / "report.json").read_text())
    assert list(loaded) == [*report, "verdicts"]  # insertion order kept, verdicts appended
    assert [list(r) for r in loaded["results"]] == [ROW_KEYS] * len(report["results"])
    assert {k: v for k, v in loaded.items() if k != "verdicts"} == report
    assert loaded["verdicts"] == verdicts(report)
    assert "verdicts" not in report  # the caller's dict is left alone


def test_input_not_mutated(tmp_path: Path) -> None:
    report = sample()
    before = copy.deepcopy(report)
    write_report(tmp_path, report)
    assert report == before


def test_nan_becomes_null_and_dash(tmp_path: Path) -> None:
    report = sample(cold=False)
    report["results"][1]["value"] = math.nan  # popular ndcg@20
    md = write_report(tmp_path, report).read_text()
    assert json.loads((tmp_path / "report.json").read_text())["results"][1]["value"] is None
    popular = next(r for r in table(md, "## Task: next_item") if r[0] == "popular")
    assert popular[3] == "—"


def test_task_table_sorted_and_best_in_bold(written: tuple[Path, dict[str, Any], str]) -> None:
    _, _, md = written
    rows = table(md, "## Task: next_item")
    # baselines first, then dynamic, each by recall@20 descending; only refresh=event dynamic
    assert [r[0] for r in rows] == ["itemknn", "popular", "decayed h=7d refresh=event",
                                    "decayed h=1d refresh=event"]
    assert rows[0][2] == "0.1500 [0.1300, 0.1700]"
    assert rows[2][2] == "**0.2100 [0.1900, 0.2300]**"  # best recall@20
    assert rows[2][3] == "**0.1050 [0.0950, 0.1150]**"  # best ndcg@20
    assert sum(c.startswith("**") for r in rows for c in r) == 2
    prop = table(md, "## Task: propensity")
    assert prop[0][:4] == ["logreg", "baseline", "0.8000 [0.7800, 0.8200]",
                           "0.1000 [0.0900, 0.1100]"]
    # brier is lower-is-better: the dynamic 0.09 is the bold one
    assert prop[1][2:4] == ["**0.8050 [0.7900, 0.8200]**", "**0.0900 [0.0850, 0.0950]**"]


def test_title_and_protocol(written: tuple[Path, dict[str, Any], str]) -> None:
    _, _, md = written
    assert md.startswith("# Evaluation report: synthetic (2025-01-02)\n")
    assert "- **horizon**: 30d" in md
    assert "- **refresh_intervals**: event, 1h, 1d, 7d" in md
    assert "- note: synthetic numbers" in md


def test_freshness_table_one_line_per_half_life(
        written: tuple[Path, dict[str, Any], str]) -> None:
    _, _, md = written
    section = md[md.index("## Freshness-value curve"):]
    assert "| half-life | event | 1h | 1d | 7d |" in section
    assert "| 7d | 0.2100 [0.1900, 0.2300] | 0.2000 [0.1800, 0.2200] |" in section


def test_verdict_win_and_loss(written: tuple[Path, dict[str, Any], str]) -> None:
    _, report, md = written
    verdict = md[md.index("## Verdict"):]
    assert ("**next_item / recall@20**: dynamic wins: its CI lower bound 0.1900 > best "
            "baseline 0.1500") in verdict
    assert "The two CIs do not overlap." in verdict
    assert "best of 2 variants" in verdict  # h=1d and h=7d were both tried
    assert ("**propensity / auc**: not shown: the dynamic CI lower bound 0.7900 is not > the "
            "best baseline 0.8000") in verdict
    assert "**propensity / brier**: dynamic wins: its CI upper bound 0.0950 < best baseline" \
        in verdict
    v = {(d["task"], d["metric"]): d for d in verdicts(report)}
    win = v["next_item", "recall@20"]
    assert win["won"] is True
    assert win["best_dynamic"] == "decayed h=7d refresh=event"
    assert win["best_baseline"] == "itemknn"
    assert (win["dynamic_value"], win["dynamic_ci_low"]) == (pytest.approx(0.21),
                                                             pytest.approx(0.19))
    assert (win["baseline_value"], win["baseline_ci_high"]) == (0.15, 0.17)
    assert v["propensity", "auc"]["won"] is False
    assert "overlap" in v["propensity", "auc"]["text"]
    assert v["propensity", "brier"]["won"] is True


def test_verdict_without_dynamic_rows_is_not_shown() -> None:
    report = sample(cold=False)
    report["goals"] = [{"task": "next_category", "metric": "acc@1"}]
    (v,) = verdicts(report)
    assert v["won"] is False
    assert v["best_dynamic"] is None
    assert v["text"].startswith("not shown: no dynamic result")


def test_cold_start_table_only_with_cold_rows(tmp_path: Path) -> None:
    md = write_report(tmp_path / "a", sample(cold=True)).read_text()
    cold = table(md, "## Cold start")
    assert [r[0] for r in cold] == ["popular", "decayed h=7d refresh=event"]
    assert cold[0][2] == "**0.0300 [0.0200, 0.0400]**"
    md = write_report(tmp_path / "b", sample(cold=False)).read_text()
    assert "Cold start" not in md
    assert "calibration.png" in md


def test_no_curves_no_calibration_plot(tmp_path: Path) -> None:
    report = sample(cold=False)
    del report["curves"]
    md = write_report(tmp_path, report).read_text()
    assert not (tmp_path / "calibration.png").exists()
    assert "calibration.png" not in md
