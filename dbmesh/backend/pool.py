"""Pooled backend connections per data source endpoint.

Connections are keyed by the result-shaping capabilities the client negotiated (so raw
relay stays byte-compatible); all keys share one size limit per endpoint. A connection idle
longer than ``check_after_idle_s`` is pinged before it is handed out, and idle ones are closed
after ``idle_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from ..config import PoolConfig
from ..errors import ER_CON_COUNT_ERROR, ProxyError, backend_unavailable
from ..protocol.constants import RESULT_SHAPING_CAPABILITIES, Command
from .connection import BackendConnection, BackendError

log = logging.getLogger("dbmesh.pool")


@dataclass(frozen=True)
class Endpoint:
    """Where and how to log in: one server (primary or replica) of a data source."""
    data_source: str
    host: str
    port: int
    user: str
    password: str
    database: str
    role: str = "primary"   # or the replica's name

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _position(idle: list[BackendConnection], conn: BackendConnection) -> int:
    """Where ``conn`` is in ``idle``, else -1 (the last one). Searched by identity from the
    end, where a connection given back recently is (``in`` and ``remove()`` would compare
    each from the start with ==)."""
    i = len(idle) - 1
    while i >= 0:
        if idle[i] is conn:
            return i
        i -= 1
    return -1


class Pool:
    def __init__(self, endpoint: Endpoint, config: PoolConfig):
        self.endpoint = endpoint
        self.config = config
        self._idle: dict[int, list[BackendConnection]] = {}
        self._size = 0            # open connections, idle or lent
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._retiring: set[asyncio.Task[None]] = set()  # discarded, the server not done with them yet
        self._closed = False
        self.created = 0          # figures for metrics and tests
        self.discarded = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    @property
    def lent(self) -> int:
        return self._size - self.idle_count

    def acquire_idle(self, caps_key: int, prefer: BackendConnection | None = None) -> BackendConnection | None:
        """An idle connection that needs no liveness check, without the coroutine of
        acquire() (the per-statement path); None means: call acquire()."""
        idle = self._idle.get(caps_key & RESULT_SHAPING_CAPABILITIES)
        if not idle:
            return None
        at = _position(idle, prefer) if prefer is not None else -1
        conn = idle[at]
        if conn.closed_while_idle() or time.monotonic() - conn.last_used > self.config.check_after_idle_s:
            return None  # acquire() discards or pings it
        del idle[at]
        return conn

    async def acquire(self, caps_key: int, prefer: BackendConnection | None = None) -> BackendConnection:
        deadline = time.monotonic() + self.config.acquire_timeout_s
        while True:
            conn = self._take_idle(caps_key, prefer)
            if conn is not None:
                if conn.closed_while_idle():  # e.g. the server restarted: no error for the client
                    self._discard(conn, dead=True)
                    continue
                if time.monotonic() - conn.last_used > self.config.check_after_idle_s:
                    if not await self._alive(conn):
                        self._discard(conn, dead=True)
                        continue
                return conn
            if self._size < self.config.max_size:
                return await self._open(caps_key)
            self._close_idle_of_other_key(caps_key)  # its slot frees once the server let go of it
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                raise ProxyError(ER_CON_COUNT_ERROR, "08004",
                                 f"Too many connections: all {self.config.max_size} connections to data "
                                 f"source '{self.endpoint.data_source}' ({self.endpoint.address}) are busy; "
                                 "raise its pool.max_size or reduce concurrency")
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def release(self, conn: BackendConnection) -> None:
        """Give a connection back; a broken one, or one still inside a transaction, is closed."""
        if conn.broken or conn.in_transaction or self._closed:
            self._discard(conn)
            return
        conn.last_used = time.monotonic()
        idle = self._idle.get(conn.pool_key)
        if idle is None:
            idle = self._idle[conn.pool_key] = []
        idle.append(conn)
        if self._waiters:
            self._wake()

    def _discard(self, conn: BackendConnection, dead: bool = False) -> None:
        """Close a connection. Its slot stays taken until the server has let go of it too
        (BackendConnection.retire), so the server never holds more than max_size of this
        pool's connections; a connection known to be dead frees its slot at once."""
        self.discarded += 1
        if dead or self._closed:
            conn.close()
            self._free_slot()
            return
        task = asyncio.get_running_loop().create_task(self._retire(conn))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, conn: BackendConnection) -> None:
        try:
            await conn.retire(self.config.connect_timeout_s)
        finally:
            self._free_slot()

    def _free_slot(self) -> None:
        self._size -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _take_idle(self, caps_key: int, prefer: BackendConnection | None) -> BackendConnection | None:
        idle = self._idle.get(caps_key & RESULT_SHAPING_CAPABILITIES)
        if not idle:
            return None
        # Else the most recently used: warm, and lets the others age out.
        return idle.pop(_position(idle, prefer) if prefer is not None else -1)

    def _close_idle_of_other_key(self, caps_key: int) -> None:
        for key, idle in self._idle.items():
            if key != caps_key & RESULT_SHAPING_CAPABILITIES and idle:
                self._discard(idle.pop(0))
                return

    async def _open(self, caps_key: int) -> BackendConnection:
        self._size += 1
        ep = self.endpoint
        conn = BackendConnection(ep.data_source, ep.host, ep.port, caps_key, role=ep.role)
        conn.pool_key = caps_key & RESULT_SHAPING_CAPABILITIES
        try:
            await conn.connect(ep.user, ep.password, ep.database, self.config.connect_timeout_s)
        except BackendError as refused:
            self._free_slot()
            raise backend_unavailable(ep.data_source, ep.address, refused.err.message) from refused
        except (OSError, TimeoutError, ConnectionError) as unreachable:
            # (A name of its own per except clause: compiled, one name has one type.)
            self._free_slot()
            reason = "timed out" if isinstance(unreachable, TimeoutError) else (unreachable.strerror or str(unreachable))
            raise backend_unavailable(ep.data_source, ep.address, reason) from unreachable
        except BaseException:
            self._free_slot()
            raise
        self.created += 1
        return conn

    @staticmethod
    async def _alive(conn: BackendConnection) -> bool:
        try:
            await asyncio.wait_for(conn.simple(Command.PING), 2.0)
            return True
        except (BackendError, OSError, ConnectionError, TimeoutError):
            return False

    def close_idle_older_than(self, seconds: float) -> None:
        now = time.monotonic()
        for idle in self._idle.values():
            for conn in [c for c in idle if now - c.last_used > seconds]:
                idle.remove(conn)
                self._discard(conn)

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
                self._size -= 1
            idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
