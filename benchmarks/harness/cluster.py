"""The MariaDB side: a two-shard sandbox, the sysbench data, and dbmesh configs over it.

Physical layout:

- ``ds_0`` database ``sbtest``: the whole ``sbtest1`` table (``sysbench oltp_common prepare``);
  the direct, pass-through and HAProxy runs use it.
- ``ds_0`` and ``ds_1`` database ``sbtest_sharded``: the same rows split by ``id % 2``
  (even ids on ds_0, odd on ds_1), same table definition; the sharded run uses them.
- ``ds_0`` database ``sbtest_odd``: the odd rows once more. The ``sharded-1s`` run uses it
  and ``ds_0.sbtest_sharded`` as its two data sources: the same sharding on one server, so
  the figure shows the proxy's cost of sharding without the cost of a second MariaDB
  server sharing the machine's two cores with the first.

Both proxies present the logical database ``sbtest``, so sysbench runs unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql

from dbmesh import sandbox as sandbox_mod
from harness import sysbench

DIRECT_DB = "sbtest"
SHARDED_DB = "sbtest_sharded"
ODD_DB = "sbtest_odd"
LOGICAL_DB = "sbtest"
TABLE = "sbtest1"
PROXY_USER = "bench"
PROXY_PASSWORD = "bench"
COPY_BATCH = 1000


def start_sandbox(workdir: Path) -> sandbox_mod.Sandbox:
    """Two shard primaries, no replicas, with the benchmark databases created."""
    sandbox_mod.ensure_mariadb_installed()
    box = sandbox_mod.Sandbox(workdir / "sandbox")
    box.up(shards=2, replicas_per_shard=0,
           databases={"ds_0": [DIRECT_DB, SHARDED_DB, ODD_DB], "ds_1": [SHARDED_DB]})
    return box


def direct_endpoint(box: sandbox_mod.Sandbox, relay_port: int | None = None) -> sysbench.Endpoint:
    """``ds_0.sbtest`` with the MariaDB account; through a TCP relay on ``relay_port`` if given."""
    shard = box.info().shard("ds_0")
    host, port = (shard.host, shard.port) if relay_port is None else ("127.0.0.1", relay_port)
    return sysbench.Endpoint(host, port, sandbox_mod.APP_USER, sandbox_mod.APP_PASSWORD, DIRECT_DB)


def proxy_endpoint(port: int) -> sysbench.Endpoint:
    return sysbench.Endpoint("127.0.0.1", port, PROXY_USER, PROXY_PASSWORD, LOGICAL_DB)


def _scalar(box: sandbox_mod.Sandbox, sql: str) -> object:
    """The one value ``sql`` returns on ds_0."""
    with box.admin_connect("ds_0") as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def mariadb_version(box: sandbox_mod.Sandbox) -> str:
    return str(_scalar(box, "SELECT VERSION()"))


def set_lock_wait_timeout(box: sandbox_mod.Sandbox, seconds: int) -> None:
    """``SET GLOBAL innodb_lock_wait_timeout`` on both servers (connections opened later get it)."""
    for shard in ("ds_0", "ds_1"):
        with box.admin_connect(shard) as conn, conn.cursor() as cur:
            cur.execute("SET GLOBAL innodb_lock_wait_timeout = %s", (seconds,))


def lock_wait_timeout(box: sandbox_mod.Sandbox) -> int:
    return int(_scalar(box, "SELECT @@GLOBAL.innodb_lock_wait_timeout"))


def load_data(box: sandbox_mod.Sandbox, table_size: int) -> None:
    """sysbench's table in ``ds_0.sbtest``, then its rows split over the two shards."""
    sysbench.prepare(direct_endpoint(box), table_size)
    source = box.admin_connect("ds_0", database=DIRECT_DB)
    try:
        ddl = _create_table_sql(source)
        _copy_rows(source, box, "ds_0", SHARDED_DB, ddl, remainder=0)
        _copy_rows(source, box, "ds_1", SHARDED_DB, ddl, remainder=1)
        _copy_rows(source, box, "ds_0", ODD_DB, ddl, remainder=1)
    finally:
        source.close()


def _create_table_sql(conn: pymysql.connections.Connection) -> str:
    with conn.cursor() as cur:
        cur.execute(f"SHOW CREATE TABLE {TABLE}")
        return str(cur.fetchone()[1])


def _rows_with_remainder(conn: pymysql.connections.Connection, remainder: int) -> Iterator[list[tuple[Any, ...]]]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT id, k, c, pad FROM {TABLE} WHERE MOD(id, 2) = %s ORDER BY id", (remainder,))
        while batch := cur.fetchmany(COPY_BATCH):
            yield list(batch)


def _copy_rows(source: pymysql.connections.Connection, box: sandbox_mod.Sandbox, shard: str, database: str,
               ddl: str, remainder: int) -> None:
    target = box.admin_connect(shard, database=database)
    try:
        with target.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
            cur.execute(ddl)
            for batch in _rows_with_remainder(source, remainder):
                cur.executemany(f"INSERT INTO {TABLE} (id, k, c, pad) VALUES (%s, %s, %s, %s)", batch)
    finally:
        target.close()


def row_counts(box: sandbox_mod.Sandbox) -> dict[str, int]:
    """Rows per physical table, to show the load went where it should."""
    counts = {}
    for shard, database in (("ds_0", DIRECT_DB), ("ds_0", SHARDED_DB), ("ds_1", SHARDED_DB), ("ds_0", ODD_DB)):
        conn = box.admin_connect(shard, database=database)
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT COUNT(*) FROM {TABLE}")
                counts[f"{shard}.{database}.{TABLE}"] = int(cur.fetchone()[0])
        finally:
            conn.close()
    return counts


# ---------------------------------------------------------------------------------------
# dbmesh configs (``listen`` is filled in by services.start_dbmesh)


def data_source_config(box: sandbox_mod.Sandbox, shard: str, database: str) -> dict[str, Any]:
    info = box.info().shard(shard)
    return {"host": info.host, "port": info.port, "user": sandbox_mod.APP_USER,
            "password": sandbox_mod.APP_PASSWORD, "database": database}


def proxy_config(data_sources: dict[str, Any], database: dict[str, Any]) -> dict[str, Any]:
    return {
        "users": [{"name": PROXY_USER, "password": PROXY_PASSWORD, "databases": ["*"]}],
        "default_data_source": "ds_0",
        "data_sources": data_sources,
        "databases": {LOGICAL_DB: database},
    }


def passthrough_config(box: sandbox_mod.Sandbox) -> dict[str, Any]:
    """Logical ``sbtest`` passed through to ``ds_0.sbtest``; pool settings are the defaults."""
    return proxy_config({"ds_0": data_source_config(box, "ds_0", DIRECT_DB)}, {"data_source": "ds_0"})


def sharding_rules() -> dict[str, Any]:
    """``sbtest1`` split over ds_0 and ds_1 by ``id % 2``; database strategy only."""
    return {
        "data_sources": ["ds_0", "ds_1"],
        "default_data_source": "ds_0",
        "tables": {
            TABLE: {
                "actual_data_nodes": "ds_${0..1}." + TABLE,
                "database_strategy": {"columns": ["id"], "algorithm": "by_id"},
            },
        },
        "algorithms": {"by_id": {"type": "MOD", "props": {"sharding_count": 2}}},
    }


def sharded_config(box: sandbox_mod.Sandbox) -> dict[str, Any]:
    data_sources = {name: data_source_config(box, name, SHARDED_DB) for name in ("ds_0", "ds_1")}
    return proxy_config(data_sources, {"sharding": sharding_rules()})


def sharded_one_server_config(box: sandbox_mod.Sandbox) -> dict[str, Any]:
    """The sharded configuration with both data sources on ds_0's server: ds_0 is its
    ``sbtest_sharded`` (even ids), ds_1 its ``sbtest_odd`` (odd ids)."""
    data_sources = {"ds_0": data_source_config(box, "ds_0", SHARDED_DB),
                    "ds_1": data_source_config(box, "ds_0", ODD_DB)}
    return proxy_config(data_sources, {"sharding": sharding_rules()})
