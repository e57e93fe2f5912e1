"""The listener: accepts client connections and runs a Session for each."""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl

from sharding.plan_cache import PlanCache

from .. import metrics
from ..backend.connection import BackendConnection, BackendError
from ..backend.pool import Endpoint, Pool
from ..backend.replicas import ReplicaSet
from ..config import Config
from ..errors import ProxyError
from ..protocol.constants import SERVER_CAPABILITIES, Capability
from ..protocol.packets import PacketProtocol
from . import base_mode, deadlocks, xa_mode
from .session import Session

log = logging.getLogger("dbmesh.server")

_IDLE_SWEEP_S = 10.0
_TALLY_FLUSH_S = 1.0


def pools_for(config: Config) -> dict[str, Pool]:
    """One pool per data source, towards its primary."""
    return {
        name: Pool(Endpoint(name, ds.host, ds.port, ds.user, ds.password, ds.database), ds.pool)
        for name, ds in config.data_sources.items()
    }


class Server:
    def __init__(self, config: Config, worker_index: int = 0, worker_count: int = 1, port: int | None = None):
        self.config = config
        # One of several worker processes (dbmesh/workers.py): the supervisor ran XA recovery
        # and serves the metrics; this process shares the listen port and numbers its
        # connections worker_index + 1, + worker_count, ... so ids stay unique across workers.
        self.worker_index, self.worker_count = worker_index, worker_count
        self.listen_port = config.listen.port if port is None else port
        self.pools = pools_for(config)
        self.plan_cache = PlanCache()  # sharded statement shapes, shared by all sessions
        # Global transaction ids name the worker too: a worker's sweeps must not finish another
        # worker's running transactions (recovery at start takes every worker's).
        self.xid_instance = (config.instance_id if worker_count == 1
                             else f"{config.instance_id}-w{worker_index}")
        self.xa = xa_mode.XaState()  # XA transactions: running xids, log tables made
        self.base = base_mode.BaseState(self)  # BASE transactions: tables prepared, metadata, running xids
        self.replica_sets = {name: ReplicaSet(ds) for name, ds in config.data_sources.items() if ds.replicas}
        self.sessions: set[Session] = set()
        self._ids = itertools.count(worker_index + 1, worker_count)
        self.ssl_context: ssl.SSLContext | None = None
        self.capabilities = int(SERVER_CAPABILITIES)
        if config.listen.tls is not None:
            self.ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ssl_context.load_cert_chain(config.listen.tls.cert, config.listen.tls.key)
            self.capabilities |= Capability.SSL
        self.server_version = config.listen.server_version
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._base_sweeper: asyncio.Task[None] | None = None
        self._xa_sweeper: asyncio.Task[None] | None = None
        self._deadlock_detector: asyncio.Task[None] | None = None
        self._tally_flusher: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        await self._learn_server_version()
        workers = self.worker_count > 1
        if not workers:
            await self._recover_transactions()
        listen = self.config.listen
        loop = asyncio.get_running_loop()

        def client_protocol() -> PacketProtocol:  # asyncio.start_server() with our protocol
            return PacketProtocol(asyncio.StreamReader(loop=loop), self._accept, loop=loop)

        self._server = await loop.create_server(client_protocol, listen.host, self.listen_port,
                                                reuse_address=True, backlog=1024, reuse_port=workers or None)
        self._sweeper = asyncio.create_task(self._sweep_idle())
        if workers:  # the supervisor serves /metrics from files: move the per-statement tallies there
            self._tally_flusher = asyncio.create_task(self._flush_tallies_forever())
        if base_mode.base_log_sources(self):
            self._base_sweeper = asyncio.create_task(base_mode.sweep(self))
            self._xa_sweeper = asyncio.create_task(xa_mode.sweep(self))
            self._deadlock_detector = asyncio.create_task(deadlocks.detect(self))
        for replica_set in self.replica_sets.values():
            replica_set.start()
        if self.config.metrics.port and not workers:
            metrics.serve(self.config.metrics.host, self.config.metrics.port)
            log.info("metrics on http://%s:%d/metrics", self.config.metrics.host, self.config.metrics.port)
        log.info("listening on %s:%d as %s", listen.host, self.port, self.server_version)

    async def _learn_server_version(self) -> None:
        """Announce the default backend's version, so drivers enable the right features."""
        ds = self.config.data_sources[self.config.default_data_source]
        conn = BackendConnection(ds.name, ds.host, ds.port, 0)
        try:
            await conn.connect(ds.user, ds.password, None, ds.pool.connect_timeout_s)
            self.server_version = f"{conn.server_version}-dbmesh"
        except (OSError, TimeoutError, ConnectionError, BackendError) as exc:
            log.warning("default data source %s unreachable at start (%s); announcing version %s",
                        ds.name, exc, self.server_version)
        finally:
            conn.close()

    async def recover_once(self) -> None:
        """XA recovery alone, for the supervisor of worker processes (before they start)."""
        try:
            await self._recover_transactions()
        finally:
            for pool in self.pools.values():
                pool.close()

    async def _recover_transactions(self) -> None:
        await self._recover_xa()
        await self._recover_base()

    async def _recover_base(self) -> None:
        """Finish (compensate or clean up) the BASE transactions this instance left open."""
        if not base_mode.base_log_sources(self):
            return
        try:
            counts = await base_mode.recover(self)
            await base_mode.count_needs_attention(self)
        except (ProxyError, BackendError, OSError, ConnectionError) as exc:
            log.error("BASE recovery did not finish (%s); the sweep retries it", exc)
            return
        if any(counts.values()):
            log.info("BASE recovery: %s", counts)

    async def _recover_xa(self) -> None:
        """Finish the XA transactions this instance left prepared when it last stopped."""
        if not xa_mode.xa_sources(self)[0]:
            return
        try:
            counts = await xa_mode.finish_prepared(self, self.config.instance_id)
        except (ProxyError, BackendError, OSError, ConnectionError, TimeoutError) as exc:
            log.error("XA recovery did not finish (%s); the sweep retries what is its own", exc)
            return
        if any(counts.values()):
            log.info("XA recovery: %d branches committed, %d rolled back", counts["commit"], counts["rollback"])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(self, reader, writer, next(self._ids))
        self.sessions.add(session)
        metrics.CLIENT_SESSIONS.set(len(self.sessions))
        await session.run()

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        metrics.CLIENT_SESSIONS.set(len(self.sessions))

    async def _sweep_idle(self) -> None:
        while True:
            await asyncio.sleep(_IDLE_SWEEP_S)
            for pool in self.all_pools():
                pool.close_idle_older_than(pool.config.idle_timeout_s)
                metrics.POOL_CONNECTIONS.labels(pool.endpoint.data_source, pool.endpoint.role).set(pool.size)

    @staticmethod
    async def _flush_tallies_forever() -> None:
        while True:
            await asyncio.sleep(_TALLY_FLUSH_S)
            metrics.flush_tallies()

    def all_pools(self) -> list[Pool]:
        pools = list(self.pools.values())
        for replica_set in self.replica_sets.values():
            pools.extend(r.pool for r in replica_set.replicas)
        return pools

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        for task in (self._sweeper, self._base_sweeper, self._xa_sweeper, self._deadlock_detector,
                     self._tally_flusher):
            if task is not None:
                task.cancel()
        metrics.flush_tallies()
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.writer.close()
        for pool in self.pools.values():
            pool.close()
        for replica_set in self.replica_sets.values():
            replica_set.close()
