"""Fuzzing the segment rule language and the spec loader (issue #6, item 8).

``tests/spec/test_rules.py`` fuzzes ``parse_rule`` with random text and token
soups; here: nothing a rule, a spec or an audience query says is ever run as
code (an audit hook watches for ``exec``, ``compile``, processes and file
writes while they are parsed and evaluated, and a canary file must not
appear); generated rules print and parse back to the same tree, and mutants
of them are a :class:`~portrait.errors.RuleError` or a rule; the loader
agrees with "decode the YAML, then ``parse_rule``" on every generated
segment; and 10,000-character pathological rules fail fast with a RuleError,
never a RecursionError.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from tests.security.common import bounded, fuzz
from tests.serve.harness import SPEC

from portrait.audience import select
from portrait.errors import RuleError, SpecError
from portrait.spec.loader import load_spec, parse_spec
from portrait.spec.rules import (
    MAX_DEPTH,
    MAX_RULE_CHARS,
    And,
    Compare,
    Lookup,
    Not,
    Num,
    Operand,
    Or,
    Ref,
    Rule,
    Str,
    evaluate,
    parse_rule,
    to_polars,
)

SPEC_TEXT = SPEC.read_text(encoding="utf-8")
FEATURES = load_spec(SPEC).features
NUMBERS = sorted(n for n, f in FEATURES.items() if not f.keyed and f.value_type != "string")
STRINGS = sorted(n for n, f in FEATURES.items() if not f.keyed and f.value_type == "string")
MAPS = sorted(n for n, f in FEATURES.items() if f.keyed)


# --- "nothing runs": an audit hook ---------------------------------------------------

_FORBIDDEN = ("exec", "compile", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
              "os.fork", "subprocess.Popen", "ctypes.", "pickle.", "marshal.load",
              "socket.", "os.remove", "os.rename", "os.mkdir", "shutil.")
_watched: dict[int, list[str]] = {}  # thread id -> forbidden events seen while watching


def _audit(event: str, args: tuple[object, ...]) -> None:
    seen = _watched.get(threading.get_ident())
    if seen is None:
        return
    if event.startswith(_FORBIDDEN) or (
        event == "open" and len(args) > 1 and args[1] not in (None, "r", "rb")
    ):
        seen.append(f"{event}{args!r:.200}")


sys.addaudithook(_audit)  # inert outside `nothing_runs` (hooks cannot be removed)


@contextlib.contextmanager
def nothing_runs() -> Iterator[None]:
    """Fail if code is compiled or executed, a process started or a file written inside."""
    seen: list[str] = []
    _watched[threading.get_ident()] = seen
    try:
        yield
    finally:
        del _watched[threading.get_ident()]
    assert seen == [], seen


def _profiles() -> pl.DataFrame:
    """A few profile rows with every feature of the reference spec (maps as key/value lists)."""
    data: dict[str, list[object]] = {"user_id": ["a", "b", "c"]}
    schema: dict[str, pl.DataType] = {"user_id": pl.String()}
    entry = pl.List(pl.Struct({"key": pl.String, "value": pl.Float64}))
    for name in FEATURES:
        if name in MAPS:
            data[name] = [[{"key": "Sci-Fi", "value": 3.0}], [], None]
            schema[name] = entry
        elif name in STRINGS:
            data[name] = ["x", "__class__", None]
            schema[name] = pl.String()
        else:
            data[name] = [1.5, 0.0, None]
            schema[name] = pl.Float64()
    return pl.DataFrame(data, schema=schema)


PROFILES = _profiles()


def _run_everywhere(text: str) -> Rule | None:
    """Parse ``text`` as a rule, a spec segment and an audience query, and evaluate it
    every way there is; None when it is refused (always with a RuleError)."""
    try:
        rule = parse_rule(text, features=FEATURES)
    except RuleError:
        rule = None
    quoted = json.dumps(text)  # a YAML double-quoted scalar, unless escapes differ:
    spec = SPEC_TEXT + f"  fuzz: {quoted}\n" if yaml.safe_load(quoted) == text else None
    if rule is None:
        if spec is not None:
            with pytest.raises(SpecError):
                parse_spec(spec)
        with pytest.raises(RuleError):
            select(PROFILES, text, FEATURES)
        return None
    if spec is not None:
        assert parse_spec(spec).segments["fuzz"].rule == rule
    for row in PROFILES.iter_rows(named=True):
        assert isinstance(evaluate(rule, row), bool)
    out = PROFILES.select(to_polars(rule)).to_series()
    assert out.dtype == pl.Boolean
    assert select(PROFILES, text, FEATURES).population == PROFILES.height
    return rule


_run_everywhere("events_total > 1 and not (last_item == 'x' or category_affinity['a'] >= 2)")


def _payloads(canary: Path) -> list[str]:
    touch = f"__import__('os').system('touch {canary}')"
    return [
        f"{touch} > 1",
        f"events_total > 1 or {touch}",
        f"events_total > ({touch})",
        f"eval(\"{touch}\") > 0",
        f"exec('{touch}') > 0",
        f"open('{canary}', 'w') > 0",
        "().__class__.__bases__[0].__subclasses__() > 0",
        "events_total.__class__ > 1",
        "events_total > 1; import os",
        "events_total > 1 # comment",
        f"events_total > `touch {canary}`",
        f"events_total > $(touch {canary})",
        "lambda: 1 > 0",
        "f'{1}' > 0",
        "[x for x in ()] > 0",
        "{{7*7}} > 0",
        "${jndi:ldap://127.0.0.1/x} > 0",
        f"pl.col('x').map_elements(lambda v: {touch}) > 0",
        f"category_affinity[{touch}] > 0",
        "category_affinity['__class__'] > 0",  # a key is only a key: parses, reads 0
        "last_item == '__import__(\"os\")'",  # a string is only a string
        "'; DROP TABLE events; --' == last_item",
        "events_total > 1\x00__import__('os')",
    ]


def test_no_rule_runs_code(tmp_path: Path) -> None:
    canary = tmp_path / "PWNED"
    parsed = []
    for text in _payloads(canary):
        with nothing_runs():
            rule = _run_everywhere(text)
        if rule is not None:
            parsed.append(text)
    assert not canary.exists()
    assert parsed == [  # the only payloads that are rules: a key and strings, never code
        "category_affinity['__class__'] > 0",
        "last_item == '__import__(\"os\")'",
        "'; DROP TABLE events; --' == last_item",
    ]


@pytest.mark.parametrize(
    "yaml_text",
    [
        "segments:\n  s: !!python/object/apply:os.system ['touch {c}']\n",
        "segments: !!python/object/apply:os.system ['touch {c}']\n",
        "segments:\n  s: !!python/object/new:subprocess.Popen [['touch', '{c}']]\n",
        "interactions: {{view: !!python/object/apply:os.system ['touch {c}']}}\n",
        "privacy: !!python/object/apply:subprocess.check_call [['touch', '{c}']]\n",
    ],
)
def test_no_spec_runs_code(tmp_path: Path, yaml_text: str) -> None:
    canary = tmp_path / "PWNED"
    text = SPEC_TEXT.split("segments:")[0] + yaml_text.format(c=canary)
    with nothing_runs(), pytest.raises(SpecError, match="unsupported YAML tag"):
        parse_spec(text)
    assert not canary.exists()


def test_the_audit_hook_sees_code_run() -> None:
    """The watch itself works: what it must catch, it catches."""
    with pytest.raises(AssertionError, match="exec"), nothing_runs():
        exec("1 + 1")


# --- generated rules: print, parse back, mutate ------------------------------------


def _quote(value: str, quote: str) -> str:
    return quote + value.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


def _num(value: int | float) -> str:
    return str(value) if isinstance(value, int) else repr(value)


def show(node: Rule | Operand, quote: str = "'") -> str:
    """The text of a rule; every sub-condition in parentheses, so the tree is explicit."""
    if isinstance(node, Num):
        return _num(node.value)
    if isinstance(node, Str):
        return _quote(node.value, quote)
    if isinstance(node, Ref):
        return node.name
    if isinstance(node, Lookup):
        return f"{node.name}[{_quote(node.key, quote)}]"
    if isinstance(node, Compare):
        return f"{show(node.left, quote)} {node.op} {show(node.right, quote)}"
    if isinstance(node, Not):
        return f"not ({show(node.operand, quote)})"
    assert isinstance(node, And | Or)
    word = " and " if isinstance(node, And) else " or "
    return word.join(f"({show(n, quote)})" for n in node.operands)


words = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
operands: st.SearchStrategy[Operand] = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(Num),
    st.floats(allow_nan=False, allow_infinity=False).map(Num),
    words.map(Str),
    st.sampled_from(NUMBERS).map(lambda n: Ref(n, "number")),
    st.sampled_from(STRINGS).map(lambda n: Ref(n, "string")),
    st.builds(Lookup, st.sampled_from(MAPS), words),
)
comparisons = st.builds(Compare, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
                        operands, operands)
trees: st.SearchStrategy[Rule] = st.recursive(
    comparisons,
    lambda kids: st.one_of(
        kids.map(Not),
        st.lists(kids, min_size=2, max_size=4).map(lambda k: And(tuple(k))),
        st.lists(kids, min_size=2, max_size=4).map(lambda k: Or(tuple(k))),
    ),
    max_leaves=10,
)


@fuzz(200)
@given(tree=trees, quote=st.sampled_from(["'", '"']))
def test_fuzz_rules_print_and_parse_back(tree: Rule, quote: str) -> None:
    text = show(tree, quote)
    if len(text) > MAX_RULE_CHARS:
        return
    assert parse_rule(text, features=FEATURES) == tree


TOKENS = ["(", ")", "[", "]", "'", '"', "\\", "not ", " and ", " or ", "==", "<", "=", "!",
          "-", ".", "e", "9" * 30, "\x00", "\n", "é", "__import__", "events_total", "#", ";"]


@fuzz(250)
@given(tree=trees, data=st.data())
def test_fuzz_mutated_rules_are_rule_errors_or_rules(tree: Rule, data: st.DataObject) -> None:
    text = show(tree)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace", "repeat"]))
        token = data.draw(st.sampled_from(TOKENS))
        size = data.draw(st.integers(1, 4))
        if action == "insert":
            text = text[:at] + token + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + size:]
        elif action == "replace":
            text = text[:at] + token + text[at + size:]
        else:
            text = text[:at] + text[at:at + size] * 50 + text[at + size:]
    with nothing_runs():
        _run_everywhere(text)


@fuzz(40)
@given(text=st.text(st.characters(), min_size=MAX_RULE_CHARS - 5, max_size=MAX_RULE_CHARS + 5))
def test_fuzz_any_text_at_the_length_limit(text: str) -> None:
    """Full Unicode (lone surrogates, NUL, controls) around the 10,000-character limit."""
    with contextlib.suppress(RuleError):
        parse_rule(text, features=FEATURES)


@fuzz(150)
@given(text=st.one_of(trees.map(show), st.lists(st.sampled_from(TOKENS), max_size=30).map(
    "".join)), style=st.sampled_from(["json", "block"]))
def test_fuzz_the_loader_agrees_with_parse_rule(text: str, style: str) -> None:
    """A segment in a spec: SpecError or the rule parse_rule gives for the decoded YAML,
    with the error on the segment's line or after it."""
    if style == "json":
        segment = f"  fuzz: {json.dumps(text, ensure_ascii=False)}\n"
    else:
        segment = "  fuzz: |\n" + "".join(f"    {line}\n" for line in text.split("\n"))
    spec = SPEC_TEXT + segment
    line = spec.count("\n", 0, spec.index("  fuzz:")) + 1
    try:
        decoded = yaml.safe_load(spec)["segments"]["fuzz"]
    except yaml.YAMLError:
        with pytest.raises(SpecError):
            parse_spec(spec)
        return
    try:
        want: Rule | RuleError = parse_rule(decoded, features=FEATURES)
    except RuleError as exc:
        want = exc
    if isinstance(want, RuleError):
        with pytest.raises(SpecError) as info:
            parse_spec(spec, source="s.yaml")
        assert info.value.line is not None
        assert info.value.line >= line
        assert "segments.fuzz" in str(info.value)
    else:
        assert parse_spec(spec).segments["fuzz"].rule == want


# --- bounded cost ------------------------------------------------------------------

PATHOLOGICAL = [
    "(" * MAX_RULE_CHARS,
    "(" * 5_000 + ")" * 5_000,
    "not " * 2_500,
    "not (" * 2_000,
    "[" * MAX_RULE_CHARS,
    "category_affinity[" * 555,
    "'" * MAX_RULE_CHARS,
    "'" + "\\'" * 4_998 + "'",
    "1" * (MAX_RULE_CHARS - 4) + " > 1",
    "1e" + "9" * (MAX_RULE_CHARS - 6) + " > 1",
    "-" + "9" * (MAX_RULE_CHARS - 5) + " > 1",
    "events_total > 1 and " * 475 + "events_total > 1",
    "events_total" * 833,
    "\x00" * MAX_RULE_CHARS,
    "é" * MAX_RULE_CHARS,
    "\n" * (MAX_RULE_CHARS - 1) + "x",
    "category_affinity['" + "a" * (MAX_RULE_CHARS - 26) + "'] > 1",
]


@pytest.mark.parametrize("text", PATHOLOGICAL, ids=[f"p{i}" for i in range(len(PATHOLOGICAL))])
def test_pathological_rules_are_refused_or_parsed_fast(text: str) -> None:
    assert len(text) <= MAX_RULE_CHARS
    with nothing_runs():
        bounded(lambda: _run_everywhere(text), limit_s=5.0)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 10_000, 100_000])
def test_deep_nesting_is_a_rule_error_not_a_recursion_error(depth: int) -> None:
    """Deeper than allowed is refused by the parser, at any depth and any length."""
    for text in ("(" * depth + "events_total > 1" + ")" * depth,
                 "not " * depth + "events_total > 1", "not (" * depth):
        with pytest.raises(RuleError, match=r"nests deeper|the limit is"):
            bounded(lambda t=text: parse_rule(t, features=FEATURES), limit_s=2.0)
        with pytest.raises(RuleError, match=r"nests deeper|the limit is"):
            bounded(lambda t=text: select(PROFILES, t, FEATURES), limit_s=2.0)
    spec = SPEC_TEXT + f"  deep: \"{'(' * depth}events_total > 1{')' * depth}\"\n"
    with pytest.raises(SpecError, match=r"segments\.deep"):
        bounded(lambda: parse_spec(spec))


def test_nesting_at_the_limit_evaluates_both_ways() -> None:
    text = "not (" * (MAX_DEPTH // 2) + "events_total > 1" + ")" * (MAX_DEPTH // 2)
    rule = parse_rule(text, features=FEATURES)
    assert [evaluate(rule, row) for row in PROFILES.iter_rows(named=True)] == [True, False, False]
    assert PROFILES.select(to_polars(rule)).to_series().to_list() == [True, False, False]
