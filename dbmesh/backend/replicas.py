"""Replicas of a data source: their pools, health, replication lag, and which one serves a read.

A checker probes every replica on an interval (SHOW SLAVE STATUS over a connection of its
own). A replica that does not answer, whose replication threads stopped, or whose lag is
above the configured maximum leaves the rotation, and comes back once it is healthy again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from dataclasses import dataclass

from .. import metrics
from ..config import DataSourceConfig, ReadWriteConfig
from .connection import BackendConnection, BackendError
from .pool import Endpoint, Pool

log = logging.getLogger("dbmesh.replicas")


@dataclass
class Replica:
    name: str
    weight: int
    pool: Pool
    healthy: bool = False      # unknown until the first probe answers
    lag_s: float | None = None
    reason: str = "not probed yet"


class ReplicaSet:
    def __init__(self, ds: DataSourceConfig):
        self.data_source = ds.name
        self.config: ReadWriteConfig = ds.read_write
        self.replicas = [
            Replica(r.name, r.weight,
                    Pool(Endpoint(ds.name, r.host, r.port, ds.user, ds.password, ds.database, role=r.name),
                         ds.pool))
            for r in ds.replicas
        ]
        self._ds = ds
        self._round_robin = itertools.count()
        self._probe_conns: dict[str, BackendConnection] = {}
        self._task: asyncio.Task[None] | None = None

    def by_name(self, name: str) -> Replica | None:
        return next((r for r in self.replicas if r.name == name), None)

    def healthy(self) -> list[Replica]:
        return [r for r in self.replicas if r.healthy]

    def choose(self) -> Replica | None:
        """A healthy replica by the configured load balancer, or None."""
        candidates = self.healthy()
        if not candidates:
            return None
        balancer = self.config.load_balancer
        if balancer == "RANDOM":
            return random.choice(candidates)
        if balancer == "WEIGHT":
            weighted = [r for r in candidates if r.weight > 0]
            if not weighted:
                return None
            return random.choices(weighted, weights=[r.weight for r in weighted])[0]
        return candidates[next(self._round_robin) % len(candidates)]

    # -- health ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.replicas and self._task is None:
            self._task = asyncio.create_task(self._check_forever())

    async def _check_forever(self) -> None:
        while True:
            await asyncio.gather(*(self.probe(r) for r in self.replicas))
            await asyncio.sleep(self.config.health_check_interval_s)

    async def probe(self, replica: Replica) -> None:
        try:
            conn = self._probe_conns.get(replica.name)
            if conn is None or conn.broken:
                ep = replica.pool.endpoint
                conn = BackendConnection(self.data_source, ep.host, ep.port, 0)
                await conn.connect(ep.user, ep.password, None, min(2.0, self._ds.pool.connect_timeout_s))
                self._probe_conns[replica.name] = conn
            result = await asyncio.wait_for(conn.query("SHOW SLAVE STATUS"), 2.0)
        except (OSError, ConnectionError, TimeoutError, BackendError) as exc:
            conn = self._probe_conns.pop(replica.name, None)
            if conn is not None:
                conn.close()
            self._set(replica, False, None, f"unreachable: {exc}")
            return
        if not result.rows:
            self._set(replica, False, None, "not replicating (SHOW SLAVE STATUS is empty)")
            return
        row = dict(zip((f.name for f in result.fields), result.rows[0], strict=False))
        io_running = row.get("Slave_IO_Running") == b"Yes"
        sql_running = row.get("Slave_SQL_Running") == b"Yes"
        lag_raw = row.get("Seconds_Behind_Master")
        lag = float(lag_raw) if lag_raw is not None else None
        if not sql_running or lag is None:
            self._set(replica, False, lag, "replication SQL thread stopped: lag unknown")
        elif not io_running:
            self._set(replica, False, lag, "replication IO thread stopped")
        elif lag > self.config.max_replication_lag_s:
            self._set(replica, False, lag, f"lag {lag:.0f}s above max_replication_lag_s "
                                           f"{self.config.max_replication_lag_s:g}")
        else:
            self._set(replica, True, lag, "ok")

    def mark_down(self, replica: Replica, reason: str) -> None:
        """A read on it just failed: out of rotation until the next probe says otherwise."""
        self._set(replica, False, replica.lag_s, f"read failed: {reason}")

    def _set(self, replica: Replica, healthy: bool, lag: float | None, reason: str) -> None:
        if replica.healthy != healthy:
            log.info("data source %s replica %s %s (%s)", self.data_source, replica.name,
                     "back in rotation" if healthy else "out of rotation", reason)
        replica.healthy, replica.lag_s, replica.reason = healthy, lag, reason
        metrics.REPLICA_HEALTHY.labels(self.data_source, replica.name).set(1 if healthy else 0)
        metrics.REPLICA_LAG.labels(self.data_source, replica.name).set(-1 if lag is None else lag)
        if not healthy:
            replica.pool.close_idle_older_than(-1)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for conn in self._probe_conns.values():
            conn.close()
        for replica in self.replicas:
            replica.pool.close()
