"""Server-side prepared statements on a sharded database: routed at execute time from the
bound values, answered in the binary protocol (raw relay for one unit, merged otherwise)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import mysql.connector
import pytest

from conftest import sandbox_proxy_config, start_proxy, stop_proxy

RULES = {
    "data_sources": ["ds_0", "ds_1"],
    "tables": {
        "ps_order": {
            "actual_data_nodes": "ds_${0..1}.ps_order_${0..1}",
            "database_strategy": {"columns": ["user_id"], "algorithm": "two"},
            "table_strategy": {"columns": ["order_id"], "algorithm": "two"},
            "key_generator": {"column": "order_id", "algorithm": "snow"},
        },
    },
    "algorithms": {"two": {"type": "MOD", "props": {"sharding_count": 2}}},
    "key_generators": {"snow": {"type": "SNOWFLAKE", "props": {"worker_id": 7}}},
}


@pytest.fixture(scope="module")
def ps_proxy(sandbox, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ps")
    config = sandbox_proxy_config(sandbox, workdir, {"shop_ps": {"sharding": RULES}})
    proxy = start_proxy(config, workdir)
    conn = connect(proxy)
    cur = conn.cursor()
    cur.execute("DROP TABLE IF EXISTS ps_order")
    cur.execute("CREATE TABLE ps_order (order_id BIGINT PRIMARY KEY, user_id INT NOT NULL, amount DECIMAL(10,2), "
                "status VARCHAR(20), created DATETIME(6), day DATE, f DOUBLE, note TEXT)")
    conn.close()
    try:
        yield proxy
    finally:
        conn = connect(proxy)
        conn.cursor().execute("DROP TABLE IF EXISTS ps_order")
        conn.close()
        stop_proxy(proxy)


def connect(proxy):
    return mysql.connector.connect(host=proxy.host, port=proxy.port, user="app", password="app",
                                   database="shop_ps", autocommit=True, use_pure=True)


def test_prepared_insert_select_update_delete(ps_proxy, sandbox):
    conn = connect(ps_proxy)
    ps = conn.cursor(prepared=True)
    created = dt.datetime(2026, 1, 2, 3, 4, 5, 678901)
    rows = [(i, i % 5, Decimal(i) * Decimal("1.25"), f"s{i % 3}", created, dt.date(2026, 1, i % 28 + 1),
             i / 7, None if i % 4 else "note") for i in range(1, 41)]
    for row in rows:
        ps.execute("INSERT INTO ps_order (order_id, user_id, amount, status, created, day, f, note) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        assert ps.rowcount == 1

    # Point lookup by both sharding keys: one unit, binary rows relayed from the backend.
    ps.execute("SELECT * FROM ps_order WHERE order_id = ? AND user_id = ?", (7, 2))
    assert ps.fetchall() == [rows[6]]

    # Scatter with ORDER BY and LIMIT: merged, encoded here.
    ps.execute("SELECT order_id, amount, created, day, f, note FROM ps_order WHERE user_id IN (?, ?) "
               "ORDER BY order_id DESC LIMIT ?, ?", (1, 3, 2, 5))
    expected = sorted((r for r in rows if r[1] in (1, 3)), key=lambda r: -r[0])[2:7]
    assert ps.fetchall() == [(r[0], r[2], r[4], r[5], r[6], r[7]) for r in expected]

    ps.execute("SELECT status, COUNT(*), SUM(amount), MAX(order_id) FROM ps_order WHERE order_id > ? "
               "GROUP BY status ORDER BY status", (10,))
    groups: dict[str, list] = {}
    for r in rows:
        if r[0] > 10:
            groups.setdefault(r[3], []).append(r)
    assert ps.fetchall() == [(s, len(g), sum(r[2] for r in g), max(r[0] for r in g))
                             for s, g in sorted(groups.items())]

    ps.execute("UPDATE ps_order SET amount = ? WHERE order_id = ? AND user_id = ?", (Decimal("99.50"), 7, 2))
    assert ps.rowcount == 1
    ps.execute("DELETE FROM ps_order WHERE user_id = ?", (4,))
    assert ps.rowcount == sum(1 for r in rows if r[1] == 4)
    ps.execute("SELECT COUNT(*) FROM ps_order", ())
    assert ps.fetchall() == [(40 - sum(1 for r in rows if r[1] == 4),)]

    # Each row sits on the shard and table its keys say.
    for ds, table in (("ds_0", "ps_order_0"), ("ds_0", "ps_order_1"), ("ds_1", "ps_order_0"), ("ds_1", "ps_order_1")):
        with sandbox.admin_connect(ds, database=f"shop_{ds}") as direct, direct.cursor() as cur:
            cur.execute(f"SELECT order_id, user_id FROM {table}")
            for order_id, user_id in cur.fetchall():
                assert f"ds_{user_id % 2}" == ds and table.endswith(str(order_id % 2))
    conn.close()


def test_prepared_generated_key_is_returned(ps_proxy):
    conn = connect(ps_proxy)
    ps = conn.cursor(prepared=True)
    ps.execute("INSERT INTO ps_order (user_id, amount, status) VALUES (?, ?, ?)", (3, Decimal("1.00"), "gen"))
    generated = ps.lastrowid
    assert generated and generated > 1 << 22
    ps.execute("SELECT user_id, status FROM ps_order WHERE order_id = ?", (generated,))
    assert ps.fetchall() == [(3, "gen")]
    conn.close()


def test_prepared_errors_are_clean(ps_proxy):
    conn = connect(ps_proxy)
    ps = conn.cursor(prepared=True)
    with pytest.raises(mysql.connector.Error) as info:
        ps.execute("UPDATE ps_order SET user_id = ? WHERE order_id = ?", (1, 1))
    assert info.value.errno == 1235 and "sharding column user_id" in info.value.msg
    with pytest.raises(mysql.connector.Error) as info:
        ps.execute("SELECT * FROM no_such_table WHERE id = ?", (1,))
    assert info.value.errno == 1146
    ps.execute("SELECT COUNT(*) FROM ps_order WHERE user_id = ?", (3,))
    assert ps.fetchall()[0][0] >= 1
    conn.close()


def _rows_on_shards(sandbox, where: str) -> list[tuple]:
    found = []
    for ds in ("ds_0", "ds_1"):
        for table in ("ps_order_0", "ps_order_1"):
            with sandbox.admin_connect(ds, database=f"shop_{ds}") as direct, direct.cursor() as cur:
                cur.execute(f"SELECT order_id, user_id FROM {table} WHERE {where}")
                found.extend(cur.fetchall())
    return sorted(found)


def test_prepared_begin_commit_rollback(ps_proxy, sandbox):
    """sysbench's ps mode prepares BEGIN and COMMIT: they drive the same transaction as text."""
    conn = connect(ps_proxy)
    ps = conn.cursor(prepared=True)
    insert = "INSERT INTO ps_order (order_id, user_id, status) VALUES (?, ?, ?)"
    other = connect(ps_proxy)
    peek = other.cursor()

    ps.execute("BEGIN")
    for order_id, user_id in ((9001, 1), (9002, 2)):  # one row on each data source
        ps.execute(insert, (order_id, user_id, "txn"))
    ps.execute("SELECT status FROM ps_order WHERE order_id = ? AND user_id = ?", (9002, 2))
    assert ps.fetchall() == [("txn",)]  # the transaction's own branch sees it
    peek.execute("SELECT COUNT(*) FROM ps_order WHERE status = 'txn'")
    assert peek.fetchall() == [(0,)]     # nobody else does yet
    ps.execute("ROLLBACK")
    assert _rows_on_shards(sandbox, "status = 'txn'") == []

    ps.execute("START TRANSACTION")
    for order_id, user_id in ((9011, 1), (9012, 2)):
        ps.execute(insert, (order_id, user_id, "txn"))
    ps.execute("UPDATE ps_order SET status = ? WHERE order_id = ? AND user_id = ?", ("txn2", 9011, 1))
    ps.execute("COMMIT")
    assert _rows_on_shards(sandbox, "status LIKE 'txn%'") == [(9011, 1), (9012, 2)]
    peek.execute("SELECT order_id, status FROM ps_order WHERE status LIKE 'txn%' ORDER BY order_id")
    assert peek.fetchall() == [(9011, "txn2"), (9012, "txn")]

    ps.execute("BEGIN")
    ps.execute("DELETE FROM ps_order WHERE order_id = ? AND user_id = ?", (9011, 1))
    ps.execute("ROLLBACK")
    assert _rows_on_shards(sandbox, "status LIKE 'txn%'") == [(9011, 1), (9012, 2)]
    ps.execute("DELETE FROM ps_order WHERE status LIKE ?", ("txn%",))
    other.close()
    conn.close()


def _stmt_prepares(sandbox) -> int:
    total = 0
    for ds in ("ds_0", "ds_1"):
        with sandbox.admin_connect(ds) as direct, direct.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Com_stmt_prepare'")
            total += int(cur.fetchone()[1])
    return total


def test_prepared_point_statements_reuse_backend_statements(ps_proxy, sandbox):
    """A point select/update executed many times is prepared once per backend connection and
    actual table, not per execute; results stay right on every shard and table."""
    conn = connect(ps_proxy)
    ps = conn.cursor(prepared=True)
    rows = [(9100 + i, i % 4, f"p{i}") for i in range(16)]
    for row in rows:
        ps.execute("INSERT INTO ps_order (order_id, user_id, status) VALUES (?, ?, ?)", row)
    select = conn.cursor(prepared=True)
    update = conn.cursor(prepared=True)
    before = _stmt_prepares(sandbox)
    for round_ in range(3):
        for order_id, user_id, status in rows:
            select.execute("SELECT status, user_id FROM ps_order WHERE order_id = ? AND user_id = ?",
                           (order_id, user_id))
            assert select.fetchall() == [(status, user_id)]
            update.execute("UPDATE ps_order SET amount = ? WHERE user_id = ? AND order_id = ?",
                           (Decimal(round_) + Decimal("0.5"), user_id, order_id))
            assert update.rowcount == 1
    prepares = _stmt_prepares(sandbox) - before
    # 96 executes; at most one describe per client statement plus one prepare per actual SQL
    # (4 tables x 2 statements) per backend connection used (here one session, so few).
    assert prepares <= 20, prepares
    select.execute("SELECT status FROM ps_order WHERE order_id = ? AND user_id = ?", (9100, None))
    assert select.fetchall() == []   # = NULL matches nothing (takes the binding path)
    ps.execute("DELETE FROM ps_order WHERE order_id >= ?", (9100,))
    conn.close()
