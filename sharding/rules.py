"""Sharding rules: parse and validate a logical database's ``sharding`` section, and route.

The section is validated as a whole at load; anything that could send a row to the wrong
(or a nonexistent) node is refused with a ConfigError naming the YAML path at fault:
undeclared data sources, unknown algorithms, algorithms that can compute a target the table
has no node for, binding tables whose layouts or strategies differ, tables that are both
broadcast and sharded, and actual tables claimed by two logical tables.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dbmesh.config import ConfigError
from dbmesh.config import expect_mapping as _mapping
from dbmesh.config import reject_unknown as _reject_unknown
from sharding.algorithms import (
    AlgorithmPropsError,
    NoTargetError,
    ShardingAlgorithm,
    create_algorithm,
)
from sharding.errors import ShardingError
from sharding.inline import InlineError, expand_nodes
from sharding.keygen import KeyGenerator, KeyGeneratorPropsError, create_key_generator

# Beyond this many value combinations a COMPLEX condition is routed to all targets.
MAX_COMPLEX_COMBINATIONS = 10_000


@dataclass(frozen=True)
class DataNode:
    data_source: str
    table: str

    def __str__(self) -> str:
        return f"{self.data_source}.{self.table}"


@dataclass(frozen=True, init=False)
class ExactValues:
    """A column compared with ``=`` or ``IN``: the row's value is one of ``values``."""

    values: tuple[Any, ...]

    def __init__(self, values: Iterable[Any]):
        object.__setattr__(self, "values", tuple(values))


@dataclass(frozen=True)
class ValueRange:
    """A column bounded by ``<``, ``<=``, ``>``, ``>=`` or BETWEEN; None means unbounded."""

    low: Any = None
    high: Any = None
    low_inclusive: bool = True
    high_inclusive: bool = True


ConditionValue = ExactValues | ValueRange


@dataclass(frozen=True)
class ShardingStrategy:
    columns: tuple[str, ...]  # as configured; empty for HINT
    algorithm_name: str
    algorithm: ShardingAlgorithm

    @property
    def is_hint(self) -> bool:
        return self.algorithm.hint_based


@dataclass(frozen=True)
class KeyGenerateStrategy:
    column: str
    generator_name: str
    generator: KeyGenerator

    def next_id(self) -> int | str:
        return self.generator.next_id()


def _in_order(targets: Sequence[str], chosen: Iterable[str]) -> list[str]:
    picked = set(chosen)
    return [t for t in targets if t in picked]


@dataclass(frozen=True)
class TableRule:
    logical_table: str
    data_nodes: tuple[DataNode, ...]
    database_strategy: ShardingStrategy | None = None
    table_strategy: ShardingStrategy | None = None
    key_generator: KeyGenerateStrategy | None = None
    # Derived: data sources in node order, and each one's actual tables in node order.
    data_sources: tuple[str, ...] = field(init=False)
    tables_by_source: Mapping[str, tuple[str, ...]] = field(init=False)

    def __post_init__(self) -> None:
        by_source: dict[str, list[str]] = {}
        for node in self.data_nodes:
            by_source.setdefault(node.data_source, []).append(node.table)
        object.__setattr__(self, "data_sources", tuple(by_source))
        object.__setattr__(self, "tables_by_source", {k: tuple(v) for k, v in by_source.items()})

    @property
    def sharding_columns(self) -> tuple[str, ...]:
        """Lower-case column names the strategies read (hint strategies read none)."""
        names: list[str] = []
        for strategy in (self.database_strategy, self.table_strategy):
            for column in strategy.columns if strategy else ():
                if column.lower() not in names:
                    names.append(column.lower())
        return tuple(names)

    def actual_tables(self, data_source: str) -> tuple[str, ...]:
        return self.tables_by_source.get(data_source, ())

    def route(self, conditions: Mapping[str, ConditionValue] | None = None, *,
              database_hints: Sequence[Any] | None = None,
              table_hints: Sequence[Any] | None = None) -> list[DataNode]:
        """Nodes that may hold rows matching ``conditions`` (column -> ConditionValue).

        A column without a condition (or a range the algorithm cannot narrow) keeps every
        target of that dimension, so the result is always a superset of the nodes holding
        matching rows. It is empty only when no node can hold a match. Column names are
        case-insensitive. Hints feed HINT strategies; without hints those keep all targets.
        """
        conds = {str(k).lower(): v for k, v in (conditions or {}).items()}
        nodes: list[DataNode] = []
        for ds in self._route_dimension(self.database_strategy, self.data_sources, conds, database_hints):
            tables = self.tables_by_source[ds]
            for table in self._route_dimension(self.table_strategy, tables, conds, table_hints):
                nodes.append(DataNode(ds, table))
        return nodes

    def route_row(self, row: Mapping[str, Any], *, database_hint: Any = None,
                  table_hint: Any = None) -> DataNode:
        """The single node an INSERTed row (column -> value) belongs to."""
        given = {str(k).lower(): v for k, v in row.items()}
        conds: dict[str, ConditionValue] = {}
        for column in self.sharding_columns:
            if column not in given:
                raise ShardingError(f"table {self.logical_table!r}: the row gives no value for sharding "
                                    f"column {column!r}", table=self.logical_table, column=column)
            conds[column] = ExactValues((given[column],))
        nodes = self.route(conds,
                           database_hints=None if database_hint is None else [database_hint],
                           table_hints=None if table_hint is None else [table_hint])
        if len(nodes) != 1:
            raise ShardingError(f"table {self.logical_table!r}: the row routes to {len(nodes)} nodes "
                                f"({', '.join(map(str, nodes)) or 'none'}); a sharding hint is probably "
                                "missing", table=self.logical_table)
        return nodes[0]

    def _route_dimension(self, strategy: ShardingStrategy | None, targets: Sequence[str],
                         conds: Mapping[str, ConditionValue], hints: Sequence[Any] | None) -> list[str]:
        if strategy is None:
            return list(targets)
        algorithm = strategy.algorithm
        column = None
        try:
            if algorithm.hint_based:
                if not hints:
                    return list(targets)
                return _in_order(targets, {algorithm.shard(targets, h) for h in hints})
            if algorithm.multi_column:
                return self._route_complex(strategy, targets, conds)
            column = strategy.columns[0]
            cond = conds.get(column.lower())
            if cond is None:
                return list(targets)
            if isinstance(cond, ExactValues):
                return _in_order(targets, {algorithm.shard(targets, v) for v in cond.values})
            if isinstance(cond, ValueRange):
                return algorithm.shard_range(targets, cond.low, cond.high, cond.low_inclusive,
                                             cond.high_inclusive)
            raise TypeError(f"condition for {column!r} must be ExactValues or ValueRange, got {cond!r}")
        except ShardingError as exc:
            raise exc.with_context(self.logical_table, column) from None

    @staticmethod
    def _route_complex(strategy: ShardingStrategy, targets: Sequence[str],
                       conds: Mapping[str, ConditionValue]) -> list[str]:
        value_sets: list[tuple[Any, ...]] = []
        combinations = 1
        for column in strategy.columns:
            cond = conds.get(column.lower())
            if not isinstance(cond, ExactValues):
                return list(targets)  # a column without exact values: cannot narrow
            value_sets.append(cond.values)
            combinations *= len(cond.values)
        if combinations > MAX_COMPLEX_COMBINATIONS:
            return list(targets)
        chosen = {strategy.algorithm.shard(targets, dict(zip(strategy.columns, combo, strict=True)))
                  for combo in itertools.product(*value_sets)}
        return _in_order(targets, chosen)


@dataclass(frozen=True)
class ShardingRuleSet:
    tables: Mapping[str, TableRule]  # keyed by lower-case logical table name
    binding_groups: tuple[tuple[str, ...], ...]  # lower-case names
    broadcast_tables: frozenset[str]  # lower-case names
    default_data_source: str
    data_sources: tuple[str, ...]
    algorithms: Mapping[str, ShardingAlgorithm]
    key_generators: Mapping[str, KeyGenerator]
    _actual_to_logical: Mapping[str, str] = field(default_factory=dict, repr=False)

    def table_rule(self, name: str) -> TableRule | None:
        return self.tables.get(name.lower())

    def is_sharded(self, name: str) -> bool:
        return name.lower() in self.tables

    def is_broadcast(self, name: str) -> bool:
        return name.lower() in self.broadcast_tables

    def is_single(self, name: str) -> bool:
        """Neither sharded nor broadcast: the table lives only in the default data source."""
        return not self.is_sharded(name) and not self.is_broadcast(name)

    def binding_group_of(self, name: str) -> tuple[str, ...] | None:
        lowered = name.lower()
        return next((g for g in self.binding_groups if lowered in g), None)

    def are_bound(self, names: Iterable[str]) -> bool:
        """True if all the (sharded) tables are in one binding group (or there is just one)."""
        distinct = {n.lower() for n in names}
        if len(distinct) <= 1:
            return all(n in self.tables for n in distinct)
        group = self.binding_group_of(next(iter(distinct)))
        return group is not None and distinct <= set(group)

    def actual_data_sources(self, name: str) -> tuple[str, ...]:
        rule = self.table_rule(name)
        if rule is not None:
            return rule.data_sources
        if self.is_broadcast(name):
            return self.data_sources
        return (self.default_data_source,)

    def actual_tables(self, name: str, data_source: str) -> tuple[str, ...]:
        rule = self.table_rule(name)
        if rule is not None:
            return rule.actual_tables(data_source)
        return (name,) if data_source in self.actual_data_sources(name) else ()

    def data_nodes(self, name: str) -> tuple[DataNode, ...]:
        rule = self.table_rule(name)
        if rule is not None:
            return rule.data_nodes
        return tuple(DataNode(ds, name) for ds in self.actual_data_sources(name))

    def route_table(self, name: str, conditions: Mapping[str, ConditionValue] | None = None, *,
                    database_hints: Sequence[Any] | None = None,
                    table_hints: Sequence[Any] | None = None) -> list[DataNode]:
        """Sharded: TableRule.route; broadcast: every data source; single: the default one."""
        rule = self.table_rule(name)
        if rule is not None:
            return rule.route(conditions, database_hints=database_hints, table_hints=table_hints)
        return list(self.data_nodes(name))

    def bound_node(self, table: str, node: DataNode, other_table: str) -> DataNode:
        """The node of ``other_table`` paired with ``node`` of ``table`` (same binding group)."""
        rule, other = self.table_rule(table), self.table_rule(other_table)
        group = self.binding_group_of(table)
        if rule is None or other is None or group is None or other_table.lower() not in group:
            raise ShardingError(f"tables {table!r} and {other_table!r} are not bound", table=table)
        index = rule.actual_tables(node.data_source).index(node.table)
        return DataNode(node.data_source, other.actual_tables(node.data_source)[index])

    def logical_table_of(self, actual_table: str) -> str | None:
        """The logical (lower-case) table an actual table belongs to, if any."""
        return self._actual_to_logical.get(actual_table.lower())


# ---------------------------------------------------------------------------------------
# Parsing


def _name(value: Any, path: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, f"expected {what}, got {value!r}")
    return value.strip()


def _name_list(value: Any, path: str, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(path, f"expected a list of {what}, got {type(value).__name__}")
    return [_name(item, f"{path}[{i}]", what) for i, item in enumerate(value)]


def _props_path(path: str, prop: str | None) -> str:
    if prop is None:
        return f"{path}.type"
    return f"{path}.props" if prop == "props" else f"{path}.props.{prop}"


def _parse_algorithms(raw: Any, path: str) -> dict[str, ShardingAlgorithm]:
    result: dict[str, ShardingAlgorithm] = {}
    for name, item in _mapping(raw, path).items():
        apath = f"{path}.{name}"
        section = _mapping(item, apath)
        _reject_unknown(section, {"type", "props"}, apath)
        type_name = _name(section.get("type"), f"{apath}.type", "an algorithm type")
        try:
            result[name] = create_algorithm(type_name, section.get("props"))
        except AlgorithmPropsError as exc:
            raise ConfigError(_props_path(apath, exc.prop), str(exc)) from None
    return result


def _parse_key_generators(raw: Any, path: str) -> dict[str, KeyGenerator]:
    result: dict[str, KeyGenerator] = {}
    for name, item in _mapping(raw, path).items():
        gpath = f"{path}.{name}"
        section = _mapping(item, gpath)
        _reject_unknown(section, {"type", "props"}, gpath)
        type_name = _name(section.get("type"), f"{gpath}.type", "a key generator type")
        props = section.get("props")
        if props is not None and not isinstance(props, Mapping):
            raise ConfigError(f"{gpath}.props", f"expected a mapping, got {type(props).__name__}")
        try:
            result[name] = create_key_generator(type_name, props)
        except KeyGeneratorPropsError as exc:
            raise ConfigError(_props_path(gpath, exc.prop), str(exc)) from None
    return result


def _parse_nodes(raw: Any, path: str, data_sources: Collection[str]) -> tuple[DataNode, ...]:
    if raw is None:
        raise ConfigError(path, "is required (e.g. ds_${0..1}.t_order_${0..1})")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
        raise ConfigError(path, "expected a node expression or a non-empty list of them")
    try:
        names = expand_nodes(raw)
    except InlineError as exc:
        raise ConfigError(path, str(exc)) from None
    nodes: list[DataNode] = []
    seen: set[tuple[str, str]] = set()
    for name in names:
        parts = name.split(".")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise ConfigError(path, f"node {name!r} is not of the form data_source.table")
        ds, table = parts[0].strip(), parts[1].strip()
        if ds not in data_sources:
            raise ConfigError(path, f"node {name!r} names undeclared data source {ds!r}; "
                                    f"declared: {sorted(data_sources)}")
        if (ds, table.lower()) in seen:
            raise ConfigError(path, f"node {name!r} is listed twice")
        seen.add((ds, table.lower()))
        nodes.append(DataNode(ds, table))
    return tuple(nodes)


def _parse_strategy(raw: Any, path: str, algorithms: Mapping[str, ShardingAlgorithm]) -> ShardingStrategy | None:
    if raw is None:
        return None
    section = _mapping(raw, path)
    _reject_unknown(section, {"columns", "column", "algorithm"}, path)
    algorithm_name = _name(section.get("algorithm"), f"{path}.algorithm", "an algorithm name")
    algorithm = algorithms.get(algorithm_name)
    if algorithm is None:
        raise ConfigError(f"{path}.algorithm", f"no algorithm named {algorithm_name!r}; "
                                               f"declared: {sorted(algorithms)}")
    if "column" in section and "columns" in section:
        raise ConfigError(f"{path}.columns", "give either column or columns, not both")
    key = "column" if "column" in section else "columns"
    raw_columns = section.get(key)
    if isinstance(raw_columns, str):
        raw_columns = raw_columns.split(",")
    columns = tuple(_name_list(raw_columns, f"{path}.{key}", "column names"))
    cpath = f"{path}.{key}"
    if len({c.lower() for c in columns}) != len(columns):
        raise ConfigError(cpath, f"a column is listed twice: {list(columns)}")
    if algorithm.hint_based:
        if columns:
            raise ConfigError(cpath, f"algorithm {algorithm_name!r} is HINT: its value comes from a hint, "
                                     "so the strategy takes no columns")
    elif not columns:
        raise ConfigError(cpath, "is required: name the sharding column")
    elif not algorithm.multi_column and len(columns) != 1:
        raise ConfigError(cpath, f"algorithm {algorithm_name!r} ({algorithm.type_name}) shards on exactly "
                                 f"one column, got {list(columns)}; use a COMPLEX algorithm for several")
    # An expression that reads a column the strategy does not supply could never be evaluated.
    unknown = sorted(v for v in algorithm.variables if v.lower() not in {c.lower() for c in columns})
    if unknown and not algorithm.hint_based:
        raise ConfigError(cpath, f"algorithm {algorithm_name!r} reads {unknown}, but the strategy shards "
                                 f"on {list(columns)}")
    return ShardingStrategy(columns, algorithm_name, algorithm)


def _parse_key_strategy(raw: Any, path: str, generators: Mapping[str, KeyGenerator]) -> KeyGenerateStrategy | None:
    if raw is None:
        return None
    section = _mapping(raw, path)
    _reject_unknown(section, {"column", "algorithm"}, path)
    column = _name(section.get("column"), f"{path}.column", "a column name")
    name = _name(section.get("algorithm"), f"{path}.algorithm", "a key generator name")
    if name not in generators:
        raise ConfigError(f"{path}.algorithm", f"no key generator named {name!r}; declared: {sorted(generators)}")
    return KeyGenerateStrategy(column, name, generators[name])


def _describe(strategy: ShardingStrategy) -> str:
    return f"algorithm {strategy.algorithm_name!r} ({strategy.algorithm.type_name})"


def _validate_layout(rule: TableRule, path: str) -> None:
    """Refuse a table whose strategies could place a row on zero or several nodes."""
    db, tbl = rule.database_strategy, rule.table_strategy
    if db is None and len(rule.data_sources) > 1:
        raise ConfigError(f"{path}.database_strategy", f"actual_data_nodes span {len(rule.data_sources)} data "
                          f"sources {list(rule.data_sources)}, so a database_strategy is required to pick one")
    crowded = [ds for ds, tables in rule.tables_by_source.items() if len(tables) > 1]
    if tbl is None and crowded:
        raise ConfigError(f"{path}.table_strategy", f"data source {crowded[0]!r} holds "
                          f"{len(rule.tables_by_source[crowded[0]])} tables of this table, so a table_strategy "
                          "is required to pick one")
    if db is not None:
        try:
            db.algorithm.validate_targets(rule.data_sources)
        except NoTargetError as exc:
            raise ConfigError(f"{path}.database_strategy", f"{_describe(db)} can route to a data source "
                              f"without a node of this table: {exc}") from None
    if tbl is None:
        return
    try:
        for ds in rule.data_sources:
            tbl.algorithm.validate_targets(rule.tables_by_source[ds])
        return
    except NoTargetError as exc:
        problem = f"{exc} (in data source {ds!r})"
    # Some data source lacks a table the table strategy can compute. That is only safe when
    # both strategies read the same column and such values never reach that data source
    # (e.g. ds_0 holds t_0, t_2 and ds_1 holds t_1, t_3 under id % 2 / id % 4).
    if db is not None and _same_single_column(db, tbl):
        joint = _joint_problem(rule, db, tbl)
        if joint is None:
            return
        problem = joint
    raise ConfigError(f"{path}.table_strategy", f"{_describe(tbl)} can route to a table that is not among "
                      f"the data source's nodes: {problem}")


def _same_single_column(a: ShardingStrategy, b: ShardingStrategy) -> bool:
    single = not (a.is_hint or b.is_hint or a.algorithm.multi_column or b.algorithm.multi_column)
    return single and a.columns[0].lower() == b.columns[0].lower()


def _samples(*algorithms: ShardingAlgorithm) -> list[Any]:
    seen: set[Any] = set()
    result: list[Any] = []
    for algorithm in algorithms:
        for value in algorithm.sample_values():
            key = repr(value)
            if key not in seen:
                seen.add(key)
                result.append(value)
    return result


def _joint_problem(rule: TableRule, db: ShardingStrategy, tbl: ShardingStrategy) -> str | None:
    for value in _samples(db.algorithm, tbl.algorithm):
        try:
            ds = db.algorithm.shard(rule.data_sources, value)
        except ShardingError:
            continue
        try:
            tbl.algorithm.shard(rule.tables_by_source[ds], value)
        except NoTargetError as exc:
            return f"{exc} (value {value!r} goes to data source {ds!r})"
        except ShardingError:
            continue
    return None


def _outcome(algorithm: ShardingAlgorithm, targets: Sequence[str], value: Any) -> str | None:
    try:
        return algorithm.shard(targets, value)
    except ShardingError:
        return None


def _binding_problem(first: TableRule, other: TableRule) -> str | None:
    """Why ``other`` cannot be bound to ``first`` (None if it can)."""
    a, b = first.logical_table, other.logical_table
    if set(first.data_sources) != set(other.data_sources):
        return f"{a!r} is on {sorted(first.data_sources)} but {b!r} is on {sorted(other.data_sources)}"
    for ds in first.data_sources:
        if len(first.actual_tables(ds)) != len(other.actual_tables(ds)):
            return (f"{a!r} has {len(first.actual_tables(ds))} tables in {ds!r} but {b!r} has "
                    f"{len(other.actual_tables(ds))}")
    for dimension in ("database_strategy", "table_strategy"):
        sa, sb = getattr(first, dimension), getattr(other, dimension)
        if (sa is None) != (sb is None):
            return f"{a!r} and {b!r} differ in {dimension}: one has none"
        if sa is None or sb is None:
            continue
        if [c.lower() for c in sa.columns] != [c.lower() for c in sb.columns]:
            return f"{a!r} shards on {list(sa.columns)} but {b!r} on {list(sb.columns)} ({dimension})"
        if sa.algorithm.type_name != sb.algorithm.type_name:
            return (f"{a!r} uses {sa.algorithm.type_name} but {b!r} uses {sb.algorithm.type_name} "
                    f"({dimension})")
        if sa.algorithm_name == sb.algorithm_name:
            continue
        # Different algorithm objects (e.g. one INLINE expression per table): they must send
        # every sample value to the same data source / the same table position.
        samples = _samples(sa.algorithm, sb.algorithm)
        if dimension == "database_strategy":
            for value in samples:
                ra = _outcome(sa.algorithm, first.data_sources, value)
                rb = _outcome(sb.algorithm, other.data_sources, value)
                if ra != rb:
                    return (f"value {value!r} goes to data source {ra!r} for {a!r} but {rb!r} for {b!r} "
                            f"({dimension})")
            continue
        for ds in first.data_sources:
            ta, tb = first.actual_tables(ds), other.actual_tables(ds)
            for value in samples:
                ra = _outcome(sa.algorithm, ta, value)
                rb = _outcome(sb.algorithm, tb, value)
                pa = None if ra is None else ta.index(ra)
                pb = None if rb is None else tb.index(rb)
                if pa != pb:
                    return (f"value {value!r} goes to {ra!r} for {a!r} but {rb!r} for {b!r} in {ds!r}; "
                            "bound tables must use the same table position")
    return None


def _parse_table(name: str, raw: Any, path: str, data_sources: Collection[str],
                 algorithms: Mapping[str, ShardingAlgorithm],
                 generators: Mapping[str, KeyGenerator]) -> TableRule:
    section = _mapping(raw, path)
    _reject_unknown(section, {"actual_data_nodes", "database_strategy", "table_strategy", "key_generator"}, path)
    rule = TableRule(
        logical_table=name,
        data_nodes=_parse_nodes(section.get("actual_data_nodes"), f"{path}.actual_data_nodes", data_sources),
        database_strategy=_parse_strategy(section.get("database_strategy"), f"{path}.database_strategy",
                                          algorithms),
        table_strategy=_parse_strategy(section.get("table_strategy"), f"{path}.table_strategy", algorithms),
        key_generator=_parse_key_strategy(section.get("key_generator"), f"{path}.key_generator", generators),
    )
    _validate_layout(rule, path)
    return rule


def _parse_tables(raw: Any, path: str, data_sources: Collection[str],
                  algorithms: Mapping[str, ShardingAlgorithm],
                  generators: Mapping[str, KeyGenerator]) -> tuple[dict[str, TableRule], dict[str, str]]:
    tables: dict[str, TableRule] = {}
    actual_to_logical: dict[str, str] = {}
    for name, item in _mapping(raw, path).items():
        tpath = f"{path}.{name}"
        name = _name(name, tpath, "a table name")
        if name.lower() in tables:
            raise ConfigError(tpath, f"table {name!r} is declared twice (names are case-insensitive)")
        rule = _parse_table(name, item, tpath, data_sources, algorithms, generators)
        for node in rule.data_nodes:
            # One actual table name per logical table, so results and errors map back unambiguously.
            claimed = actual_to_logical.get(node.table.lower())
            if claimed is not None and claimed != name.lower():
                raise ConfigError(f"{tpath}.actual_data_nodes", f"actual table {node.table!r} (node {node}) "
                                  f"already belongs to table {tables[claimed].logical_table!r}")
            actual_to_logical[node.table.lower()] = name.lower()
        tables[name.lower()] = rule
    # A logical name that is another table's actual table would make SQL ambiguous.
    for lowered, rule in tables.items():
        claimed = actual_to_logical.get(lowered)
        if claimed is not None and claimed != lowered:
            raise ConfigError(f"{path}.{rule.logical_table}", f"{rule.logical_table!r} is also an actual table "
                                                              f"of {tables[claimed].logical_table!r}")
    return tables, actual_to_logical


def _parse_broadcast(raw: Any, path: str, tables: Mapping[str, TableRule],
                     actual_to_logical: Mapping[str, str]) -> frozenset[str]:
    names: set[str] = set()
    for i, name in enumerate(_name_list(raw, path, "table names")):
        ipath = f"{path}[{i}]"
        lowered = name.lower()
        if lowered in names:
            raise ConfigError(ipath, f"{name!r} is listed twice")
        if lowered in tables:
            raise ConfigError(ipath, f"{name!r} is declared under tables (sharded); a table is either "
                                     "broadcast or sharded")
        if lowered in actual_to_logical:
            raise ConfigError(ipath, f"{name!r} is an actual table of sharded table "
                                     f"{tables[actual_to_logical[lowered]].logical_table!r}")
        names.add(lowered)
    return frozenset(names)


def _parse_binding(raw: Any, path: str, tables: Mapping[str, TableRule]) -> tuple[tuple[str, ...], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(path, f"expected a list of table groups, got {type(raw).__name__}")
    groups: list[tuple[str, ...]] = []
    grouped: dict[str, int] = {}
    for i, item in enumerate(raw):
        gpath = f"{path}[{i}]"
        if isinstance(item, str):
            item = [part.strip() for part in item.split(",")]  # "t_order, t_order_item"
        members = _name_list(item, gpath, "table names")
        if len(members) < 2:
            raise ConfigError(gpath, "a binding group needs at least two tables")
        lowered: list[str] = []
        for j, member in enumerate(members):
            mpath = f"{gpath}[{j}]"
            key = member.lower()
            if key not in tables:
                raise ConfigError(mpath, f"{member!r} is not declared under tables; only sharded tables "
                                         "can be bound")
            if key in lowered:
                raise ConfigError(mpath, f"{member!r} is listed twice in this group")
            if key in grouped:
                raise ConfigError(mpath, f"{member!r} is already in binding group {grouped[key]}")
            problem = _binding_problem(tables[members[0].lower()], tables[key]) if j else None
            if problem:
                raise ConfigError(mpath, f"cannot bind {member!r} to {members[0]!r}: {problem}")
            lowered.append(key)
            grouped[key] = i
        groups.append(tuple(lowered))
    return tuple(groups)


def parse_sharding_rules(raw: Any, path: str, data_sources: Collection[str]) -> ShardingRuleSet:
    """Parse and validate ``raw`` (the ``sharding`` mapping found at YAML ``path``).

    ``data_sources`` are the declared data-source names; the first is the default home of
    single tables unless ``default_data_source`` says otherwise.
    """
    section = _mapping(raw, path)
    _reject_unknown(section, {"default_data_source", "tables", "binding_tables", "broadcast_tables",
                              "algorithms", "key_generators"}, path)
    sources = tuple(data_sources)
    if not sources:
        raise ConfigError(path, "no data sources are declared")
    default = section.get("default_data_source", sources[0])
    default = _name(default, f"{path}.default_data_source", "a data source name")
    if default not in sources:
        raise ConfigError(f"{path}.default_data_source", f"no data source named {default!r}; "
                                                         f"declared: {sorted(sources)}")
    algorithms = _parse_algorithms(section.get("algorithms"), f"{path}.algorithms")
    generators = _parse_key_generators(section.get("key_generators"), f"{path}.key_generators")
    tables, actual_to_logical = _parse_tables(section.get("tables"), f"{path}.tables", sources,
                                              algorithms, generators)
    broadcast = _parse_broadcast(section.get("broadcast_tables"), f"{path}.broadcast_tables", tables,
                                 actual_to_logical)
    binding = _parse_binding(section.get("binding_tables"), f"{path}.binding_tables", tables)
    return ShardingRuleSet(
        tables=tables, binding_groups=binding, broadcast_tables=broadcast, default_data_source=default,
        data_sources=sources, algorithms=algorithms, key_generators=generators,
        _actual_to_logical=actual_to_logical,
    )
