"""Load a profile spec (YAML, version 1) and check every option strictly.

The YAML is composed into nodes with PyYAML's safe loader, so every problem
is reported as a :class:`~portrait.errors.SpecError` with the 1-based line of
the offending option and a message that names it
(``features.spend_total.field: ...``). Names and plain strings are read as
written (``type: [yes]`` means the event type ``"yes"``, not a boolean).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import NoReturn

import yaml

from portrait.errors import SpecError
from portrait.events.schema import KEY_FIELDS, NUMERIC_FIELDS, SPEC_FIELDS
from portrait.spec.model import KINDS, FeatureSpec, SegmentSpec, Spec
from portrait.spec.rules import KEYWORDS, parse_rule
from portrait.timeutil import parse_duration

SPEC_VERSION = 1
MAX_K = 1000
MAX_YAML_DEPTH = 32
MAX_DURATION_DAYS = 36_500  # 100 years: windows and half-lives stay far inside int64
MAX_DURATION_US = MAX_DURATION_DAYS * 86_400 * 1_000_000
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOP_LEVEL = ("version", "features", "segments", "interactions", "privacy")
_PRIVACY = ("personal_attrs", "personal_features")
_COMMON = ("kind", "where", "window")
_EXTRA: dict[str, tuple[str, ...]] = {
    "count": (),
    **dict.fromkeys(("sum", "avg", "min", "max", "first", "last", "distinct"), ("field",)),
    "top_k": ("key", "k"),
    "decayed": ("key", "half_life", "weights", "default"),
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("sum", "avg", "min", "max", "first", "last", "distinct"), ("field",)),
    "top_k": ("key", "k"),
    "decayed": ("half_life",),
}
_FIELDS: dict[str, tuple[tuple[str, ...], str]] = {
    **dict.fromkeys(("sum", "avg", "min", "max"), (NUMERIC_FIELDS, "a numeric field")),
    **dict.fromkeys(("first", "last", "distinct"), (SPEC_FIELDS, "an event field")),
}
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_NULL_TAG = "tag:yaml.org,2002:null"
_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}"
    for name in ("str", "int", "float", "bool", "null", "timestamp", "map", "seq")
)

_Entry = tuple[str, yaml.Node, yaml.Node]


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Read and check the spec file at ``path`` (UTF-8)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the spec file: {exc}", source=os.fspath(path)) from exc
    return parse_spec(text, source=os.fspath(path))


def parse_spec(text: str, *, source: str = "<spec>") -> Spec:
    """Check the spec in ``text``; ``source`` names it in error messages."""
    doc = _Doc(text, source)
    top = {name: (key, value) for name, key, value in doc.mapping(doc.root, "spec")}
    for name, (key, _) in top.items():
        if name not in _TOP_LEVEL:
            doc.fail(f"{name}: unknown top-level key (expected {', '.join(_TOP_LEVEL)})", key)
    for required in ("version", "features"):
        if required not in top:
            doc.fail(f"missing '{required}'", doc.root)
    version = _version(doc, top["version"][1])
    names: dict[str, str] = {}
    features: dict[str, FeatureSpec] = {}
    for name, key, value in doc.mapping(top["features"][1], "features", allow_null=True):
        _claim_name(doc, names, "features", name, key)
        features[name] = _feature(doc, name, key, value)
    segments: dict[str, SegmentSpec] = {}
    if "segments" in top:
        for name, key, value in doc.mapping(top["segments"][1], "segments", allow_null=True):
            _claim_name(doc, names, "segments", name, key)
            segments[name] = _segment(doc, features, name, key, value)
    interactions: dict[str, float] = {}
    if "interactions" in top:
        for event_type, _, value in doc.mapping(top["interactions"][1], "interactions"):
            interactions[event_type] = doc.number(value, f"interactions.{event_type}")
    personal: dict[str, tuple[str, ...]] = {}
    if "privacy" in top:
        personal = _privacy(doc, features, top["privacy"][1])
    return Spec(version=version, features=features, segments=segments, text=text,
                interactions=interactions, **personal)


def _privacy(doc: _Doc, features: dict[str, FeatureSpec],
             node: yaml.Node) -> dict[str, tuple[str, ...]]:
    """``privacy: {personal_attrs: [attrs keys], personal_features: [feature names]}``."""
    out: dict[str, tuple[str, ...]] = {}
    for name, key, value in doc.mapping(node, "privacy", allow_null=True):
        path = f"privacy.{name}"
        if name not in _PRIVACY:
            doc.fail(f"{path}: unknown option (expected {', '.join(_PRIVACY)})", key)
        if not isinstance(value, yaml.SequenceNode):
            doc.fail(f"{path}: expected a list of names, got {_describe(value)}", value)
        names: dict[str, None] = {}
        for item in value.value:
            n = doc.text(item, path)
            if not n or len(n) > 256:
                doc.fail(f"{path}: names are 1 to 256 characters", item)
            if name == "personal_features" and n not in features:
                doc.fail(f"{path}: {n!r} is not a feature of this spec", item)
            names[n] = None
        out[name] = tuple(names)
    return out


class _Doc:
    """The composed YAML plus helpers that read nodes or fail with their line."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        try:
            _check_depth(text, source)
            self.loader = yaml.SafeLoader(text)
            root = self.loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            message = f"invalid YAML: {exc.problem or exc}"
            raise SpecError(message, source=source, line=line) from exc
        except yaml.YAMLError as exc:
            pos = getattr(exc, "position", None)
            line = text.count("\n", 0, pos) + 1 if isinstance(pos, int) else None
            raise SpecError(f"invalid YAML: {exc}", source=source, line=line) from exc
        if root is None:
            raise SpecError("the spec is empty (expected version and features)", source=source)
        self.root: yaml.Node = root
        self.check_tags()

    def check_tags(self) -> None:
        """Refuse any tag beyond plain YAML data (``!!python/...``, custom ``!tags``)."""
        seen: set[int] = set()
        stack = [self.root]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.tag not in _PLAIN_TAGS:
                self.fail(f"unsupported YAML tag {node.tag!r}", node)
            if isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)
            elif isinstance(node, yaml.MappingNode):
                stack.extend(n for pair in node.value for n in pair)

    def fail(self, message: str, node: yaml.Node, cause: Exception | None = None) -> NoReturn:
        raise SpecError(message, source=self.source, line=node.start_mark.line + 1) from cause

    def mapping(self, node: yaml.Node, path: str, *, allow_null: bool = False) -> list[_Entry]:
        """``(name, key node, value node)`` in file order; duplicate names fail."""
        if allow_null and isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG:
            return []
        if not isinstance(node, yaml.MappingNode):
            self.fail(f"{path}: expected a mapping, got {_describe(node)}", node)
        seen: dict[str, int] = {}
        entries: list[_Entry] = []
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                self.fail(f"{path}: keys must be plain names, got {_describe(key)}", key)
            if key.value in seen:
                first = seen[key.value]
                self.fail(f"{path}.{key.value}: duplicate key (first at line {first})", key)
            seen[key.value] = key.start_mark.line + 1
            entries.append((key.value, key, value))
        return entries

    def text(self, node: yaml.Node, path: str) -> str:
        """A scalar as written (quotes removed, no type conversion)."""
        if not isinstance(node, yaml.ScalarNode):
            self.fail(f"{path}: expected a single value, got {_describe(node)}", node)
        return str(node.value)

    def construct(self, node: yaml.Node, path: str) -> object:
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            self.fail(f"{path}: cannot read {_describe(node)[:40]}: {exc}", node, exc)

    def number(self, node: yaml.Node, path: str) -> float:
        value = self.construct(node, path) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(f"{path}: expected a number, got {_describe(node)}", node)
        if not math.isfinite(value):
            self.fail(f"{path}: expected a finite number, got {_describe(node)}", node)
        return float(value)


def _check_depth(text: str, source: str) -> None:
    """Refuse deep nesting before composing: PyYAML's composer is recursive."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                line = event.start_mark.line + 1
                message = f"the YAML nests deeper than {MAX_YAML_DEPTH} levels"
                raise SpecError(message, source=source, line=line)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(node.value)


def _version(doc: _Doc, node: yaml.Node) -> int:
    value = doc.construct(node, "version") if isinstance(node, yaml.ScalarNode) else None
    if isinstance(value, bool) or value != SPEC_VERSION:
        doc.fail(f"version: unsupported version {_describe(node)} (expected {SPEC_VERSION})", node)
    return SPEC_VERSION


def _claim_name(doc: _Doc, names: dict[str, str], section: str, name: str, key: yaml.Node) -> None:
    path = f"{section}.{name}"
    if not _NAME.match(name):
        doc.fail(f"{path}: a name must match [A-Za-z_][A-Za-z0-9_]*, got {name!r}", key)
    if name in KEYWORDS:
        doc.fail(f"{path}: {name!r} is a reserved word of the rule language", key)
    if name in names:
        doc.fail(f"{path}: the name is already used by {names[name]}", key)
    names[name] = f"{path} (line {key.start_mark.line + 1})"


def _feature(doc: _Doc, name: str, key: yaml.Node, value: yaml.Node) -> FeatureSpec:
    path = f"features.{name}"
    entries = doc.mapping(value, path)
    opts = {option: node for option, _, node in entries}
    if "kind" not in opts:
        doc.fail(f"{path}: missing 'kind' (one of {', '.join(KINDS)})", key)
    kind = doc.text(opts["kind"], f"{path}.kind")
    if kind not in KINDS:
        doc.fail(f"{path}.kind: unknown kind {kind!r} (one of {', '.join(KINDS)})", opts["kind"])
    allowed = _COMMON + _EXTRA[kind]
    for option, option_key, _ in entries:
        if option not in allowed:
            doc.fail(
                f"{path}.{option}: unknown option for kind {kind} (options: {', '.join(allowed)})",
                option_key,
            )
    for option in _REQUIRED.get(kind, ()):
        if option not in opts:
            doc.fail(f"{path}: kind {kind} needs '{option}'", key)
    weights, default = _weights(doc, path, opts)
    return FeatureSpec(
        name=name,
        kind=kind,
        line=key.start_mark.line + 1,
        field=_field(doc, kind, path, opts["field"]) if "field" in opts else None,
        key=_key_field(doc, kind, path, opts["key"]) if "key" in opts else None,
        where=_where(doc, f"{path}.where", opts["where"]) if "where" in opts else (),
        window_us=_duration(doc, f"{path}.window", opts["window"]) if "window" in opts else None,
        half_life_us=(
            _duration(doc, f"{path}.half_life", opts["half_life"]) if "half_life" in opts else None
        ),
        weights=weights,
        default_weight=default,
        k=_k(doc, f"{path}.k", opts["k"]) if "k" in opts else None,
    )


def _field(doc: _Doc, kind: str, path: str, node: yaml.Node) -> str:
    name = doc.text(node, f"{path}.field")
    allowed, what = _FIELDS[kind]
    if name not in allowed:
        doc.fail(f"{path}.field: {kind} needs {what} ({', '.join(allowed)}), got {name!r}", node)
    return name


def _key_field(doc: _Doc, kind: str, path: str, node: yaml.Node) -> str:
    name = doc.text(node, f"{path}.key")
    if name not in KEY_FIELDS:
        fields = ", ".join(KEY_FIELDS)
        doc.fail(f"{path}.key: {kind} needs a key field ({fields}), got {name!r}", node)
    return name


def _duration(doc: _Doc, path: str, node: yaml.Node) -> int:
    text = doc.text(node, path)
    try:
        if len(text) > 40:
            raise ValueError(f"bad duration {text[:40]!r}...: too long")
        us = parse_duration(text)
    except ValueError as exc:
        doc.fail(f"{path}: {exc}", node, exc)
    if us > MAX_DURATION_US:
        doc.fail(f"{path}: {text!r} is longer than the limit of {MAX_DURATION_DAYS}d", node)
    return us


def _k(doc: _Doc, path: str, node: yaml.Node) -> int:
    value = doc.construct(node, path) if isinstance(node, yaml.ScalarNode) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_K:
        doc.fail(f"{path}: k must be an integer from 1 to {MAX_K}, got {_describe(node)}", node)
    return value


def _where(doc: _Doc, path: str, node: yaml.Node) -> tuple[tuple[str, tuple[str, ...]], ...]:
    clauses: list[tuple[str, tuple[str, ...]]] = []
    for field, key, value in doc.mapping(node, path):
        if field not in SPEC_FIELDS:
            doc.fail(f"{path}.{field}: unknown field (fields: {', '.join(SPEC_FIELDS)})", key)
        if isinstance(value, yaml.MappingNode):
            doc.fail(f"{path}.{field}: expected a list of values, got a mapping", value)
        items = value.value if isinstance(value, yaml.SequenceNode) else [value]
        if not items:
            doc.fail(f"{path}.{field}: the list of values is empty", value)
        allowed = {_where_value(doc, f"{path}.{field}", item) for item in items}
        clauses.append((field, tuple(sorted(allowed))))
    return tuple(sorted(clauses))


def _where_value(doc: _Doc, path: str, node: yaml.Node) -> str:
    """Numbers go through ``str()``; other scalars are kept as written."""
    if not isinstance(node, yaml.ScalarNode):
        doc.fail(f"{path}: values must be strings or numbers, got {_describe(node)}", node)
    if node.tag == _NULL_TAG:
        doc.fail(f"{path}: a value is missing (quote it if you mean {node.value!r})", node)
    if node.tag in _NUMBER_TAGS:
        return str(doc.construct(node, path))
    return str(node.value)


def _weights(
    doc: _Doc, path: str, opts: dict[str, yaml.Node]
) -> tuple[tuple[tuple[str, float], ...], float]:
    """``(type, weight)`` pairs and the default weight (``weights.default`` or ``default``)."""
    pairs: list[tuple[str, float]] = []
    default: float | None = None
    if "weights" in opts:
        for event_type, _, value in doc.mapping(opts["weights"], f"{path}.weights"):
            weight = doc.number(value, f"{path}.weights.{event_type}")
            if event_type == "default":
                default = weight
            else:
                pairs.append((event_type, weight))
    if "default" in opts:
        if default is not None:
            doc.fail(f"{path}.default: given twice (also as weights.default)", opts["default"])
        default = doc.number(opts["default"], f"{path}.default")
    return tuple(sorted(pairs)), 1.0 if default is None else default


def _segment(
    doc: _Doc, features: dict[str, FeatureSpec], name: str, key: yaml.Node, value: yaml.Node
) -> SegmentSpec:
    path = f"segments.{name}"
    text = doc.text(value, path)
    if value.tag == _NULL_TAG:
        doc.fail(f"{path}: the rule is missing", value)
    block = isinstance(value, yaml.ScalarNode) and value.style in ("|", ">")
    rule = parse_rule(
        text,
        features=features,
        source=doc.source,
        line=value.start_mark.line + 1 + int(block),
        label=path,
    )
    return SegmentSpec(name=name, rule=rule, text=text, line=key.start_mark.line + 1)
