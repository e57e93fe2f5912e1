"""Transactions across shards: LOCAL and XA bank transfers under concurrency, and XA
recovery after the sidecar is killed at each point of two-phase commit."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

import pymysql
import pytest
import yaml

from conftest import ROOT, Proxy, free_port, sandbox_proxy_config, start_proxy, stop_proxy

ACCOUNTS = 20
INITIAL = 1000
RULES = {
    "data_sources": ["ds_0", "ds_1"],
    "tables": {"account": {"actual_data_nodes": "ds_${0..1}.account",
                           "database_strategy": {"columns": ["id"], "algorithm": "two"}}},
    "algorithms": {"two": {"type": "MOD", "props": {"sharding_count": 2}}},
}


@pytest.fixture(scope="module")
def bank_config(sandbox, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bank")
    config = sandbox_proxy_config(sandbox, workdir, {"bank": {"sharding": RULES, "transaction": {"mode": "XA"}}})
    config["instance_id"] = "banktest"
    return config, workdir


@pytest.fixture
def bank(bank_config):
    proxy = _bank_proxy(*bank_config)
    try:
        yield proxy
    finally:
        stop_proxy(proxy)


@pytest.fixture
def bank_without_deadlock_detector(bank_config):
    """As when the backend user may not read the servers' lock waits."""
    config, workdir = bank_config
    proxy = _bank_proxy({**config, "transaction": {"deadlock_check_interval_s": 0}}, workdir)
    try:
        yield proxy
    finally:
        stop_proxy(proxy)


def _bank_proxy(config: dict, workdir):
    proxy = start_proxy(config, workdir)
    with proxy.connect(database="bank") as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS account")
        cur.execute("CREATE TABLE account (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
        cur.execute("INSERT INTO account (id, balance) VALUES "
                    + ", ".join(f"({i}, {INITIAL})" for i in range(ACCOUNTS)))
    return proxy


def total(sandbox) -> int:
    """Sum of balances read directly from both shards (not through the proxy)."""
    result = 0
    for ds in ("ds_0", "ds_1"):
        with sandbox.admin_connect(ds, database=f"shop_{ds}") as conn, conn.cursor() as cur:
            cur.execute("SELECT COALESCE(SUM(balance), 0), COUNT(*) FROM account")
            s, n = cur.fetchone()
            assert n == ACCOUNTS // 2
            result += int(s)
    return result


def prepared_branches(sandbox) -> list:
    found = []
    for ds in ("ds_0", "ds_1"):
        with sandbox.admin_connect(ds) as conn, conn.cursor() as cur:
            cur.execute("XA RECOVER")
            found += [(ds, row) for row in cur.fetchall()]
    return found


def transfer(cur, a: int, b: int, amount: int) -> None:
    cur.execute("UPDATE account SET balance = balance - %s WHERE id = %s", (amount, a))
    cur.execute("UPDATE account SET balance = balance + %s WHERE id = %s", (amount, b))


def concurrent_transfers(proxy, mode: str, clients: int = 20, rounds: int = 15) -> dict[str, int]:
    """``clients`` sessions in ``mode`` each run ``rounds`` transfers between random accounts,
    a quarter rolled back by the client; a lock wait timeout or deadlock rolls back and goes
    on. Returns the outcomes; raises what else failed."""
    failures: list[BaseException] = []
    stats = {"commit": 0, "rollback": 0, "deadlock": 0, "timeout": 0}
    lock = threading.Lock()

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        conn = proxy.connect(database="bank")
        try:
            with conn.cursor() as cur:
                cur.execute(f"SET dbmesh_transaction_mode = '{mode}'")
                # A deadlock across two shards is seen by neither server: it ends by lock wait timeout.
                cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
                for _ in range(rounds):
                    a, b = rnd.sample(range(ACCOUNTS), 2)
                    try:
                        conn.begin()
                        transfer(cur, a, b, rnd.randint(1, 50))
                        if rnd.random() < 0.25:
                            conn.rollback()
                            outcome = "rollback"
                        else:
                            conn.commit()
                            outcome = "commit"
                    except pymysql.err.OperationalError as exc:
                        if exc.args[0] not in (1205, 1213):  # lock wait timeout / deadlock
                            raise
                        conn.rollback()
                        outcome = "timeout" if exc.args[0] == 1205 else "deadlock"
                    with lock:
                        stats[outcome] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not failures, failures[:3]
    return stats


@pytest.mark.parametrize("mode", ["LOCAL", "XA"])
def test_concurrent_transfers_keep_the_total(bank, sandbox, mode):
    stats = concurrent_transfers(bank, mode)
    assert stats["commit"] > 50 and stats["rollback"] > 10, stats
    assert total(sandbox) == ACCOUNTS * INITIAL
    assert prepared_branches(sandbox) == []


def test_a_deadlock_across_shards_is_explained_in_the_log(bank_without_deadlock_detector):
    """Each server sees only half of the cycle: without the sidecar's deadlock detector it
    ends by lock wait timeout, and the log says why."""
    bank = bank_without_deadlock_detector
    first, second = bank.connect(database="bank"), bank.connect(database="bank")
    outcomes: list[int] = []
    try:
        c1, c2 = first.cursor(), second.cursor()
        for cur in (c1, c2):
            cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
        first.begin()
        second.begin()
        c1.execute("UPDATE account SET balance = balance - 1 WHERE id = 0")  # ds_0
        c2.execute("UPDATE account SET balance = balance - 1 WHERE id = 1")  # ds_1

        def cross(cur, account: int) -> None:
            try:
                cur.execute("UPDATE account SET balance = balance + 1 WHERE id = %s", (account,))
                outcomes.append(0)
            except pymysql.err.OperationalError as exc:
                outcomes.append(exc.args[0])

        thread = threading.Thread(target=cross, args=(c1, 1))
        thread.start()
        cross(c2, 0)
        thread.join(10)
        assert 1205 in outcomes
        first.rollback()
        second.rollback()
    finally:
        first.close()
        second.close()
    assert "possibly a deadlock across shards" in bank.log()


def run_crashing_transfer(config: dict, workdir, failpoint: str, finish: str = "commit") -> None:
    """Start a proxy that kills itself at ``failpoint`` and drive one cross-shard transfer
    into it, ended by ``finish`` (commit or rollback) unless the proxy died before."""
    port = free_port()
    config = {**config, "listen": {"host": "127.0.0.1", "port": port}}
    path = workdir / f"crash-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DBMESH_FAILPOINTS": failpoint}
    process = subprocess.Popen([sys.executable, "-m", "dbmesh", "run", "-c", str(path)], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proxy = Proxy("127.0.0.1", port, path, process, path)
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = proxy.connect(database="bank")
                break
            except pymysql.err.OperationalError:
                assert time.monotonic() < deadline, "crash proxy did not start"
                time.sleep(0.1)
        with conn.cursor() as cur, pytest.raises(pymysql.err.OperationalError):
            conn.begin()
            transfer(cur, 0, 1, 100)  # account 0 on ds_0, account 1 on ds_1
            conn.commit() if finish == "commit" else conn.rollback()
        assert process.wait(20) == -9, "the failpoint kills the proxy"
    finally:
        if process.poll() is None:
            process.kill()


def balances(sandbox) -> tuple[int, int]:
    values = []
    for ds, account in (("ds_0", 0), ("ds_1", 1)):
        with sandbox.admin_connect(ds, database=f"shop_{ds}") as conn, conn.cursor() as cur:
            cur.execute("SELECT balance FROM account WHERE id = %s", (account,))
            values.append(cur.fetchone()[0])
    return values[0], values[1]


@pytest.mark.parametrize("failpoint, committed", [
    ("xa_after_first_prepare", False),
    ("xa_before_decision", False),
    ("xa_after_decision", True),
    ("xa_after_first_commit", True),
])
def test_xa_recovery_after_kill(bank, bank_config, sandbox, failpoint, committed):
    config, workdir = bank_config
    stop_proxy(bank)  # the crash proxy is the only one running
    run_crashing_transfer(config, workdir, failpoint)
    restarted = start_proxy(config, workdir)  # recovery runs at start
    try:
        assert prepared_branches(sandbox) == []
        assert balances(sandbox) == ((INITIAL - 100, INITIAL + 100) if committed else (INITIAL, INITIAL))
        assert total(sandbox) == ACCOUNTS * INITIAL
        with sandbox.admin_connect("ds_0", database="shop_ds_0") as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM dbmesh_xa_log")
            assert cur.fetchone()[0] == 0
    finally:
        stop_proxy(restarted)
