"""The sidecar's YAML configuration: load, validate, and hold it as plain dataclasses.

Every validation error names the YAML path of the mistake (e.g. ``data_sources.ds_0.port``)
so an operator can fix the file without reading code. A config that would misroute data is
refused at load rather than served.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration mistake; ``path`` is the dotted YAML path at fault."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


@dataclass(frozen=True)
class TlsConfig:
    cert: str
    key: str


@dataclass(frozen=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 3307
    tls: TlsConfig | None = None
    server_version: str = "10.11.0-MariaDB-dbmesh"


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: no metrics endpoint


@dataclass(frozen=True)
class ServerConfig:
    # Worker processes sharing the listen port (SO_REUSEPORT); 0 means one per CPU.
    # 1 (the default) is a single process with no supervisor. See README "Worker processes".
    workers: int = 1


@dataclass(frozen=True)
class UserConfig:
    name: str
    password: str
    databases: tuple[str, ...]  # logical databases this user may use; "*" means all
    # May run the sidecar's admin statements (SHOW DBMESH TRANSACTIONS, DBMESH RETRY|FORGET ...).
    admin: bool = False

    def may_use(self, database: str) -> bool:
        return "*" in self.databases or database in self.databases


@dataclass(frozen=True)
class PoolConfig:
    max_size: int = 64
    idle_timeout_s: float = 300.0
    # A connection idle longer than this is pinged before it is handed out.
    check_after_idle_s: float = 30.0
    connect_timeout_s: float = 5.0
    # Wait this long for a free connection before failing the statement.
    acquire_timeout_s: float = 10.0


@dataclass(frozen=True)
class ReplicaConfig:
    name: str
    host: str
    port: int
    weight: int = 1


LOAD_BALANCERS = ("ROUND_ROBIN", "RANDOM", "WEIGHT")
READ_YOUR_WRITES_MODES = ("none", "window", "gtid")


@dataclass(frozen=True)
class ReadWriteConfig:
    """How reads of a data source with replicas are spread, and when they must not be."""
    load_balancer: str = "ROUND_ROBIN"
    # Where reads inside an explicit transaction go: "primary" or "replica".
    transaction_reads: str = "primary"
    # After a session writes: "window" reads from the primary for window_s; "gtid" waits
    # (MASTER_GTID_WAIT) until the chosen replica has the write, else reads the primary.
    read_your_writes: str = "window"
    window_s: float = 2.0
    gtid_wait_timeout_s: float = 0.5
    max_replication_lag_s: float = 5.0
    health_check_interval_s: float = 1.0
    # With no usable replica: read from the primary (True) or fail the read (False).
    fallback_to_primary: bool = True


@dataclass(frozen=True)
class DataSourceConfig:
    name: str
    host: str
    port: int
    user: str
    password: str
    database: str
    pool: PoolConfig = field(default_factory=PoolConfig)
    replicas: tuple[ReplicaConfig, ...] = ()
    read_write: ReadWriteConfig = field(default_factory=ReadWriteConfig)


TRANSACTION_MODES = ("LOCAL", "XA", "BASE")
BASE_ISOLATIONS = ("none", "version", "record_lock")


@dataclass(frozen=True)
class TransactionConfig:
    """How a transaction that touches several data sources commits (see txn/)."""
    mode: str = "LOCAL"
    # Where the coordinator keeps its decisions (default: the database's default data source).
    log_data_source: str | None = None
    # BASE: what a rollback checks before compensating, and how long a statement waits for
    # a row another global transaction holds (record_lock).
    base_isolation: str = "record_lock"
    lock_wait_timeout_s: float = 5.0


@dataclass(frozen=True)
class TransactionRecoveryConfig:
    """Server-wide (top-level ``transaction``): the BASE recovery sweep of a running sidecar
    finishes, every ``base_sweep_interval_s``, the transactions idle for ``base_orphan_age_s``
    that no session of the process drives; the XA sweep, every ``xa_sweep_interval_s``, the
    prepared branches of XA transactions no session of the process drives."""
    base_sweep_interval_s: float = 30.0
    base_orphan_age_s: float = 60.0
    xa_sweep_interval_s: float = 30.0
    # How often to look for deadlocks across data sources (0: never), and every 0.15 s while
    # transactions wait for each other (see frontend/deadlocks.py).
    deadlock_check_interval_s: float = 1.0


@dataclass(frozen=True)
class LogicalDatabaseConfig:
    name: str
    # Pass-through: every statement goes to this data source unchanged.
    data_source: str | None = None
    # Sharding rules (sharding.rules.ShardingRuleSet), validated at load.
    sharding: Any = None
    transaction: TransactionConfig = field(default_factory=TransactionConfig)
    # Shadow traffic rules (shadow.rules.ShadowRules) and read mirroring (shadow.rules.MirrorConfig).
    shadow: Any = None
    mirror: Any = None


@dataclass(frozen=True)
class Config:
    listen: ListenConfig
    users: dict[str, UserConfig]
    data_sources: dict[str, DataSourceConfig]
    databases: dict[str, LogicalDatabaseConfig]
    # Where a session that has no database selected sends its statements.
    default_data_source: str
    # After a statement that generated an AUTO_INCREMENT id, keep the same backend
    # connection for this many statements so LAST_INSERT_ID() sees it.
    auto_increment_delay_multiplex: int = 5
    # ... but only while the client sends its next statement within this many seconds.
    auto_increment_delay_multiplex_timeout_s: float = 1.0
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    transaction: TransactionRecoveryConfig = field(default_factory=TransactionRecoveryConfig)
    # Names this sidecar in XA transaction ids, so recovery after a restart touches only the
    # transactions it started (give each sidecar process of a deployment its own).
    instance_id: str = "dbmesh"
    source_path: str | None = None

    def data_source_for(self, database: str | None) -> DataSourceConfig:
        """Where a session on ``database`` runs what is not routed by rules: the pass-through
        target, or a sharded database's default data source."""
        if database is None or database not in self.databases:
            return self.data_sources[self.default_data_source]
        ldb = self.databases[database]
        if ldb.sharding is not None:
            return self.data_sources[ldb.sharding.default_data_source]
        return self.data_sources[ldb.data_source or self.default_data_source]


# ---------------------------------------------------------------------------------------
# Validation helpers: each takes the YAML path so errors point at the mistake.


def expect_mapping(value: Any, path: str) -> dict[str, Any]:
    """A YAML mapping (None reads as empty); shared by every section's parser."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
    return value


def reject_unknown(section: dict[str, Any], allowed: set[str], path: str) -> None:
    for key in section:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}", f"unknown key; expected one of {sorted(allowed)}")


_mapping = expect_mapping
_reject_unknown = reject_unknown




def _str(section: dict[str, Any], key: str, path: str, default: str | None = None) -> str:
    value = section.get(key, default)
    if value is None:
        raise ConfigError(f"{path}.{key}", "is required")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError(f"{path}.{key}", f"expected a string, got {type(value).__name__}")
    return os.path.expandvars(value)


def _int(section: dict[str, Any], key: str, path: str, default: int | None = None,
         low: int | None = None, high: int | None = None) -> int:
    value = section.get(key, default)
    if value is None:
        raise ConfigError(f"{path}.{key}", "is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}.{key}", f"expected an integer, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{path}.{key}", f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{path}.{key}", f"must be at most {high}, got {value}")
    return value


def _float(section: dict[str, Any], key: str, path: str, default: float) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{path}.{key}", f"expected a non-negative number, got {value!r}")
    return float(value)


def _parse_listen(raw: Any, base_dir: Path) -> ListenConfig:
    section = _mapping(raw, "listen")
    _reject_unknown(section, {"host", "port", "tls", "server_version"}, "listen")
    tls = None
    if section.get("tls") is not None:
        tls_section = _mapping(section["tls"], "listen.tls")
        _reject_unknown(tls_section, {"cert", "key"}, "listen.tls")
        cert = _resolve(base_dir, _str(tls_section, "cert", "listen.tls"))
        key = _resolve(base_dir, _str(tls_section, "key", "listen.tls"))
        for name, file in (("cert", cert), ("key", key)):
            if not Path(file).is_file():
                raise ConfigError(f"listen.tls.{name}", f"file {file!r} does not exist")
        tls = TlsConfig(cert=cert, key=key)
    return ListenConfig(
        host=_str(section, "host", "listen", "127.0.0.1"),
        port=_int(section, "port", "listen", 3307, 0, 65535),
        tls=tls,
        server_version=_str(section, "server_version", "listen", ListenConfig.server_version),
    )


def _resolve(base_dir: Path, file: str) -> str:
    p = Path(file)
    return str(p if p.is_absolute() else (base_dir / p))


def _parse_users(raw: Any) -> dict[str, UserConfig]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("users", "expected a non-empty list of users")
    users: dict[str, UserConfig] = {}
    for i, item in enumerate(raw):
        path = f"users[{i}]"
        section = _mapping(item, path)
        _reject_unknown(section, {"name", "password", "databases", "admin"}, path)
        name = _str(section, "name", path)
        if name in users:
            raise ConfigError(f"{path}.name", f"user {name!r} is declared twice")
        dbs = section.get("databases", ["*"])
        if isinstance(dbs, str):
            dbs = [dbs]
        if not isinstance(dbs, list) or not all(isinstance(d, str) for d in dbs):
            raise ConfigError(f"{path}.databases", "expected a list of logical database names")
        admin = section.get("admin", False)
        if not isinstance(admin, bool):
            raise ConfigError(f"{path}.admin", f"expected true or false (may the user run the dbmesh admin "
                                               f"statements), got {admin!r}")
        users[name] = UserConfig(name=name, password=_str(section, "password", path, ""),
                                 databases=tuple(dbs), admin=admin)
    return users


def _parse_pool(raw: Any, path: str) -> PoolConfig:
    section = _mapping(raw, path)
    _reject_unknown(section, {"max_size", "idle_timeout_s", "check_after_idle_s",
                              "connect_timeout_s", "acquire_timeout_s"}, path)
    d = PoolConfig()
    return PoolConfig(
        max_size=_int(section, "max_size", path, d.max_size, 1, 10000),
        idle_timeout_s=_float(section, "idle_timeout_s", path, d.idle_timeout_s),
        check_after_idle_s=_float(section, "check_after_idle_s", path, d.check_after_idle_s),
        connect_timeout_s=_float(section, "connect_timeout_s", path, d.connect_timeout_s),
        acquire_timeout_s=_float(section, "acquire_timeout_s", path, d.acquire_timeout_s),
    )


def _choice(section: dict[str, Any], key: str, path: str, default: str, choices: tuple[str, ...]) -> str:
    value = _str(section, key, path, default)
    normalised = value.upper() if choices[0].isupper() else value.lower()
    if normalised not in choices:
        raise ConfigError(f"{path}.{key}", f"expected one of {list(choices)}, got {value!r}")
    return normalised


def _parse_read_write(raw: Any, path: str) -> ReadWriteConfig:
    section = _mapping(raw, path)
    _reject_unknown(section, {"load_balancer", "transaction_reads", "read_your_writes", "window_s",
                              "gtid_wait_timeout_s", "max_replication_lag_s", "health_check_interval_s",
                              "fallback_to_primary"}, path)
    d = ReadWriteConfig()
    fallback = section.get("fallback_to_primary", d.fallback_to_primary)
    if not isinstance(fallback, bool):
        raise ConfigError(f"{path}.fallback_to_primary", f"expected true or false, got {fallback!r}")
    return ReadWriteConfig(
        load_balancer=_choice(section, "load_balancer", path, d.load_balancer, LOAD_BALANCERS),
        transaction_reads=_choice(section, "transaction_reads", path, d.transaction_reads, ("primary", "replica")),
        read_your_writes=_choice(section, "read_your_writes", path, d.read_your_writes, READ_YOUR_WRITES_MODES),
        window_s=_float(section, "window_s", path, d.window_s),
        gtid_wait_timeout_s=_float(section, "gtid_wait_timeout_s", path, d.gtid_wait_timeout_s),
        max_replication_lag_s=_float(section, "max_replication_lag_s", path, d.max_replication_lag_s),
        health_check_interval_s=max(0.1, _float(section, "health_check_interval_s", path,
                                                d.health_check_interval_s)),
        fallback_to_primary=fallback,
    )


def _parse_data_sources(raw: Any) -> dict[str, DataSourceConfig]:
    section = _mapping(raw, "data_sources")
    if not section:
        raise ConfigError("data_sources", "declare at least one data source")
    result: dict[str, DataSourceConfig] = {}
    for name, item in section.items():
        path = f"data_sources.{name}"
        ds = _mapping(item, path)
        _reject_unknown(ds, {"host", "port", "user", "password", "database", "pool", "replicas", "read_write"},
                        path)
        replicas = []
        for i, rep in enumerate(ds.get("replicas") or []):
            rpath = f"{path}.replicas[{i}]"
            rsec = _mapping(rep, rpath)
            _reject_unknown(rsec, {"name", "host", "port", "weight"}, rpath)
            replicas.append(ReplicaConfig(
                name=_str(rsec, "name", rpath, f"{name}_replica_{i}"),
                host=_str(rsec, "host", rpath, _str(ds, "host", path, "127.0.0.1")),
                port=_int(rsec, "port", rpath, None, 1, 65535),
                weight=_int(rsec, "weight", rpath, 1, 0, 1000),
            ))
        result[name] = DataSourceConfig(
            name=name,
            host=_str(ds, "host", path, "127.0.0.1"),
            port=_int(ds, "port", path, 3306, 1, 65535),
            user=_str(ds, "user", path),
            password=_str(ds, "password", path, ""),
            database=_str(ds, "database", path),
            pool=_parse_pool(ds.get("pool"), f"{path}.pool"),
            replicas=tuple(replicas),
            read_write=_parse_read_write(ds.get("read_write"), f"{path}.read_write"),
        )
    return result


def _parse_databases(raw: Any, data_sources: dict[str, DataSourceConfig]) -> dict[str, LogicalDatabaseConfig]:
    section = _mapping(raw, "databases")
    if not section:
        raise ConfigError("databases", "declare at least one logical database")
    result: dict[str, LogicalDatabaseConfig] = {}
    for name, item in section.items():
        path = f"databases.{name}"
        db = _mapping(item, path)
        _reject_unknown(db, {"data_source", "sharding", "transaction", "shadow", "mirror"}, path)
        ds_name = db.get("data_source")
        if ds_name is not None and ds_name not in data_sources:
            raise ConfigError(f"{path}.data_source",
                              f"no data source named {ds_name!r}; declared: {sorted(data_sources)}")
        sharding = db.get("sharding")
        if (ds_name is None) == (sharding is None):
            raise ConfigError(path, "give either data_source (pass-through) or sharding rules, not both")
        rules = _parse_sharding(sharding, f"{path}.sharding", data_sources) if sharding is not None else None
        result[name] = LogicalDatabaseConfig(name=name, data_source=ds_name, sharding=rules,
                                             transaction=_parse_transaction(db.get("transaction"),
                                                                            f"{path}.transaction", data_sources),
                                             **_parse_shadow_sections(db, path, name, data_sources, ds_name, rules))
    return result


def _parse_shadow_sections(db: dict[str, Any], path: str, name: str, data_sources: dict[str, DataSourceConfig],
                            ds_name: str | None, rules: Any) -> dict[str, Any]:
    """The optional shadow and mirror sections (see shadow/rules.py)."""
    from shadow.rules import parse_mirror, parse_shadow

    found: dict[str, Any] = {}
    if db.get("shadow") is not None:
        found["shadow"] = parse_shadow(db["shadow"], f"{path}.shadow", name, data_sources, ds_name, rules)
    if db.get("mirror") is not None:
        found["mirror"] = parse_mirror(db["mirror"], f"{path}.mirror", name, data_sources, ds_name, rules)
    return found


def _parse_transaction(raw: Any, path: str, data_sources: dict[str, DataSourceConfig]) -> TransactionConfig:
    section = _mapping(raw, path)
    for key in _RECOVERY_KEYS:
        if key in section:
            raise ConfigError(f"{path}.{key}", "is a setting of the whole sidecar (one recovery sweep serves "
                                               "every database): put it in the top-level transaction section")
    _reject_unknown(section, {"mode", "log_data_source", "base_isolation", "lock_wait_timeout_s"}, path)
    log_ds = section.get("log_data_source")
    if log_ds is not None and log_ds not in data_sources:
        raise ConfigError(f"{path}.log_data_source", f"no data source named {log_ds!r}; declared: "
                                                     f"{sorted(data_sources)}")
    d = TransactionConfig()
    return TransactionConfig(mode=_choice(section, "mode", path, d.mode, TRANSACTION_MODES),
                             log_data_source=log_ds,
                             base_isolation=_choice(section, "base_isolation", path, d.base_isolation,
                                                    BASE_ISOLATIONS),
                             lock_wait_timeout_s=_float(section, "lock_wait_timeout_s", path,
                                                                  d.lock_wait_timeout_s))


_RECOVERY_KEYS = ("base_sweep_interval_s", "base_orphan_age_s", "xa_sweep_interval_s", "deadlock_check_interval_s")


def _parse_transaction_recovery(raw: Any) -> TransactionRecoveryConfig:
    section = _mapping(raw, "transaction")
    for key in section:
        if key not in _RECOVERY_KEYS:
            hint = (" (a database's transaction mode goes in databases.<name>.transaction)"
                    if key in ("mode", "log_data_source", "base_isolation", "lock_wait_timeout_s") else "")
            raise ConfigError(f"transaction.{key}", f"unknown key; expected one of {list(_RECOVERY_KEYS)}{hint}")
    d = TransactionRecoveryConfig()
    return TransactionRecoveryConfig(
        base_sweep_interval_s=_sweep_interval(section, "base_sweep_interval_s", d.base_sweep_interval_s),
        base_orphan_age_s=_float(section, "base_orphan_age_s", "transaction", d.base_orphan_age_s),
        xa_sweep_interval_s=_sweep_interval(section, "xa_sweep_interval_s", d.xa_sweep_interval_s),
        deadlock_check_interval_s=_deadlock_check_interval(section, d.deadlock_check_interval_s))


def _deadlock_check_interval(section: dict[str, Any], default: float) -> float:
    interval = _float(section, "deadlock_check_interval_s", "transaction", default)
    if interval != 0:
        return _sweep_interval(section, "deadlock_check_interval_s", default)
    return interval


def _sweep_interval(section: dict[str, Any], key: str, default: float) -> float:
    interval = _float(section, key, "transaction", default)
    if interval < 0.1:
        raise ConfigError(f"transaction.{key}", f"must be at least 0.1 (seconds between sweeps; each one queries "
                                                f"data sources), got {interval:g}")
    return interval


def _parse_sharding(raw: Any, path: str, data_sources: dict[str, DataSourceConfig]) -> Any:
    """Sharding rules over ``data_sources`` (the list in the section, default all declared)."""
    from sharding.rules import parse_sharding_rules  # sharding.rules reports errors with ConfigError

    section = dict(_mapping(raw, path))
    spans = section.pop("data_sources", None)
    if spans is None:
        spans = list(data_sources)
    if not isinstance(spans, list) or not spans or not all(isinstance(d, str) for d in spans):
        raise ConfigError(f"{path}.data_sources", "expected a non-empty list of data source names")
    for i, ds in enumerate(spans):
        if ds not in data_sources:
            raise ConfigError(f"{path}.data_sources[{i}]", f"no data source named {ds!r}; declared: "
                                                           f"{sorted(data_sources)}")
    return parse_sharding_rules(section, path, spans)


def _instance_id(top: dict[str, Any]) -> str:
    value = _str(top, "instance_id", "(top level)", "dbmesh")
    if not value.replace("_", "").replace("-", "").isalnum() or len(value) > 32:
        raise ConfigError("instance_id", "use up to 32 letters, digits, '-' or '_'")
    return value


def parse_config(raw: Any, base_dir: Path | None = None, source_path: str | None = None) -> Config:
    base_dir = base_dir or Path.cwd()
    top = _mapping(raw, "")
    _reject_unknown(top, {"listen", "users", "data_sources", "databases", "default_data_source",
                          "auto_increment_delay_multiplex", "auto_increment_delay_multiplex_timeout_s",
                          "metrics", "instance_id", "server", "transaction"}, "(top level)")
    server_section = _mapping(top.get("server"), "server")
    _reject_unknown(server_section, {"workers"}, "server")
    workers = server_section.get("workers", 1)
    if workers == "auto":
        workers = 0
    server = ServerConfig(workers=_int({"workers": workers}, "workers", "server", 1, 0, 256))
    metrics_section = _mapping(top.get("metrics"), "metrics")
    _reject_unknown(metrics_section, {"host", "port"}, "metrics")
    metrics = MetricsConfig(host=_str(metrics_section, "host", "metrics", "127.0.0.1"),
                            port=_int(metrics_section, "port", "metrics", 0, 0, 65535))
    data_sources = _parse_data_sources(top.get("data_sources"))
    databases = _parse_databases(top.get("databases"), data_sources)
    users = _parse_users(top.get("users"))
    for user in users.values():
        for db in user.databases:
            if db != "*" and db not in databases:
                idx = list(users).index(user.name)
                raise ConfigError(f"users[{idx}].databases",
                                  f"no logical database named {db!r}; declared: {sorted(databases)}")
    default_ds = top.get("default_data_source") or next(iter(data_sources))
    if default_ds not in data_sources:
        raise ConfigError("default_data_source", f"no data source named {default_ds!r}")
    return Config(
        listen=_parse_listen(top.get("listen"), base_dir),
        users=users,
        data_sources=data_sources,
        databases=databases,
        default_data_source=default_ds,
        auto_increment_delay_multiplex=_int(top, "auto_increment_delay_multiplex", "(top level)", 5, 0, 1000),
        auto_increment_delay_multiplex_timeout_s=_float(top, "auto_increment_delay_multiplex_timeout_s",
                                                        "(top level)", 1.0),
        metrics=metrics,
        server=server,
        transaction=_parse_transaction_recovery(top.get("transaction")),
        instance_id=_instance_id(top),
        source_path=source_path,
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {str(file)!r}: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{file.name} is not valid YAML: {exc}") from exc
    return parse_config(raw, base_dir=file.parent, source_path=str(file))
