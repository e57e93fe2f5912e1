"""The fast lane: plain pass-through commands served from the event loop's callbacks.

Served by the command loop, a pass-through statement wakes the session's task twice (the
client's packet, the backend's answer) and runs a chain of coroutine frames in between.
Most statements need none of that: a plain COM_QUERY, or a COM_STMT_EXECUTE already
prepared on the backend connection, with an idle connection in the session's state at
hand. PacketProtocol offers every lone whole packet to the fast lane first while the
command loop waits for one; a command the lane takes is sent from that ``data_received``,
its response relayed from the backend's ``data_received`` (BackendConnection.start_relay),
and the connection given back in the relay's completion callback. The command loop sleeps
through it. Whatever needs more (routing, a sharded or shadow database, session state to
record, replicas, cursors, long data, a full client buffer, an error to report) is left to
the command loop, which serves it as before.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING

from ..backend.connection import BackendConnection, framed
from ..errors import ProxyError
from ..protocol.constants import Command
from ..protocol.packets import ConnectionClosed, MalformedPacket, PacketProtocol
from ..protocol.scanner import ResponseKind, ResponseScanner
from .statement import Kind, classify

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("dbmesh.session")

_STMT_ID = struct.Struct("<I")
_CURSOR_FLAGS = 0x0F  # COM_STMT_EXECUTE flags asking for a cursor: the command loop handles those
# The command loop drains the client's buffer past this between commands; the lane leaves such
# a client to it.
_CLIENT_BUFFER_BACKLOG = 65536


class FastLane:
    """One session's fast lane; the session's PacketProtocol calls it with whole packets."""

    __slots__ = ("session", "protocol", "conn", "idle_timer", "closed")

    def __init__(self, session: Session, protocol: PacketProtocol):
        self.session = session
        self.protocol = protocol
        self.conn: BackendConnection | None = None  # answering a command now
        # After an insert the session keeps its connection for a few statements; the command
        # loop, asleep on a plain read, cannot time that out, so this timer does.
        self.idle_timer: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future | None = None  # the session ends once the command in flight is done
        protocol.fast_lane = self

    def __call__(self, data: bytes) -> bool:
        """Serve the command in ``data`` (one whole packet, header included) if it is a plain
        one; False leaves it to the command loop."""
        session = self.session
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if len(data) < 5 or session.keep_for_statements \
                or session.writer.transport.get_write_buffer_size() > _CLIENT_BUFFER_BACKLOG:
            # Kept connections time out in the command loop's read; a full buffer needs its drain.
            return False
        command = data[4]
        try:
            if command == Command.STMT_EXECUTE:
                route = self._execute(data)
            elif command == Command.QUERY:
                route = self._query(data)
            else:
                return False
        except Exception:  # a bug here must not cost the client its connection
            log.exception("session %d: fast lane declined a command after an error", session.connection_id)
            return False
        if route is None:
            return False
        conn, wire = route
        self.session.packets.seq = data[3]  # errors the session sends continue the command's sequence
        self.conn = conn
        self.protocol.busy = True
        conn.start_relay(wire, ResponseKind.RESULT, session.writer, self._done)
        return True

    def _execute(self, data: bytes) -> tuple[BackendConnection, bytes] | None:
        """The backend connection and wire bytes for a prepared statement's execution."""
        session = self.session
        if len(data) < 14 or data[9] & _CURSOR_FLAGS:
            return None
        stmt = session.statements.get(_STMT_ID.unpack_from(data, 5)[0])
        if stmt is None or stmt.sharded is not None or stmt.cursor_conn is not None or stmt.long_data:
            return None
        if session.shadow.flag or session.database in session.shadow.databases or b"dbmesh:" in stmt.sql:
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
        return conn, framed(packet, 0)

    def _query(self, data: bytes) -> tuple[BackendConnection, bytes] | None:
        """The backend connection for a plain text statement (sent as the client framed it)."""
        session = self.session
        route = session._route()
        if route.sharded:
            return None
        sql = data[5:]
        statement = classify(sql)
        if statement.kind is not Kind.PASS or statement.session_set or statement.pin_reason:
            return None
        if route.has_replicas and (statement.read_only or statement.writes or statement.diagnostics):
            return None  # read/write splitting decides (and remembers writes)
        if session.shadow.flag or session.database in session.shadow.databases or b"dbmesh:" in sql:
            return None
        held = session.held
        if held is not None and held.role != "primary":
            return None
        conn = session._borrow_now()
        if conn is None:
            return None
        return conn, data if data[3] == 0 else framed(data[4:], 0)

    def _done(self, scanner: ResponseScanner, exc: BaseException | None) -> None:
        conn, self.conn = self.conn, None
        session = self.session
        if exc is None:
            session._after_response(conn, scanner)
            if session.keep_for_statements and session.held is not None:
                self.idle_timer = asyncio.get_running_loop().call_later(
                    session.config.auto_increment_delay_multiplex_timeout_s, self._client_idled)
        else:
            self._failed(conn, exc)
        if self.closed is None:
            self.protocol.command_done()
        elif not self.closed.done():
            self.closed.set_result(None)

    def _client_idled(self) -> None:
        self.idle_timer = None
        if self.protocol.busy or self.protocol.waiter is None:
            return  # the command loop is serving a command; its own read times out the rest
        self.session.release_kept()

    def _failed(self, conn: BackendConnection, exc: BaseException) -> None:
        session = self.session
        if not isinstance(exc, (ConnectionError, OSError, MalformedPacket)):
            log.error("session %d: fast-lane relay failed", session.connection_id, exc_info=exc)
        try:
            session._backend_failed(conn, exc)
        except ConnectionClosed:
            # Session state lived on that backend; the command loop is asleep on its read,
            # so end the client's connection here: its read then ends the session.
            session.writer.transport.close()

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
