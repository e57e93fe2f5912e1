"""The sidecar's own client for backend MySQL/MariaDB servers.

It speaks just enough protocol to log in, replay session state, and relay a command's
response to a client as raw bytes (the hot path), or collect it for the sidecar's own use.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .. import metrics
from ..errors import ER_NOT_SUPPORTED_AUTH_MODE
from ..protocol.auth import CACHING_SHA2_PLUGIN, NATIVE_PLUGIN, caching_sha2_response, native_response
from ..protocol.constants import (
    COLLATION_UTF8MB4_GENERAL_CI,
    EOF_HEADER,
    ERR_HEADER,
    MAX_PACKET,
    Capability,
    Command,
    ServerStatus,
)
from ..protocol.packets import (
    ConnectionClosed,
    ErrInfo,
    Field,
    PacketReader,
    forget_close_error,
    frame,
    lenenc_str,
    parse_column_definition,
    parse_err,
    parse_ok,
    parse_text_row,
    read_lenenc_int,
    read_nul_str,
    sink_parts,
    stream_quiet,
    take_unread,
)
from ..protocol.scanner import ResponseKind, ResponseScanner

log = logging.getLogger("dbmesh.backend")

_READ_CHUNK: Final = 256 * 1024
_COM_QUIT: Final = b"\x01\x00\x00\x00\x01"
_HEADER = struct.Struct("<I")  # payload length (3 bytes) and sequence id (1 byte)

# Always asked of a backend, whatever the client negotiated.
BASE_CAPABILITIES: Final = (
    Capability.LONG_PASSWORD | Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION
    | Capability.PLUGIN_AUTH | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA | Capability.TRANSACTIONS
    | Capability.MULTI_RESULTS | Capability.PS_MULTI_RESULTS
)


class BackendError(Exception):
    """The backend answered a command with an ERR packet."""

    def __init__(self, err: ErrInfo):
        super().__init__(f"({err.code}) {err.message}")
        self.err = err


@dataclass(slots=True)
class BackendStatement:
    """A statement prepared on one backend connection."""
    stmt_id: int
    num_params: int
    num_columns: int


@dataclass(slots=True)
class QueryResult:
    fields: list[Field]
    rows: list[list[bytes | None]]
    field_packets: list[bytes] = field(default_factory=list)
    affected_rows: int = 0
    last_insert_id: int = 0
    status: int = 0


def framed(payload: bytes | memoryview, seq: int) -> bytes:
    """Wire bytes of one payload."""
    if len(payload) < MAX_PACKET:  # one packet: skip frame()'s tuple and loop
        return _HEADER.pack(len(payload) | (seq & 0xFF) << 24) + payload
    return frame(payload, seq)[0]


def split_payloads(raw: bytes) -> list[bytes]:
    """Cut raw wire bytes into payloads, joining packets split at 16 MiB."""
    payloads: list[bytes] = []
    pos = 0
    pending: list[bytes] = []
    while pos < len(raw):
        length = raw[pos] | raw[pos + 1] << 8 | raw[pos + 2] << 16
        pending.append(raw[pos + 4:pos + 4 + length])
        pos += 4 + length
        if length < MAX_PACKET:
            payloads.append(b"".join(pending))
            pending = []
    return payloads


# Past this many bytes waiting for the client, stop reading the backend until they drain.
_CLIENT_BUFFER_LIMIT: Final = 1 << 20


class _BackendProtocol(asyncio.StreamReaderProtocol):
    """A StreamReaderProtocol that, while a relay runs, hands the backend's bytes straight
    to it from ``data_received`` (no StreamReader buffer, no read() coroutine per chunk).
    Outside a relay (login, the sidecar's own queries) it behaves as a plain stream."""

    def __init__(self, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop):
        super().__init__(reader, loop=loop)
        self.relay: _Relay | None = None
        # Bytes or the end arrived outside a relay since closed_while_idle() last looked.
        self.disturbed = False

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay is None:
            self.disturbed = True
            super().data_received(data)
            return
        rest = relay.feed(data)
        if rest:  # bytes after the response's end: leave them to the stream (see closed_while_idle)
            self.disturbed = True
            super().data_received(rest)

    def eof_received(self) -> bool | None:
        self.disturbed = True
        relay = self.relay
        if relay is not None:
            relay.fail(ConnectionClosed("backend closed the connection"))
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disturbed = True
        relay = self.relay
        if relay is not None:
            relay.fail(exc if isinstance(exc, OSError) else ConnectionClosed("backend closed the connection"))
        super().connection_lost(exc)
        forget_close_error(self)


# on_done(scanner, error): the response is complete (error None) or the relay failed.
RelayDone = Callable[[ResponseScanner, BaseException | None], None]


def _drop(data: bytes) -> None:
    """The sink of a response nobody reads."""


class _Relay:
    """One command's response on its way from a backend to a client sink, driven entirely
    by the event loop's callbacks: no coroutine runs per chunk or per statement."""

    __slots__ = ("conn", "scanner", "write", "out", "transport", "started", "finished", "on_done")

    def __init__(self, conn: BackendConnection, scanner: ResponseScanner, sink: Any, transport: asyncio.Transport,
                 on_done: RelayDone):
        self.conn = conn
        self.scanner = scanner
        # The sink may be a mirror.Tee or a coldefs.RenamingSink standing in for the client's
        # writer: write through it, look at the transport only for its state. No sink: the
        # response is dropped.
        self.out: asyncio.WriteTransport | None = None
        self.write: Callable[[bytes], object] = _drop
        if sink is not None:
            self.out, self.write = sink_parts(sink)
        self.transport = transport
        self.started = False  # part of the response went to the client
        self.finished = False
        self.on_done = on_done

    def feed(self, data: bytes) -> bytes:
        scanner = self.scanner
        if scanner.done:  # after the response, before the connection let go: the stream's bytes
            return data
        if self.finished:  # failed already: the stream position is unknown
            return b""
        try:
            used = scanner.feed(data)
            out = self.out
            # A client gone mid-response: read the rest and drop it, so this connection
            # stays usable (uvloop raises on writes to a closed transport).
            if out is not None and not out.is_closing():
                self.write(data if used == len(data) else data[:used])
                self.started = True
                if not scanner.done and out.get_write_buffer_size() > _CLIENT_BUFFER_LIMIT:
                    self._wait_for_client(out)
                    return b""
            if scanner.done:
                self._finish(None)
                return data[used:] if used < len(data) else b""
        except Exception as exc:  # noqa: BLE001 - handed to on_done
            self._finish(exc)
        return b""

    def _wait_for_client(self, out: asyncio.WriteTransport) -> None:
        """Stop reading the backend until the client's transport takes bytes again (or the
        client is gone): a large result never piles up in the sidecar's memory."""
        client: Any = out.get_protocol()
        if not getattr(client, "paused_for_client", False):
            return  # the transport did not pause its writer: nothing will call back, go on
        self.transport.pause_reading()
        client.when_writable(self._client_writable)

    def _client_writable(self) -> None:
        if not self.finished and not self.transport.is_closing():
            self.transport.resume_reading()

    def fail(self, exc: BaseException) -> None:
        if not self.finished:
            self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        self.finished = True
        self.conn._relay_done(self, exc)


class BackendConnection:
    """One connection to a backend server, owned by a pool or held by a session."""

    def __init__(self, data_source: str, host: str, port: int, capabilities: int, role: str = "primary"):
        self.data_source = data_source
        self.role = role
        # Counted as plain ints, flushed into the Prometheus counters (metrics.Tally).
        self._statements = metrics.tally(metrics.BACKEND_STATEMENTS, data_source, role)
        self._errors = metrics.tally(metrics.BACKEND_ERRORS, data_source, role)
        self.host = host
        self.port = port
        self.capabilities = capabilities | BASE_CAPABILITIES
        self.pool_key = 0
        self.deprecate_eof = bool(capabilities & Capability.DEPRECATE_EOF)
        # Set by connect(); writer None again once closed.
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._transport: Any = None  # the writer's
        self._protocol: _BackendProtocol | None = None
        self.thread_id = 0
        self.server_version = ""
        self.broken = False
        self.response_started = False  # relay wrote part of a response to the client
        self.last_used = time.monotonic()
        # Session state as applied on this connection (compared with the session's on borrow).
        self.database: str | None = None
        self.autocommit = True
        self.in_transaction = False
        self.warnings = 0  # reported by the last response
        self.session_vars: tuple[str, ...] = ()
        self.prepared: OrderedDict[tuple[str | None, bytes], BackendStatement] = OrderedDict()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- connecting ----------------------------------------------------------------------

    async def connect(self, user: str, password: str, database: str | None, timeout: float) -> None:
        self.reader, writer = await asyncio.wait_for(self._open(), timeout)
        self.writer = writer
        self._transport = writer.transport  # (an interpreted property: read once)
        try:
            await asyncio.wait_for(self._handshake(user, password, database), timeout)
        except BaseException:
            self.close()
            raise
        self.database = database

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # asyncio.open_connection() with our protocol in place of StreamReaderProtocol.
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        transport, protocol = await loop.create_connection(
            lambda: _BackendProtocol(reader, loop), self.host, self.port)
        self._protocol = protocol
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _handshake(self, user: str, password: str, database: str | None) -> None:
        reader, writer = self._streams()
        packets = PacketReader(reader)
        greeting = await packets.read()
        if greeting[:1] == bytes((ERR_HEADER,)):
            raise BackendError(parse_err(greeting))
        version, pos = read_nul_str(greeting, 1)
        self.server_version = version.decode("utf-8", "replace")
        self.thread_id = struct.unpack_from("<I", greeting, pos)[0]
        scramble = greeting[pos + 4:pos + 12]
        pos += 13
        server_caps = struct.unpack_from("<H", greeting, pos)[0]
        server_caps |= struct.unpack_from("<H", greeting, pos + 5)[0] << 16
        auth_len = greeting[pos + 7]
        pos += 18
        scramble += greeting[pos:pos + max(13, auth_len - 8) - 1]
        pos += max(13, auth_len - 8)
        plugin = NATIVE_PLUGIN
        if server_caps & Capability.PLUGIN_AUTH and pos < len(greeting):
            plugin = read_nul_str(greeting, pos)[0].decode() if b"\x00" in greeting[pos:] else \
                greeting[pos:].decode()
        caps = self.capabilities & server_caps
        if database:
            caps |= Capability.CONNECT_WITH_DB
        self.capabilities = caps
        auth = self._scramble(plugin, password, scramble)
        response = (struct.pack("<IIB", caps, MAX_PACKET, COLLATION_UTF8MB4_GENERAL_CI) + bytes(23)
                    + user.encode() + b"\x00" + lenenc_str(auth)
                    + ((database.encode() + b"\x00") if database else b"")
                    + plugin.encode() + b"\x00")
        seq = packets.seq + 1
        while True:
            data, _ = frame(response, seq)
            writer.write(data)
            reply = await packets.read()
            seq = packets.seq + 1
            first = reply[0]
            if first == 0x00:
                status = parse_ok(reply).status
                self.autocommit = bool(status & ServerStatus.AUTOCOMMIT)
                return
            if first == ERR_HEADER:
                raise BackendError(parse_err(reply))
            if first == EOF_HEADER:  # auth switch request
                name, p = read_nul_str(reply, 1)
                plugin = name.decode()
                scramble = reply[p:].rstrip(b"\x00")
                response = self._scramble(plugin, password, scramble)
            elif first == 0x01 and reply[1:2] == b"\x03":  # caching_sha2 fast auth passed
                continue
            else:
                raise BackendError(ErrInfo(ER_NOT_SUPPORTED_AUTH_MODE, "08004",
                                           f"authentication plugin step {reply[:2]!r} of {plugin} "
                                           "is not supported by the sidecar; use mysql_native_password"))

    @staticmethod
    def _scramble(plugin: str, password: str, scramble: bytes) -> bytes:
        if plugin == NATIVE_PLUGIN:
            return native_response(password, scramble)
        if plugin == CACHING_SHA2_PLUGIN:
            return caching_sha2_response(password, scramble)
        raise BackendError(ErrInfo(ER_NOT_SUPPORTED_AUTH_MODE, "08004",
                                   f"authentication plugin {plugin!r} is not supported"))

    # -- commands --------------------------------------------------------------------------

    def _streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = self.reader, self.writer
        if reader is None or writer is None:
            raise ConnectionClosed("backend connection is closed")
        return reader, writer

    def send(self, payload: bytes | memoryview, seq: int = 0) -> None:
        self._streams()[1].write(framed(payload, seq))

    def start_relay(self, wire: bytes, kind: int, sink, on_done: RelayDone) -> None:
        """Send a command (``wire``: its framed bytes) and copy its whole response to ``sink``
        as it arrives; ``on_done(scanner, error)`` is called from the event loop's callbacks
        when it is complete (error None) or when the connection failed (error set; the
        connection is then broken). Meanwhile nothing else may use this connection."""
        self._statements.count += 1
        scanner = ResponseScanner(kind, self.deprecate_eof)
        self.response_started = False
        protocol = self._protocol
        reader, writer = self._streams()
        assert protocol is not None
        transport = self._transport  # the whole Transport (the relay pauses its reading)
        relay = protocol.relay = _Relay(self, scanner, sink, transport, on_done)
        try:
            transport.write(wire)  # not StreamWriter.write: one Python frame less per statement
            if transport.is_closing():
                raise ConnectionClosed("backend closed the connection")
        except (ConnectionError, OSError, RuntimeError) as exc:
            relay.fail(exc if not isinstance(exc, RuntimeError) else ConnectionClosed(str(exc)))
            return
        if protocol.disturbed and not stream_quiet(reader):
            # Bytes (or the end) that came before the command: the relay sees them first.
            # (Undisturbed since closed_while_idle() found the stream quiet: nothing to see.)
            pending, ended = take_unread(reader)
            if pending:
                protocol.data_received(pending)
            if ended:
                relay.fail(ConnectionClosed("backend closed the connection"))

    def _relay_done(self, relay: _Relay, exc: BaseException | None) -> None:
        if self._protocol is not None:
            self._protocol.relay = None
        self.response_started = relay.started
        if exc is None:
            self._track(relay.scanner)
        else:
            self.broken = True
            self._errors.count += 1
            if relay.started and relay.out is not None:
                # The client holds part of a response, perhaps half a packet: nothing can follow
                # it well-formed (an ERR would be read as row bytes), so end the client's
                # connection; its driver reports a lost connection.
                relay.out.close()
        relay.on_done(relay.scanner, exc)

    async def relay(self, payload: bytes | memoryview, kind: int,
                    sink: asyncio.StreamWriter | None) -> ResponseScanner:
        """Send a command and copy its whole response to ``sink`` as it arrives."""
        future = asyncio.get_running_loop().create_future()

        def done(scanner: ResponseScanner, exc: BaseException | None) -> None:
            if future.done():
                return
            if exc is None:
                future.set_result(scanner)
            else:
                future.set_exception(exc)

        self.start_relay(framed(payload, 0), kind, sink, done)
        try:
            return await future
        except asyncio.CancelledError:
            # Cancelled mid-response: the stream position is unknown, never reuse it.
            protocol = self._protocol
            if protocol is not None and protocol.relay is not None:
                protocol.relay.finished = True
                protocol.relay = None
            self.broken = True
            raise

    async def collect(self, payload: bytes | memoryview, kind: int) -> tuple[list[bytes], ResponseScanner]:
        """Send a command and return its whole response as payloads."""
        self.last_used = time.monotonic()
        self._statements.count += 1
        scanner = ResponseScanner(kind, self.deprecate_eof)
        chunks: list[bytes] = []
        try:
            reader, writer = self._streams()
            writer.write(framed(payload, 0))
            while not scanner.done:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    raise ConnectionClosed("backend closed the connection")
                used = scanner.feed(data)
                chunks.append(data if used == len(data) else data[:used])
        except BaseException:
            self.broken = True
            raise
        self._track(scanner)
        return split_payloads(b"".join(chunks)), scanner

    def _track(self, scanner: ResponseScanner) -> None:
        self.warnings = scanner.warnings
        if scanner.status_seen:
            status = scanner.status
            self.in_transaction = bool(status & ServerStatus.IN_TRANS)
            self.autocommit = bool(status & ServerStatus.AUTOCOMMIT)

    async def query(self, sql: str) -> QueryResult:
        """Run one statement for the sidecar's own use; raise BackendError on error."""
        # surrogateescape: a client's text may hold raw bytes (binary strings), kept as sent
        payloads, scanner = await self.collect(bytes((Command.QUERY,)) + sql.encode("utf-8", "surrogateescape"),
                                               ResponseKind.RESULT)
        return self._result(payloads, scanner)

    async def pipeline(self, sqls: Sequence[str]) -> list[QueryResult | BackendError]:
        """Send several statements in one write and read their answers in order (the server
        runs them one after another): one round trip instead of one per statement. Each
        answer is a result or the BackendError of that statement alone; a failed statement
        does not stop the ones after it."""
        self.last_used = time.monotonic()
        frames = []
        for sql in sqls:
            self._statements.count += 1
            frames.append(frame(bytes((Command.QUERY,)) + sql.encode("utf-8", "surrogateescape"), 0)[0])
        answers: list[QueryResult | BackendError] = []
        pending = b""
        try:
            reader, writer = self._streams()
            writer.write(b"".join(frames))
            for _ in sqls:
                scanner = ResponseScanner(ResponseKind.RESULT, self.deprecate_eof)
                chunks: list[bytes] = []
                data, pending = pending, b""
                while True:
                    if data:
                        used = scanner.feed(data)
                        chunks.append(data[:used])
                        if scanner.done:
                            pending = data[used:]  # the next statement's answer has begun
                            break
                    data = await reader.read(_READ_CHUNK)
                    if not data:
                        raise ConnectionClosed("backend closed the connection")
                self._track(scanner)
                try:
                    answers.append(self._result(split_payloads(b"".join(chunks)), scanner))
                except BackendError as exc:
                    answers.append(exc)
        except BaseException:
            self.broken = True
            raise
        return answers

    def _result(self, payloads: list[bytes], scanner: ResponseScanner) -> QueryResult:
        if scanner.error:
            raise BackendError(scanner.error)
        result = QueryResult([], [], affected_rows=scanner.affected_rows,
                             last_insert_id=scanner.last_insert_id, status=scanner.status)
        if payloads[0][0] == 0x00:
            return result
        count = read_lenenc_int(payloads[0], 0)[0] or 0
        result.field_packets = payloads[1:1 + count]
        result.fields = [parse_column_definition(p) for p in result.field_packets]
        rows_start = 1 + count + (0 if self.deprecate_eof else 1)
        for p in payloads[rows_start:-1]:
            result.rows.append(parse_text_row(p, count))
        return result

    async def apply_state(self, session_vars: tuple[str, ...], database: str | None, autocommit: bool) -> None:
        """Bring this connection to a session's state: its SET statements (replayed in order
        after a reset when another session's are in force), database and autocommit."""
        if self.session_vars != session_vars:
            if self.session_vars:
                await self.reset()
            self.session_vars = ()
            for statement in session_vars:
                await self.query(statement)
            self.session_vars = session_vars
        if database is not None and self.database != database:
            await self.init_db(database)
        if self.autocommit != autocommit:
            await self.query("SET autocommit=" + ("1" if autocommit else "0"))
            self.autocommit = autocommit

    async def simple(self, command: int, argument: bytes = b"") -> None:
        """A command answered by a single OK/ERR packet (INIT_DB, PING, RESET_CONNECTION)."""
        _, scanner = await self.collect(bytes((command,)) + argument, ResponseKind.SINGLE)
        if scanner.error:
            raise BackendError(scanner.error)

    async def init_db(self, database: str) -> None:
        await self.simple(Command.INIT_DB, database.encode("utf-8"))
        self.database = database

    async def reset(self) -> None:
        """COM_RESET_CONNECTION: roll back, drop temporary tables, user variables, prepared
        statements, and return session variables to their defaults."""
        await self.simple(Command.RESET_CONNECTION)
        self.session_vars = ()
        self.prepared.clear()
        self.in_transaction = False
        self.autocommit = True

    def closed_while_idle(self) -> bool:
        """Did the server hang up (restart, wait_timeout, KILL), or send something unasked,
        while this connection sat idle? The transport keeps reading, so it is known for free."""
        protocol = self._protocol
        if protocol is not None and not protocol.disturbed and not self.broken:
            return False  # nothing arrived, nothing ended since the last look: the usual case
        reader = self.reader
        if reader is None or self.writer is None or self.writer.transport.is_closing():
            return True
        if not stream_quiet(reader):  # bytes unasked for, the end, or an error
            return True
        if protocol is not None:
            protocol.disturbed = False  # what arrived was read (login, the sidecar's own queries)
        return False

    def close_statement(self, stmt_id: int) -> None:
        self.send(bytes((Command.STMT_CLOSE,)) + struct.pack("<I", stmt_id))

    def close(self, send_quit: bool = True) -> None:
        """Close at once (with COM_QUIT unless it was sent); the server may list the
        connection a while longer (see retire())."""
        self.broken = True
        writer = self.writer
        if writer is not None:
            self.writer = None
            try:
                if send_quit:
                    writer.write(_COM_QUIT)
                writer.close()
            except (ConnectionError, OSError, RuntimeError):
                pass

    async def retire(self, timeout: float) -> None:
        """Close the connection as the server sees it: roll back an open transaction, send
        COM_QUIT and wait, at most ``timeout`` seconds, for the server to close its end,
        dropping whatever it still sends (the rest of an abandoned result, a statement that
        was still running). Until then the server counts the connection, and its thread's
        clean-up would roll the transaction back only after its socket had closed."""
        reader, writer = self.reader, self.writer
        if reader is None or writer is None or writer.transport.is_closing():
            self.close()
            return
        quit_sent = False
        try:
            async with asyncio.timeout(timeout):
                if self.in_transaction and not self.broken:
                    await self.query("ROLLBACK")
                self.broken = True
                writer.write(_COM_QUIT)
                quit_sent = True
                while await reader.read(_READ_CHUNK):
                    pass  # the server closes its end once it has handled COM_QUIT
        except (BackendError, ConnectionError, OSError, TimeoutError) as unclean:
            log.debug("backend %s (thread %d) closed before the server confirmed: %r",
                      self.address, self.thread_id, unclean)
        finally:
            self.close(send_quit=not quit_sent)
