"""Robustness of the sidecar against real MariaDB servers over real sockets, no mocks.

The sidecar must never crash, never leak a backend connection, never lose committed data,
and answer what it cannot serve with a MySQL ERR packet that says what went wrong:

* hostile or broken clients (garbage handshakes, truncated packets, unknown / malformed
  commands) get ERR packets or a clean disconnect while other clients keep working;
* 200 concurrent clients with a mixed read/write/transaction workload see exactly their
  own results, and the table ends up holding exactly the committed operations;
* abrupt disconnects (mid-transaction, mid-result) leave no backend connection behind and
  no uncommitted data visible; a saturated pool answers 1040 naming the data source, then
  recovers;
* payloads over 16 MiB in both directions, text and binary protocol;
* a backend that dies and comes back;
* TLS towards clients.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mysql.connector
import pymysql
import pytest

from conftest import Proxy, free_port, start_proxy, stop_proxy
from dbmesh.protocol.packets import err_packet

# ---------------------------------------------------------------------------------------
# A hand-rolled client for what real drivers never send.

CLIENT_LONG_PASSWORD = 1
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_SSL = 1 << 11
CLIENT_TRANSACTIONS = 1 << 13
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_MULTI_RESULTS = 1 << 17
CLIENT_PLUGIN_AUTH = 1 << 19
RAW_CLIENT_CAPS = (CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS
                   | CLIENT_SECURE_CONNECTION | CLIENT_MULTI_RESULTS | CLIENT_PLUGIN_AUTH)

COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_PING = 0x0E
COM_BINLOG_DUMP = 0x12
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_SET_OPTION = 0x1B
COM_STMT_FETCH = 0x1C

MYSQL_TYPE_LONGLONG = 0x08
MYSQL_TYPE_VAR_STRING = 0xFD


def native_scramble(password: str, scramble: bytes) -> bytes:
    stage1 = hashlib.sha1(password.encode()).digest()
    stage2 = hashlib.sha1(stage1).digest()
    mix = hashlib.sha1(scramble + stage2).digest()
    return bytes(a ^ b for a, b in zip(stage1, mix, strict=True))


class ServerError(Exception):
    def __init__(self, code: int, sqlstate: str, message: str):
        super().__init__(f"({code}, {sqlstate}) {message}")
        self.code = code
        self.sqlstate = sqlstate
        self.message = message


def parse_err(payload: bytes) -> ServerError:
    assert payload[:1] == b"\xff", f"not an ERR packet: {payload[:40]!r}"
    code = struct.unpack_from("<H", payload, 1)[0]
    sqlstate, message = "", payload[3:]
    if message[:1] == b"#":
        sqlstate, message = message[1:6].decode(), message[6:]
    return ServerError(code, sqlstate, message.decode("utf-8", "replace"))


def lenenc(buf: bytes, pos: int) -> tuple[int | None, int]:
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    if first == 0xFB:
        return None, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}[first]
    return int.from_bytes(buf[pos + 1:pos + 1 + size], "little"), pos + 1 + size


class RawClient:
    """A MySQL client on a plain socket: protocol 4.1, mysql_native_password, classic EOF."""

    def __init__(self, proxy: Proxy, timeout: float = 15):
        self.sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
        self.buf = b""
        self.seq = 0
        greeting = self.read()
        assert greeting is not None and greeting[0] == 10, greeting
        version_end = greeting.index(b"\x00", 1)
        pos = version_end + 1 + 4
        self.scramble = greeting[pos:pos + 8]
        pos += 8 + 1 + 2 + 1 + 2 + 2
        auth_len = greeting[pos]
        pos += 1 + 10
        self.scramble += greeting[pos:pos + max(13, auth_len - 8) - 1]

    # -- framing ------------------------------------------------------------------------

    def _recv_exact(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read(self) -> bytes | None:
        """One payload (joining packets split at 16 MiB), or None when the server closed."""
        parts = []
        while True:
            header = self._recv_exact(4)
            if header is None:
                return None
            length = int.from_bytes(header[:3], "little")
            self.seq = header[3]
            part = self._recv_exact(length) if length else b""
            if part is None:
                return None
            parts.append(part)
            if length < 0xFFFFFF:
                return b"".join(parts)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, payload: bytes, seq: int = 0) -> None:
        self.send_raw(struct.pack("<I", len(payload) | seq << 24) + payload)

    def closed_by_server(self) -> bool:
        """True when the server closes the connection without sending anything more."""
        return self.read() is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- phases ---------------------------------------------------------------------------

    def handshake_response(self, user: str, password: str, database: str | None = None) -> bytes:
        caps = RAW_CLIENT_CAPS | (CLIENT_CONNECT_WITH_DB if database else 0)
        auth = native_scramble(password, self.scramble)
        return (struct.pack("<IIB", caps, 1 << 24, 45) + bytes(23) + user.encode() + b"\x00"
                + bytes((len(auth),)) + auth
                + ((database.encode() + b"\x00") if database else b"")
                + b"mysql_native_password\x00")

    def login(self, user: str = "app", password: str = "app", database: str | None = "demo",
              seq: int = 1) -> None:
        self.send(self.handshake_response(user, password, database), seq=seq)
        reply = self.read()
        assert reply is not None and reply[:1] == b"\x00", f"login failed: {reply!r}"

    def command(self, payload: bytes) -> bytes | None:
        """Send a command and return the first payload of its response."""
        self.send(payload)
        return self.read()

    def expect_error(self, payload: bytes) -> ServerError:
        reply = self.command(payload)
        assert reply is not None, f"connection closed instead of an ERR for {payload[:20]!r}"
        return parse_err(reply)

    def query(self, sql: str) -> list[list[bytes | None]]:
        """Run a text query; return its rows (raises ServerError on ERR)."""
        self.send(bytes((COM_QUERY,)) + sql.encode())
        return self.read_result()

    def read_result(self) -> list[list[bytes | None]]:
        """The rows of the next text result set (raises ServerError on ERR)."""
        first = self.read()
        assert first is not None, "connection closed"
        if first[:1] == b"\xff":
            raise parse_err(first)
        if first[:1] == b"\x00":
            return []
        count, _ = lenenc(first, 0)
        for _ in range(count):
            self.read()
        assert self.read()[:1] == b"\xfe"  # end of column definitions
        rows = []
        while True:
            packet = self.read()
            assert packet is not None
            if packet[:1] == b"\xfe" and len(packet) < 9:
                return rows
            if packet[:1] == b"\xff":
                raise parse_err(packet)
            row, pos = [], 0
            for _ in range(count):
                length, pos = lenenc(packet, pos)
                row.append(None if length is None else packet[pos:pos + length])
                pos += length or 0
            rows.append(row)

    def prepare(self, sql: str) -> tuple[int, int, int]:
        """COM_STMT_PREPARE; return (statement id, columns, params)."""
        first = self.command(bytes((COM_STMT_PREPARE,)) + sql.encode())
        assert first is not None
        if first[:1] == b"\xff":
            raise parse_err(first)
        stmt_id, columns, params = struct.unpack_from("<IHH", first, 1)
        for block in (params, columns):
            if block:
                for _ in range(block):
                    self.read()
                assert self.read()[:1] == b"\xfe"
        return stmt_id, columns, params


def execute_packet(stmt_id: int, params: list[int]) -> bytes:
    """COM_STMT_EXECUTE binding LONGLONG parameters (no NULLs), types included."""
    bitmap = bytes((len(params) + 7) // 8)
    types = b"".join(struct.pack("<BB", MYSQL_TYPE_LONGLONG, 0) for _ in params)
    values = b"".join(struct.pack("<q", p) for p in params)
    return struct.pack("<BIBI", COM_STMT_EXECUTE, stmt_id, 0, 1) + bitmap + b"\x01" + types + values


class TlsOverBio:
    """Just enough of a socket (recv / sendall) for RawClient, over an ssl.SSLObject."""

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO):
        self.sock, self.tls, self.incoming, self.outgoing = sock, tls, incoming, outgoing

    def sendall(self, data: bytes) -> None:
        self.tls.write(data)
        self.sock.sendall(self.outgoing.read())

    def recv(self, n: int) -> bytes:
        while True:
            try:
                return self.tls.read(n)
            except ssl.SSLWantReadError:
                data = self.sock.recv(1 << 16)
                if not data:
                    return b""
                self.incoming.write(data)
            except ssl.SSLZeroReturnError:
                return b""

    def close(self) -> None:
        self.sock.close()


def tls_client_sending_hello_early(proxy: Proxy, cafile: Path) -> RawClient:
    """A client that sends the SSL request and its TLS ClientHello in one write, as fast
    clients do (they never wait for the server in between), then completes the handshake."""
    c = RawClient(proxy, timeout=10)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context(cafile=str(cafile)).wrap_bio(incoming, outgoing,
                                                                  server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    request = struct.pack("<IIB", RAW_CLIENT_CAPS | CLIENT_SSL, 1 << 24, 45) + bytes(23)
    c.send_raw(struct.pack("<I", len(request) | 1 << 24) + request + outgoing.read())
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            c.sock.sendall(outgoing.read())
            data = c.sock.recv(1 << 16)  # times out if the server lost the ClientHello
            assert data, "the proxy closed the connection during the TLS handshake"
            incoming.write(data)
    c.sock.sendall(outgoing.read())
    c.sock = TlsOverBio(c.sock, tls, incoming, outgoing)
    return c


# ---------------------------------------------------------------------------------------
# Helpers


def wait_until(predicate: Callable[[], object], timeout: float = 20, interval: float = 0.05,
               what: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last value {value!r})")
        time.sleep(interval)


def assert_healthy(proxy: Proxy) -> None:
    """The proxy process is alive and a normal client runs queries through it."""
    assert proxy.alive(), f"proxy died:\n{proxy.log()[-4000:]}"
    with proxy.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 40 + 2, DATABASE()")
        assert cur.fetchall() == ((42, "demo"),)


def assert_no_tracebacks(proxy: Proxy) -> None:
    """No handler died with an unexpected exception (asyncio logs those with a traceback)."""
    log = proxy.log()
    assert "Traceback" not in log, log[-6000:]
    assert "exception was never retrieved" not in log, log[-6000:]


def data_source(config: dict, name: str) -> dict:
    return config["data_sources"][name]


def backend_connections(sandbox, instance: str, user: str) -> int:
    """Connections the backend server ``instance`` has from ``user`` right now."""
    conn = sandbox.admin_connect(instance)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (user,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def admin_execute(sandbox, instance: str, *statements: str, database: str | None = None) -> None:
    conn = sandbox.admin_connect(instance, database=database)
    try:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
    finally:
        conn.close()


def admin_rows(sandbox, instance: str, sql: str, args: tuple = (), database: str | None = None) -> list:
    conn = sandbox.admin_connect(instance, database=database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


@contextlib.contextmanager
def running_proxy(config: dict, workdir: Path) -> Iterator[Proxy]:
    p = start_proxy(config, workdir)
    try:
        yield p
    finally:
        stop_proxy(p)


class BackgroundTraffic:
    """A normal client running queries in a loop while a test abuses the proxy."""

    def __init__(self, proxy: Proxy):
        self.proxy = proxy
        self.ok = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with self.proxy.connect() as conn, conn.cursor() as cur:
                i = 0
                while not self._stop.is_set():
                    i += 1
                    cur.execute("SELECT %s * 2", (i,))
                    assert cur.fetchone() == (i * 2,)
                    self.ok += 1
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.errors.append(exc)

    def __enter__(self) -> BackgroundTraffic:
        self._thread.start()
        wait_until(lambda: self.ok > 0 or self.errors, what="background traffic to start")
        return self

    def __exit__(self, *exc: object) -> None:
        before = self.ok
        # It must still be making progress at the end.
        wait_until(lambda: self.ok > before + 5 or self.errors, what="background traffic progress")
        self._stop.set()
        self._thread.join(10)
        assert not self.errors, f"a well-behaved client failed: {self.errors!r}"


# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def rb_proxy(sandbox_config: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """A proxy of its own, so its log shows only what these tests did to it."""
    with running_proxy(sandbox_config, tmp_path_factory.mktemp("rb-proxy")) as p:
        yield p


# ---------------------------------------------------------------------------------------
# 1. Hostile and broken clients


# Texts that a careless regular expression reads in quadratic time, each quote, comment or
# hint opener starting a scan to the end of the text (at these sizes, minutes per statement
# with the sidecar's event loop blocked): the server's error comes back at once.
HARD_TO_SCAN = [  # (text, error code on a sharded database, where a user variable is refused)
    (b"SELECT @v, c FROM t_order WHERE user_id = 1 AND status = '" + b"\\'" * 100_000, 1235),
    (b"SELECT GET_LOCK FROM t_order WHERE user_id = 1 AND status = '" + b"\\'" * 100_000, 1064),
    (b"SELECT c FROM t_order WHERE user_id = 1 /* dbmesh:" + b"/*dbmesh:" * 25_000, 1064),
]


def test_texts_that_are_hard_to_scan_get_an_error_and_the_session_survives(rb_proxy: Proxy) -> None:
    with BackgroundTraffic(rb_proxy):
        for database in ("demo", "shop"):
            c = RawClient(rb_proxy)
            c.login(database=database)
            for sql, sharded_code in HARD_TO_SCAN:
                err = c.expect_error(bytes((COM_QUERY,)) + sql)
                assert err.code == (sharded_code if database == "shop" else 1064), err
            assert c.query("SELECT 6 * 7") == [[b"42"]]
    assert rb_proxy.alive()


def test_garbage_handshakes_get_1043_or_clean_disconnect(rb_proxy: Proxy) -> None:
    with BackgroundTraffic(rb_proxy):
        # Too short to be a handshake response.
        c = RawClient(rb_proxy)
        c.send(b"\x13\x37" * 5, seq=1)
        err = parse_err(c.read())
        assert err.code == 1043 and err.sqlstate == "08S01"
        assert "Bad handshake" in err.message and "10 bytes" in err.message
        assert c.closed_by_server()

        # Long enough, but no protocol 4.1.
        c = RawClient(rb_proxy)
        c.send(bytes(40), seq=1)
        err = parse_err(c.read())
        assert err.code == 1043 and "protocol 4.1" in err.message
        assert c.closed_by_server()

        # Protocol 4.1 announced, user name never terminated.
        c = RawClient(rb_proxy)
        c.send(struct.pack("<IIB", RAW_CLIENT_CAPS, 1 << 24, 45) + bytes(23) + b"\xab" * 50, seq=1)
        err = parse_err(c.read())
        assert err.code == 1043 and "NUL" in err.message
        assert c.closed_by_server()

        # An auth response longer than the packet.
        c = RawClient(rb_proxy)
        c.send(struct.pack("<IIB", RAW_CLIENT_CAPS, 1 << 24, 45) + bytes(23) + b"app\x00\x14abc", seq=1)
        err = parse_err(c.read())
        assert err.code == 1043 and "truncated" in err.message
        assert c.closed_by_server()

        # An empty packet.
        c = RawClient(rb_proxy)
        c.send(b"", seq=1)
        assert parse_err(c.read()).code == 1043
        assert c.closed_by_server()

        # Not MySQL at all: an HTTP request. Its first bytes read as a 5 MB packet length, so
        # the proxy waits for the rest; when the client gives up it must close cleanly.
        c = RawClient(rb_proxy)
        c.send_raw(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        assert c.closed_by_server()

        # Random bytes, framed: whatever they decode to, the answer is an ERR packet
        # (bad handshake, or access denied), never a crash or a hang.
        rng = random.Random(1234)
        codes = set()
        for _ in range(60):
            c = RawClient(rb_proxy)
            garbage = rng.randbytes(rng.choice([0, 1, 4, 31, 32, 33, 64, 200]))
            if rng.random() < 0.5 and len(garbage) >= 4:  # often claim protocol 4.1
                garbage = struct.pack("<I", struct.unpack_from("<I", garbage)[0] | CLIENT_PROTOCOL_41
                                      ) + garbage[4:]
            c.send(garbage, seq=1)
            reply = c.read()
            if reply is not None and reply[:1] == b"\xfe":  # auth switch: answer garbage again
                c.send(rng.randbytes(20), seq=c.seq + 1)
                reply = c.read()
            assert reply is not None, f"closed without an ERR for {garbage!r}"
            err = parse_err(reply)
            assert err.code in (1043, 1045), err
            codes.add(err.code)
            assert c.closed_by_server()
        assert 1043 in codes

    assert_healthy(rb_proxy)
    assert_no_tracebacks(rb_proxy)


def test_truncated_packets_close_cleanly(rb_proxy: Proxy) -> None:
    with BackgroundTraffic(rb_proxy):
        # During the handshake: header says 1000 bytes, 10 follow, then the client is gone.
        c = RawClient(rb_proxy)
        c.send_raw(struct.pack("<I", 1000 | 1 << 24) + b"0123456789")
        c.sock.shutdown(socket.SHUT_WR)
        assert c.closed_by_server()

        # The same in the command phase, once for a query and once while the client's
        # session holds a transaction on a backend connection.
        for setup in ([], ["BEGIN", "SELECT 1"]):
            c = RawClient(rb_proxy)
            c.login()
            for sql in setup:
                c.query(sql)
            c.send_raw(struct.pack("<I", 1000) + bytes((COM_QUERY,)) + b"SELECT 1 ")
            c.sock.shutdown(socket.SHUT_WR)
            assert c.closed_by_server()

        # A truncated header (2 of 4 bytes).
        c = RawClient(rb_proxy)
        c.login()
        c.send_raw(b"\x05\x00")
        c.sock.shutdown(socket.SHUT_WR)
        assert c.closed_by_server()

    assert_healthy(rb_proxy)
    assert_no_tracebacks(rb_proxy)


def test_pipelined_commands_are_answered_in_order(rb_proxy: Proxy) -> None:
    """A client that sends its next commands before the answers arrive (pipelining drivers
    do) gets every answer, in order: commands arriving while one is served wait for it."""
    with BackgroundTraffic(rb_proxy):
        c = RawClient(rb_proxy)
        c.login()
        stmt_id, _, _ = c.prepare("SELECT ? + 1")
        frames = []
        for n in range(40):
            query = bytes((COM_QUERY,)) + f"SELECT {n}".encode()
            frames.append(struct.pack("<I", len(query)) + query)
            execute = execute_packet(stmt_id, [n * 10])
            frames.append(struct.pack("<I", len(execute)) + execute)
            if n % 10 == 5:  # a command only the command loop serves, in the middle
                frames.append(struct.pack("<I", 1) + bytes((COM_PING,)))
        c.send_raw(b"".join(frames))
        for n in range(40):
            assert c.read_result() == [[str(n).encode()]]
            assert c.read()[:1] == b"\x01"  # one column
            c.read()  # its definition
            assert c.read()[:1] == b"\xfe"
            row = c.read()
            assert row[0] == 0x00 and struct.unpack_from("<q", row, 2)[0] == n * 10 + 1, (n, row)
            assert c.read()[:1] == b"\xfe"
            if n % 10 == 5:
                assert c.read()[:1] == b"\x00"  # the ping's OK
        assert c.query("SELECT 6 * 7") == [[b"42"]]
        c.close()


def test_bad_commands_after_login_get_err_and_session_survives(rb_proxy: Proxy) -> None:
    with BackgroundTraffic(rb_proxy):
        c = RawClient(rb_proxy)
        c.login()

        def still_works() -> None:
            assert c.query("SELECT 6 * 7") == [[b"42"]]

        # Unknown command bytes, including ones a proxy must never relay (binlog dump).
        for command in (0xEE, 0x00, COM_BINLOG_DUMP, 0x1E, 0x20, 0xFF):
            err = c.expect_error(bytes((command,)) + b"\xde\xad\xbe\xef garbage")
            assert err.code == 1047, err
            assert f"0x{command:02x}" in err.message
            still_works()

        # Garbage SQL goes to the server, whose error comes back.
        err = c.expect_error(bytes((COM_QUERY,)) + b"\xff\xfe\x00\x01 not sql at all")
        assert err.code == 1064, err
        still_works()
        err = c.expect_error(bytes((COM_QUERY,)))
        assert err.code == 1065, err  # query was empty
        still_works()

        # Prepared-statement commands with unknown ids: 1243.
        for payload, what in (
                (struct.pack("<BIBI", COM_STMT_EXECUTE, 987654, 0, 1), "mysqld_stmt_execute"),
                (struct.pack("<BII", COM_STMT_FETCH, 987654, 10), "mysqld_stmt_fetch")):
            err = c.expect_error(payload)
            assert err.code == 1243 and "987654" in err.message and what in err.message, err
            still_works()

        # Commands that never get a response must not get one for unknown ids either
        # (a stray packet would shift every later response).
        c.send(struct.pack("<BIH", COM_STMT_SEND_LONG_DATA, 987654, 0) + b"data")
        c.send(struct.pack("<BI", COM_STMT_CLOSE, 987654))
        c.send(bytes((COM_STMT_CLOSE,)))
        still_works()

        # Truncated COM_STMT_EXECUTE: 1835, for a real statement too.
        stmt_id, _, params = c.prepare("SELECT ? + ?")
        assert params == 2
        for payload in (
                bytes((COM_STMT_EXECUTE,)) + b"\x01",                     # no statement id
                struct.pack("<BI", COM_STMT_EXECUTE, stmt_id),            # no flags / iteration count
                struct.pack("<BIBI", COM_STMT_EXECUTE, stmt_id, 0, 1),    # no NULL bitmap
                # no types ever sent for this statement
                struct.pack("<BIBI", COM_STMT_EXECUTE, stmt_id, 0, 1) + b"\x00\x00" + bytes(16)):
            err = c.expect_error(payload)
            assert err.code == 1835, err
            assert "Malformed" in err.message
            still_works()
        # The statement itself still executes.
        first = c.command(execute_packet(stmt_id, [40, 2]))
        assert first == b"\x01", first  # one column
        c.read()
        assert c.read()[:1] == b"\xfe"
        row = c.read()
        assert row[0] == 0x00 and struct.unpack_from("<q", row, 2)[0] == 42, row  # binary row
        assert c.read()[:1] == b"\xfe"
        # Parameter values cut short: the backend rejects it, the session goes on.
        reply = c.command(execute_packet(stmt_id, [1, 2])[:-5])
        assert reply is not None and reply[:1] == b"\xff", reply
        assert parse_err(reply).code == 1210, parse_err(reply)  # MariaDB's own answer
        still_works()

        # Other malformed commands.
        assert c.expect_error(bytes((COM_SET_OPTION,))).code == 1835
        assert c.expect_error(struct.pack("<BH", COM_SET_OPTION, 7)).code == 1047
        assert c.expect_error(bytes((COM_INIT_DB,)) + b"no_such_db").code == 1049
        assert c.expect_error(bytes((COM_FIELD_LIST,)) + b"no_such_table\x00").code == 1146
        still_works()
        err = c.expect_error(bytes((COM_CHANGE_USER,)) + b"user-without-terminator")
        assert err.code == 1835, err
        still_works()

        # An empty command packet is not a command at all: ERR 1835, then the proxy hangs up.
        err = c.expect_error(b"")
        assert err.code == 1835, err
        assert c.closed_by_server()

    assert_healthy(rb_proxy)
    assert_no_tracebacks(rb_proxy)


# ---------------------------------------------------------------------------------------
# 2. Many concurrent clients, every result checked


CLIENTS = 200
OPS_PER_CLIENT = 20


def _mixed_workload(proxy: Proxy, client: int, start: threading.Barrier) -> dict[int, int]:
    """One client's operations on its own rows; returns the committed state it expects."""
    rng = random.Random(client)
    model: dict[int, int] = {}
    next_k = 0
    conn = proxy.connect()
    try:
        cur = conn.cursor()
        start.wait(60)

        def insert(k: int, v: int) -> None:
            cur.execute("INSERT INTO rb_mixed (client, k, v) VALUES (%s, %s, %s)", (client, k, v))
            assert cur.rowcount == 1 and cur.lastrowid > 0

        def value(k: int) -> int | None:
            cur.execute("SELECT v FROM rb_mixed WHERE client = %s AND k = %s", (client, k))
            row = cur.fetchone()
            return None if row is None else row[0]

        for _ in range(OPS_PER_CLIENT):
            op = rng.choice(["insert", "insert", "select", "update", "commit", "rollback", "aggregate"])
            if op in ("select", "update", "rollback") and not model:
                op = "insert"
            if op == "insert":
                v = rng.randrange(1000)
                insert(next_k, v)
                model[next_k] = v
                next_k += 1
            elif op == "select":
                k = rng.choice(list(model))
                assert value(k) == model[k]
                assert value(next_k + 1000) is None
            elif op == "update":
                k, delta = rng.choice(list(model)), rng.randrange(1, 50)
                cur.execute("UPDATE rb_mixed SET v = v + %s WHERE client = %s AND k = %s", (delta, client, k))
                assert cur.rowcount == 1
                model[k] += delta
                assert value(k) == model[k]
            elif op == "commit":
                conn.begin()
                v = rng.randrange(1000)
                insert(next_k, v)
                assert value(next_k) == v  # its own uncommitted row
                if model:
                    k = rng.choice(list(model))
                    cur.execute("UPDATE rb_mixed SET v = v * 2 + 1 WHERE client = %s AND k = %s", (client, k))
                    assert cur.rowcount == 1
                    model[k] = model[k] * 2 + 1
                conn.commit()
                model[next_k] = v
                next_k += 1
            elif op == "rollback":
                cur.execute("START TRANSACTION")
                insert(next_k, 5)
                k = rng.choice(list(model))
                cur.execute("UPDATE rb_mixed SET v = -1 WHERE client = %s AND k = %s", (client, k))
                cur.execute("DELETE FROM rb_mixed WHERE client = %s AND k <> %s", (client, k))
                assert value(k) == -1
                cur.execute("ROLLBACK")
                assert value(next_k) is None
                assert value(k) == model[k]
                next_k += 1  # never reused: a leaked commit would show up as an extra row
            else:
                cur.execute("SELECT COUNT(*), COALESCE(SUM(v), 0) FROM rb_mixed WHERE client = %s", (client,))
                count, total = cur.fetchone()
                assert (count, int(total)) == (len(model), sum(model.values()))
        # Autocommit must be on again for this client after its explicit transactions.
        cur.execute("SELECT @@autocommit")
        assert cur.fetchone() == (1,)
    finally:
        conn.close()
    return model


def test_200_concurrent_clients_mixed_workload(rb_proxy: Proxy, sandbox) -> None:
    admin_execute(sandbox, "ds_0", "DROP TABLE IF EXISTS rb_mixed",
                  "CREATE TABLE rb_mixed (id BIGINT AUTO_INCREMENT PRIMARY KEY, client INT NOT NULL, "
                  "k INT NOT NULL, v BIGINT NOT NULL, UNIQUE KEY (client, k)) ENGINE=InnoDB",
                  database="demo")
    start = threading.Barrier(CLIENTS)
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = {c: pool.submit(_mixed_workload, rb_proxy, c, start) for c in range(CLIENTS)}
        failures = {}
        expected = {}
        for c, f in futures.items():
            try:
                expected[c] = f.result(timeout=150)
            except Exception as exc:  # noqa: BLE001 - all failures reported together
                failures[c] = exc
    assert not failures, f"{len(failures)} clients failed, e.g. {list(failures.items())[:3]!r}"
    assert rb_proxy.alive()

    want = sorted((c, k, v) for c, model in expected.items() for k, v in model.items())
    assert len(want) > CLIENTS * 5
    # What the backend holds is exactly what the clients committed.
    got = admin_rows(sandbox, "ds_0", "SELECT client, k, v FROM rb_mixed ORDER BY client, k", database="demo")
    assert [tuple(r) for r in got] == want
    # And the proxy reads the same.
    with rb_proxy.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT client, k, v FROM rb_mixed ORDER BY client, k")
        assert [tuple(r) for r in cur.fetchall()] == want
    assert_no_tracebacks(rb_proxy)


# ---------------------------------------------------------------------------------------
# 3. Abrupt disconnects leak nothing; a saturated pool answers 1040 and recovers

POOL_USER = "rb_pool"  # backend user of the small-pool proxy only, so PROCESSLIST counts are its own
POOL_SIZE = 8
BIG_SELECT = "SELECT seq, REPEAT('x', 1000) FROM seq_1_to_20000"  # ~20 MB of rows


def abort(conn: pymysql.Connection) -> None:
    """Drop a PyMySQL connection with a TCP reset: no COM_QUIT, nothing more read."""
    sock = conn._sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn._rfile.close()
    sock.close()
    conn._sock = None  # PyMySQL must not try to say goodbye later


def abort_raw(client: RawClient) -> None:
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def _abrupt_client(proxy: Proxy, kind: str, i: int) -> None:
    tag = f"{kind}-{i}"
    if kind in ("mid-result", "mid-result-in-tx", "mid-statement"):
        c = RawClient(proxy)
        c.login()
        if kind == "mid-result-in-tx":
            c.query("BEGIN")
            c.query(f"INSERT INTO rb_leak (tag) VALUES ('uncommitted-{tag}')")
        if kind == "mid-statement":
            c.send(bytes((COM_QUERY,)) + b"SELECT SLEEP(0.2)")
        else:
            c.send(bytes((COM_QUERY,)) + BIG_SELECT.encode())
            c.sock.recv(1000)  # the result has started to arrive
        abort_raw(c)
        return
    conn = proxy.connect()
    cur = conn.cursor()
    if kind == "in-tx":
        conn.begin()
        cur.execute("INSERT INTO rb_leak (tag) VALUES (%s)", (f"uncommitted-{tag}",))
        abort(conn)
    elif kind == "autocommit-off":
        cur.execute("SET autocommit = 0")
        cur.execute("INSERT INTO rb_leak (tag) VALUES (%s)", (f"uncommitted-{tag}",))
        abort(conn)
    elif kind == "session-state":
        cur.execute("SET @rb_secret = %s", (i,))
        cur.execute("SET SESSION sql_mode = 'ANSI_QUOTES'")
        cur.execute("CREATE TEMPORARY TABLE rb_leak_tmp (x INT)")
        cur.execute("SELECT GET_LOCK(%s, 0)", (f"rb_leak_lock_{i}",))
        assert cur.fetchone() == (1,)
        conn.begin()
        cur.execute("INSERT INTO rb_leak (tag) VALUES (%s)", (f"uncommitted-{tag}",))
        abort(conn)
    elif kind == "quit-in-tx":
        conn.begin()
        cur.execute("INSERT INTO rb_leak (tag) VALUES (%s)", (f"uncommitted-{tag}",))
        conn.close()  # a polite COM_QUIT, but the transaction was never committed
    elif kind == "committed":
        cur.execute("INSERT INTO rb_leak (tag) VALUES (%s)", (f"committed-{tag}",))
        assert cur.rowcount == 1
        abort(conn)
    else:
        raise AssertionError(kind)


ABRUPT_KINDS = ("in-tx", "autocommit-off", "session-state", "quit-in-tx", "committed",
                "mid-result", "mid-result-in-tx", "mid-statement")


def _hold_transaction(proxy: Proxy, gate: threading.Barrier, release: threading.Event,
                      seen: list) -> None:
    """Take one backend connection (a transaction), report its state, hold it until ``release``."""
    with proxy.connect() as conn, conn.cursor() as cur:
        conn.begin()
        cur.execute("SELECT @rb_secret, @@autocommit, @@sql_mode LIKE '%ANSI_QUOTES%', "
                    "CONNECTION_ID()")
        state = cur.fetchone()
        with pytest.raises(pymysql.err.ProgrammingError) as info:
            cur.execute("SELECT COUNT(*) FROM rb_leak_tmp")
        assert info.value.args[0] == 1146
        cur.execute("SELECT IS_FREE_LOCK('rb_leak_lock_0')")
        seen.append((*state, cur.fetchone()[0]))
        gate.wait(30)
        release.wait(30)
        cur.execute("COMMIT")  # commits nothing: any leftover of a dead client would surface now


def test_abrupt_disconnects_leak_nothing_and_pool_saturation(sandbox, sandbox_config: dict,
                                                             tmp_path: Path) -> None:
    admin_execute(sandbox, "ds_0", "SET SESSION sql_log_bin = 0",
                  f"CREATE USER IF NOT EXISTS '{POOL_USER}'@'%' IDENTIFIED BY 'rb-pool-pw'",
                  f"CREATE USER IF NOT EXISTS '{POOL_USER}'@'127.0.0.1' IDENTIFIED BY 'rb-pool-pw'",
                  f"GRANT ALL PRIVILEGES ON *.* TO '{POOL_USER}'@'%'",
                  f"GRANT ALL PRIVILEGES ON *.* TO '{POOL_USER}'@'127.0.0.1'")
    admin_execute(sandbox, "ds_0", "DROP TABLE IF EXISTS rb_leak",
                  "CREATE TABLE rb_leak (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(100) NOT NULL)",
                  database="demo")
    config = dict(sandbox_config)
    config["data_sources"] = {**config["data_sources"], "demo_ds": {
        **data_source(config, "demo_ds"), "user": POOL_USER, "password": "rb-pool-pw",
        "pool": {"max_size": POOL_SIZE, "acquire_timeout_s": 2}}}
    with running_proxy(config, tmp_path) as proxy:
        # Abrupt clients, POOL_SIZE at a time, while a sampler watches the backend.
        samples: list[int] = []
        stop_sampling = threading.Event()

        def sample() -> None:
            # One connection, polled without pause: a connection the server still lists
            # after the pool has replaced it shows up even if it lingers only a millisecond.
            # Not counted: a thread whose client end is already closed, which the server lists
            # as 'Busy' while it tears it down and 'Killed' while it rolls back what a broken
            # connection left open (that happens after the close; the sidecar cannot wait
            # for it).
            watcher = sandbox.admin_connect("ds_0")
            try:
                with watcher.cursor() as cur:
                    while not stop_sampling.is_set():
                        cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s "
                                    "AND COMMAND NOT IN ('Busy', 'Killed')", (POOL_USER,))
                        samples.append(int(cur.fetchone()[0]))
            finally:
                watcher.close()

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        jobs = [(kind, i) for i in range(6) for kind in ABRUPT_KINDS]
        with ThreadPoolExecutor(POOL_SIZE) as pool:
            for f in [pool.submit(_abrupt_client, proxy, kind, i) for kind, i in jobs]:
                f.result(timeout=60)
        stop_sampling.set()
        sampler.join(10)
        assert samples and max(samples) <= POOL_SIZE, samples
        assert proxy.alive()

        # Every backend connection is back in the pool and clean: POOL_SIZE clients can each
        # hold one at once, and none carries a dead client's variables, temporary table,
        # lock, sql_mode, autocommit=0 or transaction.
        gate, release, seen = threading.Barrier(POOL_SIZE + 1), threading.Event(), []
        extra = proxy.connect()  # PyMySQL runs SET NAMES at connect: log in before saturating
        with ThreadPoolExecutor(POOL_SIZE) as pool:
            holders = [pool.submit(_hold_transaction, proxy, gate, release, seen) for _ in range(POOL_SIZE)]
            try:
                gate.wait(30)
            finally:
                if any(f.done() for f in holders):
                    release.set()
                    for f in holders:
                        f.result()
            try:
                assert sorted(s[:3] + s[4:] for s in seen) == [(None, 1, 0, 1)] * POOL_SIZE, seen
                assert len({s[3] for s in seen}) == POOL_SIZE  # eight distinct backend sessions
                assert backend_connections(sandbox, "ds_0", POOL_USER) == POOL_SIZE

                # The pool is saturated: one more client waits acquire_timeout_s, then gets 1040
                # naming the data source.
                with pytest.raises(pymysql.err.OperationalError) as info:
                    extra.cursor().execute("SELECT 1")
                code, message = info.value.args
                assert code == 1040, message
                assert "'demo_ds'" in message and f"all {POOL_SIZE} connections" in message
                # The same session goes on once a connection frees up.
                waiting = ThreadPoolExecutor(1)
                answer = waiting.submit(lambda: extra.cursor().execute("SELECT 7") and None)
            finally:
                release.set()
                for f in holders:
                    f.result(timeout=30)
            answer.result(timeout=30)
            waiting.shutdown()
            with extra.cursor() as cur:
                cur.execute("SELECT 8")
                assert cur.fetchone() == (8,)
            extra.close()

        # Only committed work is there, through the proxy and on the backend itself.
        want = sorted(f"committed-committed-{i}" for i in range(6))
        rows = admin_rows(sandbox, "ds_0", "SELECT tag FROM rb_leak ORDER BY tag", database="demo")
        assert [r[0] for r in rows] == want
        with proxy.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT tag FROM rb_leak ORDER BY tag")
            assert [r[0] for r in cur.fetchall()] == want
        assert backend_connections(sandbox, "ds_0", POOL_USER) <= POOL_SIZE
        assert_healthy(proxy)
        assert_no_tracebacks(proxy)


def proxy_rss_mb(proxy: Proxy) -> float:
    for line in Path(f"/proc/{proxy.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


SLOW_ROWS, SLOW_WIDTH = 16000, 4000  # a 64 MB result


def test_a_slow_reader_holds_back_the_backend_not_the_sidecars_memory(rb_proxy: Proxy) -> None:
    """A client that stops reading a large result: the sidecar stops reading the backend
    once about 1 MiB waits for the client (the relay pauses the backend's transport), so its
    memory stays flat; other sessions are served meanwhile; the result arrives whole when the
    client reads again."""
    c = RawClient(rb_proxy, timeout=60)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    c.login()
    before = proxy_rss_mb(rb_proxy)
    c.send(bytes((COM_QUERY,)) + f"SELECT seq, REPEAT('x', {SLOW_WIDTH}) FROM seq_1_to_{SLOW_ROWS}".encode())
    assert c.read() == b"\x02"  # the column count: the result has started; the client stops reading
    peak = before
    with rb_proxy.connect() as other, other.cursor() as cur:
        for i in range(20):  # about two seconds, in which the backend could send all of it
            cur.execute("SELECT %s", (i,))
            assert cur.fetchone() == (i,)
            peak = max(peak, proxy_rss_mb(rb_proxy))
            time.sleep(0.1)
    assert peak - before < 24, f"RSS grew {peak - before:.0f} MB while a client held back a 64 MB result"
    for _ in range(2):
        c.read()  # column definitions
    assert c.read()[:1] == b"\xfe"
    rows = 0
    while True:
        packet = c.read()
        assert packet is not None, "connection closed before the end of the result"
        if packet[:1] == b"\xfe" and len(packet) < 9:
            break
        assert packet.endswith(b"x" * SLOW_WIDTH)
        rows += 1
    assert rows == SLOW_ROWS
    assert c.query("SELECT 'after'") == [[b"after"]]  # the session goes on
    c.close()
    assert_healthy(rb_proxy)


# ---------------------------------------------------------------------------------------
# 4. Payloads over 16 MiB, both directions, text and binary protocol

BIG = 20 * 1024 * 1024
BIG_PACKET = 64 * 1024 * 1024


def test_payloads_over_16mb_both_ways(sandbox, sandbox_config: dict, tmp_path: Path) -> None:
    original = admin_rows(sandbox, "ds_0", "SELECT @@GLOBAL.max_allowed_packet")[0][0]
    # Before the proxy connects: a session takes max_allowed_packet from the global at login.
    admin_execute(sandbox, "ds_0", f"SET GLOBAL max_allowed_packet = {BIG_PACKET}")
    try:
        admin_execute(sandbox, "ds_0", "DROP TABLE IF EXISTS rb_big",
                      "CREATE TABLE rb_big (id INT PRIMARY KEY, data LONGBLOB NOT NULL)", database="demo")
        rng = random.Random(16)
        blobs = {i: rng.randbytes(BIG + i) for i in (1, 2, 3)}  # every byte value, quotes, NULs, ';'
        with running_proxy(sandbox_config, tmp_path) as proxy:
            # Text protocol: an INSERT statement over 16 MiB, then a row over 16 MiB.
            with proxy.connect(max_allowed_packet=BIG_PACKET) as conn, conn.cursor() as cur:
                cur.execute("INSERT INTO rb_big VALUES (1, %s)", (blobs[1],))
                assert cur.rowcount == 1
                cur.execute("SELECT data, LENGTH(data), SHA2(data, 256) FROM rb_big WHERE id = 1")
                data, length, digest = cur.fetchone()
                assert length == len(blobs[1])
                assert digest == hashlib.sha256(blobs[1]).hexdigest()  # stored intact
                assert data == blobs[1]                                 # read back intact
                cur.execute("SELECT 1")  # the stream is still in step
                assert cur.fetchone() == (1,)

            # Binary protocol, client to server: server-side prepared statements with
            # mysql-connector, one parameter inline in an execute packet over 16 MiB, one
            # streamed with COM_STMT_SEND_LONG_DATA.
            mc = mysql.connector.connect(host=proxy.host, port=proxy.port, user="app", password="app",
                                         database="demo", use_pure=True, autocommit=True)
            try:
                cur = mc.cursor(prepared=True)
                cur.execute("INSERT INTO rb_big VALUES (?, ?)", (2, blobs[2]))
                cur.execute("INSERT INTO rb_big VALUES (?, ?)", (3, io.BytesIO(blobs[3])))
                cur.execute("SELECT id, LENGTH(data) FROM rb_big WHERE id > ? ORDER BY id", (1,))
                assert cur.fetchall() == [(2, len(blobs[2])), (3, len(blobs[3]))]
                cur.close()
            finally:
                mc.close()

            # Binary protocol, server to client: a binary-protocol row over 16 MiB. (Read with
            # the raw client: mysql-connector's pure-Python reader cannot parse such rows even
            # straight from MariaDB.)
            c = RawClient(proxy, timeout=60)
            c.login()
            stmt_id, columns, params = c.prepare("SELECT data, LENGTH(data) FROM rb_big WHERE id = ?")
            assert (columns, params) == (2, 1)
            for i in (1, 2, 3):
                assert c.command(execute_packet(stmt_id, [i])) == b"\x02"
                c.read(), c.read()                 # column definitions
                assert c.read()[:1] == b"\xfe"     # EOF
                row = c.read()
                assert row[:2] == b"\x00\x00"      # binary row, NULL bitmap (2 columns + 2 bits)
                length, pos = lenenc(row, 2)
                assert length == len(blobs[i]) and row[pos:pos + length] == blobs[i]
                assert row[pos + length:] == struct.pack("<i", len(blobs[i]))  # LENGTH(): a LONG
                assert c.read()[:1] == b"\xfe"     # EOF
            assert c.query("SELECT 5") == [[b"5"]]
            c.close()

        # What the backend stored, checked on the backend itself.
        rows = admin_rows(sandbox, "ds_0", "SELECT id, LENGTH(data), SHA2(data, 256) FROM rb_big ORDER BY id",
                          database="demo")
        assert [tuple(r) for r in rows] == [(i, len(b), hashlib.sha256(b).hexdigest()) for i, b in blobs.items()]
    finally:
        admin_execute(sandbox, "ds_0", f"SET GLOBAL max_allowed_packet = {original}",
                      "DROP TABLE IF EXISTS rb_big", database="demo")


# ---------------------------------------------------------------------------------------
# 5. A backend that dies and comes back


def test_backend_dies_and_comes_back(sandbox, sandbox_config: dict, tmp_path: Path) -> None:
    assert sandbox_config["databases"]["other"] == {"data_source": "ds_1"}
    admin_execute(sandbox, "ds_1", "DROP TABLE IF EXISTS rb_other",
                  "CREATE TABLE rb_other (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL)",
                  "INSERT INTO rb_other VALUES (1, 'before')", database="shop_ds_1")
    with running_proxy(sandbox_config, tmp_path) as proxy:
        survivor = proxy.connect(database="other")
        with survivor.cursor() as cur:
            cur.execute("SELECT v FROM rb_other WHERE id = 1")
            assert cur.fetchone() == ("before",)
        in_tx = proxy.connect(database="other")
        in_tx.begin()
        with in_tx.cursor() as cur:
            cur.execute("INSERT INTO rb_other VALUES (2, 'uncommitted')")
        try:
            with BackgroundTraffic(proxy):  # a `demo` (ds_0) client, busy the whole time
                sandbox.stop_instance("ds_1")

                # The session whose transaction lived on ds_1 learns it is lost, then is closed.
                with pytest.raises(pymysql.err.OperationalError) as info:
                    in_tx.cursor().execute("SELECT COUNT(*) FROM rb_other")
                code, message = info.value.args
                assert code == 1430 and "Lost connection to data source 'ds_1'" in message, info.value.args
                with pytest.raises(pymysql.err.OperationalError):
                    in_tx.cursor().execute("SELECT 1")

                # A session without state gets a clear error per statement and lives on.
                for _ in range(3):
                    with pytest.raises(pymysql.err.OperationalError) as info:
                        survivor.cursor().execute("SELECT v FROM rb_other WHERE id = 1")
                    code, message = info.value.args
                    assert code in (1429, 1430) and "'ds_1'" in message, info.value.args
                # Once no pooled connection is left, it is "can't connect" naming the address.
                assert code == 1429 and "Can't connect to data source 'ds_1'" in message, message
                # New sessions: PyMySQL's SET NAMES at connect already needs the backend.
                with pytest.raises(pymysql.err.OperationalError) as info:
                    proxy.connect(database="other")
                assert info.value.args[0] == 1429 and "'ds_1'" in info.value.args[1]
                # ds_0 is unaffected, on existing and new sessions.
                assert_healthy(proxy)
        finally:
            sandbox.start_instance("ds_1")

        # ds_1 is back: the surviving session and new ones work again, at the first try.
        with survivor.cursor() as cur:
            cur.execute("SELECT id, v FROM rb_other ORDER BY id")
            assert cur.fetchall() == ((1, "before"),)  # the lost transaction never committed
        survivor.close()
        with proxy.connect(database="other") as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO rb_other VALUES (3, 'after')")
            cur.execute("SELECT id, v FROM rb_other ORDER BY id")
            assert cur.fetchall() == ((1, "before"), (3, "after"))
        assert_healthy(proxy)
        assert_no_tracebacks(proxy)
    sandbox.sync_replicas()  # leave the replica of ds_1 caught up for the tests that follow


def test_pooled_connection_closed_by_server_is_not_handed_out(rb_proxy: Proxy, sandbox) -> None:
    """A backend connection the server closed while it sat idle in the pool (a restart,
    wait_timeout, KILL) must not cost a stateless client a 'Lost connection' error."""
    with rb_proxy.connect() as conn, conn.cursor() as cur:
        for _ in range(3):
            cur.execute("SELECT CONNECTION_ID()")  # the backend session the pool lent us
            backend_id = cur.fetchone()[0]
            admin_execute(sandbox, "ds_0", f"KILL CONNECTION {backend_id}")
            wait_until(lambda gone=backend_id: not admin_rows(
                sandbox, "ds_0", "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", (gone,)),
                what=f"backend session {backend_id} to go")
            cur.execute("SELECT CONNECTION_ID(), 6 * 7")
            new_id, answer = cur.fetchone()
            assert answer == 42 and new_id != backend_id
    assert_no_tracebacks(rb_proxy)


def test_backend_lost_mid_result_closes_the_client_connection(rb_proxy: Proxy, sandbox) -> None:
    """A backend that dies after part of its result reached the client: no packet can follow
    the cut one well-formed (an ERR would land mid-row with the wrong sequence id), so the
    proxy closes the client's connection and its driver reports a lost connection."""
    c = RawClient(rb_proxy)
    c.login()
    # ~100 MB of rows; the client reads nothing yet, so the relay stalls with buffers full.
    c.send(bytes((COM_QUERY,)) + b"SELECT seq, REPEAT('x', 100000) AS rb_cut FROM seq_1_to_1000")
    sql = "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE %s AND ID <> CONNECTION_ID()"
    found = wait_until(lambda: admin_rows(sandbox, "ds_0", sql, ("%AS rb_cut FROM%",)),
                       what="the big SELECT to run on ds_0")
    admin_execute(sandbox, "ds_0", f"KILL CONNECTION {found[0][0]}")
    first = c.read()
    assert first == b"\x02", first  # two columns: the result had started
    packets = 0
    while c.read() is not None:  # a timeout here: the proxy wrote an ERR mid-result
        packets += 1
    assert packets < 1000 + 3, "the whole result arrived: the backend was not cut mid-result"
    c.close()
    wait_until(lambda: "failed mid-statement" in rb_proxy.log(), what="the proxy to log the lost backend")
    assert_healthy(rb_proxy)
    assert_no_tracebacks(rb_proxy)


def test_unreachable_data_source_is_a_clear_error_in_every_client(tmp_path: Path) -> None:
    """A data source nobody listens on: every client shows the proxy's own message. The code
    is a server code (1429), never a client-library one (2003): libmariadb, and so the
    mariadb CLI, reports an ERR carrying a client-only code as 'Received malformed packet'."""
    config = {
        "users": [{"name": "app", "password": "app", "databases": ["*"]}],
        "data_sources": {"ds_gone": {"host": "127.0.0.1", "port": free_port(), "user": "nobody",
                                     "password": "x", "database": "demo"}},
        "databases": {"demo": {"data_source": "ds_gone"}},
    }
    expected = "Can't connect to data source 'ds_gone'"
    with running_proxy(config, tmp_path) as proxy:
        cli = subprocess.run(
            ["mariadb", "--no-defaults", "--protocol=TCP", "-h", proxy.host, "-P", str(proxy.port),
             "-uapp", "-papp", "demo", "-e", "SELECT 1"],
            capture_output=True, text=True, timeout=60)
        assert cli.returncode != 0
        assert "ERROR 1429 (08S01)" in cli.stderr and expected in cli.stderr, cli.stderr
        assert "malformed" not in cli.stderr.lower(), cli.stderr

        # PyMySQL: its SET NAMES at connect already needs the data source.
        with pytest.raises(pymysql.err.OperationalError) as info:
            proxy.connect()
        assert info.value.args[0] == 1429 and expected in info.value.args[1], info.value.args

        # Connector/Python (its session setup at connect needs the data source too) classifies
        # by SQLSTATE: class 08 is its OperationalError.
        with pytest.raises(mysql.connector.errors.OperationalError) as info:
            mysql.connector.connect(host=proxy.host, port=proxy.port, user="app", password="app",
                                    database="demo", use_pure=True)
        assert info.value.errno == 1429 and info.value.sqlstate == "08S01" and expected in info.value.msg

        # On the wire: the ERR answers the command as its first packet (sequence id 1), and
        # the session lives on for what the proxy answers itself.
        c = RawClient(proxy)
        c.login()
        err = c.expect_error(bytes((COM_QUERY,)) + b"SELECT 1")
        assert (err.code, err.sqlstate, c.seq) == (1429, "08S01", 1) and expected in err.message
        assert c.query("SHOW DATABASES") == [[b"demo"]]
        c.close()
        assert proxy.alive()
        assert_no_tracebacks(proxy)


def test_err_packet_never_carries_a_client_library_code() -> None:
    for code in (2003, 2013, 2027, 5001):
        err = parse_err(err_packet(code, "08S01", "data source 'ds_0' is gone"))
        assert (err.code, err.sqlstate, err.message) == (1105, "08S01", "data source 'ds_0' is gone")
    assert parse_err(err_packet(1429, "08S01", "x")).code == 1429


# ---------------------------------------------------------------------------------------
# 6. TLS towards clients


def test_tls_clients(sandbox_config: dict, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    config = {**sandbox_config, "listen": {"tls": {"cert": str(cert), "key": str(key)}}}
    with running_proxy(config, tmp_path) as proxy:
        # Verified against the certificate (host name 127.0.0.1 is in its subjectAltName).
        for ssl_options in ({"ca": str(cert)}, {"check_hostname": False, "verify_mode": ssl.CERT_NONE}):
            with proxy.connect(ssl=ssl_options) as conn, conn.cursor() as cur:
                sock = conn._sock
                assert isinstance(sock, ssl.SSLSocket), type(sock)
                assert sock.version() in ("TLSv1.2", "TLSv1.3") and sock.cipher() is not None
                cur.execute("SELECT 6 * 7, 'é😀'")
                assert cur.fetchone() == (42, "é😀")
                # A result much larger than one TLS record.
                cur.execute("SELECT REPEAT('z', 3000000)")
                assert cur.fetchone() == ("z" * 3000000,)

        # The mariadb command-line client, verifying the server certificate.
        result = subprocess.run(
            ["mariadb", "--no-defaults", "-h", proxy.host, "-P", str(proxy.port), "-u", "app", "-papp",
             "--ssl", f"--ssl-ca={cert}", "--ssl-verify-server-cert", "demo",
             "-e", "status; SELECT CONCAT('answer=', 6 * 7)"],
            capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert "Cipher in use is" in result.stdout, result.stdout
        assert "answer=42" in result.stdout

        # Without a trusted CA the client refuses the self-signed certificate.
        result = subprocess.run(
            ["mariadb", "--no-defaults", "-h", proxy.host, "-P", str(proxy.port), "-u", "app", "-papp",
             "--ssl", "--ssl-verify-server-cert", "demo", "-e", "SELECT 1"],
            capture_output=True, text=True, timeout=30)
        assert result.returncode != 0 and "certificate" in result.stderr.lower(), result.stderr

        # Plain-text clients are still served (TLS is offered, not required). PyMySQL without
        # ssl options upgrades whenever the server offers it ("preferred").
        with proxy.connect() as conn:
            assert isinstance(conn._sock, ssl.SSLSocket)
        with proxy.connect(ssl_disabled=True) as conn, conn.cursor() as cur:
            assert not isinstance(conn._sock, ssl.SSLSocket)
            cur.execute("SELECT 6 * 7")
            assert cur.fetchone() == (42,)
        assert_healthy(proxy)

        # SSL request and ClientHello in one TCP segment (the mariadb CLI does this at times).
        for _ in range(5):
            c = tls_client_sending_hello_early(proxy, cert)
            c.login(seq=2)
            assert c.query("SELECT 6 * 7") == [[b"42"]]
            c.close()

        # An SSL request followed by bytes that are no TLS handshake: a clean disconnect.
        c = RawClient(proxy)
        c.send(struct.pack("<IIB", RAW_CLIENT_CAPS | CLIENT_SSL, 1 << 24, 45) + bytes(23), seq=1)
        c.send_raw(b"\x16\x03\x01\x00\x05 this is no ClientHello" * 4)
        assert c.closed_by_server()
        assert_healthy(proxy)
