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
