"""HINT sharding: the shard comes from a SQL comment or a session setting, not a column."""

from __future__ import annotations

import pymysql
import pytest

from conftest import sandbox_proxy_config, start_proxy, stop_proxy

RULES = {
    "data_sources": ["ds_0", "ds_1"],
    "tables": {
        "hint_log": {
            "actual_data_nodes": "ds_${0..1}.hint_log_${0..1}",
            "database_strategy": {"algorithm": "db_hint"},
            "table_strategy": {"algorithm": "table_hint"},
        },
    },
    "algorithms": {"db_hint": {"type": "HINT"}, "table_hint": {"type": "HINT"}},
}


@pytest.fixture(scope="module")
def hint_proxy(sandbox, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hint")
    config = sandbox_proxy_config(sandbox, workdir, {"shop_hint": {"sharding": RULES}})
    proxy = start_proxy(config, workdir)
    with proxy.connect(database="shop_hint") as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS hint_log")
        cur.execute("CREATE TABLE hint_log (id INT PRIMARY KEY, msg VARCHAR(20))")
    try:
        yield proxy
    finally:
        with proxy.connect(database="shop_hint") as conn, conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS hint_log")
        stop_proxy(proxy)


def rows_on(sandbox, ds: str, table: str) -> list[tuple]:
    with sandbox.admin_connect(ds, database=f"shop_{ds}") as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, msg FROM {table} ORDER BY id")
        return list(cur.fetchall())


def test_comment_hint_routes_writes_and_reads(hint_proxy, sandbox):
    with hint_proxy.connect(database="shop_hint") as conn, conn.cursor() as cur:
        cur.execute("INSERT /* dbmesh:db_hint=1 table_hint=0 */ INTO hint_log (id, msg) VALUES (1, 'a')")
        cur.execute("INSERT /* dbmesh:db_hint=0 table_hint=1 */ INTO hint_log (id, msg) VALUES (2, 'b')")
        assert rows_on(sandbox, "ds_1", "hint_log_0") == [(1, "a")]
        assert rows_on(sandbox, "ds_0", "hint_log_1") == [(2, "b")]
        cur.execute("SELECT /* dbmesh:db_hint=1 table_hint=0 */ id, msg FROM hint_log")
        assert cur.fetchall() == ((1, "a"),)
        cur.execute("SELECT id FROM hint_log ORDER BY id")  # no hint: every node
        assert cur.fetchall() == ((1,), (2,))


def test_session_hint(hint_proxy, sandbox):
    with hint_proxy.connect(database="shop_hint") as conn, conn.cursor() as cur:
        cur.execute("SET dbmesh_db_hint = 1")
        cur.execute("SET dbmesh_table_hint = 1")
        cur.execute("INSERT INTO hint_log (id, msg) VALUES (3, 'c')")
        assert rows_on(sandbox, "ds_1", "hint_log_1") == [(3, "c")]
        cur.execute("SELECT id FROM hint_log")
        assert cur.fetchall() == ((3,),)
        cur.execute("SET dbmesh_db_hint = NULL")
        cur.execute("SET dbmesh_table_hint = NULL")
        with pytest.raises(pymysql.err.MySQLError) as info:
            cur.execute("INSERT INTO hint_log (id, msg) VALUES (4, 'd')")
        assert info.value.args[0] == 1235 and "hint" in info.value.args[1]
