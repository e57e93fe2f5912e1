"""The MariaDB sandbox against real servers: startup, replication, restarts, config, shutdown.

The tests share one sandbox (module scope) and run in file order; the last one shuts it down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from dbmesh.config import load_config
from dbmesh.sandbox import (
    APP_PASSWORD,
    APP_USER,
    MAX_SOCKET_PATH,
    Sandbox,
    socket_path_for,
    write_config,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("sandbox"))
    try:
        sb.up(shards=2, replicas_per_shard=1)
        yield sb
    finally:
        sb.down()  # keep the datadirs and logs for post-mortems; pytest prunes old tmp dirs


def tcp_connect(sb: Sandbox, name: str, database: str | None = None) -> pymysql.connections.Connection:
    inst = sb.instances[name]
    return pymysql.connect(host=inst.host, port=inst.port, user=APP_USER, password=APP_PASSWORD,
                           database=database, autocommit=True, connect_timeout=5)


def query(sb: Sandbox, name: str, sql: str, database: str | None = None) -> list[tuple[Any, ...]]:
    conn = tcp_connect(sb, name, database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


def rows_on(sb: Sandbox, name: str, sql: str) -> Callable[[], bool]:
    return lambda: bool(query(sb, name, sql))


def status_of(sb: Sandbox, name: str) -> dict[str, Any]:
    return next(row for row in sb.status() if row["name"] == name)


def test_every_server_answers_over_tcp(sandbox: Sandbox) -> None:
    assert sorted(sandbox.instances) == ["ds_0", "ds_0_replica_0", "ds_1", "ds_1_replica_0"]
    for name, inst in sandbox.instances.items():
        port, read_only = query(sandbox, name, "SELECT @@port, @@read_only")[0]
        assert port == inst.port and port not in (3306, 3307, 3308)
        assert read_only == (1 if inst.role == "replica" else 0)
    # The default databases exist on each primary and have replicated to its replica.
    for shard, dbs in (("ds_0", {"demo", "shop_ds_0"}), ("ds_1", {"shop_ds_1"})):
        for name in (shard, f"{shard}_replica_0"):
            assert dbs <= {row[0] for row in query(sandbox, name, "SHOW DATABASES")}


def test_write_on_primary_is_seen_on_replica(sandbox: Sandbox) -> None:
    query(sandbox, "ds_0", "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20))", "shop_ds_0")
    query(sandbox, "ds_0", "INSERT INTO items VALUES (1, 'apple')", "shop_ds_0")
    eventually(rows_on(sandbox, "ds_0_replica_0", "SELECT 1 FROM shop_ds_0.items WHERE id = 1"))
    # Shards are independent: nothing leaks to the other shard.
    assert not query(sandbox, "ds_1", "SHOW TABLES", "shop_ds_1")


def test_status_reports_replication_running(sandbox: Sandbox) -> None:
    rows = {row["name"]: row for row in sandbox.status()}
    assert all(row["alive"] and row["pid"] for row in rows.values())
    for name in ("ds_0_replica_0", "ds_1_replica_0"):
        row = rows[name]
        assert row["role"] == "replica"
        assert row["replicating_from"] == name.split("_replica")[0]
        assert (row["Slave_IO_Running"], row["Slave_SQL_Running"]) == ("Yes", "Yes")
        assert row["Seconds_Behind_Master"] is not None
    assert rows["ds_0"]["role"] == "primary"


def test_replica_refuses_writes_from_app_user(sandbox: Sandbox) -> None:
    with pytest.raises(pymysql.err.OperationalError) as err:
        query(sandbox, "ds_1_replica_0", "CREATE TABLE nope (id INT)", "shop_ds_1")
    assert err.value.args[0] == 1290  # ER_OPTION_PREVENTS_STATEMENT (read_only)


def test_stopped_replication_lags_then_catches_up(sandbox: Sandbox) -> None:
    sandbox.stop_replication("ds_0_replica_0")
    assert status_of(sandbox, "ds_0_replica_0")["Slave_SQL_Running"] == "No"
    query(sandbox, "ds_0", "INSERT INTO items VALUES (2, 'pear')", "shop_ds_0")
    time.sleep(0.3)
    assert not query(sandbox, "ds_0_replica_0", "SELECT 1 FROM shop_ds_0.items WHERE id = 2")
    sandbox.start_replication("ds_0_replica_0")
    eventually(rows_on(sandbox, "ds_0_replica_0", "SELECT 1 FROM shop_ds_0.items WHERE id = 2"))


def test_restarted_replica_resumes_replication(sandbox: Sandbox) -> None:
    port = sandbox.instances["ds_1_replica_0"].port
    sandbox.stop_instance("ds_1_replica_0")
    assert status_of(sandbox, "ds_1_replica_0")["alive"] is False
    query(sandbox, "ds_1", "CREATE TABLE orders (id INT PRIMARY KEY)", "shop_ds_1")
    query(sandbox, "ds_1", "INSERT INTO orders VALUES (7)", "shop_ds_1")
    sandbox.start_instance("ds_1_replica_0")
    assert sandbox.instances["ds_1_replica_0"].port == port
    eventually(rows_on(sandbox, "ds_1_replica_0", "SELECT 1 FROM shop_ds_1.orders WHERE id = 7"))
    row = status_of(sandbox, "ds_1_replica_0")
    assert (row["Slave_IO_Running"], row["Slave_SQL_Running"]) == ("Yes", "Yes")


def test_replica_reconnects_to_restarted_primary(sandbox: Sandbox) -> None:
    sandbox.stop_instance("ds_0")
    sandbox.start_instance("ds_0")
    query(sandbox, "ds_0", "INSERT INTO items VALUES (3, 'plum')", "shop_ds_0")
    eventually(rows_on(sandbox, "ds_0_replica_0", "SELECT 1 FROM shop_ds_0.items WHERE id = 3"))


def test_create_databases_replicates(sandbox: Sandbox) -> None:
    sandbox.create_databases({"ds_1": ["extra_db"]})  # waits for replicas by default
    assert query(sandbox, "ds_1_replica_0", "SHOW DATABASES LIKE 'extra_db'")
    assert "extra_db" in sandbox.info().shard("ds_1").databases


def test_state_file_lets_another_process_find_the_servers(sandbox: Sandbox) -> None:
    loaded = Sandbox.load(sandbox.workdir)
    assert {n: i.port for n, i in loaded.instances.items()} == {
        n: i.port for n, i in sandbox.instances.items()}
    assert all(row["alive"] for row in loaded.status())
    with loaded.admin_connect("ds_0_replica_0") as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER(), @@autocommit")
        assert cur.fetchone() == ("root@localhost", 1)


def test_write_config_validates(sandbox: Sandbox, tmp_path: Path) -> None:
    info = sandbox.info()
    config = load_config(write_config(info, tmp_path / "dbmesh.yaml", listen_port=13307))
    assert config.listen.port == 13307
    assert config.default_data_source == "demo_ds"
    assert config.databases["demo"].data_source == "demo_ds"
    for ds_name, shard_name, database in (("demo_ds", "ds_0", "demo"), ("ds_0", "ds_0", "shop_ds_0"),
                                          ("ds_1", "ds_1", "shop_ds_1")):
        ds, shard = config.data_sources[ds_name], info.shard(shard_name)
        assert (ds.port, ds.database, ds.user) == (shard.port, database, APP_USER)
        assert [(r.name, r.port) for r in ds.replicas] == [(r.name, r.port) for r in shard.replicas]


def test_socket_path_falls_back_for_deep_workdirs(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    path = socket_path_for(deep, "ds_0_replica_0")
    assert len(str(path)) <= MAX_SOCKET_PATH
    assert socket_path_for(Path("/tmp/x"), "ds_0") == Path("/tmp/x/ds_0/mariadbd.sock")


def _sandbox_processes(workdir: Path) -> list[int]:
    """Live processes whose command line mentions the sandbox's workdir."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "mariadbd" in cmdline and str(workdir) in cmdline:
                pids.append(int(proc.name))
    return pids


def test_down_stops_every_server(sandbox: Sandbox) -> None:
    assert len(_sandbox_processes(sandbox.workdir)) == 4
    sandbox.down()
    assert _sandbox_processes(sandbox.workdir) == []
    assert not any(row["alive"] for row in sandbox.status())
    sandbox.down()  # idempotent
