"""A deadlock across two data sources, which neither server sees: the sidecar finds the
cycle and ends it as a server ends its own, with error 1213 to the youngest transaction
(rolled back whole) while the other goes on, whichever way the victim's waiting
statement was sent (text through a collected write, prepared or locking read relayed raw)."""

from __future__ import annotations

import threading

import mysql.connector
import pymysql
import pytest

from conftest import fast_lane_counts, free_port, sandbox_proxy_config, start_proxy, stop_proxy
from dbmesh.frontend import deadlocks
from test_transactions import ACCOUNTS, INITIAL, RULES, balances

# Long enough that a lock wait timeout (1205) means the detector did not act.
LOCK_WAIT_S = 40


def _deadlock_proxy(sandbox, workdir, pool_size: int | None = None):
    config = sandbox_proxy_config(sandbox, workdir, {"bank": {"sharding": RULES}})
    config["transaction"] = {"deadlock_check_interval_s": 0.2}
    config["metrics"] = {"host": "127.0.0.1", "port": free_port()}
    if pool_size is not None:
        for ds in config["data_sources"].values():
            ds["pool"] = {"max_size": pool_size}
    proxy = start_proxy(config, workdir)
    proxy.metrics_port = config["metrics"]["port"]
    return proxy


@pytest.fixture(scope="module")
def proxy(sandbox, tmp_path_factory):
    proxy = _deadlock_proxy(sandbox, tmp_path_factory.mktemp("deadlocks"))
    try:
        yield proxy
    finally:
        stop_proxy(proxy)


@pytest.fixture(scope="module")
def full_pools_proxy(sandbox, tmp_path_factory):
    """Two connections per data source: the two deadlocked transactions hold them all."""
    proxy = _deadlock_proxy(sandbox, tmp_path_factory.mktemp("deadlocks-full-pools"), pool_size=2)
    try:
        yield proxy
    finally:
        stop_proxy(proxy)


def _create_accounts(proxy):
    with proxy.connect(database="bank") as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS account")
        cur.execute("CREATE TABLE account (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
        cur.execute("INSERT INTO account (id, balance) VALUES " + ", ".join(f"({i}, {INITIAL})" for i in range(ACCOUNTS)))


def _pymysql(proxy, mode: str):
    conn = proxy.connect(database="bank")
    with conn.cursor() as cur:
        cur.execute(f"SET dbmesh_transaction_mode = '{mode}'")
        cur.execute(f"SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT_S}")
    return conn


def _connector(proxy, mode: str):
    conn = mysql.connector.connect(host=proxy.host, port=proxy.port, user="app", password="app", database="bank",
                                   use_pure=True, autocommit=True)
    cur = conn.cursor()
    cur.execute(f"SET dbmesh_transaction_mode = '{mode}'")
    cur.execute(f"SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT_S}")
    cur.close()
    return conn


def _text_update(conn):
    with conn.cursor() as cur:
        cur.execute("UPDATE account SET balance = balance + 7 WHERE id = 0")


def _locking_read(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT balance FROM account WHERE id = 0 FOR UPDATE")
        cur.fetchall()


def _prepared_update(conn):
    cur = conn.cursor(prepared=True)
    cur.execute("UPDATE account SET balance = balance + ? WHERE id = ?", (7, 0))
    cur.close()


@pytest.mark.parametrize("mode, victim_client, waiting_statement", [
    ("LOCAL", _pymysql, _text_update),
    ("XA", _pymysql, _text_update),
    ("LOCAL", _pymysql, _locking_read),
    ("LOCAL", _connector, _prepared_update),
])
def test_the_youngest_transaction_of_a_cross_shard_deadlock_gets_1213(proxy, sandbox, mode, victim_client,
                                                                      waiting_statement):
    _create_accounts(proxy)
    _deadlock(proxy, sandbox, mode, victim_client, waiting_statement)


def test_a_deadlock_is_ended_while_it_holds_every_pooled_connection(full_pools_proxy, sandbox):
    """The detector looks through connections of its own: borrowing from the pools, it
    would wait for a connection only the deadlock's end can free."""
    _create_accounts(full_pools_proxy)
    _deadlock(full_pools_proxy, sandbox, "LOCAL", _pymysql, _text_update)


def _commit_in_background(conn, sql: str, outcome: dict[str, object], name: str) -> threading.Thread:
    """Run ``sql`` then COMMIT on ``conn`` in a thread; ``outcome[name]`` says how it ended."""
    def run() -> None:
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
            conn.commit()
            outcome[name] = "committed"
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            outcome[name] = exc

    waiter = threading.Thread(target=run)
    waiter.start()
    return waiter


def _deadlock(proxy, sandbox, mode, victim_client, waiting_statement):
    first = _pymysql(proxy, mode)
    second = victim_client(proxy, mode)
    outcome: dict[str, object] = {}
    try:
        first.begin()
        with first.cursor() as cur:
            cur.execute("UPDATE account SET balance = balance - 100 WHERE id = 0")  # ds_0
        second.start_transaction() if hasattr(second, "start_transaction") else second.begin()
        cur2 = second.cursor()
        cur2.execute("UPDATE account SET balance = balance - 5 WHERE id = 1")  # ds_1, the younger transaction
        cur2.close()

        # waits for second on ds_1
        waiter = _commit_in_background(first, "UPDATE account SET balance = balance + 100 WHERE id = 1",
                                       outcome, "first")
        with pytest.raises((pymysql.err.OperationalError, mysql.connector.Error)) as ended:
            waiting_statement(second)  # waits for first on ds_0: the cycle
        code = ended.value.args[0] if isinstance(ended.value, pymysql.err.MySQLError) else ended.value.errno
        assert code == 1213, ended.value
        assert "deadlock across data sources ds_0, ds_1" in str(ended.value)
        waiter.join(LOCK_WAIT_S + 10)
        assert outcome["first"] == "committed"
        second.rollback()  # what a client does after 1213: the transaction is gone already
    finally:
        first.close()
        second.close()
    # The victim's update of account 1 was rolled back whole; the other transfer committed.
    assert balances(sandbox) == (INITIAL - 100, INITIAL + 100)
    assert "deadlock across data sources: sessions" in proxy.log()


def test_victims_leave_no_cycle_and_are_each_the_youngest_of_the_cycle_they_break():
    # 1 -> 2 -> 3 -> 1 and 2 -> 3 -> 4 -> 2 share 2 and 3; 5 -> 6 -> 5 stands apart; 7 waits on a cycle.
    waits = {1: {2: None}, 2: {3: None}, 3: {1: None, 4: None}, 4: {2: None}, 5: {6: None}, 6: {5: None},
             7: {1: None}}
    started_at = {1: 10.0, 2: 30.0, 3: 20.0, 4: 5.0, 5: 1.0, 6: 2.0, 7: 99.0}
    chosen = deadlocks._victims(waits, started_at.__getitem__)
    victims = [victim for _, victim in chosen]
    for cycle, victim in chosen:
        assert victim == max(cycle, key=started_at.__getitem__)
    assert sorted(victims) == [2, 6]  # 2 breaks both cycles through it; 7 is in none
    left = {node: {h for h in holders if h not in victims} for node, holders in waits.items() if node not in victims}
    assert deadlocks._victims(left, started_at.__getitem__) == []


def test_one_victim_ends_the_cycles_a_short_cycle_sits_on():
    # a waits for b, c and d; b and c wait for d; d waits for a. Ending d, the youngest of the
    # shortest cycle (a, d), ends all three; the youngest of a longer one first would not.
    waits = {"a": {"b": None, "c": None, "d": None}, "b": {"d": None}, "c": {"d": None}, "d": {"a": None}}
    started_at = {"a": 1.0, "b": 3.0, "c": 4.0, "d": 2.0}
    assert deadlocks._victims(waits, started_at.__getitem__) == [(["a", "d"], "d")]


NO_PROCESS_USER = "no_process"


@pytest.fixture(scope="module")
def no_process_proxy(sandbox, tmp_path_factory):
    """Backend connections by a user that may use the data sources' databases but lacks the
    global PROCESS privilege, so it may not read the servers' lock waits."""
    for ds in ("ds_0", "ds_1"):
        with sandbox.admin_connect(ds) as conn, conn.cursor() as cur:
            cur.execute("SET SESSION sql_log_bin = 0")
            for host in ("%", "127.0.0.1", "localhost"):
                cur.execute(f"CREATE USER IF NOT EXISTS '{NO_PROCESS_USER}'@'{host}' IDENTIFIED BY '{NO_PROCESS_USER}'")
                cur.execute(f"GRANT ALL PRIVILEGES ON `shop\\_ds\\_%`.* TO '{NO_PROCESS_USER}'@'{host}'")
    workdir = tmp_path_factory.mktemp("deadlocks-no-process")
    config = sandbox_proxy_config(sandbox, workdir, {"bank": {"sharding": RULES}})
    config["transaction"] = {"deadlock_check_interval_s": 0.2}
    for ds in config["data_sources"].values():
        ds["user"] = ds["password"] = NO_PROCESS_USER
    proxy = start_proxy(config, workdir)
    try:
        yield proxy
    finally:
        stop_proxy(proxy)


def test_without_the_process_privilege_the_detector_turns_itself_off_and_says_why(no_process_proxy, sandbox):
    """The deadlock then ends as it would without the sidecar: by the lock wait timeout."""
    _create_accounts(no_process_proxy)
    first, second = (_pymysql(no_process_proxy, "LOCAL") for _ in range(2))
    try:
        with second.cursor() as cur:
            cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
        first.begin()
        second.begin()
        with first.cursor() as cur, second.cursor() as cur2:
            cur.execute("UPDATE account SET balance = balance - 100 WHERE id = 0")  # ds_0
            cur2.execute("UPDATE account SET balance = balance - 5 WHERE id = 1")  # ds_1
            waiter = threading.Thread(target=lambda: _ignore_errors(
                cur.execute, "UPDATE account SET balance = balance + 100 WHERE id = 1"))
            waiter.start()
            with pytest.raises(pymysql.err.OperationalError) as ended:
                cur2.execute("UPDATE account SET balance = balance + 5 WHERE id = 0")
            assert ended.value.args[0] == 1205  # innodb_lock_wait_timeout, as without the sidecar
            second.rollback()
            waiter.join(LOCK_WAIT_S + 10)
            first.rollback()
    finally:
        first.close()
        second.close()
    assert "cross-shard deadlock detection is off: data source" in no_process_proxy.log()
    assert "grant it PROCESS" in no_process_proxy.log()
    with no_process_proxy.connect(database="bank") as conn, conn.cursor() as cur:  # still serving
        cur.execute("SELECT COUNT(*) FROM account")
        assert cur.fetchone() == (ACCOUNTS,)
    assert balances(sandbox) == (INITIAL, INITIAL)


def _ignore_errors(call, *args):
    try:
        call(*args)
    except pymysql.err.MySQLError:
        pass



@pytest.mark.parametrize("mode", ["LOCAL", "XA"])
def test_reads_in_a_transaction_take_the_fast_lane_on_its_own_connections(proxy, sandbox, mode):
    """Once a transaction is on a data source, its point reads there are served by the lane,
    on the transaction's connection: they see its own uncommitted writes, others do not."""
    _create_accounts(proxy)
    conn, other = _pymysql(proxy, mode), _pymysql(proxy, mode)
    read = "SELECT balance FROM account WHERE id = %s"
    try:
        with conn.cursor() as cur, other.cursor() as cur2:
            cur.execute(read, (1,))  # the shape's first sight: planned by the command loop
            conn.begin()
            cur.execute("UPDATE account SET balance = 7 WHERE id = 1")  # ds_1, enlisted
            before = fast_lane_counts(proxy.metrics_port)
            for _ in range(5):
                cur.execute(read, (1,))
                assert cur.fetchall() == ((7,),)
            after = fast_lane_counts(proxy.metrics_port)
            assert after["served"] - before.get("served", 0) == 5
            cur2.execute(read, (1,))
            assert cur2.fetchall() == ((INITIAL,),)
            conn.rollback()
            cur.execute(read, (1,))
            assert cur.fetchall() == ((INITIAL,),)
    finally:
        conn.close()
        other.close()
    assert balances(sandbox) == (INITIAL, INITIAL)


def test_a_read_in_the_fast_lane_can_be_the_deadlocks_victim(proxy, sandbox):
    """Under SERIALIZABLE a plain read waits for row locks, so the youngest transaction's
    waiting statement may be one the lane serves: it gets 1213, and its transaction is rolled
    back whole before its next command."""
    _create_accounts(proxy)
    older, younger = _pymysql(proxy, "LOCAL"), _pymysql(proxy, "LOCAL")
    outcome: dict[str, object] = {}
    try:
        with younger.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            cur.execute("SELECT balance FROM account WHERE id = 3")  # the shape's first sight
        older.begin()
        with older.cursor() as cur:
            cur.execute("UPDATE account SET balance = balance - 5 WHERE id = 1")  # ds_1
        younger.begin()
        with younger.cursor() as cur:
            cur.execute("UPDATE account SET balance = balance - 100 WHERE id = 0")  # ds_0
            cur.execute("SELECT balance FROM account WHERE id = 3")  # on ds_1 now too

        # waits for younger on ds_0
        waiter = _commit_in_background(older, "UPDATE account SET balance = balance + 5 WHERE id = 0", outcome,
                                       "older")
        before = fast_lane_counts(proxy.metrics_port)
        with pytest.raises(pymysql.err.OperationalError) as ended, younger.cursor() as cur:
            cur.execute("SELECT balance FROM account WHERE id = 1")  # waits for older on ds_1: the cycle
        after = fast_lane_counts(proxy.metrics_port)
        assert ended.value.args[0] == 1213, ended.value
        assert after["served"] > before.get("served", 0)  # the waiting read was the lane's
        waiter.join(LOCK_WAIT_S + 10)
        assert outcome["older"] == "committed"
        with younger.cursor() as cur:  # the next command: the transaction is gone
            cur.execute("SELECT @@in_transaction")
            cur.execute("SHOW WARNINGS")
    finally:
        older.close()
        younger.close()
    # The younger's debit of account 0 was rolled back; the older's transfer committed.
    assert balances(sandbox) == (INITIAL + 5, INITIAL - 5)
