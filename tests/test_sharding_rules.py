"""Sharding rule parsing, load-time validation (with YAML paths) and routing."""

from __future__ import annotations

import copy
import datetime as dt
import functools
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dbmesh.config import ConfigError
from sharding.errors import ShardingError
from sharding.rules import (
    DataNode,
    ExactValues,
    ShardingRuleSet,
    ValueRange,
    parse_sharding_rules,
)

P = "databases.shop.sharding"
DATA_SOURCES = ["ds_0", "ds_1"]

BASE_YAML = """
default_data_source: ds_0
tables:
  t_order:
    actual_data_nodes: ds_${0..1}.t_order_${0..1}
    database_strategy: {columns: [user_id], algorithm: db_mod}
    table_strategy: {columns: [order_id], algorithm: t_inline}
    key_generator: {column: order_id, algorithm: snow}
  t_order_item:
    actual_data_nodes: ds_${0..1}.t_order_item_${0..1}
    database_strategy: {column: user_id, algorithm: db_mod}
    table_strategy: {columns: [order_id], algorithm: ti_inline}
binding_tables: [[t_order, t_order_item]]
broadcast_tables: [t_dict]
algorithms:
  db_mod: {type: MOD, props: {sharding_count: 2}}
  t_inline: {type: INLINE, props: {algorithm_expression: "t_order_${order_id % 2}"}}
  ti_inline: {type: INLINE, props: {algorithm_expression: "t_order_item_${order_id % 2}"}}
key_generators:
  snow: {type: SNOWFLAKE, props: {worker_id: 1}}
"""


def base() -> dict[str, Any]:
    return yaml.safe_load(BASE_YAML)


def parse(raw: dict[str, Any], data_sources: list[str] | None = None) -> ShardingRuleSet:
    return parse_sharding_rules(raw, P, data_sources or DATA_SOURCES)


@functools.cache
def base_rules() -> ShardingRuleSet:
    return parse(base())


@pytest.fixture
def rules() -> ShardingRuleSet:
    return base_rules()


# ---------------------------------------------------------------------------------------
# Lookups


def test_lookups(rules):
    assert rules.table_rule("T_Order") is rules.table_rule("t_order")
    assert rules.table_rule("t_missing") is None
    assert rules.is_sharded("T_ORDER") and not rules.is_sharded("t_dict")
    assert rules.is_broadcast("T_DICT") and not rules.is_broadcast("t_order")
    assert rules.is_single("t_user") and not rules.is_single("t_dict")
    assert rules.binding_group_of("T_ORDER_ITEM") == ("t_order", "t_order_item")
    assert rules.binding_group_of("t_dict") is None
    assert rules.are_bound(["t_order", "T_ORDER_ITEM"]) and rules.are_bound(["t_order"])
    assert not rules.are_bound(["t_order", "t_dict"])
    assert rules.actual_data_sources("t_order") == ("ds_0", "ds_1")
    assert rules.actual_data_sources("t_dict") == ("ds_0", "ds_1")
    assert rules.actual_data_sources("t_user") == ("ds_0",)
    assert rules.actual_tables("t_order", "ds_1") == ("t_order_0", "t_order_1")
    assert rules.actual_tables("t_dict", "ds_1") == ("t_dict",)
    assert rules.actual_tables("t_user", "ds_1") == ()
    assert rules.data_nodes("t_user") == (DataNode("ds_0", "t_user"),)
    assert rules.logical_table_of("T_ORDER_ITEM_1") == "t_order_item"
    assert rules.logical_table_of("t_user") is None
    assert rules.default_data_source == "ds_0"
    assert rules.table_rule("t_order").sharding_columns == ("user_id", "order_id")
    assert str(DataNode("ds_0", "t_order_1")) == "ds_0.t_order_1"
    assert set(rules.algorithms) == {"db_mod", "t_inline", "ti_inline"}


def test_default_data_source_defaults_to_first():
    raw = base()
    del raw["default_data_source"]
    assert parse(raw, ["ds_1", "ds_0"]).default_data_source == "ds_1"


def test_bound_node(rules):
    for node in rules.table_rule("t_order").data_nodes:
        bound = rules.bound_node("t_order", node, "t_order_item")
        assert bound == DataNode(node.data_source, node.table.replace("t_order", "t_order_item"))
    with pytest.raises(ShardingError):
        rules.bound_node("t_order", DataNode("ds_0", "t_order_0"), "t_dict")


# ---------------------------------------------------------------------------------------
# Routing


def expected_node(user_id: int, order_id: int) -> DataNode:
    return DataNode(f"ds_{user_id % 2}", f"t_order_{order_id % 2}")


@given(st.lists(st.integers(-10**9, 10**9), min_size=1, max_size=5),
       st.lists(st.integers(-10**9, 10**9), min_size=1, max_size=5))
def test_route_exact_values_match_reference(user_ids, order_ids):
    rule = base_rules().table_rule("t_order")
    routed = rule.route({"USER_ID": ExactValues(user_ids), "order_id": ExactValues(order_ids)})
    expected = {expected_node(u, o) for u in user_ids for o in order_ids}
    assert set(routed) == expected
    assert len(routed) == len(expected)
    assert routed == [n for n in rule.data_nodes if n in expected]  # node order


@settings(max_examples=200)
@given(st.integers(-1000, 1000), st.integers(0, 5), st.booleans(), st.booleans(), st.integers(0, 100))
def test_route_range_never_misses(low, span, low_inc, high_inc, order_id):
    rule = base_rules().table_rule("t_order")
    high = low + span
    routed = set(rule.route({"user_id": ValueRange(low, high, low_inc, high_inc),
                             "order_id": ExactValues([order_id])}))
    for user_id in range(low if low_inc else low + 1, high + 1 if high_inc else high):
        assert expected_node(user_id, order_id) in routed


def test_route_absent_conditions_and_hints(rules):
    rule = rules.table_rule("t_order")
    assert rule.route() == list(rule.data_nodes)
    assert rule.route({"order_id": ExactValues([3])}) == [DataNode("ds_0", "t_order_1"),
                                                        DataNode("ds_1", "t_order_1")]
    assert rule.route({"order_id": ExactValues([])}) == []
    # INLINE cannot narrow ranges: all tables of the chosen data source.
    assert rule.route({"user_id": ExactValues([2]), "order_id": ValueRange(1, 2)}) == [
        DataNode("ds_0", "t_order_0"), DataNode("ds_0", "t_order_1")]


def test_route_row_and_errors(rules):
    rule = rules.table_rule("t_order")
    assert rule.route_row({"user_id": 3, "ORDER_ID": "10", "amount": 5}) == DataNode("ds_1", "t_order_0")
    with pytest.raises(ShardingError, match="no value for sharding column 'order_id'") as info:
        rule.route_row({"user_id": 3})
    assert info.value.table == "t_order"
    with pytest.raises(ShardingError, match="table 't_order', column 'user_id': sharding column value is NULL"):
        rule.route({"user_id": ExactValues([None])})
    with pytest.raises(ShardingError, match="table 't_order', column 'order_id'.*needs an integer"):
        rule.route({"order_id": ExactValues(["abc"])})
    key = rule.key_generator.next_id()
    assert isinstance(key, int) and rule.key_generator.column == "order_id"


def test_route_table_for_broadcast_and_single(rules):
    assert rules.route_table("t_dict") == [DataNode("ds_0", "t_dict"), DataNode("ds_1", "t_dict")]
    assert rules.route_table("t_user") == [DataNode("ds_0", "t_user")]
    assert rules.route_table("t_order", {"user_id": ExactValues([1]), "order_id": ExactValues([1])}) == [
        DataNode("ds_1", "t_order_1")]


def test_split_layout_with_joint_strategies():
    # ds_0 holds the even tables and ds_1 the odd ones; both strategies read order_id.
    raw = {
        "tables": {"t": {
            "actual_data_nodes": "ds_0.t_${[0, 2]}, ds_1.t_${[1, 3]}",
            "database_strategy": {"column": "order_id", "algorithm": "db"},
            "table_strategy": {"column": "order_id", "algorithm": "tb"},
        }},
        "algorithms": {"db": {"type": "MOD", "props": {"sharding_count": 2}},
                       "tb": {"type": "MOD", "props": {"sharding_count": 4}}},
    }
    rule = parse(raw).table_rule("t")
    for order_id in range(50):
        assert rule.route_row({"order_id": order_id}) == DataNode(f"ds_{order_id % 2}", f"t_{order_id % 4}")
    assert rule.route({"order_id": ValueRange(4, 6)}) == [
        DataNode("ds_0", "t_0"), DataNode("ds_0", "t_2"), DataNode("ds_1", "t_1")]
    # The same layout with a table strategy on a different column could misroute: refused.
    raw["tables"]["t"]["table_strategy"]["column"] = "user_id"
    with pytest.raises(ConfigError) as info:
        parse(raw)
    assert info.value.path == f"{P}.tables.t.table_strategy"


def test_hint_complex_range_and_interval_tables():
    raw = yaml.safe_load("""
tables:
  t_hint:
    actual_data_nodes: ds_${0..1}.t_hint
    database_strategy: {algorithm: hint}
  t_cx:
    actual_data_nodes: ds_0.t_cx_${0..3}
    table_strategy: {columns: [a, b], algorithm: cx}
  t_vol:
    actual_data_nodes: ds_1.t_vol_${0..11}
    table_strategy: {column: amount, algorithm: vol}
  t_log:
    actual_data_nodes: ds_0.t_log_${2024..2025}0${1..9}, ds_0.t_log_${2024..2025}${10..12}
    table_strategy: {column: created_at, algorithm: monthly}
algorithms:
  hint: {type: HINT}
  cx: {type: COMPLEX, props: {algorithm_expression: "t_cx_${(a + b) % 4}"}}
  vol: {type: VOLUME_RANGE, props: {range_lower: 0, range_upper: 100, sharding_volume: 10}}
  monthly:
    type: INTERVAL
    props: {datetime_lower: 2024-01-01, datetime_upper: 2025-12-31 23:59:59,
            sharding_suffix_pattern: "%Y%m", datetime_interval_unit: MONTHS}
""")
    rules = parse(raw)
    hint = rules.table_rule("t_hint")
    assert hint.route() == [DataNode("ds_0", "t_hint"), DataNode("ds_1", "t_hint")]
    assert hint.route(database_hints=[1]) == [DataNode("ds_1", "t_hint")]
    assert hint.route_row({}, database_hint="ds_0") == DataNode("ds_0", "t_hint")
    with pytest.raises(ShardingError, match="hint"):
        hint.route_row({})
    cx = rules.table_rule("t_cx")
    assert cx.route({"a": ExactValues([1, 2]), "b": ExactValues([1])}) == [
        DataNode("ds_0", "t_cx_2"), DataNode("ds_0", "t_cx_3")]
    assert len(cx.route({"a": ExactValues([1]), "b": ValueRange(1, 2)})) == 4
    vol = rules.table_rule("t_vol")
    assert vol.route({"amount": ValueRange(15, 35, True, False)}) == [
        DataNode("ds_1", f"t_vol_{i}") for i in (2, 3, 4)]
    assert vol.route_row({"amount": -5}) == DataNode("ds_1", "t_vol_0")
    log = rules.table_rule("t_log")
    assert log.route_row({"created_at": dt.datetime(2025, 3, 9, 10)}) == DataNode("ds_0", "t_log_202503")
    assert log.route({"created_at": ValueRange("2024-11-15", "2025-01-01", True, False)}) == [
        DataNode("ds_0", "t_log_202411"), DataNode("ds_0", "t_log_202412")]


def test_explicit_node_list_and_single_table_without_strategies():
    raw = {"tables": {"t_a": {"actual_data_nodes": ["ds_1.t_a"]}}}
    rule = parse(raw).table_rule("t_a")
    assert rule.route() == [DataNode("ds_1", "t_a")]
    assert rule.route_row({"x": 1}) == DataNode("ds_1", "t_a")


# ---------------------------------------------------------------------------------------
# Validation: every refusal names the YAML path at fault


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    target = raw
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value


_DELETE = object()
T = "tables.t_order"
TI = "tables.t_order_item"

ERROR_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown top-level key", {"tabels": {}}, "tabels", "unknown key"),
    ("unknown default data source", {"default_data_source": "ds_9"}, "default_data_source", "ds_9"),
    ("tables not a mapping", {"tables": ["t_order"]}, "tables", "expected a mapping"),
    ("node names undeclared data source", {f"{T}.actual_data_nodes": "ds_${0..2}.t_order_${0..1}"},
     f"{T}.actual_data_nodes", "undeclared data source 'ds_2'"),
    ("node expression syntax", {f"{T}.actual_data_nodes": "ds_${0..1}.t_order_${0..}"},
     f"{T}.actual_data_nodes", "position"),
    ("node without data source", {f"{T}.actual_data_nodes": "t_order_${0..1}"},
     f"{T}.actual_data_nodes", "data_source.table"),
    ("duplicate node", {f"{T}.actual_data_nodes": "ds_${0..1}.t_order_${[0, 1, 1]}"},
     f"{T}.actual_data_nodes", "listed twice"),
    ("missing nodes", {f"{T}.actual_data_nodes": _DELETE}, f"{T}.actual_data_nodes", "required"),
    ("unknown table key", {f"{T}.sharding_column": "x"}, f"{T}.sharding_column", "unknown key"),
    ("unknown algorithm reference", {f"{T}.database_strategy.algorithm": "db_hash"},
     f"{T}.database_strategy.algorithm", "no algorithm named 'db_hash'"),
    ("unknown strategy key", {f"{T}.database_strategy.sharding_column": "x"},
     f"{T}.database_strategy.sharding_column", "unknown key"),
    ("column and columns", {f"{T}.database_strategy.column": "user_id"},
     f"{T}.database_strategy.columns", "not both"),
    ("missing columns", {f"{T}.database_strategy.columns": _DELETE},
     f"{T}.database_strategy.columns", "required"),
    ("two columns for MOD", {f"{T}.database_strategy.columns": ["user_id", "order_id"]},
     f"{T}.database_strategy.columns", "exactly one column"),
    ("inline reads another column", {f"{T}.table_strategy.columns": ["user_id"]},
     f"{T}.table_strategy.columns", "reads ['order_id']"),
    ("unknown key generator reference", {f"{T}.key_generator.algorithm": "uuid"},
     f"{T}.key_generator.algorithm", "no key generator named 'uuid'"),
    ("key generator without column", {f"{T}.key_generator.column": _DELETE},
     f"{T}.key_generator.column", "expected a column name"),
    ("unknown algorithm type", {"algorithms.db_mod.type": "MODULO"}, "algorithms.db_mod.type",
     "unknown algorithm type 'MODULO'"),
    ("missing algorithm type", {"algorithms.db_mod.type": _DELETE}, "algorithms.db_mod.type", "expected"),
    ("missing props", {"algorithms.db_mod.props": _DELETE}, "algorithms.db_mod.props.sharding_count",
     "required"),
    ("invalid props", {"algorithms.db_mod.props.sharding_count": "two"},
     "algorithms.db_mod.props.sharding_count", "expected an integer"),
    ("non-positive count", {"algorithms.db_mod.props.sharding_count": 0},
     "algorithms.db_mod.props.sharding_count", "at least 1"),
    ("unknown prop", {"algorithms.db_mod.props.bogus": 1}, "algorithms.db_mod.props.bogus", "unknown property"),
    ("props not a mapping", {"algorithms.db_mod.props": [1]}, "algorithms.db_mod.props", "mapping"),
    ("inline syntax", {"algorithms.t_inline.props.algorithm_expression": "t_order_${order_id %}"},
     "algorithms.t_inline.props.algorithm_expression", "position"),
    ("unsorted boundary ranges", {"algorithms.br": {"type": "BOUNDARY_RANGE",
                                                    "props": {"sharding_ranges": [10, 5, 20]}}},
     "algorithms.br.props.sharding_ranges", "not sorted"),
    ("overlapping boundary ranges", {"algorithms.br": {"type": "BOUNDARY_RANGE",
                                                       "props": {"sharding_ranges": [10, 10, 20]}}},
     "algorithms.br.props.sharding_ranges", "overlap"),
    ("non-positive volume", {"algorithms.vr": {"type": "VOLUME_RANGE", "props": {
        "range_lower": 0, "range_upper": 10, "sharding_volume": 0}}},
     "algorithms.vr.props.sharding_volume", "positive"),
    ("volume lower >= upper", {"algorithms.vr": {"type": "VOLUME_RANGE", "props": {
        "range_lower": 10, "range_upper": 10, "sharding_volume": 1}}},
     "algorithms.vr.props.range_upper", "greater than range_lower"),
    ("MOD count exceeds data sources", {"algorithms.db_mod.props.sharding_count": 3},
     f"{T}.database_strategy", "no target ends in 2"),
    ("inline produces a missing table", {"algorithms.t_inline.props.algorithm_expression":
                                         "t_order_${order_id % 3}"},
     f"{T}.table_strategy", "'t_order_2'"),
    ("volume partitions exceed tables", {"algorithms.t_vol": {"type": "VOLUME_RANGE", "props": {
        "range_lower": 0, "range_upper": 10, "sharding_volume": 10}},
        f"{T}.table_strategy.algorithm": "t_vol"},
     f"{T}.table_strategy", "no target ends in 2"),
    ("boundary partitions exceed tables", {"algorithms.t_br": {"type": "BOUNDARY_RANGE", "props": {
        "sharding_ranges": [100, 200]}}, f"{T}.table_strategy.algorithm": "t_br"},
     f"{T}.table_strategy", "no target ends in 2"),
    ("hash mod count exceeds data sources", {"algorithms.db_mod.type": "HASH_MOD",
                                             "algorithms.db_mod.props.sharding_count": 4},
     f"{T}.database_strategy", "no target ends in 2"),
    ("ambiguous suffix", {f"{T}.actual_data_nodes": "ds_${0..1}.t_order_${['0', '1', '01']}",
                          f"{T}.table_strategy.algorithm": "db_mod"},
     f"{T}.table_strategy", "ambiguous"),
    ("nodes span data sources without database strategy", {f"{T}.database_strategy": _DELETE},
     f"{T}.database_strategy", "database_strategy is required"),
    ("several tables per data source without table strategy", {f"{T}.table_strategy": _DELETE},
     f"{T}.table_strategy", "table_strategy is required"),
    ("hint strategy with columns", {"algorithms.h": {"type": "HINT"}, f"{T}.database_strategy.algorithm": "h"},
     f"{T}.database_strategy.columns", "takes no columns"),
    ("table declared twice", {"tables.T_ORDER": {"actual_data_nodes": "ds_0.x"}}, "tables.T_ORDER",
     "declared twice"),
    ("actual table shared by two tables", {f"{TI}.actual_data_nodes": "ds_${0..1}.t_order_${0..1}",
                                           f"{TI}.table_strategy.algorithm": "t_inline"},
     f"{TI}.actual_data_nodes", "already belongs to table 't_order'"),
    ("logical name is another table's actual table", {"tables.t_order_0": {"actual_data_nodes": "ds_0.t_x"}},
     "tables.t_order_0", "also an actual table"),
    ("broadcast and sharded", {"broadcast_tables": ["t_dict", "T_ORDER"]}, "broadcast_tables[1]",
     "either broadcast or sharded"),
    ("broadcast is an actual table", {"broadcast_tables": ["t_order_item_1"]}, "broadcast_tables[0]",
     "actual table of sharded table 't_order_item'"),
    ("broadcast listed twice", {"broadcast_tables": ["t_dict", "T_DICT"]}, "broadcast_tables[1]", "twice"),
    ("binding names an undeclared table", {"binding_tables": [["t_order", "t_dict"]]},
     "binding_tables[0][1]", "not declared under tables"),
    ("binding group of one", {"binding_tables": [["t_order"]]}, "binding_tables[0]", "at least two"),
    ("binding table in two groups", {"tables.t_x": {
        "actual_data_nodes": "ds_${0..1}.t_x_${0..1}", "database_strategy": {"column": "user_id", "algorithm": "db_mod"},
        "table_strategy": {"column": "order_id", "algorithm": "tx"}},
        "algorithms.tx": {"type": "INLINE", "props": {"algorithm_expression": "t_x_${order_id % 2}"}},
        "binding_tables": [["t_order", "t_order_item"], ["t_x", "t_order_item"]]},
     "binding_tables[1][1]", "already in binding group 0"),
    ("binding with different data sources", {f"{TI}.actual_data_nodes": "ds_0.t_order_item_${0..1}",
                                             f"{TI}.database_strategy": _DELETE},
     "binding_tables[0][1]", "is on ['ds_0']"),
    ("binding with different table counts", {f"{TI}.actual_data_nodes": "ds_${0..1}.t_order_item_${0..2}",
                                             "algorithms.ti_inline.props.algorithm_expression":
                                             "t_order_item_${order_id % 3}"},
     "binding_tables[0][1]", "'t_order_item' has 3"),
    ("binding with different columns", {f"{TI}.table_strategy.columns": ["item_id"],
                                        "algorithms.ti_inline.props.algorithm_expression":
                                        "t_order_item_${item_id % 2}"},
     "binding_tables[0][1]", "but 't_order_item' on ['item_id']"),
    ("binding with different algorithms", {"algorithms.ti_inline.props.algorithm_expression":
                                           "t_order_item_${(order_id + 1) % 2}"},
     "binding_tables[0][1]", "same table position"),
    ("binding with different algorithm types", {"algorithms.db_mod2": {"type": "HASH_MOD",
                                                                       "props": {"sharding_count": 2}},
                                                f"{TI}.database_strategy.algorithm": "db_mod2"},
     "binding_tables[0][1]", "uses HASH_MOD"),
    ("binding with a missing strategy", {f"{TI}.actual_data_nodes": "ds_${0..1}.t_order_item",
                                         f"{TI}.table_strategy": _DELETE},
     "binding_tables[0][1]", "tables in"),
    ("key generator unknown type", {"key_generators.snow.type": "SEQUENCE"}, "key_generators.snow.type",
     "unknown key generator type"),
    ("key generator worker id out of range", {"key_generators.snow.props.worker_id": 5000},
     "key_generators.snow.props.worker_id", "between 0 and 1023"),
]


@pytest.mark.parametrize(("changes", "path", "message"), [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_validation_errors_name_the_yaml_path(changes, path, message):
    raw = base()
    for dotted, value in changes.items():
        _set(raw, dotted, value if value is _DELETE else copy.deepcopy(value))
    with pytest.raises(ConfigError) as info:
        parse(raw)
    assert info.value.path == f"{P}.{path}"
    assert message in str(info.value)
    assert str(info.value).startswith(f"{P}.{path}: ")


def test_interval_missing_month_is_refused():
    raw = yaml.safe_load("""
tables:
  t_log:
    actual_data_nodes: ds_0.t_log_2024${['01', '02', '04']}
    table_strategy: {column: created_at, algorithm: monthly}
algorithms:
  monthly:
    type: INTERVAL
    props: {datetime_lower: "2024-01-01", datetime_upper: "2024-04-30", sharding_suffix_pattern: "%Y%m",
            datetime_interval_unit: MONTHS}
""")
    with pytest.raises(ConfigError, match="202403") as info:
        parse(raw)
    assert info.value.path == f"{P}.tables.t_log.table_strategy"


def test_not_a_mapping_and_no_data_sources():
    with pytest.raises(ConfigError) as info:
        parse_sharding_rules(["x"], P, DATA_SOURCES)
    assert info.value.path == P
    with pytest.raises(ConfigError) as info:
        parse_sharding_rules({}, P, [])
    assert info.value.path == P


def test_error_cases_do_not_mutate_base():
    # Sanity: the base config itself is valid, so each error case fails for its own reason.
    assert parse(base()).tables.keys() == {"t_order", "t_order_item"}
