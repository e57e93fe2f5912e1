"""The plan cache gives the same route units as a full parse and plan, for statements that
differ only in literals, and leaves shapes it must not touch to the full path."""

from __future__ import annotations

import pytest
import sqlglot
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import shop_rules_offline
from sharding import planner
from sharding.algorithms import create_algorithm
from sharding.plan_cache import PlanCache, _numbered_targets, _regex_split, _scan_literals, normalise


@pytest.fixture(scope="module")
def rules():
    return shop_rules_offline()


STATEMENTS = [
    "SELECT order_id, amount FROM t_order WHERE order_id = {a} AND user_id = {b}",
    "SELECT * FROM t_order o WHERE o.user_id IN ({a}, {b}) AND o.status = 'x''{a}'",
    "SELECT COUNT(*), AVG(amount) FROM t_order WHERE user_id BETWEEN {a} AND {b}",
    "SELECT t_order.order_id FROM t_order WHERE t_order.order_id = {a} AND t_order.user_id = {b}",
    "UPDATE t_order SET amount = amount + 1.5, status = 'n\\'{a}' WHERE order_id = {a} AND user_id = {b}",
    "DELETE FROM t_order WHERE user_id = {b} AND amount > {a}.25",
    "INSERT INTO t_order (order_id, user_id, status) VALUES ({a}, {b}, 'p'), ({b}, {a}, 'q')",
    "SELECT o.order_id, d.label FROM t_order o JOIN t_dict d ON d.code = o.status WHERE o.user_id = {b}",
    # merged shapes: the rewrite for the shards is made once per shape, rendered once per route
    "SELECT status FROM t_order WHERE order_id BETWEEN {a} AND {b} ORDER BY amount DESC, status",
    "SELECT DISTINCT status FROM t_order WHERE user_id > {a} ORDER BY status",
    "SELECT user_id, COUNT(*), AVG(amount) FROM t_order WHERE order_id >= {a} GROUP BY user_id "
    "ORDER BY user_id DESC",
]


def canonical(units):
    return [(u.data_source, sqlglot.transpile(u.sql, read="mysql", write="mysql")[0]) for u in units]


@pytest.mark.parametrize("template", STATEMENTS)
def test_cached_plans_equal_full_plans(rules, template):
    cache = PlanCache()
    for a, b in [(1, 2), (7, 3), (10, 10), (123456789, 0), (5, 8)]:
        sql = template.format(a=a, b=b)
        cached = cache.plan(sql, rules, "shop")
        full = planner.plan(planner.parse_statement(sql), rules, "shop", sql_text=sql)
        assert cached is not None, sql
        # The cached path keeps the client's own spelling of literals ('n\\'1' vs 'n''1').
        assert canonical(cached.units) == canonical(full.units), sql
        assert cached.merge == full.merge
    assert cache.hits == 4 and cache.misses == 1


@pytest.mark.parametrize("sql", [
    "SELECT * FROM t_order ORDER BY 2 LIMIT 3",       # literals shape the result
    "SELECT 1, order_id FROM t_order WHERE user_id = 1",
    "SELECT /* dbmesh:primary */ * FROM t_order WHERE user_id = 1",  # comments may carry hints
    "SELECT order_id FROM t_order GROUP BY 1",
    "SELECT order_id FROM t_order",                   # no literal: nothing to share
    "INSERT INTO t_order (order_id, user_id, status) VALUES (1, 2, x'10')",  # prefixed strings
    "SELECT * FROM t_order WHERE user_id = 1 AND status = _utf8mb4'a'",
])
def test_shapes_left_to_the_full_path(rules, sql):
    assert PlanCache().plan(sql, rules, "shop") is None


def test_normalise_keeps_identifiers_with_digits():
    shape, literals = normalise("SELECT c1, t.x2 FROM t_order_1 t WHERE id = 42 AND s = 'a''b' AND f = 1.5e3")
    assert shape == ("SELECT c1, t.x2 FROM t_order_1 t WHERE id = :dbmeshp0 AND s = :dbmeshp1 "
                     "AND f = :dbmeshp2")
    assert literals == ["42", "'a''b'", "1.5e3"]


# The literal scanner (run compiled) and the regular expression (run as Python source) must
# cut every text the same way; see plan_cache._split.
_TOKENS = st.one_of(
    st.sampled_from(["SELECT", "c", "FROM", "sbtest1", "t_order_1", "t", ".", "WHERE", "id", "=", "AND", "IN",
                     "(", ")", ",", "`", "@", "@@", "$", "-", "+", "*", "/", "<", ">", "e", "E", "x", "N",
                     "_utf8mb4", "\n", "\t"]),
    st.from_regex(r"\A[0-9]{1,6}(\.[0-9]{1,3})?([eE][-+]?[0-9]{1,2})?\Z"),
    st.from_regex(r"\A'([a-z0-9 .,]|''|\\[a-z'\\])*'\Z"),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(_TOKENS, st.sampled_from(["", " "])), min_size=1, max_size=14))
def test_literal_scanner_cuts_like_the_regular_expression(parts):
    sql = "".join(token + gap for token, gap in parts)  # glued tokens too: 0E-00.0, t1x2, 5abc
    assert _scan_literals(sql) == _regex_split(sql), sql


@pytest.mark.parametrize("sql, literals", [
    ("SELECT c1, t.x2, `3`, @v4 FROM t_order_1 WHERE id=5 AND k=6e2 AND f = 1.5E-3", ["5", "6e2", "1.5E-3"]),
    ("SELECT c FROM t WHERE id = 5abc OR x1.5 = 7", ["7"]),
    ("SELECT c FROM t WHERE id IN (1,2) AND s = 'it''s' AND b = 'x\\'y'", ["1", "2", "'it''s'", "'x\\'y'"]),
])
def test_literal_scanner_examples(sql, literals):
    for split in (_scan_literals, _regex_split):
        pieces = split(sql)
        assert pieces is not None and pieces[1::2] == literals and "".join(pieces) == sql


@pytest.mark.parametrize("sql", [
    "SELECT c FROM t WHERE s = 'a?b:c\"d#e--f/*g'",  # inside a string these mean nothing
])
def test_literal_scanner_reads_inside_strings_as_text(sql):
    assert _scan_literals(sql) == ["SELECT c FROM t WHERE s = ", sql[sql.index("'"):], ""]


@pytest.mark.parametrize("sql", [
    "SELECT c FROM t WHERE s = 'open",       # an unterminated string
    "SELECT c FROM t WHERE id = ? AND k = 1",
    "SELECT c FROM t WHERE id = 1 -- note",
    "SELECT c FROM t WHERE id = 1 # note",
    "SELECT /*+ hint */ c FROM t WHERE id = 1",
    'SELECT "c" FROM t WHERE id = 1',
    "SELECT c FROM t WHERE id = :p AND k = 1",
    "SELECT c FROM t WHERE b = b'01'",
    "SELECT c FROM t_order_1",                # no literal
])
def test_literal_scanner_refuses(sql):
    assert _scan_literals(sql) is None and _regex_split(sql) is None


# Point shapes: equalities on every sharding column of one table. A hit routes them from the
# literals alone (PointShape); the result must be the full planner's, whatever the values.
POINT_SHAPES = [
    "SELECT order_id, amount FROM t_order WHERE order_id = {a} AND user_id = {b}",
    "SELECT o.amount FROM t_order o WHERE {b} = o.user_id AND o.order_id = {a} AND o.status <> 'x'",
    "SELECT amount FROM shop.t_order WHERE user_id = {b} AND order_id = {a} FOR UPDATE",
    "SELECT DISTINCT status FROM t_order WHERE user_id = {b} AND order_id = {a} AND amount > {a}",
    "UPDATE t_order SET amount = amount + {a} WHERE order_id = {a} AND user_id = {b}",
    "DELETE FROM t_order WHERE user_id = {b} AND order_id = {a}",
    "SELECT amount FROM t_order WHERE user_id = '{b}' AND order_id = {a}",
]
# Shapes that look close but need the planner (a range, OR, a column named twice, one
# sharding column missing, a join): they must still plan right.
NOT_POINT_SHAPES = [
    "SELECT amount FROM t_order WHERE user_id = {b} AND order_id > {a}",
    "SELECT amount FROM t_order WHERE user_id = {b} AND (order_id = {a} OR order_id = {b})",
    "SELECT amount FROM t_order WHERE user_id = {b} AND order_id = {a} AND order_id = {b}",
    "SELECT amount FROM t_order WHERE user_id = {b}",
    "SELECT o.amount FROM t_order o JOIN t_order_item i ON i.order_id = o.order_id AND i.user_id = o.user_id "
    "WHERE o.user_id = {b} AND o.order_id = {a}",
]


@pytest.mark.parametrize("template", POINT_SHAPES + NOT_POINT_SHAPES)
def test_point_shapes_route_like_the_planner(rules, template):
    cache = PlanCache()
    for a, b in [(1, 2), (7, 3), (10, 10), (123456789, 0), (5, 8), (4, 1)]:
        sql = template.format(a=a, b=b)
        cached = cache.plan(sql, rules, "shop")
        full = planner.plan(planner.parse_statement(sql), rules, "shop", sql_text=sql)
        assert cached is not None, sql
        assert canonical(cached.units) == canonical(full.units), sql
        assert (cached.kind, cached.write, cached.locking, cached.merge is None) == \
            (full.kind, full.write, full.locking, full.merge is None)
    fast = [v for v in cache._points.values() if v is not None and hasattr(v, "positions")]
    assert bool(fast) == (template in POINT_SHAPES)


def test_point_shapes_leave_hinted_statements_to_the_planner(rules):
    cache = PlanCache()
    sql = "SELECT amount FROM t_order WHERE user_id = 1 AND order_id = 2"
    token = planner.ROUTING_HINTS.set(planner.Hints(database=(0,)))
    try:
        hinted = cache.plan(sql, rules, "shop")
    finally:
        planner.ROUTING_HINTS.reset(token)
    assert hinted is not None and not cache._points  # not even analysed under hints


@pytest.mark.parametrize("template", POINT_SHAPES + NOT_POINT_SHAPES)
def test_point_read_routes_like_plan_and_only_plain_reads(rules, template):
    """The fast lane's lookup: the same unit as plan() for a known, non-locking SELECT point
    shape; None for anything else (writes, FOR UPDATE, shapes that need the planner)."""
    cache = PlanCache()
    first = template.format(a=1, b=2)
    assert cache.point_read(first, "shop") is None  # a shape plan() has not seen yet
    cache.plan(first, rules, "shop")
    plain_read = template in POINT_SHAPES and template.startswith("SELECT") and "FOR UPDATE" not in template
    for a, b in [(7, 3), (10, 10), (123456789, 0), (4, 1)]:
        sql = template.format(a=a, b=b)
        found = cache.point_read(sql, "shop")
        if not plain_read:
            assert found is None, sql
            continue
        (unit,) = cache.plan(sql, rules, "shop").units
        assert found is not None and found[:2] == (unit.data_source, unit.sql), sql


def test_generated_keys_leave_the_cached_tree_alone(rules):
    """An INSERT without its generated key column gets the column added in its own copy: the
    cached shape still lists only the client's columns for the next statement."""
    cache = PlanCache()
    for user in (3, 4, 5):
        plan = cache.plan(f"INSERT INTO t_order (user_id, status) VALUES ({user}, 'gen')", rules, "shop")
        assert plan is not None and plan.last_insert_id
        [unit] = plan.units
        assert unit.data_source == f"ds_{user % 2}"
        assert f"(user_id, status, order_id) VALUES ({user}, 'gen', {plan.last_insert_id})" in unit.sql
    assert cache.hits == 2


def test_a_refused_shape_is_refused_every_time(rules):
    """Checks made once per cached shape keep refusing it (nothing is remembered as passed)."""
    from sharding.errors import ShardingError

    cache = PlanCache()
    for user in (1, 2, 3):
        with pytest.raises(ShardingError, match="not matched on sharding column"):
            cache.plan(f"SELECT o.order_id FROM t_order o JOIN t_order_item i ON o.order_id = i.order_id "
                       f"WHERE o.status = 'x{user}'", rules, "shop")


def test_numbered_targets_map_each_shard_number_to_its_one_target():
    """The direct route's lookup for MOD-like algorithms: a number with no target, or with
    two, is left out, so the general route words its error."""
    mod4 = create_algorithm("MOD", {"sharding_count": 4})
    assert _numbered_targets(mod4, ["ds_0", "ds_1", "ds_2", "ds_3"]) == {0: "ds_0", 1: "ds_1", 2: "ds_2", 3: "ds_3"}
    assert _numbered_targets(mod4, ["t_0", "t_2"]) == {0: "t_0", 2: "t_2"}
    assert _numbered_targets(mod4, ["t_1", "u_1", "t_2"]) == {2: "t_2"}
    assert _numbered_targets(create_algorithm("INLINE", {"algorithm-expression": "t_${id % 2}"}), ["t_0", "t_1"]) is None
