"""The ``shadow`` and ``mirror`` sections of a logical database: parse, validate, hold.

```yaml
databases:
  shop:
    sharding: {...}
    shadow:
      table_name: "{table}_shadow"        # shadow of an actual table; "{table}" keeps the name
      data_sources: {ds_0: ds_0_shadow}   # production data source -> shadow data source
      tables:
        t_order: {algorithms: [test_users]}   # column rules that make a statement shadow
        t_order_item: {}                     # shadow only by hint or session setting
      algorithms:
        test_users: {type: VALUE_MATCH, column: user_id, values: [7], ranges: [[9000, 9999]]}
        test_notes: {type: REGEX_MATCH, column: note, regex: "^shadow-"}
    mirror: {data_source: ds_new, share: 0.1, queue_size: 1000, workers: 4}
```

Every actual table of a shadowed logical table gets its shadow (``ds_0.t_order_0`` ->
``ds_0_shadow.t_order_0_shadow``). A layout that would make a shadow land on a production
table is refused at load, with the YAML path at fault.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from dbmesh.config import ConfigError
from dbmesh.config import expect_mapping as _mapping
from dbmesh.config import reject_unknown as _reject_unknown

ALGORITHM_TYPES = ("VALUE_MATCH", "REGEX_MATCH")
OPERATIONS = ("insert", "update", "delete", "select")


@dataclass(frozen=True)
class ShadowAlgorithm:
    """A column rule: a row (INSERT) or a WHERE equality (UPDATE/DELETE/SELECT) whose value
    matches makes the statement shadow traffic."""
    name: str
    type: str
    column: str                                   # lower-case
    values: frozenset[Any] = frozenset()          # canonical values (see canonical())
    ranges: tuple[tuple[Decimal, Decimal], ...] = ()
    regex: re.Pattern[str] | None = None
    operations: frozenset[str] = frozenset(OPERATIONS)

    def matches(self, value: Any) -> bool:
        if value is None:
            return False
        if self.type == "REGEX_MATCH":
            assert self.regex is not None
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            return self.regex.search(text) is not None
        key = canonical(value)
        if key in self.values:
            return True
        if self.ranges and isinstance(key, Decimal):
            return any(low <= key <= high for low, high in self.ranges)
        return False


def canonical(value: Any) -> Any:
    """Numbers (and numeric text: MySQL compares '7' = 7) as Decimal, other text as str."""
    if isinstance(value, bool):
        return Decimal(int(value))
    if isinstance(value, (int, Decimal)):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value)
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        return text
    return number if number.is_finite() else text


@dataclass(frozen=True)
class ShadowTable:
    name: str                                      # lower-case logical name
    algorithms: tuple[ShadowAlgorithm, ...] = ()


@dataclass(frozen=True)
class ShadowRules:
    database: str
    tables: Mapping[str, ShadowTable]
    # production data source -> shadow data source (unmapped ones keep their shadows beside)
    data_sources: Mapping[str, str]
    # (production data source, lower-case actual table) -> shadow table name
    nodes: Mapping[tuple[str, str], str]
    table_name: str = "{table}_shadow"
    _mention: re.Pattern[bytes] | None = field(default=None, repr=False)
    _mention_text: re.Pattern[str] | None = field(default=None, repr=False)
    _columns: re.Pattern[bytes] | None = field(default=None, repr=False)
    _columns_text: re.Pattern[str] | None = field(default=None, repr=False)

    @property
    def has_algorithms(self) -> bool:
        return any(t.algorithms for t in self.tables.values())

    def needs_parse(self, sql: bytes | str, keyword: str) -> bool:
        """Could the statement be shadow traffic by the column rules, or be DDL to apply to
        shadows? False lets it run on production without a parse: it names no shadowed
        table, or (not an INSERT, whose rows may need checking) no column a rule reads."""
        if not self.mentions(sql):
            return False
        if keyword in ("CREATE", "ALTER", "DROP", "RENAME"):
            return True
        text = sql.rstrip(b"; \t\r\n" if isinstance(sql, bytes) else "; \t\r\n")
        if (b";" if isinstance(sql, bytes) else ";") in text:
            return True  # several statements
        if not self.has_algorithms:
            return False
        if keyword in ("INSERT", "REPLACE"):
            return True
        pattern = self._columns if isinstance(sql, bytes) else self._columns_text
        return pattern is not None and pattern.search(sql) is not None

    def shadow_data_source(self, data_source: str) -> str:
        return self.data_sources.get(data_source, data_source)

    def mentions(self, sql: bytes | str) -> bool:
        """Does the text name a shadowed table (a cheap look before parsing)?"""
        pattern = self._mention if isinstance(sql, bytes) else self._mention_text
        return pattern is not None and pattern.search(sql) is not None

    def tables_beside_production(self) -> frozenset[tuple[str, str]]:
        """(data source, lower-case shadow table) of shadows that live in a production data source."""
        return frozenset((ds, shadow.lower()) for (ds, _), shadow in self.nodes.items() if ds not in self.data_sources)

    def shadow_tables(self) -> list[tuple[str, str, str, str]]:
        """(production ds, actual table, shadow ds, shadow table) for every shadowed node."""
        return [(ds, table, self.shadow_data_source(ds), shadow) for (ds, table), shadow in self.nodes.items()]


@dataclass(frozen=True)
class MirrorConfig:
    data_source: str
    share: float = 1.0            # fraction of production reads mirrored
    queue_size: int = 1000        # pending mirrored reads; more are dropped
    workers: int = 4              # mirrored reads running at once
    compare: bool = True          # compare the mirror's rows with production's
    timeout_s: float = 5.0        # a mirrored read taking longer counts as an error
    max_result_bytes: int = 4 << 20  # larger production results are not compared (dropped)


# ---------------------------------------------------------------------------------------


def _name(value: Any, path: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, f"expected {what}, got {value!r}")
    return value.strip()


def _table_name_pattern(value: Any, path: str) -> str:
    pattern = _name(value, path, "a pattern such as '{table}_shadow'")
    if "{table}" not in pattern:
        raise ConfigError(path, f"the pattern must contain {{table}}, got {pattern!r}")
    rest = pattern.replace("{table}", "")
    if not re.fullmatch(r"\w*", rest):
        raise ConfigError(path, f"use letters, digits and '_' around {{table}}, got {pattern!r}")
    return pattern


def _number(value: Any, path: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(path, f"expected a number, got {value!r}")
    key = canonical(value)
    if not isinstance(key, Decimal):
        raise ConfigError(path, f"expected a number, got {value!r}")
    return key


def _parse_algorithm(name: str, raw: Any, path: str) -> ShadowAlgorithm:
    section = _mapping(raw, path)
    _reject_unknown(section, {"type", "column", "values", "ranges", "regex", "operations"}, path)
    kind = _name(section.get("type"), f"{path}.type", f"one of {list(ALGORITHM_TYPES)}").upper()
    if kind not in ALGORITHM_TYPES:
        raise ConfigError(f"{path}.type", f"expected one of {list(ALGORITHM_TYPES)}, got {section.get('type')!r}")
    column = _name(section.get("column"), f"{path}.column", "a column name").lower()
    ops_raw = section.get("operations", list(OPERATIONS))
    if isinstance(ops_raw, str):
        ops_raw = [ops_raw]
    if not isinstance(ops_raw, list) or not ops_raw:
        raise ConfigError(f"{path}.operations", f"expected a list of {list(OPERATIONS)}")
    operations = set()
    for i, op in enumerate(ops_raw):
        if not isinstance(op, str) or op.lower() not in OPERATIONS:
            raise ConfigError(f"{path}.operations[{i}]", f"expected one of {list(OPERATIONS)}, got {op!r}")
        operations.add(op.lower())
    if kind == "REGEX_MATCH":
        for key in ("values", "ranges"):
            if key in section:
                raise ConfigError(f"{path}.{key}", "REGEX_MATCH takes a regex, not values or ranges")
        pattern = _name(section.get("regex"), f"{path}.regex", "a regular expression")
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{path}.regex", f"not a valid regular expression: {exc}") from exc
        return ShadowAlgorithm(name, kind, column, regex=regex, operations=frozenset(operations))
    if "regex" in section:
        raise ConfigError(f"{path}.regex", "VALUE_MATCH takes values and/or ranges, not a regex")
    values_raw = section.get("values", [])
    if not isinstance(values_raw, list):
        values_raw = [values_raw]
    values = set()
    for i, v in enumerate(values_raw):
        if v is None or isinstance(v, (bool, dict, list)):
            raise ConfigError(f"{path}.values[{i}]", f"expected a number or a string, got {v!r}")
        values.add(canonical(v))
    ranges = []
    ranges_raw = section.get("ranges", [])
    if not isinstance(ranges_raw, list):
        raise ConfigError(f"{path}.ranges", "expected a list of [low, high] pairs")
    for i, pair in enumerate(ranges_raw):
        rpath = f"{path}.ranges[{i}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConfigError(rpath, f"expected [low, high], got {pair!r}")
        low, high = _number(pair[0], f"{rpath}[0]"), _number(pair[1], f"{rpath}[1]")
        if low > high:
            raise ConfigError(rpath, f"low {pair[0]} is above high {pair[1]}")
        ranges.append((low, high))
    if not values and not ranges:
        raise ConfigError(path, "VALUE_MATCH needs values and/or ranges")
    return ShadowAlgorithm(name, kind, column, values=frozenset(values), ranges=tuple(ranges),
                           operations=frozenset(operations))


def parse_shadow(raw: Any, path: str, database: str, data_sources: Mapping[str, Any],
                 pass_through: str | None, sharding: Any) -> ShadowRules:
    """Shadow rules of logical database ``database`` (found at YAML ``path``).

    ``data_sources`` are the declared ones (name -> DataSourceConfig); the database is either
    a pass-through to ``pass_through`` or sharded by ``sharding`` (a ShardingRuleSet).
    """
    section = _mapping(raw, path)
    _reject_unknown(section, {"table_name", "data_sources", "tables", "algorithms"}, path)
    production = [pass_through] if sharding is None else list(sharding.data_sources)
    pattern = _table_name_pattern(section.get("table_name", "{table}_shadow"), f"{path}.table_name")

    ds_map: dict[str, str] = {}
    for prod, shadow_ds in _mapping(section.get("data_sources"), f"{path}.data_sources").items():
        dpath = f"{path}.data_sources.{prod}"
        if prod not in production:
            raise ConfigError(dpath, f"{prod!r} is not a data source of database {database!r}; "
                                     f"its data sources: {production}")
        shadow_ds = _name(shadow_ds, dpath, "a data source name")
        if shadow_ds not in data_sources:
            raise ConfigError(dpath, f"no data source named {shadow_ds!r}; declared: {sorted(data_sources)}")
        if shadow_ds in production:
            raise ConfigError(dpath, f"{shadow_ds!r} is a production data source of database {database!r}; "
                                     "a shadow data source must be another one")
        if shadow_ds in ds_map.values():
            raise ConfigError(dpath, f"{shadow_ds!r} is already the shadow of another data source")
        ds_map[prod] = shadow_ds

    algorithms: dict[str, ShadowAlgorithm] = {}
    for name, item in _mapping(section.get("algorithms"), f"{path}.algorithms").items():
        algorithms[str(name)] = _parse_algorithm(str(name), item, f"{path}.algorithms.{name}")

    tables_raw = section.get("tables")
    if isinstance(tables_raw, list):
        tables_raw = {_name(t, f"{path}.tables[{i}]", "a table name"): {} for i, t in enumerate(tables_raw)}
    tables_section = _mapping(tables_raw, f"{path}.tables")
    if not tables_section:
        raise ConfigError(f"{path}.tables", "list the logical tables that have shadows")
    tables: dict[str, ShadowTable] = {}
    nodes: dict[tuple[str, str], str] = {}
    used: set[str] = set()
    for name, item in tables_section.items():
        tpath = f"{path}.tables.{name}"
        tsec = _mapping(item, tpath)
        _reject_unknown(tsec, {"algorithms"}, tpath)
        names = tsec.get("algorithms", [])
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list):
            raise ConfigError(f"{tpath}.algorithms", "expected a list of algorithm names")
        chosen = []
        for i, alg in enumerate(names):
            if alg not in algorithms:
                raise ConfigError(f"{tpath}.algorithms[{i}]", f"no shadow algorithm named {alg!r}; declared: "
                                                              f"{sorted(algorithms)}")
            chosen.append(algorithms[alg])
            used.add(alg)
        key = str(name).lower()
        if key in tables:
            raise ConfigError(tpath, f"table {name!r} is listed twice")
        tables[key] = ShadowTable(key, tuple(chosen))
        if sharding is None:
            actual = [(pass_through, str(name))]
        else:
            actual = [(n.data_source, n.table) for n in sharding.data_nodes(key)]
        for ds, table in actual:
            shadow_name = pattern.replace("{table}", table)
            if len(shadow_name) > 64:
                raise ConfigError(f"{path}.table_name", f"shadow of {table!r} would be {shadow_name!r}, longer "
                                                        "than MySQL's 64 characters")
            shadow_ds = ds_map.get(ds, ds)
            if shadow_name.lower() == table.lower() and _same_place(data_sources, ds, shadow_ds):
                raise ConfigError(f"{path}.table_name" if ds not in ds_map else f"{path}.data_sources.{ds}",
                                  f"the shadow of {ds}.{table} would be the production table itself; "
                                  "give a table_name pattern other than '{table}' or a shadow data source "
                                  f"for {ds} on another server or database")
            if sharding is not None and shadow_ds in production and \
                    sharding.logical_table_of(shadow_name) is not None:
                raise ConfigError(f"{path}.table_name", f"the shadow of {ds}.{table} would be {shadow_name!r}, "
                                                        "an actual table of a production rule")
            nodes[(ds, table.lower())] = shadow_name
    for (ds, _), shadow_name in nodes.items():
        if (ds_map.get(ds, ds) == ds) and (ds, shadow_name.lower()) in nodes:
            raise ConfigError(f"{path}.table_name", f"the shadow {shadow_name!r} on {ds} is itself a shadowed "
                                                    "production table")
    unused = sorted(set(algorithms) - used)
    if unused:
        raise ConfigError(f"{path}.algorithms.{unused[0]}", "declared but no table in tables uses it")
    words = sorted({re.escape(t) for t in tables}, key=len, reverse=True)
    text = r"(?<![\w$])(?:" + "|".join(words) + r")(?![\w$])"
    columns = sorted({re.escape(a.column) for t in tables.values() for a in t.algorithms}, key=len, reverse=True)
    ctext = (r"(?<![\w$])(?:" + "|".join(columns) + r")(?![\w$])") if columns else None
    return ShadowRules(database=database, tables=tables, data_sources=ds_map, nodes=nodes, table_name=pattern,
                       _mention=re.compile(text.encode(), re.I), _mention_text=re.compile(text, re.I),
                       _columns=re.compile(ctext.encode(), re.I) if ctext else None,
                       _columns_text=re.compile(ctext, re.I) if ctext else None)


def _same_place(data_sources: Mapping[str, Any], a: str, b: str) -> bool:
    """Do two data sources reach the same physical database?"""
    if a == b:
        return True
    x, y = data_sources[a], data_sources[b]
    return (x.host, x.port, x.database) == (y.host, y.port, y.database)


def parse_mirror(raw: Any, path: str, database: str, data_sources: Mapping[str, Any],
                 pass_through: str | None, sharding: Any) -> MirrorConfig:
    section = _mapping(raw, path)
    _reject_unknown(section, {"data_source", "share", "queue_size", "workers", "compare", "timeout_s",
                              "max_result_bytes"}, path)
    target = _name(section.get("data_source"), f"{path}.data_source", "a data source name")
    if target not in data_sources:
        raise ConfigError(f"{path}.data_source", f"no data source named {target!r}; declared: {sorted(data_sources)}")
    production = [pass_through] if sharding is None else list(sharding.data_sources)
    if target in production:
        raise ConfigError(f"{path}.data_source", f"{target!r} is a production data source of database "
                                                 f"{database!r}; mirror reads to another one")
    d = MirrorConfig(target)
    share = section.get("share", d.share)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ConfigError(f"{path}.share", f"expected a fraction between 0 and 1, got {share!r}")
    ints = {}
    for key, low, high in (("queue_size", 1, 1_000_000), ("workers", 1, 256),
                           ("max_result_bytes", 1024, 1 << 30)):
        value = section.get(key, getattr(d, key))
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{path}.{key}", f"expected an integer from {low} to {high}, got {value!r}")
        ints[key] = value
    compare = section.get("compare", d.compare)
    if not isinstance(compare, bool):
        raise ConfigError(f"{path}.compare", f"expected true or false, got {compare!r}")
    timeout = section.get("timeout_s", d.timeout_s)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"{path}.timeout_s", f"expected a positive number, got {timeout!r}")
    return MirrorConfig(target, share=float(share), compare=compare, timeout_s=float(timeout), **ints)
