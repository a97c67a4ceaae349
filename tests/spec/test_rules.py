"""Segment rules: parsing, errors, limits, and evaluate == to_polars."""

from __future__ import annotations

import math
from collections.abc import Mapping

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portrait.errors import RuleError
from portrait.spec.model import FeatureSpec
from portrait.spec.rules import (
    MAX_DEPTH,
    MAX_RULE_CHARS,
    And,
    Compare,
    Lookup,
    Not,
    Num,
    Or,
    Ref,
    Rule,
    Str,
    evaluate,
    parse_rule,
    referenced_features,
    to_polars,
)

FEATURES: dict[str, FeatureSpec] = {
    f.name: f
    for f in (
        FeatureSpec("n", "count", 1),
        FeatureSpec("x", "avg", 2, field="price"),
        FeatureSpec("y", "sum", 3, field="price"),
        FeatureSpec("s", "last", 4, field="item_id"),
        FeatureSpec("t", "first", 5, field="type"),
        FeatureSpec("m", "top_k", 6, key="category", k=3),
        FeatureSpec("d", "decayed", 7, key="category", half_life_us=10**6),
        FeatureSpec("act", "decayed", 8, half_life_us=10**6),
    )
}
MAP = pl.List(pl.Struct({"key": pl.String, "value": pl.Float64}))
SCHEMA: dict[str, pl.DataType] = {
    "n": pl.Int64(), "x": pl.Float64(), "y": pl.Float64(), "s": pl.String(), "t": pl.String(),
    "m": MAP, "d": MAP, "act": pl.Float64(),
}


def parse(text: str) -> Rule:
    return parse_rule(text, features=FEATURES)


def frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    def column(name: str, value: object) -> object:
        if SCHEMA[name] == MAP and isinstance(value, Mapping):
            return [{"key": k, "value": v} for k, v in value.items()]
        return value

    data = {name: [column(name, row.get(name)) for row in rows] for name in SCHEMA}
    return pl.DataFrame(data, schema=SCHEMA)


def vectorised(rule: Rule, rows: list[dict[str, object]]) -> list[bool]:
    out = frame(rows).select(to_polars(rule).alias("in_segment")).to_series()
    assert out.dtype == pl.Boolean
    assert out.null_count() == 0
    return out.to_list()


def both(text: str, row: dict[str, object]) -> bool:
    """evaluate and to_polars on one row; they must agree."""
    rule = parse(text)
    scalar = evaluate(rule, row)
    assert vectorised(rule, [row]) == [scalar], text
    return scalar


# --- parsing ---------------------------------------------------------------------

N1 = Compare(">", Ref("n", "number"), Num(1))
X2 = Compare("<", Ref("x", "number"), Num(2.5))
S_A = Compare("==", Ref("s", "string"), Str("a"))


def test_parse_nodes() -> None:
    assert parse("n > 1") == N1
    assert parse("x<2.5") == X2
    assert parse("s == 'a'") == S_A
    assert parse('s == "a"') == S_A
    assert parse("m['Sci-Fi'] >= -3") == Compare(">=", Lookup("m", "Sci-Fi"), Num(-3))
    assert parse('d["a b"] != 1e3') == Compare("!=", Lookup("d", "a b"), Num(1000.0))
    assert parse("1 <= n") == Compare("<=", Num(1), Ref("n", "number"))
    assert parse("(n) > (1)") == N1
    assert parse("\tn\n>\r\n1 ") == N1


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("-7", -7), ("2.5", 2.5), ("-0.5", -0.5), ("1e3", 1000.0), ("1E-2", 0.01),
     ("9223372036854775807", 2**63 - 1), ("9223372036854775808", float(2**63)),
     ("1e999", math.inf), ("-" + "9" * 5000, -math.inf)],
)
def test_numbers(text: str, value: float) -> None:
    rule = parse(f"n == {text}")
    assert isinstance(rule, Compare)
    assert rule.right == Num(value)
    assert type(rule.right.value) is type(value)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "value"),
    [(r"'it\'s'", "it's"), (r'"say \"hi\""', 'say "hi"'), (r"'a\\b'", "a\\b"),
     ("'\"'", '"'), ('"\'"', "'"), ("''", ""), ("'and or not'", "and or not")],
)
def test_strings_and_escapes(text: str, value: str) -> None:
    assert parse(f"s == {text}") == Compare("==", Ref("s", "string"), Str(value))


def test_precedence_and_binds_tighter_than_or() -> None:
    rule = parse("n > 1 or x < 2.5 and s == 'a'")
    assert rule == Or((N1, And((X2, S_A))))
    # n > 1 alone decides it: with 'or' first this would be false.
    assert both("n > 1 or x < 2.5 and s == 'a'", {"n": 5, "x": 9.0, "s": "b"})
    assert not both("(n > 1 or x < 2.5) and s == 'a'", {"n": 5, "x": 9.0, "s": "b"})


def test_parentheses_group() -> None:
    assert parse("(n > 1 or x < 2.5) and s == 'a'") == And((Or((N1, X2)), S_A))
    assert parse("((n > 1))") == N1
    assert parse("n > 1 and x < 2.5 and s == 'a'") == And((N1, X2, S_A))
    assert parse("n > 1 or (x < 2.5 or s == 'a')") == Or((N1, Or((X2, S_A))))


def test_not_binds_tighter_than_and() -> None:
    assert parse("not n > 1 and x < 2.5") == And((Not(N1), X2))
    assert parse("not (n > 1 and x < 2.5)") == Not(And((N1, X2)))
    assert parse("not not n > 1") == Not(Not(N1))
    assert both("not n > 1 and x < 2.5", {"n": 0, "x": 1.0})
    assert not both("not (n > 1 and x < 2.5)", {"n": 5, "x": 1.0})


def test_keywords_are_case_sensitive() -> None:
    with pytest.raises(RuleError, match="column 7: unexpected 'AND'"):
        parse("n > 1 AND x < 2")
    with pytest.raises(RuleError, match="unknown feature 'NOT'"):
        parse("NOT n > 1")


def test_referenced_features() -> None:
    assert referenced_features(parse("n > 1 or not (m['a'] > x and 'q' == t)")) == {
        "n", "m", "x", "t"
    }
    assert referenced_features(parse("1 < 2")) == frozenset()


def test_rules_are_hashable_values() -> None:
    assert hash(parse("n > 1 and x < 2.5")) == hash(parse("n>1   and x<2.5"))


# --- errors ----------------------------------------------------------------------

RULE_ERRORS = [
    ("", 1, "empty rule"),
    ("   ", 1, "empty rule"),
    ("n", 1, "a value is not a condition; compare it (e.g. n > 0)"),
    ("n > 1 and x", 11, "a value is not a condition"),
    ("not x", 5, "a value is not a condition"),
    ("5", 1, "a value is not a condition"),
    ("n > 1 and (m['a'])", 11, "a value is not a condition"),
    ("n < x < 3", 7, "comparisons do not chain"),
    ("(n > 1) == 1", 1, "a condition cannot be compared"),
    ("n > (x < 1)", 5, "a condition cannot be compared"),
    ("nn > 1", 1, "unknown feature 'nn'"),
    ("n > 1 or zz['a'] > 1", 10, "unknown feature 'zz'"),
    ("m > 1", 1, "feature 'm' is a map (top_k); look up one key: m['key']"),
    ("1 < d", 5, "feature 'd' is a map (decayed)"),
    ("n['a'] > 1", 1, "feature 'n' (count) is not a map"),
    ("act['a'] > 1", 1, "feature 'act' (decayed) is not a map"),
    ("m[a] > 1", 3, "a key must be a quoted string"),
    ("m[1] > 1", 3, "a key must be a quoted string"),
    ("m['a' > 1", 7, "expected ']' after the key"),
    ("m['a'", 6, "expected ']' after the key"),
    ("(n > 1", 1, "this '(' is never closed"),
    ("(n > 1 n", 8, "expected ')'"),
    ("n > 1)", 6, "unexpected ')'"),
    ("n > 1 x < 2", 7, "unexpected 'x'"),
    ("n >", 4, "got the end of the rule"),
    ("and n > 1", 1, "got 'and'"),
    ("n > 1 and", 10, "got the end of the rule"),
    ("n > 1 or or x > 1", 10, "got 'or'"),
    ("n = 1", 3, "unexpected character '=' (use '==' to compare)"),
    ("n > 1 && x > 1", 7, "(use 'and')"),
    ("n > 1 || x > 1", 7, "(use 'or')"),
    ("!(n > 1)", 1, "(use 'not' or '!=')"),
    ("n > 1.", 5, "bad number '1.'"),
    ("n > 1abc", 5, "bad number"),
    ("n > .5", 5, "unexpected character '.'"),
    ("n > - 1", 5, "unexpected character '-'"),
    ("n > --1", 5, "unexpected character '-'"),
    ("s == 'abc", 6, "unterminated string"),
    ('s == "abc\\"', 6, "unterminated string"),
    ("s == 'a\\nb'", 8, "unknown escape"),
    ("é > 1", 1, "unexpected character 'é'"),
    ("n > 1 ; x > 1", 7, "unexpected character ';'"),
    ("__import__('os') > 1", 1, "unknown feature '__import__'"),
    ("__import__('os').system('x') > 1", 17, "unexpected character '.'"),
    ("n.real > 1", 2, "unexpected character '.'"),
]


@pytest.mark.parametrize(("text", "column", "fragment"), RULE_ERRORS)
def test_rule_errors_name_the_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(RuleError) as info:
        parse_rule(text, features=FEATURES, source="spec.yaml", line=12, label="segments.s")
    message = str(info.value)
    assert message.startswith(f"spec.yaml:12: segments.s: column {column}: "), message
    assert fragment in message
    assert info.value.line == 12


def test_multiline_rule_errors_count_lines_inside_the_rule() -> None:
    with pytest.raises(RuleError) as info:
        parse_rule("n > 1\n  and\n  zz > 2", features=FEATURES, line=40)
    assert info.value.line == 42
    assert "rule: rule line 3, column 3: unknown feature 'zz'" in str(info.value)


def test_rule_without_line() -> None:
    with pytest.raises(RuleError) as info:
        parse_rule("zz > 1", features=FEATURES)
    assert info.value.line is None
    assert str(info.value).startswith("<rule>: rule: column 1:")


# --- limits ----------------------------------------------------------------------


def test_nesting_up_to_the_limit_parses() -> None:
    deep = "(" * MAX_DEPTH + "n > 1" + ")" * MAX_DEPTH
    assert parse(deep) == N1
    nots = "not " * MAX_DEPTH + "n > 1"
    assert both(nots, {"n": 2}) is (MAX_DEPTH % 2 == 0)
    mixed = "not (" * (MAX_DEPTH // 2) + "n > 1" + ")" * (MAX_DEPTH // 2)
    assert isinstance(parse(mixed), Not)


@pytest.mark.parametrize(
    "text",
    [
        "(" * (MAX_DEPTH + 1) + "n > 1" + ")" * (MAX_DEPTH + 1),
        "not " * (MAX_DEPTH + 1) + "n > 1",
        "not (" * 33 + "n > 1" + ")" * 33,
        "(" * 4990 + "n > 1" + ")" * 4990,
        "not " * 2400 + "n > 1",
        "(" * 9000,
    ],
)
def test_nesting_beyond_the_limit_is_a_rule_error(text: str) -> None:
    with pytest.raises(RuleError, match=f"nests deeper than {MAX_DEPTH}"):
        parse(text)


def test_length_limit() -> None:
    term = "n > 1 or "
    text = term * ((MAX_RULE_CHARS - 5) // len(term)) + "n > 1"
    text += " " * (MAX_RULE_CHARS - len(text))
    assert len(text) == MAX_RULE_CHARS
    rule = parse(text)
    assert isinstance(rule, Or)
    assert len(rule.operands) > 1000
    # A wide rule evaluates without deep recursion, in both ways.
    assert both(text, {"n": 2})
    assert not both(text, {"n": 1})
    with pytest.raises(RuleError, match=f"the limit is {MAX_RULE_CHARS}"):
        parse(text + " ")


# --- semantics ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "row", "expected"),
    [
        ("m['a'] == 0", {"m": {}}, True),
        ("m['a'] == 0", {"m": None}, True),
        ("m['a'] == 0", {}, True),
        ("m['a'] == 0", {"m": {"b": 2.0}}, True),
        ("m['a'] >= 0 and m['a'] <= 0", {"m": {"b": 2.0}}, True),
        ("m['a'] > 1", {"m": {"a": 2.0}}, True),
        ("m['a'] > 1", {"m": {"a": 2}}, True),
        ("d['Sci-Fi'] > 2.5", {"d": {"Sci-Fi": 2.5}}, False),
        ("not m['a'] > 0", {"m": None}, True),
    ],
)
def test_missing_key_reads_as_zero(text: str, row: dict[str, object], expected: bool) -> None:
    assert both(text, row) is expected


@pytest.mark.parametrize(
    ("text", "row", "expected"),
    [
        # a comparison with null is unknown, and unknown is not membership...
        ("n > 1", {"n": None}, False),
        ("not n > 1", {"n": None}, False),
        ("n != 1", {"n": None}, False),
        ("n == n", {}, False),
        # ...but Kleene logic still decides where it can
        ("n > 1 or x > 1", {"n": None, "x": 2.0}, True),
        ("n > 1 or x > 1", {"n": None, "x": 0.0}, False),
        ("not (n > 1 or x > 1)", {"n": None, "x": 0.0}, False),
        ("n > 1 and x > 1", {"n": None, "x": 0.0}, False),
        ("not (n > 1 and x > 1)", {"n": None, "x": 0.0}, True),
        ("not (n > 1 and x > 1)", {"n": None, "x": 2.0}, False),
        ("not not n > 1", {"n": None}, False),
        # string vs number is unknown, not an error
        ("s == 1", {"s": "1"}, False),
        ("not s == 1", {"s": "1"}, False),
        ("not s != 1", {"s": "1"}, False),
        ("not 'a' < 1", {}, False),
        ("not (s > 0 and n > 0)", {"s": "a", "n": 0}, True),
        ("s > 0 or n > 0", {"s": "a", "n": 1}, True),
        ("s == t", {"s": "a", "t": "a"}, True),
        ("n < t", {"n": 1, "t": "a"}, False),
        ("not n < t", {"n": 1, "t": "a"}, False),
        # ordinary comparisons
        ("s < 'b'", {"s": "a"}, True),
        ("s < 'B'", {"s": "a"}, False),
        ("s < 'é'", {"s": "z"}, True),
        ("s >= ''", {"s": ""}, True),
        ("n == 2.0", {"n": 2}, True),
        ("n < 2.5", {"n": 2}, True),
        ("x == 2", {"x": 2.0}, True),
        ("x < y", {"x": 1.0, "y": 1.5}, True),
        ("x == -0.0", {"x": 0.0}, True),
        ("n < 1e999", {"n": 2**62}, True),
        ("n == 9007199254740993", {"n": 2**53 + 1}, True),
        ("1 < 2", {}, True),
        ("2 < 1", {}, False),
        ("'b' > 'a'", {}, True),
    ],
)
def test_null_and_type_semantics(text: str, row: dict[str, object], expected: bool) -> None:
    assert both(text, row) is expected


def test_nan_follows_the_polars_order() -> None:
    nan = math.nan
    assert both("x == y", {"x": nan, "y": nan})
    assert both("x > 1e999", {"x": nan})
    assert not both("x < 0", {"x": nan})
    assert both("x != 1", {"x": nan})


def test_to_polars_broadcasts_constant_rules() -> None:
    rows: list[dict[str, object]] = [{"n": 1}, {"n": 2}, {"n": None}]
    assert vectorised(parse("1 < 2"), rows) == [True, True, True]
    assert vectorised(parse("'a' < 2"), rows) == [False, False, False]
    # references a feature, yet is constant: string vs number is always unknown
    assert vectorised(parse("not '' < n"), rows) == [False, False, False]
    df = frame(rows)
    assert df.filter(to_polars(parse("n > 1"))).height == 1
    assert df.filter(to_polars(parse("1 < 2"))).height == 3
    assert df.head(0).select(to_polars(parse("1 < 2"))).height == 0


def test_to_polars_keeps_one_row_per_profile_when_a_map_column_is_all_null() -> None:
    # Regression: Polars 2.1 gave one row for `0 < <lookup>` on an all-null
    # List(Struct) column, so a select over N profiles returned 1 value.
    rows: list[dict[str, object]] = [{}, {}, {}]
    assert vectorised(parse("0 < m['a']"), rows) == [False, False, False]
    assert vectorised(parse("not 0 < m['a']"), rows) == [True, True, True]
    assert vectorised(parse("0 <= d['a'] and 1 < 2"), rows) == [True, True, True]


def test_evaluate_ignores_unrelated_values() -> None:
    assert evaluate(parse("n > 1"), {"n": 2, "other": object()})


def test_evaluate_treats_values_of_the_wrong_type_as_unknown() -> None:
    for rule in ("n > 1", "not n > 1"):
        assert not evaluate(parse(rule), {"n": "2"})
    for rule in ("m['a'] > 1", "not m['a'] > 1"):
        assert not evaluate(parse(rule), {"m": {"a": "2"}})
        assert not evaluate(parse(rule), {"m": [("a", 2.0)]})


# --- fuzzing ---------------------------------------------------------------------

TOKENS = [
    "n", "x", "s", "t", "m", "d", "act", "zz", "and", "or", "not", "AND", "(", ")", "(", ")",
    "[", "]", "'a'", '"b"', "'", '"', "\\", "<", "<=", ">", ">=", "==", "!=", "=", "!", "1",
    "-1", "2.5", "1e", "-", ".", "m['a']", "d[\"b\"]", " ", "\n", "é", "\x00",
]


def _ok_or_rule_error(text: str) -> Rule | None:
    try:
        return parse(text)
    except RuleError:
        return None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text_only_raises_rule_error(text: str) -> None:
    _ok_or_rule_error(text)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))
def test_fuzz_token_soup_only_raises_rule_error(text: str) -> None:
    rule = _ok_or_rule_error(text)
    if rule is not None:  # anything that parses also runs, both ways
        both(text, {})


@given(st.lists(st.sampled_from(TOKENS), max_size=30).map(" ".join))
def test_fuzz_spaced_tokens_only_raise_rule_error(text: str) -> None:
    _ok_or_rule_error(text)


# --- evaluate == to_polars ----------------------------------------------------------

KEYS = ["a", "b", "Sci-Fi"]
WORDS = ["", "a", "b", "B", "é", "it's", 'say "hi"', "a\\b", "1"]
BIG = 2**60


def _quote(word: str, quote: str) -> str:
    return quote + word.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


numbers = st.one_of(
    st.integers(-3, 3).map(str),
    st.sampled_from(["2.5", "-0.5", "0.0", "-0.0", "1e999", "-1e999", str(BIG), str(BIG + 1),
                     f"{float(BIG)!r}"]),
)
strings = st.builds(_quote, st.sampled_from(WORDS), st.sampled_from(["'", '"']))
lookups = st.builds(lambda f, k, q: f"{f}[{_quote(k, q)}]", st.sampled_from(["m", "d"]),
                    st.sampled_from([*KEYS, "zz"]), st.sampled_from(["'", '"']))
operands = st.one_of(numbers, strings, st.sampled_from(["n", "x", "y", "s", "t", "act"]), lookups)
comparisons = st.builds(
    lambda a, op, b: f"{a} {op} {b}", operands,
    st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), operands,
)


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        children.map(lambda r: f"({r})"),
        children.map(lambda r: f"not {r}"),
        st.lists(children, min_size=2, max_size=4).map(" and ".join),
        st.lists(children, min_size=2, max_size=4).map(" or ".join),
    )


rule_texts = st.recursive(comparisons, _extend, max_leaves=12)
maybe_float = st.one_of(
    st.none(), st.sampled_from([math.nan, math.inf, -math.inf, -0.0, float(BIG)]),
    st.floats(-4, 4).map(lambda v: round(v, 1)),
)
maybe_int = st.one_of(st.none(), st.integers(-3, 3), st.sampled_from([BIG, BIG + 1]))
maybe_word = st.one_of(st.none(), st.sampled_from(WORDS))
maybe_map = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(KEYS), st.one_of(st.none(), maybe_float.filter(
        lambda v: v is not None)), max_size=3),
)
rows = st.fixed_dictionaries({
    "n": maybe_int, "x": maybe_float, "y": maybe_float, "s": maybe_word, "t": maybe_word,
    "m": maybe_map, "d": maybe_map, "act": maybe_float,
})


@settings(max_examples=300, deadline=None)
@given(rule_texts, st.lists(rows, min_size=1, max_size=8))
def test_evaluate_equals_to_polars(text: str, table: list[dict[str, object]]) -> None:
    rule = parse(text)
    assert vectorised(rule, table) == [evaluate(rule, row) for row in table]
