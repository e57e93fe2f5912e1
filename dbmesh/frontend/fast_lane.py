"""The fast lane: plain pass-through commands served from the event loop's callbacks.

Served by the command loop, a pass-through statement wakes the session's task twice (the
client's packet, the backend's answer) and runs a chain of coroutine frames in between.
Most statements need none of that: a plain COM_QUERY, or a COM_STMT_EXECUTE already
prepared on the backend connection, with an idle connection in the session's state at
hand. PacketProtocol offers every lone whole packet to the fast lane first while the
command loop waits for one; a command the lane takes is sent from that ``data_received``,
its response relayed from the backend's ``data_received`` (BackendConnection.start_relay),
and the connection given back in the relay's completion callback. The command loop sleeps
through it. On a sharded database the lane takes reads and prepared point statements
that route to exactly one data source from the plan cache, outside transactions. Whatever
needs more (planning, several shards, a shadow database, session state to record, replica
choice for pass-through reads, transactions on shards, cursors, long data, a full client
buffer, an error to report) is left to the command loop, which serves it as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

from sharding.errors import ShardingError

from .. import errors, metrics
from ..backend.connection import BackendConnection, framed
from ..errors import ProxyError
from ..protocol.binary import decode_params
from ..protocol.coldefs import RenamingSink, logical_sink
from ..protocol.constants import Command, ServerStatus
from ..protocol.packets import ConnectionClosed, MalformedPacket, PacketProtocol, TransportSink
from ..protocol.scanner import ResponseKind, ResponseScanner
from . import deadlocks
from .statement import Kind, classify

if TYPE_CHECKING:
    from ..backend.pool import Pool
    from ..backend.replicas import Replica, ReplicaSet
    from .session import ClientStatement, Session

log = logging.getLogger("dbmesh.session")

_CURSOR_FLAGS: Final = 0x0F  # COM_STMT_EXECUTE flags asking for a cursor: the command loop handles those
# The command loop drains the client's buffer past this between commands; the lane leaves such
# a client to it.
_CLIENT_BUFFER_BACKLOG: Final = 65536
_COM_QUERY: Final = bytes((Command.QUERY,))
_NO_LONG_DATA: Final[dict[int, bytes]] = {}  # read only: the lane leaves statements with long data alone
_SERVED: Final = metrics.tally(metrics.FAST_LANE_COMMANDS, "served")
_DECLINED: Final = metrics.tally(metrics.FAST_LANE_COMMANDS, "declined")


# What a fast-lane command needs: the backend connection, the wire bytes to send it, where
# the answer goes, the pool to return the connection to (None: the session holds it), the
# data source a write changes (read-your-writes), if any, and the replica serving a read.
_Route = tuple[BackendConnection, bytes, object, "Pool | None", "str | None", "Replica | None"]


class FastLane:
    """One session's fast lane; the session's PacketProtocol calls it with whole packets."""

    __slots__ = ("session", "protocol", "transport", "client", "conn", "pool", "wrote_to", "replica", "command", "idle_timer",
                 "closed", "targets", "targets_database")

    def __init__(self, session: Session, protocol: PacketProtocol):
        self.session = session
        self.protocol = protocol
        self.transport = session.writer.transport  # (an interpreted property: read once; no TLS here)
        self.client = TransportSink(self.transport)  # pass-through results go here
        self.conn: BackendConnection | None = None  # answering a command now
        # Where that connection goes back: None, the session holds it (pass-through); else a
        # sharded statement or a replica read borrowed it from this pool for the one statement.
        self.pool: Pool | None = None
        self.wrote_to: str | None = None  # a write on this data source, for read-your-writes
        self.replica: Replica | None = None  # the replica serving a read
        self.command = b""  # the client's packet, handed to the command loop if a replica fails
        # After an insert the session keeps its connection for a few statements; the command
        # loop, asleep on a plain read, cannot time that out, so this timer does.
        self.idle_timer: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future | None = None  # the session ends once the command in flight is done
        # A sharded database's data sources as this session uses them, for targets_database.
        self.targets: dict[str, _Target] = {}
        self.targets_database: str | None = None
        protocol.fast_lane = self

    def __call__(self, data: bytes) -> bool:
        """Serve the command in ``data`` (one whole packet, header included) if it is a plain
        one; False leaves it to the command loop."""
        session = self.session
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if len(data) < 5:
            return False
        command = data[4]
        if command != Command.STMT_EXECUTE and command != Command.QUERY:
            return False
        route: _Route | None = None
        # Kept connections time out in the command loop's read; a full buffer needs its drain.
        if not session.keep_for_statements \
                and self.transport.get_write_buffer_size() <= _CLIENT_BUFFER_BACKLOG:
            try:
                route = self._execute(data) if command == Command.STMT_EXECUTE else self._query(data)
            except Exception:  # a bug here must not cost the client its connection
                log.exception("session %d: fast lane declined a command after an error", session.connection_id)
        if route is None:
            _DECLINED.count += 1
            return False
        _SERVED.count += 1
        conn, wire, sink, self.pool, self.wrote_to, self.replica = route
        self.command = data
        self.session.packets.seq = data[3]  # errors the session sends continue the command's sequence
        self.conn = conn
        self.protocol.busy = True
        conn.start_relay(wire, ResponseKind.RESULT, sink, self._done)
        return True

    def _execute(self, data: bytes) -> _Route | None:
        """Where and what to send for a prepared statement's execution."""
        session = self.session
        if len(data) < 14 or data[9] & _CURSOR_FLAGS:
            return None
        stmt = session.statements.get(data[5] | data[6] << 8 | data[7] << 16 | data[8] << 24)
        if stmt is None or stmt.cursor_conn is not None or stmt.long_data:
            return None
        if stmt.sharded is not None:
            return self._sharded_point_execute(data, stmt)
        if stmt.hinted or session.shadow_engaged():
            return None
        conn = session._borrow_now()
        if conn is None:
            return None
        key = (conn.database, stmt.sql)
        backend = conn.prepared.get(key)
        if backend is None:
            return None
        try:
            packet = session._execute_packet(data[4:], stmt, backend.stmt_id)
        except ProxyError:
            return None  # the command loop reports it
        conn.prepared.move_to_end(key)
        return conn, framed(packet, 0), self.client, None, None, None

    def _query(self, data: bytes) -> _Route | None:
        """Where to send a plain text statement (as the client framed it)."""
        session = self.session
        route = session._route()
        if route.sharded:
            return self._sharded_read(data)
        sql = data[5:]
        statement = classify(sql)
        if statement.kind is not Kind.PASS or statement.session_set or statement.pin_reason:
            return None
        if session.shadow_engaged(sql):
            return None
        held = session.held
        if held is not None and held.role != "primary":
            return None  # a replica kept for SHOW WARNINGS: the command loop gives it back
        wire = data if data[3] == 0 else framed(data[4:], 0)
        wrote_to = None
        if route.has_replicas:  # read/write splitting (frontend/read_split.py)
            if statement.diagnostics:
                return None
            replicas = session.read_splitting._replica_set()
            if replicas is None:
                return None
            if statement.read_only:
                try:
                    replica = session.read_splitting._choose(replicas, statement)
                except ProxyError:
                    return None  # the command loop words it
                if replica is not None:
                    return self._replica_read(wire, replicas, replica, route.physical_database)
            elif statement.writes:
                if replicas.config.read_your_writes == "gtid":
                    return None  # the write's GTID is asked for with a coroutine
                wrote_to = replicas.data_source
        conn = session._borrow_now()
        if conn is None:
            return None
        return conn, wire, self.client, None, wrote_to, None

    def _replica_read(self, wire: bytes, replicas: ReplicaSet, replica: Replica, database: str | None) -> _Route | None:
        session = self.session
        if replicas.config.read_your_writes == "gtid" and session.last_gtid.get(replicas.data_source):
            return None  # the replica must first catch up to this session's write (a coroutine)
        conn = self._idle_connection(replica.pool, database)
        if conn is None:
            return None
        return conn, wire, self.client, replica.pool, None, replica

    # -- sharded databases -------------------------------------------------------------------

    def _sharded_read(self, data: bytes) -> _Route | None:
        """A SELECT the plan cache routes to one data source (in a transaction, one the
        transaction is on already)."""
        session = self.session
        executor = session.sharded
        sql = data[5:]
        database = session.database
        diagnostics = executor.diagnostics
        if not self._sharded_lane_open() or session.sharding_hints or sql.find(b"dbmesh:") >= 0 \
                or database is None or diagnostics.pending is not None or session.shadow_engaged():
            return None
        try:
            text = sql.decode()
        except UnicodeDecodeError:
            return None  # raw bytes in a string: the command loop keeps them (surrogateescape)
        plan_cache = session.server.plan_cache
        try:
            hit = plan_cache.point_read(text, database)
            if hit is not None:
                data_source, actual_sql, point = hit
                # The checks read the text around the literals, which the shape fixes: once
                # per shape. (A literal can only make them refuse needlessly, e.g. '@x'.)
                if not point.text_checked:
                    if not _plain_read(sql):
                        return None
                    point.text_checked = True
            else:
                # @@warning_count and the like: the session's diagnostics answer them
                if not _plain_read(sql) or sql.find(b"@@") >= 0:
                    return None
                plan = plan_cache.plan(text, executor.rules, database)
                if plan is None or len(plan.units) != 1 or plan.kind != "select" or plan.locking \
                        or plan.force_primary:
                    return None
                data_source, actual_sql = plan.units[0].data_source, plan.units[0].sql
        except ShardingError:
            return None  # the command loop words the error
        borrowed = self._sharded_connection(self._target(database, data_source), data_source, True)
        if borrowed is None:
            return None
        conn, pool, sink = borrowed
        wire = framed(_COM_QUERY + actual_sql.encode(), 0)  # strict UTF-8 text in, so strict out
        if diagnostics.count:
            diagnostics.clear()  # a new statement
        return conn, wire, sink, pool, None, None

    def _sharded_point_execute(self, data: bytes, stmt: ClientStatement) -> _Route | None:
        """A prepared point statement whose parameters route it to one node, where it is
        prepared already: executed there with the client's parameter bytes."""
        session = self.session
        info = stmt.sharded
        database = session.database
        if info is None or database is None:
            return None
        point = info.point
        executor = session.sharded
        if point is None or info.control is not None or not self._sharded_lane_open() \
                or executor.diagnostics.pending is not None:
            return None
        if executor.in_transaction and (point.kind != "select" or point.locking):
            return None  # a write or locking read may wait for locks: the command loop's
        if session.shadow_engaged():
            return None
        payload = data[4:]
        try:
            values, param_types = decode_params(payload, stmt.num_params, stmt.param_types, _NO_LONG_DATA)
            for _, i in point.positions:
                if values[i] is None:
                    return None  # `= NULL` matches nothing: the planner's path answers it
            node = point.node(values)
        except (MalformedPacket, ProxyError, ShardingError):
            return None  # the command loop words the error
        if node is None:
            return None
        sql = info.actual_sql.get((node.data_source, node.table))
        if sql is None:
            return None
        target = self._target(database, node.data_source)
        borrowed = self._sharded_connection(target, node.data_source, info.replica_may_serve)
        if borrowed is None:
            return None
        conn, pool, sink = borrowed
        backend = conn.prepared.get((conn.database, sql))
        if backend is None or backend.num_params != stmt.num_params:
            self._give_back(conn, pool)
            return None
        try:
            # No cursor: COM_STMT_FETCH is not routed on a sharded database.
            packet = session._execute_packet(payload, stmt, backend.stmt_id, cursor=False)
        except ProxyError:
            self._give_back(conn, pool)
            return None
        conn.prepared.move_to_end((conn.database, sql))
        stmt.param_types = param_types
        if executor.diagnostics.count:
            executor.diagnostics.clear()  # a new statement
        wrote_to = None if point.kind == "select" else node.data_source
        return conn, framed(packet, 0), sink, pool, wrote_to, None

    def _sharded_lane_open(self) -> bool:
        """May a sharded statement take the lane as far as the transaction goes: outside one
        in autocommit, or inside a LOCAL or XA one (BASE images and locks its statements)
        that no deadlock has chosen as victim."""
        session = self.session
        executor = session.sharded
        if not executor.in_transaction:
            return session.autocommit  # else the statement begins a transaction
        return executor.txn.base is None and not executor.deadlock_victim

    def _sharded_connection(self, target: _Target, data_source: str, replica_may_serve: bool
                            ) -> tuple[BackendConnection, Pool, object] | None:
        """The connection a sharded read runs on, its pool and where its result goes. Outside a
        transaction: an idle connection (a replica's, where read/write splitting allows);
        inside one: the transaction's own on ``data_source`` (None when it has none yet: the
        command loop enlists it), its result through the deadlock detector's stand-in."""
        executor = self.session.sharded
        if executor.in_transaction:
            held = executor.conns.get(data_source)
            if held is None:
                return None
            return held[0], held[1], deadlocks.VictimAwareSink(target.sink(), executor)
        pool = target.pool
        if target.replicated and replica_may_serve:
            pool = executor._replica_pool(data_source) or pool
        conn = self._idle_connection(pool, target.database)
        if conn is None:
            return None
        return conn, pool, target.sink()

    def _give_back(self, conn: BackendConnection, pool: Pool) -> None:
        """A connection _sharded_connection gave: to its pool unless a transaction holds it."""
        if not self.session.sharded.in_transaction:
            pool.release(conn)

    def _target(self, database: str, data_source: str) -> _Target:
        """``data_source`` of the sharded ``database`` as this session uses it, made once while
        the session stays on that database."""
        if self.targets_database != database:
            self.targets.clear()
            self.targets_database = database
        target = self.targets.get(data_source)
        if target is None:
            target = self.targets[data_source] = _Target(self.session, database, data_source)
        return target

    def _idle_connection(self, pool: Pool, database: str | None) -> BackendConnection | None:
        """An idle connection of ``pool`` already in the session's state on ``database``, or
        None (the command loop then borrows and brings one to that state)."""
        session = self.session
        conn = pool.acquire_idle(session.caps_key)
        if conn is None:
            return None
        if (conn.session_vars != session.vars_signature or conn.autocommit != session.autocommit
                or conn.database != database):
            pool.release(conn)
            return None
        return conn

    def _done(self, scanner: ResponseScanner, exc: BaseException | None) -> None:
        conn, self.conn = self.conn, None
        assert conn is not None
        session = self.session
        retry = False
        try:
            if self.replica is not None:
                retry = self._replica_done(conn, scanner, exc)
            elif self.pool is not None:
                if self._sharded_done(conn, scanner, exc):
                    return  # finished by _end_victim
            elif exc is None:
                session._after_response(conn, scanner)
                if self.wrote_to is not None and scanner.error is None:
                    session.last_write_at[self.wrote_to] = time.monotonic()
                if session.keep_for_statements and session.held is not None:
                    self.idle_timer = asyncio.get_running_loop().call_later(
                        session.config.auto_increment_delay_multiplex_timeout_s, self._client_idled)
            else:
                self._failed(conn, exc)
        except Exception:  # a bug here: the session's state is unknown, end it rather than hang
            log.exception("session %d: fast-lane completion failed; closing the client connection",
                          session.connection_id)
            conn.broken = True
            session.writer.transport.close()
        self._finish(retry)

    def _finish(self, retry: bool) -> None:
        """The command is done: on with the client's next one (or the session's end)."""
        if self.closed is None:
            self.protocol.command_done(retry=self.command if retry else None)
        elif not self.closed.done():
            self.closed.set_result(None)

    def _replica_done(self, conn: BackendConnection, scanner: ResponseScanner, exc: BaseException | None) -> bool:
        """A replica's read is answered, or the replica failed: True to have the command
        loop serve the command again (nothing reached the client; it picks another replica
        or the primary), as it would have had it served the read itself."""
        session = self.session
        pool, self.pool = self.pool, None
        replica, self.replica = self.replica, None
        assert pool is not None and replica is not None
        if exc is not None:
            replicas = session.read_splitting._replica_set()
            assert replicas is not None
            pool.release(conn)  # broken: closed
            self._log_unexpected(exc)
            replicas.mark_down(replica, str(exc))
            if not conn.response_started:
                return True
            session.send_error(ProxyError(errors.ER_QUERY_ON_FOREIGN_DATA_SOURCE, errors.SQLSTATE_LINK_FAILURE,
                                          f"Lost replica '{replica.name}' of data source "
                                          f"'{replicas.data_source}' during a read"))
            return False
        if scanner.status_seen:
            session.autocommit = bool(scanner.status & ServerStatus.AUTOCOMMIT)
        if scanner.warnings:
            # SHOW WARNINGS must run where the warnings are: keep the replica for one statement.
            session.held, session.held_pool = conn, pool
            session.keep_for_statements = max(session.keep_for_statements, 1)
            self.idle_timer = asyncio.get_running_loop().call_later(
                session.config.auto_increment_delay_multiplex_timeout_s, self._client_idled)
        else:
            pool.release(conn)
        return False

    def _sharded_done(self, conn: BackendConnection, scanner: ResponseScanner, exc: BaseException | None) -> bool:
        """True when a task finishes the command (a deadlock victim's rollback)."""
        session = self.session
        executor = session.sharded
        pool, self.pool = self.pool, None
        assert pool is not None
        in_transaction = executor.in_transaction
        if exc is None and scanner.warnings:
            # Then gives the connection back (a transaction's stays with it).
            executor.diagnostics.read_later(conn, None if in_transaction else pool)
        elif not in_transaction:
            pool.release(conn)  # a broken one is closed
        if exc is not None:
            self._log_unexpected(exc)
            if in_transaction:
                conn.broken = True
                executor.release(force=True)  # as the command loop does: the transaction is lost
            session.send_error(errors.backend_lost(conn.data_source, conn.address))
            return False
        error = scanner.error
        if error is not None:
            if in_transaction and executor.deadlock_victim and error.code == deadlocks.ER_QUERY_INTERRUPTED:
                # The client got 1213 (VictimAwareSink): end the transaction before its next command.
                answered = deadlocks.deadlock_error(sorted(executor.conns))
                executor.diagnostics.error(answered.code, answered.message)
                asyncio.ensure_future(self._end_victim())
                return True
            executor.diagnostics.error(error.code, error.message)
        executor.deadlock_victim = False
        if scanner.status_seen and not in_transaction:
            session.autocommit = bool(scanner.status & ServerStatus.AUTOCOMMIT)
        if self.wrote_to is not None:
            session.last_write_at[self.wrote_to] = time.monotonic()
        return False

    async def _end_victim(self) -> None:
        """A read in the lane was the deadlock's victim: roll its transaction back, as the
        command loop does, then go on with the client's next command."""
        try:
            await self.session.sharded._end_as_deadlock_victim()
        except Exception:  # noqa: BLE001 - the branches are closed; the client already has 1213
            log.exception("session %d: rolling back a deadlock victim's transaction failed",
                          self.session.connection_id)
        self._finish(False)

    def _client_idled(self) -> None:
        self.idle_timer = None
        if self.protocol.busy or self.protocol.waiter is None:
            return  # the command loop is serving a command; its own read times out the rest
        self.session.release_kept()

    def _failed(self, conn: BackendConnection, exc: BaseException) -> None:
        session = self.session
        self._log_unexpected(exc)
        try:
            session._backend_failed(conn, exc)
        except ConnectionClosed:
            # Session state lived on that backend; the command loop is asleep on its read,
            # so end the client's connection here: its read then ends the session.
            session.writer.transport.close()

    def _log_unexpected(self, exc: BaseException) -> None:
        if not isinstance(exc, (ConnectionError, OSError, MalformedPacket)):
            log.error("session %d: fast-lane relay failed", self.session.connection_id, exc_info=exc)

    async def close(self) -> None:
        """The session ends: take no more commands, and let a command in flight finish (a
        client gone mid-response has the rest read and dropped, so its backend connection
        goes back to the pool in a known state)."""
        self.protocol.fast_lane = None
        self.protocol.backlog = None
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.conn is not None:
            self.closed = asyncio.get_running_loop().create_future()
            await self.closed


def _plain_read(sql: bytes) -> bool:
    """A read the lane may serve: no admin or session statement, nothing that pins."""
    statement = classify(sql)
    return statement.kind is Kind.PASS and statement.read_only and not statement.pin_reason


class _Target:
    """One data source of a sharded database as a session's fast lane uses it: its primary's
    pool, its physical database, and where its results go (the client's writer, or a
    RenamingSink in front of it for the logical names). The configuration never changes
    under a running server, so these hold while the session stays on the database."""

    __slots__ = ("pool", "database", "replicated", "_sink", "_renaming")

    def __init__(self, session: Session, database: str, data_source: str):
        server = session.server
        self.pool: Pool = server.pools[data_source]
        self.database: str | None = session.config.data_sources[data_source].database
        self.replicated = data_source in server.replica_sets  # reads may go to a replica's pool
        sink = logical_sink(session.writer, session.config, database, data_source)
        self._sink: object = sink
        self._renaming = sink if isinstance(sink, RenamingSink) else None

    def sink(self) -> object:
        """The sink, ready for a new result."""
        renaming = self._renaming
        return self._sink if renaming is None else renaming.restart()
