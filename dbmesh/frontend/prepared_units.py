"""A sharded prepared statement's route units run as backend prepared statements with the
client's own parameter bytes.

The statement is planned with its parameters as values (its placeholders kept, see
sharding.plan_cache.routes_by_values), so each unit's SQL still has them; when they come
out in the client's order the unit is prepared once per backend connection (the
connection's ``prepared`` registry, shared with pass-through and the point path) and every
execute sends only a COM_STMT_EXECUTE:

- one unit: its result (rows or OK) is relayed raw, as for a point statement;
- several units of a SELECT: their binary result sets are collected and merged (see
  ShardedExecutor.send_merged: rows a merge only picks are passed on as they came).

Anything else (writes over several units, generated keys, placeholders the rewrite moved)
is left to the caller, which binds the values into the statement instead.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sharding import planner
from sharding.conditions import PLACEHOLDER_MARKER

from .. import errors
from ..backend.connection import BackendConnection, BackendError, BackendStatement
from ..errors import ProxyError
from ..protocol.constants import Command
from ..protocol.resultset import ResultRows, result_rows
from ..protocol.scanner import ResponseKind

if TYPE_CHECKING:
    from .session import ClientStatement, Session

# Backend prepared statements kept per backend connection (as pass-through keeps them).
PREPARED_PER_BACKEND = 512
# Rendered unit SQL (one string per route of a shape, kept by the planner's memo) -> the
# statement to prepare, or None when its placeholders are not the client's in order.
_STATEMENT_SQL: dict[str, bytes | None] = {}
_STATEMENT_SQL_LIMIT = 4096


def statement_sql(rendered: str, num_params: int) -> bytes | None:
    """``rendered`` (a unit's SQL with numbered placeholders) with anonymous ``?``, or None when
    its placeholders do not come out once each in the client's order (sqlglot may reorder,
    e.g. LIMIT ?, ?; a rewrite may repeat or drop one)."""
    found = _STATEMENT_SQL.get(rendered, False)
    if found is not False:
        return found
    order = [int(m.group(1)) for m in PLACEHOLDER_MARKER.finditer(rendered)]
    sql = (PLACEHOLDER_MARKER.sub("?", rendered).encode("utf-8", "surrogateescape")
           if order == list(range(num_params)) else None)
    if len(_STATEMENT_SQL) >= _STATEMENT_SQL_LIMIT:
        _STATEMENT_SQL.clear()
    _STATEMENT_SQL[rendered] = sql
    return sql


async def run(session: Session, stmt: ClientStatement, payload: bytes, plan: planner.Plan) -> bool:
    """Run ``plan`` (planned with the parameters as values) with the client's COM_STMT_EXECUTE
    ``payload``; False when it cannot be run that way (nothing was sent anywhere)."""
    units = plan.units
    if plan.last_insert_id:
        return False  # a generated key is a literal in the SQL: a new statement every time
    sqls = [statement_sql(unit.sql, stmt.num_params) for unit in units]
    if None in sqls:
        return False
    if len(units) == 1:
        await _relay_one(session, stmt, payload, units[0].data_source, sqls[0], plan)
        return True
    if plan.write or plan.merge is None:
        return False
    await _merge_several(session, stmt, payload, plan, sqls)
    return True


async def _relay_one(session: Session, stmt: ClientStatement, payload: bytes, data_source: str, sql: bytes,
                     plan: planner.Plan) -> None:
    executor = session.sharded
    conn = await executor.connection(data_source, executor.replica_may_serve(plan))
    try:
        backend = await backend_statement(session, conn, sql)
        if backend is None:
            return  # the backend refused to prepare it: its error went to the client
        scanner = await conn.relay(execute_packet(session, stmt, payload, backend), ResponseKind.RESULT,
                                   executor.sink(data_source))
        await executor.relayed(conn, scanner)
        if plan.write:
            session.last_write_at[data_source] = time.monotonic()
    except (ConnectionError, OSError) as exc:
        conn.broken = True
        executor.release(force=True)
        raise errors.backend_lost(data_source, conn.address) from exc
    finally:
        executor.release()


async def _merge_several(session: Session, stmt: ClientStatement, payload: bytes, plan: planner.Plan,
                         sqls: list[bytes]) -> None:
    executor = session.sharded
    sql_of = {id(unit): sql for unit, sql in zip(plan.units, sqls, strict=True)}

    async def execute_unit(conn: BackendConnection, unit: planner.RouteUnit) -> ResultRows:
        backend = await backend_statement(None, conn, sql_of[id(unit)])
        packets, scanner = await conn.collect(execute_packet(session, stmt, payload, backend), ResponseKind.RESULT)
        if scanner.error is not None:
            raise BackendError(scanner.error)
        return result_rows(packets, conn.deprecate_eof)

    executor.reading = executor.replica_may_serve(plan)
    try:
        results = await executor.collect_all(plan.units, execute_unit)
        executor.send_merged(plan, results, stmt.sharded.binary_result(), binary_rows=True)
    finally:
        executor.reading = False
        executor.release()


def execute_packet(session: Session, stmt: ClientStatement, payload: bytes, backend: BackendStatement) -> bytes:
    """The client's COM_STMT_EXECUTE for the backend's statement, parameter types included,
    without a cursor (COM_STMT_FETCH is not routed on a sharded database)."""
    if backend.num_params != stmt.num_params:
        raise ProxyError(errors.ER_UNKNOWN_ERROR, "HY000",
                         f"dbmesh: a backend statement takes {backend.num_params} parameters, the client's "
                         f"{stmt.num_params}")
    return session._execute_packet(payload, stmt, backend.stmt_id, cursor=False)


async def backend_statement(session: Session | None, conn: BackendConnection, sql: bytes) -> BackendStatement | None:
    """The backend's prepared statement for ``sql`` on this connection, prepared on first use.
    When the backend refuses: its error goes to ``session``'s client (None returned), or
    without a session is raised as BackendError."""
    key = (conn.database, sql)
    found = conn.prepared.get(key)
    if found is not None:
        conn.prepared.move_to_end(key)
        return found
    payloads, scanner = await conn.collect(bytes((Command.STMT_PREPARE,)) + sql, ResponseKind.PREPARE)
    if scanner.error is not None:
        if session is None:
            raise BackendError(scanner.error)
        session.send(payloads[0])
        session.sharded.diagnostics.error(scanner.error.code, scanner.error.message)
        return None
    conn.prepared[key] = found = BackendStatement(scanner.stmt_id, scanner.num_params, scanner.num_columns)
    while len(conn.prepared) > PREPARED_PER_BACKEND:
        _, evicted = conn.prepared.popitem(last=False)
        conn.close_statement(evicted.stmt_id)
    return found
