"""Segment rules: a small, safe expression language, parsed by hand (never ``eval``).

Grammar, loosest binding first::

    rule       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := primary (("<" | "<=" | ">" | ">=" | "==" | "!=") primary)?
    primary    := "(" or ")" | NUMBER | STRING | NAME | NAME "[" STRING "]"

``and``/``or``/``not`` are case-sensitive keywords. Numbers are ``-12``,
``3.5`` or ``1e3``; strings use single or double quotes, with ``\\'``,
``\\"`` and ``\\\\`` as the only escapes. A ``NAME`` is a feature of the
spec; a keyed feature (``top_k``, ``decayed`` with a ``key``) must be looked up
with ``name['key']`` and a scalar one must not. Comparisons do not chain
(``a < b < c`` is an error), and a value is not a condition (``a and b > 1``
is an error when ``a`` is a feature). Rules are at most
:data:`MAX_RULE_CHARS` characters and nest ``(`` / ``not`` at most
:data:`MAX_DEPTH` deep.

Semantics (the same in :func:`evaluate` and :func:`to_polars`):

* A feature with no value is null. A missing key of a keyed feature reads as
  ``0`` (so does a key lookup on a user with no map at all).
* A comparison with a null side is null (unknown). Comparing a string with a
  number is null, not an error. Number with number and string with string
  compare normally (strings by code point). An int and a float compare as
  float64; NaN equals NaN and is greater than every other number (Polars'
  total order).
* ``and``/``or``/``not`` use Kleene logic: ``false and null`` is false,
  ``true or null`` is true, ``not null`` is null.
* The rule holds only when the result is true: a null result means false.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from portrait.errors import RuleError
from portrait.spec.model import FeatureSpec

MAX_RULE_CHARS = 10_000
MAX_DEPTH = 64
KEYWORDS = frozenset({"and", "or", "not"})
_INT64_MAX = 2**63 - 1

ScalarType = Literal["number", "string"]


# --- AST -------------------------------------------------------------------


@dataclass(frozen=True)
class Operand:
    """A value inside a comparison."""


@dataclass(frozen=True)
class Num(Operand):
    value: int | float


@dataclass(frozen=True)
class Str(Operand):
    value: str


@dataclass(frozen=True)
class Ref(Operand):
    """A scalar feature; ``value_type`` is what a read of it gives."""

    name: str
    value_type: ScalarType


@dataclass(frozen=True)
class Lookup(Operand):
    """``name['key']`` on a keyed feature: always a number (0 when missing)."""

    name: str
    key: str


@dataclass(frozen=True)
class Rule:
    """A condition: the root of a parsed rule."""


@dataclass(frozen=True)
class Compare(Rule):
    op: str
    left: Operand
    right: Operand


@dataclass(frozen=True)
class Not(Rule):
    operand: Rule


@dataclass(frozen=True)
class And(Rule):
    operands: tuple[Rule, ...]


@dataclass(frozen=True)
class Or(Rule):
    operands: tuple[Rule, ...]


def _static_type(op: Operand) -> ScalarType:
    if isinstance(op, Ref):
        return op.value_type
    return "string" if isinstance(op, Str) else "number"


# --- tokens ----------------------------------------------------------------


class _Problem(Exception):
    def __init__(self, pos: int, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message


@dataclass(frozen=True)
class _Token:
    kind: str  # "number" | "string" | "name" | "op" | "punct" | "eof"
    text: str
    pos: int
    value: str = ""


_LEXEME = re.compile(
    r"(?P<ws>[ \t\r\n]+)"
    r"|(?P<number>-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op><=|>=|==|!=|<|>)"
    r"|(?P<punct>[()\[\]])"
)
_HINTS = {
    "=": " (use '==' to compare)",
    "!": " (use 'not' or '!=')",
    "&&": " (use 'and')",
    "&": " (use 'and')",
    "||": " (use 'or')",
    "|": " (use 'or')",
}
_WORD_CHAR = re.compile(r"[A-Za-z0-9_.]")


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        if text[pos] in "'\"":
            value, end = _scan_string(text, pos)
            tokens.append(_Token("string", text[pos:end], pos, value))
            pos = end
            continue
        m = _LEXEME.match(text, pos)
        if m is None:
            hint = _HINTS.get(text[pos : pos + 2]) or _HINTS.get(text[pos], "")
            raise _Problem(pos, f"unexpected character {text[pos]!r}{hint}")
        kind = m.lastgroup or ""
        if kind == "number":
            if _WORD_CHAR.match(text, m.end()):
                raise _Problem(pos, f"bad number {text[pos:m.end() + 1]!r}")
            tokens.append(_Token("number", m.group(), pos))
        elif kind != "ws":
            tokens.append(_Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(_Token("eof", "", len(text)))
    return tokens


def _scan_string(text: str, start: int) -> tuple[str, int]:
    quote, pos = text[start], start + 1
    out: list[str] = []
    while pos < len(text):
        ch = text[pos]
        if ch == quote:
            return "".join(out), pos + 1
        if ch == "\\":
            nxt = text[pos + 1 : pos + 2]
            if nxt not in ("'", '"', "\\"):
                raise _Problem(pos, f"unknown escape '\\{nxt}' (only \\', \\\" and \\\\)")
            ch, pos = nxt, pos + 1
        out.append(ch)
        pos += 1
    raise _Problem(start, f"unterminated string starting with {quote}")


def _number(text: str) -> int | float:
    """Integers that fit in int64 stay exact; anything else is a float."""
    if len(text) <= 20 and not any(c in text for c in ".eE"):
        value = int(text)
        if -_INT64_MAX - 1 <= value <= _INT64_MAX:
            return value
    return float(text)


# --- parser ----------------------------------------------------------------

_Parsed = tuple[Rule | Operand, int]


class _Parser:
    def __init__(self, tokens: list[_Token], features: Mapping[str, FeatureSpec]) -> None:
        self.tokens = tokens
        self.features = features
        self.i = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def at_keyword(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "name" and tok.text == word

    def parse(self) -> Rule:
        if self.peek().kind == "eof":
            raise _Problem(0, "empty rule")
        node, pos = self.parse_or()
        tok = self.peek()
        if tok.kind != "eof":
            raise _Problem(tok.pos, f"unexpected {tok.text!r}: expected 'and', 'or' or the end")
        return self.condition(node, pos)

    def parse_or(self) -> _Parsed:
        return self.chain("or", self.parse_and, Or)

    def parse_and(self) -> _Parsed:
        return self.chain("and", self.parse_not, And)

    def chain(
        self, word: str, part: Callable[[], _Parsed], node: type[And] | type[Or]
    ) -> _Parsed:
        items = [part()]
        while self.at_keyword(word):
            self.take()
            items.append(part())
        if len(items) == 1:
            return items[0]
        return node(tuple(self.condition(n, p) for n, p in items)), items[0][1]

    def parse_not(self) -> _Parsed:
        if not self.at_keyword("not"):
            return self.parse_comparison()
        tok = self.take()
        self.enter(tok.pos)
        node, pos = self.parse_not()
        self.depth -= 1
        return Not(self.condition(node, pos)), tok.pos

    def parse_comparison(self) -> _Parsed:
        left, lpos = self.parse_primary()
        op = self.peek()
        if op.kind != "op":
            return left, lpos
        self.take()
        right, rpos = self.parse_primary()
        if self.peek().kind == "op":
            raise _Problem(self.peek().pos, "comparisons do not chain; join them with 'and'")
        return Compare(op.text, self.value(left, lpos), self.value(right, rpos)), lpos

    def parse_primary(self) -> _Parsed:
        tok = self.take()
        if tok.kind == "number":
            return Num(_number(tok.text)), tok.pos
        if tok.kind == "string":
            return Str(str(tok.value)), tok.pos
        if tok.kind == "name" and tok.text not in KEYWORDS:
            return self.reference(tok), tok.pos
        if tok.text == "(":
            self.enter(tok.pos)
            node, _ = self.parse_or()
            close = self.take()
            if close.kind == "eof":
                raise _Problem(tok.pos, "this '(' is never closed")
            if close.text != ")":
                raise _Problem(close.pos, f"expected ')' or 'and'/'or', got {close.text!r}")
            self.depth -= 1
            return node, tok.pos
        found = "the end of the rule" if tok.kind == "eof" else repr(tok.text)
        raise _Problem(tok.pos, f"expected a value, a feature or '(', got {found}")

    def reference(self, tok: _Token) -> Operand:
        feature = self.features.get(tok.text)
        if feature is None:
            known = ", ".join(list(self.features)[:20]) or "none"
            raise _Problem(tok.pos, f"unknown feature {tok.text!r} (features: {known})")
        if self.peek().text != "[":
            if feature.keyed:
                raise _Problem(
                    tok.pos,
                    f"feature {tok.text!r} is a map ({feature.kind}); "
                    f"look up one key: {tok.text}['key']",
                )
            kind = feature.value_type
            return Ref(tok.text, "string" if kind == "string" else "number")
        self.take()
        key = self.take()
        if key.kind != "string":
            raise _Problem(key.pos, "a key must be a quoted string, e.g. ['Sci-Fi']")
        close = self.take()
        if close.text != "]":
            raise _Problem(close.pos, "expected ']' after the key")
        if not feature.keyed:
            raise _Problem(
                tok.pos,
                f"feature {tok.text!r} ({feature.kind}) is not a map; "
                "only top_k and keyed decayed features take ['key']",
            )
        return Lookup(tok.text, str(key.value))

    def enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Problem(pos, f"rule nests deeper than {MAX_DEPTH} levels")

    def condition(self, node: Rule | Operand, pos: int) -> Rule:
        if isinstance(node, Rule):
            return node
        name = node.name if isinstance(node, Ref | Lookup) else "x"
        raise _Problem(pos, f"a value is not a condition; compare it (e.g. {name} > 0)")

    def value(self, node: Rule | Operand, pos: int) -> Operand:
        if isinstance(node, Operand):
            return node
        raise _Problem(pos, "a condition cannot be compared; compare values")


def parse_rule(
    text: str,
    *,
    features: Mapping[str, FeatureSpec],
    source: str = "<rule>",
    line: int | None = None,
    label: str = "rule",
) -> Rule:
    """Parse ``text`` against ``features``; :class:`RuleError` on any problem.

    ``line`` is the spec line where the rule text starts; errors report it
    (plus the rule's own newlines) and the column inside the rule.
    ``label`` starts the message (the loader passes ``segments.NAME``).
    """
    try:
        if len(text) > MAX_RULE_CHARS:
            raise _Problem(0, f"rule is {len(text)} characters; the limit is {MAX_RULE_CHARS}")
        return _Parser(_tokenize(text), features).parse()
    except _Problem as problem:
        row = text.count("\n", 0, problem.pos)
        col = problem.pos - (text.rfind("\n", 0, problem.pos) + 1) + 1
        where = f"column {col}" if row == 0 else f"rule line {row + 1}, column {col}"
        raise RuleError(
            f"{label}: {where}: {problem.message}",
            source=source,
            line=None if line is None else line + row,
        ) from None


def referenced_features(rule: Rule) -> frozenset[str]:
    """The names of the features ``rule`` reads."""
    names: set[str] = set()
    stack: list[Rule] = [rule]
    while stack:
        node = stack.pop()
        if isinstance(node, Compare):
            names.update(op.name for op in (node.left, node.right) if isinstance(op, Ref | Lookup))
        elif isinstance(node, Not):
            stack.append(node.operand)
        elif isinstance(node, And | Or):
            stack.extend(node.operands)
    return frozenset(names)


# --- evaluation: one profile -----------------------------------------------

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}


def evaluate(rule: Rule, values: Mapping[str, object]) -> bool:
    """Whether one profile (feature name -> read value) is in the segment."""
    return _truth(rule, values) is True


def _truth(rule: Rule, values: Mapping[str, object]) -> bool | None:
    if isinstance(rule, Compare):
        if _static_type(rule.left) != _static_type(rule.right):
            return None
        return _compare(rule.op, _read(rule.left, values), _read(rule.right, values))
    if isinstance(rule, Not):
        inner = _truth(rule.operand, values)
        return None if inner is None else not inner
    if isinstance(rule, And | Or):
        decisive = isinstance(rule, Or)  # the value that settles it: True for or
        result: bool | None = not decisive
        for part in rule.operands:
            got = _truth(part, values)
            if got is decisive:
                return decisive
            if got is None:
                result = None
        return result
    raise TypeError(f"not a rule node: {rule!r}")


def _read(op: Operand, values: Mapping[str, object]) -> object:
    if isinstance(op, Num | Str):
        return op.value
    if isinstance(op, Ref):
        return values.get(op.name)
    assert isinstance(op, Lookup)
    found = values.get(op.name)
    if found is None:
        return 0.0
    if not isinstance(found, Mapping):
        return None
    got = found.get(op.key)
    if got is None:
        return 0.0
    return float(got) if isinstance(got, int | float) else None


def _compare(op: str, a: object, b: object) -> bool | None:
    if isinstance(a, str) and isinstance(b, str):
        return bool(_OPS[op](a, b))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return bool(_OPS[op](_order_key(a, b), _order_key(b, a)))
    return None


def _order_key(x: int | float, other: int | float) -> tuple[int, int | float]:
    """Total order of Polars: mixed int/float as float64, NaN above everything."""
    if isinstance(other, float) and not isinstance(x, float):
        try:
            x = float(x)
        except OverflowError:
            return (0, x)
    if isinstance(x, float) and math.isnan(x):
        return (1, 0)
    return (0, x)


# --- evaluation: vectorised ------------------------------------------------


def to_polars(rule: Rule) -> pl.Expr:
    """A Boolean expression without nulls, one row per profile.

    Expects one column per referenced feature: Int64/Float64 for number
    features, String for string ones, ``List(Struct({"key": String, "value":
    Float64}))`` for keyed ones. Alias the result yourself.
    """
    # `& repeat(True)` gives one value per row even when the rule is constant
    # (only literals) and works around Polars returning a single row for some
    # comparisons on an all-null column (e.g. `0 < m['a']` with `m` all null).
    return _expr(rule).fill_null(False) & pl.repeat(True, pl.len())


def _expr(rule: Rule) -> pl.Expr:
    if isinstance(rule, Compare):
        if _static_type(rule.left) != _static_type(rule.right):
            return pl.lit(None, dtype=pl.Boolean)
        result: pl.Expr = _OPS[rule.op](_operand(rule.left), _operand(rule.right))
        return result
    if isinstance(rule, Not):
        return ~_expr(rule.operand)
    if isinstance(rule, And):
        return pl.all_horizontal(*(_expr(part) for part in rule.operands))
    if isinstance(rule, Or):
        return pl.any_horizontal(*(_expr(part) for part in rule.operands))
    raise TypeError(f"not a rule node: {rule!r}")


def operand_to_polars(op: Operand) -> pl.Expr:
    """The value one operand reads (a keyed lookup: 0 when the key is absent)."""
    return _operand(op)


def _operand(op: Operand) -> pl.Expr:
    if isinstance(op, Num | Str):
        return pl.lit(op.value)
    if isinstance(op, Ref):
        return pl.col(op.name)
    assert isinstance(op, Lookup)
    entry = pl.col(op.name).list.filter(pl.element().struct.field("key") == op.key).list.first()
    return entry.struct.field("value").cast(pl.Float64).fill_null(0.0)
