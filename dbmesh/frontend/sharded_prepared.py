"""Server-side prepared statements on a sharded database.

PREPARE describes the statement by preparing it on the first actual table's data source;
the parsed statement is shared by the sessions that prepare the same text (the plan cache's
``statement``). EXECUTE decodes the bound parameters and routes the statement:

- a point shape (one sharded table, ``= ?`` on each sharding column, see
  sharding.plan_cache.PointShape) is routed from those parameter values alone; its actual
  SQL (still with ``?``) is rendered once per node and kept with the statement, prepared
  once per backend connection (the connection's ``prepared`` registry, as pass-through
  uses it: dropped when the connection resets or closes), and each execute sends only the
  client's COM_STMT_EXECUTE with the backend's statement id; the binary result is relayed raw;
- a statement whose parameters only route (they sit in WHERE, VALUES or SET) is planned with
  the parameters as values, its plan and SQL per route made once per shape, and its units
  run with the client's parameter bytes as well (prepared_units.py): one unit relayed raw,
  the units of a SELECT merged;
- anything else binds the parameters into the statement as literals and routes it like a
  text statement: a single-unit read is prepared and executed on that backend and its
  binary rows relayed raw; merged rows from several units are encoded here;
- BEGIN / START TRANSACTION / COMMIT / ROLLBACK run the text path's transaction logic
  (ShardedExecutor.query), answering OK.
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING

from sharding import planner
from sharding.errors import ShardingError
from sharding.plan_cache import PointShape, point_shape, routes_by_values

from ..protocol.binary import decode_params, encode_binary_row
from ..protocol.coldefs import renamer_for
from ..protocol.constants import Command
from ..protocol.packets import parse_column_definition
from ..protocol.scanner import ResponseKind
from . import prepared_units
from .sharded import _TXN_COMMIT, _TXN_ROLLBACK, _TXN_START, BinaryResult, parse, sharding_error

if TYPE_CHECKING:
    from sqlglot import exp

    from .session import ClientStatement, Session


class ShardedStatementInfo:
    """What EXECUTE needs beyond ClientStatement: the parsed tree, the column definitions,
    for a point shape its routing and the actual SQL per node, and whether the statement
    is planned with its parameters as values."""

    __slots__ = ("tree", "field_packets", "point", "actual_sql", "control", "by_values", "replica_may_serve",
                 "_binary")

    def __init__(self, tree: exp.Expression | None, field_packets: list[bytes], point: PointShape | None = None,
                 control: str | None = None):
        self.tree = tree
        self.field_packets = field_packets
        self.point = point
        self.actual_sql: dict[tuple[str, str], bytes | None] = {}  # node -> SQL with ?, None: not relayable
        self.control = control  # the text of a BEGIN / COMMIT / ROLLBACK
        self.by_values = tree is not None and routes_by_values(tree)
        # A point read that a replica may serve outside a transaction (not locking, no
        # /* dbmesh:primary */ hint), as ShardedExecutor.replica_may_serve says of a plan.
        self.replica_may_serve = point is not None and point.kind == "select" and not any(planner.flags(point.tree))
        self._binary: BinaryResult | None = None

    def binary_result(self) -> BinaryResult:
        """The column definitions and row encoder of merged rows sent in the binary protocol."""
        if self._binary is None:
            fields = [parse_column_definition(p) for p in self.field_packets]
            self._binary = BinaryResult(self.field_packets, lambda row: encode_binary_row(row, fields))
        return self._binary


def _transaction_control(sql: str) -> bool:
    return bool(_TXN_START.match(sql) or _TXN_COMMIT.match(sql) or _TXN_ROLLBACK.match(sql))


async def prepare(session: Session, payload: bytes) -> None:
    from .session import ClientStatement

    sql = payload[1:].decode("utf-8", "surrogateescape")
    if _transaction_control(sql):
        _prepare_control(session, payload, sql)
        return
    executor = session.sharded
    tree = session.server.plan_cache.statement(sql, session.database, parse)
    data_source, describe_sql = planner.first_node_sql(tree, executor.rules, session.database)
    conn = await executor.connection(data_source)
    try:
        payloads, scanner = await conn.collect(bytes((Command.STMT_PREPARE,))
                                               + describe_sql.encode("utf-8", "surrogateescape"),
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
    stmt.sharded = ShardedStatementInfo(tree, columns, point_shape(tree, executor.rules, session.database))
    session.statements[stmt.id] = stmt
    payloads[0] = payloads[0][:1] + struct.pack("<I", stmt.id) + payloads[0][5:]
    session.send(*payloads)


def _prepare_control(session: Session, payload: bytes, sql: str) -> None:
    """BEGIN / COMMIT / ROLLBACK: nothing to ask a backend; a statement of no parameters and
    no columns whose execute runs the text path's transaction logic."""
    from .session import ClientStatement

    stmt = ClientStatement(session.next_stmt_id, payload[1:], 0, 0)
    session.next_stmt_id += 1
    stmt.sharded = ShardedStatementInfo(None, [], control=sql)
    session.statements[stmt.id] = stmt
    # PREPARE OK: id, 0 columns, 0 parameters, a filler byte, 0 warnings.
    session.send(b"\x00" + struct.pack("<IHHBH", stmt.id, 0, 0, 0, 0))


async def execute(session: Session, stmt: ClientStatement, payload: bytes) -> None:
    info = stmt.sharded
    await session.sharded.diagnostics.settle()
    session.sharded.diagnostics.clear()
    if info.control is not None:
        await session.sharded.query(info.control)
        return
    long_data = bool(stmt.long_data)
    values, stmt.param_types = decode_params(payload, stmt.num_params, stmt.param_types, stmt.long_data)
    long_data, stmt.long_data = stmt.long_data, {}
    executor = session.sharded
    # A BASE global transaction images its writes (and record_lock locks its reads): plan path.
    in_base = executor.in_transaction and executor.txn.base is not None
    shadowed = session.shadow_engaged()
    with_client_bytes = not long_data and not in_base and not shadowed
    if info.point is not None and with_client_bytes:
        if await _execute_point(session, stmt, payload, values):
            return
    hinted = stmt.hinted  # hints and read mirroring: the shadow module plans it
    if info.by_values and with_client_bytes and not hinted:
        plan = executor.plan(info.tree, params=planner.routing_values(values))
        if await prepared_units.run(session, stmt, payload, plan):
            return
    try:
        bound = planner.bind_parameters(stmt.sharded.tree, values)
    except ShardingError as exc:
        raise sharding_error(exc) from exc
    if shadowed or hinted:
        # Shadow routing and read mirroring: frontend/shadow.py
        plan, mirror = session.shadow.plan_prepared(bound, stmt.sql)
        if mirror is not None:
            await session.shadow.mirrored_execute(mirror, stmt, payload, long_data,
                                                  lambda: _run(session, stmt, plan))
            return
    else:
        plan = executor.plan(bound, stmt.sql.decode("utf-8", "surrogateescape"), prepared=True)
    await _run(session, stmt, plan)


async def _run(session: Session, stmt: ClientStatement, plan: planner.Plan) -> None:
    executor = session.sharded
    if plan.write or len(plan.units) > 1:
        await executor.execute(plan, stmt.sharded.binary_result())
        return
    await _execute_on_backend(session, plan)


async def _execute_on_backend(session: Session, plan: planner.Plan) -> None:
    """Prepare the one unit's SQL on its backend, execute it, relay the binary result raw."""
    executor = session.sharded
    unit = plan.units[0]
    conn = await executor.connection(unit.data_source, executor.replica_may_serve(plan))
    try:
        payloads, scanner = await conn.collect(bytes((Command.STMT_PREPARE,))
                                               + unit.sql.encode("utf-8", "surrogateescape"),
                                               ResponseKind.PREPARE)
        if scanner.error is not None:
            session.send(payloads[0])
            executor.diagnostics.error(scanner.error.code, scanner.error.message)
            return
        backend_id = scanner.stmt_id
        execute_packet = bytes((Command.STMT_EXECUTE,)) + struct.pack("<IBI", backend_id, 0, 1)
        scanner = await conn.relay(execute_packet, ResponseKind.RESULT, executor.sink(unit.data_source))
        await executor.relayed(conn, scanner)
        conn.close_statement(backend_id)
    finally:
        executor.release()


async def _execute_point(session: Session, stmt: ClientStatement, payload: bytes, values: list) -> bool:
    """Execute a point shape as a prepared statement on the one backend it routes to, with
    the client's own parameter bytes. False: not possible here (the caller binds instead)."""
    info = stmt.sharded
    point = info.point
    if any(values[i] is None for _, i in point.positions):
        return False  # `= NULL` matches nothing; the planner's path handles it
    node = point.node(values)
    if node is None:
        return False
    key = (node.data_source, node.table)
    if key not in info.actual_sql:
        info.actual_sql[key] = _actual_sql(session, info, node, stmt.num_params)
    sql = info.actual_sql[key]
    if sql is None:
        return False
    executor = session.sharded
    conn = await executor.connection(node.data_source, info.replica_may_serve and not executor.in_transaction)
    try:
        backend = await prepared_units.backend_statement(session, conn, sql)
        if backend is None:
            return True  # the backend refused to prepare it: its error went to the client
        if backend.num_params != stmt.num_params:
            return False
        scanner = await conn.relay(prepared_units.execute_packet(session, stmt, payload, backend),
                                   ResponseKind.RESULT, executor.sink(node.data_source))
        await executor.relayed(conn, scanner)
        if point.kind != "select":
            session.last_write_at[node.data_source] = time.monotonic()
    finally:
        executor.release()
    return True


def _actual_sql(session: Session, info: ShardedStatementInfo, node, num_params: int) -> bytes | None:
    """The statement for ``node`` with anonymous ``?``, or None when its placeholders do not
    come out in the client's parameter order."""
    rendered = planner._render(info.tree, {info.point.table: node.table}, session.database)
    return prepared_units.statement_sql(rendered, num_params)
