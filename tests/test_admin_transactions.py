"""The admin statements on BASE global transactions (SHOW DBMESH TRANSACTIONS, DBMESH RETRY /
FORGET TRANSACTION) through a real sidecar on the sandbox's shards, with PyMySQL over TCP;
and the recovery sweep of a running sidecar finishing an orphaned transaction."""

from __future__ import annotations

import time

import pymysql
import pytest

from conftest import free_port, sandbox_proxy_config, start_proxy, stop_proxy, wait_until
from dbmesh.config import ConfigError, parse_config
from test_transactions import INITIAL, balances, run_crashing_transfer, transfer
from test_transactions_base import ORDER_RULES, create_tables, metric, wait_clean

ADMIN = {"user": "ops", "password": "ops-pw", "database": None}
COLUMNS = ["xid", "mode", "status", "log_data_source", "participants", "created", "updated", "age_s", "idle_s",
           "running_here", "detail"]


def admin_config(sandbox, workdir, instance_id: str, **transaction) -> dict:
    config = sandbox_proxy_config(sandbox, workdir, {"bank": {
        "sharding": ORDER_RULES,
        "transaction": {"mode": "BASE", "base_isolation": "record_lock", "lock_wait_timeout_s": 5}}})
    config["users"].append({"name": "ops", "password": "ops-pw", "databases": ["*"], "admin": True})
    config["instance_id"] = instance_id
    config["metrics"] = {"host": "127.0.0.1", "port": free_port()}
    if transaction:
        config["transaction"] = transaction
    return config


@pytest.fixture(scope="module")
def admin_setup(sandbox, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("admin")
    config = admin_config(sandbox, workdir, "admintest")  # the default sweep: it stays out of these tests
    proxy = start_proxy(config, workdir)
    try:
        yield proxy, config, workdir
    finally:
        stop_proxy(proxy)


@pytest.fixture
def bank(admin_setup, sandbox):
    proxy = admin_setup[0]
    create_tables(proxy)
    yield proxy
    assert proxy.alive()
    assert show(proxy) == [], "a test left a global transaction behind"
    assert wait_clean(sandbox) == {}


def show(proxy, where: str = "") -> list[dict]:
    with proxy.connect(**ADMIN) as conn, conn.cursor() as cur:
        cur.execute("SHOW DBMESH TRANSACTIONS" + where)
        assert [d[0] for d in cur.description] == COLUMNS
        return [dict(zip(COLUMNS, row, strict=True)) for row in cur.fetchall()]


def admin(proxy, sql: str) -> str:
    """Run an admin statement; the OK packet's message."""
    with proxy.connect(**ADMIN) as conn, conn.cursor() as cur:
        assert cur.execute(sql) == 1
        return conn._result.message.decode()


def admin_error(proxy, sql: str, **login) -> tuple[int, str]:
    with proxy.connect(**(login or ADMIN)) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.MySQLError) as failed:
            cur.execute(sql)
        cur.execute("SELECT 1")  # the session goes on
        assert cur.fetchone() == (1,)
    return failed.value.args[0], failed.value.args[1]


def set_balance(sandbox, account: int, value: int) -> None:
    ds = f"ds_{account % 2}"
    with sandbox.admin_connect(ds, database=f"shop_{ds}") as conn, conn.cursor() as cur:
        cur.execute("UPDATE account SET balance = %s WHERE id = %s", (value, account))


def needs_attention(proxy, sandbox) -> str:
    """A transfer of 100 from account 0 to 1 in 'version' isolation whose ROLLBACK finds
    account 0 changed meanwhile (to 7) by a writer outside the sidecar; its xid."""
    with proxy.connect(database="bank") as conn, conn.cursor() as cur:
        cur.execute("SET dbmesh_base_isolation = 'version'")
        conn.begin()
        transfer(cur, 0, 1, 100)
        set_balance(sandbox, 0, 7)
        with pytest.raises(pymysql.err.OperationalError) as failed:
            conn.rollback()
        assert failed.value.args[0] == 1180
    assert balances(sandbox) == (7, INITIAL + 100)
    listed = show(proxy, " WHERE status = 'needs_attention'")
    assert len(listed) == 1
    return listed[0]["xid"]


def orphan_by_lock_timeout(proxy, sandbox) -> None:
    """A transfer from account 0 to 1 whose ROLLBACK fails: another connection holds
    account 0's row lock past the session's innodb_lock_wait_timeout. The global transaction
    stays rolling_back with no session driving it, in a sidecar that keeps running (the
    recovery sweep's case). The row lock is released before returning."""
    with proxy.connect(database="bank") as conn, conn.cursor() as cur:
        cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
        conn.begin()
        transfer(cur, 0, 1, 100)
        with sandbox.admin_connect("ds_0", database="shop_ds_0") as other, other.cursor() as ocur:
            other.begin()
            ocur.execute("SELECT balance FROM account WHERE id = 0 FOR UPDATE")
            with pytest.raises(pymysql.err.OperationalError) as failed:
                conn.rollback()
            assert failed.value.args[0] == 1205, failed.value.args
            orphans = [t for t in show(proxy) if t["running_here"] == "NO"]
            assert [t["status"] for t in orphans] == ["rolling_back"], orphans
            # Nothing undone (a sweep already at it waits for the row lock, uncommitted).
            assert balances(sandbox) == (INITIAL - 100, INITIAL + 100)
            other.rollback()


# -- the admin statements -----------------------------------------------------------------------


def test_show_lists_transactions_with_the_conflict(bank, sandbox):
    xid = needs_attention(bank, sandbox)
    with bank.connect(database="bank") as running, running.cursor() as cur:
        running.begin()
        transfer(cur, 2, 3, 5)  # a transaction a session of the sidecar drives now
        listed = show(bank)
        assert [t["status"] for t in listed] == ["needs_attention", "begun"]
        stuck, live = listed
        assert stuck["xid"] == xid and xid.startswith("dbmesh-admintest-")
        assert (stuck["mode"], stuck["log_data_source"], stuck["participants"]) == ("base", "ds_0", "ds_0#1, ds_1#2")
        assert "row (0) of account was changed by another transaction" in stuck["detail"]
        assert "balance: expected 900, found 7" in stuck["detail"]
        assert stuck["running_here"] == "NO" and live["running_here"] == "YES" and live["detail"] is None
        assert stuck["created"] <= stuck["updated"] and stuck["age_s"] >= stuck["idle_s"] >= 0
        assert [t["xid"] for t in show(bank, " WHERE status = 'needs_attention'")] == [xid]
        assert [t["xid"] for t in show(bank, " where STATUS like 'need%' and detail LIKE '%account%';")] == [xid]
        assert [t["status"] for t in show(bank, " WHERE status <> 'needs_attention'")] == ["begun"]
        assert [t["xid"] for t in show(bank, f" WHERE xid = '{xid}'")] == [xid]
        assert show(bank, " WHERE status = 'committed'") == []
        assert len(show(bank, " LIMIT 1")) == 1
        running.rollback()
    admin(bank, f"DBMESH FORGET TRANSACTION '{xid}'")
    set_balance(sandbox, 0, INITIAL)
    set_balance(sandbox, 1, INITIAL)


def test_retry_fails_while_the_conflict_is_there_then_succeeds(bank, sandbox, admin_setup):
    config = admin_setup[1]
    xid = needs_attention(bank, sandbox)
    gauge = {"log_data_source": "ds_0"}
    counted = metric(config, "dbmesh_base_needs_attention_total", database="bank")
    code, message = admin_error(bank, f"DBMESH RETRY TRANSACTION '{xid}'")
    assert code == 1180
    assert f"DBMESH RETRY TRANSACTION '{xid}' was not applied" in message
    assert "row (0) of account was changed by another transaction (balance: expected 900, found 7)" in message
    assert "DBMESH FORGET TRANSACTION" in message
    assert balances(sandbox) == (7, INITIAL + 100)  # nothing undone, nothing overwritten
    assert [t["status"] for t in show(bank)] == ["needs_attention"]
    assert metric(config, "dbmesh_base_needs_attention_transactions", **gauge) == 1
    # A failed retry is not a new transaction needing attention.
    assert metric(config, "dbmesh_base_needs_attention_total", database="bank") == counted

    set_balance(sandbox, 0, INITIAL - 100)  # the row as the transaction left it
    assert "rolled back" in admin(bank, f"dbmesh retry transaction '{xid}';")
    assert balances(sandbox) == (INITIAL, INITIAL)
    assert metric(config, "dbmesh_base_needs_attention_transactions", **gauge) == 0
    assert metric(config, "dbmesh_base_operator_actions_total", action="retry", outcome="rolled_back") >= 1
    code, message = admin_error(bank, f"DBMESH RETRY TRANSACTION '{xid}'")
    assert code == 1397 and "Unknown XID" in message


def test_forget_after_the_data_was_fixed_by_hand(bank, sandbox):
    xid = needs_attention(bank, sandbox)
    set_balance(sandbox, 0, INITIAL)  # the operator's own fix
    set_balance(sandbox, 1, INITIAL)
    message = admin(bank, f'DBMESH FORGET TRANSACTION "{xid}"')
    assert f"'{xid}' (needs_attention) forgotten" in message and "nothing undone" in message
    assert show(bank) == []
    assert balances(sandbox) == (INITIAL, INITIAL)  # forgetting changes no data
    code, message = admin_error(bank, f"DBMESH FORGET TRANSACTION '{xid}'")
    assert code == 1397


def test_a_transaction_running_in_a_session_is_left_alone(bank, sandbox):
    with bank.connect(database="bank") as conn, conn.cursor() as cur:
        conn.begin()
        transfer(cur, 0, 1, 10)
        (live,) = show(bank)
        for verb in ("RETRY", "FORGET"):
            code, message = admin_error(bank, f"DBMESH {verb} TRANSACTION '{live['xid']}'")
            assert code == 1399, message
            assert "running in a session of this sidecar" in message and "COMMIT or ROLLBACK" in message
        conn.commit()
    assert balances(sandbox) == (INITIAL - 10, INITIAL + 10)


def test_retry_finishes_a_transaction_no_session_drives(bank, sandbox):
    orphan_by_lock_timeout(bank, sandbox)  # the sweep would take it only after a minute
    (stuck,) = show(bank)
    assert "rolled back" in admin(bank, f"DBMESH RETRY TRANSACTION '{stuck['xid']}'")
    assert balances(sandbox) == (INITIAL, INITIAL)


def test_another_sidecars_transaction_waits_for_the_orphan_age(bank, sandbox, admin_setup):
    """A sidecar instance that died for good leaves a transaction its own recovery would
    finish; from another instance, RETRY finishes it once it is idle long enough."""
    _, config, workdir = admin_setup
    run_crashing_transfer({**config, "instance_id": "gonesidecar", "metrics": {}}, workdir, "base_after_statement")
    (stuck,) = show(bank)
    assert stuck["xid"].startswith("dbmesh-gonesidecar-") and stuck["status"] == "begun"
    assert balances(sandbox)[0] == INITIAL - 100  # its first branch committed
    code, message = admin_error(bank, f"DBMESH RETRY TRANSACTION '{stuck['xid']}'")
    assert code == 1399 and "another sidecar instance" in message
    assert "transaction.base_orphan_age_s" in message
    with sandbox.admin_connect("ds_0", database="shop_ds_0") as conn, conn.cursor() as cur:
        # An hour passes (by the log server's clock, which is the one that counts).
        cur.execute("UPDATE dbmesh_global_txn SET updated = updated - INTERVAL 1 HOUR, "
                    "created = created - INTERVAL 1 HOUR")
    assert "rolled back" in admin(bank, f"DBMESH RETRY TRANSACTION '{stuck['xid']}'")
    assert balances(sandbox) == (INITIAL, INITIAL)


def test_only_admin_users_may_run_them(bank):
    for sql in ("SHOW DBMESH TRANSACTIONS", "DBMESH RETRY TRANSACTION 'x'", "DBMESH FORGET TRANSACTION 'x'"):
        code, message = admin_error(bank, sql, database="bank")  # the app user, no admin: true
        assert code == 1227, message
        assert "DBMESH ADMIN privilege" in message and "user 'app'" in message and "admin: true" in message


@pytest.mark.parametrize("sql, code, says", [
    ("DBMESH RETRY TRANSACTION 'dbmesh-nobody-0'", 1397, "Unknown XID 'dbmesh-nobody-0'"),
    ("DBMESH FORGET TRANSACTION 'dbmesh-nobody-0'", 1397, "SHOW DBMESH TRANSACTIONS lists them"),
    ("DBMESH RETRY TRANSACTION dbmesh-x", 1064, "near 'dbmesh-x': expected the global transaction's xid"),
    ("DBMESH ROLLBACK TRANSACTION 'x'", 1064, "expected RETRY or FORGET"),
    ("SHOW DBMESH TRANSACTION", 1064, "expected TRANSACTIONS"),
    ("SHOW DBMESH TRANSACTIONS WHERE state = 'begun'", 1064, "a column to filter on (xid, mode, status"),
    ("SHOW DBMESH TRANSACTIONS WHERE status = 'need_attention'", 1525, "Incorrect status value: 'need_attention'"),
    ("SHOW DBMESH TRANSACTIONS LIMIT many", 1064, "a row count after LIMIT"),
    ("DBMESH RETRY TRANSACTION 'x'; SELECT 1", 1064, "one admin statement per query"),
    ("DBMESH FORGET TRANSACTION ''", 1525, "Incorrect xid value"),
    ("DBMESH RETRY TRANSACTION 'dbmesh-x", 1064, "near ''dbmesh-x': expected the global transaction's xid"),
    # Open quotes and comments, long: read in one pass (it was one scan to the end per opener).
    ("DBMESH RETRY TRANSACTION /* x" + " /*" * 30_000, 1064, "expected the global transaction's xid"),
    ("DBMESH RETRY TRANSACTION '" + "\\'" * 50_000, 1064, "expected the global transaction's xid"),
])
def test_bad_statements_get_clear_errors(bank, sql, code, says):
    found, message = admin_error(bank, sql)
    assert found == code, message
    assert says in message


def test_admin_statements_from_a_sharded_database_session(bank):
    with bank.connect(user="ops", password="ops-pw", database="bank") as conn, conn.cursor() as cur:
        cur.execute("SHOW DBMESH TRANSACTIONS")
        assert cur.fetchall() == ()
        conn.begin()  # inside the session's own transaction too
        cur.execute("SHOW DBMESH TRANSACTIONS")
        conn.rollback()


@pytest.mark.parametrize("database", ["bank", None])
def test_admin_statements_are_not_prepared(bank, database):
    import mysql.connector

    conn = mysql.connector.connect(host=bank.host, port=bank.port, user="ops", password="ops-pw",
                                   database=database, autocommit=True)
    try:
        cur = conn.cursor(prepared=True)
        with pytest.raises(mysql.connector.Error) as failed:
            cur.execute("SHOW DBMESH TRANSACTIONS")
        assert failed.value.errno == 1295 and "as plain queries" in failed.value.msg
        plain = conn.cursor()
        plain.execute("SHOW DBMESH TRANSACTIONS")  # the same session, text protocol
        assert plain.fetchall() == []
    finally:
        conn.close()


# -- the recovery sweep of a running sidecar ------------------------------------------------------


def test_the_sweep_finishes_an_orphan_without_a_restart(sandbox, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep")
    config = admin_config(sandbox, workdir, "sweeptest", base_sweep_interval_s=0.5, base_orphan_age_s=2)
    proxy = start_proxy(config, workdir)
    try:
        create_tables(proxy)
        with proxy.connect(database="bank") as hung, hung.cursor() as hcur:
            hung.begin()
            transfer(hcur, 2, 3, 50)  # a client that stays in its transaction: not an orphan
            orphan_by_lock_timeout(proxy, sandbox)
            recovered = {"mode": "BASE", "outcome": "rolled_back"}
            wait_until(lambda: metric(config, "dbmesh_transactions_recovered_total", **recovered) >= 1,
                       what="the sweep to compensate the orphan")
            assert balances(sandbox) == (INITIAL, INITIAL)
            (live,) = show(proxy)  # the hung client's, idle past the orphan age, untouched
            assert live["status"] == "begun" and live["running_here"] == "YES" and live["idle_s"] >= 2
            hung.commit()
        with proxy.connect(database="bank") as conn, conn.cursor() as cur:
            cur.execute("SELECT id, balance FROM account WHERE id IN (2, 3) ORDER BY id")
            assert cur.fetchall() == ((2, INITIAL - 50), (3, INITIAL + 50))
        assert proxy.alive()
        assert "BASE recovery sweep" in proxy.log()
        assert wait_clean(sandbox) == {}
    finally:
        stop_proxy(proxy)


def test_the_sweep_yields_to_clients_that_fill_the_pool(sandbox, tmp_path_factory):
    """Clients holding every connection of the log data source's pool: the sweep waits for
    the next round, logged at INFO (a warning only after a long run of such rounds), and
    runs again once a connection is free (its count of deferred rounds starts over)."""
    workdir = tmp_path_factory.mktemp("sweep-busy")
    config = admin_config(sandbox, workdir, "sweepbusy", base_sweep_interval_s=0.3, base_orphan_age_s=60)
    config["data_sources"]["ds_0"]["pool"] = {"max_size": 2, "acquire_timeout_s": 0.2}
    config["databases"]["hold"] = {"data_source": "ds_0"}
    proxy = start_proxy(config, workdir)
    try:
        for episode in (1, 2):
            holders = [proxy.connect(database="hold") for _ in range(2)]
            for conn in holders:
                conn.begin()
                conn.cursor().execute("SELECT 1")  # each keeps a ds_0 connection in its transaction
            wait_until(lambda episode=episode: proxy.log().count("sweep deferred 2 time(s) in a row") == episode,
                       what=f"two deferred sweeps (episode {episode})")
            for conn in holders:
                conn.commit()
                conn.close()
            time.sleep(1.0)  # a few sweeps with a free connection
        log = proxy.log()
        assert log.count("sweep deferred 1 time(s) in a row") == 2  # the second run started over
        assert "BASE recovery sweep failed" not in log
        assert " WARNING " not in log, log
        assert proxy.alive()
    finally:
        stop_proxy(proxy)


def test_the_sweep_outlives_a_lost_data_source(sandbox, tmp_path_factory):
    """ds_1 stops after both branches of a transfer committed, so its ROLLBACK fails; sweeps
    fail while ds_1 is down, and the first one after it is back compensates the transfer."""
    workdir = tmp_path_factory.mktemp("sweep-lost")
    config = admin_config(sandbox, workdir, "sweeplost", base_sweep_interval_s=0.5, base_orphan_age_s=1)
    proxy = start_proxy(config, workdir)
    try:
        create_tables(proxy)
        with proxy.connect(database="bank") as conn, conn.cursor() as cur:
            conn.begin()
            transfer(cur, 0, 1, 100)
            sandbox.stop_instance("ds_1")
            try:
                with pytest.raises(pymysql.err.MySQLError) as failed:
                    conn.rollback()
                assert failed.value.args[0] in (1429, 1430), failed.value.args
                wait_until(lambda: proxy.log().count(" not finished (Can't connect to data source 'ds_1'") >= 2,
                           what="sweeps to meet the lost data source")
            finally:
                sandbox.start_instance("ds_1")
        wait_until(lambda: balances(sandbox) == (INITIAL, INITIAL), what="the sweep to compensate the transfer")
        assert proxy.alive()
        assert show(proxy) == []
        assert wait_clean(sandbox) == {}
    finally:
        stop_proxy(proxy)


# -- configuration -------------------------------------------------------------------------------


def minimal(**top) -> dict:
    return {"users": [{"name": "a", "password": "b"}],
            "data_sources": {"ds_0": {"host": "h", "port": 1, "user": "u", "password": "p", "database": "d"}},
            "databases": {"demo": {"data_source": "ds_0"}}, **top}


def test_config_defaults_and_validation():
    config = parse_config(minimal())
    assert config.users["a"].admin is False
    assert (config.transaction.base_sweep_interval_s, config.transaction.base_orphan_age_s) == (30.0, 60.0)
    config = parse_config(minimal(users=[{"name": "ops", "admin": True}],
                                  transaction={"base_sweep_interval_s": 0.5, "base_orphan_age_s": 0}))
    assert config.users["ops"].admin is True
    assert (config.transaction.base_sweep_interval_s, config.transaction.base_orphan_age_s) == (0.5, 0.0)
    for top, path, says in [
        ({"users": [{"name": "ops", "admin": "yes"}]}, "users[0].admin", "expected true or false"),
        ({"transaction": {"base_sweep_interval_s": 0}}, "transaction.base_sweep_interval_s", "at least 0.1"),
        ({"transaction": {"base_orphan_age_s": -1}}, "transaction.base_orphan_age_s", "non-negative"),
        ({"transaction": {"mode": "BASE"}}, "transaction.mode", "databases.<name>.transaction"),
        ({"databases": {"demo": {"data_source": "ds_0", "transaction": {"base_orphan_age_s": 5}}}},
         "databases.demo.transaction.base_orphan_age_s", "top-level transaction section"),
    ]:
        with pytest.raises(ConfigError) as failed:
            parse_config(minimal(**top))
        assert failed.value.path == path and says in str(failed.value), str(failed.value)


def test_who_may_act_on_which_transaction():
    from txn import base_operator, global_log
    from txn.base_operator import OTHER_SIDECAR, OTHER_WORKER, THIS_PROCESS

    def item(xid: str, status: str, idle_s: float = 5.0) -> base_operator.Listed:
        txn = global_log.GlobalTxn(xid, "base", status, (global_log.Participant("ds_0", 1),), None, None, "")
        return base_operator.Listed(txn, "ds_0", idle_s, idle_s)

    # Two workers of sidecar 'inst': worker 0 asks.
    assert base_operator.owner_of("dbmesh-inst-w0-1", "inst", "inst-w0") == THIS_PROCESS
    assert base_operator.owner_of("dbmesh-inst-w1-1", "inst", "inst-w0") == OTHER_WORKER
    assert base_operator.owner_of("dbmesh-gone-1", "inst", "inst-w0") == OTHER_SIDECAR
    assert base_operator.owner_of("dbmesh-inst-1", "inst", "inst") == THIS_PROCESS  # one process

    assert "running in a session" in base_operator.why_busy(item("x", "needs_attention"), True, THIS_PROCESS, 60)
    assert base_operator.why_busy(item("x", "rolling_back", 0), False, THIS_PROCESS, 60) == ""
    for status in ("needs_attention", "committed", "rolled_back"):
        assert base_operator.why_busy(item("x", status, 0), False, OTHER_WORKER, 60) == ""
        assert base_operator.why_busy(item("x", status, 0), False, OTHER_SIDECAR, 60) == ""
    assert "another worker process" in base_operator.why_busy(item("x", "begun", 3600), False, OTHER_WORKER, 60)
    assert "idle for 60 s" in base_operator.why_busy(item("x", "committing", 59), False, OTHER_SIDECAR, 60)
    assert base_operator.why_busy(item("x", "committing", 61), False, OTHER_SIDECAR, 60) == ""
