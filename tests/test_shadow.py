"""Shadow traffic through a real sidecar over the MariaDB sandbox.

Three logical databases with shadow rules: ``shd_tbl`` (pass-through, shadow tables beside
production ones), ``shd_ds`` (pass-through, shadows with the same names on a shadow data
source on the other server) and ``shd_shard`` (sharded over two servers; shadows renamed
AND on shadow data sources, following the sharding layout). Every check reads the
backends directly.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading

import mysql.connector
import pymysql
import pytest

from conftest import ROOT, free_port, sandbox_proxy_config, start_proxy, stop_proxy
from conftest import run_on as run

SERVERS = ("ds_0", "ds_1")
# data source -> (sandbox server, physical database)
PLACES = {
    "pt_main": ("ds_0", "shd_pt"),
    "pt_prod": ("ds_0", "shd_pt2"),
    "pt_shadow": ("ds_1", "shd_pt2_shadow"),
    "sh_0": ("ds_0", "shd_sh0"),
    "sh_1": ("ds_1", "shd_sh1"),
    "sh_0_shadow": ("ds_1", "shd_sh0_shadow"),
    "sh_1_shadow": ("ds_0", "shd_sh1_shadow"),
}
USERS_RULE = {"type": "VALUE_MATCH", "column": "user_id", "values": [7, 8], "ranges": [[9000, 9999]]}
DATABASES = {
    "shd_tbl": {"data_source": "pt_main", "shadow": {
        "tables": {"sh_acct": {"algorithms": ["test_users", "test_notes"]}, "sh_log": {}, "sh_new": {}},
        "algorithms": {"test_users": USERS_RULE,
                       "test_notes": {"type": "REGEX_MATCH", "column": "note", "regex": "^shadow-"}}}},
    "shd_ds": {"data_source": "pt_prod", "shadow": {
        "table_name": "{table}", "data_sources": {"pt_prod": "pt_shadow"},
        "tables": {"sh_acct": {"algorithms": ["test_users"]}}, "algorithms": {"test_users": USERS_RULE}}},
    "shd_shard": {
        "sharding": {"data_sources": ["sh_0", "sh_1"],
                     "tables": {"sh_order": {"actual_data_nodes": "sh_${0..1}.sh_order_${0..1}",
                                             "database_strategy": {"columns": ["user_id"], "algorithm": "two"},
                                             "table_strategy": {"columns": ["order_id"], "algorithm": "two"}}},
                     "algorithms": {"two": {"type": "MOD", "props": {"sharding_count": 2}}}},
        "shadow": {"data_sources": {"sh_0": "sh_0_shadow", "sh_1": "sh_1_shadow"},
                   "tables": {"sh_order": {"algorithms": ["test_users"]}}, "algorithms": {"test_users": USERS_RULE}}},
    "shd_shard_tbl": {  # sharded, shadow tables beside the production ones
        "sharding": {"data_sources": ["sh_0", "sh_1"],
                     "tables": {"sh_pay": {"actual_data_nodes": "sh_${0..1}.sh_pay_${0..1}",
                                           "database_strategy": {"columns": ["user_id"], "algorithm": "two"},
                                           "table_strategy": {"columns": ["pay_id"], "algorithm": "two"}}},
                     "algorithms": {"two": {"type": "MOD", "props": {"sharding_count": 2}}}},
        "shadow": {"tables": ["sh_pay"]}},
    "shd_plain": {"data_source": "pt_main"},
    "shd_shard_plain": {  # sharded, no shadow rules
        "sharding": {"data_sources": ["sh_0", "sh_1"],
                     "tables": {"sh_pay": {"actual_data_nodes": "sh_${0..1}.sh_pay_${0..1}",
                                           "database_strategy": {"columns": ["user_id"], "algorithm": "two"},
                                           "table_strategy": {"columns": ["pay_id"], "algorithm": "two"}}},
                     "algorithms": {"two": {"type": "MOD", "props": {"sharding_count": 2}}}}},
}
ACCT = ("CREATE TABLE {name} (id INT PRIMARY KEY, user_id INT NOT NULL, note VARCHAR(40), amount DECIMAL(10,2), "
        "KEY by_user (user_id)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
ORDER = ("CREATE TABLE {name} (order_id BIGINT PRIMARY KEY, user_id INT NOT NULL, note VARCHAR(40), amount INT) "
         "ENGINE=InnoDB")
LOG = "CREATE TABLE {name} (id INT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(40))"


def dump(sandbox, ds: str, table: str) -> list[tuple]:
    server, database = PLACES[ds]
    return run(sandbox, server, database, f"SELECT * FROM {table} ORDER BY 1")


def create_schema(sandbox) -> None:
    for server in SERVERS:
        names = sorted({db for s, db in PLACES.values() if s == server})
        run(sandbox, server, None, *[f"DROP DATABASE IF EXISTS {n}" for n in names],
            *[f"CREATE DATABASE {n} CHARACTER SET utf8mb4" for n in names if not n.endswith("_shadow")])
    run(sandbox, "ds_0", "shd_pt", ACCT.format(name="sh_acct"), LOG.format(name="sh_log"),
        ACCT.format(name="sh_plain"))
    run(sandbox, "ds_0", "shd_pt2", ACCT.format(name="sh_acct"))
    for ds in ("sh_0", "sh_1"):
        server, database = PLACES[ds]
        run(sandbox, server, database, *[ORDER.format(name=f"sh_order_{i}") for i in (0, 1)],
            *[f"CREATE TABLE sh_pay_{i} (pay_id INT PRIMARY KEY, user_id INT)" for i in (0, 1)])


@pytest.fixture(scope="module")
def env(sandbox, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("shadow")
    config = sandbox_proxy_config(sandbox, workdir, DATABASES)
    base = config["data_sources"]
    for name, (server, database) in PLACES.items():
        config["data_sources"][name] = {**base[server], "database": database}
    create_schema(sandbox)
    proxy = start_proxy(config, workdir)
    provisioned = subprocess.run([sys.executable, "-m", "dbmesh", "shadow", "provision", "-c", str(proxy.config_path)],
                                 capture_output=True, text=True, cwd=ROOT, env={"COLUMNS": "200", "PATH": ""})
    try:
        yield proxy, provisioned
    finally:
        stop_proxy(proxy)


def connect(proxy, database: str) -> pymysql.Connection:
    return proxy.connect(database=database)


def show_create(sandbox, ds: str, table: str) -> str:
    server, database = PLACES[ds]
    text = run(sandbox, server, database, f"SHOW CREATE TABLE {table}")[0][1]
    return text.split("(", 1)[1].split(" AUTO_INCREMENT=")[0]


def test_provision_creates_shadows_with_production_schema(env, sandbox):
    proxy, provisioned = env
    assert provisioned.returncode == 0, provisioned.stdout + provisioned.stderr
    assert provisioned.stdout.count("created") == 11 and "missing in production" in provisioned.stdout
    assert show_create(sandbox, "pt_main", "sh_acct_shadow") == show_create(sandbox, "pt_main", "sh_acct")
    assert show_create(sandbox, "pt_main", "sh_log_shadow") == show_create(sandbox, "pt_main", "sh_log")
    assert show_create(sandbox, "pt_shadow", "sh_acct") == show_create(sandbox, "pt_prod", "sh_acct")
    for i in (0, 1):
        for j in (0, 1):
            assert show_create(sandbox, f"sh_{i}_shadow", f"sh_order_{j}_shadow") == \
                show_create(sandbox, f"sh_{i}", f"sh_order_{j}")
    # A second run finds them up to date; a drifted shadow is reported, and --recreate fixes it.
    run(sandbox, "ds_0", "shd_pt", "ALTER TABLE sh_log_shadow ADD COLUMN drift INT")
    cmd = [sys.executable, "-m", "dbmesh", "shadow", "provision", "-c", str(proxy.config_path), "--database", "shd_tbl"]
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={"COLUMNS": "200", "PATH": ""})
    assert again.returncode == 1 and "differs" in again.stdout and "up to date" in again.stdout, again.stdout
    fixed = subprocess.run(cmd + ["--recreate"], capture_output=True, text=True, cwd=ROOT,
                           env={"COLUMNS": "200", "PATH": ""})
    assert fixed.returncode == 0 and "recreated" in fixed.stdout, fixed.stdout
    assert show_create(sandbox, "pt_main", "sh_log_shadow") == show_create(sandbox, "pt_main", "sh_log")


def expect_refused(cur, sql: str, words: str, args=None) -> None:
    with pytest.raises((pymysql.err.MySQLError, mysql.connector.Error)) as info:
        cur.execute(sql, args)
    exc = info.value
    code, message = (exc.errno, exc.msg) if isinstance(exc, mysql.connector.Error) else exc.args[:2]
    assert code == 1235 and words in message, message


def test_pass_through_rules_route_to_shadow_tables(env, sandbox):
    proxy, _ = env
    with connect(proxy, "shd_tbl") as conn, conn.cursor() as cur:
        expect_refused(cur, "INSERT INTO sh_acct VALUES (1, 1, 'prod', 10)", "must list its columns")
        cur.execute("INSERT INTO sh_acct (id, user_id, note, amount) VALUES (1, 1, 'prod', 10)")
        cur.execute("/* dbmesh:shadow */ INSERT INTO sh_acct VALUES (2, 1, 'hinted', 20)")
        cur.execute("INSERT INTO sh_acct (id, user_id, note) VALUES (3, 7, 'value'), (4, 9500, 'range')")
        cur.execute("INSERT INTO sh_acct (id, user_id, note) VALUES (5, 2, 'shadow-regex')")
        cur.execute("SET dbmesh_shadow = 1")
        cur.execute("INSERT INTO sh_acct (id, user_id, note) VALUES (6, 3, 'session')")
        cur.execute("SELECT id FROM sh_acct ORDER BY id")
        assert [r[0] for r in cur.fetchall()] == [2, 3, 4, 5, 6]
        cur.execute("/* dbmesh:shadow=0 */ SELECT id FROM sh_acct")
        assert cur.fetchall() == ((1,),)
        cur.execute("SET dbmesh_shadow = 0")
        cur.execute("SELECT id, note FROM sh_acct WHERE user_id = 7")
        assert cur.fetchall() == ((3, "value"),)
        cur.execute("UPDATE sh_acct SET amount = 70 WHERE user_id IN (7, 8)")
        assert cur.rowcount == 1
        cur.execute("DELETE FROM sh_acct WHERE user_id = 9500")
        cur.execute("UPDATE sh_acct SET amount = 11 WHERE id = 1")
        cur.execute("SELECT id, amount FROM sh_acct")
        assert cur.fetchall() == ((1, 11),)
        expect_refused(cur, "INSERT INTO sh_acct (id, user_id) VALUES (10, 7), (11, 1)", "mixes 1 shadow row")
        expect_refused(cur, "SELECT * FROM sh_acct WHERE user_id IN (1, 7)", "both shadow rows")
        expect_refused(cur, "SELECT id FROM sh_acct WHERE user_id = 7 UNION SELECT id FROM sh_acct WHERE id = 1",
                       "one side of the UNION")
        cur.execute("SELECT id FROM sh_acct WHERE user_id = 7 UNION SELECT id FROM sh_acct WHERE note = 'shadow-regex'")
        assert sorted(cur.fetchall()) == [(3,), (5,)]
        expect_refused(cur, "UPDATE sh_acct SET user_id = 7 WHERE id = 1", "cannot move")
        expect_refused(cur, "/* dbmesh:shadow */ INSERT INTO sh_plain (id, user_id) VALUES (1, 1)",
                       "sh_plain, which have no shadow")
        expect_refused(cur, "/* dbmesh:shadow */ CALL nothing()", "cannot be routed")
        expect_refused(cur, "INSERT INTO sh_acct (id, user_id) VALUES (50, 7); SELECT 1", "one by one")
        expect_refused(cur, "RENAME TABLE sh_acct TO sh_acct_old", "cannot apply this schema change")
        expect_refused(cur, "ALTER TABLE sh_acct CONVERT TO CHARACTER SET utf8mb4", "cannot apply this schema change")
    assert dump(sandbox, "pt_main", "sh_acct") == [(1, 1, "prod", 11)]
    assert [r[:3] for r in dump(sandbox, "pt_main", "sh_acct_shadow")] == [
        (2, 1, "hinted"), (3, 7, "value"), (5, 2, "shadow-regex"), (6, 3, "session")]
    assert dump(sandbox, "pt_main", "sh_acct_shadow")[1][3] == 70
    assert dump(sandbox, "pt_main", "sh_plain") == []


def test_shadow_marks_need_rules(env, sandbox):
    """A statement marked as shadow traffic on a database without shadow rules is refused,
    never run on production; an explicit production mark (shadow=0) is fine."""
    proxy, _ = env
    for database, table, key in (("shd_plain", "sh_plain", "id"), ("shd_shard_plain", "sh_pay", "pay_id")):
        with connect(proxy, database) as conn, conn.cursor() as cur:
            expect_refused(cur, "SET dbmesh_shadow = 1", f"database '{database}' has no shadow rules")
            expect_refused(cur, f"/* dbmesh:shadow */ INSERT INTO {table} ({key}, user_id) VALUES (77, 7)",
                           "hint asks for shadow traffic")
            expect_refused(cur, f"SELECT /* dbmesh:shadow */ * FROM {table}", "would run on production tables")
            expect_refused(cur, f"PREVIEW /* dbmesh:shadow */ DELETE FROM {table}", "has no shadow rules")
            cur.execute(f"/* dbmesh:shadow=0 */ SELECT COUNT(*) FROM {table} WHERE {key} = 77")
            assert cur.fetchone() == (0,)
        conn = mc_connect(proxy, database)
        cur = conn.cursor(prepared=True)
        expect_refused(cur, f"/* dbmesh:shadow */ INSERT INTO {table} ({key}, user_id) VALUES (?, ?)",
                       "has no shadow rules", (78, 7))
        conn.close()
    assert not [r for r in dump(sandbox, "pt_main", "sh_plain") if r[0] in (77, 78)]
    assert not [r for ds in ("sh_0", "sh_1") for i in (0, 1) for r in dump(sandbox, ds, f"sh_pay_{i}")
                if r[0] in (77, 78)]
    with connect(proxy, "shd_tbl") as conn, conn.cursor() as cur:
        cur.execute("SET dbmesh_shadow = 1")
        cur.execute("USE shd_plain")  # the setting stays; the database has no rules
        expect_refused(cur, "SELECT COUNT(*) FROM sh_plain", "the session's dbmesh_shadow = 1")


def test_transactions_keep_shadow_and_production_together(env, sandbox):
    proxy, _ = env
    for database, prod, shadow in (("shd_tbl", ("pt_main", "sh_acct"), ("pt_main", "sh_acct_shadow")),
                                   ("shd_ds", ("pt_prod", "sh_acct"), ("pt_shadow", "sh_acct"))):
        with connect(proxy, database) as conn, conn.cursor() as cur:
            base_prod, base_shadow = dump(sandbox, *prod), dump(sandbox, *shadow)
            cur.execute("BEGIN")
            cur.execute("INSERT INTO sh_acct (id, user_id) VALUES (100, 1)")
            cur.execute("INSERT INTO sh_acct (id, user_id) VALUES (101, 7)")
            cur.execute("SELECT COUNT(*) FROM sh_acct WHERE user_id = 7")
            assert cur.fetchone()[0] == sum(1 for r in base_shadow if r[1] == 7) + 1
            cur.execute("ROLLBACK")
            assert dump(sandbox, *prod) == base_prod and dump(sandbox, *shadow) == base_shadow
            conn.autocommit(False)
            cur.execute("/* dbmesh:shadow */ INSERT INTO sh_acct (id, user_id) VALUES (102, 1)")
            cur.execute("INSERT INTO sh_acct (id, user_id) VALUES (103, 1)")
            assert dump(sandbox, *shadow) == base_shadow  # not committed yet
            conn.commit()
            conn.autocommit(True)
            assert [r[0] for r in dump(sandbox, *prod)] == [r[0] for r in base_prod] + [103]
            assert [r[0] for r in dump(sandbox, *shadow)] == [r[0] for r in base_shadow] + [102]


def test_shadow_data_source_routing(env, sandbox):
    proxy, _ = env
    with connect(proxy, "shd_ds") as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO sh_acct (id, user_id, note) VALUES (1, 1, 'prod'), (2, 2, 'prod')")
        cur.execute("INSERT INTO sh_acct (id, user_id, note) VALUES (1, 8, 'shadow'), (3, 9001, 'shadow')")
        cur.execute("SELECT id, note FROM sh_acct WHERE user_id = 8")
        assert cur.fetchall() == ((1, "shadow"),)
        cur.execute("SELECT id FROM sh_acct WHERE id < 100 ORDER BY id")
        assert cur.fetchall() == ((1,), (2,))
        expect_refused(cur, "/* dbmesh:shadow */ SELECT * FROM sh_acct JOIN sh_plain USING (id)",
                       "runs on shadow data source 'pt_shadow'")
    assert [(r[0], r[2]) for r in dump(sandbox, "pt_prod", "sh_acct") if r[0] < 100] == [(1, "prod"), (2, "prod")]
    assert [(r[0], r[2]) for r in dump(sandbox, "pt_shadow", "sh_acct") if r[0] < 100] == [(1, "shadow"),
                                                                                          (3, "shadow")]


def shard_of(order_id: int, user_id: int) -> tuple[str, str]:
    return f"sh_{user_id % 2}", f"sh_order_{order_id % 2}"


def test_sharded_shadow_follows_the_sharding_layout(env, sandbox):
    proxy, _ = env
    with connect(proxy, "shd_shard") as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO sh_order (order_id, user_id, note) VALUES (10, 1, 'p'), (11, 2, 'p'), (12, 3, 'p')")
        cur.execute("/* dbmesh:shadow */ INSERT INTO sh_order (order_id, user_id, note) VALUES "
                    "(20, 1, 's'), (21, 2, 's'), (22, 3, 's'), (23, 4, 's')")
        cur.execute("INSERT INTO sh_order (order_id, user_id, note) VALUES (24, 7, 'rule'), (25, 8, 'rule')")
        cur.execute("PREVIEW INSERT INTO sh_order (order_id, user_id) VALUES (26, 9001)")
        assert cur.fetchall() == (("sh_1_shadow", "INSERT INTO sh_order_0_shadow (order_id, user_id) VALUES (26, 9001)"),)
        cur.execute("/* dbmesh:shadow */ SELECT order_id FROM sh_order ORDER BY order_id")
        assert [r[0] for r in cur.fetchall()] == [20, 21, 22, 23, 24, 25]
        cur.execute("SELECT order_id FROM sh_order ORDER BY order_id")
        assert [r[0] for r in cur.fetchall()] == [10, 11, 12]
        cur.execute("SELECT COUNT(*), SUM(order_id) FROM sh_order WHERE user_id IN (7, 8)")
        assert cur.fetchone() == (2, 49)
        cur.execute("UPDATE sh_order SET amount = 5 WHERE user_id = 7")
        cur.execute("DELETE FROM sh_order WHERE user_id = 8 AND order_id = 25")
        expect_refused(cur, "DELETE FROM sh_order WHERE user_id IN (1, 7)", "both shadow rows")
        # A LOCAL and an XA transaction, with both kinds of rows, rolled back then committed.
        for mode in ("LOCAL", "XA"):
            cur.execute(f"SET dbmesh_transaction_mode = '{mode}'")
            base = int(mode == "XA") * 10
            for finish in ("ROLLBACK", "COMMIT"):
                cur.execute("BEGIN")
                cur.execute(f"INSERT INTO sh_order (order_id, user_id, note) VALUES ({40 + base}, 5, 'tp')")
                cur.execute(f"INSERT INTO sh_order (order_id, user_id, note) VALUES ({41 + base}, 7, 'ts')")
                cur.execute(f"/* dbmesh:shadow */ INSERT INTO sh_order (order_id, user_id, note) VALUES "
                            f"({42 + base}, 6, 'ts')")
                cur.execute(finish)
    expected_prod = {(10, 1), (11, 2), (12, 3), (40, 5), (50, 5)}
    expected_shadow = {(20, 1), (21, 2), (22, 3), (23, 4), (24, 7), (41, 7), (42, 6), (51, 7), (52, 6)}
    for suffix, expected in (("", expected_prod), ("_shadow", expected_shadow)):
        for order_id, user_id in expected:
            ds, table = shard_of(order_id, user_id)
            rows = dump(sandbox, ds + suffix, table + suffix)
            assert order_id in [r[0] for r in rows], (order_id, ds + suffix, table + suffix)
        total = sum(len(dump(sandbox, f"sh_{i}{suffix}", f"sh_order_{j}{suffix}")) for i in (0, 1) for j in (0, 1))
        assert total == len(expected), suffix
    assert (24, 7, "rule", 5) in dump(sandbox, "sh_1_shadow", "sh_order_0_shadow")  # the UPDATE reached it


def test_sharded_shadow_tables_beside_production(env, sandbox):
    proxy, _ = env
    with connect(proxy, "shd_shard_tbl") as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO sh_pay (pay_id, user_id) VALUES (1, 1), (2, 2)")
        cur.execute("SET dbmesh_shadow = 1")
        cur.execute("INSERT INTO sh_pay (pay_id, user_id) VALUES (3, 1), (4, 2)")
        cur.execute("SELECT pay_id FROM sh_pay ORDER BY pay_id")
        assert cur.fetchall() == ((3,), (4,))
        cur.execute("SET dbmesh_shadow = 0")
        cur.execute("SHOW TABLES")
        names = {r[0] for r in cur.fetchall()}
        assert "sh_pay" in names and not any(n.endswith("_shadow") for n in names), names
    assert dump(sandbox, "sh_1", "sh_pay_1") == [(1, 1)] and dump(sandbox, "sh_1", "sh_pay_1_shadow") == [(3, 1)]
    assert dump(sandbox, "sh_0", "sh_pay_0") == [(2, 2)] and dump(sandbox, "sh_0", "sh_pay_0_shadow") == [(4, 2)]
    # TRUNCATE empties the side it is routed to, on every node, and leaves the other alone.
    with connect(proxy, "shd_shard_tbl") as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE TABLE sh_pay")
        assert [len(dump(sandbox, f"sh_{i}", f"sh_pay_{i}")) for i in (0, 1)] == [0, 0]
        assert [len(dump(sandbox, f"sh_{i}", f"sh_pay_{i}_shadow")) for i in (0, 1)] == [1, 1]
        cur.execute("INSERT INTO sh_pay (pay_id, user_id) VALUES (5, 1)")
        cur.execute("/* dbmesh:shadow */ TRUNCATE TABLE sh_pay")
        assert [len(dump(sandbox, f"sh_{i}", f"sh_pay_{i}_shadow")) for i in (0, 1)] == [0, 0]
        assert dump(sandbox, "sh_1", "sh_pay_1") == [(5, 1)]


def test_truncate_is_data_not_schema(env, sandbox):
    """TRUNCATE empties production or, marked as shadow traffic, the shadow: it changes rows,
    not the schema, so a production TRUNCATE never reaches the shadows (nor the reverse)."""
    proxy, _ = env
    with connect(proxy, "shd_tbl") as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO sh_log (msg) VALUES ('p1'), ('p2')")
        cur.execute("/* dbmesh:shadow */ INSERT INTO sh_log (msg) VALUES ('s1')")
        cur.execute("TRUNCATE TABLE sh_log")
        assert dump(sandbox, "pt_main", "sh_log") == []
        assert [r[1] for r in dump(sandbox, "pt_main", "sh_log_shadow")] == ["s1"]
        cur.execute("INSERT INTO sh_log (msg) VALUES ('p3')")
        cur.execute("SET dbmesh_shadow = 1")
        cur.execute("TRUNCATE sh_log")
        cur.execute("SET dbmesh_shadow = 0")
        assert dump(sandbox, "pt_main", "sh_log_shadow") == []
        assert [r[1] for r in dump(sandbox, "pt_main", "sh_log")] == ["p3"]
        cur.execute("DELETE FROM sh_log")


def mc_connect(proxy, database: str):
    return mysql.connector.connect(host=proxy.host, port=proxy.port, user="app", password="app", database=database,
                                   autocommit=True, use_pure=True)


def test_prepared_statements_route_by_bound_values(env, sandbox):
    proxy, _ = env
    for database, prod, shadow in (("shd_tbl", ("pt_main", "sh_acct"), ("pt_main", "sh_acct_shadow")),
                                   ("shd_ds", ("pt_prod", "sh_acct"), ("pt_shadow", "sh_acct"))):
        conn = mc_connect(proxy, database)
        cur = conn.cursor(prepared=True)
        insert = "INSERT INTO sh_acct (id, user_id, note) VALUES (?, ?, ?)"
        cur.execute(insert, (200, 1, "ps-prod"))
        cur.execute(insert, (201, 7, "ps-shadow"))
        cur.execute(insert, (202, 9999, "ps-shadow"))
        cur.execute("SELECT id, note FROM sh_acct WHERE user_id = ? AND id >= ? ORDER BY id", (7, 200))
        assert [tuple(r) for r in cur.fetchall()] == [(201, "ps-shadow")]
        cur.execute("SELECT id FROM sh_acct WHERE id = ?", (201,))
        assert cur.fetchall() == []  # no rule value in the WHERE: production, where 201 is not
        cur.execute("/* dbmesh:shadow */ SELECT id, note FROM sh_acct WHERE id = ?", (201,))
        assert [tuple(r) for r in cur.fetchall()] == [(201, "ps-shadow")]
        conn.start_transaction()
        cur.execute(insert, (203, 8, "ps-tx"))
        cur.execute(insert, (204, 2, "ps-tx"))
        conn.rollback()
        conn.start_transaction()
        cur.execute(insert, (205, 8, "ps-tx"))
        cur.execute(insert, (206, 2, "ps-tx"))
        conn.commit()
        expect_refused(cur, "UPDATE sh_acct SET user_id = ? WHERE id = ?", "cannot move", (7, 200))
        conn.close()
        prod_ids = {r[0] for r in dump(sandbox, *prod) if r[0] >= 200}
        shadow_ids = {r[0] for r in dump(sandbox, *shadow) if r[0] >= 200}
        assert (prod_ids, shadow_ids) == ({200, 206}, {201, 202, 205}), database
    conn = mc_connect(proxy, "shd_shard")
    cur = conn.cursor(prepared=True)
    insert = "INSERT INTO sh_order (order_id, user_id, note) VALUES (?, ?, ?)"
    cur.execute(insert, (300, 9, "ps-prod"))
    cur.execute(insert, (301, 9000, "ps-shadow"))
    cur.execute("/* dbmesh:shadow */ INSERT INTO sh_order (order_id, user_id, note) VALUES (?, ?, ?)",
                (302, 1, "ps-hint"))
    cur.execute("SELECT order_id, note FROM sh_order WHERE user_id = ?", (9000,))
    assert [tuple(r) for r in cur.fetchall()] == [(301, "ps-shadow")]
    cur.execute("SELECT order_id FROM sh_order WHERE order_id = ?", (301,))
    assert cur.fetchall() == []
    conn.close()
    assert (301, 9000, "ps-shadow", None) in dump(sandbox, "sh_0_shadow", "sh_order_1_shadow")
    assert (302, 1, "ps-hint", None) in dump(sandbox, "sh_1_shadow", "sh_order_0_shadow")
    assert (300, 9, "ps-prod", None) in dump(sandbox, "sh_1", "sh_order_0")


def text_fields(cur, sql: str) -> tuple[list[tuple], list[tuple]]:
    """Rows and column definitions (schema, table, org_table, name, org_name) of a text query."""
    cur.execute(sql)
    rows = [tuple(r) for r in cur.fetchall()]
    # PyMySQL keeps the column definitions there (the schema as bytes)
    return rows, [(f.db.decode(), f.table_name, f.org_table, f.name, f.org_name) for f in cur._result.fields]


def prepared_fields(proxy, database: str, sql: str, value: int) -> tuple[list[tuple], list[tuple]]:
    """Column definitions of a COM_STMT_PREPARE answer and of one COM_STMT_EXECUTE's result
    (one BIGINT parameter), through a raw protocol client: drivers do not show them."""
    import asyncio

    from dbmesh.backend.connection import BackendConnection
    from dbmesh.protocol.constants import Command
    from dbmesh.protocol.packets import parse_column_definition, read_lenenc_int
    from dbmesh.protocol.scanner import ResponseKind

    def described(payloads: list[bytes]) -> list[tuple]:
        return [(f.schema, f.table, f.org_table, f.name, f.org_name) for f in map(parse_column_definition, payloads)]

    async def run_it() -> tuple[list[tuple], list[tuple]]:
        conn = BackendConnection("proxy", proxy.host, proxy.port, 0)
        await conn.connect("app", "app", database, 10)
        try:
            payloads, scanner = await conn.collect(bytes((Command.STMT_PREPARE,)) + sql.encode(), ResponseKind.PREPARE)
            assert scanner.error is None, scanner.error
            first = 1 + scanner.num_params + (1 if scanner.num_params else 0)
            prepared = described(payloads[first:first + scanner.num_columns])
            execute = (bytes((Command.STMT_EXECUTE,)) + scanner.stmt_id.to_bytes(4, "little") + b"\x00"
                       + (1).to_bytes(4, "little") + b"\x00\x01" + b"\x08\x00" + value.to_bytes(8, "little"))
            payloads, scanner = await conn.collect(execute, ResponseKind.RESULT)
            assert scanner.error is None, scanner.error
            count = read_lenenc_int(payloads[0], 0)[0]
            return prepared, described(payloads[1:1 + count])
        finally:
            conn.close()

    return asyncio.run(run_it())


def test_pass_through_shadow_results_name_the_clients_table(env, sandbox):
    """A shadow read on a pass-through database describes its columns as the production read
    would (table sh_acct, production's schema), not as the shadow table it ran on."""
    proxy, _ = env
    for database, shadow_ds, shadow in (("shd_tbl", "pt_main", "sh_acct_shadow"), ("shd_ds", "pt_shadow", "sh_acct")):
        run(sandbox, *PLACES[shadow_ds], f"DELETE FROM {shadow} WHERE id = 900",
            f"INSERT INTO {shadow} (id, user_id, note) VALUES (900, 7, 'in-shadow')")
        with connect(proxy, database) as conn, conn.cursor() as cur:
            _, production = text_fields(cur, "SELECT id, note FROM sh_acct WHERE id = 900")
            _, production_aliased = text_fields(cur, "SELECT a.id, a.note FROM sh_acct a WHERE a.id = 900")
            schema = PLACES["pt_main" if database == "shd_tbl" else "pt_prod"][1]
            assert production == [(schema, "sh_acct", "sh_acct", "id", "id"),
                                  (schema, "sh_acct", "sh_acct", "note", "note")], production
            # By a column rule, by the hint, with an alias: the shadow row, production's names.
            for sql, expected in (("SELECT id, note FROM sh_acct WHERE user_id = 7 AND id = 900", production),
                                  ("/* dbmesh:shadow */ SELECT id, note FROM sh_acct WHERE id = 900", production),
                                  ("SELECT a.id, a.note FROM sh_acct a WHERE a.user_id = 7 AND a.id = 900",
                                   production_aliased)):
                rows, fields = text_fields(cur, sql)
                assert rows == [(900, "in-shadow")], (database, sql)
                assert fields == expected, (database, sql)
        # Prepared: the PREPARE answer comes from production; the shadow execute's result
        # must describe the same columns.
        sql = "SELECT id, note FROM sh_acct WHERE user_id = 7 AND id = ?"
        prepared, executed = prepared_fields(proxy, database, sql, 900)
        assert prepared == executed == [(schema, "sh_acct", "sh_acct", "id", "id"),
                                        (schema, "sh_acct", "sh_acct", "note", "note")], (database, executed)
        run(sandbox, *PLACES[shadow_ds], f"DELETE FROM {shadow} WHERE id = 900")


MARKS = {  # how a statement is made shadow traffic: (prefix, user_id, note, extra WHERE)
    "hint": ("/* dbmesh:shadow */ ", 1, "h", ""),
    "session": ("", 1, "s", ""),
    "value_match": ("", 9500, "v", " AND user_id = 9500"),
    "regex_match": ("", 2, "shadow-r", " AND note = 'shadow-r'"),
}


@pytest.mark.parametrize("prepared", [False, True], ids=["text-in-transaction", "prepared"])
@pytest.mark.parametrize("mark", list(MARKS))
def test_each_rule_routes_every_statement_kind(env, sandbox, mark, prepared):
    """INSERT, SELECT, UPDATE and DELETE marked by each rule reach the shadow table only:
    as text inside a committed transaction, and as prepared statements (bound values)."""
    proxy, _ = env
    prefix, user, note, where = MARKS[mark]
    base = 700 + 10 * list(MARKS).index(mark) + 100 * prepared
    conn = mc_connect(proxy, "shd_tbl")
    plain = conn.cursor()
    cur = conn.cursor(prepared=True) if prepared else plain

    def execute(sql: str, args: tuple) -> list:
        if prepared:
            cur.execute(prefix + sql.replace("%s", "?"), args)
        else:
            cur.execute(prefix + sql, args)
        return [tuple(r) for r in cur.fetchall()] if cur.with_rows else []

    if mark == "session":
        plain.execute("SET dbmesh_shadow = 1")
    if not prepared:
        conn.start_transaction()
    execute("INSERT INTO sh_acct (id, user_id, note) VALUES (%s, %s, %s)", (base, user, note))
    execute("INSERT INTO sh_acct (id, user_id, note) VALUES (%s, %s, %s)", (base + 1, user, note))
    execute("UPDATE sh_acct SET amount = 5 WHERE id = %s" + where, (base,))
    execute("DELETE FROM sh_acct WHERE id = %s" + where, (base + 1,))
    assert execute("SELECT id, note, amount FROM sh_acct WHERE id >= %s AND id < %s" + where,
                   (base, base + 10)) == [(base, note, 5)]
    if not prepared:
        conn.commit()
    if mark == "session":
        plain.execute("SET dbmesh_shadow = 0")
    conn.close()
    assert [r[:4] for r in dump(sandbox, "pt_main", "sh_acct_shadow") if base <= r[0] < base + 10] == \
        [(base, user, note, 5)]
    assert not [r for r in dump(sandbox, "pt_main", "sh_acct") if base <= r[0] < base + 10]


def test_ddl_is_applied_to_shadows(env, sandbox):
    proxy, _ = env
    with connect(proxy, "shd_tbl") as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE sh_acct ADD COLUMN extra INT DEFAULT 3")
        cur.execute("CREATE INDEX by_note ON sh_acct (note)")
        assert show_create(sandbox, "pt_main", "sh_acct_shadow") == show_create(sandbox, "pt_main", "sh_acct")
        assert "by_note" in show_create(sandbox, "pt_main", "sh_acct_shadow")
        cur.execute("CREATE TABLE sh_new (id INT PRIMARY KEY, v VARCHAR(10))")
        assert show_create(sandbox, "pt_main", "sh_new_shadow") == show_create(sandbox, "pt_main", "sh_new")
        cur.execute("DROP TABLE sh_new")
        assert not run(sandbox, "ds_0", "shd_pt", "SHOW TABLES LIKE 'sh_new%'")
    with connect(proxy, "shd_ds") as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE sh_acct ADD COLUMN extra INT")
        assert show_create(sandbox, "pt_shadow", "sh_acct") == show_create(sandbox, "pt_prod", "sh_acct")
        run(sandbox, "ds_1", "shd_pt2_shadow", "ALTER TABLE sh_acct DROP COLUMN extra")  # make the shadow drift
        with pytest.raises(pymysql.err.MySQLError) as info:
            cur.execute("ALTER TABLE sh_acct DROP COLUMN extra")
        assert "ran on production but not on every shadow" in info.value.args[1]
    with connect(proxy, "shd_shard") as conn, conn.cursor() as cur:
        cur.execute("PREVIEW ALTER TABLE sh_order ADD COLUMN extra INT")
        assert ("sh_0_shadow", "ALTER TABLE sh_order_1_shadow ADD COLUMN extra INT") in cur.fetchall()
        cur.execute("ALTER TABLE sh_order ADD COLUMN extra INT")
        for i in (0, 1):
            for j in (0, 1):
                assert "`extra` int" in show_create(sandbox, f"sh_{i}_shadow", f"sh_order_{j}_shadow")
                assert show_create(sandbox, f"sh_{i}_shadow", f"sh_order_{j}_shadow") == \
                    show_create(sandbox, f"sh_{i}", f"sh_order_{j}")
        run(sandbox, "ds_1", "shd_sh0_shadow", "ALTER TABLE sh_order_1_shadow DROP COLUMN extra")  # drift
        with pytest.raises(pymysql.err.MySQLError) as info:
            cur.execute("ALTER TABLE sh_order DROP COLUMN extra")
        message = info.value.args[1]
        assert "ran on production but not on every shadow" in message and "Can't DROP COLUMN `extra`" in message
        cur.execute("ALTER TABLE sh_order ADD COLUMN extra INT")  # the drifted shadow had got there already
        for i in (0, 1):
            for j in (0, 1):
                assert show_create(sandbox, f"sh_{i}_shadow", f"sh_order_{j}_shadow") == \
                    show_create(sandbox, f"sh_{i}", f"sh_order_{j}")


def index_names(sandbox, ds: str, table: str) -> set[str]:
    server, database = PLACES[ds]
    return {row[2] for row in run(sandbox, server, database, f"SHOW INDEX FROM {table}")}


def test_sharded_index_ddl_reaches_every_actual_table_and_shadow(env, sandbox):
    """CREATE INDEX and DROP INDEX on a sharded table run on every actual table and on every
    shadow of one (shadow data sources, or shadows beside production); without shadow rules
    only production changes."""
    proxy, _ = env
    order = [(f"sh_{i}", f"sh_order_{j}") for i in (0, 1) for j in (0, 1)]
    order_shadows = [(f"{ds}_shadow", f"{table}_shadow") for ds, table in order]
    pay = [(f"sh_{i}", f"sh_pay_{j}") for i in (0, 1) for j in (0, 1)]
    pay_shadows = [(ds, f"{table}_shadow") for ds, table in pay]

    def has_index(tables: list[tuple[str, str]], name: str) -> list[bool]:
        return [name in index_names(sandbox, ds, table) for ds, table in tables]

    with connect(proxy, "shd_shard") as conn, conn.cursor() as cur:
        cur.execute("CREATE INDEX by_note ON sh_order (note)")
        assert has_index(order + order_shadows, "by_note") == [True] * 8
        cur.execute("PREVIEW DROP INDEX by_note ON sh_order")
        assert sorted(cur.fetchall()) == sorted([(ds, f"DROP INDEX by_note ON {t}") for ds, t in order + order_shadows])
        cur.execute("DROP INDEX by_note ON sh_order")
        assert has_index(order + order_shadows, "by_note") == [False] * 8
        # A shadow that drifted (its index already gone): the client learns they differ.
        cur.execute("CREATE INDEX by_note ON sh_order (note)")
        run(sandbox, "ds_1", "shd_sh0_shadow", "DROP INDEX by_note ON sh_order_1_shadow")
        with pytest.raises(pymysql.err.MySQLError) as info:
            cur.execute("DROP INDEX by_note ON sh_order")
        message = info.value.args[1]
        assert "ran on production but not on every shadow" in message and "by_note" in message, message
        assert has_index(order + order_shadows, "by_note") == [False] * 8
    with connect(proxy, "shd_shard_tbl") as conn, conn.cursor() as cur:
        cur.execute("CREATE INDEX by_user ON sh_pay (user_id)")
        assert has_index(pay + pay_shadows, "by_user") == [True] * 8
        cur.execute("DROP INDEX IF EXISTS by_user ON sh_pay")
        assert has_index(pay + pay_shadows, "by_user") == [False] * 8
    with connect(proxy, "shd_shard_plain") as conn, conn.cursor() as cur:  # the same tables, no shadow rules
        cur.execute("CREATE INDEX by_user ON sh_pay (user_id)")
        assert has_index(pay + pay_shadows, "by_user") == [True] * 4 + [False] * 4
        cur.execute("DROP INDEX by_user ON sh_pay")
        assert has_index(pay + pay_shadows, "by_user") == [False] * 8


def test_ddl_reports_an_unreachable_shadow(env, sandbox, tmp_path):  # env: the schema
    """Production takes the DDL, the shadow data source is down: the client is told that the
    shadows now differ, for a pass-through and a sharded database alike."""
    config = sandbox_proxy_config(sandbox, tmp_path, {
        "shd_gone": {"data_source": "pt_main", "shadow": {"data_sources": {"pt_main": "gone_0"}, "table_name": "{table}",
                                                          "tables": ["sh_gone"]}},
        "shd_gone_shard": {
            "sharding": {"data_sources": ["sh_0", "sh_1"],
                         "tables": {"sh_gone": {"actual_data_nodes": "sh_${0..1}.sh_gone",
                                                "database_strategy": {"columns": ["id"], "algorithm": "two"}}},
                         "algorithms": {"two": {"type": "MOD", "props": {"sharding_count": 2}}}},
            "shadow": {"data_sources": {"sh_0": "gone_0", "sh_1": "gone_1"}, "tables": ["sh_gone"]}}})
    base = config["data_sources"]
    for name in ("pt_main", "sh_0", "sh_1"):
        server, database = PLACES[name]
        base[name] = {**base[server], "database": database}
    for i in (0, 1):
        base[f"gone_{i}"] = {**base["ds_0"], "port": free_port(), "database": "gone"}
    proxy = start_proxy(config, tmp_path)
    try:
        for database in ("shd_gone", "shd_gone_shard"):
            with connect(proxy, database) as conn, conn.cursor() as cur:
                with pytest.raises(pymysql.err.MySQLError) as info:
                    cur.execute("CREATE TABLE sh_gone (id INT PRIMARY KEY)")
                code, message = info.value.args[:2]
                assert code == 1105 and "ran on production but not on every shadow" in message \
                    and "Can't connect to data source 'gone_" in message, message
    finally:
        stop_proxy(proxy)
    for name in ("pt_main", "sh_0", "sh_1"):
        assert run(sandbox, *PLACES[name], "SHOW TABLES LIKE 'sh_gone'") == [("sh_gone",)]
        run(sandbox, *PLACES[name], "DROP TABLE sh_gone")


def test_mixed_workload_from_many_clients(env, sandbox):
    """20 clients mix production and shadow writes (hint, session setting, column rules; text
    and prepared statements). Production tables end up exactly as the production statements
    alone make them, shadow tables exactly as the shadow statements alone do: replaying each
    kind directly on a copy of the table gives the same CHECKSUM TABLE; sharded rows sit on
    exactly the node the sharding rules give them."""
    proxy, _ = env
    scratch = [("pt_main", "sh_acct"), ("pt_main", "sh_acct_shadow"), ("pt_prod", "sh_acct"),
               ("pt_shadow", "sh_acct")] + [(f"sh_{i}{s}", f"sh_order_{j}{s}") for i in (0, 1) for j in (0, 1)
                                            for s in ("", "_shadow")]
    for ds, table in scratch:
        run(sandbox, *PLACES[ds], f"DELETE FROM {table}")
    log: dict[tuple[str, str], list[str]] = {}
    model: dict[tuple[str, str], dict[int, list]] = {}
    lock = threading.Lock()
    failures: list[BaseException] = []

    def client(n: int) -> None:
        rng = random.Random(n)
        database = ("shd_tbl", "shd_ds", "shd_shard")[n % 3]
        table, key = ("sh_order", "order_id") if database == "shd_shard" else ("sh_acct", "id")
        prepared = n % 4 == 3
        conn = mc_connect(proxy, database) if prepared else connect(proxy, database)
        plain = conn.cursor()
        cur = conn.cursor(prepared=True) if prepared else plain
        mine: dict[str, dict[int, list]] = {"prod": {}, "shadow": {}}
        try:
            for i in range(30):
                kind = rng.choice(("prod", "shadow"))
                op = rng.choice(("insert", "insert", "update", "delete")) if mine[kind] else "insert"
                if op == "insert":
                    how = rng.choice(("rule", "hint", "session")) if kind == "shadow" else "plain"
                    user = rng.choice((7, 8, 9100)) if how == "rule" else rng.choice((1, 2, 3))
                    row = [n * 1000 + i, user, f"c{n}", i]
                    sql, args = f"INSERT INTO {table} ({key}, user_id, note, amount) VALUES (%s, %s, %s, %s)", row
                else:
                    ident = rng.choice(sorted(mine[kind]))
                    row = mine[kind][ident]
                    how = "plain" if kind == "prod" else rng.choice(
                        ("rule", "hint", "session") if row[1] in (7, 8, 9100) else ("hint", "session"))
                    where = f" WHERE {key} = %s" + (" AND user_id = %s" if how == "rule" else "")
                    wargs = [ident] + ([row[1]] if how == "rule" else [])
                    if op == "update":
                        sql, args = f"UPDATE {table} SET amount = amount + %s" + where, [i] + wargs
                    else:
                        sql, args = f"DELETE FROM {table}" + where, wargs
                hint = "/* dbmesh:shadow */ " if how == "hint" else ""
                if how == "session":
                    plain.execute("SET dbmesh_shadow = 1")
                if prepared:
                    cur.execute(hint + sql.replace("%s", "?"), tuple(args))
                else:
                    cur.execute(hint + sql, tuple(args))
                if how == "session":
                    plain.execute("SET dbmesh_shadow = 0")
                if op == "insert":
                    mine[kind][row[0]] = row
                elif op == "update":
                    row[3] += i
                else:
                    del mine[kind][row[0]]
                literal = sql % tuple(f"'{a}'" if isinstance(a, str) else str(a) for a in args)
                with lock:
                    log.setdefault((database, kind), []).append(literal)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
        finally:
            with lock:
                for kind in mine:
                    model.setdefault((database, kind), {}).update(mine[kind])
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures[:3]

    def checksum(cur, table: str) -> int:
        cur.execute(f"CHECKSUM TABLE {table}")
        return cur.fetchone()[1]

    for database, prod, shadow in (("shd_tbl", ("pt_main", "sh_acct"), ("pt_main", "sh_acct_shadow")),
                                   ("shd_ds", ("pt_prod", "sh_acct"), ("pt_shadow", "sh_acct"))):
        for kind, (ds, table) in (("prod", prod), ("shadow", shadow)):
            with sandbox.admin_connect(PLACES[ds][0], database=PLACES[ds][1]) as conn, conn.cursor() as cur:
                cur.execute("DROP TABLE IF EXISTS ref_copy")
                cur.execute(f"CREATE TABLE ref_copy LIKE {table}")
                for sql in log.get((database, kind), []):  # the statements of this kind alone, no sidecar
                    cur.execute(sql.replace(" sh_acct ", " ref_copy ", 1))
                expected, actual = checksum(cur, "ref_copy"), checksum(cur, table)
                cur.execute("SELECT COUNT(*) FROM ref_copy")
                count = cur.fetchone()[0]
                cur.execute("DROP TABLE ref_copy")
            assert count == len(model[(database, kind)]) and actual == expected, (database, kind)
    for kind, suffix in (("prod", ""), ("shadow", "_shadow")):
        rows = model[("shd_shard", kind)]
        for i in (0, 1):
            for j in (0, 1):
                found = [list(r[:4]) for r in dump(sandbox, f"sh_{i}{suffix}", f"sh_order_{j}{suffix}")]
                assert found == sorted(r for r in rows.values() if r[1] % 2 == i and r[0] % 2 == j), (kind, i, j)


def test_pressure_driver_runs_shadow_traffic(env, sandbox, tmp_path):
    proxy, _ = env
    report_file = tmp_path / "report.json"
    workload = tmp_path / "workload.sql"
    workload.write_text("-- a pressure test workload\nINSERT INTO sh_log (msg) VALUES ('load-{seq}');\n"
                        "SELECT COUNT(*) FROM sh_log WHERE msg LIKE 'load-%';\n")
    cmd = [sys.executable, "-m", "dbmesh", "pressure", "-c", str(proxy.config_path), "--database", "shd_tbl",
           "--sql", str(workload), "--rate", "300", "--duration", "2", "--concurrency", "6", "--json", str(report_file)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={"COLUMNS": "120", "PATH": ""}, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_file.read_text())
    assert report["ok"] == 600 and report["errors"] == 0, report
    assert abs(report["throughput"] - report["ok"] / report["elapsed_s"]) < 0.5  # the report adds up
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["p99"]
    assert "latency p99" in done.stdout and "throughput" in done.stdout
    assert run(sandbox, "ds_0", "shd_pt", "SELECT COUNT(*) FROM sh_log_shadow WHERE msg LIKE 'load-%'") == [(300,)]
    assert run(sandbox, "ds_0", "shd_pt", "SELECT COUNT(*) FROM sh_log") == [(0,)]
    # Marked by hint on the sharded database: every row lands on a shadow node.
    before = sum(len(dump(sandbox, f"sh_{i}", f"sh_order_{j}")) for i in (0, 1) for j in (0, 1))
    cmd = [sys.executable, "-m", "dbmesh", "pressure", "-c", str(proxy.config_path), "--database", "shd_shard",
           "--statements", "INSERT INTO sh_order (order_id, user_id, note) VALUES (9{seq}, {rand:1:4}, 'load')",
           "--rate", "200", "--duration", "1", "--mark", "hint", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={"COLUMNS": "120", "PATH": ""}, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    loaded = sum(1 for i in (0, 1) for j in (0, 1) for r in dump(sandbox, f"sh_{i}_shadow", f"sh_order_{j}_shadow")
                 if r[2] == "load" and r[1] % 2 == i and r[0] % 2 == j)
    assert loaded == 200
    assert sum(len(dump(sandbox, f"sh_{i}", f"sh_order_{j}")) for i in (0, 1) for j in (0, 1)) == before
    # A database without shadow rules is refused before anything runs.
    cmd[cmd.index("shd_shard")] = "shd_plain"
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={"PATH": ""}, timeout=60)
    assert done.returncode == 2 and "no shadow rules" in done.stderr
