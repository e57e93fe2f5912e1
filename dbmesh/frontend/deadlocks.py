"""Deadlocks across data sources: found by the sidecar, ended like a server ends its own.

Two sharded transactions that each hold a row on one data source and wait for the other's
row on another are a deadlock neither server sees: each only waits, until
innodb_lock_wait_timeout (50 s by default), and every transaction queued behind those rows
waits with them. The sidecar knows which backend connections belong to which session's
transaction, so it can see the whole cycle: every ``transaction.deadlock_check_interval_s``
(while at least two sessions have a transaction open on two or more data sources) it reads
each such data source's lock waits (information_schema.INNODB_LOCK_WAITS, which needs the
PROCESS privilege), joins them into a graph of transactions waiting for transactions, and
looks for cycles. A cycle seen in two checks in a row is a deadlock (a single check could
join waits seen at different moments): the youngest transaction in it is the victim, its
waiting statement is interrupted (KILL QUERY), and the session answers it as MySQL answers a
deadlock: error 1213 (ER_LOCK_DEADLOCK, SQLSTATE 40001), the whole transaction rolled back.
Drivers and ORMs retry that error; sysbench ignores it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from txn.sqltext import Statement

from .. import metrics
from ..backend.connection import BackendError, framed
from ..errors import ProxyError
from . import base_mode
from .sweeps import sweep_forever

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("dbmesh.deadlocks")

ER_LOCK_DEADLOCK = 1213
ER_QUERY_INTERRUPTED = 1317
ER_SPECIFIC_ACCESS_DENIED = 1227
ER_ACCESS_DENIED = 1045

_LOCK_WAITS = Statement(
    "SELECT r.trx_mysql_thread_id, b.trx_mysql_thread_id FROM information_schema.INNODB_LOCK_WAITS w "
    "JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id "
    "JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id")


def deadlock_error(data_sources: list[str]) -> ProxyError:
    return ProxyError(ER_LOCK_DEADLOCK, "40001",
                      "Deadlock found when trying to get lock; try restarting transaction (dbmesh found a deadlock "
                      f"across data sources {', '.join(data_sources)}; this transaction was rolled back)")


class VictimAwareSink:
    """Stands in for a sink while a statement of a transaction on several data sources is
    relayed raw: if the detector interrupted it, the server's "query interrupted" error goes
    to the client as the deadlock error (the executor then rolls the transaction back)."""

    def __init__(self, sink: Any, executor: Any) -> None:
        self._sink = sink
        self._executor = executor
        self.transport = sink.transport

    def write(self, data: bytes | memoryview) -> None:
        executor = self._executor
        if executor.deadlock_victim and len(data) >= 7 and data[4] == 0xFF \
                and int.from_bytes(data[5:7], "little") == ER_QUERY_INTERRUPTED:
            data = framed(deadlock_error(sorted(executor.conns)).packet(), data[3])
        self._sink.write(data)


async def detect(server: Server) -> None:
    """Check now and again, for as long as the sidecar runs (an interval of 0: never)."""
    interval = server.config.transaction.deadlock_check_interval_s
    if interval <= 0:
        return
    detector = Detector(server)
    await sweep_forever("Cross-shard deadlock check", interval, detector.check, log)


class Detector:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.seen: set[frozenset[tuple[int, float]]] = set()  # cycles found by the last check
        self.allowed = True  # False once a data source refused to show its lock waits

    async def check(self) -> None:
        if not self.allowed:
            return
        sessions = [s for s in self.server.sessions if _spans_data_sources(s)]
        if len(sessions) < 2:
            self.seen = set()
            return
        waits = await self._waits(sessions)
        if waits is None:
            return
        found = set()
        for cycle in _cycles(waits):
            key = frozenset((id(s), s.sharded.txn.started_at) for s in cycle)
            found.add(key)
            if key in self.seen:
                await self._end(cycle, waits)
        self.seen = found

    async def _waits(self, sessions: list[Session]) -> dict[Session, dict[Session, tuple[str, int]]] | None:
        """Which transaction waits for which: waiter -> {holder: (data source, waiting thread)}."""
        owner: dict[tuple[str, int], Session] = {}
        for session in sessions:
            for ds, (conn, _) in session.sharded.conns.items():
                owner[(ds, conn.thread_id)] = session
        waits: dict[Session, dict[Session, tuple[str, int]]] = {}
        for ds in sorted({ds for ds, _ in owner}):
            try:
                result = await base_mode.run_plain(self.server, ds, _LOCK_WAITS)
            except BackendError as exc:
                if exc.err.code in (ER_SPECIFIC_ACCESS_DENIED, ER_ACCESS_DENIED, 1142, 1143):
                    log.warning("cross-shard deadlock detection is off: data source %s does not show its lock "
                                "waits to the sidecar's user (%s); grant it PROCESS to have deadlocks across data "
                                "sources ended at once rather than by innodb_lock_wait_timeout", ds, exc.err.message)
                    self.allowed = False
                    return None
                raise
            for waiting, blocking in result.rows:
                waiter = owner.get((ds, int(waiting)))
                holder = owner.get((ds, int(blocking)))
                if waiter is not None and holder is not None and waiter is not holder:
                    waits.setdefault(waiter, {})[holder] = (ds, int(waiting))
        return waits

    async def _end(self, cycle: list[Session], waits: dict[Session, dict[Session, tuple[str, int]]]) -> None:
        """Interrupt the waiting statement of the cycle's youngest transaction."""
        victim = max(cycle, key=lambda s: s.sharded.txn.started_at)
        after = cycle[(cycle.index(victim) + 1) % len(cycle)]
        ds, thread = waits[victim][after]
        executor = victim.sharded
        if not executor.in_transaction or executor.conns.get(ds, (None,))[0] is None \
                or executor.conns[ds][0].thread_id != thread:
            return  # it moved on meanwhile
        executor.deadlock_victim = True
        log.warning("deadlock across data sources: sessions %s wait for each other; rolling back session %d's "
                    "transaction (the youngest), waiting on %s", ", ".join(str(s.connection_id) for s in cycle),
                    victim.connection_id, ds)
        metrics.CROSS_SHARD_DEADLOCKS.inc()
        await base_mode.run_plain(self.server, ds, Statement(f"KILL QUERY {thread:d}"))
        self.seen = set()


def _spans_data_sources(session: Session) -> bool:
    executor = session.sharded
    return executor.in_transaction and executor.txn.base is None and len(executor.conns) >= 2


def _cycles(waits: dict[Any, dict[Any, Any]]) -> list[list[Any]]:
    """The cycles of a small wait-for graph, each once, in waiting order."""
    found: list[list[Any]] = []
    keys: set[frozenset[int]] = set()

    def walk(node: Any, path: list[Any]) -> None:
        for nxt in waits.get(node, ()):
            if nxt in path:
                cycle = path[path.index(nxt):]
                key = frozenset(map(id, cycle))
                if key not in keys:
                    keys.add(key)
                    found.append(cycle)
            elif len(path) < 16:
                walk(nxt, [*path, nxt])

    for start in list(waits):
        walk(start, [start])
    return found

