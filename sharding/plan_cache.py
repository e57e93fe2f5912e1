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
from collections import OrderedDict
from decimal import Decimal
from typing import Any

from sqlglot import exp

from . import conditions
from .planner import MEMOS, Plan, RouteUnit, parse_statement, plan

# A quoted string, or a number not glued to an identifier (t_order_1) or a qualifier.
_LITERAL = re.compile(
    r"'(?:[^'\\]|\\.|'')*'"
    r"|(?<![\w.`$@])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.`$])",
    re.S,
)
_MARKER = re.compile(r":" + conditions.PLACEHOLDER_PREFIX + r"(\d+)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "Z": "\x1a"}
_UNCACHEABLE = object()
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


def normalise(sql: str) -> tuple[str, list[str]] | None:
    """(shape with numbered placeholders, literal texts in order), or None when the text has
    something the cheap scan cannot see through (comments, ?, hex or charset literals)."""
    if "/*" in sql or "--" in sql or "#" in sql or "?" in sql or '"' in sql or ":" in sql:
        return None
    literals: list[str] = []
    prefixed = False

    def cut(match: re.Match[str]) -> str:
        nonlocal prefixed
        text = match.group(0)
        # x'0A', b'01', N'..', _utf8mb4'..': the prefix changes what the string means.
        prefixed |= text[0] == "'" and match.start() > 0 and (sql[match.start() - 1].isalnum()
                                                               or sql[match.start() - 1] == "_")
        literals.append(text)
        return f":{conditions.PLACEHOLDER_PREFIX}{len(literals) - 1}"

    shape = _LITERAL.sub(cut, sql)
    if not literals or prefixed:
        return None
    return shape, literals


def put_back(text: str, literals: list[str]) -> str:
    """SQL generated from a shape, with each placeholder replaced by its literal's text."""
    return _MARKER.sub(lambda m: literals[int(m.group(1))], text)


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


class PlanCache:
    def __init__(self, capacity: int = 2048):
        self.capacity = capacity
        self._trees: OrderedDict[str, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def plan(self, sql: str, rules: Any, logical_db: str) -> Plan | None:
        """The plan for ``sql`` through the cache, or None to take the full path."""
        normalised = normalise(sql)
        if normalised is None:
            return None
        shape, literals = normalised
        key = f"{logical_db}\0{shape}"
        tree = self._trees.get(key)
        if tree is None:
            self.misses += 1
            tree = self._parse(shape)
            self._trees[key] = tree
            if tree is not _UNCACHEABLE:
                MEMOS[id(tree)] = {}
            if len(self._trees) > self.capacity:
                _, evicted = self._trees.popitem(last=False)
                MEMOS.pop(id(evicted), None)
        else:
            self.hits += 1
            self._trees.move_to_end(key)
        if tree is _UNCACHEABLE:
            return None
        values = [_string_value(t) if t[0] == "'" else _number_value(t) for t in literals]
        result = plan(tree, rules, logical_db, params=values)
        result.units = [RouteUnit(u.data_source, put_back(u.sql, literals)) for u in result.units]
        return result

    @staticmethod
    def _parse(shape: str) -> Any:
        try:
            tree = parse_statement(shape)
        except Exception:  # noqa: BLE001 - any shape sqlglot cannot take goes the full way
            return _UNCACHEABLE
        if not isinstance(tree, (exp.Select, exp.Update, exp.Delete, exp.Insert)) or not _literals_route_only(tree):
            return _UNCACHEABLE
        return tree
