"""Plans for statements that differ only in their literal values, without parsing them again.

The statement text is normalised by a regular expression that cuts out the number and
string literals; the remaining shape keys a cache of parsed trees in which each literal is a
numbered placeholder. On a hit the literals route the statement like bound parameters,
the actual SQL for a route comes from a per-shape memo (tables renamed once per distinct
route), and the original literal text is put back in: no sqlglot parse and no SQL
generation. Only shapes whose literals sit in WHERE, VALUES or SET are cached; literals
that shape the result (select list, ORDER BY / GROUP BY positions, LIMIT) and texts with
comments take the full path.
"""

from __future__ import annotations

import re
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Final, cast

from sqlglot import exp

try:
    from mypy_extensions import mypyc_attr  # present where dbmesh/native.py compiles this module
except ImportError:  # running the source without the build tools: the decorator does nothing
    def mypyc_attr(**_: Any) -> Callable[[type], type]:  # type: ignore[no-redef,misc]
        return lambda cls: cls

from . import conditions, planner
from .algorithms import IndexedAlgorithm, NoTargetError, ShardingAlgorithm, target_with_suffix
from .errors import ShardingError
from .planner import MEMOS, Plan, RouteUnit, parse_statement, plan
from .rules import DataNode, ExactValues

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "Z": "\x1a"}
_UNCACHEABLE: Any = object()
# Where a literal may stand and still be a routing value rather than part of the result shape.
_VALUE_CLAUSES = (exp.Where, exp.Values, exp.Tuple)


def _string_value(text: str) -> str:
    body = text[1:-1].replace("''", "'")
    if "\\" not in body:
        return body
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body, flags=re.S)


def _number_value(text: str) -> Any:
    if text.isdigit():
        return int(text)
    return Decimal(text)


# What each ASCII character is to the literal scanner (_split).
_OTHER: Final = 0
_WORD: Final = 1      # part of an identifier, a qualifier or a variable: digits after it are too
_DIGIT: Final = 2
_REFUSED: Final = 3   # a comment may start, or ? " : (placeholders, identifiers, markers)


def _character_classes() -> bytes:
    table = bytearray([_OTHER] * 128)
    for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_$@`.":
        table[ord(c)] = _WORD
    for c in "0123456789":
        table[ord(c)] = _DIGIT
    for c in "?\":#":
        table[ord(c)] = _REFUSED
    return bytes(table)


_CLASS: Final = _character_classes()
_COMPILED: Final = not __file__.endswith(".py")
_NUMBERED_TARGETS_MAX: Final = 4096  # shard numbers mapped ahead per algorithm (a point shape's direct route)


def _split(sql: str) -> list[str] | None:
    """The text cut at its literals (text, literal, ..., text), or None when it has no
    literal or something the cheap scan cannot see through: a comment, ``?``, a double
    quote or a colon, a hex, bit or charset-prefixed string, an unterminated string. A
    literal is a quoted string or a number not glued to an identifier (t_order_1, `1`, @v2,
    5abc). It runs on every sharded text statement: compiled (dbmesh/native.py), a loop
    over the characters is three to five times cheaper than the regular expression; run as
    Python source, the regular expression is three times cheaper than that loop. What both
    accept they cut alike (tests/test_plan_cache.py); the expression also refuses those
    characters inside strings, where the loop reads them as the string's text."""
    return _scan_literals(sql) if _COMPILED else _regex_split(sql)


# A quoted string, or a number not glued to an identifier (t_order_1) or a qualifier; as the
# separator of re.split: text, literal, text, literal, ..., text in one C call. A string
# left open runs to the end (\Z), so a long one is one match, not a scan to the end from
# each of its quotes; _regex_split then refuses it, as the character scanner does.
_STRING_OPENED: Final = r"'(?:[^'\\]|\\.|'')*"  # a quote and the string's text, not its closing quote
_LITERAL_SPLIT = re.compile(r"(" + _STRING_OPENED + r"(?:'|\Z)"
                            r"|(?<![\w.`$@])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.`$]))", re.S)
_CLOSED_STRING = re.compile(_STRING_OPENED + "'", re.S)


def _regex_split(sql: str) -> list[str] | None:
    if "/*" in sql or "--" in sql or "#" in sql or "?" in sql or '"' in sql or ":" in sql:
        return None
    pieces = _LITERAL_SPLIT.split(sql)
    if len(pieces) == 1:
        return None
    if not pieces[-1] and pieces[-2][0] == "'" and not _CLOSED_STRING.fullmatch(pieces[-2]):
        return None  # an unterminated string
    for i in range(1, len(pieces), 2):
        before = pieces[i - 1][-1:]
        if pieces[i][0] == "'" and (before.isalnum() or before == "_"):
            return None  # x'0A', b'01', N'..', _utf8mb4'..': the prefix changes what the string means
    return pieces


def _scan_literals(sql: str) -> list[str] | None:
    pieces: list[str] = []
    n = len(sql)
    start = i = 0
    while i < n:
        code = ord(sql[i])
        kind = _CLASS[code] if code < 128 else _WORD  # non-ASCII: identifier text (inlined: per character)
        if code == 39:  # '
            if i > start and (sql[i - 1].isalnum() or sql[i - 1] == "_"):
                return None  # x'0A', b'01', N'..', _utf8mb4'..': the prefix changes what it means
            end = _string_end(sql, i + 1, n)
            if end < 0:
                return None
            pieces.append(sql[start:i])
            pieces.append(sql[i:end])
            start = i = end
        elif kind == _DIGIT:
            end = _number_end(sql, i, n)
            if end < n and (sql[end].isalnum() or sql[end] in "_.`$"):
                i = _word_end(sql, i, n)  # 5abc, 1.x: an identifier, not a number
                continue
            pieces.append(sql[start:i])
            pieces.append(sql[i:end])
            start = i = end
        elif kind == _WORD:
            i = _word_end(sql, i + 1, n)
        elif kind == _REFUSED or (code == 47 and sql.startswith("*", i + 1)) \
                or (code == 45 and sql.startswith("-", i + 1)):  # /* --
            return None
        else:
            i += 1
    if not pieces:
        return None
    pieces.append(sql[start:])
    return pieces


def _string_end(sql: str, i: int, n: int) -> int:
    """Just past the quote that closes the string whose text starts at ``i``; -1 if none."""
    while i < n:
        code = ord(sql[i])
        if code == 92:  # a backslash escapes the next character
            i += 2
        elif code == 39:
            if i + 1 < n and ord(sql[i + 1]) == 39:  # '' stands for one quote
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return -1


def _number_end(sql: str, i: int, n: int) -> int:
    """The end of the number at ``i``: digits, then .digits and an exponent if present."""
    i = _digits_end(sql, i, n)
    if i + 1 < n and ord(sql[i]) == 46 and _is_digit(sql, i + 1):
        i = _digits_end(sql, i + 1, n)
    if i + 1 < n and ord(sql[i]) in (69, 101):  # e E
        j = i + 2 if ord(sql[i + 1]) in (43, 45) else i + 1  # + -
        if j < n and _is_digit(sql, j):
            i = _digits_end(sql, j, n)
    return i


def _is_digit(sql: str, i: int) -> bool:
    code = ord(sql[i])
    return 48 <= code <= 57


def _digits_end(sql: str, i: int, n: int) -> int:
    while i < n:
        code = ord(sql[i])
        if code < 48 or code > 57:
            break
        i += 1
    return i


def _word_end(sql: str, i: int, n: int) -> int:
    """The end of an identifier's run of word characters and digits from ``i``."""
    while i < n:
        code = ord(sql[i])
        if code < 128 and _CLASS[code] != _WORD and _CLASS[code] != _DIGIT:
            break
        i += 1
    return i


def _shape(pieces: list[str]) -> str:
    """The texts between literals joined with numbered placeholders."""
    out = [pieces[0]]
    for n, text in enumerate(pieces[2::2]):
        out.append(f":{conditions.PLACEHOLDER_PREFIX}{n}")
        out.append(text)
    return "".join(out)


def normalise(sql: str) -> tuple[str, list[str]] | None:
    """(shape with numbered placeholders, literal texts in order), or None when the text has
    something the cheap scan cannot see through (comments, ?, hex or charset literals)."""
    pieces = _split(sql)
    if pieces is None:
        return None
    return _shape(pieces), pieces[1::2]


def put_back(text: str, literals: list[str]) -> str:
    """SQL generated from a shape, with each placeholder replaced by its literal's text."""
    return _filled(_template(text), literals)


def _template(rendered: str) -> list[Any]:
    """SQL generated from a shape, split at its placeholders: text, literal number (an int),
    text, ..., text."""
    pieces = conditions.PLACEHOLDER_MARKER.split(rendered)
    return [int(piece) if i % 2 else piece for i, piece in enumerate(pieces)]


def _filled(template: list[Any], literals: list[str]) -> str:
    """A _template with the client's literal texts put back in."""
    out = template.copy()
    for i in range(1, len(out), 2):
        out[i] = literals[out[i]]
    return "".join(out)


def _literals_route_only(tree: exp.Expression) -> bool:
    """Every placeholder is inside WHERE, VALUES or an UPDATE's SET (never the select list,
    ORDER/GROUP BY, HAVING, LIMIT), so it can only change the route, not the result shape."""
    for node in tree.walk():
        if not isinstance(node, exp.Placeholder):
            continue
        parent = node.parent
        while parent is not None and not isinstance(parent, _VALUE_CLAUSES):
            if isinstance(parent, (exp.Order, exp.Group, exp.Having, exp.Limit, exp.Offset)):
                return False
            if parent.parent is not None and parent.arg_key == "expressions" and isinstance(parent.parent, exp.Select):
                return False
            if isinstance(parent, exp.EQ) and isinstance(parent.parent, exp.Update):
                break
            parent = parent.parent
        if parent is None:
            return False
    return True


class PointShape:
    """A shape whose route is one table's node picked by equalities on its sharding columns
    (``WHERE id = 5 AND ...``): a hit routes it from those literals alone, without the
    planner's walk of the tree. Built only for shapes where that is provably what the full
    planner does (see point_shape); anything else keeps the full route."""

    __slots__ = ("kind", "rule", "table", "positions", "locking", "tree", "text_checked", "_db_algorithm",
                 "_db_index", "_db_targets", "_table_algorithm", "_table_index", "_table_targets", "_tables",
                 "_templates", "_nodes")

    def __init__(self, kind: str, rule: Any, table: str, positions: tuple[tuple[str, int], ...], locking: bool,
                 tree: exp.Expression):
        self.kind = kind              # select | update | delete
        self.rule = rule              # the table's TableRule
        self.table = table            # lower-case logical name
        self.positions = positions    # (sharding column, literal index) pairs
        self.locking = locking
        self.tree = tree              # the shape's parsed tree (the plan cache's, or a prepared statement's)
        # Set by the frontend once a text of this shape passed its statement checks, which
        # look only at the text around the literals (frontend/fast_lane.py).
        self.text_checked = False
        # The direct route (see _direct_route): each dimension's algorithm and the index of its
        # value; no table algorithm when each data source has one table. No database
        # algorithm: the shape takes TableRule.route.
        self._db_algorithm: ShardingAlgorithm | None = None
        self._db_index = -1
        self._table_algorithm: ShardingAlgorithm | None = None
        self._table_index = -1
        # For an algorithm that picks by shard number: each number's data source, and each
        # data source's tables by number (see _numbered_targets).
        self._db_targets: dict[int, str] | None = None
        self._table_targets: dict[str, dict[int, str] | None] = {}
        self._tables: dict[str, tuple[str, ...]] = dict(rule.tables_by_source)  # per data source
        self._direct_route()
        # actual table -> the SQL rendered for it, split at its placeholders (their numbers as
        # ints): a hit only puts the literal texts back in.
        self._templates: dict[str, list[Any]] = {}
        self._nodes: dict[tuple[str, str], DataNode] = {}  # the direct route's nodes, made once

    def _direct_route(self) -> None:
        """Take the direct route when each dimension is one single-column algorithm (or no
        table strategy over one table per data source): then a node is two shard() calls,
        not TableRule.route's general walk."""
        rule, index = self.rule, dict(self.positions)

        def simple(strategy: Any) -> bool:
            return strategy is not None and len(strategy.columns) == 1 and not strategy.algorithm.multi_column

        db, tb = rule.database_strategy, rule.table_strategy
        if not simple(db) or not (simple(tb) or (tb is None and all(
                len(tables) == 1 for tables in self._tables.values()))):
            return
        self._db_algorithm, self._db_index = db.algorithm, index[db.columns[0].lower()]
        self._db_targets = _numbered_targets(db.algorithm, rule.data_sources)
        if tb is not None:
            self._table_algorithm, self._table_index = tb.algorithm, index[tb.columns[0].lower()]
            self._table_targets = {ds: _numbered_targets(tb.algorithm, tables) for ds, tables in self._tables.items()}

    def node(self, values: Sequence[Any]) -> Any:
        """The DataNode for these literal values, or None when the full path must decide."""
        if self._db_algorithm is not None:
            node = self._direct_node(values)
            if node is not None:
                return node
        conds = {column: ExactValues((values[i],)) for column, i in self.positions}
        nodes = self.rule.route(conds)
        if len(nodes) > 1:
            return None  # an algorithm that cannot narrow to one node
        return nodes[0] if nodes else self.rule.data_nodes[0]  # as the planner: ask one node

    def _direct_node(self, values: Sequence[Any]) -> DataNode | None:
        """What TableRule.route gives for one exact value per column, computed directly; None
        (then route() decides, and words any error) when a value routes nowhere or fails."""
        db_algorithm = self._db_algorithm
        assert db_algorithm is not None
        try:
            value = values[self._db_index]
            db_targets = self._db_targets
            ds = db_algorithm.shard(self.rule.data_sources, value) if db_targets is None \
                else db_targets.get(cast(IndexedAlgorithm, db_algorithm).index_of(value))
            if ds is None:
                return None
            tables = self._tables.get(ds)
            if tables is None:
                return None
            table_algorithm = self._table_algorithm
            table: str | None = tables[0]
            if table_algorithm is not None:
                value = values[self._table_index]
                table_targets = self._table_targets.get(ds)
                table = table_algorithm.shard(tables, value) if table_targets is None \
                    else table_targets.get(cast(IndexedAlgorithm, table_algorithm).index_of(value))
                if table is None:
                    return None
        except ShardingError:
            return None
        if table not in tables:
            return None
        node = self._nodes.get((ds, table))
        if node is None:
            node = self._nodes[ds, table] = DataNode(ds, table)
        return node

    def actual_sql(self, table: str, logical_db: str, literals: list[str]) -> str:
        """The SQL of this shape on actual table ``table``, with the client's literal texts."""
        template = self._templates.get(table)
        if template is None:
            template = self._templates[table] = _template(planner._render(self.tree, {self.table: table}, logical_db))
        return _filled(template, literals)

    def plan(self, logical_db: str, values: list[Any]) -> Plan | None:
        node = self.node(values)
        if node is None:
            return None
        sql = planner._render(self.tree, {self.table: node.table}, logical_db)
        result = Plan(self.kind, [RouteUnit(node.data_source, sql)], write=self.kind != "select")
        result.locking = self.locking
        return result


def _numbered_targets(algorithm: ShardingAlgorithm, targets: Sequence[str]) -> dict[int, str] | None:
    """Each shard number's one target, for an algorithm that picks the target by number
    (MOD, HASH_MOD, the ranges): its shard() then is a dictionary lookup. A number without
    exactly one target is left out, for the general route to word. None: not such an
    algorithm."""
    if not isinstance(algorithm, IndexedAlgorithm) or algorithm.shard_count > _NUMBERED_TARGETS_MAX:
        return None
    found: dict[int, str] = {}
    for number in range(algorithm.shard_count):
        try:
            found[number] = target_with_suffix(targets, number)
        except NoTargetError:
            pass
    return found


def point_shape(tree: exp.Expression, rules: Any, logical_db: str) -> PointShape | None:
    """The PointShape of a cached tree, or None when it needs the full planner: more than one
    table, subqueries, OR, a sharding column compared other than ``= literal`` or named more
    than once, a hint-based strategy, or an UPDATE that assigns a sharding column."""
    if not isinstance(tree, (exp.Select, exp.Update, exp.Delete)):
        return None
    if tree.find(exp.Subquery, exp.Exists, exp.Union, exp.CTE, exp.Window, exp.Join, exp.Or, exp.Xor):
        return None
    refs = planner._find_table_refs(tree, logical_db)
    tables = list(tree.find_all(exp.Table))
    if len(refs) != 1 or len(tables) != 1 or not rules.is_sharded(refs[0].name):
        return None
    ref = refs[0]
    rule = rules.table_rule(ref.name)
    if any(s is not None and s.algorithm.hint_based for s in (rule.database_strategy, rule.table_strategy)):
        return None
    columns = rule.sharding_columns
    if isinstance(tree, exp.Update) and any(
            isinstance(a.this, exp.Column) and a.this.name.lower() in columns for a in tree.expressions):
        return None
    where = tree.args.get("where")
    if where is None or not columns:
        return None
    named = dict.fromkeys(columns, 0)
    for column in where.find_all(exp.Column):
        if column.name.lower() in named:
            named[column.name.lower()] += 1
    if any(count != 1 for count in named.values()):
        return None
    qualifiers = {None, ref.name, ref.alias}
    positions = []
    for conjunct in planner._conjuncts(where.this):
        if not isinstance(conjunct, exp.EQ):
            continue
        for col, value in ((conjunct.this, conjunct.expression), (conjunct.expression, conjunct.this)):
            if (isinstance(col, exp.Column) and col.name.lower() in columns and isinstance(value, exp.Placeholder)
                    and (col.table.lower() if col.table else None) in qualifiers):
                index = conditions.placeholder_positions(tree).get(id(value))
                if index is not None:
                    positions.append((col.name.lower(), index))
    if sorted(c for c, _ in positions) != sorted(columns):
        return None
    kind = "select" if isinstance(tree, exp.Select) else "update" if isinstance(tree, exp.Update) else "delete"
    return PointShape(kind, rule, ref.name, tuple(positions), bool(tree.find(exp.Lock)), tree)


def routes_by_values(tree: exp.Expression) -> bool:
    """Can a prepared statement's tree be planned with its parameters as values (placeholders
    kept) rather than bound into it? Yes when every placeholder only routes (see
    _literals_route_only): then its plan, and the SQL of each route, hold for any values."""
    return _literals_route_only(tree)


def _forget_memos(*caches: OrderedDict[Any, Any]) -> None:
    for trees in caches:
        for tree in trees.values():
            MEMOS.pop(id(tree), None)


@mypyc_attr(native_class=False)
class _MemoKeeper:
    """Held only by one PlanCache, so it goes away with it. MEMOS is keyed by id(tree): when a
    cache goes away (tests make many), its memos must too, or a new tree that reuses a freed
    id would render with a dead tree's memo. The finalizer hangs on this plain Python object
    because it needs a weak reference, which mypyc's native classes (PlanCache, compiled by
    dbmesh/native.py) do not take."""


class PlanCache:
    def __init__(self, capacity: int = 2048):
        self.capacity = capacity
        self._trees: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        # key -> PointShape, or None when the shape needs the full planner
        self._points: dict[tuple[str, ...], PointShape | None] = {}
        self._templates: dict[str, list[Any]] = {}
        # (logical database, prepared statement text) -> its tree, shared by the sessions
        self._statements: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self._memo_keeper = _MemoKeeper()
        weakref.finalize(self._memo_keeper, _forget_memos, self._trees, self._statements)

    def statement(self, sql: str, logical_db: str, parse: Callable[[str], exp.Expression]) -> exp.Expression:
        """The parsed tree of a prepared statement's text (``parse`` on a miss), shared by every
        session that prepares the same text, with a render memo as the literal shapes have.
        A tree pushed out of the cache stays right for the statements that hold it (it only
        loses its memo)."""
        key = (logical_db, sql)
        tree = self._statements.get(key)
        if tree is not None:
            self._statements.move_to_end(key)
            return tree
        tree = self._statements[key] = parse(sql)
        MEMOS[id(tree)] = {}
        if len(self._statements) > self.capacity:
            _, evicted = self._statements.popitem(last=False)
            MEMOS.pop(id(evicted), None)
        return tree

    def plan(self, sql: str, rules: Any, logical_db: str) -> Plan | None:
        """The plan for ``sql`` through the cache, or None to take the full path."""
        pieces = _split(sql)
        if pieces is None:
            return None
        literals = pieces[1::2]
        key = (logical_db, *pieces[0::2])  # the shape, without building its text on a hit
        tree = self._trees.get(key)
        if tree is None:
            self.misses += 1
            tree = self._parse(_shape(pieces))
            self._trees[key] = tree
            if tree is not _UNCACHEABLE:
                MEMOS[id(tree)] = {}
            if len(self._trees) > self.capacity:
                evicted_key, evicted = self._trees.popitem(last=False)
                MEMOS.pop(id(evicted), None)
                self._points.pop(evicted_key, None)
        else:
            self.hits += 1
            self._trees.move_to_end(key)
        if tree is _UNCACHEABLE:
            return None
        values = [_string_value(t) if t[0] == "'" else _number_value(t) for t in literals]
        result = self._point_plan(key, tree, rules, logical_db, values)
        if result is None:
            result = plan(tree, rules, logical_db, params=values)
        result.units = [RouteUnit(u.data_source, self._fill(u.sql, literals)) for u in result.units]
        return result

    def point_read(self, sql: str, logical_db: str) -> tuple[str, str, PointShape] | None:
        """(data source, actual SQL, shape) of a SELECT whose shape is a known point shape
        without locking (one plan() has seen), found from its sharding literals alone: no
        Plan, no conversion of the other literals. None: ask plan(). The caller makes sure
        that no routing hints apply."""
        pieces = _split(sql)
        if pieces is None:
            return None
        point = self._points.get((logical_db, *pieces[0::2]))
        if point is None or point.kind != "select" or point.locking:
            return None
        literals = pieces[1::2]
        values: list[Any] = [None] * len(literals)
        for _, i in point.positions:
            text = literals[i]
            values[i] = _string_value(text) if text[0] == "'" else _number_value(text)
        node = point.node(values)
        if node is None:
            return None
        self.hits += 1
        return node.data_source, point.actual_sql(node.table, logical_db, literals), point

    def _fill(self, sql: str, literals: list[str]) -> str:
        """``sql`` with each placeholder marker replaced by the client's literal text; the
        split of a rendered SQL is kept (a few distinct texts per shape, reused per hit)."""
        template = self._templates.get(sql)
        if template is None:
            if len(self._templates) > 4 * self.capacity:
                self._templates.clear()
            template = self._templates[sql] = _template(sql)
        return _filled(template, literals)

    def _point_plan(self, key: tuple[str, ...], tree: exp.Expression, rules: Any, logical_db: str,
                    values: list[Any]) -> Plan | None:
        """The plan of a point shape, or None for the full planner. Session or comment hints
        (HINT strategies) make every shape take the full path."""
        hints = planner.ROUTING_HINTS.get()
        if hints.database or hints.table:
            return None
        if key in self._points:
            point = self._points[key]
        else:
            point = self._points[key] = point_shape(tree, rules, logical_db)
        if point is None:
            return None
        return point.plan(logical_db, values)

    @staticmethod
    def _parse(shape: str) -> Any:
        try:
            tree = parse_statement(shape)
        except Exception:  # noqa: BLE001 - any shape sqlglot cannot take goes the full way
            return _UNCACHEABLE
        if not isinstance(tree, (exp.Select, exp.Update, exp.Delete, exp.Insert)) or not _literals_route_only(tree):
            return _UNCACHEABLE
        return tree
