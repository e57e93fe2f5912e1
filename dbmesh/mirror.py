"""Read mirroring: a share of production reads also runs, asynchronously, on a mirror target.

The client's statement is served by production as usual; while its response is relayed,
a copy of the bytes is kept (``Tee``), and afterwards a job — the statement text, the
session's replayable settings and the production response — goes into a bounded queue.
Worker tasks run the statement on the mirror data source and compare result rows with
what the client received. The client never waits for the mirror: a full queue drops the
job, a slow or dead target only occupies the workers.

Comparison: the production rows are exactly the bytes the client got (no second production
query, so no race with concurrent writes on the production side); the mirror's rows are
read with the text protocol. Rows compare in order when the statement has ORDER BY, as a
multiset otherwise; an error on both sides with the same code is a match. Results larger
than ``max_result_bytes`` are not captured and the read is not mirrored (counted as
dropped). A prepared-statement read is prepared and executed on the mirror with the
client's own parameters, and binary rows are compared by their decoded values.

Counters (dbmesh/metrics.py): dbmesh_mirror_statements_total, _matches_total,
_mismatches_total, _errors_total{kind=connect|sql|timeout|lost|internal}, _dropped_total.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import metrics
from .backend.connection import BackendError, split_payloads
from .errors import ProxyError
from .protocol.binary import decode_binary_row
from .protocol.constants import Command
from .protocol.packets import MalformedPacket, parse_column_definition, parse_text_row, read_lenenc_int
from .protocol.scanner import ResponseKind

if TYPE_CHECKING:
    from shadow.rules import MirrorConfig

    from .frontend.server import Server

log = logging.getLogger("dbmesh.mirror")

_ORDERED = re.compile(r"\bORDER\s+BY\b", re.I)


class Tee:
    """Stands in for a session's StreamWriter during one statement: everything written goes
    to the client and, up to ``limit`` bytes, into ``chunks``."""

    def __init__(self, writer: asyncio.StreamWriter, limit: int):
        self._writer = writer
        self.transport = writer.transport
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False

    def write(self, data: bytes) -> None:
        self._writer.write(data)
        if self.overflow:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.overflow = True
            self.chunks.clear()
        else:
            self.chunks.append(bytes(data))

    async def drain(self) -> None:
        await self._writer.drain()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)

    def captured(self) -> bytes | None:
        return None if self.overflow else b"".join(self.chunks)


@dataclass(frozen=True)
class Job:
    sql: str
    session_vars: tuple[str, ...]
    response: bytes            # the production response as relayed (framed packets)
    deprecate_eof: bool        # the client's result format
    # A prepared read: its COM_STMT_EXECUTE from the flags byte on (parameter types
    # included), and parameters the client sent as long data.
    execute: bytes | None = None
    long_data: tuple[tuple[int, bytes], ...] = ()


def summarize(payloads: list[bytes], deprecate_eof: bool, binary: bool = False) -> tuple:
    """("error", code) | ("ok",) | ("rows", column count, rows) of one response; binary
    (prepared statement) rows are decoded to values, text rows stay as bytes."""
    if not payloads:
        raise MalformedPacket("empty response")
    first = payloads[0]
    if first[0] == 0xFF:
        return ("error", struct.unpack_from("<H", first, 1)[0])
    if first[0] == 0x00:
        return ("ok",)
    count, _ = read_lenenc_int(first, 0)
    fields = [parse_column_definition(p) for p in payloads[1:1 + count]] if binary else []
    rows = []
    for payload in payloads[1 + count + (0 if deprecate_eof else 1):]:
        if payload[0] == 0xFE and len(payload) < 0xFFFFFF:
            break
        if payload[0] == 0xFF:
            return ("error", struct.unpack_from("<H", payload, 1)[0])
        rows.append(decode_binary_row(payload, fields) if binary else tuple(parse_text_row(payload, count)))
    return ("rows", count, rows)


def same_result(production: tuple, mirror: tuple, ordered: bool) -> bool:
    if production[0] != mirror[0]:
        return False
    if production[0] != "rows":
        return production == mirror
    if production[1] != mirror[1] or len(production[2]) != len(mirror[2]):
        return False
    if ordered:
        return production[2] == mirror[2]
    return Counter(production[2]) == Counter(mirror[2])


class Mirror:
    """The mirror of one logical database's reads in one sidecar process."""

    _registry: dict[tuple[int, str], Mirror] = {}

    @classmethod
    def of(cls, server: Server, database: str, config: MirrorConfig) -> Mirror:
        key = (id(server), database)
        mirror = cls._registry.get(key)
        if mirror is None or mirror.server is not server:
            mirror = cls._registry[key] = Mirror(server, database, config)
        return mirror

    def __init__(self, server: Server, database: str, config: MirrorConfig):
        self.server = server
        self.database = database
        self.config = config
        self.queue: asyncio.Queue[Job] | None = None
        self.workers: list[asyncio.Task[None]] = []
        target = config.data_source
        self._sent = metrics.MIRROR_STATEMENTS.labels(database, target)
        self._matches = metrics.MIRROR_MATCHES.labels(database, target)
        self._mismatches = metrics.MIRROR_MISMATCHES.labels(database, target)
        self._full = metrics.MIRROR_DROPPED.labels(database, target, "queue_full")
        self._large = metrics.MIRROR_DROPPED.labels(database, target, "too_large")

    def errors(self, kind: str):
        return metrics.MIRROR_ERRORS.labels(self.database, self.config.data_source, kind)

    def too_large(self) -> None:
        self._large.inc()

    def submit(self, job: Job) -> bool:
        """Queue a mirrored read; False (and counted) when the queue is full."""
        if self.queue is None:
            self.queue = asyncio.Queue(self.config.queue_size)
            self.workers = [asyncio.create_task(self._work(), name=f"mirror-{self.database}-{i}")
                            for i in range(self.config.workers)]
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self._full.inc()
            return False
        return True

    async def _work(self) -> None:
        assert self.queue is not None
        while True:
            job = await self.queue.get()
            try:
                await asyncio.wait_for(self._run(job), self.config.timeout_s)
            except TimeoutError:
                self.errors("timeout").inc()
            except BackendError as exc:         # replaying the session's settings failed
                self.errors("sql").inc()
                log.debug("mirror %s: %s", self.config.data_source, exc)
            except ProxyError as exc:           # the pool could not connect
                self.errors("connect").inc()
                log.debug("mirror %s: %s", self.config.data_source, exc.message)
            except (ConnectionError, OSError, MalformedPacket) as exc:
                self.errors("lost").inc()
                log.debug("mirror %s: connection lost: %s", self.config.data_source, exc)
            except Exception:  # noqa: BLE001 - a mirror must never take the sidecar down
                self.errors("internal").inc()
                log.exception("mirror %s: unexpected failure", self.config.data_source)

    async def _run(self, job: Job) -> None:
        pool = self.server.pools[self.config.data_source]
        conn = await pool.acquire(0)
        result: tuple | None = None
        try:
            database = self.server.config.data_sources[self.config.data_source].database
            await conn.apply_state(job.session_vars, database, True)
            self._sent.inc()
            if job.execute is not None:
                result = await _execute(conn, job)
            else:
                try:
                    answer = await conn.query(job.sql)
                    result = ("rows", len(answer.fields), [tuple(r) for r in answer.rows]) if answer.fields \
                        else ("ok",)
                except BackendError as exc:
                    result = ("error", exc.err.code)
        except BaseException:
            conn.broken = True
            raise
        finally:
            pool.release(conn)
        if not self.config.compare:
            return
        production = summarize(split_payloads(job.response), job.deprecate_eof, binary=job.execute is not None)
        if result[0] == "error" and production[0] != "error":
            self.errors("sql").inc()
            return
        if same_result(production, result, bool(_ORDERED.search(job.sql))):
            self._matches.inc()
        else:
            self._mismatches.inc()
            log.info("mirror %s: result differs from production for: %.200s", self.config.data_source, job.sql)


async def _execute(conn, job: Job) -> tuple:
    """A prepared read on the mirror: prepare, execute with the client's parameters, close."""
    payloads, scanner = await conn.collect(bytes((Command.STMT_PREPARE,)) + job.sql.encode("utf-8", "surrogateescape"),
                                           ResponseKind.PREPARE)
    if scanner.error is not None:
        return ("error", scanner.error.code)
    stmt_id = scanner.stmt_id
    for param, data in job.long_data:
        conn.send(bytes((Command.STMT_SEND_LONG_DATA,)) + struct.pack("<IH", stmt_id, param) + data)
    payloads, scanner = await conn.collect(bytes((Command.STMT_EXECUTE,)) + struct.pack("<I", stmt_id) + job.execute,
                                           ResponseKind.RESULT)
    conn.close_statement(stmt_id)
    return summarize(payloads, conn.deprecate_eof, binary=True)
