"""Read mirroring through a real sidecar: a share of production reads also runs on a mirror
target; the client only ever sees production's result, and a dead or hanging mirror never
fails or slows a client statement. Outcomes are read from the Prometheus endpoint."""

from __future__ import annotations

import socket
import time
import urllib.request

import mysql.connector
import pymysql
import pytest

from conftest import free_port, sandbox_proxy_config, start_proxy, stop_proxy
from conftest import run_on as run

PLACES = {"mir_src": ("ds_0", "shd_mir"), "mir_dst": ("ds_1", "shd_mir_copy"),
          "mir_sh_0": ("ds_0", "shd_msh0"), "mir_sh_1": ("ds_1", "shd_msh1")}
ITEM = "CREATE TABLE {name} (id INT PRIMARY KEY, name VARCHAR(20), qty INT)"


@pytest.fixture(scope="module")
def env(sandbox, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mirror")
    hang = socket.socket()  # accepts connections (kernel backlog) and never answers: a hanging server
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)
    databases = {
        "shd_mirror": {"data_source": "mir_src", "mirror": {"data_source": "mir_dst", "share": 1.0}},
        "shd_mirror_dead": {"data_source": "mir_src", "mirror": {"data_source": "mir_dead", "share": 1.0}},
        "shd_mirror_hang": {"data_source": "mir_src", "mirror": {"data_source": "mir_hang", "share": 1.0,
                                                                  "queue_size": 4, "workers": 1, "timeout_s": 0.5}},
        # Hangs longer than any test: no mirrored read ever finishes while the test runs.
        "shd_mirror_stuck": {"data_source": "mir_src", "mirror": {"data_source": "mir_hang", "share": 1.0,
                                                                   "queue_size": 4, "workers": 1, "timeout_s": 600}},
        "shd_mirror_half": {"data_source": "mir_src", "mirror": {"data_source": "mir_dst", "share": 0.5}},
        "shd_mirror_shard": {
            "sharding": {"data_sources": ["mir_sh_0", "mir_sh_1"],
                         "tables": {"sh_mitem": {"actual_data_nodes": "mir_sh_${0..1}.sh_mitem",
                                                 "database_strategy": {"columns": ["id"], "algorithm": "two"}}},
                         "algorithms": {"two": {"type": "MOD", "props": {"sharding_count": 2}}}},
            "mirror": {"data_source": "mir_dst"}},
        "shd_nomirror": {"data_source": "mir_src"},
    }
    config = sandbox_proxy_config(sandbox, workdir, databases)
    base = config["data_sources"]
    for name, (server, database) in PLACES.items():
        base[name] = {**base[server], "database": database}
    base["mir_dead"] = {**base["ds_0"], "port": free_port(), "database": "gone"}
    base["mir_hang"] = {**base["ds_0"], "port": hang.getsockname()[1], "database": "gone",
                        "pool": {"connect_timeout_s": 30}}
    metrics_port = free_port()
    config["metrics"] = {"host": "127.0.0.1", "port": metrics_port}
    for server, database in PLACES.values():
        run(sandbox, server, None, f"DROP DATABASE IF EXISTS {database}", f"CREATE DATABASE {database}")
    rows = ", ".join(f"({i}, 'item{i % 7}', {i * 3 % 11})" for i in range(1, 61))
    for server, database, table in (("ds_0", "shd_mir", "sh_item"), ("ds_1", "shd_mir_copy", "sh_item"),
                                    ("ds_1", "shd_mir_copy", "sh_mitem")):
        run(sandbox, server, database, ITEM.format(name=table), f"INSERT INTO {table} VALUES {rows}")
    for i in (0, 1):
        server, database = PLACES[f"mir_sh_{i}"]
        part = ", ".join(f"({n}, 'item{n % 7}', {n * 3 % 11})" for n in range(1, 61) if n % 2 == i)
        run(sandbox, server, database, ITEM.format(name="sh_mitem"), f"INSERT INTO sh_mitem VALUES {part}")
    proxy = start_proxy(config, workdir)
    try:
        yield proxy, metrics_port
    finally:
        stop_proxy(proxy)
        hang.close()


def metric(port: int, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


READS = [
    "SELECT * FROM sh_item WHERE id = 5",
    "SELECT id, name FROM sh_item WHERE id BETWEEN 10 AND 20 ORDER BY id DESC",
    "SELECT name, COUNT(*), SUM(qty) FROM sh_item GROUP BY name",
    "SELECT * FROM sh_item",
    "SELECT nope FROM sh_item",  # an error on both sides is a match
]


def results(conn: pymysql.Connection, reads: list[str] | list[tuple[str, tuple]]) -> list:
    """Rows of each read (sorted unless it has ORDER BY), or its error code."""
    out = []
    with conn, conn.cursor() as cur:
        for read in reads:
            sql, args = read if isinstance(read, tuple) else (read, None)
            try:
                cur.execute(sql, args)
                rows = [tuple(r) for r in cur.fetchall()]
                out.append(rows if "ORDER BY" in sql else sorted(rows))
            except pymysql.err.MySQLError as exc:
                out.append(exc.args[0])
    return out


def client_results(proxy, database: str, reads: list[str]) -> list:
    return results(proxy.connect(database=database), reads)


def production_results(sandbox, reads: list[str] | list[tuple[str, tuple]]) -> list:
    return results(sandbox.admin_connect("ds_0", database="shd_mir"), reads)


def test_mirror_compares_and_never_changes_what_the_client_gets(env, sandbox):
    proxy, port = env
    labels = {"database": "shd_mirror", "target": "mir_dst"}
    assert client_results(proxy, "shd_mirror", READS) == production_results(sandbox, READS)
    wait_for(lambda: metric(port, "dbmesh_mirror_matches_total", **labels) == len(READS))
    assert metric(port, "dbmesh_mirror_mismatches_total", **labels) == 0
    # The mirror drifts: mismatches are counted, the client still gets production's rows.
    run(sandbox, "ds_1", "shd_mir_copy", "UPDATE sh_item SET qty = qty + 1 WHERE id = 5")
    assert client_results(proxy, "shd_mirror", READS) == production_results(sandbox, READS)
    wait_for(lambda: metric(port, "dbmesh_mirror_statements_total", **labels) == 2 * len(READS))
    wait_for(lambda: metric(port, "dbmesh_mirror_mismatches_total", **labels) == 3)  # id 5 in reads 1, 3, 4
    run(sandbox, "ds_1", "shd_mir_copy", "UPDATE sh_item SET qty = qty - 1 WHERE id = 5")
    # Reads inside a transaction and writes are not mirrored.
    with proxy.connect(database="shd_mirror") as conn, conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT * FROM sh_item WHERE id = 1")
        cur.execute("COMMIT")
        cur.execute("UPDATE sh_item SET qty = qty WHERE id = 1")
    time.sleep(0.3)
    assert metric(port, "dbmesh_mirror_statements_total", **labels) == 2 * len(READS)


def test_share_of_reads(env):
    proxy, port = env
    with proxy.connect(database="shd_mirror_half") as conn, conn.cursor() as cur:
        for i in range(400):
            cur.execute(f"SELECT qty FROM sh_item WHERE id = {i % 60 + 1}")
    labels = {"database": "shd_mirror_half", "target": "mir_dst"}
    wait_for(lambda: metric(port, "dbmesh_mirror_matches_total", **labels) ==
             metric(port, "dbmesh_mirror_statements_total", **labels) > 0)
    assert 120 < metric(port, "dbmesh_mirror_statements_total", **labels) < 280


def test_sharded_reads_are_mirrored_with_merged_results(env, sandbox):
    proxy, port = env
    reads = ["SELECT * FROM sh_mitem ORDER BY qty, id", "SELECT name, SUM(qty) FROM sh_mitem GROUP BY name",
             "SELECT * FROM sh_mitem WHERE id = 7"]
    direct = []
    with sandbox.admin_connect("ds_1", database="shd_mir_copy") as conn, conn.cursor() as cur:
        for sql in reads:
            cur.execute(sql)
            direct.append(list(cur.fetchall()) if "ORDER" in sql else sorted(cur.fetchall()))
    got = []
    with proxy.connect(database="shd_mirror_shard") as conn, conn.cursor() as cur:
        for sql in reads:
            cur.execute(sql)
            got.append(list(cur.fetchall()) if "ORDER" in sql else sorted(cur.fetchall()))
    assert got == direct
    labels = {"database": "shd_mirror_shard", "target": "mir_dst"}
    wait_for(lambda: metric(port, "dbmesh_mirror_matches_total", **labels) == 3)
    run(sandbox, "ds_1", "shd_mir_copy", "DELETE FROM sh_mitem WHERE id = 60")
    with proxy.connect(database="shd_mirror_shard") as conn, conn.cursor() as cur:
        cur.execute(reads[0])
        assert len(cur.fetchall()) == 60
    wait_for(lambda: metric(port, "dbmesh_mirror_mismatches_total", **labels) == 1)


def run_reads(proxy, sandbox, database: str, count: int) -> None:
    """``count`` reads through the proxy, each answered with production's rows."""
    expected = production_results(sandbox, READS[:4])
    with proxy.connect(database=database) as conn, conn.cursor() as cur:
        for i in range(count):
            sql = READS[i % 4]
            cur.execute(sql)
            rows = sorted(cur.fetchall()) if "ORDER BY" not in sql else list(cur.fetchall())
            assert rows == expected[i % 4]


@pytest.mark.parametrize("database, kind", [("shd_mirror_dead", "connect"), ("shd_mirror_hang", "timeout")])
def test_dead_or_hanging_mirror_never_fails_clients(env, sandbox, database, kind):
    proxy, port = env
    run_reads(proxy, sandbox, database, 60)
    target = "mir_dead" if kind == "connect" else "mir_hang"
    wait_for(lambda: metric(port, "dbmesh_mirror_errors_total", database=database, target=target, kind=kind) > 0)
    if kind == "timeout":  # one worker stuck on a 0.5 s timeout, a queue of 4: the rest was dropped
        assert metric(port, "dbmesh_mirror_dropped_total", database=database, reason="queue_full") > 30


def test_clients_never_wait_for_the_mirror(env, sandbox):
    """The mirror target never answers (and its timeout outlasts the test): every client read
    still completes with production's rows while not one mirrored read has finished, so no
    client statement waited for the mirror. The bounded queue drops what does not fit."""
    proxy, port = env
    labels = {"database": "shd_mirror_stuck", "target": "mir_hang"}
    run_reads(proxy, sandbox, "shd_mirror_stuck", 60)
    conn = mysql.connector.connect(host=proxy.host, port=proxy.port, user="app", password="app",
                                   database="shd_mirror_stuck", autocommit=True, use_pure=True)
    cur = conn.cursor(prepared=True)
    for i in range(20):
        cur.execute("SELECT name FROM sh_item WHERE id = ?", (i + 1,))
        assert cur.fetchall() == [(f"item{(i + 1) % 7}",)]
    conn.close()
    finished = sum(metric(port, name, **labels) for name in ("dbmesh_mirror_matches_total",
                                                             "dbmesh_mirror_mismatches_total",
                                                             "dbmesh_mirror_errors_total"))
    assert finished == 0
    # One read is stuck in the worker, four wait in the queue; the other 75 were dropped.
    assert metric(port, "dbmesh_mirror_dropped_total", reason="queue_full", **labels) >= 75


def prepared_results(proxy, database: str, reads: list[tuple[str, tuple]]) -> list:
    out = []
    conn = mysql.connector.connect(host=proxy.host, port=proxy.port, user="app", password="app", database=database,
                                   autocommit=True, use_pure=True)
    cur = conn.cursor(prepared=True)
    for sql, args in reads:
        try:
            cur.execute(sql, args)
            rows = [tuple(r) for r in cur.fetchall()]
            out.append(rows if "ORDER BY" in sql else sorted(rows))
        except mysql.connector.Error as exc:
            out.append(exc.errno)
    conn.close()
    return out


PREPARED_READS = [
    ("SELECT * FROM sh_item WHERE id = ?", (5,)),
    ("SELECT id, name, qty * 1.5 FROM sh_item WHERE id BETWEEN ? AND ? ORDER BY id DESC", (10, 20)),
    ("SELECT name, COUNT(*), SUM(qty) FROM sh_item WHERE qty > ? GROUP BY name", (2,)),
    ("SELECT id, name FROM sh_item WHERE name = ?", ("item3",)),
    # Fails when executed (the subquery returns several rows): an error on both sides is a match.
    ("SELECT id FROM sh_item WHERE id = ? AND qty = (SELECT qty FROM sh_item)", (1,)),
]


def test_prepared_reads_are_mirrored(env, sandbox):
    """Prepared reads are production reads too: they run on the mirror as prepared statements
    with the client's parameters, and their binary rows are compared by value."""
    proxy, port = env
    labels = {"database": "shd_mirror", "target": "mir_dst"}
    before = {name: metric(port, f"dbmesh_mirror_{name}_total", **labels) for name in ("matches", "mismatches")}
    direct = production_results(sandbox, [(sql.replace("?", "%s"), args) for sql, args in PREPARED_READS])
    assert prepared_results(proxy, "shd_mirror", PREPARED_READS) == direct
    wait_for(lambda: metric(port, "dbmesh_mirror_matches_total", **labels) == before["matches"] + len(PREPARED_READS))
    run(sandbox, "ds_1", "shd_mir_copy", "UPDATE sh_item SET name = 'drift' WHERE id = 12")
    try:
        assert prepared_results(proxy, "shd_mirror", PREPARED_READS) == direct
        # id 12 is in the rows of reads 2 and 3
        wait_for(lambda: metric(port, "dbmesh_mirror_mismatches_total", **labels) == before["mismatches"] + 2)
    finally:
        run(sandbox, "ds_1", "shd_mir_copy", "UPDATE sh_item SET name = 'item5' WHERE id = 12")
    # Inside a transaction, prepared reads are not mirrored.
    sent = metric(port, "dbmesh_mirror_statements_total", **labels)
    conn = mysql.connector.connect(host=proxy.host, port=proxy.port, user="app", password="app",
                                   database="shd_mirror", use_pure=True)
    cur = conn.cursor(prepared=True)
    conn.start_transaction()
    cur.execute("SELECT qty FROM sh_item WHERE id = ?", (3,))
    cur.fetchall()
    conn.commit()
    conn.close()
    time.sleep(0.3)
    assert metric(port, "dbmesh_mirror_statements_total", **labels) == sent


def test_sharded_prepared_reads_are_mirrored(env):
    """On a sharded database, one-shard reads (relayed raw) and merged reads (encoded by
    dbmesh) are both mirrored and match the mirror's own answer."""
    proxy, port = env
    labels = {"database": "shd_mirror_shard", "target": "mir_dst"}
    before = metric(port, "dbmesh_mirror_matches_total", **labels)
    mismatches = metric(port, "dbmesh_mirror_mismatches_total", **labels)
    reads = [("SELECT * FROM sh_mitem WHERE id = ?", (7,)),
             ("SELECT * FROM sh_mitem WHERE qty > ? ORDER BY qty, id", (4,)),
             ("SELECT name, SUM(qty), MAX(id) FROM sh_mitem WHERE id < ? GROUP BY name", (40,))]
    got = prepared_results(proxy, "shd_mirror_shard", reads)
    assert got[0] == [(7, "item0", 10)] and len(got[1]) > 10 and len(got[2]) == 7
    wait_for(lambda: metric(port, "dbmesh_mirror_matches_total", **labels) == before + len(reads))
    assert metric(port, "dbmesh_mirror_mismatches_total", **labels) == mismatches
