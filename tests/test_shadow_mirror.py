"""Read mirroring through a real sidecar: a share of production reads also runs on a mirror
target; the client only ever sees production's result, and a dead or hanging mirror never
fails or slows a client statement. Outcomes are read from the Prometheus endpoint."""

from __future__ import annotations

import socket
import time
import urllib.request

import pymysql
import pytest

from conftest import free_port, sandbox_proxy_config, start_proxy, stop_proxy

PLACES = {"mir_src": ("ds_0", "shd_mir"), "mir_dst": ("ds_1", "shd_mir_copy"),
          "mir_sh_0": ("ds_0", "shd_msh0"), "mir_sh_1": ("ds_1", "shd_msh1")}
ITEM = "CREATE TABLE {name} (id INT PRIMARY KEY, name VARCHAR(20), qty INT)"


def run(sandbox, server: str, database: str | None, *statements: str) -> list[tuple]:
    with sandbox.admin_connect(server, database=database) as conn, conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)
        return list(cur.fetchall())


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


def client_results(proxy, database: str, reads: list[str]) -> list:
    out = []
    with proxy.connect(database=database) as conn, conn.cursor() as cur:
        for sql in reads:
            try:
                cur.execute(sql)
                out.append(sorted(cur.fetchall()) if "ORDER BY" not in sql else list(cur.fetchall()))
            except pymysql.err.MySQLError as exc:
                out.append(exc.args[0])
    return out


def production_results(sandbox, reads: list[str]) -> list:
    out = []
    with sandbox.admin_connect("ds_0", database="shd_mir") as conn, conn.cursor() as cur:
        for sql in reads:
            try:
                cur.execute(sql)
                out.append(sorted(cur.fetchall()) if "ORDER BY" not in sql else list(cur.fetchall()))
            except pymysql.err.MySQLError as exc:
                out.append(exc.args[0])
    return out


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


@pytest.mark.parametrize("database, kind", [("shd_mirror_dead", "connect"), ("shd_mirror_hang", "timeout")])
def test_dead_or_hanging_mirror_never_fails_or_slows_clients(env, sandbox, database, kind):
    proxy, port = env
    expected = production_results(sandbox, READS[:4])
    slowest = 0.0
    with proxy.connect(database=database) as conn, conn.cursor() as cur:
        for i in range(60):
            sql = READS[i % 4]
            began = time.perf_counter()
            cur.execute(sql)
            rows = sorted(cur.fetchall()) if "ORDER BY" not in sql else list(cur.fetchall())
            slowest = max(slowest, time.perf_counter() - began)
            assert rows == expected[i % 4]
    assert slowest < 0.4, slowest  # a statement waiting for the mirror would take its 0.5 s timeout or more
    target = "mir_dead" if kind == "connect" else "mir_hang"
    wait_for(lambda: metric(port, "dbmesh_mirror_errors_total", database=database, target=target, kind=kind) > 0)
    if kind == "timeout":  # one worker stuck on a 0.5 s timeout, a queue of 4: the rest was dropped
        assert metric(port, "dbmesh_mirror_dropped_total", database=database, reason="queue_full") > 30
