"""The XA sweep of a running sidecar: a commit or rollback that loses a data source leaves
that branch prepared, holding its row locks; the sweep finishes it as the logged decision
says (commit) or rolls it back, and forgets the decision, without a restart. It leaves
alone the transactions sessions drive and those of other sidecars."""

from __future__ import annotations

import asyncio

import pymysql
import pytest

from conftest import sandbox_proxy_config, start_proxy, stop_proxy, wait_until
from dbmesh.backend.connection import BackendConnection
from test_transactions import ACCOUNTS, INITIAL, RULES, balances, prepared_branches, total, transfer
from txn import recovery, xa

INSTANCE = "xasweep"


def _start(sandbox, workdir, failpoints: str = "", sweep_s: float = 0.3):
    config = sandbox_proxy_config(sandbox, workdir, {"bank": {"sharding": RULES, "transaction": {"mode": "XA"}}})
    config["instance_id"] = INSTANCE
    config["transaction"] = {"xa_sweep_interval_s": sweep_s}
    config["users"].append({"name": "ops", "password": "ops-pw", "databases": ["*"], "admin": True})
    proxy = start_proxy(config, workdir, env={"DBMESH_FAILPOINTS": failpoints})
    with proxy.connect(database="bank") as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS account")
        cur.execute("CREATE TABLE account (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
        cur.execute("INSERT INTO account (id, balance) VALUES "
                    + ", ".join(f"({i}, {INITIAL})" for i in range(ACCOUNTS)))
    return proxy


def _decisions(sandbox) -> int:
    with sandbox.admin_connect("ds_0", database="shop_ds_0") as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM dbmesh_xa_log")
        return cur.fetchone()[0]


def test_a_commit_that_loses_a_data_source_is_finished_by_the_sweep(sandbox, tmp_path):
    proxy = _start(sandbox, tmp_path, "xa_commit_on_ds_1")
    try:
        with proxy.connect(database="bank") as conn, conn.cursor() as cur:
            conn.begin()
            transfer(cur, 0, 1, 100)  # account 0 on ds_0, account 1 on ds_1
            conn.commit()  # decided: committed for the client, though ds_1's branch is still prepared
            wait_until(lambda: not prepared_branches(sandbox), 15, "the sweep to commit the prepared branch")
            assert balances(sandbox) == (INITIAL - 100, INITIAL + 100)
            wait_until(lambda: _decisions(sandbox) == 0, 15, "the sweep to forget the decision")
            # The session's connection to ds_1 held the prepared branch: it was closed, not pooled.
            cur.execute("SELECT balance FROM account WHERE id = 1")
            assert cur.fetchone() == (INITIAL + 100,)
        assert "XA sweep: 1 prepared branches committed, 0 rolled back" in proxy.log()
        assert total(sandbox) == ACCOUNTS * INITIAL
    finally:
        stop_proxy(proxy)


def test_a_rollback_that_loses_a_prepared_branch_is_finished_by_the_sweep(sandbox, tmp_path):
    """PREPARE fails on ds_1, and the rollback of the branch already prepared on ds_0 loses
    its connection: the client gets the rollback error, the sweep rolls ds_0 back."""
    proxy = _start(sandbox, tmp_path, "xa_prepare_on_ds_1,xa_rollback_on_ds_0")
    try:
        with proxy.connect(database="bank") as conn, conn.cursor() as cur:
            conn.begin()
            transfer(cur, 0, 1, 100)
            with pytest.raises(pymysql.err.OperationalError) as failed:
                conn.commit()
            assert failed.value.args[0] == 1614 and "rollback pending on ds_0" in failed.value.args[1]
        wait_until(lambda: not prepared_branches(sandbox), 15, "the sweep to roll back the prepared branch")
        assert balances(sandbox) == (INITIAL, INITIAL)
        assert "XA sweep: 0 prepared branches committed, 1 rolled back" in proxy.log()
    finally:
        stop_proxy(proxy)


def _prepare_branch(sandbox, gtrid: str) -> None:
    """A branch on ds_0 left prepared by a connection that went away."""
    with sandbox.admin_connect("ds_0", database="shop_ds_0") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS xa_sweep_scratch (id VARCHAR(96) PRIMARY KEY)")
        cur.execute(f"XA START {xa.branch_id(gtrid, 'ds_0')}")
        cur.execute("INSERT INTO xa_sweep_scratch (id) VALUES (%s)", (gtrid,))
        cur.execute(f"XA END {xa.branch_id(gtrid, 'ds_0')}")
        cur.execute(f"XA PREPARE {xa.branch_id(gtrid, 'ds_0')}")


def _branch_data(found: tuple) -> str:
    """gtrid and bqual of a prepared_branches() item (an XA RECOVER row's data column)."""
    data = found[1][3]
    return data.decode() if isinstance(data, bytes) else data


def _scratch_rows(sandbox) -> list[str]:
    with sandbox.admin_connect("ds_0", database="shop_ds_0") as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM xa_sweep_scratch ORDER BY id")
        return [row[0] for row in cur.fetchall()]


def test_finishing_leaves_running_transactions_and_other_sidecars_alone(sandbox):
    """recovery.finish_prepared against MariaDB: a prepared branch of a running xid, or of
    one begun during the pass, stays; a decided one commits and its decision goes; a decision
    without branches goes; another instance's branch stays."""
    prefix = "dbmesh-guard-"
    running, decided, begun, settled, foreign = (f"{prefix}running", f"{prefix}decided", f"{prefix}begun",
                                                 f"{prefix}settled", "dbmesh-guardian-x")
    for gtrid in (running, decided, begun, foreign):
        _prepare_branch(sandbox, gtrid)
    with sandbox.admin_connect("ds_0", database="shop_ds_0") as conn, conn.cursor() as cur:
        cur.execute(xa.LOG_DDL)
        for xid in (decided, settled, running):
            cur.execute(f"INSERT INTO {xa.LOG_TABLE} (xid, decision, participants) VALUES (%s, 'commit', 'ds_0')",
                        (xid,))
    info = sandbox.info()

    async def acquire(ds: str) -> BackendConnection:
        shard = info.shard(ds)
        conn = BackendConnection(ds, shard.host, shard.port, 0)
        await conn.connect(info.user, info.password, f"shop_{ds}", 10)
        return conn

    def finish(running_now: set[str], begun_now: set[str]) -> dict[str, int]:
        return asyncio.run(recovery.finish_prepared(["ds_0", "ds_1"], ["ds_0"], prefix, acquire,
                                                    BackendConnection.close, running=running_now,
                                                    begun_meanwhile=begun_now))

    try:
        assert finish({running}, {begun}) == {"commit": 1, "rollback": 0}
        assert sorted(_branch_data(row) for row in prepared_branches(sandbox)) == sorted(
            f"{gtrid}ds_0" for gtrid in (running, begun, foreign))
        with sandbox.admin_connect("ds_0", database="shop_ds_0") as conn, conn.cursor() as cur:
            cur.execute(f"SELECT xid FROM {xa.LOG_TABLE} WHERE xid LIKE 'dbmesh-guard%' ORDER BY xid")
            assert [row[0] for row in cur.fetchall()] == [running]  # still driven: its decision stays
        assert _scratch_rows(sandbox) == [decided]
        assert finish(set(), set()) == {"commit": 1, "rollback": 1}  # the one run before (decided), the begun one
        assert _scratch_rows(sandbox) == [decided, running]
        assert [_branch_data(row) for row in prepared_branches(sandbox)] == [f"{foreign}ds_0"]
    finally:
        with sandbox.admin_connect("ds_0", database="shop_ds_0") as conn, conn.cursor() as cur:
            for gtrid in (running, begun, foreign):
                try:
                    cur.execute(f"XA ROLLBACK {xa.branch_id(gtrid, 'ds_0')}")
                except pymysql.err.MySQLError:
                    pass  # finished above
            cur.execute(f"DELETE FROM {xa.LOG_TABLE} WHERE xid LIKE 'dbmesh-guard%'")
            cur.execute("DROP TABLE IF EXISTS xa_sweep_scratch")


def _show(proxy, where: str = "") -> list[dict]:
    with proxy.connect(user="ops", password="ops-pw", database=None) as conn, conn.cursor() as cur:
        cur.execute("SHOW DBMESH TRANSACTIONS" + where)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_show_lists_xa_transactions_in_doubt(sandbox, tmp_path):
    """SHOW DBMESH TRANSACTIONS lists XA transactions with a branch prepared or a decision
    logged, what each waits for, and filters them as it does BASE ones."""
    proxy = _start(sandbox, tmp_path, sweep_s=3600)  # no sweep during the test
    undecided, decided, settled, foreign = (f"dbmesh-{INSTANCE}-undecided", f"dbmesh-{INSTANCE}-decided",
                                            f"dbmesh-{INSTANCE}-settled", "dbmesh-elsewhere-x")
    for gtrid in (undecided, decided, foreign):
        _prepare_branch(sandbox, gtrid)
    with sandbox.admin_connect("ds_0", database="shop_ds_0") as conn, conn.cursor() as cur:
        cur.execute(xa.LOG_DDL)
        for xid in (decided, settled):
            cur.execute(f"INSERT INTO {xa.LOG_TABLE} (xid, decision, participants) VALUES (%s, 'commit', 'ds_0,ds_1')",
                        (xid,))
    try:
        listed = {row["xid"]: row for row in _show(proxy) if row["mode"] == "XA"}
        assert set(listed) == {undecided, decided, settled, foreign}
        assert [listed[x]["status"] for x in (undecided, decided, settled, foreign)] == [
            "prepared", "committing", "committed", "prepared"]
        assert listed[undecided]["log_data_source"] is None and listed[undecided]["participants"] == "ds_0"
        assert "no commit decision: the XA sweep or recovery rolls it back" in listed[undecided]["detail"]
        assert listed[decided]["log_data_source"] == "ds_0" and listed[decided]["participants"] == "ds_0,ds_1"
        assert listed[decided]["detail"].startswith("prepared on ds_0; commit decided")
        assert listed[settled]["detail"].startswith("no branch prepared")
        assert "another sidecar's" in listed[foreign]["detail"]
        assert listed[decided]["created"] is not None and float(listed[decided]["age_s"]) >= 0
        assert {row["running_here"] for row in listed.values()} == {"NO"}
        assert [r["xid"] for r in _show(proxy, " WHERE mode = 'xa' AND status = 'prepared' AND xid LIKE "
                                               f"'dbmesh-{INSTANCE}-%'")] == [undecided]
        assert len(_show(proxy, " WHERE mode = 'XA' LIMIT 2")) == 2
        assert _show(proxy, " WHERE mode <> 'XA' AND xid LIKE 'dbmesh-%undecided'") == []
    finally:
        stop_proxy(proxy)
        with sandbox.admin_connect("ds_0", database="shop_ds_0") as conn, conn.cursor() as cur:
            for gtrid in (undecided, decided, foreign):
                cur.execute(f"XA ROLLBACK {xa.branch_id(gtrid, 'ds_0')}")
            cur.execute(f"DELETE FROM {xa.LOG_TABLE} WHERE xid IN (%s, %s)", (decided, settled))
            cur.execute("DROP TABLE IF EXISTS xa_sweep_scratch")
