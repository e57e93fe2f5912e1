"""Image and change SQL built once per statement shape equals the SQL built from the
statement itself, whatever its literals."""

from __future__ import annotations

import pytest

from txn.base_templates import FullStatement, ShapedStatement, Templates
from txn.images import ColumnMeta, TableMeta
from txn.snapshot import UnsupportedStatement

META = TableMeta("t_order_1", (ColumnMeta("id", "bigint", False), ColumnMeta("status", "varchar"),
                               ColumnMeta("price", "decimal"), ColumnMeta("ratio", "double")), ("id",))
KEYS = [(7,), (9,)]


@pytest.mark.parametrize("sql", [
    "UPDATE t_order_1 SET status = 'paid', price = price * 2 WHERE id = 7",
    "UPDATE t_order_1 SET status = 'it''s \\\\ done' WHERE id IN (7, 9)",
    "UPDATE t_order_1 SET price = 1.5e3 WHERE status = 'new' ORDER BY price DESC LIMIT 2",
    "DELETE FROM t_order_1 WHERE id BETWEEN 7 AND 9 AND status <> 'x'",
    "DELETE FROM t_order_1 WHERE price > -5 LIMIT 10",
])
def test_shaped_sql_equals_full_sql(sql):
    templates = Templates()
    for variant in (sql, sql.replace("7", "70")):
        shaped = templates.statement(variant)
        assert isinstance(shaped, ShapedStatement)
        full = FullStatement(variant)
        assert (shaped.kind, shaped.table) == (full.kind, full.table)
        assert shaped.before_sql(META) == full.before_sql(META)
        assert shaped.change_sql(META, KEYS) == full.change_sql(META, KEYS)


def test_shapes_are_shared_and_other_statements_take_the_full_path():
    templates = Templates()
    first = templates.statement("UPDATE t_order_1 SET status = 'a' WHERE id = 1")
    second = templates.statement("UPDATE t_order_1 SET status = 'b' WHERE id = 2")
    assert isinstance(second, ShapedStatement) and first.shape is second.shape
    assert isinstance(templates.statement("INSERT INTO t_order_1 (id) VALUES (1)"), FullStatement)
    assert isinstance(templates.statement("UPDATE t_order_1 SET status = x'61' WHERE id = 1"), FullStatement)


def test_refusals_hold_for_shapes():
    shaped = Templates().statement("UPDATE t_order_1 SET id = 5 WHERE id = 1")
    with pytest.raises(UnsupportedStatement, match="primary-key column id"):
        shaped.before_sql(META)
