"""Routing and rewrite of one statement against a sharding rule set (pure: no I/O).

``plan(tree, rules, ...)`` decides the route units (data source + actual SQL) for a parsed
statement, and for a SELECT over several units how their rows merge (see merge.py). Tables
are renamed from logical to actual names wherever they appear; a statement the engine
cannot run correctly across shards raises ShardingError with the reason, never a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    result.locking, result.force_primary = flags(tree)
    return result


def flags(tree: exp.Expression) -> tuple[bool, bool]:
    """Whether the statement locks what it reads (FOR UPDATE, LOCK IN SHARE MODE), and whether
    a ``/* dbmesh:primary */`` hint keeps it on the primary; worked out once per tree."""
    return _static(tree, "flags", lambda: (
        bool(tree.find(exp.Lock)),
        any("dbmesh:primary" in c for node in tree.walk() for c in (node.comments or ()))))


def _plan(tree: exp.Expression, rules: ShardingRuleSet, logical_db: str,
          params: Sequence[Any] | None, sql_text: str | None) -> Plan:
    positions = _static(tree, "positions", lambda: conditions.placeholder_positions(tree))
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


def _static(tree: exp.Expression, name: str, compute: Any) -> Any:
    """What depends only on the statement's shape, kept on a tree the plan cache holds
    (one with a render memo); computed afresh for any other tree."""
    memo = MEMOS.get(id(tree))
    if memo is None:
        return compute()
    key = ("static", name)
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def _table_refs(tree: exp.Expression, logical_db: str) -> list[_TableRef]:
    return _static(tree, f"refs:{logical_db}", lambda: _find_table_refs(tree, logical_db))


def _find_table_refs(tree: exp.Expression, logical_db: str) -> list[_TableRef]:
    cte_names = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    refs = []
    for node in tree.find_all(exp.Table):
        if not node.name or (node.db and node.db.lower() != logical_db.lower()) or is_dropped_index(node):
            continue
        name = node.name.lower()
        if name in cte_names and not node.db:
            continue
        alias = node.alias or None
        refs.append(_TableRef(node, name, alias.lower() if alias else None))
    return refs


def is_dropped_index(node: exp.Table) -> bool:
    """sqlglot holds the index name of ``DROP INDEX i ON t`` as a Table node: it names an
    index, so it is neither routed nor renamed (only t, the ON table, is a table)."""
    parent = node.parent
    return node.arg_key == "tables" and isinstance(parent, exp.Drop) and \
        (parent.args.get("kind") or "").upper() == "INDEX"


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
    requalify_columns(copy, renamed_unaliased)
    return copy


def requalify_columns(tree: exp.Expression, renamed: dict[str, str]) -> None:
    """Columns qualified by a table renamed without an alias (``t_order.id``) follow it:
    ``renamed`` maps the old name, lower-cased, to the new one."""
    if not renamed:
        return
    for column in tree.find_all(exp.Column):
        qualifier = column.table
        if qualifier and qualifier.lower() in renamed:
            column.set("table", exp.to_identifier(renamed[qualifier.lower()]))
            column.set("db", None)


# Memos of the trees the plan cache keeps, by id (a tree stays alive while it is cached,
# and copies of it get no memo: their nodes are not the ones the memo refers to).
MEMOS: dict[int, dict[Any, Any]] = {}


def _render(tree: exp.Expression, mapping: dict[str, str], logical_db: str) -> str:
    """SQL of ``tree`` with tables renamed. For a tree the plan cache keeps, each distinct
    route of the statement shape is generated only once."""
    memo = MEMOS.get(id(tree))
    if memo is None:
        return _sql(_rename(tree, mapping, logical_db))
    key = (logical_db, tuple(sorted(mapping.items())))
    sql = memo.get(key)
    if sql is None:
        sql = memo[key] = _sql(_rename(tree, mapping, logical_db))
    return sql


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
    text = conditions.number_placeholders(sql)
    tree = sqlglot.parse_one(text, read=DIALECT)
    if replace and isinstance(tree, exp.Insert):
        tree.meta["replace"] = True
    if tree is not None:
        _keep_0x_literals(tree, text)
    return tree


def _keep_0x_literals(tree: exp.Expression, text: str) -> None:
    """sqlglot reads 0x41 and X'41' alike and writes X'41' back, but they differ: MariaDB
    compares 0x41 with a number as the number 65 and X'41' as the string 'A'. Keep the 0x
    spelling verbatim (as an opaque token, so routing treats it as unknown, never guesses)."""
    for node in list(tree.find_all(exp.HexString)):
        start, end = node.meta.get("start"), node.meta.get("end")
        if isinstance(start, int) and isinstance(end, int) and text[start:start + 2].lower() == "0x":
            node.replace(exp.Var(this=text[start:end + 1]))


@dataclass
class _Route:
    """The nodes of one statement: per unit, the data source and logical->actual names."""
    units: list[tuple[str, dict[str, str]]]


@dataclass
class _TableRouting:
    """What routing one query level needs that no value changes: kept per statement shape."""
    fixed: _Route | None             # no sharded table: the route whatever the values
    sharded: list[str]               # sharded tables (bound), the first one routes
    single: set[str]
    column_of: Callable[[exp.Column], str | None] | None


def _route_tables(tree: exp.Expression, refs: list[_TableRef], rules: ShardingRuleSet,
                  where: exp.Expression | None, params: Sequence[Any] | None, positions: dict[int, int]) -> _Route:
    routing = _static(tree, ("routing", id(refs), id(where), id(rules)), lambda: _table_routing(refs, rules, where))
    if routing.fixed is not None:
        return routing.fixed
    sharded = routing.sharded
    primary = rules.table_rule(sharded[0])
    alternatives = conditions.extract(where, routing.column_of, params, positions)
    nodes = _route_alternatives(primary, alternatives)
    units = []
    for node in nodes:
        mapping = {primary.logical_table.lower(): node.table}
        for other in sharded[1:]:
            mapping[other] = rules.bound_node(primary.logical_table, node, other).table
        units.append((node.data_source, mapping))
    if routing.single:
        off_default = {ds for ds, _ in units if ds != rules.default_data_source}
        if off_default:
            raise ShardingError(
                f"tables {', '.join(sorted(routing.single))} live only on data source "
                f"'{rules.default_data_source}' but {', '.join(sharded)} rows are on "
                f"{', '.join(sorted(off_default))}; such a join cannot run on one shard (make the small table "
                "a broadcast table)")
    return _Route(units)


def _table_routing(refs: list[_TableRef], rules: ShardingRuleSet, where: exp.Expression | None) -> _TableRouting:
    sharded = sorted({r.name for r in refs if rules.is_sharded(r.name)})
    broadcast = {r.name for r in refs if rules.is_broadcast(r.name)}
    single = {r.name for r in refs if rules.is_single(r.name)}
    if not sharded:
        fixed = _Route([(rules.default_data_source if single or not broadcast else rules.data_sources[0], {})])
        return _TableRouting(fixed, [], single, None)
    if not rules.are_bound(sharded):
        raise ShardingError(
            f"tables {', '.join(sharded)} are sharded independently and not declared as binding tables, "
            "so rows that join may live on different shards; declare them in binding_tables, or query "
            "them separately")
    alias_to_table = {}
    for r in refs:
        alias_to_table[r.alias or r.name] = r.name
        alias_to_table[r.name] = r.name
    sharding_columns = {c for t in sharded for c in rules.table_rule(t).sharding_columns}

    resolve = _column_resolver(where.root(), refs, rules) if where is not None else None

    def column_of(column: exp.Column) -> str | None:
        name = column.name.lower()
        if name not in sharding_columns:
            return None
        if resolve is not None:
            ref = resolve(column)
            return name if ref is not None and ref.name in sharded else None
        qualifier = column.table.lower() if column.table else None
        if qualifier is not None and alias_to_table.get(qualifier) not in sharded:
            return None
        return name

    return _TableRouting(None, sharded, single, column_of)


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
    # Checks of the shape alone: made once per cached shape (a refusal is raised every time).
    _static(tree, ("select checks", logical_db, id(rules)), lambda: (
        _refuse_sharded_subqueries(tree, rules, logical_db), _check_colocated(tree, refs, rules)))
    where = _static(tree, ("routing scope", id(rules)), lambda: _routing_scope(tree, refs, rules).args.get("where"))
    route = _route_tables(tree, refs, rules, where, params, positions)
    if len(route.units) > 1:
        _static(tree, ("per-shard repeats", id(rules)), lambda: _refuse_per_shard_repeats(tree, refs, rules))
    if len(route.units) == 1:
        ds, mapping = route.units[0]
        needs_rewrite = bool(mapping) or any(r.node.db for r in refs)
        sql = _render(tree, mapping, logical_db) if needs_rewrite or sql_text is None else sql_text
        return Plan("select", [RouteUnit(ds, sql)])
    shard_tree, merge = _static(tree, "merge", lambda: _shaped_for_merge(tree))
    units = [RouteUnit(ds, _render_shaped(tree, shard_tree, mapping, logical_db)) for ds, mapping in route.units]
    return Plan("select", units, merge=merge)


def _shaped_for_merge(tree: exp.Select) -> tuple[exp.Select, SelectMerge]:
    """What every unit of a merged SELECT runs (a rewritten copy) and how the rows merge.
    Kept per shape on a cached tree: the merge never changes the SelectMerge it reads."""
    shard_tree = tree.copy()
    return shard_tree, _shape_for_merge(shard_tree)


def _render_shaped(tree: exp.Expression, shard_tree: exp.Expression, mapping: dict[str, str],
                   logical_db: str) -> str:
    """SQL of a merged SELECT's unit; on a cached tree generated once per distinct route."""
    memo = MEMOS.get(id(tree))
    if memo is None:
        return _sql(_rename(shard_tree, mapping, logical_db))
    key = ("merged", logical_db, tuple(sorted(mapping.items())))
    sql = memo.get(key)
    if sql is None:
        sql = memo[key] = _sql(_rename(shard_tree, mapping, logical_db))
    return sql


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


# ---------------------------------------------------------------------------------------
# Query levels: which rows of which shard a statement may combine

_SCOPES = (exp.Select, exp.Update, exp.Delete)


def _scope_of(node: exp.Expression) -> exp.Expression | None:
    """The query level (SELECT / UPDATE / DELETE) a node belongs to."""
    parent = node.parent
    while parent is not None and not isinstance(parent, _SCOPES):
        parent = parent.parent
    return parent


def _sources(tree: exp.Expression) -> dict[int, list[exp.Expression]]:
    """Per query level (by id): what it reads, tables and derived tables."""
    return _static(tree, "sources", lambda: _find_sources(tree))


def _find_sources(tree: exp.Expression) -> dict[int, list[exp.Expression]]:
    found: dict[int, list[exp.Expression]] = {}
    for node in tree.find_all(exp.From, exp.Join):
        scope = _scope_of(node)
        if scope is not None:
            found.setdefault(id(scope), []).append(node.this)
    for node in tree.find_all(exp.Update, exp.Delete):
        if isinstance(node.this, exp.Table):
            found.setdefault(id(node), []).append(node.this)
    return found


def _conjuncts(node: exp.Expression) -> list[exp.Expression]:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    return [node]


def _column_resolver(tree: exp.Expression, refs: list[_TableRef],
                     rules: ShardingRuleSet) -> Callable[[exp.Column], _TableRef | None]:
    """Which table a column reads, when that is certain (else None): by its qualifier, or
    unqualified in a level reading one table, or a sharding column of the only sharded
    table of a level that reads no derived table (MySQL rejects ambiguous names)."""
    ref_of_node = {id(r.node): r for r in refs}
    sources = _sources(tree)

    def resolve(column: exp.Column) -> _TableRef | None:
        qualifier = column.table.lower() if column.table else None
        name = column.name.lower()
        scope = _scope_of(column)
        while scope is not None:
            here = sources.get(id(scope), [])
            if qualifier is not None:
                for source in here:
                    if source.alias_or_name.lower() == qualifier:
                        return ref_of_node.get(id(source))  # None for a derived table
            elif len(here) == 1:
                return ref_of_node.get(id(here[0]))
            elif here:
                known = [ref_of_node.get(id(source)) for source in here]
                if any(r is None for r in known):
                    return None  # a derived table (or a CTE) may be the one with that column
                owners = [r for r in known if r is not None and rules.is_sharded(r.name)
                          and name in rules.table_rule(r.name).sharding_columns]
                return owners[0] if len(owners) == 1 else None
            scope = _scope_of(scope)
        return None

    return resolve


def _check_colocated(tree: exp.Expression, refs: list[_TableRef], rules: ShardingRuleSet) -> None:
    """Bound tables (and a table joined with itself) are read per node, so each shard only
    joins its own rows: that is right only when the statement makes matching rows agree on
    every sharding column. Require an equality (ON, WHERE, USING, or IN (SELECT ...), as a
    conjunct) for each sharding column between every sharded table and the first one."""
    sharded = [r for r in refs if rules.is_sharded(r.name)]
    if len(sharded) < 2:
        return
    ref_of_node = {id(r.node): r for r in refs}
    sources = _sources(tree)
    resolve = _column_resolver(tree, refs, rules)
    parent: dict[tuple[int, str], tuple[int, str]] = {}

    def find(key: tuple[int, str]) -> tuple[int, str]:
        while parent.get(key, key) != key:
            key = parent[key]
        return key

    def union(a: exp.Expression, b: exp.Expression) -> None:
        if not (isinstance(a, exp.Column) and isinstance(b, exp.Column)):
            return
        ra, rb = resolve(a), resolve(b)
        if ra is not None and rb is not None:
            parent[find((id(ra.node), a.name.lower()))] = find((id(rb.node), b.name.lower()))

    for holder in tree.find_all(exp.Where, exp.Join):
        condition = holder.this if isinstance(holder, exp.Where) else holder.args.get("on")
        for conjunct in _conjuncts(condition) if condition is not None else ():
            if isinstance(conjunct, exp.EQ):
                union(conjunct.this, conjunct.expression)
            elif isinstance(conjunct, exp.In) and conjunct.args.get("query") is not None:
                query = conjunct.args["query"]
                inner = query.this if isinstance(query, exp.Subquery) else query
                if isinstance(inner, exp.Select):
                    left = conjunct.this.expressions if isinstance(conjunct.this, exp.Tuple) else [conjunct.this]
                    right = [p.this if isinstance(p, exp.Alias) else p for p in inner.expressions]
                    if len(left) == len(right):
                        for a, b in zip(left, right, strict=True):
                            union(a, b)
        using = holder.args.get("using") if isinstance(holder, exp.Join) else None
        joined = ref_of_node.get(id(holder.this)) if using else None
        if joined is not None:
            scope = _scope_of(holder)
            others = [ref_of_node.get(id(src)) for src in sources.get(id(scope), []) if src is not holder.this]
            others_sharded = [r for r in others if r is not None and rules.is_sharded(r.name)]
            if len(others_sharded) == 1:
                for name in using:
                    key = name.name.lower()
                    parent[find((id(joined.node), key))] = find((id(others_sharded[0].node), key))

    first = sharded[0]
    first_rule = rules.table_rule(first.name)
    for other in sharded[1:]:
        rule = rules.table_rule(other.name)
        for mine, theirs in ((first_rule.database_strategy, rule.database_strategy),
                             (first_rule.table_strategy, rule.table_strategy)):
            for a, b in zip(mine.columns if mine else (), theirs.columns if theirs else (), strict=False):
                if find((id(first.node), a.lower())) != find((id(other.node), b.lower())):
                    left, right = first.alias or first.name, other.alias or other.name
                    columns = ", ".join(first_rule.sharding_columns)
                    raise ShardingError(
                        f"{first.name} {left} and {other.name} {right} are not matched on sharding column "
                        f"{a}: rows that match may live on different shards, and each shard only combines its "
                        f"own rows; join them on every sharding column ({columns}), e.g. "
                        f"{right}.{b} = {left}.{a}")


def _routing_scope(tree: exp.Select, refs: list[_TableRef], rules: ShardingRuleSet) -> exp.Select:
    """The query level whose WHERE routes: the statement, or when it reads only one derived
    table (and no sharded table itself), that derived table's level, recursively."""
    scope = tree
    while True:
        if any(rules.is_sharded(r.name) and _scope_of(r.node) is scope for r in refs) or scope.args.get("joins"):
            return scope
        source = scope.args.get("from_") or scope.args.get("from")
        inner = source.this if source is not None else None
        if not (isinstance(inner, exp.Subquery) and isinstance(inner.this, exp.Select)):
            return scope
        scope = inner.this


def _not_row_local(select: exp.Select) -> str | None:
    """What makes a derived table's rows depend on rows of other shards, if anything."""
    for arg, what in (("group", "GROUP BY"), ("having", "HAVING"), ("distinct", "DISTINCT"), ("limit", "LIMIT"),
                      ("offset", "OFFSET")):
        if select.args.get(arg):
            return what
    if any(_contains_aggregate(p) for p in select.expressions):
        return "an aggregate"
    if select.find(exp.Window):
        return "a window function"
    return None


def _refuse_per_shard_repeats(tree: exp.Select, refs: list[_TableRef], rules: ShardingRuleSet) -> None:
    """With several units every unit runs the whole statement over its own rows. That is
    right when each sharded table is read by the statement's own level (merged after),
    through derived tables that keep rows as they are, or by a subquery of a level that
    itself reads a sharded table (co-located, see _check_colocated)."""
    window = tree.find(exp.Window)
    if window is not None:
        raise ShardingError(f"window function {_sql(window)} across shards would see one shard's rows only; "
                            "route the query to one shard (conditions on the sharding columns) or compute it "
                            "in the application")
    for ref in refs:
        if not rules.is_sharded(ref.name):
            continue
        scope = _scope_of(ref.node)
        while scope is not None and scope is not tree:
            holder = scope.parent
            if isinstance(holder, exp.Subquery) and isinstance(holder.parent, (exp.From, exp.Join)):
                reason = _not_row_local(scope)
                if reason:
                    raise ShardingError(
                        f"the derived table {holder.alias or '(unnamed)'} over sharded table {ref.name} uses "
                        f"{reason}, which every shard would compute over its own rows only; add conditions on "
                        "the sharding columns inside it so it runs on one shard, or compute it in the application")
                scope = _scope_of(holder)
                continue
            outer = _scope_of(scope)
            if not any(rules.is_sharded(r.name) and _scope_of(r.node) is outer for r in refs):
                raise ShardingError(
                    f"a subquery over sharded table {ref.name} inside a query level that reads no sharded table "
                    "itself would run once per shard and repeat or miss rows; query the sharded table directly "
                    "or route the statement to one shard")
            break


_AGGREGATES = {exp.Count: "COUNT", exp.Sum: "SUM", exp.Min: "MIN", exp.Max: "MAX", exp.Avg: "AVG"}


def _aggregate_kind(node: exp.Expression) -> str | None:
    for cls, kind in _AGGREGATES.items():
        if type(node) is cls:
            return kind
    return None


def _contains_aggregate(node: exp.Expression) -> bool:
    """An aggregate of this query level (aggregates inside a subquery belong to the subquery)."""
    nested = (exp.Subquery, exp.Select, exp.Exists)
    return any(_aggregate_kind(n) for n in node.walk(prune=lambda n: n is not node and isinstance(n, nested)))


def _shape_for_merge(select: exp.Select) -> SelectMerge:
    """Rewrite ``select`` (in place) into what each shard runs, and say how to merge."""
    merge = SelectMerge()
    for node in select.walk(prune=lambda n: n is not select and isinstance(n, (exp.Subquery, exp.Select))):
        if isinstance(node, exp.AggFunc) and _aggregate_kind(node) is None:
            raise ShardingError(f"{_sql(node)} across shards is not supported (the merge combines COUNT, SUM, "
                                "MIN, MAX, AVG and one COUNT(DISTINCT ...)); route the query to one shard")
    projections = list(select.expressions)
    has_star = any(isinstance(p, exp.Star) or (isinstance(p, exp.Column) and isinstance(p.this, exp.Star))
                   for p in projections)
    derived: list[exp.Expression] = []

    def add_derived(expression: exp.Expression) -> int:
        # The k-th derived column (0-based) is marked -(k + 1) here; once the number of
        # derived columns is known, the marks become positions from the end of the row.
        derived.append(exp.alias_(expression.copy(), f"__dbmesh_{len(derived)}", quoted=True))
        return -len(derived)

    def add_aggregate(node: exp.Expression, kind: str) -> int:
        """An aggregate that HAVING or ORDER BY uses but the select list lacks: a derived
        column that the merge aggregates like a selected one."""
        argument = node.this
        if isinstance(argument, exp.Distinct):
            raise ShardingError(f"{_sql(node)} across shards is supported only as a column of the select list")
        if kind == "AVG":
            sum_index = add_derived(exp.Sum(this=argument.copy()))
            merge.aggregates.append(("AVG", sum_index, sum_index, add_derived(exp.Count(this=argument.copy()))))
            return sum_index
        index = add_derived(node)
        merge.aggregates.append((kind, index, None, None))
        return index

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
        kind = _aggregate_kind(expression)
        if kind is not None:
            return add_aggregate(expression, kind)
        if _contains_aggregate(expression):
            raise ShardingError(f"the expression {_sql(expression)} combines aggregates; across shards each "
                                "aggregate must be a column of its own")
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
        for i, p in enumerate(projections):
            if isinstance(p, exp.Alias):
                merge.having_columns[p.alias.lower()] = i
        pending = [having.this]
        while pending:
            node = pending.pop()
            if _aggregate_kind(node) or isinstance(node, exp.Column):
                key = node.name.lower() if isinstance(node, exp.Column) and not node.table else _sql(node)
                if key not in merge.having_columns:
                    merge.having_columns[key] = index_for(node)
                continue
            if not isinstance(node, _HAVING_NODES) or (isinstance(node, exp.Is)
                                                         and not isinstance(node.expression, exp.Null)):
                raise ShardingError(f"HAVING {_sql(having.this)} across shards uses {_sql(node)}, which the "
                                    "merge cannot evaluate; keep to comparisons, AND/OR/NOT, BETWEEN, IN "
                                    "lists, IS NULL and arithmetic over aggregates and grouped columns")
            pending.extend(node.iter_expressions())
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
    if (merge.aggregates or merge.group_by) and order:
        select.set("order", None)  # the merge sorts groups itself (DISTINCT keeps the shards sorted)
    select.set("expressions", projections + derived)
    merge.hidden = len(derived)

    def resolve(index: int) -> int:
        return index if index >= 0 else -(len(derived) + index + 1)  # -(k + 1) -> -(n - k)

    merge.order_by = [(resolve(i), desc) for i, desc in merge.order_by]
    merge.group_by = [resolve(i) for i in merge.group_by]
    merge.aggregates = [(kind, resolve(i), None if s is None else resolve(s), None if c is None else resolve(c))
                        for kind, i, s, c in merge.aggregates]
    merge.having_columns = {k: resolve(v) for k, v in merge.having_columns.items()}
    return merge


# Expressions the merge can evaluate in HAVING (besides aggregates and columns).
_HAVING_NODES = (exp.Paren, exp.Literal, exp.Null, exp.Boolean, exp.Neg, exp.Not, exp.And, exp.Or, exp.EQ,
                 exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Between,
                 exp.In, exp.Is)


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
        sides = _set_operation_sides(tree)
        if sides is None:
            raise ShardingError("UNION over sharded tables is supported only between plain SELECTs")
        routes = []
        for side in sides:
            side_refs = _table_refs(side, logical_db)
            _refuse_sharded_subqueries(side, rules, logical_db)
            _check_colocated(side, side_refs, rules)
            where = _routing_scope(side, side_refs, rules).args.get("where")
            flexible = all(rules.is_broadcast(r.name) for r in side_refs)  # the same rows everywhere
            routes.append((_route_tables(tree, side_refs, rules, where, params, positions), flexible))
        fixed = [route for route, flexible in routes if not flexible]
        if any(len(r.units) != 1 for r in fixed) or len({r.units[0][0] for r in fixed}) != 1:
            raise ShardingError("UNION over sharded tables is supported only when every side routes to the same "
                                "single shard; run the sides as separate queries")
        # Each side keeps its own actual tables (two sides may read different tables of a shard).
        combined = tree.copy()
        for copy, (route, _) in zip(_set_operation_sides(combined) or [], routes, strict=True):
            copy.replace(_rename(copy, route.units[0][1], logical_db))
        return Plan("select", [RouteUnit(fixed[0].units[0][0], _sql(_rename(combined, {}, logical_db)))])
    ds = rules.default_data_source
    return Plan("select", [RouteUnit(ds, sql_text or _sql(_rename(tree, {}, logical_db)))])


def _set_operation_sides(node: exp.Expression) -> list[exp.Select] | None:
    """The SELECTs a UNION / INTERSECT / EXCEPT combines, in order (None if one is something else)."""
    if isinstance(node, exp.Select):
        return [node]
    if isinstance(node, exp.Subquery):
        return _set_operation_sides(node.this)
    if isinstance(node, (exp.Union, exp.Intersect, exp.Except)):
        left, right = _set_operation_sides(node.left), _set_operation_sides(node.right)
        return None if left is None or right is None else left + right
    return None


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
    key_given = key is None or key.column.lower() in columns
    if not key_given:
        columns.append(key.column.lower())
        # The column goes into a copy: the plan cache keeps ``tree`` for the next statement.
        tree = tree.copy()
        tree.this.append("expressions", exp.to_identifier(key.column))
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
    if len(by_node) == 1 and key_given:
        # Every row on one node, as the statement lists them: the statement itself, renamed
        # (generated once per node for a cached shape).
        node = next(iter(by_node))
        return Plan("insert", [RouteUnit(node.data_source, _render(tree, {name: node.table}, logical_db))],
                    write=True)
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
    _check_colocated(tree, refs, rules)
    route = _route_tables(tree, refs, rules, tree.args.get("where"), params, positions)
    if len(route.units) > 1 and tree.args.get("limit") is not None:
        raise ShardingError(f"{kind.upper()} ... LIMIT on a sharded table must route to one shard; add a "
                            "condition on the sharding key")
    units = [RouteUnit(ds, _render(tree, mapping, logical_db)) for ds, mapping in route.units]
    return Plan(kind, units, write=True)


# ---------------------------------------------------------------------------------------
# DDL


def _plan_ddl(tree: exp.Expression, rules: ShardingRuleSet, logical_db: str) -> Plan:
    refs = _table_refs(tree, logical_db)
    if not refs:
        if isinstance(tree, exp.Drop) and (tree.args.get("kind") or "").upper() == "INDEX":
            raise ShardingError("DROP INDEX needs the table the index is on: DROP INDEX name ON table")
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


def routing_values(values: Sequence[Any]) -> list[Any]:
    """Bound parameter values as routing reads them when they are bound into the statement
    (bind_parameters): what each one's literal gives back, so planning with the values as
    ``params`` routes exactly as planning the bound statement does."""
    out = []
    for value in values:
        kind = type(value)
        out.append(value if value is None or kind is int or kind is str
                   else conditions.literal_value(_literal(value), None, {}))
    return out


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
