"""Configuration is validated on load; every mistake names its YAML path."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from dbmesh.backend.replicas import ReplicaSet
from dbmesh.config import ConfigError, load_config, parse_config

BASE = {
    "listen": {"host": "127.0.0.1", "port": 3307},
    "users": [{"name": "app", "password": "pw", "databases": ["demo"]}],
    "data_sources": {"ds_0": {"host": "127.0.0.1", "port": 3306, "user": "u", "password": "p", "database": "demo",
                              "replicas": [{"name": "r1", "port": 3316, "weight": 1},
                                           {"name": "r2", "port": 3326, "weight": 3}]}},
    "databases": {"demo": {"data_source": "ds_0"}},
}


def with_change(path: str, value) -> dict:
    config = copy.deepcopy(BASE)
    node = config
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    last = keys[-1]
    if value is KeyError:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return config


@pytest.mark.parametrize("path, value, error_path, words", [
    ("listen.port", "x", "listen.port", "integer"),
    ("listen.port", 70000, "listen.port", "at most"),
    ("listen.bogus", 1, "listen.bogus", "unknown key"),
    ("server", {"workers": -1}, "server.workers", "at least 0"),
    ("server", {"workers": "many"}, "server.workers", "integer"),
    ("server", {"threads": 2}, "server.threads", "unknown key"),
    ("data_sources.ds_0.user", KeyError, "data_sources.ds_0.user", "required"),
    ("data_sources.ds_0.pool", {"max_size": 0}, "data_sources.ds_0.pool.max_size", "at least 1"),
    ("data_sources.ds_0.read_write", {"load_balancer": "FASTEST"}, "data_sources.ds_0.read_write.load_balancer",
     "ROUND_ROBIN"),
    ("databases.demo.data_source", "ds_9", "databases.demo.data_source", "no data source named 'ds_9'"),
    ("users.0.databases", ["nope"], "users[0].databases", "no logical database named 'nope'"),
    ("databases.demo", {"data_source": "ds_0", "transaction": {"mode": "SAGA"}}, "databases.demo.transaction.mode",
     "expected one of"),
    ("databases.demo", {"data_source": "ds_0", "transaction": {"mode": "BASE", "base_isolation": "serializable"}},
     "databases.demo.transaction.base_isolation", "record_lock"),
    ("databases.demo", {"data_source": "ds_0", "transaction": {"lock_wait_timeout_s": -1}},
     "databases.demo.transaction.lock_wait_timeout_s", "non-negative"),
    ("databases.demo", {"sharding": {"data_sources": ["ds_0"], "tables": {"t": {
        "actual_data_nodes": "ds_${0..1}.t", "database_strategy": {"columns": ["id"], "algorithm": "m"}}},
        "algorithms": {"m": {"type": "MOD", "props": {"sharding_count": 2}}}}},
     "databases.demo.sharding.tables.t.actual_data_nodes", "ds_1"),
    ("databases.demo", {"sharding": {"data_sources": ["ds_0"], "tables": {"t": {
        "actual_data_nodes": "ds_0.t_${0..1}", "table_strategy": {"columns": ["id"], "algorithm": "m"}}},
        "algorithms": {"m": {"type": "MOD", "props": {"sharding_count": 3}}}}},
     "databases.demo.sharding.tables.t.table_strategy", "no target ends in 2"),
])
def test_mistakes_name_their_path(path, value, error_path, words):
    with pytest.raises(ConfigError) as info:
        parse_config(with_change(path, value))
    assert info.value.path.startswith(error_path), info.value
    assert words in str(info.value)


def test_server_workers():
    assert parse_config(BASE).server.workers == 1
    assert parse_config(with_change("server", {"workers": 4})).server.workers == 4
    assert parse_config(with_change("server", {"workers": "auto"})).server.workers == 0  # one per CPU


def test_cli_check_reports_the_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_change("databases.demo.data_source", "ds_9")))
    result = subprocess.run([sys.executable, "-m", "dbmesh", "check", "-c", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "databases.demo.data_source" in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    assert load_config(good).data_sources["ds_0"].replicas[1].weight == 3


def test_load_balancers():
    config = parse_config(BASE).data_sources["ds_0"]
    replicas = ReplicaSet(config)
    for r in replicas.replicas:
        r.healthy = True
    assert [replicas.choose().name for _ in range(4)] == ["r1", "r2", "r1", "r2"]
    replicas.replicas[0].healthy = False
    assert {replicas.choose().name for _ in range(10)} == {"r2"}
    weighted = ReplicaSet(parse_config(with_change("data_sources.ds_0.read_write", {"load_balancer": "WEIGHT"}))
                          .data_sources["ds_0"])
    for r in weighted.replicas:
        r.healthy = True
    picks = [weighted.choose().name for _ in range(4000)]
    assert 0.68 < picks.count("r2") / len(picks) < 0.82  # weight 3 of 4
    for r in weighted.replicas:
        r.healthy = False
    assert weighted.choose() is None
