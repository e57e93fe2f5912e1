"""Deadlocks across data sources: found by the sidecar, ended like a server ends its own.

Two sharded transactions that each hold a row on one data source and wait for the other's
row on another are a deadlock neither server sees: each only waits, until
innodb_lock_wait_timeout (50 s by default), and every transaction queued behind those rows
waits with them. The sidecar knows which backend connections belong to which session's
transaction, so it can see the whole cycle. Every ``transaction.deadlock_check_interval_s``
(while two sessions have transactions open and one of them spans data sources), and every
0.15 s while such transactions wait for each other, it reads each data source's lock waits
(information_schema.INNODB_LOCK_WAITS, which needs the PROCESS privilege), joins them into a
graph of transactions waiting for transactions, and looks for cycles.

The data sources are read one after the other, so a cycle counts only if none of its
transactions ended or began while they were read: then each wait it joins still stands (a
transaction holds its locks until it ends; a waiting statement waits until then, or until
its lock wait times out). The youngest transaction in each cycle is the victim: its waiting
statement, named by its query id so that a statement that has moved on is not touched, is
interrupted (KILL QUERY ID), and the session answers it as MySQL answers a deadlock:
error 1213 (ER_LOCK_DEADLOCK, SQLSTATE 40001), the whole transaction rolled back. Drivers and
ORMs retry that error; sysbench ignores it.

The detector reads and interrupts through a connection of its own per data source, outside
the pools: a deadlock is most likely exactly when every pooled connection is held by a
waiting transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import errors, metrics
from ..backend.connection import BackendConnection, BackendError, framed
from ..errors import ProxyError
from .sweeps import sweep_forever

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("dbmesh.deadlocks")

# A waiter -> {a transaction it waits for: (data source, the waiting statement's query id)}.
Waits = dict["Session", dict["Session", tuple[str, int]]]

# Between two looks while transactions wait for each other across data sources (else
# transaction.deadlock_check_interval_s): a deadlock lasts about one of these. InnoDB
# refreshes what information_schema shows of its transactions and lock waits only when it
# was last read more than 0.1 s before; looks closer together would see the same picture,
# and looks that never stop would freeze it.
RECHECK_WHILE_WAITING_S = 0.15

ER_LOCK_DEADLOCK = 1213
ER_QUERY_INTERRUPTED = 1317
ER_NO_SUCH_QUERY = 1957  # KILL QUERY ID of a statement that has ended
# What a user without the PROCESS privilege gets for the lock-wait tables.
_NOT_ALLOWED = (errors.ER_SPECIFIC_ACCESS_DENIED_ERROR, errors.ER_ACCESS_DENIED_ERROR,
                errors.ER_TABLEACCESS_DENIED_ERROR, errors.ER_COLUMNACCESS_DENIED_ERROR)

# Waiting thread, blocking thread, and the waiting statement's query id.
_LOCK_WAITS = (
    "SELECT r.trx_mysql_thread_id, b.trx_mysql_thread_id, p.QUERY_ID "
    "FROM information_schema.INNODB_LOCK_WAITS w "
    "JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id "
    "JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id "
    "JOIN information_schema.PROCESSLIST p ON p.ID = r.trx_mysql_thread_id")


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
    try:
        await sweep_forever("Cross-shard deadlock check", interval, detector.check, log)
    finally:
        detector.close()


class Detector:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.allowed = True  # False once a data source refused to show its lock waits
        self.conns: dict[str, BackendConnection] = {}  # the detector's own, one per data source

    async def _run(self, ds: str, sql: str) -> list[tuple[Any, ...]]:
        conn = self.conns.get(ds)
        if conn is None or conn.broken:
            pool = self.server.pools[ds]
            endpoint = pool.endpoint
            conn = BackendConnection(ds, endpoint.host, endpoint.port, 0, role="deadlock-check")
            await conn.connect(endpoint.user, endpoint.password, None, pool.config.connect_timeout_s)
            self.conns[ds] = conn
        try:
            return (await conn.query(sql)).rows
        except (ConnectionError, OSError):
            conn.close()
            raise

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()

    async def check(self) -> float | None:
        """One look; while transactions wait for each other, ask for the next one soon."""
        if not self.allowed:
            return None
        waits = await self._look()
        for cycle, victim in _victims(waits, lambda session: session.sharded.txn.started_at):
            await self._end(victim, cycle, waits)
        return RECHECK_WHILE_WAITING_S if waits else None

    async def _look(self) -> Waits:
        sessions = [s for s in self.server.sessions if _in_transaction(s)]
        if len(sessions) < 2 or not any(len(s.sharded.conns) >= 2 for s in sessions):
            return {}  # a cycle within one data source is its server's to break
        return await self._waits(sessions)

    async def _waits(self, sessions: list[Session]) -> Waits:
        """Which transaction waits for which: waiter -> {holder: (data source, waiting statement)}.
        A transaction that ended or began while the waits were read is left out: its waits
        may belong to another transaction."""
        owner: dict[tuple[str, int], Session] = {}
        began = {session: session.sharded.txn.started_at for session in sessions}
        for session in sessions:
            for ds, (conn, _) in session.sharded.conns.items():
                owner[(ds, conn.thread_id)] = session
        waits: Waits = {}
        for ds in sorted({ds for ds, _ in owner}):
            try:
                rows = await self._run(ds, _LOCK_WAITS)
            except BackendError as exc:
                if exc.err.code in _NOT_ALLOWED:
                    log.warning("cross-shard deadlock detection is off: data source %s does not show its lock "
                                "waits to the sidecar's user (%s); grant it PROCESS to have deadlocks across data "
                                "sources ended at once rather than by innodb_lock_wait_timeout", ds, exc.err.message)
                    self.allowed = False
                    return {}
                raise
            for waiting, blocking, query_id in rows:
                waiter = owner.get((ds, int(waiting)))
                holder = owner.get((ds, int(blocking)))
                if waiter is not None and holder is not None and waiter is not holder:
                    waits.setdefault(waiter, {})[holder] = (ds, int(query_id))
        changed = {s for s in sessions if not _in_transaction(s) or s.sharded.txn.started_at != began[s]}
        if changed:
            waits = {waiter: {holder: edge for holder, edge in holders.items() if holder not in changed}
                     for waiter, holders in waits.items() if waiter not in changed}
        return waits

    async def _end(self, victim: Session, cycle: list[Session], waits: Waits) -> None:
        """Interrupt the waiting statement of ``victim``, the youngest transaction of ``cycle``."""
        after = cycle[(cycle.index(victim) + 1) % len(cycle)]
        ds, query_id = waits[victim][after]
        executor = victim.sharded
        executor.deadlock_victim = True
        try:
            await self._run(ds, f"KILL QUERY ID {query_id:d}")
        except BackendError as exc:
            if exc.err.code != ER_NO_SUCH_QUERY:
                raise
            executor.deadlock_victim = False
            return  # that statement ended meanwhile: no deadlock after all
        log.warning("deadlock across data sources: sessions %s wait for each other; rolled back session %d's "
                    "transaction (the youngest), waiting on %s", ", ".join(str(s.connection_id) for s in cycle),
                    victim.connection_id, ds)
        metrics.CROSS_SHARD_DEADLOCKS.inc()


def _in_transaction(session: Session) -> bool:
    """A LOCAL or XA transaction holding connections (BASE ones hold no locks across statements)."""
    executor = session.sharded
    return executor.in_transaction and executor.txn.base is None and bool(executor.conns)


def _victims(waits: dict[Any, dict[Any, Any]], age: Callable[[Any], float]) -> list[tuple[list[Any], Any]]:
    """Who to roll back so that no cycle is left: the youngest of a shortest cycle, taken out
    of the graph, until no cycle is left; each with the cycle it broke, in waiting order.
    Shortest first, because the transactions of a short cycle usually sit on the longer ones
    too: ending one of them ends several cycles (listing every cycle to choose better would
    not do: a tangle of sixty transactions can hold thousands)."""
    graph = {node: set(holders) for node, holders in waits.items()}
    chosen = []
    while (cycle := _shortest_cycle(graph)) is not None:
        victim = max(cycle, key=age)
        chosen.append((cycle, victim))
        del graph[victim]
        for holders in graph.values():
            holders.discard(victim)
    return chosen


def _shortest_cycle(graph: dict[Any, set[Any]]) -> list[Any] | None:
    """A shortest cycle of the graph in waiting order, or None: from each node, a
    breadth-first walk until it comes back."""
    best: list[Any] | None = None
    for start in graph:
        came_from: dict[Any, Any] = {}
        frontier = [start]
        while frontier and start not in came_from:
            following = []
            for node in frontier:
                for nxt in graph.get(node, ()):
                    if nxt not in came_from:
                        came_from[nxt] = node
                        following.append(nxt)
            frontier = following
        if start in came_from:
            cycle = [start]
            node = came_from[start]
            while node != start:
                cycle.append(node)
                node = came_from[node]
            cycle.reverse()  # each waits for the next, and the last (start) for the first
            cycle = [cycle[-1], *cycle[:-1]]  # start first
            if best is None or len(cycle) < len(best):
                best = cycle
                if len(best) == 2:
                    break
    return best
