"""Routing and rewrite of one statement against a sharding rule set (pure: no I/O).

``plan(tree, rules, ...)`` decides the route units (data source + actual SQL) for a parsed
statement, and for a SELECT over several units how their rows merge (see merge.py). Tables
are renamed from logical to actual names wherever they appear; a statement the engine
cannot run correctly across shards raises ShardingError with the reason, never a guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from . import conditions
from .errors import ShardingError
from .rules import DataNode, ShardingRuleSet, TableRule

DIALECT = "mysql"


@dataclass(frozen=True)
class RouteUnit:
    data_source: str
    sql: str


@dataclass
class SelectMerge:
    """How rows of several units combine. Column positions counted from the end of a row
    (negative) refer to derived columns the rewrite appended; the executor resolves them
    once the column count is known."""
    order_by: list[tuple[int, bool]] = field(default_factory=list)    # (index, descending)
    group_by: list[int] = field(default_factory=list)
    aggregates: list[tuple[str, int, int | None, int | None]] = field(default_factory=list)
    # (kind, index, sum_index, count_index) / for COUNT_DISTINCT count_index holds distinct_index
    having: exp.Expression | None = None
    having_columns: dict[str, int] = field(default_factory=dict)      # expression SQL/alias -> index
    distinct: bool = False
    offset: int = 0
    limit: int | None = None
    hidden: int = 0                  # derived columns appended after the visible ones
    avg_indexes: list[int] = field(default_factory=list)


@dataclass
class Plan:
    kind: str                        # select | insert | update | delete | ddl | other
    units: list[RouteUnit]
    merge: SelectMerge | None = None  # set when a SELECT has several units
    write: bool = False
    last_insert_id: int = 0          # first generated key of an INSERT, for the OK packet
    broadcast: bool = False          # the same write goes to every data source
    locking: bool = False            # SELECT ... FOR UPDATE / LOCK IN SHARE MODE: primaries only
    force_primary: bool = False      # a /* dbmesh:primary */ hint


@dataclass(frozen=True)
class Hints:
    """Values for HINT sharding strategies, given by a SQL comment or a session setting."""
    database: tuple[Any, ...] = ()
    table: tuple[Any, ...] = ()


# The hints of the statement being planned (set by the executor around plan()).
NO_HINTS = Hints()
ROUTING_HINTS: ContextVar[Hints] = ContextVar("routing_hints", default=NO_HINTS)


@dataclass
class _TableRef:
    node: exp.Table
    name: str                        # lower-case logical name
    alias: str | None


def plan(tree: exp.Expression, rules: ShardingRuleSet, logical_db: str,
         params: Sequence[Any] | None = None, sql_text: str | None = None) -> Plan:
    result = _plan(tree, rules, logical_db, params, sql_text)
    result.locking = bool(tree.find(exp.Lock))
    result.force_primary = any("dbmesh:primary" in c for node in tree.walk() for c in (node.comments or ()))
    return result


def _plan(tree: exp.Expression, rules: ShardingRuleSet, logical_db: str,
          params: Sequence[Any] | None, sql_text: str | None) -> Plan:
    positions = conditions.placeholder_positions(tree)
    if isinstance(tree, exp.Select):
        return _plan_select(tree, rules, logical_db, params, positions, sql_text)
    if isinstance(tree, exp.Insert):
        return _plan_insert(tree, rules, logical_db, params, positions)
    if isinstance(tree, (exp.Update, exp.Delete)):
        return _plan_update_delete(tree, rules, logical_db, params, positions)
    if isinstance(tree, (exp.Create, exp.Drop, exp.Alter, exp.TruncateTable)):
        return _plan_ddl(tree, rules, logical_db)
    if isinstance(tree, (exp.Union, exp.Intersect, exp.Except)):
        return _plan_set_operation(tree, rules, logical_db, params, positions, sql_text)
    raise ShardingError(f"statement type {type(tree).__name__} is not supported on sharded database "
                        f"'{logical_db}'")


# ---------------------------------------------------------------------------------------
# Tables


def _table_refs(tree: exp.Expression, logical_db: str) -> list[_TableRef]:
    cte_names = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    refs = []
    for node in tree.find_all(exp.Table):
        if not node.name or (node.db and node.db.lower() != logical_db.lower()):
            continue
        name = node.name.lower()
        if name in cte_names and not node.db:
            continue
        alias = node.alias or None
        refs.append(_TableRef(node, name, alias.lower() if alias else None))
    return refs


def _rename(tree: exp.Expression, mapping: dict[str, str], logical_db: str) -> exp.Expression:
    """A copy of ``tree`` with logical tables renamed to actual ones (and column qualifiers
    that name the table, when it has no alias)."""
    copy = tree.copy()
    renamed_unaliased: dict[str, str] = {}
    for ref in _table_refs(copy, logical_db):
        actual = mapping.get(ref.name)
        if actual is None:
            if ref.node.db:
                ref.node.set("db", None)
            continue
        if ref.alias is None:
            renamed_unaliased[ref.node.name.lower()] = actual
        ref.node.set("this", exp.to_identifier(actual))
        ref.node.set("db", None)
    if renamed_unaliased:
        for column in copy.find_all(exp.Column):
            qualifier = column.table
            if qualifier and qualifier.lower() in renamed_unaliased:
                column.set("table", exp.to_identifier(renamed_unaliased[qualifier.lower()]))
                column.set("db", None)
    return copy


def _sql(tree: exp.Expression) -> str:
    text = tree.sql(dialect=DIALECT)
    if isinstance(tree, exp.Insert) and tree.meta.get("replace"):
        return "REPLACE" + text[len("INSERT"):]  # sqlglot parses REPLACE as INSERT, see parse_statement
    return text


def parse_statement(sql: str) -> exp.Expression:
    """Parse one MySQL statement; ``REPLACE INTO`` becomes an Insert marked ``replace``."""
    import re

    import sqlglot

    replace = re.match(r"\s*REPLACE\b", sql, re.I)
    if replace:
        sql = sql[:replace.start()] + " INSERT" + sql[replace.end():]
    tree = sqlglot.parse_one(conditions.number_placeholders(sql), read=DIALECT)
    if replace and isinstance(tree, exp.Insert):
        tree.meta["replace"] = True
    return tree


@dataclass
class _Route:
    """The nodes of one statement: per unit, the data source and logical->actual names."""
    units: list[tuple[str, dict[str, str]]]


def _route_tables(refs: list[_TableRef], rules: ShardingRuleSet, where: exp.Expression | None,
                  params: Sequence[Any] | None, positions: dict[int, int]) -> _Route:
    sharded = sorted({r.name for r in refs if rules.is_sharded(r.name)})
    broadcast = {r.name for r in refs if rules.is_broadcast(r.name)}
    single = {r.name for r in refs if rules.is_single(r.name)}
    if not sharded:
        if single or not broadcast:
            return _Route([(rules.default_data_source, {})])
        return _Route([(rules.data_sources[0], {})])
    if not rules.are_bound(sharded):
        raise ShardingError(
            f"tables {', '.join(sharded)} are sharded independently and not declared as binding tables, "
            "so rows that join may live on different shards; declare them in binding_tables, or query "
            "them separately")
    primary = rules.table_rule(sharded[0])
    alias_to_table = {}
    for r in refs:
        alias_to_table[r.alias or r.name] = r.name
        alias_to_table[r.name] = r.name
    sharding_columns = {c for t in sharded for c in rules.table_rule(t).sharding_columns}

    def column_of(column: exp.Column) -> str | None:
        name = column.name.lower()
        if name not in sharding_columns:
            return None
        qualifier = column.table.lower() if column.table else None
        if qualifier is not None and alias_to_table.get(qualifier) not in sharded:
            return None
        return name

    alternatives = conditions.extract(where, column_of, params, positions)
    nodes = _route_alternatives(primary, alternatives)
    units = []
    for node in nodes:
        mapping = {primary.logical_table.lower(): node.table}
        for other in sharded[1:]:
            mapping[other] = rules.bound_node(primary.logical_table, node, other).table
        units.append((node.data_source, mapping))
    if single:
        off_default = {ds for ds, _ in units if ds != rules.default_data_source}
        if off_default:
            raise ShardingError(
                f"tables {', '.join(sorted(single))} live only on data source '{rules.default_data_source}' "
                f"but {', '.join(sharded)} rows are on {', '.join(sorted(off_default))}; such a join cannot "
                "run on one shard (make the small table a broadcast table)")
    return _Route(units)


def _route_alternatives(rule: TableRule, alternatives: conditions.Alternatives) -> list[DataNode]:
    seen: dict[DataNode, None] = {}
    hints = ROUTING_HINTS.get()
    for alternative in alternatives:
        for node in rule.route(alternative, database_hints=hints.database or None,
                               table_hints=hints.table or None):
            seen[node] = None
    if not seen:
        # No node can hold a match; still ask one, so the client gets a well-formed empty result.
        return [rule.data_nodes[0]]
    order = {n: i for i, n in enumerate(rule.data_nodes)}
    return sorted(seen, key=order.__getitem__)


# ---------------------------------------------------------------------------------------
# SELECT


def _plan_select(tree: exp.Select, rules: ShardingRuleSet, logical_db: str, params: Sequence[Any] | None,
                 positions: dict[int, int], sql_text: str | None) -> Plan:
    refs = _table_refs(tree, logical_db)
    _refuse_sharded_subqueries(tree, rules, logical_db)
    route = _route_tables(refs, rules, tree.args.get("where"), params, positions)
    if len(route.units) == 1:
        ds, mapping = route.units[0]
        needs_rewrite = bool(mapping) or any(r.node.db for r in refs)
        sql = _sql(_rename(tree, mapping, logical_db)) if needs_rewrite or sql_text is None else sql_text
        return Plan("select", [RouteUnit(ds, sql)])
    shard_tree = tree.copy()
    merge = _shape_for_merge(shard_tree)
    units = [RouteUnit(ds, _sql(_rename(shard_tree, mapping, logical_db))) for ds, mapping in route.units]
    return Plan("select", units, merge=merge)


def _refuse_sharded_subqueries(tree: exp.Select, rules: ShardingRuleSet, logical_db: str) -> None:
    """A subquery over a sharded table runs per shard only when the outer query does too
    with the same binding; keep to what is provably right: subqueries may use broadcast
    and single tables, or bound tables routed with the outer query."""
    for sub in tree.find_all(exp.Subquery, exp.Exists):
        if sub is tree:
            continue
        inner = [r.name for r in _table_refs(sub, logical_db) if rules.is_sharded(r.name)]
        outer = [r.name for r in _table_refs(tree, logical_db) if rules.is_sharded(r.name)]
        if inner and not rules.are_bound(set(inner) | set(outer)):
            raise ShardingError(f"a subquery over sharded table {inner[0]} is not bound to the outer query's "
                                "tables; it would see only one shard's rows")


_AGGREGATES = {exp.Count: "COUNT", exp.Sum: "SUM", exp.Min: "MIN", exp.Max: "MAX", exp.Avg: "AVG"}


def _aggregate_kind(node: exp.Expression) -> str | None:
    for cls, kind in _AGGREGATES.items():
        if type(node) is cls:
            return kind
    return None


def _contains_aggregate(node: exp.Expression) -> bool:
    return any(_aggregate_kind(n) for n in node.walk())


def _shape_for_merge(select: exp.Select) -> SelectMerge:
    """Rewrite ``select`` (in place) into what each shard runs, and say how to merge."""
    merge = SelectMerge()
    projections = list(select.expressions)
    has_star = any(isinstance(p, exp.Star) or (isinstance(p, exp.Column) and isinstance(p.this, exp.Star))
                   for p in projections)
    derived: list[exp.Expression] = []

    def add_derived(expression: exp.Expression) -> int:
        derived.append(exp.alias_(expression.copy(), f"__dbmesh_{len(derived)}", quoted=True))
        return -len(derived)  # resolved from the end of the row later

    key_of = {}
    for i, p in enumerate(projections):
        inner = p.this if isinstance(p, exp.Alias) else p
        key_of[_sql(inner)] = i
        if isinstance(p, exp.Alias):
            key_of[p.alias.lower()] = i

    def index_for(expression: exp.Expression) -> int:
        if isinstance(expression, exp.Literal) and not expression.is_string:
            return int(expression.this) - 1
        if isinstance(expression, exp.Column) and not expression.table and expression.name.lower() in key_of:
            return key_of[expression.name.lower()]
        found = key_of.get(_sql(expression))
        if found is not None and not has_star:
            return found
        return add_derived(expression)

    group = select.args.get("group")
    group_exprs = list(group.expressions) if group else []
    distinct_arg: exp.Expression | None = None
    for i, p in enumerate(projections):
        inner = p.this if isinstance(p, exp.Alias) else p
        kind = _aggregate_kind(inner)
        if kind is None:
            if _contains_aggregate(inner):
                raise ShardingError(f"the expression {_sql(inner)} combines aggregates; across shards each "
                                    "aggregate must be a column of its own")
            continue
        name = p.alias if isinstance(p, exp.Alias) else _sql(inner)
        argument = inner.this
        if isinstance(argument, exp.Distinct):
            if kind != "COUNT" or distinct_arg is not None:
                raise ShardingError(f"{_sql(inner)} across shards: only one COUNT(DISTINCT ...) per query "
                                    "is supported")
            values = argument.expressions
            if len(values) != 1:
                raise ShardingError("COUNT(DISTINCT a, b) across shards is not supported")
            distinct_arg = values[0]
            projections[i] = exp.alias_(distinct_arg.copy(), name, quoted=True)
            merge.aggregates.append(("COUNT_DISTINCT", i, None, i))
            continue
        if kind == "AVG":
            projections[i] = exp.alias_(exp.Sum(this=argument.copy()), name, quoted=True)
            count_index = add_derived(exp.Count(this=argument.copy()))
            merge.aggregates.append(("AVG", i, i, count_index))
            merge.avg_indexes.append(i)
            continue
        if not isinstance(p, exp.Alias):
            projections[i] = exp.alias_(inner, name, quoted=True)
        merge.aggregates.append((kind, i, None, None))

    for g in group_exprs:
        merge.group_by.append(index_for(g))
    if distinct_arg is not None:
        # Each shard returns its distinct values per group; the merge counts their union.
        select.set("group", exp.Group(expressions=[g.copy() for g in group_exprs] + [distinct_arg.copy()]))

    order = select.args.get("order")
    if order:
        for ordered in order.expressions:
            merge.order_by.append((index_for(ordered.this), bool(ordered.args.get("desc"))))
    elif merge.group_by:
        # MariaDB returns GROUP BY results sorted by the group keys.
        merge.order_by = [(g, False) for g in merge.group_by]

    having = select.args.get("having")
    if having is not None:
        merge.having = having.this.copy()
        for node in having.this.walk():
            if _aggregate_kind(node):
                merge.having_columns[_sql(node)] = index_for(node)
        for i, p in enumerate(projections):
            if isinstance(p, exp.Alias):
                merge.having_columns[p.alias.lower()] = i
        select.set("having", None)

    merge.distinct = bool(select.args.get("distinct"))
    limit, offset = _limit_offset(select)
    merge.limit, merge.offset = limit, offset
    aggregating = bool(merge.aggregates or merge.group_by or merge.distinct)
    if limit is not None and not aggregating and merge.having is None:
        select.set("limit", exp.Limit(expression=exp.Literal.number(offset + limit)))
    else:
        select.set("limit", None)
    select.set("offset", None)
    if aggregating and order:
        select.set("order", None)  # the merge sorts groups itself
    select.set("expressions", projections + derived)
    merge.hidden = len(derived)
    return merge


def _limit_offset(select: exp.Select) -> tuple[int | None, int]:
    limit_node = select.args.get("limit")
    offset_node = select.args.get("offset")

    def number(node: exp.Expression | None) -> int | None:
        if node is None:
            return None
        value = node.expression if isinstance(node, (exp.Limit, exp.Offset)) else node
        if isinstance(value, exp.Literal) and not value.is_string:
            return int(value.this)
        raise ShardingError("LIMIT/OFFSET across shards must be literal numbers")

    limit = number(limit_node)
    offset = number(offset_node) or 0
    if limit_node is not None and limit_node.args.get("offset") is not None:
        offset = number(limit_node.args["offset"]) or 0
    return limit, offset


def _plan_set_operation(tree: exp.Expression, rules: ShardingRuleSet, logical_db: str,
                        params: Sequence[Any] | None, positions: dict[int, int], sql_text: str | None) -> Plan:
    refs = _table_refs(tree, logical_db)
    if any(rules.is_sharded(r.name) for r in refs):
        sides = [s for s in (tree.left, tree.right) if isinstance(s, exp.Select)]
        routes = [_route_tables(_table_refs(s, logical_db), rules, s.args.get("where"), params, positions)
                  for s in sides]
        if any(len(r.units) != 1 for r in routes) or len({r.units[0][0] for r in routes}) != 1:
            raise ShardingError("UNION over sharded tables is supported only when every side routes to the same "
                                "single shard; run the sides as separate queries")
        mapping: dict[str, str] = {}
        for r in routes:
            mapping.update(r.units[0][1])
        return Plan("select", [RouteUnit(routes[0].units[0][0], _sql(_rename(tree, mapping, logical_db)))])
    ds = rules.default_data_source
    return Plan("select", [RouteUnit(ds, sql_text or _sql(_rename(tree, {}, logical_db)))])


# ---------------------------------------------------------------------------------------
# INSERT / REPLACE


def _plan_insert(tree: exp.Insert, rules: ShardingRuleSet, logical_db: str, params: Sequence[Any] | None,
                 positions: dict[int, int]) -> Plan:
    target = tree.this
    table_node = target.this if isinstance(target, exp.Schema) else target
    if not isinstance(table_node, exp.Table):
        raise ShardingError("INSERT target is not a table")
    name = table_node.name.lower()
    rule = rules.table_rule(name)
    if rule is None:
        if rules.is_broadcast(name):
            sql = _sql(_rename(tree, {}, logical_db))
            return Plan("insert", [RouteUnit(ds, sql) for ds in rules.data_sources], write=True, broadcast=True)
        return Plan("insert", [RouteUnit(rules.default_data_source, _sql(_rename(tree, {}, logical_db)))],
                    write=True)
    values = tree.expression
    if not isinstance(values, exp.Values):
        raise ShardingError(f"INSERT ... SELECT into sharded table {name} is not supported; insert the rows "
                            "with VALUES")
    if not isinstance(target, exp.Schema) or not target.expressions:
        raise ShardingError(f"INSERT into sharded table {name} must list its columns, e.g. "
                            f"INSERT INTO {name} (col1, col2) VALUES (...)")
    columns = [c.name.lower() for c in target.expressions]
    _refuse_sharding_key_update(tree.args.get("conflict") or tree.args.get("on_duplicate"), rule, name)
    rows = [list(t.expressions) for t in values.expressions]
    if any(len(r) != len(columns) for r in rows):
        raise ShardingError(f"INSERT into {name}: a row has a different number of values than the "
                            f"{len(columns)} columns listed")
    generated_first = 0
    key = rule.key_generator
    if key is not None and key.column.lower() not in columns:
        columns.append(key.column.lower())
        target.append("expressions", exp.to_identifier(key.column))
        for row in rows:
            generated = key.next_id()
            if not generated_first and isinstance(generated, int):
                generated_first = generated
            row.append(exp.Literal.number(generated) if isinstance(generated, int)
                       else exp.Literal.string(str(generated)))
    by_node: dict[DataNode, list[list[exp.Expression]]] = {}
    for row in rows:
        values_of = {}
        for column, value_node in zip(columns, row, strict=True):
            if column in rule.sharding_columns:
                value = conditions.literal_value(value_node, params, positions)
                if not conditions.is_constant(value):
                    raise ShardingError(f"INSERT into {name}: the value of sharding column {column} must be a "
                                        "literal or a parameter")
                values_of[column] = value
        hints = ROUTING_HINTS.get()
        node = rule.route_row(values_of, database_hint=hints.database[0] if hints.database else None,
                              table_hint=hints.table[0] if hints.table else None)
        by_node.setdefault(node, []).append(row)
    units = []
    order = {n: i for i, n in enumerate(rule.data_nodes)}
    for node in sorted(by_node, key=order.__getitem__):
        part = tree.copy()
        part.set("expression", exp.Values(expressions=[exp.Tuple(expressions=[v.copy() for v in r])
                                                       for r in by_node[node]]))
        units.append(RouteUnit(node.data_source, _sql(_rename(part, {name: node.table}, logical_db))))
    return Plan("insert", units, write=True, last_insert_id=generated_first)


def _refuse_sharding_key_update(assignments: exp.Expression | None, rule: TableRule, name: str) -> None:
    if assignments is None:
        return
    for eq in assignments.find_all(exp.EQ):
        left = eq.this
        if isinstance(left, exp.Column) and left.name.lower() in rule.sharding_columns:
            raise ShardingError(f"cannot change sharding column {left.name} of table {name}: the row would "
                                "have to move to another shard; delete and re-insert it instead")


# ---------------------------------------------------------------------------------------
# UPDATE / DELETE


def _plan_update_delete(tree: exp.Expression, rules: ShardingRuleSet, logical_db: str,
                        params: Sequence[Any] | None, positions: dict[int, int]) -> Plan:
    refs = _table_refs(tree, logical_db)
    kind = "update" if isinstance(tree, exp.Update) else "delete"
    sharded = [r for r in refs if rules.is_sharded(r.name)]
    if isinstance(tree, exp.Update):
        for ref in sharded:
            for assignment in tree.expressions:
                column = assignment.this
                if isinstance(column, exp.Column) and column.name.lower() in rules.table_rule(ref.name).sharding_columns:
                    value = assignment.expression
                    if not (isinstance(value, exp.Column) and value.name.lower() == column.name.lower()):
                        raise ShardingError(
                            f"cannot change sharding column {column.name} of table {ref.name} with UPDATE: the "
                            "row would have to move to another shard; delete and re-insert it instead")
    if not sharded and any(rules.is_broadcast(r.name) for r in refs):
        if any(rules.is_single(r.name) for r in refs):
            raise ShardingError("a write that mixes broadcast and single tables is not supported")
        sql = _sql(_rename(tree, {}, logical_db))
        return Plan(kind, [RouteUnit(ds, sql) for ds in rules.data_sources], write=True, broadcast=True)
    route = _route_tables(refs, rules, tree.args.get("where"), params, positions)
    if len(route.units) > 1 and tree.args.get("limit") is not None:
        raise ShardingError(f"{kind.upper()} ... LIMIT on a sharded table must route to one shard; add a "
                            "condition on the sharding key")
    units = [RouteUnit(ds, _sql(_rename(tree, mapping, logical_db))) for ds, mapping in route.units]
    return Plan(kind, units, write=True)


# ---------------------------------------------------------------------------------------
# DDL


def _plan_ddl(tree: exp.Expression, rules: ShardingRuleSet, logical_db: str) -> Plan:
    refs = _table_refs(tree, logical_db)
    if not refs:
        raise ShardingError(f"{type(tree).__name__.upper()} without a table is not supported on a sharded "
                            "database")
    names = {r.name for r in refs}
    sharded = sorted(n for n in names if rules.is_sharded(n))
    if len(sharded) > 1 or (sharded and len(names) > 1):
        raise ShardingError("DDL naming several sharded tables at once is not supported; run one per table")
    if sharded:
        rule = rules.table_rule(sharded[0])
        units = [RouteUnit(node.data_source, _sql(_rename(tree, {sharded[0]: node.table}, logical_db)))
                 for node in rule.data_nodes]
        return Plan("ddl", units, write=True)
    if all(rules.is_broadcast(n) for n in names):
        sql = _sql(_rename(tree, {}, logical_db))
        return Plan("ddl", [RouteUnit(ds, sql) for ds in rules.data_sources], write=True, broadcast=True)
    return Plan("ddl", [RouteUnit(rules.default_data_source, _sql(_rename(tree, {}, logical_db)))], write=True)


# ---------------------------------------------------------------------------------------
# For prepared statements


def first_node_sql(tree: exp.Expression, rules: ShardingRuleSet, logical_db: str) -> tuple[str, str]:
    """(data source, SQL) with every logical table renamed to its first actual table: what a
    server-side PREPARE needs to describe the statement's parameters and columns."""
    mapping: dict[str, str] = {}
    data_source = None
    for ref in _table_refs(tree, logical_db):
        node = rules.data_nodes(ref.name)[0]
        if rules.is_sharded(ref.name):
            mapping[ref.name] = node.table
            data_source = data_source or node.data_source
    described = _rename(tree, mapping, logical_db)
    for node in [n for n in described.walk() if isinstance(n, exp.Placeholder)]:
        node.replace(exp.Placeholder())  # the backend knows only anonymous `?`
    return data_source or rules.default_data_source, _sql(described)


def bind_parameters(tree: exp.Expression, values: Sequence[Any]) -> exp.Expression:
    """A copy of ``tree`` with each `?` replaced by the literal of its bound value."""
    copy = tree.copy()
    positions = conditions.placeholder_positions(copy)
    for node in [n for n in copy.walk() if isinstance(n, exp.Placeholder)]:
        index = positions[id(node)]
        if index >= len(values):
            raise ShardingError(f"statement has more parameters than the {len(values)} bound")
        node.replace(_literal(values[index]))
    return copy


def _literal(value: Any) -> exp.Expression:
    import datetime as dt
    from decimal import Decimal

    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Literal.number(int(value))
    if isinstance(value, int):
        return exp.Literal.number(value)
    if isinstance(value, Decimal):
        return exp.Literal.number(format(value, "f"))
    if isinstance(value, float):
        return exp.Literal.number(repr(value))
    if isinstance(value, bytes):
        return exp.HexString(this=value.hex())
    if isinstance(value, dt.datetime):
        return exp.Literal.string(value.isoformat(" "))
    if isinstance(value, dt.date):
        return exp.Literal.string(value.isoformat())
    if isinstance(value, dt.timedelta):
        total = abs(value)
        hours, rest = divmod(total.days * 86400 + total.seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        sign = "-" if value < dt.timedelta(0) else ""
        return exp.Literal.string(f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}.{total.microseconds:06d}")
    return exp.Literal.string(str(value))
