"""The floor of any Python proxy: a 1:1 TCP relay on uvloop that looks at nothing.

Each client connection gets its own backend connection; bytes are copied from one
protocol's ``data_received`` to the other transport, with write-side flow control. No
MySQL parsing, no pooling. What it costs per statement is what Python and uvloop cost
before a proxy does any work of its own.

    python benchmarks/harness/python_relay.py LISTEN_PORT BACKEND_HOST BACKEND_PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class _Half(asyncio.Protocol):
    """One side of a relayed connection; ``peer`` is the other side's transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # bytes that came before the peer was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.pending.append(data)
        else:
            self.peer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()

    def attach(self, peer: asyncio.Transport) -> None:
        self.peer = peer
        for data in self.pending:
            peer.write(data)
        self.pending.clear()


async def main(listen_port: int, backend_host: str, backend_port: int) -> None:
    loop = asyncio.get_running_loop()

    def client_side() -> _Half:
        client = _Half()

        async def connect() -> None:
            try:
                backend_transport, backend = await loop.create_connection(_Half, backend_host, backend_port)
            except OSError:
                client.transport.close()
                return
            backend.attach(client.transport)
            client.attach(backend_transport)

        loop.create_task(connect())
        return client

    server = await loop.create_server(client_side, "127.0.0.1", listen_port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
