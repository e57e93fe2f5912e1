"""Is a statement shadow traffic? (pure: no I/O)

A statement is shadow traffic when it carries the hint ``/* dbmesh:shadow */``, when the
session set ``dbmesh_shadow = 1``, or when a column rule of a shadowed table matches:
INSERT by the values of its rows, UPDATE / DELETE / SELECT by equality conditions in the
WHERE clause (``col = v``, ``col IN (...)``, combined with AND / OR). ``/* dbmesh:shadow=0 */``
marks a statement as production even in a shadow session.

A statement that would touch both kinds of rows (a multi-row INSERT with rows of both
kinds, a WHERE that selects shadow rows in one OR branch and production rows in another,
``IN`` over values of both kinds, an UPDATE that would move a row from one side to the
other) raises ShadowError: it is refused rather than half-routed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlglot import exp

from sharding.conditions import is_constant, literal_value
from sharding.planner import is_dropped_index

from .rules import ShadowAlgorithm, ShadowRules

HINT = re.compile(r"/\*\+?\s*dbmesh:shadow(?:\s*=\s*(\w+))?\s*\*/", re.I)
HINT_BYTES = re.compile(rb"/\*\+?\s*dbmesh:shadow(?:\s*=\s*(\w+))?\s*\*/", re.I)
_TRUE = {"1", "on", "true", "yes"}
_FALSE = {"0", "off", "false", "no"}
MAX_ALTERNATIVES = 64


class ShadowError(Exception):
    """The statement cannot be routed as shadow or production traffic; the message says why."""


@dataclass(frozen=True)
class Decision:
    shadow: bool
    reason: str = ""     # hint | session | algorithm name; "" for production without a rule


PRODUCTION = Decision(False)


def parse_flag(text: str) -> bool:
    value = text.strip().strip("'\"`").lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ShadowError(f"dbmesh_shadow must be 1 or 0 (ON/OFF), not {text.strip()!r}")


def hint_of(sql: bytes | str) -> bool | None:
    """The statement's own mark: True (shadow), False (``dbmesh:shadow=0``), None (no hint)."""
    if isinstance(sql, bytes):
        if b"dbmesh:" not in sql:
            return None
        m = HINT_BYTES.search(sql)
        value = m.group(1).decode() if m and m.group(1) else None
    else:
        if "dbmesh:" not in sql:
            return None
        m = HINT.search(sql)
        value = m.group(1) if m and m.group(1) else None
    if m is None:
        return None
    return True if value is None else parse_flag(value)


def marked(sql: bytes | str, session_flag: bool) -> Decision | None:
    """A decision from the hint or the session setting, before any parse; None: look at the rules."""
    hint = hint_of(sql)
    if hint is not None:
        return Decision(hint, "hint")
    if session_flag:
        return Decision(True, "session")
    return None


# ---------------------------------------------------------------------------------------


def table_refs(tree: exp.Expression, own_dbs: Iterable[str]) -> list[tuple[exp.Table, str]]:
    """(node, lower-case name) of the tables a statement names in this database (CTE names
    and tables of other databases left out)."""
    own = {d.lower() for d in own_dbs if d}
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    refs = []
    for node in tree.find_all(exp.Table):
        if not node.name or is_dropped_index(node):
            continue
        if node.db and node.db.lower() not in own:
            continue
        name = node.name.lower()
        if name in ctes and not node.db:
            continue
        refs.append((node, name))
    return refs


def _operation(tree: exp.Expression) -> str | None:
    if isinstance(tree, exp.Insert):
        return "insert"
    if isinstance(tree, exp.Update):
        return "update"
    if isinstance(tree, exp.Delete):
        return "delete"
    if isinstance(tree, (exp.Select, exp.Union, exp.Intersect, exp.Except)):
        return "select"
    return None


def decide(tree: exp.Expression, rules: ShadowRules, own_dbs: Iterable[str]) -> Decision:
    """Shadow or production by the column rules (the hint and the session are looked at by
    marked() first)."""
    op = _operation(tree)
    if op is None or not rules.has_algorithms:
        return PRODUCTION
    refs = table_refs(tree, own_dbs)
    by_alias: dict[str, tuple[ShadowAlgorithm, ...]] = {}
    for node, name in refs:
        table = rules.tables.get(name)
        if table is None:
            continue
        algorithms = tuple(a for a in table.algorithms if op in a.operations)
        if algorithms:
            by_alias[(node.alias or node.name).lower()] = algorithms
            by_alias.setdefault(name, algorithms)
    if not by_alias:
        return PRODUCTION
    if isinstance(tree, exp.Insert):
        return _decide_insert(tree, by_alias)
    if isinstance(tree, (exp.Union, exp.Intersect, exp.Except)):
        sides = [decide(side, rules, own_dbs) for side in (tree.left, tree.right)]
        if sides[0].shadow != sides[1].shadow:
            raise ShadowError("one side of the UNION reads shadow rows and the other production rows; run them "
                              "as separate statements")
        return sides[0]
    decision = _decide_where(tree.args.get("where"), by_alias, tree)
    if isinstance(tree, exp.Update):
        _check_assignments(tree, by_alias, decision)
    return decision


def _decide_insert(tree: exp.Insert, by_alias: dict[str, tuple[ShadowAlgorithm, ...]]) -> Decision:
    target = tree.this
    table = target.this if isinstance(target, exp.Schema) else target
    if not isinstance(table, exp.Table):
        return PRODUCTION
    algorithms = by_alias.get(table.name.lower())
    values = tree.expression
    if not algorithms or not isinstance(values, exp.Values):
        return PRODUCTION
    if not isinstance(target, exp.Schema) or not target.expressions:
        raise ShadowError(f"an INSERT into {table.name} must list its columns, so that shadow rule "
                          f"'{algorithms[0].name}' can see column {algorithms[0].column}")
    columns = [c.name.lower() for c in target.expressions]
    shadow_rows = production_rows = 0
    reason = ""
    for row in values.expressions:
        items = list(row.expressions) if isinstance(row, exp.Tuple) else [row]
        row_values = dict(zip(columns, items, strict=False))
        matched = None
        for algorithm in algorithms:
            node = row_values.get(algorithm.column)
            if node is None:
                continue
            value = literal_value(node, None, {})
            if is_constant(value) and algorithm.matches(value):
                matched = algorithm.name
                break
        if matched:
            shadow_rows += 1
            reason = reason or matched
        else:
            production_rows += 1
    if shadow_rows and production_rows:
        raise ShadowError(f"the INSERT into {table.name} mixes {shadow_rows} shadow row(s) (matching shadow "
                          f"rule '{reason}') with {production_rows} production row(s); insert shadow rows in "
                          "their own statement")
    return Decision(True, reason) if shadow_rows else PRODUCTION


# A condition: the algorithms a column is tested by, and the values it may take.
_Cond = tuple[tuple[ShadowAlgorithm, ...], tuple[object, ...]]


def _decide_where(where: exp.Expression | None, by_alias: dict[str, tuple[ShadowAlgorithm, ...]],
                  tree: exp.Expression) -> Decision:
    if where is None:
        return PRODUCTION
    if isinstance(where, exp.Where):
        where = where.this

    def algorithms_of(column: exp.Column) -> tuple[ShadowAlgorithm, ...]:
        name = column.name.lower()
        qualifier = column.table.lower() if column.table else None
        if qualifier is not None:
            return tuple(a for a in by_alias.get(qualifier, ()) if a.column == name)
        found: dict[int, ShadowAlgorithm] = {}
        for algorithms in by_alias.values():
            for a in algorithms:
                if a.column == name:
                    found[id(a)] = a
        return tuple(found.values())

    alternatives = _dnf(where, algorithms_of)
    verdicts = [_alternative_verdict(alt) for alt in alternatives]
    shadow = [v for v in verdicts if v[0] == "shadow"]
    if any(v[0] == "mixed" for v in verdicts) or (shadow and len(shadow) != len(verdicts)):
        what = next((v[1] for v in verdicts if v[0] == "mixed"), None) or (shadow[0][1] if shadow else "")
        raise ShadowError(f"the WHERE clause selects both shadow rows (shadow rule '{what}') and production "
                          "rows; query each kind with its own statement")
    if shadow:
        return Decision(True, shadow[0][1])
    return PRODUCTION


def _alternative_verdict(conditions: list[_Cond]) -> tuple[str, str]:
    """A conjunction of conditions: shadow if one of them pins a matching value, mixed if
    one allows values of both kinds, else production."""
    mixed = ""
    for algorithms, values in conditions:
        for algorithm in algorithms:
            hits = [algorithm.matches(v) for v in values]
            if hits and all(hits):
                return "shadow", algorithm.name
            if any(hits):
                mixed = mixed or algorithm.name
    return ("mixed", mixed) if mixed else ("production", "")


def _dnf(node: exp.Expression, algorithms_of) -> list[list[_Cond]]:
    """Alternatives (OR) of conjunctions (AND) of conditions on rule columns."""
    if isinstance(node, exp.Paren):
        return _dnf(node.this, algorithms_of)
    if isinstance(node, exp.And):
        left, right = _dnf(node.this, algorithms_of), _dnf(node.expression, algorithms_of)
        if len(left) * len(right) > MAX_ALTERNATIVES:
            return [[]]
        return [a + b for a in left for b in right]
    if isinstance(node, exp.Or):
        combined = _dnf(node.this, algorithms_of) + _dnf(node.expression, algorithms_of)
        return combined if len(combined) <= MAX_ALTERNATIVES else [[]]
    if isinstance(node, exp.EQ):
        for column, other in ((node.this, node.expression), (node.expression, node.this)):
            if isinstance(column, exp.Column):
                algorithms = algorithms_of(column)
                value = literal_value(other, None, {})
                if algorithms and is_constant(value) and value is not None:
                    return [[(algorithms, (value,))]]
        return [[]]
    if isinstance(node, exp.In) and not node.args.get("query") and isinstance(node.this, exp.Column):
        algorithms = algorithms_of(node.this)
        values = [literal_value(v, None, {}) for v in node.expressions]
        if algorithms and values and all(is_constant(v) for v in values):
            return [[(algorithms, tuple(v for v in values if v is not None))]]
    return [[]]


def _check_assignments(tree: exp.Update, by_alias: dict[str, tuple[ShadowAlgorithm, ...]],
                       decision: Decision) -> None:
    """UPDATE ... SET rule_column = value must not turn a row into the other kind."""
    for assignment in tree.expressions:
        column = assignment.this
        if not isinstance(column, exp.Column):
            continue
        qualifier = column.table.lower() if column.table else None
        pools = [by_alias.get(qualifier, ())] if qualifier else list(by_alias.values())
        for algorithms in pools:
            for algorithm in algorithms:
                if algorithm.column != column.name.lower():
                    continue
                value = literal_value(assignment.expression, None, {})
                if not is_constant(value):
                    continue
                if algorithm.matches(value) != decision.shadow:
                    kind = "shadow" if decision.shadow else "production"
                    raise ShadowError(f"the UPDATE sets {column.name} of {kind} rows to {value!r}, which would "
                                      f"make them {'production' if decision.shadow else 'shadow'} rows (shadow "
                                      f"rule '{algorithm.name}'); rows cannot move between production and shadow")
