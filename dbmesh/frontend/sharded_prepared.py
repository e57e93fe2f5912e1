"""Server-side prepared statements on a sharded database.

PREPARE describes the statement by preparing it on the first actual table's data source.
EXECUTE decodes the bound parameters, binds them into the statement as literals, routes
it like a text statement, and answers in the binary protocol: a single-unit read is
prepared and executed on that backend and its binary rows relayed raw; merged rows from
several units are encoded here.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from sharding import planner
from sharding.errors import ShardingError

from ..protocol.binary import decode_params, encode_binary_row
from ..protocol.coldefs import logical_sink, renamer_for
from ..protocol.constants import Command
from ..protocol.packets import parse_column_definition
from ..protocol.scanner import ResponseKind
from .sharded import BinaryResult, parse, sharding_error

if TYPE_CHECKING:
    from sqlglot import exp

    from .session import ClientStatement, Session


class ShardedStatementInfo:
    """What EXECUTE needs beyond ClientStatement: the parsed tree and the column definitions."""

    __slots__ = ("tree", "field_packets")

    def __init__(self, tree: exp.Expression, field_packets: list[bytes]):
        self.tree = tree
        self.field_packets = field_packets


async def prepare(session: Session, payload: bytes) -> None:
    from .session import ClientStatement

    sql = payload[1:].decode("utf-8", "surrogateescape")
    tree = parse(sql)
    executor = session.sharded
    data_source, describe_sql = planner.first_node_sql(tree, executor.rules, session.database)
    conn = await executor.connection(data_source)
    try:
        payloads, scanner = await conn.collect(bytes((Command.STMT_PREPARE,)) + describe_sql.encode("utf-8"),
                                               ResponseKind.PREPARE)
        if scanner.error is None:
            conn.close_statement(scanner.stmt_id)
    finally:
        executor.release()
    if scanner.error is not None:
        session.send(payloads[0])
        return
    stmt = ClientStatement(session.next_stmt_id, payload[1:], scanner.num_params, scanner.num_columns)
    session.next_stmt_id += 1
    # Column definitions follow the parameter definitions (and their EOF, if any).
    first_column = 1 + scanner.num_params + (0 if session.deprecate_eof or not scanner.num_params else 1)
    renamer = renamer_for(session.config, session.database, data_source)
    if renamer is not None:  # logical database and table names
        payloads[first_column:first_column + scanner.num_columns] = \
            renamer.columns(payloads[first_column:first_column + scanner.num_columns])
    columns = payloads[first_column:first_column + scanner.num_columns]
    stmt.sharded = ShardedStatementInfo(tree, columns)
    session.statements[stmt.id] = stmt
    payloads[0] = payloads[0][:1] + struct.pack("<I", stmt.id) + payloads[0][5:]
    session.send(*payloads)


async def execute(session: Session, stmt: ClientStatement, payload: bytes) -> None:
    values, stmt.param_types = decode_params(payload, stmt.num_params, stmt.param_types, stmt.long_data)
    long_data, stmt.long_data = stmt.long_data, {}
    executor = session.sharded
    try:
        bound = planner.bind_parameters(stmt.sharded.tree, values)
    except ShardingError as exc:
        raise sharding_error(exc) from exc
    if session.shadow.flag or session.database in session.shadow.databases or b"dbmesh:" in stmt.sql:
        # Shadow routing and read mirroring: frontend/shadow.py
        plan, mirror = session.shadow.plan_prepared(bound, stmt.sql)
        if mirror is not None:
            await session.shadow.mirrored_execute(mirror, stmt, payload, long_data,
                                                  lambda: _run(session, stmt, plan))
            return
    else:
        plan = executor.plan(bound, stmt.sql.decode("utf-8", "surrogateescape"))
    await _run(session, stmt, plan)


async def _run(session: Session, stmt: ClientStatement, plan: planner.Plan) -> None:
    executor = session.sharded
    if plan.write or len(plan.units) > 1:
        fields = [parse_column_definition(p) for p in stmt.sharded.field_packets]
        binary = BinaryResult(stmt.sharded.field_packets, lambda row: encode_binary_row(row, fields))
        await executor.execute(plan, binary)
        return
    await _execute_on_backend(session, plan.units[0])


async def _execute_on_backend(session: Session, unit: planner.RouteUnit) -> None:
    """Prepare the routed SQL on its backend, execute it, relay the binary result raw."""
    executor = session.sharded
    conn = await executor.connection(unit.data_source)
    try:
        payloads, scanner = await conn.collect(bytes((Command.STMT_PREPARE,)) + unit.sql.encode("utf-8"),
                                               ResponseKind.PREPARE)
        if scanner.error is not None:
            session.send(payloads[0])
            return
        backend_id = scanner.stmt_id
        execute_packet = bytes((Command.STMT_EXECUTE,)) + struct.pack("<IBI", backend_id, 0, 1)
        await conn.relay(execute_packet, ResponseKind.RESULT,
                         logical_sink(session.writer, session.config, session.database, unit.data_source))
        conn.close_statement(backend_id)
    finally:
        executor.release()
