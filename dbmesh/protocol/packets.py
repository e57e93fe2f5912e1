"""Encoding and decoding of MySQL protocol payloads, and packet framing over asyncio streams.

A *payload* is the bytes of one logical packet (without the 4-byte header). Framing splits
payloads of 16 MiB - 1 bytes or more into several wire packets and joins them back.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .closed import ConnectionClosed
from .constants import (
    COLLATION_BINARY,
    COLLATION_UTF8MB4_GENERAL_CI,
    EOF_HEADER,
    ERR_HEADER,
    MAX_PACKET,
    OK_HEADER,
    FieldFlag,
    FieldType,
    ServerStatus,
)

_u16 = struct.Struct("<H")
_u32 = struct.Struct("<I")
_u64 = struct.Struct("<Q")


class MalformedPacket(ValueError):
    """A payload that does not decode as the protocol says it must."""


# ---------------------------------------------------------------------------------------
# Length-encoded integers and strings


def lenenc_int(value: int) -> bytes:
    if value < 251:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + _u16.pack(value)
    if value < 1 << 24:
        return b"\xfd" + _u32.pack(value)[:3]
    return b"\xfe" + _u64.pack(value)


def lenenc_str(value: bytes) -> bytes:
    return lenenc_int(len(value)) + value


def read_lenenc_int(buf: bytes | memoryview, pos: int) -> tuple[int | None, int]:
    """Return (value, new position); value None stands for the NULL marker 0xFB."""
    try:
        first = buf[pos]
        if first < 0xFB:
            return first, pos + 1
        if first == 0xFB:
            return None, pos + 1
        if first == 0xFC:
            return buf[pos + 1] | buf[pos + 2] << 8, pos + 3
        if first == 0xFD:
            return buf[pos + 1] | buf[pos + 2] << 8 | buf[pos + 3] << 16, pos + 4
        if first == 0xFE:
            if pos + 9 > len(buf):
                raise MalformedPacket("truncated length-encoded integer")
            return _u64.unpack_from(buf, pos + 1)[0], pos + 9
    except IndexError as exc:
        raise MalformedPacket("truncated length-encoded integer") from exc
    raise MalformedPacket(f"invalid length-encoded integer prefix 0x{first:02x}")


def read_lenenc_str(buf: bytes | memoryview, pos: int) -> tuple[bytes | None, int]:
    length, pos = read_lenenc_int(buf, pos)
    if length is None:
        return None, pos
    end = pos + length
    if end > len(buf):
        raise MalformedPacket("truncated length-encoded string")
    return bytes(buf[pos:end]), end


def read_nul_str(buf: bytes | memoryview, pos: int) -> tuple[bytes, int]:
    end = bytes(buf[pos:]).find(b"\x00")
    if end < 0:
        raise MalformedPacket("missing NUL terminator")
    return bytes(buf[pos:pos + end]), pos + end + 1


# ---------------------------------------------------------------------------------------
# Generic response packets


def ok_packet(affected_rows: int = 0, last_insert_id: int = 0, status: int = ServerStatus.AUTOCOMMIT,
              warnings: int = 0, info: bytes = b"", eof_header: bool = False) -> bytes:
    """An OK packet; with ``eof_header`` it is the OK that ends a result set under DEPRECATE_EOF."""
    header = bytes((EOF_HEADER if eof_header else OK_HEADER,))
    body = lenenc_int(affected_rows) + lenenc_int(last_insert_id) + _u16.pack(status) + _u16.pack(warnings)
    return header + body + info


def eof_packet(status: int = ServerStatus.AUTOCOMMIT, warnings: int = 0) -> bytes:
    return bytes((EOF_HEADER,)) + _u16.pack(warnings) + _u16.pack(status)


_ER_UNKNOWN_ERROR: Final = 1105


def client_only_code(code: int) -> bool:
    """Codes only a client library assigns (CR_* 2000-2999, Connector/C CER_* 5000-5999).
    libmariadb 3.3.9+ (CONC-648) takes a server ERR carrying one for a forged packet and
    reports "Received malformed packet" instead of the message."""
    return 2000 <= code < 3000 or 5000 <= code < 6000


def err_packet(code: int, sqlstate: str, message: str) -> bytes:
    if client_only_code(code):
        code = _ER_UNKNOWN_ERROR  # the message still says what went wrong
    return (bytes((ERR_HEADER,)) + _u16.pack(code) + b"#" + sqlstate.encode("ascii")[:5].ljust(5, b"0")
            + message.encode("utf-8", "replace"))


@dataclass(slots=True)
class OkInfo:
    affected_rows: int
    last_insert_id: int
    status: int
    warnings: int


def parse_ok(payload: bytes | memoryview) -> OkInfo:
    """Parse an OK packet (header 0x00, or 0xFE when it ends a result set)."""
    affected, pos = read_lenenc_int(payload, 1)
    insert_id, pos = read_lenenc_int(payload, pos)
    if pos + 4 > len(payload):
        raise MalformedPacket("truncated OK packet")
    status, warnings = struct.unpack_from("<HH", payload, pos)
    return OkInfo(affected or 0, insert_id or 0, status, warnings)


def parse_eof(payload: bytes | memoryview) -> tuple[int, int]:
    """Return (warnings, status) of a classic EOF packet."""
    if len(payload) < 5:
        return 0, 0
    return payload[1] | payload[2] << 8, payload[3] | payload[4] << 8


@dataclass(slots=True)
class ErrInfo:
    code: int
    sqlstate: str
    message: str


def parse_err(payload: bytes | memoryview) -> ErrInfo:
    if len(payload) < 3:
        raise MalformedPacket("truncated ERR packet")
    code = _u16.unpack_from(payload, 1)[0]
    rest = bytes(payload[3:])
    sqlstate = "HY000"
    if rest[:1] == b"#":
        sqlstate, rest = rest[1:6].decode("ascii", "replace"), rest[6:]
    return ErrInfo(code, sqlstate, rest.decode("utf-8", "replace"))


# ---------------------------------------------------------------------------------------
# Result sets built by the sidecar itself (SHOW DATABASES, PREVIEW, admin answers)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: int = FieldType.VAR_STRING
    length: int = 1024
    flags: int = 0
    decimals: int = 0
    charset: int = COLLATION_UTF8MB4_GENERAL_CI
    table: str = ""
    org_table: str = ""
    schema: str = ""
    org_name: str = ""


def column_definition(col: Column) -> bytes:
    charset = col.charset
    if col.type not in _STRING_TYPES:
        charset = COLLATION_BINARY
    return b"".join((
        lenenc_str(b"def"),
        lenenc_str(col.schema.encode()),
        lenenc_str(col.table.encode()),
        lenenc_str(col.org_table.encode()),
        lenenc_str(col.name.encode()),
        lenenc_str((col.org_name or "").encode()),
        b"\x0c",
        _u16.pack(charset),
        _u32.pack(col.length),
        bytes((col.type,)),
        _u16.pack(col.flags),
        bytes((col.decimals,)),
        b"\x00\x00",
    ))


_STRING_TYPES = {FieldType.VARCHAR, FieldType.VAR_STRING, FieldType.STRING, FieldType.BLOB,
                 FieldType.TINY_BLOB, FieldType.MEDIUM_BLOB, FieldType.LONG_BLOB, FieldType.ENUM,
                 FieldType.SET, FieldType.JSON}


def text_value(value: object) -> bytes:
    """Encode one value of a text-protocol row."""
    if value is None:
        return b"\xfb"
    if isinstance(value, bytes):
        return lenenc_str(value)
    if isinstance(value, bool):
        value = int(value)
    return lenenc_str(str(value).encode("utf-8"))


def text_row(values: Iterable[object]) -> bytes:
    return b"".join(text_value(v) for v in values)


@dataclass(slots=True)
class Field:
    """A decoded column definition of a backend result set."""
    schema: str
    table: str
    org_table: str
    name: str
    org_name: str
    charset: int
    length: int
    type: int
    flags: int
    decimals: int

    @property
    def unsigned(self) -> bool:
        return bool(self.flags & FieldFlag.UNSIGNED)


def parse_column_definition(payload: bytes | memoryview) -> Field:
    pos = 0
    parts = []
    for _ in range(6):
        value, pos = read_lenenc_str(payload, pos)
        parts.append((value or b"").decode("utf-8", "replace"))
    _, pos = read_lenenc_int(payload, pos)  # length of fixed fields (0x0c)
    if pos + 10 > len(payload):
        raise MalformedPacket("truncated column definition")
    charset, length, ftype, flags, decimals = struct.unpack_from("<HIBHB", payload, pos)
    return Field(parts[1], parts[2], parts[3], parts[4], parts[5], charset, length, ftype, flags, decimals)


def parse_text_row(payload: bytes | memoryview, count: int) -> list[bytes | None]:
    values: list[bytes | None] = []
    pos = 0
    for _ in range(count):
        value, pos = read_lenenc_str(payload, pos)
        values.append(value)
    return values


def result_set_payloads(columns: Sequence[Column], rows: Iterable[Sequence[object]],
                        deprecate_eof: bool, status: int) -> list[bytes]:
    """All payloads of a complete text result set, in order."""
    out = [lenenc_int(len(columns))]
    out.extend(column_definition(c) for c in columns)
    if not deprecate_eof:
        out.append(eof_packet(status))
    out.extend(text_row(r) for r in rows)
    out.append(ok_packet(status=status, eof_header=True) if deprecate_eof else eof_packet(status))
    return out


# ---------------------------------------------------------------------------------------
# Framing over asyncio streams


def frame(payload: bytes | memoryview, seq: int) -> tuple[bytes, int]:
    """Wire bytes for one payload starting at sequence ``seq``; returns (bytes, next seq)."""
    length = len(payload)
    if length < MAX_PACKET:
        return _u32.pack(length | (seq & 0xFF) << 24) + payload, seq + 1
    parts = []
    pos = 0
    while True:
        chunk = payload[pos:pos + MAX_PACKET]
        parts.append(_u32.pack(len(chunk) | (seq & 0xFF) << 24))
        parts.append(bytes(chunk))
        seq += 1
        pos += MAX_PACKET
        if len(chunk) < MAX_PACKET:
            break
    return b"".join(parts), seq


# asyncio.StreamReader has no public look at its buffer or its end, nor StreamReaderProtocol
# at its close error: these functions are the only places that read their private fields.

def stream_quiet(reader: asyncio.StreamReader) -> bool:
    """No unread bytes, no end and no error in ``reader``."""
    stream: Any = reader
    return not stream._buffer and not stream._eof and stream._exception is None


class TransportSink:
    """A client's transport as a relay sink: a StreamWriter without its interpreted
    ``transport`` property (read once per relay otherwise)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.write: Callable[[bytes | memoryview], object] = transport.write


def sink_parts(sink: Any) -> tuple[Any, Callable[[bytes | memoryview], object]]:
    """The transport behind ``sink`` (for its state) and what writes to it: for an asyncio
    StreamWriter its transport's write() (the writer's own only forwards to it: one
    interpreted call less per chunk), for a stand-in (mirror.Tee, coldefs.RenamingSink) its
    own write() (and a TransportSink its transport's). (StreamWriter.transport is an
    interpreted property: read it once.)"""
    transport = sink.transport
    return transport, (transport.write if type(sink) is asyncio.StreamWriter else sink.write)


def forget_close_error(protocol: asyncio.StreamReaderProtocol) -> None:
    """Mark the error a StreamReaderProtocol keeps for StreamWriter.wait_closed() as seen,
    from connection_lost(). The protocol's __del__ does that, but not for a subclass compiled
    with mypyc (dbmesh/native.py), and asyncio would log it as never retrieved."""
    closed: Any = getattr(protocol, "_closed", None)
    if closed is not None and closed.done() and not closed.cancelled():
        closed.exception()


def take_unread(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """The bytes ``reader`` holds unread (taken out of it), and whether it saw the end."""
    stream: Any = reader
    unread = bytes(stream._buffer)
    stream._buffer.clear()
    return unread, bool(stream._eof)


class PacketProtocol(asyncio.StreamReaderProtocol):
    """A StreamReaderProtocol that hands a chunk holding exactly one whole packet straight to
    a PacketReader waiting for it (the usual client command), without the StreamReader's
    buffer and readexactly() coroutines. Anything else goes through the stream as before.

    With a ``fast_lane`` (the session's), such a packet is first offered to it: a command it
    takes is served from callbacks while the command loop stays asleep on its read, and
    until it calls ``command_done()`` the bytes the client sends meanwhile wait here, so
    commands never overlap."""

    waiter: asyncio.Future | None = None
    fast_lane: Callable[[bytes], bool] | None = None
    busy = False  # a fast-lane command is in flight
    backlog: bytearray | None = None
    _on_writable: Callable[[], None] | None = None

    def data_received(self, data: bytes) -> None:
        if self.busy:
            if self.backlog is None:
                self.backlog = bytearray(data)
            else:
                self.backlog += data
            return
        waiter = self.waiter
        if waiter is None:
            super().data_received(data)
            return
        size = len(data)
        if size >= 4 and size - 4 == (data[0] | data[1] << 8 | data[2] << 16) < MAX_PACKET:
            fast_lane = self.fast_lane
            if fast_lane is not None and fast_lane(data):
                return
            self.waiter = None
            if not waiter.done():
                waiter.set_result(data)
                return
        self.waiter = None
        super().data_received(data)
        if not waiter.done():
            waiter.set_result(None)  # read it from the stream

    def command_done(self, retry: bytes | None = None) -> None:
        """The fast-lane command is answered: go on with what the client sent meanwhile.
        ``retry``: the command's packet, for the command loop to serve after all."""
        self.busy = False
        if retry is not None:
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(retry)
        backlog = self.backlog
        if backlog is not None:
            self.backlog = None
            self.data_received(bytes(backlog))

    @property
    def paused_for_client(self) -> bool:
        """The transport told us to stop writing (its buffer is above the high-water mark)."""
        return self._paused  # type: ignore[attr-defined]  # FlowControlMixin's, no public look

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the transport takes bytes again or the connection ends."""
        self._on_writable = callback

    def resume_writing(self) -> None:
        super().resume_writing()
        self._writable()

    def eof_received(self) -> bool | None:
        keep_open = super().eof_received()
        self._wake()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        forget_close_error(self)
        self._wake()
        self._writable()

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _writable(self) -> None:
        callback, self._on_writable = self._on_writable, None
        if callback is not None:
            callback()


class PacketReader:
    """Reads whole payloads (joining split packets) from a StreamReader; with ``protocol``
    (the PacketProtocol feeding that reader) a lone whole packet skips the stream."""

    __slots__ = ("reader", "seq", "protocol")

    def __init__(self, reader: asyncio.StreamReader, protocol: PacketProtocol | None = None):
        self.reader = reader
        self.seq = 0  # sequence id of the last packet read
        self.protocol = protocol

    async def read(self) -> bytes:
        protocol = self.protocol
        if protocol is not None:
            reader = self.reader
            if stream_quiet(reader):
                waiter = protocol.waiter = asyncio.get_running_loop().create_future()
                try:
                    data = await waiter
                finally:
                    protocol.waiter = None
                if data is not None:
                    self.seq = data[3]
                    return data[4:]
        try:
            header = await self.reader.readexactly(4)
            length = header[0] | header[1] << 8 | header[2] << 16
            self.seq = header[3]
            payload = await self.reader.readexactly(length) if length else b""
            if length < MAX_PACKET:
                return payload
            parts = [payload]
            while length == MAX_PACKET:
                header = await self.reader.readexactly(4)
                length = header[0] | header[1] << 8 | header[2] << 16
                self.seq = header[3]
                parts.append(await self.reader.readexactly(length) if length else b"")
            return b"".join(parts)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            raise ConnectionClosed(str(exc) or "connection closed") from exc
