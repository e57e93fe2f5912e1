"""One DML statement of a BASE branch, run with its images on a branch connection.

The caller has opened the branch's local transaction; this module runs, on that
connection, what ``txn.snapshot`` describes (before image, the DML on exactly those rows,
after image) and returns the statement's result with its ``UndoRecord``. Writing the
record, taking global locks and committing are the coordinator's (``txn.base_coordinator``).

A connection here is anything with ``async query(sql) -> result`` where the result has
``rows`` (text-protocol bytes), ``affected_rows`` and ``last_insert_id``: the sidecar's
``BackendConnection``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

from sqlglot import exp

from . import meta as meta_sql
from .images import TableImage, TableMeta, UndoRecord, image_from_rows
from .snapshot import (
    AUTOINC_SETTINGS_SQL,
    SnapshotError,
    UnsupportedStatement,
    after_image_sql,
    before_image_sql,
    check_affected,
    check_autoinc_settings,
    inserted_image,
    inserted_keys,
    restrict_to_keys,
    statement_kind,
    updated_image,
)
from .sqltext import Statement


class Result(Protocol):
    rows: list
    affected_rows: int
    last_insert_id: int


class Conn(Protocol):
    async def query(self, sql: str) -> Result: ...


async def run(conn: Conn, statement: Statement | str) -> Result:
    return await conn.query(statement if isinstance(statement, str) else statement.inline())


# TIMESTAMP text depends on the session time zone, and a compensation may run on another
# connection (recovery): images of tables with TIMESTAMP columns are read in UTC.
_TO_UTC = "SET @dbmesh_saved_time_zone = @@session.time_zone, time_zone = '+00:00'"
_FROM_UTC = "SET time_zone = @dbmesh_saved_time_zone"


def has_timestamp(meta: TableMeta) -> bool:
    return any(c.type_name == "timestamp" for c in meta.columns)


@asynccontextmanager
async def utc(conn: Conn, needed: bool) -> AsyncIterator[None]:
    """Run the block with the session time zone at UTC (when ``needed``), then restore it."""
    if not needed:
        yield
        return
    await conn.query(_TO_UTC)
    try:
        yield
    finally:
        await conn.query(_FROM_UTC)


async def read_image(conn: Conn, meta: TableMeta, select: Statement | str) -> TableImage:
    async with utc(conn, has_timestamp(meta)):
        result = await run(conn, select)
    return image_from_rows(meta, result.rows, text=True)


def target_table(stmt: exp.Expression) -> str:
    """The actual table an INSERT/UPDATE/DELETE writes (the router already renamed it)."""
    statement_kind(stmt)  # refuses REPLACE and anything else
    target = stmt.this.this if isinstance(stmt.this, exp.Schema) else stmt.this
    if not isinstance(target, exp.Table) or not target.name:
        raise UnsupportedStatement("BASE transaction mode cannot undo a statement that does not write a plain table")
    return target.name


async def table_meta(conn: Conn, schema: str, table: str,
                     cache: MutableMapping[tuple[str, str], TableMeta]) -> TableMeta:
    """The table's columns and primary key, read once per (schema, table) and cached."""
    key = (schema.lower(), table.lower())
    found = cache.get(key)
    if found is None:
        columns = await run(conn, meta_sql.columns_sql(schema, table))
        keys = await run(conn, meta_sql.primary_key_sql(schema, table))
        try:
            found = meta_sql.table_meta(table, columns.rows, keys.rows)
        except LookupError as exc:
            raise SnapshotError(str(exc)) from exc
        cache[key] = found
    return found


async def check_data_source(conn: Conn) -> None:
    """Refuse a server whose generated ids a multi-row INSERT could not predict."""
    result = await conn.query(AUTOINC_SETTINGS_SQL)
    lock_mode, increment = (int(v) for v in result.rows[0])
    check_autoinc_settings(lock_mode, increment)


async def run_dml(conn: Conn, stmt: exp.Expression, meta: TableMeta, branch_id: int,
                  found_rows: bool = False) -> tuple[Result, UndoRecord | None]:
    """Run one INSERT/UPDATE/DELETE with its images; the record is None when no row changed.
    ``found_rows``: the client asked for CLIENT_FOUND_ROWS (UPDATE reports matched rows)."""
    kind = statement_kind(stmt)
    if kind == "INSERT":
        return await _insert(conn, stmt, meta, branch_id)
    before = await read_image(conn, meta, before_image_sql(stmt, meta))
    if not before.rows:
        # Nothing matches (the rows are locked by FOR UPDATE: nothing can start matching).
        return await conn.query(stmt.sql("mysql")), None
    result = await conn.query(restrict_to_keys(stmt, meta, before.keys()))
    check_affected(stmt, before, result.affected_rows, found_rows)
    if kind == "DELETE":
        return result, UndoRecord(branch_id, "DELETE", meta.name, before=before)
    after = updated_image(before, await read_image(conn, meta, after_image_sql(meta, before.keys())))
    return result, UndoRecord(branch_id, "UPDATE", meta.name, before=before, after=after)


async def _insert(conn: Conn, stmt: exp.Expression, meta: TableMeta,
                  branch_id: int) -> tuple[Result, UndoRecord | None]:
    increment, no_auto_value_on_zero = 1, False
    if any(c.auto_increment for c in meta.columns if c.name in meta.primary_key):
        settings = await conn.query("SELECT @@session.auto_increment_increment, @@session.sql_mode")
        increment = int(settings.rows[0][0])
        no_auto_value_on_zero = b"NO_AUTO_VALUE_ON_ZERO" in (settings.rows[0][1] or b"")
    # Refuse what cannot be imaged before running anything (counts are checked after).
    inserted_keys(stmt, meta, 1, _values_rows(stmt), auto_increment_increment=increment,
                  no_auto_value_on_zero=no_auto_value_on_zero)
    result = await conn.query(stmt.sql("mysql"))
    keys = inserted_keys(stmt, meta, result.last_insert_id, result.affected_rows,
                         auto_increment_increment=increment, no_auto_value_on_zero=no_auto_value_on_zero)
    after = inserted_image(await read_image(conn, meta, after_image_sql(meta, keys)), keys)
    return result, UndoRecord(branch_id, "INSERT", meta.name, after=after)


def _values_rows(stmt: exp.Expression) -> int:
    values = stmt.expression
    return len(values.expressions) if isinstance(values, exp.Values) else 0


def images_of(record: UndoRecord) -> list[Any]:
    """The row images a record holds (their keys are what the global locks cover)."""
    image = record.after if record.after is not None else record.before
    return list(image.rows) if image is not None else []
