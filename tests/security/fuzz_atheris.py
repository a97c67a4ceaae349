"""Coverage-guided fuzzing (atheris) of the JSON Lines reader and the rule parser.

Not a pytest module (nor a dependency): an optional, longer hunt than the
hypothesis tests beside it. A crash (a segfault in a native reader, an
exception other than the documented one, a record lost) stops it and saves the
input as ``crash-*``. Run it from the repository root:

    .venv/bin/pip install atheris
    .venv/bin/python tests/security/fuzz_atheris.py jsonl -max_total_time=300

(``rule`` instead of ``jsonl`` for the rule parser; any libFuzzer flag works,
e.g. a corpus directory or ``-runs=N``.)
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["portrait"]):
    from portrait.errors import RuleError
    from portrait.events.jsonl import validate_run
    from portrait.events.lines import LineSource
    from portrait.spec.loader import load_spec
    from portrait.spec.rules import MAX_RULE_CHARS, evaluate, parse_rule

SPEC = Path(__file__).resolve().parents[2] / "src" / "portrait" / "data" / "spec.yaml"
FEATURES = load_spec(SPEC).features


def fuzz_jsonl(data: bytes) -> None:
    """Every non-blank line of the input comes out as one event or one dead letter."""
    fdp = atheris.FuzzedDataProvider(data)
    batch = fdp.ConsumeIntInRange(1, 8)
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    source = LineSource(io.BytesIO(body))
    while (run := source.take(batch)) is not None:
        events, rejects = validate_run(run, "fuzz")
        lines = set(events["_line"].to_list()) | {d.line for d in rejects}
        assert events.height + len(rejects) == len(lines)
        nonblank = {run.first_line + i for i, blank in enumerate(run.blank()) if not blank}
        assert lines == nonblank, (lines, nonblank)
        assert all(d.reason for d in rejects)


def fuzz_rule(data: bytes) -> None:
    """A rule is a RuleError or a rule that evaluates to a bool; nothing else."""
    fdp = atheris.FuzzedDataProvider(data)
    text = fdp.ConsumeUnicode(MAX_RULE_CHARS + 10)
    try:
        rule = parse_rule(text, features=FEATURES)
    except RuleError:
        return
    assert isinstance(evaluate(rule, {}), bool)


def main() -> None:
    targets = {"jsonl": fuzz_jsonl, "rule": fuzz_rule}
    if len(sys.argv) < 2 or sys.argv[1] not in targets:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(targets)}}} [libFuzzer flags]")
    target = targets[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
