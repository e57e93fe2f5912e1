"""BASE transactions through the sidecar on real shards: bank transfers under concurrency,
compensation of every kind of statement, the isolations, refusals, and recovery after the
sidecar is killed at each point of a global transaction."""

from __future__ import annotations

import random
import re
import threading
import time
import urllib.request

import pymysql
import pytest

from conftest import free_port, sandbox_proxy_config, start_proxy, stop_proxy
from test_transactions import (
    ACCOUNTS,
    INITIAL,
    RULES,
    balances,
    concurrent_transfers,
    prepared_branches,
    run_crashing_transfer,
    total,
    transfer,
)

DATA_SOURCES = ("ds_0", "ds_1")
ORDER_RULES = {
    **RULES,
    "tables": {**RULES["tables"],
               "item": {"actual_data_nodes": "ds_${0..1}.item",
                        "database_strategy": {"columns": ["id"], "algorithm": "two"}},
               "nokey": {"actual_data_nodes": "ds_${0..1}.nokey",
                         "database_strategy": {"columns": ["id"], "algorithm": "two"}}},
}


@pytest.fixture(scope="module")
def base_config(sandbox, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("base")
    config = sandbox_proxy_config(sandbox, workdir, {"bank": {
        "sharding": ORDER_RULES,
        "transaction": {"mode": "BASE", "base_isolation": "record_lock", "lock_wait_timeout_s": 5}}})
    config["instance_id"] = "basetest"
    config["metrics"] = {"host": "127.0.0.1", "port": free_port()}
    return config, workdir


def metric(config: dict, name: str, **labels: str) -> float:
    """The value of a counter on the proxy's /metrics (0 when absent)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{config['metrics']['port']}/metrics", timeout=5).read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def create_tables(proxy) -> None:
    with proxy.connect(database="bank") as conn, conn.cursor() as cur:
        for table in ("account", "item", "nokey"):
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute("CREATE TABLE account (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
        cur.execute("INSERT INTO account (id, balance) VALUES "
                    + ", ".join(f"({i}, {INITIAL})" for i in range(ACCOUNTS)))
        cur.execute("CREATE TABLE item (id INT PRIMARY KEY, name VARCHAR(40) CHARACTER SET utf8mb4, "
                    "price DECIMAL(10,2), note TEXT, seen TIMESTAMP(6) NULL, data VARBINARY(16))")
        cur.execute("INSERT INTO item (id, name, price, note, seen, data) VALUES (1, 'one', 1.50, NULL, '2024-03-31 01:30:00.5', x'00ff'), "
                    "(2, 'zwei ä', 2.00, 'n', NULL, NULL), (3, 'three', NULL, '', NULL, x'')")
        cur.execute("CREATE TABLE nokey (id INT, v INT)")


@pytest.fixture
def bank(base_config, sandbox):
    config, workdir = base_config
    proxy = start_proxy(config, workdir)
    create_tables(proxy)
    try:
        yield proxy
    finally:
        stop_proxy(proxy)


def leftovers(sandbox) -> dict[str, int]:
    """Rows of the BASE bookkeeping tables left on the shards."""
    found = {}
    for ds in DATA_SOURCES:
        with sandbox.admin_connect(ds, database=f"shop_{ds}") as conn, conn.cursor() as cur:
            for table in ("dbmesh_undo_log", "dbmesh_global_lock", "dbmesh_global_txn", "dbmesh_xa_log"):
                cur.execute(f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                            f"AND TABLE_NAME = '{table}'")
                if cur.fetchone()[0]:
                    cur.execute(f"SELECT COUNT(*) FROM {table}")
                    found[f"{ds}.{table}"] = cur.fetchone()[0]
    return found


def wait_clean(sandbox, allow: tuple[str, ...] = ()) -> dict[str, int]:
    """Clean-up after COMMIT runs in the background: wait until nothing is left."""
    deadline = time.monotonic() + 20
    while True:
        left = {k: v for k, v in leftovers(sandbox).items() if v and not k.endswith(allow)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def table_state(sandbox, table: str) -> list[tuple]:
    rows = []
    for ds in DATA_SOURCES:
        with sandbox.admin_connect(ds, database=f"shop_{ds}") as conn, conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            cur.execute(f"SELECT * FROM {table} ORDER BY 1")
            rows += cur.fetchall()
            cur.execute(f"CHECKSUM TABLE {table}")
            rows.append(("checksum", ds, cur.fetchone()[1]))
    return rows


def test_concurrent_transfers_keep_the_total(bank, sandbox):
    stats = concurrent_transfers(bank, "BASE", rounds=12)  # the database's isolation: record_lock
    assert stats["commit"] > 50 and stats["rollback"] > 10, stats
    assert total(sandbox) == ACCOUNTS * INITIAL
    assert wait_clean(sandbox) == {}


@pytest.mark.parametrize("isolation", ["none", "version", "record_lock"])
def test_rollback_undoes_every_kind_of_statement(bank, sandbox, isolation):
    before_items, before_accounts = table_state(sandbox, "item"), table_state(sandbox, "account")
    with bank.connect(database="bank") as conn, conn.cursor() as cur:
        cur.execute(f"SET dbmesh_base_isolation = '{isolation}'")
        cur.execute("SET time_zone = '+05:00'")  # images are taken in UTC whatever the session's zone
        conn.begin()
        cur.execute("INSERT INTO item (id, name, price, note, seen, data) VALUES "
                    "(10, 'ten', 10.00, 'x', NOW(6), x'10'), (11, 'eleven', NULL, NULL, NULL, NULL)")
        assert cur.rowcount == 2
        cur.execute("UPDATE item SET price = price * 2, note = CONCAT(COALESCE(note, ''), '+'), "
                    "seen = '2020-01-01 00:00:00' WHERE id IN (1, 2, 10)")
        assert cur.rowcount == 3
        cur.execute("DELETE FROM item WHERE id IN (3, 11)")
        assert cur.rowcount == 2
        cur.execute("UPDATE account SET balance = 0")  # every account on both shards
        assert cur.rowcount == ACCOUNTS
        cur.execute("SELECT COUNT(*), SUM(balance) FROM account")
        assert cur.fetchone() == (ACCOUNTS, 0)  # the transaction sees its own changes
        conn.rollback()
    assert table_state(sandbox, "item") == before_items
    assert table_state(sandbox, "account") == before_accounts
    assert wait_clean(sandbox) == {}


def test_bookkeeping_tables_are_not_listed(bank):
    with bank.connect(database="bank") as conn, conn.cursor() as cur:
        conn.begin()
        transfer(cur, 0, 1, 1)  # the undo log, lock and global tables exist from here on
        conn.rollback()
        cur.execute("SHOW TABLES")
        listed = {r[0] for r in cur.fetchall()}  # other tests' tables may be there too
        assert {"account", "item", "nokey"} <= listed
        assert not {t for t in listed if t.startswith("dbmesh_")}, listed


def test_commit_keeps_changes_and_clears_the_undo_log(bank, sandbox, base_config):
    labels = {"database": "bank", "mode": "BASE", "outcome": "commit"}
    committed = metric(base_config[0], "dbmesh_global_transactions_total", **labels)
    with bank.connect(database="bank") as conn, conn.cursor() as cur:
        conn.begin()
        transfer(cur, 0, 1, 100)
        cur.execute("INSERT INTO item (id, name) VALUES (20, 'a'), (21, 'b')")
        conn.commit()
    assert metric(base_config[0], "dbmesh_global_transactions_total", **labels) == committed + 1
    assert balances(sandbox) == (INITIAL - 100, INITIAL + 100)
    assert len([r for r in table_state(sandbox, "item") if r[0] in (20, 21)]) == 2
    assert wait_clean(sandbox) == {}


def test_autocommit_statement_over_two_shards_is_one_global_transaction(bank, sandbox):
    with bank.connect(database="bank") as conn, conn.cursor() as cur:
        cur.execute("UPDATE account SET balance = balance + 1")
        assert cur.rowcount == ACCOUNTS
        # A duplicate key on one shard: the other shard's insert must not stay.
        with pytest.raises(pymysql.err.IntegrityError) as failed:
            cur.execute("INSERT INTO item (id, name) VALUES (30, 'new'), (1, 'duplicate')")
        assert failed.value.args[0] == 1062
    assert total(sandbox) == ACCOUNTS * (INITIAL + 1)
    assert not [r for r in table_state(sandbox, "item") if r[0] == 30]
    assert wait_clean(sandbox) == {}


def test_failed_statement_inside_a_transaction_leaves_nothing(bank, sandbox):
    with bank.connect(database="bank") as conn, conn.cursor() as cur:
        conn.begin()
        transfer(cur, 0, 1, 5)
        with pytest.raises(pymysql.err.IntegrityError):
            cur.execute("INSERT INTO item (id, name) VALUES (31, 'new'), (2, 'duplicate')")
        conn.commit()  # like MySQL: the failed statement is gone, the others commit
    assert balances(sandbox) == (INITIAL - 5, INITIAL + 5)
    assert not [r for r in table_state(sandbox, "item") if r[0] == 31]
    assert wait_clean(sandbox) == {}


def test_version_isolation_keeps_a_concurrent_write(bank, sandbox, base_config):
    with bank.connect(database="bank") as conn, conn.cursor() as cur:
        cur.execute("SET dbmesh_base_isolation = 'version'")
        conn.begin()
        transfer(cur, 0, 1, 100)
        # Someone outside the global transaction changes account 0 meanwhile.
        with sandbox.admin_connect("ds_0", database="shop_ds_0") as other, other.cursor() as ocur:
            ocur.execute("UPDATE account SET balance = 7 WHERE id = 0")
            other.commit()
        with pytest.raises(pymysql.err.OperationalError) as failed:
            conn.rollback()
        assert failed.value.args[0] == 1180
        assert "row (0) of account was changed by another transaction" in failed.value.args[1]
        assert "needs_attention" in failed.value.args[1]
    assert metric(base_config[0], "dbmesh_base_needs_attention_total", database="bank") >= 1
    # Nothing was overwritten and nothing half undone: the other write and the transfer stand.
    assert balances(sandbox) == (7, INITIAL + 100)
    with sandbox.admin_connect("ds_0", database="shop_ds_0") as admin, admin.cursor() as cur:
        cur.execute("SELECT status, detail FROM dbmesh_global_txn")
        rows = cur.fetchall()
        assert len(rows) == 1 and rows[0][0] == "needs_attention" and "balance" in rows[0][1]
        cur.execute("SELECT COUNT(*) FROM dbmesh_global_lock")
        assert cur.fetchone()[0] == 0
        # The operator's side: the undo records stay for inspection; clear them for the next test.
        cur.execute("DELETE FROM dbmesh_global_txn")
        admin.commit()
    for ds in DATA_SOURCES:
        with sandbox.admin_connect(ds, database=f"shop_{ds}") as admin, admin.cursor() as cur:
            cur.execute("DELETE FROM dbmesh_undo_log")
            admin.commit()


def test_none_isolation_overwrites_a_concurrent_write(bank, sandbox):
    with bank.connect(database="bank") as conn, conn.cursor() as cur:
        cur.execute("SET dbmesh_base_isolation = 'none'")
        conn.begin()
        transfer(cur, 0, 1, 100)
        with sandbox.admin_connect("ds_0", database="shop_ds_0") as other, other.cursor() as ocur:
            ocur.execute("UPDATE account SET balance = 7 WHERE id = 0")
            other.commit()
        conn.rollback()
    assert balances(sandbox) == (INITIAL, INITIAL)  # 'none' compensates as is
    assert wait_clean(sandbox) == {}


def test_record_lock_serialises_two_global_transactions(bank, sandbox):
    first = bank.connect(database="bank")
    second = bank.connect(database="bank")
    try:
        with first.cursor() as c1:
            first.begin()
            c1.execute("UPDATE account SET balance = balance - 10 WHERE id = 0")
        done = threading.Event()
        errors: list[BaseException] = []

        def second_transaction() -> None:
            try:
                with second.cursor() as c2:
                    second.begin()
                    c2.execute("UPDATE account SET balance = balance - 20 WHERE id = 0")  # waits for first
                    second.commit()
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors.append(exc)
            done.set()

        thread = threading.Thread(target=second_transaction)
        thread.start()
        assert not done.wait(0.5), "the second transaction must wait for the first one's global lock"
        with first.cursor():
            first.rollback()  # compensation restores 1000; only then may the second one write
        thread.join(10)
        assert done.is_set() and not errors, errors
        assert balances(sandbox)[0] == INITIAL - 20
    finally:
        first.close()
        second.close()
    assert wait_clean(sandbox) == {}


def test_record_lock_wait_times_out_with_a_clear_error(bank, sandbox, base_config):
    with bank.connect(database="bank") as first, first.cursor() as c1:
        first.begin()
        c1.execute("SELECT balance FROM account WHERE id = 1 FOR UPDATE")  # locking reads take the lock too
        with bank.connect(database="bank") as second, second.cursor() as c2:
            second.begin()
            started = time.monotonic()
            with pytest.raises(pymysql.err.OperationalError) as failed:
                c2.execute("UPDATE account SET balance = 0 WHERE id = 1")
            assert failed.value.args[0] == 1205
            assert "account" in failed.value.args[1] and "try restarting transaction" in failed.value.args[1]
            assert time.monotonic() - started >= 4  # lock_wait_timeout_s: 5 (an order, not a speed)
            assert metric(base_config[0], "dbmesh_base_statement_retries_total", database="bank", reason="lock") > 0
            second.rollback()
        first.commit()
    assert balances(sandbox)[1] == INITIAL
    assert wait_clean(sandbox) == {}


@pytest.mark.parametrize("statement, reason", [
    ("UPDATE nokey SET v = 1 WHERE id = 1", "has no primary key"),
    ("REPLACE INTO item (id, name) VALUES (1, 'r')", "REPLACE"),
    ("INSERT INTO item (id, name) VALUES (1, 'x') ON DUPLICATE KEY UPDATE name = 'y'", "ON DUPLICATE KEY"),
    ("INSERT IGNORE INTO item (id, name) VALUES (40, 'x')", "INSERT IGNORE"),
])
def test_statements_it_cannot_undo_are_refused(bank, sandbox, statement, reason):
    before = table_state(sandbox, "item")
    with bank.connect(database="bank") as conn, conn.cursor() as cur:
        conn.begin()
        cur.execute("UPDATE account SET balance = balance + 1 WHERE id = 0")
        with pytest.raises(pymysql.err.MySQLError) as failed:
            cur.execute(statement)
        assert failed.value.args[0] == 1235, failed.value.args
        assert reason in failed.value.args[1] and "BASE" in failed.value.args[1]
        cur.execute("SELECT 1")  # the session goes on
        conn.rollback()
    assert table_state(sandbox, "item") == before
    assert balances(sandbox)[0] == INITIAL
    assert wait_clean(sandbox) == {}


@pytest.mark.parametrize("failpoint, committed", [
    ("base_after_statement", False),          # the first branch committed, the second not yet
    ("base_before_commit_status", False),     # both branches committed, no commit recorded
    ("base_after_commit_status", True),       # commit recorded, clean-up not done
])
def test_recovery_after_kill(bank, base_config, sandbox, failpoint, committed):
    config, workdir = base_config
    stop_proxy(bank)
    run_crashing_transfer(config, workdir, failpoint)
    restarted = start_proxy(config, workdir)  # recovery runs at start
    try:
        assert balances(sandbox) == ((INITIAL - 100, INITIAL + 100) if committed else (INITIAL, INITIAL))
        assert total(sandbox) == ACCOUNTS * INITIAL
        assert wait_clean(sandbox) == {}
    finally:
        stop_proxy(restarted)


def test_recovery_after_kill_during_rollback(bank, base_config, sandbox):
    config, workdir = base_config
    stop_proxy(bank)
    run_crashing_transfer(config, workdir, "base_before_compensation", finish="rollback")
    restarted = start_proxy(config, workdir)
    try:
        assert balances(sandbox) == (INITIAL, INITIAL)
        assert wait_clean(sandbox) == {}
    finally:
        stop_proxy(restarted)


def test_client_gone_mid_transaction_is_compensated(bank, sandbox):
    conn = bank.connect(database="bank")
    with conn.cursor() as cur:
        conn.begin()
        transfer(cur, 0, 1, 100)
    conn.close()  # no COMMIT: the session's end rolls the global transaction back
    deadline = time.monotonic() + 10
    while balances(sandbox) != (INITIAL, INITIAL) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert balances(sandbox) == (INITIAL, INITIAL)
    assert wait_clean(sandbox) == {}


def test_session_settings_are_checked(bank):
    with bank.connect(database="bank") as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.MySQLError) as failed:
            cur.execute("SET dbmesh_base_isolation = 'serializable'")
        assert failed.value.args[0] == 1231 and "none, version, record_lock" in failed.value.args[1]
        conn.begin()
        cur.execute("SELECT balance FROM account WHERE id = 0")
        with pytest.raises(pymysql.err.MySQLError) as failed:
            cur.execute("SET dbmesh_base_isolation = 'none'")
        assert failed.value.args[0] == 1235 and "inside a transaction" in failed.value.args[1]
        with pytest.raises(pymysql.err.MySQLError) as failed:
            cur.execute("CREATE TABLE other (id INT PRIMARY KEY)")
        assert failed.value.args[0] == 1235 and "COMMIT or ROLLBACK first" in failed.value.args[1]
        with pytest.raises(pymysql.err.MySQLError) as failed:
            cur.execute("UPDATE missing SET v = 1 WHERE id = 1")  # answered like the server does
        assert failed.value.args[0] == 1146 and "doesn't exist" in failed.value.args[1]
        conn.rollback()


@pytest.mark.parametrize("mode", ["XA", "BASE"])
def test_kill_at_a_random_moment_under_load(bank, base_config, sandbox, mode):
    """kill -9 while 8 clients run transfers, at a random moment; after the restart's recovery
    the total is right and nothing stays prepared, locked or logged."""
    config, workdir = base_config
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)

    def client(index: int) -> None:
        crnd = random.Random(seed + index)
        try:
            conn = bank.connect(database="bank")
            with conn.cursor() as cur:
                cur.execute(f"SET dbmesh_transaction_mode = '{mode}'")
                cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
                while True:
                    a, b = crnd.sample(range(ACCOUNTS), 2)
                    try:
                        conn.begin()
                        transfer(cur, a, b, crnd.randint(1, 50))
                        conn.rollback() if crnd.random() < 0.3 else conn.commit()
                    except pymysql.err.OperationalError as exc:
                        if exc.args[0] not in (1205, 1213):
                            raise
                        conn.rollback()
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError, ConnectionError):
            return  # the sidecar is gone

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(rnd.uniform(0.3, 2.0))
    bank.process.kill()
    bank.process.wait()
    for t in threads:
        t.join(30)
    restarted = start_proxy(config, workdir)  # recovery runs at start
    try:
        assert total(sandbox) == ACCOUNTS * INITIAL, f"seed {seed}"
        assert prepared_branches(sandbox) == [], f"seed {seed}"
        assert wait_clean(sandbox) == {}, f"seed {seed}"
    finally:
        stop_proxy(restarted)


def all_balances(sandbox) -> dict[int, int]:
    found = {}
    for ds in DATA_SOURCES:
        with sandbox.admin_connect(ds, database=f"shop_{ds}") as conn, conn.cursor() as cur:
            cur.execute("SELECT id, balance FROM account")
            found.update(cur.fetchall())
    return found


def test_two_workers_run_and_recover_their_own_transactions(base_config, sandbox):
    """With worker processes each worker's xids carry its index: transfers on both workers
    commit and roll back cleanly, and global transactions left open when the supervisor is
    killed are compensated at the next start."""
    config, workdir = base_config
    proxy = start_proxy({**config, "server": {"workers": 2}}, workdir)
    try:
        create_tables(proxy)
        conns = [proxy.connect(database="bank") for _ in range(6)]  # spread over both workers
        for n, conn in enumerate(conns):
            with conn.cursor() as cur:
                conn.begin()
                transfer(cur, 2 * n, 2 * n + 1, 10)
                conn.commit() if n % 2 else conn.rollback()
        assert total(sandbox) == ACCOUNTS * INITIAL
        assert wait_clean(sandbox) == {}
        committed = all_balances(sandbox)
        for n, conn in enumerate(conns):  # every session inside a transaction, then kill -9
            conn.begin()
            transfer(conn.cursor(), 2 * n, 2 * n + 1, 100)
        proxy.process.kill()
    finally:
        stop_proxy(proxy)
    restarted = start_proxy(config, workdir)  # recovery runs at start, for every worker's xids
    try:
        assert all_balances(sandbox) == committed
        assert wait_clean(sandbox) == {}
    finally:
        stop_proxy(restarted)


def test_prepared_statements_in_a_base_transaction(bank, sandbox):
    import mysql.connector

    conn = mysql.connector.connect(host=bank.host, port=bank.port, user="app", password="app", database="bank",
                                   autocommit=True)
    try:
        cur = conn.cursor(prepared=True)
        for finish in ("ROLLBACK", "COMMIT"):
            cur.execute("BEGIN")  # prepared transaction control drives the same global transaction
            cur.execute("UPDATE account SET balance = balance - ? WHERE id = ?", (100, 0))
            cur.execute("UPDATE account SET balance = balance + ? WHERE id = ?", (100, 1))
            cur.execute(finish)
            expected = (INITIAL, INITIAL) if finish == "ROLLBACK" else (INITIAL - 100, INITIAL + 100)
            assert balances(sandbox) == expected
    finally:
        conn.close()
    assert wait_clean(sandbox) == {}


def test_a_data_source_lost_mid_transaction(bank, base_config, sandbox):
    """ds_1 stops after both branches committed: ROLLBACK fails with a clear error, the
    sidecar goes on serving, and once ds_1 is back the recovery undoes what stayed."""
    config, workdir = base_config
    conn = bank.connect(database="bank")
    try:
        with conn.cursor() as cur:
            conn.begin()
            transfer(cur, 0, 1, 100)
            sandbox.stop_instance("ds_1")
            try:
                with pytest.raises(pymysql.err.MySQLError) as failed:
                    conn.rollback()
                assert failed.value.args[0] in (1430, 1429), failed.value.args  # lost / can't connect
                with bank.connect(database="bank") as other, other.cursor() as ocur:
                    ocur.execute("SELECT balance FROM account WHERE id = 0")  # ds_0 still served
                    assert ocur.fetchone()[0] == INITIAL - 100
            finally:
                sandbox.start_instance("ds_1")
    finally:
        conn.close()
    assert bank.alive()
    stop_proxy(bank)
    restarted = start_proxy(config, workdir)  # recovery compensates both branches
    try:
        assert balances(sandbox) == (INITIAL, INITIAL)
        assert wait_clean(sandbox) == {}
    finally:
        stop_proxy(restarted)
