"""Prometheus figures of the sidecar, served over HTTP when `metrics.port` is configured."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

BACKEND_STATEMENTS = Counter("dbmesh_backend_statements_total",
                             "Commands sent to a backend server", ["data_source", "role"])
BACKEND_ERRORS = Counter("dbmesh_backend_errors_total",
                         "Backend commands answered with an error or lost", ["data_source", "role"])
REPLICA_LAG = Gauge("dbmesh_replica_lag_seconds", "Seconds_Behind_Master at the last probe (-1: unknown)",
                    ["data_source", "replica"])
REPLICA_HEALTHY = Gauge("dbmesh_replica_healthy", "1 when the replica is in read rotation",
                        ["data_source", "replica"])
CLIENT_SESSIONS = Gauge("dbmesh_client_sessions", "Client connections open now")
POOL_CONNECTIONS = Gauge("dbmesh_pool_connections", "Backend connections open (idle or lent)",
                         ["data_source", "role"])


def serve(host: str, port: int) -> None:
    start_http_server(port, addr=host)

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
