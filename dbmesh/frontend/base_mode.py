"""The sidecar's side of the BASE transaction mode: how txn.base_coordinator and
txn.base_recovery reach the backends, and the server-wide state they share.

Log and clean-up statements run on pooled connections of their own, in autocommit and
with the server's default session settings (a client's SET time_zone must not change the
log's timestamps). Branch statements run on the session's own connection per data source.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from txn import base_recovery, global_lock, global_log, undo_log
from txn.base_branch import Conn, check_data_source
from txn.base_cleanup import CleanupQueue
from txn.base_coordinator import Backends
from txn.base_templates import Templates
from txn.images import TableMeta
from txn.recovery import no_such_table
from txn.sqltext import Statement

from .. import metrics
from ..backend.connection import BackendConnection, BackendError, QueryResult
from .sweeps import sweep_forever

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("dbmesh.base")


class BaseState:
    """Server-wide: which tables exist where, table metadata, running transactions."""

    def __init__(self, server: Server) -> None:
        self.prepared_sources: set[str] = set()   # undo log + global lock tables exist, settings checked
        self.log_sources: set[str] = set()        # global transaction table exists
        self.meta_cache: dict[tuple[str, str], TableMeta] = {}
        self.templates = Templates()                # UPDATE/DELETE shapes' image SQL
        self.running: set[str] = set()            # xids a session is driving
        self.operating: set[str] = set()          # xids an admin statement retries or forgets now
        self.cleanup = CleanupQueue(lambda ds, statement: run_plain(server, ds, statement))


async def acquire_plain(server: Server, ds: str) -> BackendConnection:
    """A pooled connection in autocommit, default session settings, on the data source's database."""
    pool = server.pools[ds]
    conn = await pool.acquire(0)
    try:
        if conn.session_vars:
            await conn.reset()
            conn.session_vars = ()
        database = server.config.data_sources[ds].database
        if conn.database != database:
            await conn.init_db(database)
        if not conn.autocommit:
            await conn.query("SET autocommit=1")
            conn.autocommit = True
    except BaseException:
        conn.broken = True
        pool.release(conn)
        raise
    return conn


def release_plain(server: Server, conn: BackendConnection) -> None:
    server.pools[conn.data_source].release(conn)


async def run_plain(server: Server, ds: str, statement: Statement) -> QueryResult:
    conn = await acquire_plain(server, ds)
    try:
        return await conn.query(statement.inline())
    except (ConnectionError, OSError):
        conn.broken = True
        raise
    finally:
        release_plain(server, conn)


def backends(server: Server, log_source: str, branch: Callable[[str], Awaitable[Conn]] | None = None,
             database: str = "") -> Backends:
    """Backend access for one global transaction of ``database`` (or recovery) logging on
    ``log_source``."""
    state = server.base

    async def log_statement(statement: Statement) -> QueryResult:
        if log_source not in state.log_sources:
            await run_plain(server, log_source, Statement(global_log.GLOBAL_TXN_DDL))
            state.log_sources.add(log_source)
        return await run_plain(server, log_source, statement)

    async def prepare(ds: str, conn: Conn) -> None:
        if ds in state.prepared_sources:
            return
        await conn.query(undo_log.UNDO_LOG_DDL)
        await conn.query(global_lock.GLOBAL_LOCK_DDL)
        await check_data_source(conn)
        state.prepared_sources.add(ds)

    async def own_connection(ds: str) -> Conn:
        raise RuntimeError(f"no branch connection for {ds} outside a session")

    return Backends(
        branch=branch or own_connection,
        log=log_statement,
        on_data_source=lambda ds, statement: run_plain(server, ds, statement),
        schema_of=lambda ds: server.config.data_sources[ds].database,
        prepare=prepare,
        meta_cache=state.meta_cache,
        templates=state.templates,
        log_source=log_source,
        finished=state.cleanup.add,
        retried=lambda reason: metrics.BASE_RETRIES.labels(database, reason).inc(),
    )


def base_log_sources(server: Server) -> list[str]:
    """Log data sources of every sharded database (a session may choose BASE whatever the
    configured mode)."""
    config = server.config
    return sorted({d.transaction.log_data_source or d.sharding.default_data_source
                   for d in config.databases.values() if d.sharding is not None})


async def recover(server: Server, min_age_s: float = 0.0, instance: str | None = None) -> dict[str, int]:
    """Finish the unfinished BASE transactions of ``instance`` (default: this sidecar's, of
    every worker; see txn.base_recovery)."""
    counts = await base_recovery.recover(
        lambda log_source: backends(server, log_source), base_log_sources(server),
        instance or server.config.instance_id,
        lambda ds: acquire_plain(server, ds), lambda conn: release_plain(server, conn),
        min_age_s=min_age_s, running=server.base.running | server.base.operating)
    for outcome, count in counts.items():
        if count:
            metrics.TRANSACTIONS_RECOVERED.labels("BASE", outcome).inc(count)
    return counts


async def count_needs_attention(server: Server) -> dict[str, int]:
    """needs_attention transactions per log data source (also the metric's figure)."""
    counts = {}
    for log_source in base_log_sources(server):
        try:
            result = await run_plain(server, log_source, global_log.count_status(global_log.NEEDS_ATTENTION))
        except BackendError as exc:
            if no_such_table(exc):  # no BASE transaction ever logged here
                continue
            raise
        counts[log_source] = int(result.rows[0][0])
        metrics.BASE_NEEDS_ATTENTION_NOW.labels(log_source).set(counts[log_source])
    return counts


async def sweep(server: Server) -> None:
    """Now and again, finish transactions whose session went away without finishing them
    (``transaction.base_sweep_interval_s``; idle for ``base_orphan_age_s``)."""
    settings = server.config.transaction

    async def one_round() -> None:
        counts = await recover(server, settings.base_orphan_age_s, server.xid_instance)
        await count_needs_attention(server)
        if any(counts.values()):
            log.info("BASE recovery sweep: %s", counts)

    await sweep_forever("BASE recovery sweep", settings.base_sweep_interval_s, one_round, log)
