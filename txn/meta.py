"""Reading a table's ``TableMeta`` from information_schema (the runner runs the SQL).

    cols = run(*columns_sql(schema, table))        # rows in ordinal order
    keys = run(*primary_key_sql(schema, table))    # rows in key order
    meta = table_meta(table, cols, keys)

Rows may hold str or bytes (the text protocol), either works. Cache the result per actual
table and drop it on DDL; a record keeps the meta it was captured with anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .images import ColumnMeta, TableMeta
from .sqltext import Statement


def columns_sql(schema: str, table: str) -> Statement:
    return Statement(
        "SELECT COLUMN_NAME, DATA_TYPE, IS_NULLABLE, EXTRA FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION", (schema, table))


def primary_key_sql(schema: str, table: str) -> Statement:
    return Statement(
        "SELECT COLUMN_NAME FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
        (schema, table))


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)


def table_meta(table: str, column_rows: Iterable[Sequence[Any]],
               key_rows: Iterable[Sequence[Any]]) -> TableMeta:
    columns = []
    for name, data_type, is_nullable, extra in column_rows:
        extra_text = _text(extra or "").lower()
        columns.append(ColumnMeta(
            _text(name), _text(data_type).lower(), _text(is_nullable).upper() == "YES",
            auto_increment="auto_increment" in extra_text,
            generated="generated" in extra_text,  # VIRTUAL / STORED / PERSISTENT GENERATED
            invisible="invisible" in extra_text))
    if not columns:
        raise LookupError(f"table {table} does not exist or has no columns")
    return TableMeta(table, tuple(columns), tuple(_text(r[0]) for r in key_rows))
