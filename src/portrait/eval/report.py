"""The evaluation report: report.json, report.md and PNG plots.

``write_report`` takes the plain report dict (see docs of the eval runner) and
writes it out; ``verdicts`` adjudicates each goal (task, metric): does the best
dynamic method beat the best baseline by more than the noise? Plots use
matplotlib's ``Figure`` directly (Agg canvas, no pyplot, no global backend).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from matplotlib.figure import Figure
from matplotlib.patches import Patch

HEADLINE = {"next_category": "acc@1", "next_item": "recall@20", "propensity": "auc"}
LOWER_IS_BETTER = frozenset({"brier", "log_loss", "logloss", "ece", "mae", "mse", "rmse"})
KIND_ORDER = {"baseline": 0, "dynamic": 1}
COLOURS = {"baseline": "tab:gray", "dynamic": "tab:blue"}

Row = dict[str, Any]


# --------------------------------------------------------------------------- row selection


def _num(x: Any) -> float:
    """A float, NaN for None or anything not a number."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def higher_is_better(metric: str) -> bool:
    return metric.split("@", maxsplit=1)[0].lower() not in LOWER_IS_BETTER


def _users(row: Row) -> str:
    return str(row.get("users") or "warm")


def _unique(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _tasks(rows: list[Row]) -> list[str]:
    return _unique(str(r["task"]) for r in rows)


def _metrics(rows: list[Row], task: str) -> list[str]:
    """The task's metrics, headline first, then in order of appearance."""
    found = _unique(str(r["metric"]) for r in rows if r["task"] == task)
    head = HEADLINE.get(task, "")
    return ([head] if head in found else []) + [m for m in found if m != head]


def headline(rows: list[Row], task: str) -> str:
    return _metrics(rows, task)[0]


def _freshest(report: dict[str, Any]) -> str | None:
    """The first (most frequent) refresh interval: the one the main tables show."""
    order = _refresh_order(report)
    return order[0] if order else None


def _refresh_order(report: dict[str, Any]) -> list[str]:
    given = [str(x) for x in report.get("protocol", {}).get("refresh_intervals") or []]
    seen = [str(r["refresh"]) for r in report.get("results", []) if r.get("refresh") is not None]
    return _unique(given + seen)


def main_rows(report: dict[str, Any], users: str = "warm") -> list[Row]:
    """Rows for the method tables: no refresh, or refreshed at the freshest interval."""
    fresh = _freshest(report)
    return [
        r
        for r in report.get("results", [])
        if _users(r) == users and (r.get("refresh") is None or str(r["refresh"]) == fresh)
    ]


def _label(row: Row, rows: list[Row]) -> str:
    """The method name, with half-life/refresh appended only where needed to tell rows apart."""
    twins = {
        (r.get("half_life"), r.get("refresh"))
        for r in rows
        if r["method"] == row["method"] and r["task"] == row["task"]
    }
    if len(twins) <= 1:
        return str(row["method"])
    extra = [f"{k} {row[k]}" for k in ("half_life", "refresh") if row.get(k) is not None]
    return f"{row['method']} [{', '.join(extra)}]"


def _table(rows: list[Row], task: str) -> tuple[list[str], list[tuple[str, str, dict[str, Row]]]]:
    """(metrics, [(label, kind, {metric: row})]) sorted by kind then headline value."""
    metrics = _metrics(rows, task)
    methods: dict[str, tuple[str, dict[str, Row]]] = {}
    task_rows = [r for r in rows if r["task"] == task]
    for r in task_rows:
        label = _label(r, task_rows)
        methods.setdefault(label, (str(r["kind"]), {}))[1].setdefault(str(r["metric"]), r)
    sign = 1.0 if higher_is_better(metrics[0]) else -1.0

    def order(item: tuple[str, tuple[str, dict[str, Row]]]) -> tuple[int, float]:
        kind, cells = item[1]
        value = _num(cells[metrics[0]]["value"]) if metrics[0] in cells else math.nan
        return KIND_ORDER.get(kind, 2), -sign * value if math.isfinite(value) else math.inf

    return metrics, [(label, kind, cells) for label, (kind, cells) in sorted(
        methods.items(), key=order)]


# --------------------------------------------------------------------------- verdicts


def _best(rows: list[Row], kind: str, metric: str) -> Row | None:
    pool = [r for r in rows if r["kind"] == kind and math.isfinite(_num(r["value"]))]
    if not pool:
        return None
    sign = 1.0 if higher_is_better(metric) else -1.0
    return max(pool, key=lambda r: sign * _num(r["value"]))


def _fmt(x: Any) -> str:
    v = _num(x)
    return f"{v:.4f}" if math.isfinite(v) else "n/a"


def _ci(row: Row) -> str:
    return f"[{_fmt(row.get('ci_low'))}, {_fmt(row.get('ci_high'))}]"


def _verdict(task: str, metric: str, rows: list[Row]) -> dict[str, Any]:
    pool = [r for r in rows if r["task"] == task and r["metric"] == metric]
    dyn, base = _best(pool, "dynamic", metric), _best(pool, "baseline", metric)
    up = higher_is_better(metric)
    out: dict[str, Any] = {
        "task": task, "metric": metric,
        "best_dynamic": None if dyn is None else str(dyn["method"]),
        "dynamic_value": None if dyn is None else _num(dyn["value"]),
        "dynamic_ci_low": None if dyn is None else _num(dyn.get("ci_low")),
        "best_baseline": None if base is None else str(base["method"]),
        "baseline_value": None if base is None else _num(base["value"]),
        "baseline_ci_high": None if base is None else _num(base.get("ci_high")),
        "dynamic_ci_high": None if dyn is None else _num(dyn.get("ci_high")),
        "baseline_ci_low": None if base is None else _num(base.get("ci_low")),
        "higher_is_better": up, "won": False,
    }
    if dyn is None or base is None:
        missing = "dynamic" if dyn is None else "baseline"
        out["text"] = f"not shown: no {missing} result for {task} / {metric} (warm users)."
        return out
    out["text"], out["won"] = _verdict_text(dyn, base, up)
    n_dyn = sum(1 for r in pool if r["kind"] == "dynamic")
    if n_dyn > 1:
        out["text"] += (f" The dynamic figure is the best of {n_dyn} variants picked on the same"
                        " test data, so it is optimistic.")
    return out


def _verdict_text(dyn: Row, base: Row, up: bool) -> tuple[str, bool]:
    d_lo, d_hi = _num(dyn.get("ci_low")), _num(dyn.get("ci_high"))
    b_val, b_lo, b_hi = _num(base["value"]), _num(base.get("ci_low")), _num(base.get("ci_high"))
    names = f"(`{dyn['method']}` {_fmt(dyn['value'])} {_ci(dyn)} vs `{base['method']}` "
    names += f"{_fmt(b_val)} {_ci(base)})"
    bound, word, cmp = (d_lo, "lower", ">") if up else (d_hi, "upper", "<")
    if not math.isfinite(bound):
        return f"not shown: the best dynamic method has no confidence interval {names}.", False
    won = bound > b_val if up else bound < b_val
    overlap = math.isfinite(b_lo) and math.isfinite(b_hi) and d_lo <= b_hi and b_lo <= d_hi
    if won:
        text = (f"dynamic wins: its CI {word} bound {bound:.4f} {cmp} best baseline"
                f" {b_val:.4f} {names}.")
        text += (" The two CIs still overlap, so the margin is small." if overlap
                 else " The two CIs do not overlap.")
        return text, True
    text = (f"not shown: the dynamic CI {word} bound {bound:.4f} is not {cmp} the best baseline"
            f" {b_val:.4f} {names}.")
    if (_num(dyn["value"]) < b_val) == up and _num(dyn["value"]) != b_val:
        text += " The baseline's point estimate is better."
    if overlap:
        text += " The two CIs overlap."
    return text, False


def verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One adjudication per goal {task, metric}, on warm users at the freshest refresh."""
    rows = main_rows(report)
    return [_verdict(str(g["task"]), str(g["metric"]), rows) for g in report.get("goals") or []]


# --------------------------------------------------------------------------- plots


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _yerr(rows: list[Row]) -> list[list[float]]:
    """Asymmetric error bars from the CIs (0 where a bound is missing)."""
    def gap(a: float, b: float) -> float:
        return max(a - b, 0.0) if math.isfinite(a) and math.isfinite(b) else 0.0

    return [
        [gap(_num(r["value"]), _num(r.get("ci_low"))) for r in rows],
        [gap(_num(r.get("ci_high")), _num(r["value"])) for r in rows],
    ]


def _plot_methods(path: Path, task: str, metric: str,
                  entries: list[tuple[str, str, dict[str, Row]]]) -> bool:
    bars = [(label, kind, cells[metric]) for label, kind, cells in entries if metric in cells]
    if not bars:
        return False
    fig = Figure(figsize=(8, 1.2 + 0.35 * len(bars)), layout="constrained")
    ax = fig.subplots()
    y = list(range(len(bars)))[::-1]
    ax.barh(y, [_num(r["value"]) for _, _, r in bars], xerr=_yerr([r for _, _, r in bars]),
            color=[COLOURS.get(k, "tab:orange") for _, k, _ in bars], capsize=3)
    ax.set_yticks(y, [label for label, _, _ in bars], fontsize=8)
    ax.set_xlabel(f"{metric} (95% CI)")
    ax.set_title(f"{task}: {metric} by method (warm users)")
    ax.legend(handles=[Patch(color=c, label=k) for k, c in COLOURS.items()], fontsize=8)
    fig.savefig(path, dpi=100)
    return True


def _freshness_lines(rows: list[Row], order: list[str]) -> tuple[dict[str, list[Row | None]], int]:
    """{half-life label: row per refresh interval (None if absent)} and the duplicates skipped."""
    lines: dict[str, list[Row | None]] = {}
    skipped = 0
    for r in rows:
        line = lines.setdefault(str(r.get("half_life") or "none"), [None] * len(order))
        slot = order.index(str(r["refresh"]))
        if line[slot] is None:
            line[slot] = r
        else:
            skipped += 1
    return lines, skipped


def _plot_freshness(path: Path, task: str, metric: str, order: list[str],
                    lines: dict[str, list[Row | None]]) -> None:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (hl, line) in enumerate(lines.items()):
        pts = [(x, r) for x, r in enumerate(line) if r is not None]
        shift = (i - (len(lines) - 1) / 2) * 0.05  # keep error bars of lines apart
        ax.errorbar([x + shift for x, _ in pts], [_num(r["value"]) for _, r in pts],
                    yerr=_yerr([r for _, r in pts]), marker="o", capsize=3,
                    label=f"half-life {hl}")
    ax.set_xticks(range(len(order)), order)
    ax.set_xlabel("profile refresh interval (ordinal)")
    ax.set_ylabel(f"{metric} (95% CI)")
    ax.set_title(f"{task}: value of freshness")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)


def _plot_calibration(path: Path, curves: dict[str, dict[str, list[float]]]) -> None:
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="black", linewidth=1, label="perfect")
    for method, c in curves.items():
        ax.plot(c["mean_pred"], c["frac_pos"], marker="o", label=method)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed fraction positive")
    ax.set_title("Calibration")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------- markdown


def _cell(row: Row | None, bold: bool) -> str:
    if row is None or not math.isfinite(_num(row["value"])):
        return "—"
    lo, hi = _num(row.get("ci_low")), _num(row.get("ci_high"))
    text = f"{_num(row['value']):.4f}"
    if math.isfinite(lo) and math.isfinite(hi):
        text += f" [{lo:.4f}, {hi:.4f}]"
    return f"**{text}**" if bold else text


def _best_values(metrics: list[str], entries: list[tuple[str, str, dict[str, Row]]]) -> dict[
        str, float]:
    best: dict[str, float] = {}
    for m in metrics:
        vals = [_num(c[m]["value"]) for _, _, c in entries if m in c]
        vals = [v for v in vals if math.isfinite(v)]
        if vals:
            best[m] = max(vals) if higher_is_better(m) else min(vals)
    return best


def _md_table(rows: list[Row], task: str) -> list[str]:
    metrics, entries = _table(rows, task)
    best = _best_values(metrics, entries)
    out = [
        "| method | kind | " + " | ".join(metrics) + " | users |",
        "|---|---|" + "---|" * len(metrics) + "---:|",
    ]
    for label, kind, cells in entries:
        vals = [_cell(cells.get(m), m in best and _num(cells[m]["value"]) == best[m])
                if m in cells else "—" for m in metrics]
        n = next((c.get("n_users") for c in cells.values() if c.get("n_users") is not None), "")
        out.append(f"| {label} | {kind} | " + " | ".join(vals) + f" | {n} |")
    return out


def _md_protocol(report: dict[str, Any]) -> list[str]:
    out = [f"- **machine**: {report.get('machine', '?')}",
           f"- **run time**: {_num(report.get('seconds')):.1f} s"]
    for key, value in (report.get("protocol") or {}).items():
        if key == "notes":
            continue
        shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        out.append(f"- **{key}**: {shown}")
    for note in (report.get("protocol") or {}).get("notes") or []:
        out.append(f"- note: {note}")
    return out


def _md_freshness(out_dir: Path, report: dict[str, Any], tasks: list[str]) -> list[str]:
    order = _refresh_order(report)
    warm = [r for r in report.get("results", []) if _users(r) == "warm"]
    out: list[str] = []
    for task in tasks:
        metric = headline(warm, task) if any(r["task"] == task for r in warm) else None
        rows = [r for r in warm if r["task"] == task and r["metric"] == metric
                and r.get("refresh") is not None]
        if metric is None or len({str(r["refresh"]) for r in rows}) < 2:
            continue  # a curve needs two refresh intervals at least
        lines, skipped = _freshness_lines(rows, order)
        png = f"freshness_{_safe(task)}.png"
        _plot_freshness(out_dir / png, task, metric, order, lines)
        out += [f"### {task}: {metric}", "", "| half-life | " + " | ".join(order) + " |",
                "|---|" + "---|" * len(order)]
        out += [f"| {hl} | " + " | ".join(_cell(r, False) for r in line) + " |"
                for hl, line in lines.items()]
        if skipped:
            out.append(f"\n{skipped} row(s) repeating a (half-life, refresh) pair were not shown.")
        out += ["", f"![{task} freshness]({png})", ""]
    if not out:
        return []
    return ["## Freshness-value curve", "",
            "Metric against how often profiles are refreshed (warm users), one line per "
            "half-life; staler profiles to the right.", "", *out]


def _markdown(out_dir: Path, report: dict[str, Any], verdict_list: list[dict[str, Any]]) -> str:
    stamp = str(report.get("generated_at", ""))
    md = [f"# Evaluation report: {report.get('dataset', '?')} ({stamp[:10]})", "",
          f"Generated {stamp}.", "", "## Protocol", "", *_md_protocol(report), ""]
    warm = main_rows(report)
    fresh = _freshest(report)
    tasks = _tasks(report.get("results", []))
    for task in [t for t in tasks if any(r["task"] == t for r in warm)]:
        md += [f"## Task: {task}", "", "Warm users; values are means with 95% bootstrap CIs"
               + (f"; dynamic rows at refresh {fresh}" if fresh else "") + ".", "",
               *_md_table(warm, task), ""]
        metric = headline(warm, task)
        png = f"methods_{_safe(task)}.png"
        if _plot_methods(out_dir / png, task, metric, _table(warm, task)[1]):
            md += [f"![{task}: {metric} by method]({png})", ""]
    cold = main_rows(report, "cold")
    if cold:
        md += ["## Cold start", "", "Users with no history before the cut.", ""]
        for task in _tasks(cold):
            md += [f"### {task}", "", *_md_table(cold, task), ""]
    md += _md_freshness(out_dir, report, tasks)
    calibration = (report.get("curves") or {}).get("calibration")
    if calibration:
        _plot_calibration(out_dir / "calibration.png", calibration)
        md += ["## Calibration", "", "![calibration](calibration.png)", ""]
    if verdict_list:
        md += ["## Verdict", ""]
        md += [f"- **{v['task']} / {v['metric']}**: {v['text']}" for v in verdict_list]
        md.append("")
    return "\n".join(md)


def write_report(out_dir: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Write report.json (with "verdicts" added), report.md and the plots; return report.md.

    The caller's dict is not modified. NaN values become null in the JSON.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full = {**report, "verdicts": verdicts(report)}
    (out / "report.json").write_bytes(
        orjson.dumps(full, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    path = out / "report.md"
    path.write_text(_markdown(out, full, full["verdicts"]), encoding="utf-8")
    return path
