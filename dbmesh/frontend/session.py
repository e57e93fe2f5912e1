"""One client connection: login, then a loop over commands.

The session owns what the client believes about its connection (database, autocommit,
character set, session variables, prepared statements) and borrows backend connections
from the pools only while it needs them: for one statement, for a transaction, or for
good once it has state that cannot be replayed (user variables, temporary tables, locks).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING, Final

from .. import errors
from ..backend.connection import BackendConnection, BackendError, BackendStatement
from ..errors import ProxyError
from ..protocol.auth import CACHING_SHA2_PLUGIN, NATIVE_PLUGIN, new_scramble, verify
from ..protocol.charsets import set_names_for
from ..protocol.constants import RESULT_SHAPING_CAPABILITIES, Capability, Command, ServerStatus
from ..protocol.packets import (
    Column,
    ConnectionClosed,
    MalformedPacket,
    PacketProtocol,
    PacketReader,
    eof_packet,
    frame,
    ok_packet,
    result_set_payloads,
)
from ..protocol.scanner import ResponseKind, ResponseScanner
from . import admin, handshake, sharded_prepared
from .fast_lane import FastLane
from .read_split import ReadSplitting
from .shadow import ShadowSession
from .sharded import ShardedExecutor
from .statement import TRACKED_BY_STATUS, Kind, classify

if TYPE_CHECKING:
    from ..backend.pool import Pool
    from ..config import UserConfig
    from .server import Server

log = logging.getLogger("dbmesh.session")

CURSOR_TYPE_READ_ONLY: Final = 0x01
_PREPARED_PER_BACKEND: Final = 512


class ClientStatement:
    """A prepared statement as the client knows it; it may be prepared on many backends."""

    __slots__ = ("id", "sql", "hinted", "num_params", "num_columns", "param_types", "long_data", "cursor_conn",
                 "sharded")

    def __init__(self, stmt_id: int, sql: bytes, num_params: int, num_columns: int):
        self.id = stmt_id
        self.sql = sql
        # A dbmesh: comment (shadow routing, a hint) in the text: looked for once, not per execute.
        self.hinted = sql.find(b"dbmesh:") >= 0
        self.num_params = num_params
        self.num_columns = num_columns
        self.param_types: bytes | None = None
        self.long_data: dict[int, bytearray] = {}
        self.cursor_conn: BackendConnection | None = None
        self.sharded: sharded_prepared.ShardedStatementInfo | None = None  # on a sharded database


class _DatabaseRoute:
    """Where statements on one logical database go when no rule routes them."""

    __slots__ = ("database", "sharded", "pool", "physical_database", "has_replicas")

    def __init__(self, config, server: Server, database: str | None):
        ldb = config.databases.get(database) if database else None
        ds = config.data_source_for(database)
        self.database = database
        self.sharded = ldb is not None and ldb.sharding is not None
        self.pool = server.pools[ds.name]
        self.physical_database = ds.database if database is not None else None
        self.has_replicas = not self.sharded and ds.name in server.replica_sets


class Session:
    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 connection_id: int):
        self.server = server
        self.config = server.config
        self.reader = reader
        self.writer = writer
        protocol = writer.transport.get_protocol()
        self.packets = PacketReader(reader, protocol if isinstance(protocol, PacketProtocol) else None)
        self.connection_id = connection_id
        peer = writer.get_extra_info("peername")
        self.client_host = peer[0] if peer else "localhost"
        self.user: UserConfig | None = None
        self.capabilities = 0
        self.caps_key = 0
        self.deprecate_eof = False
        self.database: str | None = None
        self.autocommit = True
        # SET statements to replay, in order, keyed by what they set.
        self.session_vars: dict[str, str] = {}
        self.vars_signature: tuple[str, ...] = ()
        self.pin_reasons: set[str] = set()
        self.held: BackendConnection | None = None       # the backend connection now lent to us
        self.held_pool: Pool | None = None
        self.last_conn: BackendConnection | None = None  # preferred on the next borrow
        self.keep_for_statements = 0                     # after an AUTO_INCREMENT insert
        self.statements: dict[int, ClientStatement] = {}
        self.cursors_opened = False  # some statement was ever executed with a cursor
        self.next_stmt_id = 1
        self.scramble = b""
        self.sharded = ShardedExecutor(self)
        # Read/write splitting: "auto", "primary", "replica" or a replica's name (SET dbmesh_route).
        self.route_setting = "auto"
        self.read_splitting = ReadSplitting(self)
        self.last_write_at: dict[str, float] = {}   # data source -> when this session last wrote
        self.last_gtid: dict[str, str] = {}         # data source -> GTID of that write
        self.sharding_hints: dict[str, object] = {}  # "db"/"table" -> value (SET dbmesh_db_hint = ...)
        self.shadow = ShadowSession(self)  # shadow traffic and read mirroring (frontend/shadow.py)
        self._route_memo: _DatabaseRoute | None = None
        self.fast_lane: FastLane | None = None  # set once logged in (not with TLS)

    # -- output ----------------------------------------------------------------------------

    def send(self, *payloads: bytes) -> None:
        """Write response payloads continuing the sequence of the current command."""
        if self.writer.transport.is_closing():
            return  # the client is gone (uvloop raises on such writes); the next read notices
        seq = self.packets.seq + 1
        out = []
        for payload in payloads:
            data, seq = frame(payload, seq)
            out.append(data)
        self.writer.write(b"".join(out))

    def status_flags(self) -> int:
        status = ServerStatus.AUTOCOMMIT if self.autocommit else 0
        if (self.held is not None and self.held.in_transaction) or self.sharded.in_transaction:
            status |= ServerStatus.IN_TRANS
        return status

    def send_ok(self, affected_rows: int = 0, last_insert_id: int = 0, warnings: int = 0) -> None:
        self.send(ok_packet(affected_rows, last_insert_id, self.status_flags(), warnings))

    def send_error(self, error: ProxyError) -> None:
        self.sharded.diagnostics.error(error.code, error.message)  # SHOW ERRORS on a sharded database
        self.send(error.packet())

    def send_result(self, columns: list[Column], rows: list[list[object]]) -> None:
        self.send(*result_set_payloads(columns, rows, self.deprecate_eof, self.status_flags()))

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if await self.login():
                await self.command_loop()
        except (ConnectionClosed, ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except MalformedPacket as exc:
            self._send_and_close(errors.malformed(str(exc)))
        finally:
            await self.cleanup()

    def _send_and_close(self, error: ProxyError) -> None:
        try:
            self.send_error(error)
        except (ConnectionError, OSError, RuntimeError):
            pass

    async def cleanup(self) -> None:
        if self.fast_lane is not None:
            await self.fast_lane.close()
        await self.sharded.close()
        self.shadow.close()
        conn, pool = self.held, self.held_pool
        self.held = self.held_pool = None
        if conn is not None and pool is not None:
            if conn.broken:
                pool.release(conn)
            elif conn.in_transaction or self.pin_reasons or self._has_cursor():
                # The client left state on it (a transaction, variables, a cursor): clear it
                # before anyone else gets the connection, or drop the connection.
                try:
                    await asyncio.wait_for(conn.reset(), 5.0)
                except (BackendError, OSError, ConnectionError, TimeoutError):
                    conn.broken = True
                pool.release(conn)
            else:
                pool.release(conn)
        try:
            self.writer.close()
        except (ConnectionError, OSError, RuntimeError):
            pass
        self.server.session_closed(self)

    def _has_cursor(self) -> bool:
        if not self.cursors_opened:  # the usual case, asked after every statement
            return False
        for stmt in self.statements.values():  # a loop: any() with a generator costs more here
            if stmt.cursor_conn is not None:
                return True
        return False

    # -- connection phase --------------------------------------------------------------------

    async def login(self) -> bool:
        server = self.server
        self.scramble = new_scramble()
        offered = server.capabilities
        self.writer.write(frame(handshake.greeting(server.server_version, self.connection_id,
                                                   self.scramble, offered), 0)[0])
        payload = await self.packets.read()
        try:
            if (len(payload) == handshake.SSL_REQUEST_LENGTH and server.ssl_context is not None
                    and handshake.parse_ssl_request(payload) & Capability.SSL):
                self.packets.protocol = None  # TLS: packets come through the stream
                await handshake.start_tls(self.writer, server.ssl_context, self.reader)
                payload = await self.packets.read()
            response = handshake.parse_handshake_response(payload)
        except MalformedPacket as bad:
            self._send_and_close(errors.ProxyError(errors.ER_HANDSHAKE_ERROR, "08S01",
                                                   f"Bad handshake: {bad}"))
            return False
        self.capabilities = response.capabilities & offered
        self.caps_key = self.capabilities & RESULT_SHAPING_CAPABILITIES
        self.deprecate_eof = bool(self.capabilities & Capability.DEPRECATE_EOF)
        user = self.config.users.get(response.user)
        plugin, auth = response.plugin, response.auth_response
        if not handshake.supported_plugin(plugin):
            # Ask the client to answer with mysql_native_password instead.
            plugin = NATIVE_PLUGIN
            self.send(handshake.auth_switch_request(plugin, self.scramble))
            auth = await self.packets.read()
        if user is None or not verify(plugin, user.password, self.scramble, auth):
            self.send_error(errors.access_denied(response.user, self.client_host, bool(auth)))
            return False
        if plugin == CACHING_SHA2_PLUGIN:
            self.send(b"\x01\x03")  # fast authentication succeeded
        self.user = user
        set_names = set_names_for(response.collation)
        if set_names:
            self._record_var("names", set_names)
        if response.database:
            try:
                self._check_database(response.database)
            except ProxyError as exc:
                self.send_error(exc)
                return False
            self.database = response.database
        self.send_ok()
        log.debug("session %d: %s logged in from %s", self.connection_id, user.name, self.client_host)
        return True

    # -- command phase -------------------------------------------------------------------------

    async def command_loop(self) -> None:
        handlers = {
            Command.QUERY: self.com_query,
            Command.INIT_DB: self.com_init_db,
            Command.PING: self.com_ping,
            Command.FIELD_LIST: self.com_field_list,
            Command.STATISTICS: self.com_statistics,
            Command.RESET_CONNECTION: self.com_reset_connection,
            Command.SET_OPTION: self.com_set_option,
            Command.CHANGE_USER: self.com_change_user,
            Command.STMT_PREPARE: self.com_stmt_prepare,
            Command.STMT_EXECUTE: self.com_stmt_execute,
            Command.STMT_SEND_LONG_DATA: self.com_stmt_send_long_data,
            Command.STMT_CLOSE: self.com_stmt_close,
            Command.STMT_RESET: self.com_stmt_reset,
            Command.STMT_FETCH: self.com_stmt_fetch,
        }
        writer = self.writer
        read = self.packets.read
        if self.packets.protocol is not None:  # not with TLS: those bytes come through the stream
            self.fast_lane = FastLane(self, self.packets.protocol)
        while True:
            # Holding no backend connection (the usual case): nothing to time out, read directly.
            payload = await (read() if self.held is None else self._next_command())
            if not payload:
                raise MalformedPacket("empty command packet")
            command = payload[0]
            if command == Command.QUIT:
                return
            handler = handlers.get(command)
            try:
                if handler is None:
                    self.send_error(ProxyError(errors.ER_UNKNOWN_COM_ERROR, "08S01",
                                               f"Unknown command 0x{command:02x}"))
                else:
                    await handler(payload)
            except ProxyError as exc:
                self.send_error(exc)
            except BackendError as refused:  # (compiled, one name holds one type)
                self.send_error(ProxyError(refused.err.code, refused.err.sqlstate, refused.err.message))
            if writer.transport.get_write_buffer_size() > 65536:
                await writer.drain()

    async def _next_command(self) -> bytes:
        """The client's next command. A backend connection kept only for the statements after
        an AUTO_INCREMENT insert (or warnings) goes back to the pool if the client idles."""
        if self.held is None or not self.keep_for_statements or self.pin_reasons or self.held.in_transaction \
                or self._has_cursor():
            return await self.packets.read()
        read = asyncio.ensure_future(self.packets.read())
        done, _ = await asyncio.wait({read}, timeout=self.config.auto_increment_delay_multiplex_timeout_s)
        if not done:
            self.release_kept()
        return await read

    def release_kept(self) -> None:
        """The client idled past auto_increment_delay_multiplex_timeout_s: a connection kept
        for the statements after an insert goes back to the pool (one holding a transaction,
        session state or a cursor stays)."""
        self.keep_for_statements = 0
        self._return_held(force=False)

    # -- backend connections ---------------------------------------------------------------------

    def shadow_engaged(self, sql: bytes | str = b"") -> bool:
        """Shadow routing or read mirroring (shadow.py) may apply: the session's dbmesh_shadow
        mark, a database with shadow rules, or a dbmesh: comment in ``sql``. (Here, not in
        ShadowSession: this module is compiled, and every statement asks.)"""
        shadow = self.shadow
        # find(), not `in`: on bytes, `in` first tries the operand as an int and fails.
        return shadow.flag or self.database in shadow.databases or (len(sql) > 0 and (
            sql.find(b"dbmesh:") >= 0 if isinstance(sql, bytes) else "dbmesh:" in sql))

    def _route(self) -> _DatabaseRoute:
        """What the current database means for routing, worked out once per database (the
        config does not change while the sidecar runs; this runs for every statement)."""
        route = self._route_memo
        if route is None or route.database != self.database:
            route = self._route_memo = _DatabaseRoute(self.config, self.server, self.database)
        return route

    def _pool(self) -> Pool:
        return self._route().pool

    def _physical_database(self) -> str | None:
        return self._route().physical_database

    async def borrow(self) -> BackendConnection:
        conn = self.held
        if conn is None:
            route = self._route()
            pool = route.pool
            conn = (pool.acquire_idle(self.caps_key, self.last_conn)
                    or await pool.acquire(self.caps_key, prefer=self.last_conn))
            self.held, self.held_pool = conn, pool
        try:
            if not self._in_sync(conn):
                await self._sync_state(conn)
        except (ConnectionError, OSError, TimeoutError) as exc:
            conn.broken = True
            self._return_held(force=True)
            raise errors.backend_lost(conn.data_source, conn.address) from exc
        except BaseException:
            self._return_held(force=False)
            raise
        return conn

    def _in_sync(self, conn: BackendConnection) -> bool:
        """The usual case on borrow: nothing to replay (saves the coroutines of sync_state)."""
        return (conn.session_vars == self.vars_signature and conn.autocommit == self.autocommit
                and (self.database is None or conn.database == self._route().physical_database))

    async def _sync_state(self, conn: BackendConnection) -> None:
        await self.sync_state(conn, self._physical_database())

    async def sync_state(self, conn: BackendConnection, database: str | None) -> None:
        """Make the backend connection's session state equal to the client's, on ``database``."""
        await conn.apply_state(self.vars_signature, database, self.autocommit)

    def _return_held(self, force: bool) -> None:
        """Give the held connection back unless the session must keep it."""
        conn, pool = self.held, self.held_pool
        if conn is None or pool is None:
            return
        if not force and not conn.broken and (
                conn.in_transaction or self.pin_reasons or self.keep_for_statements > 0
                or self._has_cursor()):
            return
        self.held = self.held_pool = None
        self.last_conn = None if conn.broken else conn
        pool.release(conn)

    def _after_response(self, conn: BackendConnection, scanner: ResponseScanner) -> None:
        if scanner.status_seen:
            self.autocommit = bool(scanner.status & ServerStatus.AUTOCOMMIT)
        if scanner.last_insert_id:
            self.keep_for_statements = self.config.auto_increment_delay_multiplex
        elif self.keep_for_statements:
            self.keep_for_statements -= 1
        if scanner.warnings:
            # SHOW WARNINGS (run by drivers right after) must see this connection's warnings.
            self.keep_for_statements = max(self.keep_for_statements, 1)
        self._return_held(force=False)

    def _borrow_now(self) -> BackendConnection | None:
        """borrow() when it needs no I/O (an idle connection in sync), without its coroutine."""
        conn = self.held
        route = self._route()
        if conn is None:
            conn = route.pool.acquire_idle(self.caps_key, self.last_conn)
            if conn is None:
                return None
            self.held, self.held_pool = conn, route.pool
        if (conn.session_vars == self.vars_signature and conn.autocommit == self.autocommit
                and (self.database is None or conn.database == route.physical_database)):
            return conn  # in sync: the usual case
        return None

    async def relay(self, payload: bytes, kind: int) -> ResponseScanner | None:
        """Borrow a backend, relay one command's response to the client, give it back."""
        conn = self._borrow_now() or await self.borrow()
        try:
            scanner = await conn.relay(payload, kind, self.writer)
        except (ConnectionError, OSError, MalformedPacket) as exc:
            self._backend_failed(conn, exc)
            return None
        self._after_response(conn, scanner)
        return scanner

    def _backend_failed(self, conn: BackendConnection, exc: BaseException) -> None:
        had_state = conn.in_transaction or bool(self.pin_reasons)
        log.warning("session %d: data source %s (%s) failed mid-statement: %s",
                    self.connection_id, conn.data_source, conn.address, exc)
        self._return_held(force=True)
        self.pin_reasons.clear()
        for stmt in self.statements.values():
            if stmt.cursor_conn is conn:
                stmt.cursor_conn = None
        self.send_error(errors.backend_lost(conn.data_source, conn.address))
        if had_state:
            # The transaction or session state on that server is gone; the client must know.
            raise ConnectionClosed("backend holding session state was lost")

    # -- session state -----------------------------------------------------------------------------

    def _record_var(self, key: str, statement: str) -> None:
        self.session_vars.pop(key, None)
        self.session_vars[key] = statement
        self.vars_signature = tuple(self.session_vars.values())

    def _check_database(self, name: str) -> None:
        if name not in self.config.databases:
            raise errors.unknown_database(name)
        assert self.user is not None
        if not self.user.may_use(name):
            raise errors.db_access_denied(self.user.name, self.client_host, name)

    def _change_database(self, name: str) -> None:
        self._check_database(name)
        if self.sharded.in_transaction and name != self.database:
            raise ProxyError(errors.ER_NOT_SUPPORTED_YET, "HY000",
                             f"Cannot switch to database '{name}' inside a sharded transaction; commit first")
        if self.held is not None and self.config.data_source_for(name).name != self.held.data_source \
                and (self.held.in_transaction or self.pin_reasons):
            raise ProxyError(errors.ER_NOT_SUPPORTED_YET, "HY000",
                             f"Cannot switch to database '{name}': it lives on another data source and "
                             "this session holds a transaction or session state; commit or reset first")
        self.database = name
        self.sharded.diagnostics.clear()
        if self.held is not None and self.config.data_source_for(name).name != self.held.data_source:
            self._return_held(force=True)

    # -- text protocol -------------------------------------------------------------------------------

    async def com_query(self, payload: bytes) -> None:
        sql = payload[1:]
        statement = classify(sql)
        kind = statement.kind
        if kind is Kind.USE:
            assert statement.database is not None  # classify() sets it for USE
            self._change_database(statement.database)
            self.send_ok()
            return
        if kind is Kind.SHOW_DATABASES:
            user = self.user
            assert user is not None  # logged in
            names = [d for d in self.config.databases if user.may_use(d)]
            self.send_result([Column("Database", schema="information_schema", table="SCHEMATA",
                                     org_table="SCHEMATA", org_name="SCHEMA_NAME", length=256)],
                             [[n] for n in names])
            return
        if kind is Kind.SELECT_DATABASE:
            self.send_result([Column("DATABASE()", length=256)], [[self.database]])
            return
        if kind is Kind.PREVIEW:
            self._preview(sql)
            return
        if kind is Kind.ADMIN:
            await admin.execute(self, sql)
            return
        if statement.session_set and statement.session_set[0] == "dbmesh_route":
            self._set_route(statement.session_set[1])
            return
        if statement.session_set and statement.session_set[0] in ("dbmesh_transaction_mode", "dbmesh_base_isolation"):
            name, value = statement.session_set[0], statement.session_set[1].split("=", 1)[1]
            if self.sharded.in_transaction:
                raise ProxyError(errors.ER_NOT_SUPPORTED_YET, "25000", f"Cannot change {name} inside a transaction")
            txn = self.sharded.txn
            (txn.set_mode if name == "dbmesh_transaction_mode" else txn.set_isolation)(value)
            self.send_ok()
            return
        if statement.session_set and statement.session_set[0] in ("dbmesh_db_hint", "dbmesh_table_hint"):
            self._set_sharding_hint(*statement.session_set)
            return
        if statement.session_set and statement.session_set[0] == "dbmesh_shadow":
            self.shadow.set_flag(statement.session_set[1])
            return
        if self._is_sharded():
            diagnostics = self.sharded.diagnostics
            await diagnostics.settle()
            if (statement.diagnostics or b"@@" in sql) and diagnostics.answer(self, sql):
                return
            diagnostics.clear()
            if statement.session_set or statement.pin_reason:
                await self._sharded_session_statement(payload, statement)
            else:
                await self.sharded.query(sql.decode("utf-8", "surrogateescape"))
            return
        if self.shadow_engaged(sql) and await self.shadow.com_query(payload, statement):
            return
        scanner = await self.relay_statement(payload, statement)
        if scanner is not None and scanner.error is None and statement.session_set \
                and statement.session_set[0] not in TRACKED_BY_STATUS:
            self._record_var(*statement.session_set)
            # relay() may already have given the connection back to the pool: its record must
            # say what it now has, or a client with the old signature inherits this SET.
            conn = self.held or self.last_conn
            if conn is not None:
                conn.session_vars = self.vars_signature

    async def relay_statement(self, payload: bytes, statement) -> ResponseScanner | None:
        """A pass-through COM_QUERY on the primary or a replica; the scanner, or None when a
        replica served it (or the backend failed)."""
        if self.held is not None and self.held.role != "primary" and not (
                statement.diagnostics or statement.read_only):
            self._return_held(force=True)  # a replica kept for SHOW WARNINGS serves nothing else
        if statement.pin_reason:
            self.pin_reasons.add(statement.pin_reason)
        if statement.read_only and self._route().has_replicas \
                and await self.read_splitting.try_replica(payload, statement):
            return None
        scanner = await self.relay(payload, ResponseKind.RESULT)
        if scanner is not None and scanner.error is None and statement.writes:
            await self.read_splitting.wrote()
        return scanner

    def _set_route(self, statement: str) -> None:
        value = statement.split("=", 1)[1].strip().strip("'\"`").strip()
        if not value:
            raise ProxyError(1231, "42000", "dbmesh_route must be 'auto', 'primary', 'replica' or a replica name")
        self.route_setting = value if value.lower() not in ("auto", "primary", "replica") else value.lower()
        self.send_ok()

    def _set_sharding_hint(self, name: str, statement: str) -> None:
        """SET dbmesh_db_hint / dbmesh_table_hint = value (NULL clears): values for HINT strategies."""
        from .sharded import _hint_value

        value = statement.split("=", 1)[1].strip()
        kind = "db" if name == "dbmesh_db_hint" else "table"
        if value.upper() == "NULL" or not value:
            self.sharding_hints.pop(kind, None)
        else:
            self.sharding_hints[kind] = _hint_value(value)
        self.send_ok()

    def _is_sharded(self) -> bool:
        return self._route().sharded

    def _preview(self, sql: bytes) -> None:
        """PREVIEW <statement>: the route units (data source, actual SQL) without running it."""
        inner = sql.lstrip()[len(b"PREVIEW"):].strip().decode("utf-8", "surrogateescape")
        if not inner:
            raise ProxyError(1064, "42000", "PREVIEW needs a statement, e.g. PREVIEW SELECT * FROM t WHERE id = 1")
        if self.shadow_engaged(inner):
            units = self.shadow.preview(inner)
        elif self._is_sharded():
            units = [(u.data_source, u.sql) for u in self.sharded.preview(inner)]
        else:
            units = [(self.config.data_source_for(self.database).name, inner)]
        self.send_result([Column("data_source_name", length=256), Column("actual_sql", length=65535)],
                         [list(u) for u in units])

    async def _sharded_session_statement(self, payload: bytes, statement) -> None:
        """A SET on a sharded database: check it on the default data source, then replay it on
        every backend connection the session borrows."""
        if statement.pin_reason:
            raise ProxyError(errors.ER_NOT_SUPPORTED_YET, "HY000",
                             f"{statement.pin_reason} is not supported on sharded database '{self.database}': "
                             "it would hold state on one shard only")
        scanner = await self.relay(payload, ResponseKind.RESULT)
        if scanner is not None and scanner.error is None and statement.session_set[0] not in TRACKED_BY_STATUS:
            self._record_var(*statement.session_set)
            conn = self.held or self.last_conn  # possibly back in the pool already: see com_query
            if conn is not None:
                conn.session_vars = self.vars_signature

    async def com_init_db(self, payload: bytes) -> None:
        self._change_database(payload[1:].decode("utf-8", "replace"))
        self.send_ok()

    async def com_ping(self, payload: bytes) -> None:
        self.send_ok()

    async def com_field_list(self, payload: bytes) -> None:
        await self.relay(payload, ResponseKind.FIELD_LIST)

    async def com_statistics(self, payload: bytes) -> None:
        await self.relay(payload, ResponseKind.SINGLE)

    async def com_reset_connection(self, payload: bytes) -> None:
        await self._reset_session_state()
        self.send_ok()

    async def _reset_session_state(self) -> None:
        conn = self.held
        if conn is not None:
            try:
                await conn.reset()
            except (BackendError, ConnectionError, OSError):
                conn.broken = True
        self.statements.clear()
        self.shadow.reset()
        self.pin_reasons.clear()
        self.keep_for_statements = 0
        self.autocommit = True
        names = self.session_vars.get("names")
        self.session_vars.clear()
        if names:
            self._record_var("names", names)
        self.vars_signature = tuple(self.session_vars.values())
        if conn is not None:
            conn.session_vars = ()
        self._return_held(force=True)

    async def com_set_option(self, payload: bytes) -> None:
        if len(payload) < 3:
            raise errors.malformed("COM_SET_OPTION without an option")
        option = struct.unpack_from("<H", payload, 1)[0]
        if option not in (0, 1):
            raise ProxyError(errors.ER_UNKNOWN_COM_ERROR, "HY000", f"Unknown COM_SET_OPTION value {option}")
        if self.held is not None and (self.held.in_transaction or self.pin_reasons):
            raise ProxyError(errors.ER_NOT_SUPPORTED_YET, "HY000",
                             "Changing multi-statement mode inside a transaction is not supported")
        self._return_held(force=True)
        if option == 0:
            self.capabilities |= Capability.MULTI_STATEMENTS
        else:
            self.capabilities &= ~Capability.MULTI_STATEMENTS
        self.caps_key = self.capabilities & RESULT_SHAPING_CAPABILITIES
        self.send(ok_packet(status=self.status_flags(), eof_header=True) if self.deprecate_eof
                  else eof_packet(self.status_flags()))

    async def com_change_user(self, payload: bytes) -> None:
        try:
            user_name, pos = _nul_str(payload, 1)
            if self.capabilities & Capability.SECURE_CONNECTION:
                length = payload[pos]
                auth = payload[pos + 1:pos + 1 + length]
                pos += 1 + length
            else:
                auth, pos = _nul_bytes(payload, pos)
            database, pos = _nul_str(payload, pos) if pos < len(payload) else ("", pos)
            pos += 2  # character set
            plugin = _nul_str(payload, pos)[0] if pos < len(payload) else NATIVE_PLUGIN
        except (IndexError, ValueError) as exc:
            raise errors.malformed("COM_CHANGE_USER") from exc
        if plugin != NATIVE_PLUGIN:
            self.scramble = new_scramble()
            self.send(handshake.auth_switch_request(NATIVE_PLUGIN, self.scramble))
            auth = await self.packets.read()
        user = self.config.users.get(user_name)
        if user is None or not verify(NATIVE_PLUGIN, user.password, self.scramble, auth):
            self.send_error(errors.access_denied(user_name, self.client_host, bool(auth)))
            raise ConnectionClosed("change user failed")
        await self._reset_session_state()
        self.user = user
        self.database = None
        if database:
            self._change_database(database)
        self.send_ok()

    # -- prepared statements -------------------------------------------------------------------------

    def _statement(self, payload: bytes, command: str) -> ClientStatement:
        if len(payload) < 5:
            raise errors.malformed(f"{command} without a statement id")
        stmt_id = struct.unpack_from("<I", payload, 1)[0]
        stmt = self.statements.get(stmt_id)
        if stmt is None:
            raise ProxyError(errors.ER_UNKNOWN_STMT_HANDLER, "HY000",
                             f"Unknown prepared statement handler ({stmt_id}) given to {command}")
        return stmt

    async def com_stmt_prepare(self, payload: bytes) -> None:
        admin.refuse_prepare(payload[1:])
        if self._is_sharded():
            await sharded_prepared.prepare(self, payload)
            return
        sql = payload[1:]
        statement = classify(sql)
        if statement.pin_reason:
            self.pin_reasons.add(statement.pin_reason)
        conn = await self.borrow()
        try:
            payloads, scanner = await conn.collect(payload, ResponseKind.PREPARE)
        except (ConnectionError, OSError, MalformedPacket) as exc:
            self._backend_failed(conn, exc)
            return
        if scanner.error is None:
            self._remember_backend_statement(conn, sql, scanner)
            stmt = ClientStatement(self.next_stmt_id, sql, scanner.num_params, scanner.num_columns)
            self.next_stmt_id += 1
            self.statements[stmt.id] = stmt
            first = payloads[0]
            payloads[0] = first[:1] + struct.pack("<I", stmt.id) + first[5:]
        self.send(*payloads)
        self._after_response(conn, scanner)

    def _remember_backend_statement(self, conn: BackendConnection, sql: bytes, scanner: ResponseScanner) -> None:
        key = (conn.database, sql)
        old = conn.prepared.pop(key, None)
        if old is not None and old.stmt_id != scanner.stmt_id:
            conn.close_statement(old.stmt_id)
        conn.prepared[key] = BackendStatement(scanner.stmt_id, scanner.num_params, scanner.num_columns)
        while len(conn.prepared) > _PREPARED_PER_BACKEND:
            _, evicted = conn.prepared.popitem(last=False)
            conn.close_statement(evicted.stmt_id)

    async def _ensure_prepared(self, conn: BackendConnection, stmt: ClientStatement) -> BackendStatement | None:
        key = (conn.database, stmt.sql)
        found = conn.prepared.get(key)
        if found is not None:
            conn.prepared.move_to_end(key)
            return found
        payloads, scanner = await conn.collect(bytes((Command.STMT_PREPARE,)) + stmt.sql, ResponseKind.PREPARE)
        if scanner.error is not None:
            self.send(payloads[0])
            return None
        self._remember_backend_statement(conn, stmt.sql, scanner)
        return conn.prepared[key]

    def _execute_packet(self, payload: bytes, stmt: ClientStatement, backend_id: int, cursor: bool = True) -> bytes:
        """The client's COM_STMT_EXECUTE with the backend's statement id, and parameter types
        included even when the client sent them only on an earlier execute; without the
        client's cursor flags unless ``cursor``."""
        head = payload[:1] + struct.pack("<I", backend_id) + (payload[5:10] if cursor else b"\x00" + payload[6:10])
        n = stmt.num_params
        if n == 0:
            return head + payload[10:]
        bitmap_end = 10 + (n + 7) // 8
        if len(payload) <= bitmap_end:
            raise errors.malformed("COM_STMT_EXECUTE shorter than its NULL bitmap")
        if payload[bitmap_end] == 1:
            stmt.param_types = payload[bitmap_end + 1:bitmap_end + 1 + 2 * n]
            return head + payload[10:]
        if stmt.param_types is None:
            raise errors.malformed("COM_STMT_EXECUTE without parameter types on first execution")
        return head + payload[10:bitmap_end] + b"\x01" + stmt.param_types + payload[bitmap_end + 1:]

    async def com_stmt_execute(self, payload: bytes) -> None:
        stmt = self._statement(payload, "mysqld_stmt_execute")
        if len(payload) < 10:
            raise errors.malformed("COM_STMT_EXECUTE shorter than 10 bytes")
        if stmt.sharded is not None:
            await sharded_prepared.execute(self, stmt, payload)
            return
        if stmt.cursor_conn is not None:
            # Re-executing closes the open cursor; the backend does the same.
            stmt.cursor_conn = None
        if (stmt.hinted or self.shadow_engaged()) and await self.shadow.stmt_execute(stmt, payload):
            return
        await self.execute_prepared(stmt, payload)

    async def execute_prepared(self, stmt: ClientStatement, payload: bytes) -> None:
        """The pass-through COM_STMT_EXECUTE on the session's backend connection."""
        conn = self._borrow_now() or await self.borrow()
        try:
            scanner = await self.relay_execute(conn, stmt, payload)
            if scanner is None:
                self._return_held(force=False)
                return
        except (ConnectionError, OSError, MalformedPacket) as exc:
            self._backend_failed(conn, exc)
            return
        except ProxyError:
            self._return_held(force=False)
            raise
        if payload[5] & CURSOR_TYPE_READ_ONLY and scanner.status & ServerStatus.CURSOR_EXISTS:
            stmt.cursor_conn = conn
            self.cursors_opened = True
        self._after_response(conn, scanner)

    async def relay_execute(self, conn: BackendConnection, stmt: ClientStatement, payload: bytes,
                            cursor: bool = True) -> ResponseScanner | None:
        """Execute ``stmt`` on ``conn`` (preparing it there first if needed) with the client's
        parameters and relay the result; None when the prepare failed (its error was sent).
        Without ``cursor`` the rows come at once even if the client asked for a cursor."""
        key = (conn.database, stmt.sql)
        backend = conn.prepared.get(key)
        if backend is not None:  # the usual case, without _ensure_prepared's coroutine
            conn.prepared.move_to_end(key)
        else:
            backend = await self._ensure_prepared(conn, stmt)
            if backend is None:
                return None
        packet = self._execute_packet(payload, stmt, backend.stmt_id)
        if not cursor:
            packet = packet[:5] + b"\x00" + packet[6:]
        for param, data in stmt.long_data.items():
            conn.send(bytes((Command.STMT_SEND_LONG_DATA,)) + struct.pack("<IH", backend.stmt_id, param)
                      + bytes(data))
        stmt.long_data.clear()
        return await conn.relay(packet, ResponseKind.RESULT, self.writer)

    async def com_stmt_fetch(self, payload: bytes) -> None:
        stmt = self._statement(payload, "mysqld_stmt_fetch")
        conn = stmt.cursor_conn
        if conn is None or conn is not self.held:
            raise ProxyError(errors.ER_UNKNOWN_STMT_HANDLER, "HY000",
                             f"Statement {stmt.id} has no open cursor; execute it with a cursor first")
        backend = conn.prepared[(conn.database, stmt.sql)]
        try:
            scanner = await conn.relay(payload[:1] + struct.pack("<I", backend.stmt_id) + payload[5:],
                                       ResponseKind.ROWS, self.writer)
        except (ConnectionError, OSError, MalformedPacket) as exc:
            self._backend_failed(conn, exc)
            return
        self._after_response(conn, scanner)

    async def com_stmt_send_long_data(self, payload: bytes) -> None:
        if len(payload) < 7:
            return  # no response is ever sent for this command
        stmt_id, param = struct.unpack_from("<IH", payload, 1)
        stmt = self.statements.get(stmt_id)
        if stmt is not None and param < stmt.num_params:
            stmt.long_data.setdefault(param, bytearray()).extend(payload[7:])

    async def com_stmt_close(self, payload: bytes) -> None:
        if len(payload) < 5:
            return
        stmt = self.statements.pop(struct.unpack_from("<I", payload, 1)[0], None)
        if stmt is not None and stmt.cursor_conn is not None:
            await self._close_cursor(stmt)
            self._return_held(force=False)

    async def com_stmt_reset(self, payload: bytes) -> None:
        stmt = self._statement(payload, "mysqld_stmt_reset")
        stmt.long_data.clear()
        if stmt.cursor_conn is not None:
            await self._close_cursor(stmt)
            self._return_held(force=False)
        self.send_ok()

    async def _close_cursor(self, stmt: ClientStatement) -> None:
        conn = stmt.cursor_conn
        stmt.cursor_conn = None
        if conn is None:
            return
        backend = conn.prepared.get((conn.database, stmt.sql))
        if backend is not None:
            try:
                await conn.simple(Command.STMT_RESET, struct.pack("<I", backend.stmt_id))
            except (BackendError, ConnectionError, OSError):
                conn.broken = True


def _nul_bytes(payload: bytes, pos: int) -> tuple[bytes, int]:
    end = payload.index(b"\x00", pos)
    return payload[pos:end], end + 1


def _nul_str(payload: bytes, pos: int) -> tuple[str, int]:
    value, pos = _nul_bytes(payload, pos)
    return value.decode("utf-8", "replace"), pos
