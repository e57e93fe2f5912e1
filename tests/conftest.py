"""Shared fixtures: one sandbox cluster of real MariaDB servers per test run, and dbmesh
proxies started as real processes (``python -m dbmesh run``) on free ports."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pytest
import yaml
from hypothesis import settings

from dbmesh import sandbox as sandbox_mod

ROOT = Path(__file__).resolve().parent.parent

# Property tests check answers, never speed: no per-example deadline (a loaded CI machine
# would fail them for being slow).
settings.register_profile("dbmesh", deadline=None)
settings.load_profile("dbmesh")


def shop_rules_offline():
    """The sandbox's `shop` sharding rules over two data sources, parsed without servers
    (for planner tests)."""
    from dbmesh.config import parse_config

    config = {"users": [{"name": "a", "password": "b"}],
              "data_sources": {d: {"host": "h", "port": 1, "user": "u", "password": "p", "database": d}
                               for d in ("ds_0", "ds_1")},
              "databases": {"shop": {"sharding": sandbox_mod.shop_sharding_rules(["ds_0", "ds_1"])}}}
    return parse_config(config).databases["shop"].sharding


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sandbox_mod.Sandbox]:
    sandbox_mod.ensure_mariadb_installed()
    box = sandbox_mod.Sandbox(tmp_path_factory.mktemp("sandbox"))
    box.up(shards=2, replicas_per_shard=1)
    try:
        yield box
    finally:
        box.down(purge=True)


@dataclass
class Proxy:
    host: str
    port: int
    config_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def connect(self, user: str = "app", password: str = "app", database: str | None = "demo",
                **kwargs: object) -> pymysql.Connection:
        return pymysql.connect(host=self.host, port=self.port, user=user, password=password,
                               database=database, autocommit=True, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


def start_proxy(config: dict, workdir: Path, env: dict[str, str] | None = None) -> Proxy:
    """Write ``config`` (with a free listen port) and start a proxy process on it, with
    ``env`` added to its environment."""
    port = free_port()
    config = dict(config)
    config["listen"] = {**config.get("listen", {}), "host": "127.0.0.1", "port": port}
    config_path = workdir / f"dbmesh-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = workdir / f"dbmesh-{port}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen([sys.executable, "-m", "dbmesh", "run", "-c", str(config_path)],
                               stdout=log_file, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, cwd=ROOT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"proxy exited at start:\n{log_path.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return Proxy("127.0.0.1", port, config_path, process, log_path)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"proxy did not listen within 20s:\n{log_path.read_text()}")


def stop_proxy(proxy: Proxy) -> None:
    proxy.process.terminate()
    try:
        proxy.process.wait(10)
    except subprocess.TimeoutExpired:
        proxy.process.kill()
        proxy.process.wait()


def wait_until(condition, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def fast_lane_counts(metrics_port: int) -> dict[str, float]:
    """dbmesh_fast_lane_commands_total by outcome (served, declined) from a proxy's metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return {outcome: float(value) for outcome, value in
            re.findall(r'dbmesh_fast_lane_commands_total\{outcome="(\w+)"\} ([0-9.e+]+)', text)}


def run_on(sandbox: sandbox_mod.Sandbox, server: str, database: str | None, *statements: str) -> list[tuple]:
    """Run statements directly on a sandbox server (no sidecar); the last one's rows."""
    with sandbox.admin_connect(server, database=database) as conn, conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)
        return list(cur.fetchall())


def sandbox_proxy_config(sandbox: sandbox_mod.Sandbox, workdir: Path, databases: dict | None = None,
                         replicas: bool = False) -> dict:
    """The config `dbmesh sandbox up` writes, with ``databases`` in place of its own and,
    unless asked for, no replicas (so every read sees the last write)."""
    path = workdir / "sandbox-base.yaml"
    sandbox_mod.write_config(sandbox.info(), path, listen_port=0)
    config = yaml.safe_load(path.read_text())
    if not replicas:
        for ds in config["data_sources"].values():
            ds.pop("replicas", None)
    if databases is not None:
        config["databases"] = databases
    return config


@pytest.fixture(scope="session")
def sandbox_config(sandbox: sandbox_mod.Sandbox, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The config ``dbmesh sandbox up`` writes, plus a user limited to one database."""
    path = tmp_path_factory.mktemp("config") / "sandbox.yaml"
    sandbox_mod.write_config(sandbox.info(), path, listen_port=free_port())
    config = yaml.safe_load(path.read_text())
    config["users"].append({"name": "limited", "password": "limited-pw", "databases": ["demo"]})
    # Reads stay on primaries here, so a write is visible to the next read from any
    # connection; read/write splitting is tested with its own proxy (test_read_write.py).
    for ds in config["data_sources"].values():
        ds.pop("replicas", None)
    config["databases"]["other"] = {"data_source": "ds_1"}
    return config


@pytest.fixture(scope="session")
def proxy(sandbox_config: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """A pass-through proxy over the sandbox, shared by the tests of a run."""
    p = start_proxy(sandbox_config, tmp_path_factory.mktemp("proxy"))
    try:
        yield p
    finally:
        stop_proxy(p)
