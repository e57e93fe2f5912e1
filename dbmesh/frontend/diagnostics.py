"""SHOW WARNINGS and SHOW ERRORS on a sharded database.

A statement there runs on backend connections that go back to the pool when it ends, so a
SHOW WARNINGS sent after it cannot ask them. Instead, when a shard's response reports
warnings, SHOW WARNINGS runs at once on that connection (one more round trip, only then),
and the rows are kept with the session until its next statement, as a server keeps its
diagnostics area; an error the statement ends with is kept as an `Error` row. SHOW
WARNINGS, SHOW ERRORS, SHOW COUNT(*) WARNINGS|ERRORS and SELECT @@warning_count|@@error_count
are answered from what is kept. A result merged from several shards reports the sum of
their warning counts.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING

from ..backend.connection import BackendConnection, BackendError
from ..protocol.constants import FieldFlag, FieldType
from ..protocol.packets import Column
from ..protocol.scanner import ResponseScanner

if TYPE_CHECKING:
    from ..backend.pool import Pool
    from .session import Session

log = logging.getLogger("dbmesh.sharded")

# Conditions kept per statement: the server's default max_error_count. The count goes on.
MAX_KEPT = 64

Condition = tuple[str, int, str]  # Level, Code, Message

_SHOW = re.compile(rb"\s*SHOW\s+(COUNT\s*\(\s*\*\s*\)\s+)?(WARNINGS|ERRORS)"
                   rb"(?:\s+LIMIT\s+(\d+)(?:\s*,\s*(\d+))?)?\s*;?\s*\Z", re.I)
_SELECT_COUNT = re.compile(rb"\s*SELECT\s+@@(session\.)?(warning_count|error_count)\s*;?\s*\Z", re.I)

# As MariaDB describes them.
_CONDITION_COLUMNS = [Column("Level", length=28), Column("Code", type=FieldType.LONG, length=4,
                                                          flags=FieldFlag.NOT_NULL | FieldFlag.UNSIGNED),
                      Column("Message", length=2048)]


class Diagnostics:
    """The warnings and errors of a session's last statement on a sharded database."""

    __slots__ = ("conditions", "count", "pending")

    def __init__(self) -> None:
        self.conditions: list[Condition] = []
        self.count = 0  # every condition of the statement, also those past MAX_KEPT
        self.pending: asyncio.Task | None = None  # a read the fast lane left running

    def clear(self) -> None:
        """A new statement begins."""
        if self.count:
            self.conditions = []
            self.count = 0

    def error(self, code: int, message: str) -> None:
        self.count += 1
        self._keep([("Error", code, message)])

    async def after_relay(self, conn: BackendConnection, scanner: ResponseScanner) -> None:
        """A response relayed raw to the client: keep its error, or read its warnings."""
        if scanner.error is not None:
            self.error(scanner.error.code, scanner.error.message)
        elif scanner.warnings:
            await self.read(conn)

    async def read(self, conn: BackendConnection) -> None:
        """``conn`` has just answered with warnings: keep them. Never raises (the answer may
        be with the client already); a connection that fails here is marked broken."""
        self.count += conn.warnings
        try:
            result = await conn.query("SHOW WARNINGS")
        except (BackendError, ConnectionError, OSError) as exc:
            conn.broken = conn.broken or not isinstance(exc, BackendError)
            log.info("could not read the warnings of data source %s: %s", conn.data_source, exc)
            return
        self._keep([(level.decode() if level else "", int(code or 0), message.decode("utf-8", "replace")
                     if message else "") for level, code, message in result.rows])

    def read_later(self, conn: BackendConnection, pool: Pool | None) -> None:
        """read() for the fast lane, which cannot wait: a task reads and gives the connection
        back to ``pool`` (None: a transaction's, kept); the session's next statement waits
        for it (settle)."""
        self.pending = asyncio.ensure_future(self._read_and_release(conn, pool))

    async def _read_and_release(self, conn: BackendConnection, pool: Pool | None) -> None:
        try:
            await self.read(conn)
        finally:
            if pool is not None:
                pool.release(conn)
            self.pending = None

    async def settle(self) -> None:
        pending = self.pending
        if pending is not None:
            await asyncio.shield(pending)  # a cancelled session must not cut the read mid-response

    def _keep(self, conditions: list[Condition]) -> None:
        room = MAX_KEPT - len(self.conditions)
        if room > 0:
            self.conditions.extend(conditions[:room])

    def answer(self, session: Session, sql: bytes) -> bool:
        """Answer ``sql`` if it asks for the diagnostics; False if it does not."""
        show = _SHOW.match(sql)
        if show is not None:
            errors_only = show.group(2).upper() == b"ERRORS"
            if show.group(1):
                name = "error_count" if errors_only else "warning_count"
                session.send_result([_count_column(f"@@session.{name}")], [[self._count(errors_only)]])
                return True
            rows = [c for c in self.conditions if not errors_only or c[0] == "Error"]
            first, second = show.group(3), show.group(4)
            if first is not None:
                offset, limit = (int(first), int(second)) if second is not None else (0, int(first))
                rows = rows[offset:offset + limit]
            session.send_result(_CONDITION_COLUMNS, [list(c) for c in rows])
            return True
        select = _SELECT_COUNT.match(sql)
        if select is not None:
            name = select.group(2).decode().lower()
            label = "@@" + ("session." if select.group(1) else "") + name
            session.send_result([_count_column(label)], [[self._count(name == "error_count")]])
            return True
        return False

    def _count(self, errors_only: bool) -> int:
        if errors_only:
            return sum(1 for c in self.conditions if c[0] == "Error")
        return self.count


def _count_column(name: str) -> Column:
    return Column(name, type=FieldType.LONGLONG, length=21, flags=FieldFlag.BINARY)
