"""The spec loader: every kind and option, and every error with its line."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from textwrap import dedent

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portrait.errors import RuleError, SpecError
from portrait.spec import KINDS, FeatureSpec, Spec, evaluate, load_spec, parse_spec
from portrait.spec.rules import And, Compare, Lookup, Num, Ref

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "spec.yaml"
DAY_US = 86_400 * 1_000_000


def spec_of(features: str, segments: str = "") -> Spec:
    text = "version: 1\nfeatures:\n" + _indent(features)
    if segments:
        text += "segments:\n" + _indent(segments)
    return parse_spec(text)


def _indent(block: str) -> str:
    return "".join("  " + line if line.strip() else line for line in dedent(block).splitlines(True))


def feature(options: str) -> FeatureSpec:
    return parse_spec(f"version: 1\nfeatures:\n  f: {options}\n").features["f"]


def error_of(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="s.yaml")
    return info.value


# --- the reference spec ------------------------------------------------------


def test_reference_spec_parses_to_the_documented_features() -> None:
    spec = load_spec(EXAMPLE)
    assert spec.version == 1
    assert spec.text == EXAMPLE.read_text(encoding="utf-8")
    assert list(spec.features) == [
        "events_total", "purchases_30d", "spend_total", "avg_rating", "max_price",
        "first_seen", "last_seen", "last_item", "distinct_items", "top_categories",
        "category_affinity", "activity",
    ]
    f = spec.features
    assert f["events_total"] == FeatureSpec("events_total", "count", line=3)
    assert f["purchases_30d"] == FeatureSpec(
        "purchases_30d", "count", line=4, where=(("type", ("purchase",)),), window_us=30 * DAY_US
    )
    assert f["spend_total"] == FeatureSpec(
        "spend_total", "sum", line=5, field="price", where=(("type", ("purchase",)),)
    )
    assert f["avg_rating"].field == "rating"
    assert f["max_price"] == FeatureSpec("max_price", "max", line=7, field="price")
    assert (f["first_seen"].kind, f["first_seen"].field) == ("first", "ts")
    assert (f["last_item"].kind, f["last_item"].field) == ("last", "item_id")
    assert f["distinct_items"] == FeatureSpec(
        "distinct_items", "distinct", line=11, field="item_id"
    )
    assert f["top_categories"] == FeatureSpec(
        "top_categories", "top_k", line=12, key="category", k=3
    )
    assert f["category_affinity"] == FeatureSpec(
        "category_affinity", "decayed", line=13, key="category", half_life_us=7 * DAY_US,
        weights=(("cart", 3.0), ("purchase", 5.0), ("view", 1.0)),
    )
    assert f["activity"] == FeatureSpec("activity", "decayed", line=15, half_life_us=DAY_US)
    assert list(spec.segments) == ["big_spender", "sci_fi_fan"]
    big = spec.segments["big_spender"]
    assert big.line == 17
    assert big.text == "spend_total >= 100 and purchases_30d >= 2"
    assert big.rule == And((
        Compare(">=", Ref("spend_total", "number"), Num(100)),
        Compare(">=", Ref("purchases_30d", "number"), Num(2)),
    ))
    assert spec.segments["sci_fi_fan"].rule == Compare(
        ">", Lookup("category_affinity", "Sci-Fi"), Num(2.5)
    )


def test_reference_segments_evaluate() -> None:
    spec = load_spec(EXAMPLE)
    fan = spec.segments["sci_fi_fan"].rule
    assert evaluate(fan, {"category_affinity": {"Sci-Fi": 3.0}})
    assert not evaluate(fan, {"category_affinity": {"Drama": 9.0}})
    big = spec.segments["big_spender"].rule
    assert evaluate(big, {"spend_total": 100.0, "purchases_30d": 2})
    assert not evaluate(big, {"spend_total": 99.5, "purchases_30d": 5})


def test_spec_is_hashable_read_only_and_ordered() -> None:
    a = load_spec(EXAMPLE)
    b = parse_spec(EXAMPLE.read_text(encoding="utf-8"), source=str(EXAMPLE))
    assert a == b
    assert hash(a) == hash(b)
    assert isinstance(a.features, Mapping)
    with pytest.raises(TypeError):
        a.features["x"] = a.features["activity"]  # type: ignore[index]
    assert len({a, b}) == 1


# --- every kind and option ------------------------------------------------------


def test_every_kind_is_accepted() -> None:
    options = {
        "count": "{kind: count}",
        "sum": "{kind: sum, field: quantity}",
        "avg": "{kind: avg, field: rating}",
        "min": "{kind: min, field: lat}",
        "max": "{kind: max, field: lon}",
        "first": "{kind: first, field: category}",
        "last": "{kind: last, field: price}",
        "distinct": "{kind: distinct, field: category}",
        "top_k": "{kind: top_k, key: item_id, k: 1000}",
        "decayed": "{kind: decayed, half_life: 90m}",
    }
    assert set(options) == set(KINDS)
    for kind, text in options.items():
        assert feature(text).kind == kind


@pytest.mark.parametrize(
    ("options", "value_type", "keyed"),
    [
        ("{kind: count}", "number", False),
        ("{kind: last, field: ts}", "number", False),
        ("{kind: first, field: item_id}", "string", False),
        ("{kind: last, field: rating}", "number", False),
        ("{kind: distinct, field: text}", "number", False),
        ("{kind: top_k, key: category, k: 2}", "map", True),
        ("{kind: decayed, half_life: 1d}", "number", False),
        ("{kind: decayed, half_life: 1d, key: type}", "map", True),
    ],
)
def test_value_type_and_keyed(options: str, value_type: str, keyed: bool) -> None:
    f = feature(options)
    assert (f.value_type, f.keyed) == (value_type, keyed)


@pytest.mark.parametrize(
    ("window", "us"),
    [("30s", 30 * 10**6), ("5m", 300 * 10**6), ("2h", 7200 * 10**6), ("1d", DAY_US),
     ("2w", 14 * DAY_US)],
)
def test_window_on_any_kind(window: str, us: int) -> None:
    assert feature(f"{{kind: max, field: price, window: {window}}}").window_us == us
    assert feature(f"{{kind: top_k, key: type, k: 2, window: {window}}}").window_us == us


def test_where_normalises_values_to_sorted_strings() -> None:
    f = feature("{kind: count, where: {type: [view, cart, view], quantity: [2, 1], item_id: i9}}")
    assert f.where == (
        ("item_id", ("i9",)),
        ("quantity", ("1", "2")),
        ("type", ("cart", "view")),
    )


def test_where_keeps_plain_words_as_written() -> None:
    # YAML 1.1 would read these as booleans/null-ish; a spec means the words.
    f = feature("{kind: count, where: {type: [yes, off, 'null'], rating: [4.5, 0x10]}}")
    assert f.where == (("rating", ("16", "4.5")), ("type", ("null", "off", "yes")))


def test_decayed_weights_and_default() -> None:
    f = feature("{kind: decayed, half_life: 7d, weights: {view: 1, purchase: 5.5, cart: -2}}")
    assert f.weights == (("cart", -2.0), ("purchase", 5.5), ("view", 1.0))
    assert f.default_weight == 1.0
    assert (f.weight("cart"), f.weight("click")) == (-2.0, 1.0)
    g = feature("{kind: decayed, half_life: 7d, weights: {view: 1, default: 0}}")
    assert (g.weights, g.default_weight, g.weight("click")) == ((("view", 1.0),), 0.0, 0.0)
    h = feature("{kind: decayed, half_life: 7d, key: category, weights: {view: 2}, default: 0.5}")
    assert (h.key, h.default_weight) == ("category", 0.5)


def test_block_style_spec_and_line_numbers() -> None:
    spec = spec_of(
        """\
          # a comment
          spend:
            kind: sum
            field: price
            where:
              type:
                - purchase
                - refund
          visits: {kind: count}
        """,
        """\
          spender: >
            spend > 10
        """,
    )
    assert spec.features["spend"].line == 4
    assert spec.features["spend"].where == (("type", ("purchase", "refund")),)
    assert spec.features["visits"].line == 11
    assert spec.segments["spender"].line == 13
    assert spec.segments["spender"].text.strip() == "spend > 10"


def test_empty_sections_and_no_segments() -> None:
    assert parse_spec("version: 1\nfeatures:\n").features == {}
    spec = parse_spec("version: 1\nfeatures: {a: {kind: count}}\nsegments:\n")
    assert spec.segments == {}


# --- errors, each with its line ---------------------------------------------------

ERRORS = [
    # (spec body after 'version: 1\nfeatures:\n', line, message fragment)
    ("  spend_total: {kind: sum, field: item_id}\n", 3,
     "features.spend_total.field: sum needs a numeric field (price, quantity, rating, lat, lon), "
     "got 'item_id'"),
    ("  a: {kind: count}\n  b: {kind: median, field: price}\n", 4,
     "features.b.kind: unknown kind 'median'"),
    ("  a: {kind: count}\n  b: {field: price}\n", 4, "features.b: missing 'kind'"),
    ("  a:\n    kind: count\n    windw: 7d\n", 5,
     "features.a.windw: unknown option for kind count"),
    ("  a: {kind: count, field: price}\n", 3, "features.a.field: unknown option for kind count"),
    ("  a: {kind: sum, field: price, k: 3}\n", 3, "features.a.k: unknown option for kind sum"),
    ("  a: {kind: count, window: 7x}\n", 3, "features.a.window: bad duration '7x'"),
    ("  a: {kind: count, window: 30}\n", 3, "features.a.window: bad duration '30'"),
    ("  a: {kind: count, window: 0d}\n", 3, "features.a.window: bad duration '0d'"),
    ("  a:\n    kind: decayed\n\n    half_life: -1d\n", 6, "features.a.half_life: bad duration"),
    ("  a: {kind: decayed}\n", 3, "features.a: kind decayed needs 'half_life'"),
    ("  a:\n    kind: decayed\n    half_life: 1d\n    weights:\n      view: 1\n      cart: lots\n",
     8, "features.a.weights.cart: expected a number, got 'lots'"),
    ("  a: {kind: decayed, half_life: 1d, weights: {view: true}}\n", 3,
     "features.a.weights.view: expected a number"),
    ("  a: {kind: decayed, half_life: 1d, weights: {view: .nan}}\n", 3, "finite"),
    ("  a: {kind: decayed, half_life: 1d, weights: [view]}\n", 3,
     "features.a.weights: expected a mapping, got a list"),
    ("  a: {kind: decayed, half_life: 1d, default: zero}\n", 3, "features.a.default: expected"),
    ("  a:\n    kind: decayed\n    half_life: 1d\n    weights: {default: 0}\n    default: 0\n", 7,
     "features.a.default: given twice"),
    ("  a:\n    kind: count\n    where:\n      colour: [red]\n", 6,
     "features.a.where.colour: unknown field"),
    ("  a: {kind: count, where: {type: {view: 1}}}\n", 3,
     "features.a.where.type: expected a list of values, got a mapping"),
    ("  a: {kind: count, where: {type: []}}\n", 3,
     "features.a.where.type: the list of values is empty"),
    ("  a:\n    kind: count\n    where:\n      type:\n        - view\n        - [cart]\n", 8,
     "features.a.where.type: values must be strings or numbers, got a list"),
    ("  a: {kind: count, where: {type: [~]}}\n", 3, "features.a.where.type: a value is missing"),
    ("  a: {kind: count, where: [type]}\n", 3, "features.a.where: expected a mapping"),
    ("  a: {kind: top_k, key: category}\n", 3, "features.a: kind top_k needs 'k'"),
    ("  a: {kind: top_k, k: 3}\n", 3, "features.a: kind top_k needs 'key'"),
    ("  a: {kind: top_k, key: category, k: 0}\n", 3,
     "features.a.k: k must be an integer from 1 to 1000"),
    ("  a: {kind: top_k, key: category, k: 1001}\n", 3, "features.a.k: k must be an integer"),
    ("  a: {kind: top_k, key: category, k: 2.5}\n", 3, "features.a.k: k must be an integer"),
    ("  a: {kind: top_k, key: category, k: true}\n", 3, "features.a.k: k must be an integer"),
    ("  a: {kind: top_k, key: price, k: 3}\n", 3,
     "features.a.key: top_k needs a key field (type, item_id, category, text, event_id), "
     "got 'price'"),
    ("  a: {kind: decayed, half_life: 1d, key: ts}\n", 3,
     "features.a.key: decayed needs a key field"),
    ("  a: {kind: first, field: colour}\n", 3, "features.a.field: first needs an event field"),
    ("  a: {kind: distinct, field: attrs}\n", 3, "features.a.field: distinct needs an event field"),
    ("  a: {kind: avg, field: ts}\n", 3, "features.a.field: avg needs a numeric field"),
    ("  a: {kind: min}\n", 3, "features.a: kind min needs 'field'"),
    ("  a: {kind: sum, field: [price]}\n", 3,
     "features.a.field: expected a single value, got a list"),
    ("  a: count\n", 3, "features.a: expected a mapping, got 'count'"),
    ("  a: {kind: count}\n  a: {kind: count}\n", 4, "features.a: duplicate key (first at line 3)"),
    ("  a: {kind: count, kind: sum}\n", 3, "features.a.kind: duplicate key"),
    ("  2fast: {kind: count}\n", 3, "features.2fast: a name must match"),
    ("  spend-total: {kind: count}\n", 3, "features.spend-total: a name must match"),
    ("  and: {kind: count}\n", 3, "features.and: 'and' is a reserved word"),
    ("  [a]: {kind: count}\n", 3, "features: keys must be plain names"),
    ("  a: {kind: count}\nsegments:\n  a: 'a > 1'\n", 5,
     "segments.a: the name is already used by features.a (line 3)"),
    ("  a: {kind: count}\nsegments:\n  b c: 'a > 1'\n", 5, "segments.b c: a name must match"),
    ("  a: {kind: count}\nsegments:\n  s: [a > 1]\n", 5, "segments.s: expected a single value"),
    ("  a: {kind: count}\nsegments:\n  s:\n", 5, "segments.s: the rule is missing"),
    ("  a: {kind: count}\nsegments: [s]\n", 4, "segments: expected a mapping, got a list"),
    ("  a: {kind: count}\ncolour: red\n", 4, "colour: unknown top-level key"),
    ("  a: {kind: count\n", 4, "invalid YAML"),
    ("  a: {kind: count}\n b: {kind: count}\n", 4, "invalid YAML"),
    ("  a: {kind: count}\n\tb: 1\n", 4, "invalid YAML"),
    ("  a: {kind: !!python/object:os.system count}\n", 3, "unsupported YAML tag"),
    ("  a: {kind: count, where: {type: !custom [view]}}\n", 3, "unsupported YAML tag '!custom'"),
    ("  a: {kind: count}\n  <<: {b: 1}\n", 4, "unsupported YAML tag"),
]


@pytest.mark.parametrize(("body", "line", "fragment"), ERRORS)
def test_spec_errors_name_the_option_and_line(body: str, line: int, fragment: str) -> None:
    err = error_of("version: 1\nfeatures:\n" + body)
    assert fragment in str(err)
    assert err.line == line
    assert err.source == "s.yaml"
    assert str(err).startswith(f"s.yaml:{line}: ")


def test_python_tags_are_not_constructed() -> None:
    err = error_of("version: 1\nfeatures:\n  a: {kind: decayed, half_life: 1d, "
                   "weights: {view: !!python/name:os.system }}\n")
    assert err.line == 3
    assert "unsupported YAML tag 'tag:yaml.org,2002:python/name:os.system'" in str(err)


def test_recursive_aliases_do_not_hang() -> None:
    err = error_of("version: 1\nfeatures: &f\n  a: {kind: count, where: {type: &l [x, *l]}}\n")
    assert err.line == 3
    assert "values must be strings or numbers" in str(err)


def test_aliases_are_followed() -> None:
    spec = parse_spec(
        "version: 1\nfeatures:\n  a: &opts {kind: count, where: {type: [view]}}\n  b: *opts\n"
    )
    assert spec.features["b"].where == spec.features["a"].where
    assert spec.features["b"].line == 4


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("", None, "the spec is empty"),
        ("# only a comment\n", None, "the spec is empty"),
        ("- a\n- b\n", 1, "spec: expected a mapping, got a list"),
        ("features: {}\n", 1, "missing 'version'"),
        ("version: 1\n", 1, "missing 'features'"),
        ("version: 2\nfeatures: {}\n", 1, "version: unsupported version '2'"),
        ("version: '1'\nfeatures: {}\n", 1, "version: unsupported version"),
        ("version: true\nfeatures: {}\n", 1, "version: unsupported version"),
        ("version: 1\nfeatures: {}\n---\nversion: 1\n", 3, "invalid YAML"),
        ("version: 1\nfeatures: [1, 2\n", 3, "invalid YAML"),
        ("version: 1\nfeatures: {}\n\x00", 3, "invalid YAML"),
        ("version: 1\nversion: 1\nfeatures: {}\n", 2, "version: duplicate key"),
    ],
)
def test_document_level_errors(text: str, line: int | None, fragment: str) -> None:
    err = error_of(text)
    assert fragment in str(err)
    assert err.line == line


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        ("  a: " + "[" * 40 + "]" * 40 + "\n", 3, "nests deeper than 32 levels"),
        ("  a: {kind: top_k, key: category, k: " + "9" * 5000 + "}\n", 3,
         "features.a.k: cannot read"),
        ("  a: {kind: decayed, half_life: 1d, weights: {v: " + "9" * 5000 + "}}\n", 3,
         "features.a.weights.v: cannot read"),
        ("  a: {kind: count, where: {quantity: [" + "9" * 5000 + "]}}\n", 3,
         "features.a.where.quantity: cannot read"),
        ("  a: {kind: count, window: " + "9" * 5000 + "d}\n", 3, "features.a.window: bad duration"),
        ("  a: {kind: count, window: 36501d}\n", 3, "longer than the limit of 36500d"),
        ("  a: {kind: decayed, half_life: 5215w}\n", 3, "longer than the limit"),
        ("  a: {kind: top_k, key: category, k: 2024-02-30}\n", 3, "features.a.k: cannot read"),
    ],
)
def test_hostile_input_is_a_spec_error(body: str, line: int, fragment: str) -> None:
    err = error_of("version: 1\nfeatures:\n" + body)
    assert fragment in str(err)
    assert err.line == line


def test_deeply_nested_yaml_is_refused_before_composing() -> None:
    err = error_of("[" * 100_000)
    assert "nests deeper" in str(err)


def test_longest_duration_is_accepted() -> None:
    assert feature("{kind: count, window: 36500d}").window_us == 36_500 * DAY_US


YAML_SOUP = [
    "version", "features", "segments", "kind", "count", "sum", "top_k", "decayed", "field",
    "price", "item_id", "where", "type", "window", "half_life", "weights", "default", "k",
    "key", "category", ": ", "\n", "\n  ", "\n    ", "{", "}", "[", "]", ", ", "- ", "1", "7d",
    "-1", "'", '"', "&a ", "*a", "!!str ", "!x ", "#", "|", ">", "?", "~", "\t", "a > 1",
    "a['x'] > 1", "1e999", "%", "---", "...", "\x00", "\ufeff",
]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_any_text_only_raises_spec_error(text: str) -> None:
    with contextlib.suppress(SpecError):
        parse_spec(text)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(YAML_SOUP), max_size=60).map("".join))
def test_fuzz_yaml_soup_only_raises_spec_error(body: str) -> None:
    for text in (body, "version: 1\nfeatures:\n  a: {kind: count}\n" + body):
        try:
            spec = parse_spec(text)
        except SpecError as err:
            line = err.line
            assert line is None or line >= 1
            continue
        assert spec.version == 1


def test_rule_error_gives_spec_line_and_rule_column() -> None:
    body = "  a: {kind: count}\nsegments:\n  ok: 'a > 1'\n  bad: 'a > 1 and b > 2'\n"
    with pytest.raises(RuleError) as info:
        parse_spec("version: 1\nfeatures:\n" + body, source="s.yaml")
    assert info.value.line == 6
    assert "segments.bad: column 11: unknown feature 'b'" in str(info.value)


def test_rule_error_in_a_literal_block_points_at_its_line() -> None:
    body = "  a: {kind: count}\nsegments:\n  s: |\n    a > 1\n    and a >> 2\n"
    with pytest.raises(RuleError) as info:
        parse_spec("version: 1\nfeatures:\n" + body)
    assert info.value.line == 7
    assert "rule line 2, column 8" in str(info.value)


def test_segment_rules_check_features() -> None:
    body = "  m: {kind: top_k, key: category, k: 3}\nsegments:\n  s: m > 1\n"
    with pytest.raises(RuleError, match="feature 'm' is a map"):
        parse_spec("version: 1\nfeatures:\n" + body)


# --- files -----------------------------------------------------------------------


def test_load_spec_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("version: 1\nfeatures:\n  n: {kind: count}\n", encoding="utf-8")
    assert list(load_spec(path).features) == ["n"]
    assert list(load_spec(str(path)).features) == ["n"]


def test_load_spec_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=r"nope\.yaml") as info:
        load_spec(missing)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SpecError, match=r"bin\.yaml"):
        load_spec(binary)
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nfeatures:\n  a: {kind: nope}\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert str(info.value).startswith(f"{bad}:3: ")


def test_interactions_section_gives_model_weights() -> None:
    spec = parse_spec(
        "version: 1\nfeatures:\n  n: {kind: count}\n"
        "interactions: {purchase: 5, impression: -0.5}\n"
    )
    assert dict(spec.interactions) == {"purchase": 5.0, "impression": -0.5}
    assert dict(parse_spec("version: 1\nfeatures:\n  n: {kind: count}\n").interactions) == {}


def test_interactions_must_be_numbers() -> None:
    with pytest.raises(SpecError, match=r"interactions\.click: expected a number") as err:
        parse_spec("version: 1\nfeatures:\n  n: {kind: count}\ninteractions: {click: lots}\n")
    assert err.value.line == 4


# --- privacy ------------------------------------------------------------------


def test_privacy_section_names_personal_attrs_and_features() -> None:
    spec = parse_spec("version: 1\nfeatures:\n  n: {kind: count}\n  q: {kind: last, field: text}\n"
                      "privacy:\n  personal_attrs: [email, phone, email]\n"
                      "  personal_features: [q]\n")
    assert spec.personal_attrs == ("email", "phone")
    assert spec.personal_features == ("q",)
    assert parse_spec("version: 1\nfeatures:\n  n: {kind: count}\n").personal_attrs == ()


@pytest.mark.parametrize(("privacy", "line", "message"), [
    ("privacy:\n  secret: [x]\n", 5, "privacy.secret: unknown option"),
    ("privacy:\n  personal_attrs: email\n", 5, "privacy.personal_attrs: expected a list"),
    ("privacy:\n  personal_features: [n, nope]\n", 5, "'nope' is not a feature"),
    ("privacy:\n  personal_attrs: ['']\n", 5, "names are 1 to 256 characters"),
    ("privacy:\n  personal_attrs: [[a]]\n", 5, "expected a single value"),
])
def test_privacy_section_errors_name_the_option_and_line(privacy: str, line: int,
                                                         message: str) -> None:
    err = error_of("version: 1\nfeatures:\n  n: {kind: count}\n" + privacy)
    assert message in str(err)
    assert err.line == line
