"""Read/write splitting over real MariaDB replication: routing, read-your-writes, health."""

from __future__ import annotations

import copy
import os
import signal
import threading
import time

import pymysql
import pytest
import yaml

from conftest import free_port, start_proxy, stop_proxy
from dbmesh import sandbox as sandbox_mod

REPLICA = "ds_0_replica_0"


@pytest.fixture(scope="module")
def server_ids(sandbox):
    ids = {}
    for name in ("ds_0", REPLICA, "ds_1", "ds_1_replica_0"):
        with sandbox.admin_connect(name) as conn, conn.cursor() as cur:
            cur.execute("SELECT @@server_id")
            ids[name] = cur.fetchone()[0]
    return ids


@pytest.fixture(scope="module")
def rw_proxy(sandbox, tmp_path_factory):
    path = tmp_path_factory.mktemp("rw") / "rw.yaml"
    sandbox_mod.write_config(sandbox.info(), path, listen_port=0)
    config = yaml.safe_load(path.read_text())
    config["data_sources"]["demo_ds"]["read_write"] = {
        "health_check_interval_s": 0.2, "window_s": 1.0, "max_replication_lag_s": 2}
    gtid = copy.deepcopy(config["data_sources"]["demo_ds"])
    gtid["read_write"] = {"health_check_interval_s": 0.2, "read_your_writes": "gtid"}
    config["data_sources"]["demo_gtid"] = gtid
    config["databases"]["demo_gtid"] = {"data_source": "demo_gtid"}
    config["metrics"] = {"host": "127.0.0.1", "port": free_port()}
    config["databases"]["shop_rw"] = {"sharding": {
        "data_sources": ["ds_0", "ds_1"],
        "tables": {"rw_order": {"actual_data_nodes": "ds_${0..1}.rw_order",
                                "database_strategy": {"columns": ["user_id"], "algorithm": "two"}}},
        "algorithms": {"two": {"type": "MOD", "props": {"sharding_count": 2}}}}}
    for name in ("ds_0", "ds_1"):
        config["data_sources"][name]["read_write"] = {"health_check_interval_s": 0.2, "window_s": 1.0}
    proxy = start_proxy(config, path.parent)
    with proxy.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS rw_items (id INT PRIMARY KEY, v INT)")
        cur.execute("REPLACE INTO rw_items VALUES (1, 1)")
    sandbox.sync_replicas()
    wait_until(lambda: server_id_of(proxy) is not None)
    try:
        yield proxy
    finally:
        stop_proxy(proxy)


def wait_until(condition, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def server_id_of(proxy, sql="SELECT @@server_id", database="demo"):
    with proxy.connect(database=database) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def test_routing_rules(rw_proxy, server_ids):
    primary, replica = server_ids["ds_0"], server_ids[REPLICA]
    wait_until(lambda: server_id_of(rw_proxy) == replica)
    assert server_id_of(rw_proxy, "SELECT @@server_id FROM rw_items LIMIT 1 FOR UPDATE") == primary
    assert server_id_of(rw_proxy, "SELECT @@server_id FROM rw_items LIMIT 1 LOCK IN SHARE MODE") == primary
    assert server_id_of(rw_proxy, "SELECT /* dbmesh:primary */ @@server_id") == primary
    assert server_id_of(rw_proxy, f"SELECT /* dbmesh:replica={REPLICA} */ @@server_id") == replica
    with rw_proxy.connect() as conn, conn.cursor() as cur:
        cur.execute("SET dbmesh_route = 'primary'")
        cur.execute("SELECT @@server_id")
        assert cur.fetchone()[0] == primary
        cur.execute("SET dbmesh_route = 'auto'")
        cur.execute("SELECT @@server_id")
        assert cur.fetchone()[0] == replica
        cur.execute("UPDATE rw_items SET v = v + 1 WHERE id = 1")
        cur.execute("SELECT @@server_id, v FROM rw_items WHERE id = 1")
        sid, _ = cur.fetchone()
        assert sid == primary, "read-your-writes window keeps reads on the primary after a write"
    with rw_proxy.connect() as conn, conn.cursor() as cur:
        conn.begin()
        cur.execute("SELECT @@server_id")
        assert cur.fetchone()[0] == primary, "reads inside a transaction go to the primary"
        conn.commit()


def test_read_your_writes_by_gtid(rw_proxy, sandbox):
    with rw_proxy.connect(database="demo_gtid") as conn, conn.cursor() as cur:
        for value in range(20):
            cur.execute("UPDATE rw_items SET v = %s WHERE id = 1", (value,))
            cur.execute("SELECT v FROM rw_items WHERE id = 1")
            assert cur.fetchone()[0] == value


def test_replica_down_and_back(rw_proxy, sandbox, server_ids):
    replica = server_ids[REPLICA]
    errors: list[Exception] = []
    reads = 0
    stop = threading.Event()
    measuring = threading.Event()
    lock = threading.Lock()

    def reader():
        nonlocal reads
        conn = rw_proxy.connect()
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    try:
                        cur.execute("SELECT v FROM rw_items WHERE id = 1")
                        assert cur.fetchone() is not None
                        with lock:
                            reads += 1
                    except Exception as exc:  # noqa: BLE001 - counted and reported
                        if measuring.is_set():
                            errors.append(exc)
                        conn.close()
                        conn = rw_proxy.connect()
                        cur = conn.cursor()
        finally:
            conn.close()

    threads = [threading.Thread(target=reader) for _ in range(50)]
    for t in threads:
        t.start()
    try:
        sandbox.stop_instance(REPLICA)
        time.sleep(1.0)  # detection interval (0.2 s probes) with margin
        measuring.set()
        before = reads
        time.sleep(2.0)
        assert reads > before, "reads keep being served from the primary"
        assert not errors, f"reads failed after detection: {errors[:3]}"
        sandbox.start_instance(REPLICA)
        sandbox.sync_replicas()
        wait_until(lambda: server_id_of(rw_proxy) == replica)
        assert not errors
    finally:
        stop.set()
        for t in threads:
            t.join(30)


def test_read_in_flight_on_a_replica_that_dies_is_served_by_the_primary(rw_proxy, sandbox, server_ids):
    """Nothing of the answer reached the client when the replica died: the read is served
    again, by the primary, and the client sees no error."""
    primary, replica = server_ids["ds_0"], server_ids[REPLICA]
    wait_until(lambda: server_id_of(rw_proxy) == replica)
    answer: dict[str, object] = {}

    def slow_read() -> None:
        try:
            answer["row"] = server_id_of(rw_proxy, "SELECT @@server_id FROM rw_items WHERE SLEEP(2) = 0")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            answer["error"] = exc

    def sleeping_on_replica() -> bool:
        with sandbox.admin_connect(REPLICA) as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%SLEEP(2)%' "
                        "AND INFO NOT LIKE '%PROCESSLIST%'")
            return cur.fetchone()[0] > 0

    reader = threading.Thread(target=slow_read)
    reader.start()
    try:
        wait_until(sleeping_on_replica)
        os.kill(sandbox.instances[REPLICA].pid, signal.SIGKILL)  # no goodbye packet: the socket just ends
        reader.join(30)
        assert answer == {"row": primary}, answer
    finally:
        reader.join(30)
        sandbox.start_instance(REPLICA)
        sandbox.sync_replicas()
        wait_until(lambda: server_id_of(rw_proxy) == replica)


def test_lagging_replica_is_excluded(rw_proxy, sandbox, server_ids):
    primary = server_ids["ds_0"]
    sandbox.stop_replication(REPLICA)
    try:
        with rw_proxy.connect() as conn, conn.cursor() as cur:
            cur.execute("UPDATE rw_items SET v = 1000 WHERE id = 1")
        wait_until(lambda: server_id_of(rw_proxy) == primary)
        time.sleep(1.2)  # past the read-your-writes window of any earlier write
        with rw_proxy.connect() as conn, conn.cursor() as cur:
            for _ in range(20):
                cur.execute("SELECT @@server_id, v FROM rw_items WHERE id = 1")
                assert cur.fetchone() == (primary, 1000), "a stopped replica's stale data is never read"
    finally:
        sandbox.start_replication(REPLICA)
        sandbox.sync_replicas()


def test_dead_replica_hint_falls_back(rw_proxy, server_ids):
    with pytest.raises(pymysql.err.OperationalError) as info:
        server_id_of(rw_proxy, "SELECT /* dbmesh:replica=nope */ @@server_id")
    assert "no replica named 'nope'" in str(info.value)


def test_metrics_per_data_source_and_role(rw_proxy):
    import re
    import urllib.request

    config = yaml.safe_load(rw_proxy.config_path.read_text())
    server_id_of(rw_proxy, "SELECT /* dbmesh:primary */ 1")
    server_id_of(rw_proxy, f"SELECT /* dbmesh:replica={REPLICA} */ 1")
    url = f"http://127.0.0.1:{config['metrics']['port']}/metrics"

    def value(pattern: str) -> float:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        m = re.search(pattern + r" ([0-9.e+-]+)", text)
        assert m, f"{pattern} not in metrics"
        return float(m.group(1))

    # An earlier test stopped replication; the probe puts the replica back shortly.
    wait_until(lambda: value(rf'dbmesh_replica_healthy\{{data_source="demo_ds",replica="{REPLICA}"\}}') == 1)

    assert value(r'dbmesh_backend_statements_total\{data_source="demo_ds",role="primary"\}') > 0
    assert value(rf'dbmesh_backend_statements_total\{{data_source="demo_ds",role="{REPLICA}"\}}') > 0
    assert value(rf'dbmesh_replica_healthy\{{data_source="demo_ds",replica="{REPLICA}"\}}') == 1
    assert value(rf'dbmesh_replica_lag_seconds\{{data_source="demo_ds",replica="{REPLICA}"\}}') >= 0
    assert value("dbmesh_client_sessions") >= 0


def test_sharded_reads_use_each_shards_replica(rw_proxy, sandbox, server_ids):
    with rw_proxy.connect(database="shop_rw") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS rw_order (id INT PRIMARY KEY, user_id INT)")
        cur.execute("REPLACE INTO rw_order (id, user_id) VALUES (1, 0), (2, 1)")
    sandbox.sync_replicas()
    time.sleep(1.1)  # past the read-your-writes window

    def shard_server(user_id: int, hint: str = "") -> int:
        return server_id_of(rw_proxy, f"SELECT {hint} @@server_id FROM rw_order WHERE user_id = {user_id}",
                            database="shop_rw")

    wait_until(lambda: shard_server(0) == server_ids[REPLICA])
    assert shard_server(1) == server_ids["ds_1_replica_0"]
    assert shard_server(1, "/* dbmesh:primary */") == server_ids["ds_1"]
    with rw_proxy.connect(database="shop_rw") as conn, conn.cursor() as cur:
        cur.execute("SELECT @@server_id FROM rw_order WHERE user_id = 1 FOR UPDATE")
        assert cur.fetchone()[0] == server_ids["ds_1"]
        cur.execute("UPDATE rw_order SET id = id WHERE user_id = 1")
        cur.execute("SELECT @@server_id FROM rw_order WHERE user_id = 1")
        assert cur.fetchone()[0] == server_ids["ds_1"], "read-your-writes on the shard just written"
        cur.execute("DROP TABLE rw_order")


def test_sharded_prepared_reads_use_each_shards_replica(rw_proxy, sandbox, server_ids):
    """Server-side prepared reads follow the text rules: a point read, an IN list routed by
    its values, and a statement bound into literals each go to their shard's replica; a
    locking read, a dbmesh:primary hint, a transaction and a fresh write keep the primary."""
    import mysql.connector

    with rw_proxy.connect(database="shop_rw") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS rw_order (id INT PRIMARY KEY, user_id INT)")
        cur.execute("REPLACE INTO rw_order (id, user_id) VALUES (1, 0), (2, 1), (3, 3)")
    sandbox.sync_replicas()
    time.sleep(1.1)  # past the read-your-writes window
    conn = mysql.connector.connect(host=rw_proxy.host, port=rw_proxy.port, user="app", password="app",
                                   database="shop_rw", use_pure=True, autocommit=True)
    cur = conn.cursor(prepared=True)

    def server(sql: str, params: tuple) -> int:
        cur.execute(sql, params)
        rows = cur.fetchall()
        assert rows, sql
        return rows[0][0]

    point = "SELECT @@server_id, id FROM rw_order WHERE user_id = ?"
    try:
        wait_until(lambda: server(point, (0,)) == server_ids[REPLICA])
        for _ in range(5):  # the first execute prepares on the replica; the next ones reuse it
            assert server(point, (1,)) == server_ids["ds_1_replica_0"]
            assert server(point, (0,)) == server_ids[REPLICA]
        assert server("SELECT @@server_id, id FROM rw_order WHERE user_id IN (?, ?)", (1, 3)) == \
            server_ids["ds_1_replica_0"]
        assert server("SELECT @@server_id, ? FROM rw_order WHERE user_id = ?", ("x", 1)) == \
            server_ids["ds_1_replica_0"]
        assert server("SELECT @@server_id FROM rw_order WHERE user_id = ? FOR UPDATE", (1,)) == server_ids["ds_1"]
        assert server("SELECT /* dbmesh:primary */ @@server_id FROM rw_order WHERE user_id = ?", (1,)) == \
            server_ids["ds_1"]
        conn.start_transaction()
        assert server(point, (1,)) == server_ids["ds_1"]
        conn.commit()
        cur.execute("UPDATE rw_order SET id = id WHERE user_id = ?", (1,))
        assert server(point, (1,)) == server_ids["ds_1"], "read-your-writes on the shard just written"
        assert server(point, (0,)) == server_ids[REPLICA], "the other shard was not written"
    finally:
        cur.close()
        conn.close()
    with rw_proxy.connect(database="shop_rw") as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE rw_order")
