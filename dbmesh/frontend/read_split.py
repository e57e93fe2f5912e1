"""Read/write splitting for a session on a pass-through database whose data source has replicas.

A plain read outside a transaction goes to a healthy replica chosen by the load balancer,
unless a hint or the session's dbmesh_route says otherwise, or the session wrote recently
and read-your-writes asks for the primary (window mode) or for the replica to catch up to
the write's GTID first (gtid mode). Everything else stays on the primary.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .. import errors
from ..backend.connection import BackendError
from ..backend.replicas import Replica, ReplicaSet
from ..errors import ProxyError
from ..protocol.packets import MalformedPacket
from ..protocol.scanner import ResponseKind
from .statement import Statement

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("dbmesh.readsplit")


class ReadSplitting:
    def __init__(self, session: Session):
        self.session = session

    def _replica_set(self) -> ReplicaSet | None:
        s = self.session
        if s._is_sharded():
            return None
        return s.server.replica_sets.get(s.config.data_source_for(s.database).name)

    def _choose(self, replicas: ReplicaSet, statement: Statement) -> Replica | None:
        """The replica for this read, or None for the primary."""
        s = self.session
        route = statement.route_hint or s.route_setting
        if route == "primary":
            return None
        held = s.held
        in_transaction = (held is not None and held.in_transaction) or not s.autocommit
        if in_transaction and replicas.config.transaction_reads == "primary":
            return None
        if s.pin_reasons or s.keep_for_statements or held is not None:
            return None
        rw = replicas.config
        if rw.read_your_writes == "window":
            wrote = s.last_write_at.get(replicas.data_source)
            if wrote is not None and time.monotonic() - wrote < rw.window_s:
                return None
        if route not in ("auto", "replica"):
            named = replicas.by_name(route)
            if named is None:
                raise ProxyError(errors.ER_UNKNOWN_ERROR, "HY000",
                                 f"no replica named '{route}' in data source '{replicas.data_source}'; "
                                 f"replicas: {', '.join(r.name for r in replicas.replicas)}")
            if named.healthy:
                return named
        replica = replicas.choose()
        if replica is None and not rw.fallback_to_primary:
            raise ProxyError(errors.ER_CONNECT_TO_FOREIGN_DATA_SOURCE, errors.SQLSTATE_LINK_FAILURE,
                             f"no healthy replica of data source '{replicas.data_source}' for a read, and "
                             "fallback_to_primary is off")
        return replica

    async def try_replica(self, payload: bytes, statement: Statement) -> bool:
        """Serve a read from a replica; False when it must go to the primary instead."""
        replicas = self._replica_set()
        if replicas is None:
            return False
        replica = self._choose(replicas, statement)
        if replica is None:
            return False
        s = self.session
        try:
            conn = await replica.pool.acquire(s.caps_key)
        except ProxyError as exc:
            replicas.mark_down(replica, exc.message)
            return False
        try:
            await s.sync_state(conn, s._physical_database())
            if not await self._caught_up(conn, replicas):
                replica.pool.release(conn)
                return False
            scanner = await conn.relay(payload, ResponseKind.RESULT, s.writer)
        except (ConnectionError, OSError, MalformedPacket) as exc:
            conn.broken = True
            replica.pool.release(conn)
            replicas.mark_down(replica, str(exc))
            if conn.response_started:
                raise ProxyError(errors.ER_QUERY_ON_FOREIGN_DATA_SOURCE, errors.SQLSTATE_LINK_FAILURE,
                                 f"Lost replica '{replica.name}' of data source '{replicas.data_source}' "
                                 "during a read") from exc
            return False
        except BackendError:
            replica.pool.release(conn)
            raise
        if scanner.status_seen:
            s.autocommit = bool(scanner.status & 0x0002)
        if scanner.warnings:
            # SHOW WARNINGS must run where the warnings are: keep the replica for one statement.
            s.held, s.held_pool = conn, replica.pool
            s.keep_for_statements = max(s.keep_for_statements, 1)
        else:
            replica.pool.release(conn)
        return True

    async def _caught_up(self, conn, replicas: ReplicaSet) -> bool:
        """gtid mode: wait (bounded) until the replica has this session's last write."""
        rw = replicas.config
        gtid = self.session.last_gtid.get(replicas.data_source)
        if rw.read_your_writes != "gtid" or not gtid:
            return True
        result = await conn.query(f"SELECT MASTER_GTID_WAIT('{gtid}', {rw.gtid_wait_timeout_s:g})")
        return bool(result.rows) and result.rows[0][0] == b"0"

    async def wrote(self) -> None:
        """The session changed data on the primary: remember when (and the GTID if asked)."""
        s = self.session
        replicas = self._replica_set()
        if replicas is None:
            return
        s.last_write_at[replicas.data_source] = time.monotonic()
        if replicas.config.read_your_writes != "gtid":
            return
        # The primary's binlog position now includes the write; replicas wait for it.
        pool = s.server.pools[replicas.data_source]
        conn = await pool.acquire(s.caps_key)
        try:
            result = await conn.query("SELECT @@gtid_binlog_pos")
            if result.rows and result.rows[0][0]:
                s.last_gtid[replicas.data_source] = result.rows[0][0].decode()
        except BackendError:
            pass
        finally:
            pool.release(conn)
