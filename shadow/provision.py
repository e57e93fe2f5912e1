"""``dbmesh shadow provision``: create every shadow table with its production table's schema.

For each shadowed actual table (``ds_0.t_order_0``) it reads ``SHOW CREATE TABLE`` on the
production data source and creates the shadow (``ds_0_shadow.t_order_0_shadow``), creating
the shadow data source's database first when it is missing (with the production database's
character set). A shadow that already exists is compared with production (table name and
AUTO_INCREMENT counter aside): equal is reported up to date, different is reported as drift
and re-created only with ``--recreate`` (its rows are lost). Foreign keys of a shadow that
shares the production database are renamed (constraint names are per database) and point
at the parent's shadow when the parent is shadowed too.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from typing import Any

from dbmesh.config import Config, ConfigError, DataSourceConfig, load_config

ER_NO_SUCH_TABLE = 1146
ER_BAD_DB_ERROR = 1049
_AUTO_INCREMENT = re.compile(r"\s+AUTO_INCREMENT=\d+")
_FOREIGN_KEY = re.compile(r"CONSTRAINT `((?:[^`]|``)+)` FOREIGN KEY")
_REFERENCES = re.compile(r"REFERENCES `((?:[^`]|``)+)`")


@dataclass
class Outcome:
    database: str
    production: str      # ds.table
    shadow: str          # ds.table
    action: str          # created | up to date | recreated | differs | missing in production | failed
    detail: str = ""


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def shadow_create_sql(create: str, table: str, shadow: str, same_database: bool,
                      shadow_of: dict[str, str]) -> str:
    """The production CREATE TABLE text turned into the shadow's (no AUTO_INCREMENT counter)."""
    head = f"CREATE TABLE {_quote(table)}"
    if not create.startswith(head):
        raise ValueError(f"unexpected SHOW CREATE TABLE output for {table}: {create[:80]!r}")
    body = _AUTO_INCREMENT.sub("", create[len(head):])
    if same_database:
        suffix = shadow[len(table):] if shadow.startswith(table) else "_" + shadow
        body = _FOREIGN_KEY.sub(lambda m: f"CONSTRAINT {_quote(m.group(1).replace('``', '`') + suffix)} FOREIGN KEY",
                                body)
    body = _REFERENCES.sub(lambda m: f"REFERENCES {_quote(shadow_of.get(m.group(1).lower(), m.group(1)))}", body)
    return f"CREATE TABLE {_quote(shadow)}{body}"


def _normalise(create: str, name: str) -> str:
    head = f"CREATE TABLE {_quote(name)}"
    text = create[len(head):] if create.startswith(head) else create
    return _AUTO_INCREMENT.sub("", text)


class _Connections:
    def __init__(self, config: Config):
        self.config = config
        self.open: dict[tuple[str, bool], Any] = {}

    def get(self, ds_name: str, with_database: bool = True) -> Any:
        import pymysql

        key = (ds_name, with_database)
        conn = self.open.get(key)
        if conn is None:
            ds: DataSourceConfig = self.config.data_sources[ds_name]
            conn = pymysql.connect(host=ds.host, port=ds.port, user=ds.user, password=ds.password,
                                   database=ds.database if with_database else None, autocommit=True,
                                   charset="utf8mb4", connect_timeout=ds.pool.connect_timeout_s)
            self.open[key] = conn
        return conn

    def close(self) -> None:
        for conn in self.open.values():
            conn.close()


def _show_create(conn: Any, table: str) -> str | None:
    import pymysql

    try:
        with conn.cursor() as cur:
            cur.execute(f"SHOW CREATE TABLE {_quote(table)}")
            return cur.fetchone()[1]
    except pymysql.err.MySQLError as exc:
        if exc.args and exc.args[0] == ER_NO_SUCH_TABLE:
            return None
        raise


def _ensure_database(conns: _Connections, production: str, shadow: str) -> None:
    """Create the shadow data source's database when it does not exist."""
    import pymysql

    config = conns.config
    try:
        conns.get(shadow)
        return
    except pymysql.err.MySQLError as exc:
        if not exc.args or exc.args[0] != ER_BAD_DB_ERROR:
            raise
    with conns.get(production).cursor() as cur:
        cur.execute("SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
                    "WHERE SCHEMA_NAME = DATABASE()")
        charset, collation = cur.fetchone()
    with conns.get(shadow, with_database=False).cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {_quote(config.data_sources[shadow].database)} "
                    f"CHARACTER SET {charset} COLLATE {collation}")


def provision(config: Config, database: str | None = None, recreate: bool = False) -> list[Outcome]:
    """Create the shadows of ``database`` (default: every database with shadow rules)."""
    import pymysql

    names = [n for n, d in config.databases.items() if d.shadow is not None and (database is None or n == database)]
    if database is not None and not names:
        if database not in config.databases:
            raise ConfigError("", f"no logical database named {database!r}; declared: {sorted(config.databases)}")
        raise ConfigError(f"databases.{database}", "has no shadow section")
    conns = _Connections(config)
    outcomes: list[Outcome] = []
    try:
        for name in names:
            rules = config.databases[name].shadow
            for ds, table, shadow_ds, shadow_table in rules.shadow_tables():
                outcome = Outcome(name, f"{ds}.{table}", f"{shadow_ds}.{shadow_table}", "")
                outcomes.append(outcome)
                try:
                    _provision_one(conns, rules, ds, table, shadow_ds, shadow_table, recreate, outcome)
                except (pymysql.err.MySQLError, ValueError) as exc:
                    outcome.action, outcome.detail = "failed", str(exc)
    finally:
        conns.close()
    return outcomes


def _provision_one(conns: _Connections, rules: Any, ds: str, table: str, shadow_ds: str, shadow_table: str,
                   recreate: bool, outcome: Outcome) -> None:
    config = conns.config
    # The shadow database first, so that DDL through dbmesh can create the shadow of a
    # production table that does not exist yet.
    _ensure_database(conns, ds, shadow_ds)
    create = _show_create(conns.get(ds), table)
    if create is None:
        outcome.action = "missing in production"
        outcome.detail = "create the production table through dbmesh: that creates its shadows too"
        return
    a, b = config.data_sources[ds], config.data_sources[shadow_ds]
    same_database = (a.host, a.port, a.database) == (b.host, b.port, b.database)
    shadow_of = {t: s for (d, t), s in rules.nodes.items() if d == ds}
    wanted = shadow_create_sql(create, table, shadow_table, same_database, shadow_of)
    target = conns.get(shadow_ds)
    existing = _show_create(target, shadow_table)
    with target.cursor() as cur:
        if existing is None:
            cur.execute(wanted)
            outcome.action = "created"
            return
        if _normalise(existing, shadow_table) == _normalise(wanted, shadow_table):
            outcome.action = "up to date"
            return
        if not recreate:
            outcome.action = "differs"
            outcome.detail = "the shadow's schema differs from production; --recreate replaces it (rows are lost)"
            return
        cur.execute(f"DROP TABLE {_quote(shadow_table)}")
        cur.execute(wanted)
        outcome.action = "recreated"


def cmd_shadow(args: argparse.Namespace) -> int:
    import pymysql

    try:
        config = load_config(args.config)
        outcomes = provision(config, args.database, args.recreate)
    except ConfigError as exc:
        print(f"dbmesh: configuration error: {exc}", file=sys.stderr)
        return 2
    except pymysql.err.MySQLError as exc:
        print(f"dbmesh: {exc}", file=sys.stderr)
        return 1
    from rich.console import Console
    from rich.table import Table

    table = Table(title="shadow tables")
    for column in ("database", "production", "shadow", "action", "detail"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(o.database, o.production, o.shadow, o.action, o.detail)
    Console().print(table)
    # A production table that does not exist yet is no failure: creating it through dbmesh
    # creates its shadows too.
    bad = [o for o in outcomes if o.action in ("failed", "differs")]
    return 1 if bad else 0


def add_parser(sub: Any) -> None:
    shadow = sub.add_parser("shadow", help="shadow tables for pressure tests")
    shadow.add_argument("action", choices=["provision"])
    shadow.add_argument("-c", "--config", required=True)
    shadow.add_argument("--database", help="logical database (default: every one with shadow rules)")
    shadow.add_argument("--recreate", action="store_true",
                        help="replace shadows whose schema differs from production (their rows are lost)")
    shadow.set_defaults(func=cmd_shadow)
