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

from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from sqlglot import exp

from . import meta as meta_sql
from .base_templates import FullStatement, ShapedStatement
from .images import TableImage, TableMeta, UndoRecord, image_from_rows
from .snapshot import (
    AUTOINC_SETTINGS_SQL,
    SnapshotError,
    after_image_sql,
    check_affected,
    check_autoinc_settings,
    inserted_image,
    inserted_keys,
    updated_image,
)
from .sqltext import Statement


class NoSuchTable(SnapshotError):
    """The statement's table does not exist (answered like the server would: 1146)."""

    def __init__(self, schema: str, table: str):
        super().__init__(f"Table '{schema}.{table}' doesn't exist")


class Result(Protocol):
    rows: list
    affected_rows: int
    last_insert_id: int


class Conn(Protocol):
    async def query(self, sql: str) -> Result: ...


class PipelineConn(Conn, Protocol):
    async def pipeline(self, sqls: Sequence[str]) -> list[Result | Exception]: ...


class Pipelined:
    """A branch connection that sends the statements whose answers nobody waits for
    (START TRANSACTION, time zone switches) together with the next statement that is
    waited for, and runs independent statements in one round trip: a BASE statement costs
    a handful of round trips instead of one per statement."""

    def __init__(self, conn: PipelineConn):
        self.conn = conn
        self.deferred: list[str] = []

    def defer(self, sql: str) -> None:
        self.deferred.append(sql)

    async def query(self, sql: str) -> Result:
        return (await self.pipeline([sql]))[0]

    async def pipeline(self, sqls: Sequence[str]) -> list[Result]:
        """Results of ``sqls``; the first error of any statement sent is raised."""
        answers = await self.answers(sqls)
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return answers  # type: ignore[return-value]

    async def answers(self, sqls: Sequence[str]) -> list[Result | Exception]:
        """Results or errors of ``sqls`` (the deferred statements' errors are raised)."""
        batch, self.deferred = [*self.deferred, *sqls], []
        if len(batch) == 1:
            try:
                return [await self.conn.query(batch[0])]
            except Exception as exc:
                if error_code(exc) is None:
                    raise
                return [exc]
        answers = await self.conn.pipeline(batch)
        for answer in answers[:len(answers) - len(sqls)]:
            if isinstance(answer, Exception):
                raise answer
        return answers[len(answers) - len(sqls):]


def error_code(exc: BaseException) -> int | None:
    """The server's error number of a failed query (the sidecar's BackendError.err.code)."""
    err = getattr(exc, "err", None)
    return getattr(err, "code", None)


async def run(conn: Conn, statement: Statement | str) -> Result:
    return await conn.query(statement if isinstance(statement, str) else statement.inline())


# TIMESTAMP text depends on the session time zone, and a compensation may run on another
# connection (recovery): images of tables with TIMESTAMP columns are read in UTC.
_TO_UTC = "SET @dbmesh_saved_time_zone = @@session.time_zone, time_zone = '+00:00'"
_FROM_UTC = "SET time_zone = @dbmesh_saved_time_zone"


def has_timestamp(meta: TableMeta) -> bool:
    return any(c.type_name == "timestamp" for c in meta.columns)


@contextmanager
def utc(conn: Pipelined, needed: bool) -> Iterator[None]:
    """Statements of the block run with the session time zone at UTC (when ``needed``); the
    switches travel with the block's own statements."""
    if not needed:
        yield
        return
    conn.defer(_TO_UTC)
    try:
        yield
    finally:
        conn.defer(_FROM_UTC)


async def read_image(conn: Pipelined, meta: TableMeta, select: Statement | str) -> TableImage:
    with utc(conn, has_timestamp(meta)):
        result = await run(conn, select)
    return image_from_rows(meta, result.rows, text=True)


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
        except LookupError:
            raise NoSuchTable(schema, table) from None
        cache[key] = found
    return found


async def check_data_source(conn: Conn) -> None:
    """Refuse a server whose generated ids a multi-row INSERT could not predict."""
    result = await conn.query(AUTOINC_SETTINGS_SQL)
    lock_mode, increment = (int(v) for v in result.rows[0])
    check_autoinc_settings(lock_mode, increment)


async def run_dml(conn: Pipelined, statement: FullStatement | ShapedStatement, sql: str, meta: TableMeta,
                  branch_id: int, found_rows: bool = False) -> tuple[Result, UndoRecord | None]:
    """Run one INSERT/UPDATE/DELETE (``statement``, the parsed or shaped form of ``sql``)
    with its images; the record is None when no row changed. ``found_rows``: the client
    asked for CLIENT_FOUND_ROWS (an UPDATE reports matched rows)."""
    kind, stmt = statement.kind, statement.tree
    if kind == "INSERT":
        return await _insert(conn, stmt, sql, meta, branch_id)
    before = await read_image(conn, meta, statement.before_sql(meta))
    if not before.rows:
        # Nothing matches (the rows are locked by FOR UPDATE: nothing can start matching).
        return await conn.query(sql), None
    change = statement.change_sql(meta, before.keys())
    if kind == "DELETE":
        result = await conn.query(change)
        check_affected(stmt, before, result.affected_rows, found_rows)
        return result, UndoRecord(branch_id, "DELETE", meta.name, before=before)
    # The after image's keys are the before image's: read it in the same round trip (the
    # change in the client's time zone, the image in UTC).
    in_utc = has_timestamp(meta)
    result, *_, after_rows = await conn.pipeline(
        [change, *([_TO_UTC] if in_utc else []), after_image_sql(meta, before.keys()).inline()])
    if in_utc:
        conn.defer(_FROM_UTC)
    check_affected(stmt, before, result.affected_rows, found_rows)
    after = updated_image(before, image_from_rows(meta, after_rows.rows, text=True))
    return result, UndoRecord(branch_id, "UPDATE", meta.name, before=before, after=after)


async def _insert(conn: Pipelined, stmt: exp.Expression, sql: str, meta: TableMeta,
                  branch_id: int) -> tuple[Result, UndoRecord | None]:
    increment, no_auto_value_on_zero = 1, False
    if any(c.auto_increment for c in meta.columns if c.name in meta.primary_key):
        settings = await conn.query("SELECT @@session.auto_increment_increment, @@session.sql_mode")
        increment = int(settings.rows[0][0])
        no_auto_value_on_zero = b"NO_AUTO_VALUE_ON_ZERO" in (settings.rows[0][1] or b"")
    # Refuse what cannot be imaged before running anything (counts are checked after).
    inserted_keys(stmt, meta, 1, _values_rows(stmt), auto_increment_increment=increment,
                  no_auto_value_on_zero=no_auto_value_on_zero)
    result = await conn.query(sql)
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
