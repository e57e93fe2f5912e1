"""Snapshot SQL for the BASE mode (txn.snapshot): image capture, key restriction,
INSERT keys, and the statements that are refused."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlglot

from txn import snapshot
from txn.images import ColumnMeta, RowImage, TableImage, TableMeta
from txn.snapshot import SnapshotError, UnsupportedStatement

ORDERS = TableMeta("t_order_1", (
    ColumnMeta("order_id", "bigint", False, auto_increment=True),
    ColumnMeta("user_id", "int", False),
    ColumnMeta("status", "varchar"),
    ColumnMeta("amount", "decimal"),
    ColumnMeta("total", "decimal", generated=True),
), ("order_id",))
ITEMS = TableMeta("t_item_0", (
    ColumnMeta("region", "varchar", False),
    ColumnMeta("item_id", "int", False),
    ColumnMeta("day", "date", False),
    ColumnMeta("tag", "varbinary", False),
    ColumnMeta("qty", "int"),
), ("region", "item_id", "day", "tag"))
AUTO_COMPOSITE = TableMeta("t_ac", (
    ColumnMeta("tenant", "int", False), ColumnMeta("id", "bigint", False, auto_increment=True),
    ColumnMeta("v", "varchar"),
), ("tenant", "id"))
NO_KEY = TableMeta("t_log", (ColumnMeta("msg", "text"),), ())


def parse(sql: str) -> sqlglot.exp.Expression:
    return sqlglot.parse_one(sql, read="mysql")


ALL_ORDER_COLUMNS = "`order_id`, `user_id`, `status`, `amount`, `total`"


@pytest.mark.parametrize(("sql", "expected"), [
    ("UPDATE t_order_1 SET status = 'paid' WHERE order_id = 7",
     f"SELECT {ALL_ORDER_COLUMNS} FROM t_order_1 WHERE order_id = 7 FOR UPDATE"),
    ("UPDATE t_order_1 SET amount = amount * 2",
     f"SELECT {ALL_ORDER_COLUMNS} FROM t_order_1 FOR UPDATE"),
    ("DELETE FROM t_order_1 WHERE user_id IN (1, 2) AND status LIKE 'x%'",
     f"SELECT {ALL_ORDER_COLUMNS} FROM t_order_1 WHERE user_id IN (1, 2) AND status LIKE 'x%' FOR UPDATE"),
    ("UPDATE ds.t_order_1 AS o SET o.status = 'x' WHERE o.user_id = 3",
     f"SELECT {ALL_ORDER_COLUMNS} FROM ds.t_order_1 AS o WHERE o.user_id = 3 FOR UPDATE"),
    ("UPDATE t_order_1 SET status = 'x' WHERE user_id = 3 ORDER BY amount DESC LIMIT 10",
     f"SELECT {ALL_ORDER_COLUMNS} FROM t_order_1 WHERE user_id = 3 ORDER BY amount DESC, `order_id` "
     "LIMIT 10 FOR UPDATE"),
    ("DELETE FROM t_order_1 WHERE user_id = 3 LIMIT 5",
     f"SELECT {ALL_ORDER_COLUMNS} FROM t_order_1 WHERE user_id = 3 LIMIT 5 FOR UPDATE"),
    ("DELETE FROM t_order_1 ORDER BY order_id",
     f"SELECT {ALL_ORDER_COLUMNS} FROM t_order_1 ORDER BY order_id FOR UPDATE"),
    ("UPDATE t_order_1 SET status = 'x' WHERE user_id IN (SELECT id FROM u WHERE vip)",
     f"SELECT {ALL_ORDER_COLUMNS} FROM t_order_1 WHERE user_id IN (SELECT id FROM u WHERE vip) FOR UPDATE"),
])
def test_before_image_sql(sql: str, expected: str) -> None:
    assert snapshot.before_image_sql(parse(sql), ORDERS) == expected
    sqlglot.parse_one(expected, read="mysql")  # and it is valid SQL


def test_float_columns_are_read_exactly() -> None:
    meta = TableMeta("t_f", (ColumnMeta("id", "int"), ColumnMeta("f", "float"), ColumnMeta("d", "double"),
                             ColumnMeta("100%", "varchar")), ("id",))
    columns = "`id`, CAST(`f` AS DOUBLE) AS `f`, CAST(`d` AS DOUBLE) AS `d`, `100%`"
    assert snapshot.before_image_sql(parse("DELETE FROM t_f WHERE f > 1"), meta) == \
        f"SELECT {columns} FROM t_f WHERE f > 1 FOR UPDATE"
    stmt = snapshot.after_image_sql(meta, [(1,)])
    assert stmt.sql.startswith("SELECT `id`, CAST(`f` AS DOUBLE) AS `f`, CAST(`d` AS DOUBLE) AS `d`, `100%%` FROM")
    assert stmt.inline().startswith(f"SELECT {columns} FROM")


def test_marker_collision_is_refused() -> None:
    with pytest.raises(SnapshotError, match="marker"):
        snapshot.before_image_sql(parse("DELETE FROM t_order_1 WHERE dbmesh_snapshot_columns_marker = 1"), ORDERS)


def test_before_image_sql_composite_key_ties() -> None:
    sql = snapshot.before_image_sql(parse("DELETE FROM t_item_0 WHERE qty = 0 ORDER BY day LIMIT 3"), ITEMS)
    assert sql.endswith("ORDER BY day, `region`, `item_id`, `day`, `tag` LIMIT 3 FOR UPDATE")


def test_before_image_sql_keeps_cte() -> None:
    sql = snapshot.before_image_sql(
        parse("WITH c AS (SELECT 1 AS v) UPDATE t_order_1 SET status = 'x' WHERE user_id IN (SELECT v FROM c)"),
        ORDERS)
    assert sql.startswith("WITH c AS (SELECT 1 AS v) SELECT `order_id`")


def test_restrict_to_keys() -> None:
    stmt = parse("UPDATE t_order_1 SET status = 'x%' WHERE RAND() < 0.5 ORDER BY amount LIMIT 2")
    assert snapshot.restrict_to_keys(stmt, ORDERS, [(1,), (2 ** 64 - 1,)]) == \
        "UPDATE t_order_1 SET status = 'x%' WHERE `order_id` IN (1, 18446744073709551615) ORDER BY amount"
    assert snapshot.restrict_to_keys(parse("DELETE FROM t_order_1 WHERE 1"), ORDERS, []) == \
        "DELETE FROM t_order_1 WHERE 1 = 0"
    keys = [("eu", 1, dt.date(2024, 1, 2), b"\x00"), ("us", 2, dt.date(2024, 1, 3), b"")]
    assert snapshot.restrict_to_keys(parse("DELETE FROM t_item_0 WHERE qty = 0"), ITEMS, keys) == (
        "DELETE FROM t_item_0 WHERE (`region`, `item_id`, `day`, `tag`) IN "
        "((_utf8mb4 X'6575', 1, '2024-01-02', X'00'), (_utf8mb4 X'7573', 2, '2024-01-03', X''))")


def test_after_image_sql() -> None:
    sql, params = snapshot.after_image_sql(ORDERS, [(5,), (6,)])
    assert sql == f"SELECT {ALL_ORDER_COLUMNS} FROM `t_order_1` WHERE `order_id` IN (%s, %s) FOR UPDATE"
    assert params == (5, 6)
    keys = [("eu", 1, dt.date(2024, 1, 2), b"\x00")]
    stmt = snapshot.after_image_sql(ITEMS, keys, schema="shop_0")
    assert stmt.sql == ("SELECT `region`, `item_id`, `day`, `tag`, `qty` FROM `shop_0`.`t_item_0` "
                        "WHERE (`region`, `item_id`, `day`, `tag`) IN ((%s, %s, %s, %s)) FOR UPDATE")
    assert stmt.params == keys[0]


# ---------------------------------------------------------------------------------------
# INSERT keys


@pytest.mark.parametrize(("sql", "last_id", "increment", "keys"), [
    ("INSERT INTO t_order_1 (user_id) VALUES (1), (2), (3)", 100, 1, [(100,), (101,), (102,)]),
    ("INSERT INTO t_order_1 (user_id) VALUES (1), (2)", 101, 2, [(101,), (103,)]),
    ("INSERT INTO t_order_1 (order_id, user_id) VALUES (NULL, 1), (DEFAULT, 2), (0, 3)", 7, 1,
     [(7,), (8,), (9,)]),
    ("INSERT INTO t_order_1 SET user_id = 5", 42, 1, [(42,)]),
    ("INSERT INTO t_order_1 VALUES (DEFAULT, 1, 'a', 1.5, DEFAULT)", 9, 1, [(9,)]),
    ("INSERT INTO t_order_1 () VALUES ()", 3, 1, [(3,)]),
    ("INSERT INTO t_order_1 (order_id, user_id) VALUES (18446744073709551615, 1), (-5, 2), ('17', 3)", 0, 1,
     [(2 ** 64 - 1,), (-5,), (17,)]),
    ("INSERT INTO t_order_1 VALUES (11, 1, 'a', 1.5, DEFAULT)", 0, 1, [(11,)]),
])
def test_inserted_keys(sql: str, last_id: int, increment: int, keys: list[tuple]) -> None:
    stmt = parse(sql)
    assert snapshot.inserted_keys(stmt, ORDERS, last_id, len(keys), auto_increment_increment=increment) == keys


def test_inserted_keys_composite() -> None:
    stmt = parse("INSERT INTO t_item_0 (tag, day, item_id, region, qty) VALUES "
                 "(X'0aff', '2024-01-02', 1, 'eu', 5), (_binary'ab', '2024-01-03', -2, _utf8mb4'us', NULL), "
                 "('', '2024-01-04', '3', N'ap', 0)")
    assert snapshot.inserted_keys(stmt, ITEMS, 0, 3) == [
        ("eu", 1, "2024-01-02", b"\n\xff"), ("us", -2, "2024-01-03", b"ab"), ("ap", 3, "2024-01-04", "")]
    stmt = parse("INSERT INTO t_ac (tenant, v) VALUES (1, 'a'), (2, 'b')")
    assert snapshot.inserted_keys(stmt, AUTO_COMPOSITE, 50, 2) == [(1, 50), (2, 51)]


def test_inserted_keys_numbers_for_string_keys_become_text() -> None:
    meta = TableMeta("t_s", (ColumnMeta("code", "varchar", False), ColumnMeta("n", "decimal", False)),
                     ("code", "n"))
    assert snapshot.inserted_keys(parse("INSERT INTO t_s VALUES (5, '1.50'), ('06', 2.5)"), meta, 0, 2) == \
        [("5", Decimal("1.50")), ("06", Decimal("2.5"))]


def test_no_auto_value_on_zero() -> None:
    stmt = parse("INSERT INTO t_order_1 (order_id, user_id) VALUES (0, 1)")
    assert snapshot.inserted_keys(stmt, ORDERS, 0, 1, no_auto_value_on_zero=True) == [(0,)]


@pytest.mark.parametrize(("sql", "message"), [
    ("INSERT INTO t_order_1 (order_id, user_id) VALUES (5, 1), (NULL, 2)",
     "mixes generated and explicit AUTO_INCREMENT values"),
    ("INSERT INTO t_order_1 (order_id, user_id) VALUES (UUID_SHORT(), 1)", "computed value UUID_SHORT()"),
    ("INSERT INTO t_order_1 (order_id, user_id) VALUES (?, 1)", "bind parameter"),
    ("INSERT INTO t_order_1 (order_id, user_id) VALUES (1 + 1, 1)", "computed value"),
    ("INSERT INTO t_order_1 (user_id) SELECT id FROM u", "INSERT ... SELECT"),
    ("INSERT IGNORE INTO t_order_1 (order_id) VALUES (1)", "INSERT IGNORE"),
    ("INSERT INTO t_order_1 (order_id) VALUES (1) ON DUPLICATE KEY UPDATE status = 'x'", "ON DUPLICATE KEY"),
])
def test_inserts_refused(sql: str, message: str) -> None:
    with pytest.raises(UnsupportedStatement, match=message) as info:
        snapshot.inserted_keys(parse(sql), ORDERS, 1, 2 if "), (" in sql else 1)
    assert "table t_order_1" in str(info.value)


def test_insert_key_from_default_refused() -> None:
    with pytest.raises(UnsupportedStatement, match="region gets its column default") as info:
        snapshot.inserted_keys(parse("INSERT INTO t_item_0 (item_id, day, tag) VALUES (1, '2024-01-01', '')"),
                               ITEMS, 0, 1)
    assert "t_item_0" in str(info.value)
    with pytest.raises(UnsupportedStatement, match="region gets NULL"):
        snapshot.inserted_keys(parse("INSERT INTO t_item_0 VALUES (NULL, 1, '2024-01-01', '', 1)"), ITEMS, 0, 1)
    with pytest.raises(UnsupportedStatement, match="hex"):
        snapshot.inserted_keys(parse("INSERT INTO t_item_0 VALUES (x'41', 1, '2024-01-01', '', 1)"), ITEMS, 0, 1)


def test_insert_result_checks() -> None:
    stmt = parse("INSERT INTO t_order_1 (user_id) VALUES (1), (2)")
    with pytest.raises(SnapshotError, match="affected 1 rows for 2 VALUES rows"):
        snapshot.inserted_keys(stmt, ORDERS, 5, 1)
    with pytest.raises(SnapshotError, match="no LAST_INSERT_ID"):
        snapshot.inserted_keys(stmt, ORDERS, 0, 2)
    with pytest.raises(SnapshotError, match="2 values for 3 columns"):
        snapshot.inserted_keys(parse("INSERT INTO t_order_1 (order_id, user_id, status) VALUES (1, 2)"),
                               ORDERS, 0, 1)


def test_replace_refused_naming_the_table() -> None:
    with pytest.raises(UnsupportedStatement, match="REPLACE on table t_order_1"):
        snapshot.inserted_keys(parse("REPLACE INTO t_order_1 (order_id) VALUES (1)"), ORDERS, 0, 1)
    with pytest.raises(UnsupportedStatement, match="REPLACE on table `t_order_1`"):
        snapshot.before_image_sql(parse("REPLACE INTO `t_order_1` SET order_id = 1"), ORDERS)


@pytest.mark.parametrize(("sql", "message"), [
    ("UPDATE t_order_1 SET order_id = order_id + 1", "changes primary-key column order_id"),
    ("UPDATE t_order_1 AS o SET o.ORDER_ID = 5, status = 'x'", "changes primary-key column ORDER_ID"),
    ("UPDATE t_order_1 JOIN u ON u.id = t_order_1.user_id SET status = 'x'", "multi-table UPDATE"),
    ("UPDATE t_order_1, u SET t_order_1.status = u.s WHERE u.id = t_order_1.user_id", "multi-table UPDATE"),
    ("DELETE t_order_1 FROM t_order_1 JOIN u ON u.id = t_order_1.user_id", "multi-table DELETE"),
    ("DELETE FROM t_order_1 USING t_order_1 JOIN u", "multi-table DELETE"),
])
def test_updates_and_deletes_refused(sql: str, message: str) -> None:
    with pytest.raises(UnsupportedStatement, match=message) as info:
        snapshot.before_image_sql(parse(sql), ORDERS)
    assert "table t_order_1" in str(info.value)


def test_table_without_primary_key_refused() -> None:
    for sql in ("DELETE FROM t_log", "UPDATE t_log SET msg = ''"):
        with pytest.raises(UnsupportedStatement, match="table t_log: the table has no primary key"):
            snapshot.before_image_sql(parse(sql), NO_KEY)
    with pytest.raises(UnsupportedStatement, match="t_log: the table has no primary key"):
        snapshot.inserted_keys(parse("INSERT INTO t_log VALUES ('x')"), NO_KEY, 0, 1)


def test_wrong_table_or_kind() -> None:
    with pytest.raises(SnapshotError, match="targets table t_other but the metadata is of t_order_1"):
        snapshot.before_image_sql(parse("DELETE FROM t_other"), ORDERS)
    with pytest.raises(UnsupportedStatement, match="SELECT"):
        snapshot.before_image_sql(parse("SELECT 1"), ORDERS)
    with pytest.raises(SnapshotError, match="no before image"):
        snapshot.before_image_sql(parse("INSERT INTO t_order_1 (user_id) VALUES (1)"), ORDERS)
    with pytest.raises(SnapshotError, match="for INSERT"):
        snapshot.inserted_keys(parse("DELETE FROM t_order_1"), ORDERS, 0, 0)
    with pytest.raises(SnapshotError, match="UPDATE and DELETE"):
        snapshot.restrict_to_keys(parse("INSERT INTO t_order_1 (user_id) VALUES (1)"), ORDERS, [])


# ---------------------------------------------------------------------------------------
# Checking captured images


def order_row(order_id: int, status: str = "new") -> RowImage:
    return RowImage({"order_id": order_id, "user_id": 1, "status": status, "amount": Decimal("1.00"),
                     "total": Decimal("1.00")})


def test_inserted_image_orders_rows_like_the_statement() -> None:
    image = TableImage(ORDERS, [order_row(1), order_row(2), order_row(3)])
    assert snapshot.inserted_image(image, [(3,), (1,), (2,)]).keys() == [(3,), (1,), (2,)]
    # A key the server stored differently: counts match, order stays as read.
    assert snapshot.inserted_image(image, [("03",), (1,), (2,)]).keys() == [(1,), (2,), (3,)]
    with pytest.raises(SnapshotError, match="found 3 rows by the 2 inserted keys"):
        snapshot.inserted_image(image, [(1,), (2,)])


def test_updated_image_aligns_with_before() -> None:
    before = TableImage(ORDERS, [order_row(2), order_row(1)])
    after = TableImage(ORDERS, [order_row(1, "x"), order_row(2, "x")])
    assert snapshot.updated_image(before, after).keys() == [(2,), (1,)]
    with pytest.raises(SnapshotError, match="does not hold the 2 rows"):
        snapshot.updated_image(before, TableImage(ORDERS, [order_row(1)]))


def test_check_affected() -> None:
    before = TableImage(ORDERS, [order_row(1), order_row(2)])
    snapshot.check_affected(parse("DELETE FROM t_order_1"), before, 2)
    with pytest.raises(SnapshotError, match="removed 1 rows"):
        snapshot.check_affected(parse("DELETE FROM t_order_1"), before, 1)
    snapshot.check_affected(parse("UPDATE t_order_1 SET status = 'x'"), before, 1)
    with pytest.raises(SnapshotError, match="affected 1 rows"):
        snapshot.check_affected(parse("UPDATE t_order_1 SET status = 'x'"), before, 1, client_found_rows=True)
    with pytest.raises(SnapshotError, match="affected 3 rows"):
        snapshot.check_affected(parse("UPDATE t_order_1 SET status = 'x'"), before, 3)


def test_autoinc_settings() -> None:
    snapshot.check_autoinc_settings(1, 1)
    snapshot.check_autoinc_settings(0, 5)
    with pytest.raises(SnapshotError, match="innodb_autoinc_lock_mode = 2"):
        snapshot.check_autoinc_settings(2, 1)
