"""Prometheus figures of the sidecar, served over HTTP when `metrics.port` is configured.

With several worker processes (``server.workers``) prometheus_client runs in multiprocess
mode: the supervisor sets PROMETHEUS_MULTIPROC_DIR for the workers, each writes its figures
there, and the supervisor alone serves /metrics, summing counters over workers. A gauge's
``multiprocess_mode`` says how workers' values combine (ignored in a single process).
"""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, start_http_server


class Tally:
    """A counter child counted on the per-statement path as a plain int (``tally.count +=
    1``); flush_tallies() moves the increase into prometheus_client, whose inc() takes a
    lock every time. Flushed before every scrape of a single process and every second by
    each worker (so a multi-worker scrape may lag by up to a second)."""

    __slots__ = ("count", "_flushed", "_child")

    def __init__(self, child) -> None:
        self.count = 0
        self._flushed = 0
        self._child = child


_TALLIES: dict[tuple[int, tuple[str, ...]], Tally] = {}
_FLUSH_LOCK = threading.Lock()  # the scrape runs on the HTTP server's thread


def tally(counter: Counter, *labels: str) -> Tally:
    """The Tally of ``counter``'s child with these label values (one per child)."""
    key = (id(counter), labels)
    found = _TALLIES.get(key)
    if found is None:
        found = _TALLIES[key] = Tally(counter.labels(*labels))
    return found


def flush_tallies() -> None:
    with _FLUSH_LOCK:
        for counted in list(_TALLIES.values()):
            count = counted.count
            if count != counted._flushed:
                counted._child.inc(count - counted._flushed)
                counted._flushed = count


class _FlushBeforeScrape:
    """Registered before every metric below, so a scrape collects it first."""

    def collect(self):
        flush_tallies()
        return []


REGISTRY.register(_FlushBeforeScrape())

BACKEND_STATEMENTS = Counter("dbmesh_backend_statements_total",
                             "Commands sent to a backend server", ["data_source", "role"])
BACKEND_ERRORS = Counter("dbmesh_backend_errors_total",
                         "Backend commands answered with an error or lost", ["data_source", "role"])
FAST_LANE_COMMANDS = Counter("dbmesh_fast_lane_commands_total",
                             "COM_QUERY and COM_STMT_EXECUTE commands offered to the fast lane: served "
                             "from the event loop's callbacks, or declined (the session's command loop "
                             "serves them)", ["outcome"])
# Each worker probes replicas itself: the worst lag any worker saw, and healthy only if every
# worker has the replica in rotation.
REPLICA_LAG = Gauge("dbmesh_replica_lag_seconds", "Seconds_Behind_Master at the last probe (-1: unknown)",
                    ["data_source", "replica"], multiprocess_mode="livemax")
REPLICA_HEALTHY = Gauge("dbmesh_replica_healthy", "1 when the replica is in read rotation",
                        ["data_source", "replica"], multiprocess_mode="livemin")
CLIENT_SESSIONS = Gauge("dbmesh_client_sessions", "Client connections open now", multiprocess_mode="livesum")
POOL_CONNECTIONS = Gauge("dbmesh_pool_connections", "Backend connections open (idle or lent)",
                         ["data_source", "role"], multiprocess_mode="livesum")


def serve(host: str, port: int) -> None:
    start_http_server(port, addr=host)


def serve_workers(host: str, port: int, directory: str) -> None:
    """/metrics of all worker processes together (the supervisor's, in multiprocess mode:
    the workers write their figures to ``directory``)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    start_http_server(port, addr=host, registry=registry)

# Shadow traffic (shadow/, dbmesh/frontend/shadow.py) and read mirroring (dbmesh/mirror.py).
SHADOW_STATEMENTS = Counter("dbmesh_shadow_statements_total",
                            "Statements routed to shadow tables or data sources", ["database", "reason"])
SHADOW_REFUSED = Counter("dbmesh_shadow_refused_total",
                         "Statements refused because they mix shadow and production targets", ["database"])
SHADOW_DDL = Counter("dbmesh_shadow_ddl_total", "DDL statements applied to shadow tables", ["database", "outcome"])
MIRROR_STATEMENTS = Counter("dbmesh_mirror_statements_total", "Production reads mirrored and run on the target",
                            ["database", "target"])
MIRROR_MATCHES = Counter("dbmesh_mirror_matches_total", "Mirrored reads whose result equals production's",
                         ["database", "target"])
MIRROR_MISMATCHES = Counter("dbmesh_mirror_mismatches_total", "Mirrored reads whose result differs from production's",
                            ["database", "target"])
MIRROR_ERRORS = Counter("dbmesh_mirror_errors_total", "Mirrored reads that failed on the target",
                        ["database", "target", "kind"])
MIRROR_DROPPED = Counter("dbmesh_mirror_dropped_total", "Production reads not mirrored (queue full, result too large)",
                         ["database", "target", "reason"])

# Transactions across data sources (dbmesh/frontend/transactions.py, txn/).
GLOBAL_TRANSACTIONS = Counter("dbmesh_global_transactions_total",
                              "Transactions that wrote or read on a sharded database, by how they ended "
                              "(commit, rollback, failed)", ["database", "mode", "outcome"])
BASE_NEEDS_ATTENTION = Counter("dbmesh_base_needs_attention_total",
                               "BASE rollbacks not applied because another writer changed a row meanwhile",
                               ["database"])
# Every worker reads the same log tables: the highest count any live worker saw.
BASE_NEEDS_ATTENTION_NOW = Gauge("dbmesh_base_needs_attention_transactions",
                                 "BASE transactions waiting for an operator (status needs_attention) on a log "
                                 "data source, at the last recovery sweep or admin statement",
                                 ["log_data_source"], multiprocess_mode="livemax")
BASE_OPERATOR_ACTIONS = Counter("dbmesh_base_operator_actions_total",
                                "DBMESH RETRY / FORGET TRANSACTION statements by what they ended with",
                                ["action", "outcome"])
BASE_RETRIES = Counter("dbmesh_base_statement_retries_total",
                       "BASE statements run again: a row held by another global transaction, or a deadlock",
                       ["database", "reason"])
CROSS_SHARD_DEADLOCKS = Counter("dbmesh_cross_shard_deadlocks_total",
                                "Deadlocks across data sources the sidecar found and ended (a transaction rolled "
                                "back with error 1213)")
TRANSACTIONS_RECOVERED = Counter("dbmesh_transactions_recovered_total",
                                 "BASE transactions or prepared XA branches a recovery finished (at start or by "
                                 "a sweep)",
                                 ["mode", "outcome"])
