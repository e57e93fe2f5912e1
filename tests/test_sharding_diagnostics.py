"""SHOW WARNINGS, SHOW ERRORS and the warning count on a sharded database, through real
drivers: a statement's warnings are those of every shard it ran on, whichever path served
it (the fast lane, the command loop, a transaction, a merge, a write, a prepared
statement), and they last until the next statement, as on one server."""

from __future__ import annotations

import mysql.connector
import pymysql
import pytest

from conftest import fast_lane_counts, free_port, sandbox_proxy_config, start_proxy, stop_proxy

LOGICAL = "shop_diag"
RULES = {
    "data_sources": ["ds_0", "ds_1"],
    "tables": {
        "dg_item": {
            "actual_data_nodes": "ds_${0..1}.dg_item",
            "database_strategy": {"columns": ["id"], "algorithm": "two"},
        },
    },
    "algorithms": {"two": {"type": "MOD", "props": {"sharding_count": 2}}},
}
ROWS = [(i, i * 10, f"n{i}") for i in range(1, 9)]
DIVISION_BY_ZERO = ("Warning", 1365, "Division by 0")


def _truncated(name: str) -> tuple[str, int, str]:
    return ("Warning", 1292, f"Truncated incorrect INTEGER value: '{name}'")


@pytest.fixture(scope="module")
def diag_proxy(sandbox, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("diag")
    config = sandbox_proxy_config(sandbox, workdir, {LOGICAL: {"sharding": RULES}})
    for ds in config["data_sources"].values():
        # One connection per data source: a connection kept for reading warnings and
        # never given back would stall the next statement (acquire timeout: 1040).
        ds["pool"] = {"max_size": 1, "acquire_timeout_s": 3}
    config["metrics"] = {"host": "127.0.0.1", "port": free_port()}
    proxy = start_proxy(config, workdir)
    proxy.metrics_port = config["metrics"]["port"]
    with proxy.connect(database=LOGICAL) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS dg_item")
        cur.execute("CREATE TABLE dg_item (id INT PRIMARY KEY, small TINYINT, name VARCHAR(4))")
        cur.executemany("INSERT INTO dg_item (id, small, name) VALUES (%s, %s, %s)", ROWS)
    try:
        yield proxy
    finally:
        with proxy.connect(database=LOGICAL) as conn, conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS dg_item")
        stop_proxy(proxy)


def _rows(cur, sql: str) -> list[tuple]:
    cur.execute(sql)
    return list(cur.fetchall())


def _warning_count(cur) -> int:
    return cur._result.warning_count  # PyMySQL keeps the count of the last response here


def test_point_read_warnings_last_until_the_next_statement(diag_proxy):
    with diag_proxy.connect(database=LOGICAL) as conn, conn.cursor() as cur:
        for _ in range(3):  # the fast lane serves repeats of a point shape
            assert _rows(cur, "SELECT id, CAST(name AS SIGNED) FROM dg_item WHERE id = 3") == [(3, 0)]
            assert _warning_count(cur) == 1
            assert _rows(cur, "SHOW WARNINGS") == [_truncated("n3")]
            assert _rows(cur, "SHOW WARNINGS") == [_truncated("n3")]  # it does not clear them
            assert _rows(cur, "SHOW COUNT(*) WARNINGS") == [(1,)]
            assert _rows(cur, "SELECT @@warning_count") == [(1,)]
            assert _rows(cur, "SELECT @@session.error_count") == [(0,)]
            assert _rows(cur, "SHOW ERRORS") == []
            assert [d[0] for d in cur.description] == ["Level", "Code", "Message"]
            assert _rows(cur, "SELECT id FROM dg_item WHERE id = 4") == [(4,)]
            assert _warning_count(cur) == 0
            assert _rows(cur, "SHOW WARNINGS") == []


def test_warnings_of_every_shard_add_up(diag_proxy):
    with diag_proxy.connect(database=LOGICAL) as conn, conn.cursor() as cur:
        assert len(_rows(cur, "SELECT id, 1/0 FROM dg_item ORDER BY id")) == len(ROWS)
        assert _warning_count(cur) == len(ROWS)  # one per row, from both shards
        assert _rows(cur, "SHOW WARNINGS") == [DIVISION_BY_ZERO] * len(ROWS)
        assert _rows(cur, "SHOW COUNT(*) WARNINGS") == [(len(ROWS),)]
        assert _rows(cur, "SHOW WARNINGS LIMIT 2") == [DIVISION_BY_ZERO] * 2
        assert _rows(cur, "SHOW WARNINGS LIMIT 7, 5") == [DIVISION_BY_ZERO]


def test_write_warnings_in_a_transaction_and_out(diag_proxy, sandbox):
    with diag_proxy.connect(database=LOGICAL) as conn, conn.cursor() as cur:
        cur.execute("SET sql_mode = ''")  # truncation is a warning, not an error
        cur.execute("UPDATE dg_item SET name = 'longer' WHERE id IN (1, 2)")
        assert cur.rowcount == 2 and _warning_count(cur) == 2
        warnings = _rows(cur, "SHOW WARNINGS")
        assert sorted(w[:2] for w in warnings) == [("Warning", 1265), ("Warning", 1265)]
        assert all("'name'" in w[2] for w in warnings)
        conn.begin()
        # (1/0 warns only under ERROR_FOR_DIVISION_BY_ZERO, which sql_mode '' leaves out)
        assert _rows(cur, "SELECT id, CAST('12x' AS SIGNED) FROM dg_item WHERE id = 5") == [(5, 12)]  # command loop
        assert _rows(cur, "SHOW WARNINGS") == [("Warning", 1292, "Truncated incorrect INTEGER value: '12x'")]
        cur.execute("UPDATE dg_item SET small = 1000 WHERE id = 6")
        assert _rows(cur, "SHOW WARNINGS") == [("Warning", 1264, "Out of range value for column 'small' at row 1")]
        conn.rollback()
        assert _rows(cur, "SHOW WARNINGS") == []
    assert _rows_on(sandbox, "ds_0", "SELECT name, small FROM dg_item WHERE id = 6") == [("n6", 60)]


def _rows_on(sandbox, ds: str, sql: str) -> list[tuple]:
    with sandbox.admin_connect(ds, database=f"shop_{ds}") as conn, conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def test_errors_are_kept_as_error_rows(diag_proxy):
    with diag_proxy.connect(database=LOGICAL) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as failed:
            cur.execute("SELECT nosuch FROM dg_item WHERE id = 1")  # the shard's error, relayed
        assert failed.value.args[0] == 1054
        assert _rows(cur, "SHOW ERRORS") == [("Error", 1054, failed.value.args[1])]
        assert _rows(cur, "SHOW WARNINGS") == [("Error", 1054, failed.value.args[1])]
        assert _rows(cur, "SHOW COUNT(*) ERRORS") == [(1,)]
        with pytest.raises(pymysql.err.ProgrammingError) as failed:
            cur.execute("SELECT id FROM dg_item WHERE")  # the proxy's own parse error
        assert failed.value.args[0] == 1064
        assert _rows(cur, "SHOW ERRORS") == [("Error", 1064, failed.value.args[1])]
        with pytest.raises(pymysql.err.OperationalError):
            cur.execute("SELECT nosuch FROM dg_item")  # every shard, collected
        assert [e[:2] for e in _rows(cur, "SHOW ERRORS")] == [("Error", 1054)]
        assert _rows(cur, "SELECT id FROM dg_item WHERE id = 1") == [(1,)]
        assert _rows(cur, "SHOW ERRORS") == []


@pytest.mark.filterwarnings("ignore::UserWarning")  # the driver echoes each warning as one
def test_prepared_statements_and_a_driver_that_fetches_warnings(diag_proxy):
    conn = mysql.connector.connect(host=diag_proxy.host, port=diag_proxy.port, user="app", password="app",
                                   database=LOGICAL, autocommit=True, use_pure=True, get_warnings=True)
    try:
        cur = conn.cursor(prepared=True)
        for i in (1, 2, 7):  # routed to either shard, on the point path
            cur.execute("SELECT id, 1/0 FROM dg_item WHERE id = ?", (i,))
            assert cur.fetchall() == [(i, None)]
            assert cur.warnings == [DIVISION_BY_ZERO]
        cur.execute("SELECT id, 1/0 FROM dg_item WHERE id > ?", (0,))  # both shards, merged
        assert len(cur.fetchall()) == len(ROWS)
        assert cur.warnings == [DIVISION_BY_ZERO] * len(ROWS)
        cur.execute("SELECT id FROM dg_item WHERE id = ?", (3,))
        cur.fetchall()
        assert cur.warning_count == 0  # (the driver leaves .warnings as they were)
        text = conn.cursor()
        text.execute("SELECT id, 1/0 FROM dg_item WHERE id = 8")
        assert text.fetchall() == [(8, None)] and text.warnings == [DIVISION_BY_ZERO]
    finally:
        conn.close()


def test_warnings_read_by_the_fast_lane_return_the_connection(diag_proxy):
    """With one backend connection per data source, statements with warnings back to back,
    without SHOW WARNINGS in between, and from two clients by turns: each one's warnings
    are read on the connection before it serves anyone else."""
    with diag_proxy.connect(database=LOGICAL) as first, diag_proxy.connect(database=LOGICAL) as second:
        before = fast_lane_counts(diag_proxy.metrics_port)
        for n in range(20):
            for conn in (first, second):
                with conn.cursor() as cur:
                    key = n % 8 + 1
                    assert _rows(cur, f"SELECT id, CAST(name AS SIGNED) FROM dg_item WHERE id = {key}") == [(key, 0)]
        # The lane served them (it leaves a statement to the command loop only while the
        # warnings of the session's previous one are still being read).
        assert fast_lane_counts(diag_proxy.metrics_port)["served"] - before["served"] >= 20
        for conn in (first, second):
            with conn.cursor() as cur:
                assert _rows(cur, "SHOW WARNINGS") == [_truncated("n4")]
                assert _rows(cur, "SELECT id FROM dg_item WHERE id = 2") == [(2,)]
