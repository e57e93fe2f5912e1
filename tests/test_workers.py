"""Several worker processes on one port (server.workers): every connection is served, ids stay
unique across workers, and the workers never outlive their supervisor."""

from __future__ import annotations

import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import sandbox_proxy_config, start_proxy, stop_proxy


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def wait_until(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.fixture
def two_workers(sandbox, tmp_path):
    config = sandbox_proxy_config(sandbox, tmp_path)
    config["server"] = {"workers": 2}
    proxy = start_proxy(config, tmp_path)
    assert wait_until(lambda: len(children(proxy.process.pid)) == 2), proxy.log()
    try:
        yield proxy
    finally:
        stop_proxy(proxy)


def test_many_connections_over_two_workers(two_workers):
    proxy = two_workers

    def session(i: int) -> int:
        conn = proxy.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT %s + 1, DATABASE()", (i,))
                assert cur.fetchone() == (i + 1, "demo")
            return conn.thread_id()
        finally:
            conn.close()

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(session, range(120)))
    assert len(set(ids)) == len(ids)         # connection ids unique across the workers
    assert {i % 2 for i in ids} == {0, 1}    # worker k numbers its connections k + 1 + 2n: both served
    assert proxy.alive()


def test_killing_the_supervisor_stops_the_workers(two_workers):
    proxy = two_workers
    workers = children(proxy.process.pid)
    os.kill(proxy.process.pid, signal.SIGKILL)
    proxy.process.wait()
    assert wait_until(lambda: not any(running(pid) for pid in workers)), workers
    with pytest.raises(OSError):
        socket.create_connection((proxy.host, proxy.port), timeout=1).close()


def test_stopping_the_supervisor_stops_the_workers(two_workers):
    proxy = two_workers
    workers = children(proxy.process.pid)
    held = proxy.connect()  # a client still connected does not keep a worker alive
    proxy.process.terminate()
    assert proxy.process.wait(20) == 0
    assert not any(running(pid) for pid in workers)
    held.close()


def test_statement_counts_of_all_workers_reach_the_supervisors_metrics(sandbox, tmp_path):
    """Workers count statements as plain integers and hand them to the multiprocess metrics
    every second; the supervisor's /metrics sums them over workers."""
    import re
    import urllib.request

    from conftest import free_port

    config = sandbox_proxy_config(sandbox, tmp_path)
    config["server"] = {"workers": 2}
    config["metrics"] = {"host": "127.0.0.1", "port": free_port()}
    proxy = start_proxy(config, tmp_path)
    url = f"http://127.0.0.1:{config['metrics']['port']}/metrics"

    def statements() -> float:
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            return 0.0
        return sum(float(v) for v in re.findall(r'dbmesh_backend_statements_total\{[^}]*role="primary"\} ([0-9.e+]+)',
                                                 text))

    try:
        before = statements()
        for _ in range(8):  # connections land on either worker
            with proxy.connect() as conn, conn.cursor() as cur:
                for n in range(5):
                    cur.execute("SELECT %s", (n,))
        assert wait_until(lambda: statements() >= before + 40), (before, statements())
    finally:
        stop_proxy(proxy)
