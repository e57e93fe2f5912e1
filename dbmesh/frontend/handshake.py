"""The server side of the connection phase: greeting, optional TLS, login."""

from __future__ import annotations

import asyncio
import ssl
import struct
from dataclasses import dataclass, field

from ..protocol.auth import CACHING_SHA2_PLUGIN, NATIVE_PLUGIN
from ..protocol.charsets import DEFAULT_COLLATION_ID
from ..protocol.constants import Capability, ServerStatus
from ..protocol.packets import MalformedPacket, read_lenenc_int, read_lenenc_str, read_nul_str

SSL_REQUEST_LENGTH = 32


def greeting(server_version: str, connection_id: int, scramble: bytes, capabilities: int) -> bytes:
    """Initial handshake packet, protocol v10."""
    return b"".join((
        b"\x0a",
        server_version.encode() + b"\x00",
        struct.pack("<I", connection_id & 0xFFFFFFFF),
        scramble[:8],
        b"\x00",
        struct.pack("<H", capabilities & 0xFFFF),
        bytes((DEFAULT_COLLATION_ID,)),
        struct.pack("<H", ServerStatus.AUTOCOMMIT),
        struct.pack("<H", capabilities >> 16 & 0xFFFF),
        bytes((21,)),
        bytes(10),
        scramble[8:20] + b"\x00",
        NATIVE_PLUGIN.encode() + b"\x00",
    ))


def auth_switch_request(plugin: str, scramble: bytes) -> bytes:
    return b"\xfe" + plugin.encode() + b"\x00" + scramble + b"\x00"


@dataclass
class HandshakeResponse:
    capabilities: int
    collation: int
    user: str
    auth_response: bytes
    database: str | None
    plugin: str
    attributes: dict[str, str] = field(default_factory=dict)


def parse_ssl_request(payload: bytes) -> int:
    if len(payload) < 4:
        raise MalformedPacket("handshake response shorter than 4 bytes")
    return struct.unpack_from("<I", payload)[0]


def parse_handshake_response(payload: bytes) -> HandshakeResponse:
    if len(payload) < 32:
        raise MalformedPacket(f"handshake response of {len(payload)} bytes; at least 32 expected")
    caps, _max_packet, collation = struct.unpack_from("<IIB", payload)
    if not caps & Capability.PROTOCOL_41:
        raise MalformedPacket("client does not speak protocol 4.1")
    pos = 32
    user, pos = read_nul_str(payload, pos)
    if caps & Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth, pos = read_lenenc_str(payload, pos)
        auth = auth or b""
    elif caps & Capability.SECURE_CONNECTION:
        if pos >= len(payload):
            raise MalformedPacket("missing auth response length")
        length = payload[pos]
        auth = payload[pos + 1:pos + 1 + length]
        if len(auth) != length:
            raise MalformedPacket("truncated auth response")
        pos += 1 + length
    else:
        auth, pos = read_nul_str(payload, pos)
    database = None
    if caps & Capability.CONNECT_WITH_DB and pos < len(payload):
        db, pos = read_nul_str(payload, pos)
        database = db.decode("utf-8", "replace") or None
    plugin = NATIVE_PLUGIN
    if caps & Capability.PLUGIN_AUTH and pos < len(payload):
        end = payload.find(b"\x00", pos)
        end = len(payload) if end < 0 else end
        plugin = payload[pos:end].decode("ascii", "replace") or NATIVE_PLUGIN
        pos = end + 1
    attributes = {}
    if caps & Capability.CONNECT_ATTRS and pos < len(payload):
        attributes = _parse_attributes(payload, pos)
    return HandshakeResponse(caps, collation, user.decode("utf-8", "replace"), bytes(auth), database,
                             plugin, attributes)


def _parse_attributes(payload: bytes, pos: int) -> dict[str, str]:
    total, pos = read_lenenc_int(payload, pos)
    end = min(len(payload), pos + (total or 0))
    attrs: dict[str, str] = {}
    while pos < end:
        key, pos = read_lenenc_str(payload, pos)
        value, pos = read_lenenc_str(payload, pos)
        attrs[(key or b"").decode("utf-8", "replace")] = (value or b"").decode("utf-8", "replace")
    return attrs


def supported_plugin(plugin: str) -> bool:
    return plugin in (NATIVE_PLUGIN, CACHING_SHA2_PLUGIN)


async def start_tls(writer: asyncio.StreamWriter, context: ssl.SSLContext,
                    reader: asyncio.StreamReader | None = None) -> None:
    """Upgrade to TLS.

    Clients send their ClientHello right behind the SSL request without waiting, so the
    plain-text ``reader`` may already hold the first TLS bytes (both in one TCP read). Hand
    them to the TLS layer, or the handshake waits for bytes already read until it times out.
    """
    pending = b""
    if reader is not None and reader._buffer:  # StreamReader has no public API for this
        pending = bytes(reader._buffer)
        reader._buffer.clear()
    if not pending:
        await writer.start_tls(context)
        return
    transport = writer.transport
    plain_protocol = transport.get_protocol()
    upgrade = asyncio.ensure_future(writer.start_tls(context))
    try:
        # loop.start_tls swaps in its TLS protocol, then awaits the handshake.
        while transport.get_protocol() is plain_protocol and not upgrade.done():
            await asyncio.sleep(0)
        if not upgrade.done():
            tls_protocol = transport.get_protocol()
            view = memoryview(pending)
            while view:
                buffer = tls_protocol.get_buffer(len(view))
                n = min(len(buffer), len(view))
                buffer[:n] = view[:n]
                tls_protocol.buffer_updated(n)
                view = view[n:]
        await upgrade
    except BaseException:
        upgrade.cancel()
        raise
