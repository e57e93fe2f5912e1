"""Compensation SQL and the version-isolation conflict check (txn.reverse)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txn.images import ColumnMeta, RowImage, TableImage, TableMeta, UndoRecord
from txn.reverse import (
    Conflict,
    conflicts,
    current_image_sql,
    expected_image,
    record_keys,
    reverse_branch,
    reverse_record,
)
from txn.sqltext import Statement, inline

# Every MariaDB column type, with a value as a driver returns it and its SQL literal.
TYPES: list[tuple[str, str, Any, str]] = [
    ("c_tinyint", "tinyint", -128, "-128"),
    ("c_smallint", "smallint", 65535, "65535"),
    ("c_mediumint", "mediumint", -8388608, "-8388608"),
    ("c_int", "int", 2147483647, "2147483647"),
    ("c_bigint", "bigint", -(2 ** 63), "-9223372036854775808"),
    ("c_ubigint", "bigint", 2 ** 64 - 1, "18446744073709551615"),
    ("c_decimal", "decimal", Decimal("-12345678901234567890.1234567890"), "-12345678901234567890.1234567890"),
    ("c_decimal_scale", "decimal", Decimal("1.50"), "1.50"),
    ("c_float", "float", 3.4028234663852886e38, "3.4028234663852886e+38"),
    ("c_double", "double", 0.1, "0.1e0"),
    ("c_char", "char", "ab", "_utf8mb4 X'6162'"),
    ("c_varchar", "varchar", "😀 'q' \\", "_utf8mb4 X'F09F988020277127205C'"),
    ("c_text", "text", "", "_utf8mb4 X''"),
    ("c_binary", "binary", b"\x00\x01", "X'0001'"),
    ("c_varbinary", "varbinary", b"\xff", "X'FF'"),
    ("c_blob", "blob", b"%s", "X'2573'"),
    ("c_date", "date", dt.date(2024, 2, 29), "'2024-02-29'"),
    ("c_zero_date", "date", "0000-00-00", "_utf8mb4 X'303030302D30302D3030'"),
    ("c_datetime", "datetime", dt.datetime(2024, 2, 29, 23, 59, 59, 999999), "'2024-02-29 23:59:59.999999'"),
    ("c_timestamp", "timestamp", dt.datetime(1970, 1, 1, 0, 0, 1), "'1970-01-01 00:00:01.000000'"),
    ("c_time", "time", -dt.timedelta(hours=838, minutes=59, seconds=59), "'-838:59:59.000000'"),
    ("c_year", "year", 2155, "2155"),
    ("c_bit", "bit", b"\x03\xff", "X'03FF'"),
    ("c_bool", "tinyint", True, "1"),
    ("c_enum", "enum", "b", "_utf8mb4 X'62'"),
    ("c_set", "set", "x,z", "_utf8mb4 X'782C7A'"),
    ("c_json", "longtext", '{"k": [1, "😀"]}', "_utf8mb4 X'7B226B223A205B312C2022F09F9880225D7D'"),
]
ALL = TableMeta("t_all_1", (ColumnMeta("id", "bigint", False),
                            *(ColumnMeta(name, type_name) for name, type_name, _, _ in TYPES),
                            ColumnMeta("c_gen", "int", generated=True)), ("id",))
VALUES = {name: value for name, _, value, _ in TYPES}
LITERALS = {name: text for name, _, _, text in TYPES}
COMPOSITE = TableMeta("t_item_1", (
    ColumnMeta("region", "varchar", False), ColumnMeta("at", "datetime", False),
    ColumnMeta("tag", "varbinary", False), ColumnMeta("qty", "int"), ColumnMeta("note", "varchar"),
), ("region", "at", "tag"))
WRITABLE = ["id", *VALUES]


def all_row(row_id: int, **changes: Any) -> RowImage:
    return RowImage({"id": row_id, **VALUES, "c_gen": 7, **changes})


def null_row(row_id: int) -> RowImage:
    return RowImage({"id": row_id, **{c: None for c in VALUES}, "c_gen": None})


def item(region: str, qty: int | None, note: str | None = "n") -> RowImage:
    return RowImage({"region": region, "at": dt.datetime(2024, 1, 1, 12, 0, 0, 5), "tag": b"\x00t",
                     "qty": qty, "note": note})


def image(meta: TableMeta, *rows: RowImage) -> TableImage:
    return TableImage(meta, list(rows))


# ---------------------------------------------------------------------------------------
# INSERT -> DELETE


def test_insert_is_undone_by_delete_per_row_newest_first() -> None:
    record = UndoRecord(1, "INSERT", "t_all_1", after=image(ALL, all_row(1), null_row(2 ** 64 - 1)))
    assert reverse_record(record) == [
        Statement("DELETE FROM `t_all_1` WHERE `id` = %s", (2 ** 64 - 1,)),
        Statement("DELETE FROM `t_all_1` WHERE `id` = %s", (1,)),
    ]


def test_insert_undo_composite_key() -> None:
    record = UndoRecord(1, "INSERT", "t_item_1", after=image(COMPOSITE, item("eu", 1)))
    (stmt,) = reverse_record(record, schema="shop_1")
    assert stmt.sql == "DELETE FROM `shop_1`.`t_item_1` WHERE `region` = %s AND `at` = %s AND `tag` = %s"
    assert stmt.params == ("eu", dt.datetime(2024, 1, 1, 12, 0, 0, 5), b"\x00t")
    assert stmt.inline() == ("DELETE FROM `shop_1`.`t_item_1` WHERE `region` = _utf8mb4 X'6575' AND "
                             "`at` = '2024-01-01 12:00:00.000005' AND `tag` = X'0074'")


# ---------------------------------------------------------------------------------------
# DELETE -> INSERT


def test_delete_is_undone_by_insert_of_every_type() -> None:
    record = UndoRecord(2, "DELETE", "t_all_1", before=image(ALL, all_row(1), null_row(2)))
    second, first = reverse_record(record)
    columns = ", ".join(f"`{c}`" for c in WRITABLE)
    assert first.sql == f"INSERT INTO `t_all_1` ({columns}) VALUES ({', '.join(['%s'] * len(WRITABLE))})"
    assert "c_gen" not in first.sql  # generated: the server computes it
    assert first.params == (1, *VALUES.values())
    assert all(type(a) is type(b) for a, b in zip(first.params[1:], VALUES.values(), strict=True))
    assert second.params == (2, *([None] * len(VALUES)))
    assert first.inline().endswith("VALUES (1, " + ", ".join(LITERALS.values()) + ")")
    assert second.inline().endswith("VALUES (2, " + ", ".join(["NULL"] * len(VALUES)) + ")")


@pytest.mark.parametrize("name", list(VALUES))
def test_each_type_renders_as_its_literal(name: str) -> None:
    record = UndoRecord(2, "DELETE", "t_all_1", before=image(ALL, all_row(1)))
    (stmt,) = reverse_record(record)
    index = WRITABLE.index(name)
    assert stmt.params[index] is VALUES[name] or stmt.params[index] == VALUES[name]
    assert inline("%s", (stmt.params[index],)) == LITERALS[name]


# ---------------------------------------------------------------------------------------
# UPDATE -> UPDATE


def test_update_restores_every_non_key_column() -> None:
    before = image(ALL, all_row(1), all_row(2), null_row(3))
    after = image(ALL, all_row(1, c_varchar="new"), all_row(2), all_row(3))
    record = UndoRecord(3, "UPDATE", "t_all_1", before=before, after=after)
    statements = reverse_record(record)
    assert len(statements) == 2  # row 2 did not change: nothing to undo
    set_list = ", ".join(f"`{c}` = %s" for c in VALUES)
    for stmt in statements:
        assert stmt.sql == f"UPDATE `t_all_1` SET {set_list} WHERE `id` = %s"
    assert statements[0].params == (*([None] * len(VALUES)), 3)  # newest row first: back to NULLs
    assert statements[1].params == (*VALUES.values(), 1)
    assert statements[1].inline() == ("UPDATE `t_all_1` SET "
                                      + ", ".join(f"`{c}` = {LITERALS[c]}" for c in VALUES)
                                      + " WHERE `id` = 1")


def test_update_undo_composite_key_and_nulls() -> None:
    before = image(COMPOSITE, item("eu", None, None), item("us", 5))
    after = image(COMPOSITE, item("eu", 1, "x"), item("us", None))
    statements = reverse_record(UndoRecord(3, "UPDATE", "t_item_1", before=before, after=after))
    sql = "UPDATE `t_item_1` SET `qty` = %s, `note` = %s WHERE `region` = %s AND `at` = %s AND `tag` = %s"
    at = dt.datetime(2024, 1, 1, 12, 0, 0, 5)
    assert statements == [Statement(sql, (5, "n", "us", at, b"\x00t")),
                          Statement(sql, (None, None, "eu", at, b"\x00t"))]


def test_update_of_only_key_columns_table_is_nothing() -> None:
    meta = TableMeta("t_k", (ColumnMeta("a", "int"), ColumnMeta("b", "int")), ("a", "b"))
    row = RowImage({"a": 1, "b": 2})
    assert reverse_record(UndoRecord(1, "UPDATE", "t_k", before=image(meta, row), after=image(meta, row))) == []


def test_decimal_scale_is_no_change_but_float_sign_is() -> None:
    meta = TableMeta("t_n", (ColumnMeta("id", "int"), ColumnMeta("d", "decimal"), ColumnMeta("f", "double")),
                     ("id",))
    same = UndoRecord(1, "UPDATE", "t_n", before=image(meta, RowImage({"id": 1, "d": Decimal("1.5"), "f": 0.0})),
                      after=image(meta, RowImage({"id": 1, "d": Decimal("1.50"), "f": 0.0})))
    assert reverse_record(same) == []
    signed = UndoRecord(1, "UPDATE", "t_n", before=image(meta, RowImage({"id": 1, "d": Decimal("1.5"), "f": 0.0})),
                        after=image(meta, RowImage({"id": 1, "d": Decimal("1.5"), "f": -0.0})))
    assert len(reverse_record(signed)) == 1


@settings(max_examples=100)
@given(data=st.data())
def test_update_undo_restores_before_values(data: st.DataObject) -> None:
    strategies = {"tinyint": st.integers(-128, 127), "decimal": st.decimals(allow_nan=False, allow_infinity=False),
                  "double": st.floats(allow_nan=False, allow_infinity=False), "varchar": st.text(),
                  "blob": st.binary(), "datetime": st.datetimes(), "time": st.timedeltas(), "date": st.dates()}
    meta = TableMeta("t_h", (ColumnMeta("id", "int"), *(ColumnMeta(t, t) for t in strategies)), ("id",))
    count = data.draw(st.integers(1, 5))
    before, after = [], []
    for i in range(count):
        before.append(RowImage({"id": i, **{t: data.draw(st.none() | s) for t, s in strategies.items()}}))
        after.append(RowImage({"id": i, **{t: data.draw(st.none() | s) for t, s in strategies.items()}}))
    statements = reverse_record(UndoRecord(1, "UPDATE", "t_h", before=image(meta, *before),
                                           after=image(meta, *after)))
    restored = {s.params[-1]: s.params[:-1] for s in statements}
    for b in before:
        if b.values["id"] in restored:
            assert restored[b.values["id"]] == tuple(b.values[t] for t in strategies)
    assert [s.params[-1] for s in statements] == sorted(restored, reverse=True)


# ---------------------------------------------------------------------------------------
# A branch: newest record first


def test_branch_undo_order() -> None:
    meta = COMPOSITE
    insert = UndoRecord(9, "INSERT", "t_item_1", after=image(meta, item("eu", 1)))
    update = UndoRecord(9, "UPDATE", "t_item_1", before=image(meta, item("eu", 1)), after=image(meta, item("eu", 2)))
    delete = UndoRecord(9, "DELETE", "t_item_1", before=image(meta, item("eu", 2)))
    kinds = [s.sql.split()[0] for s in reverse_branch([insert, update, delete])]
    assert kinds == ["INSERT", "UPDATE", "DELETE"]


def test_record_keys_and_expected_image() -> None:
    insert = UndoRecord(1, "INSERT", "t_item_1", after=image(COMPOSITE, item("eu", 1), item("us", 1)))
    delete = UndoRecord(1, "DELETE", "t_item_1", before=image(COMPOSITE, item("ap", 1)))
    at = dt.datetime(2024, 1, 1, 12, 0, 0, 5)
    assert record_keys(insert) == [("eu", at, b"\x00t"), ("us", at, b"\x00t")]
    assert record_keys(delete) == [("ap", at, b"\x00t")]
    assert expected_image(insert) is insert.after
    assert expected_image(delete).rows == [] and expected_image(delete).table == COMPOSITE


def test_current_image_sql() -> None:
    stmt = current_image_sql(COMPOSITE, [("eu", dt.datetime(2024, 1, 1), b"")])
    assert stmt.sql == ("SELECT `region`, `at`, `tag`, `qty`, `note` FROM `t_item_1` "
                        "WHERE (`region`, `at`, `tag`) IN ((%s, %s, %s)) FOR UPDATE")
    assert current_image_sql(ALL, [(1,), (2,)]).sql.endswith("WHERE `id` IN (%s, %s) FOR UPDATE")
    assert current_image_sql(ALL, []).sql.endswith("WHERE 1 = 0 FOR UPDATE")


# ---------------------------------------------------------------------------------------
# Conflicts


def test_no_conflict_when_rows_are_as_left() -> None:
    left = image(ALL, all_row(1), null_row(2))
    now = image(ALL, null_row(2), all_row(1, c_decimal_scale=Decimal("1.5000")))
    assert conflicts(left, now) == []


@pytest.mark.parametrize(("column", "value"), [
    ("c_datetime", dt.datetime(2024, 2, 29, 23, 59, 59, 999998)),
    ("c_binary", b"\x00\x02"),
    ("c_double", 0.1 + 2 ** -56),
    ("c_varchar", "😀 'Q' \\"),
    ("c_date", dt.datetime(2024, 2, 29)),
    ("c_decimal_scale", Decimal("1.51")),
    ("c_ubigint", 2 ** 64 - 2),
    ("c_time", dt.timedelta(hours=838, minutes=59, seconds=59)),
    ("c_json", '{"k":[1,"😀"]}'),
    ("c_int", None),
    ("c_gen", 8),
])
def test_changed_value_is_a_conflict(column: str, value: Any) -> None:
    found = conflicts(image(ALL, all_row(1)), image(ALL, all_row(1, **{column: value})))
    assert [(c.kind, c.key, c.columns) for c in found] == [("changed", (1,), (column,))]
    assert column in found[0].describe() and "changed by another transaction" in found[0].describe()


def test_null_to_value_is_a_conflict() -> None:
    found = conflicts(image(ALL, null_row(1)), image(ALL, all_row(1)))
    assert found[0].columns == tuple(VALUES) + ("c_gen",)


def test_deleted_and_inserted_rows_are_conflicts() -> None:
    left = image(COMPOSITE, item("eu", 1), item("us", 1))
    now = image(COMPOSITE, item("us", 1), item("ap", 1))
    found = conflicts(left, now)
    assert [(c.kind, c.key[0]) for c in found] == [("deleted", "eu"), ("inserted", "ap")]
    assert "deleted by another transaction" in found[0].describe()
    assert "inserted by another transaction" in found[1].describe()


def test_delete_record_conflicts_when_the_row_is_back() -> None:
    record = UndoRecord(1, "DELETE", "t_item_1", before=image(COMPOSITE, item("eu", 1)))
    assert conflicts(expected_image(record), image(COMPOSITE)) == []
    found = conflicts(expected_image(record), image(COMPOSITE, item("eu", 1)))
    assert found == [Conflict("t_item_1", ("eu", dt.datetime(2024, 1, 1, 12, 0, 0, 5), b"\x00t"), "inserted",
                              actual=item("eu", 1))]


def test_case_change_of_a_key_is_a_conflict() -> None:
    # Under a _ci collation the server finds 'EU' for 'eu': same row, different value.
    found = conflicts(image(COMPOSITE, item("eu", 1)), image(COMPOSITE, item("EU", 1)))
    assert sorted(c.kind for c in found) == ["deleted", "inserted"]
