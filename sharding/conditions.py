"""Sharding conditions from a WHERE clause: which values a sharding column may take.

The result is a list of alternatives (one per OR branch), each mapping a lower-case column
name to ExactValues or ValueRange. An alternative without a column leaves that column
unconstrained, so routing every alternative and taking the union of the nodes is always a
superset of the nodes holding matching rows; that is what keeps routing safe.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from sqlglot import exp

from .rules import ConditionValue, ExactValues, ValueRange

Alternatives = list[dict[str, ConditionValue]]

# Above this many OR alternatives, routing gives up narrowing (all nodes).
MAX_ALTERNATIVES = 64

_NOT_CONSTANT = object()


def literal_value(node: exp.Expression, params: Sequence[Any] | None,
                  placeholder_index: Mapping[int, int]) -> Any:
    """The Python value of a constant expression, or _NOT_CONSTANT."""
    if isinstance(node, exp.Paren):
        return literal_value(node.this, params, placeholder_index)
    if isinstance(node, exp.Literal):
        text = node.this
        if node.is_string:
            return text
        try:
            return int(text)
        except ValueError:
            return Decimal(text)
    if isinstance(node, exp.Neg):
        inner = literal_value(node.this, params, placeholder_index)
        return -inner if isinstance(inner, (int, Decimal, float)) else _NOT_CONSTANT
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Boolean):
        return 1 if node.this else 0
    if isinstance(node, exp.Placeholder) and params is not None:
        index = placeholder_index.get(id(node))
        if index is not None and index < len(params):
            return params[index]
    return _NOT_CONSTANT


def is_constant(value: Any) -> bool:
    return value is not _NOT_CONSTANT


PLACEHOLDER_PREFIX = "dbmeshp"
# A numbered placeholder as SQL rendered from a tree shows it (:dbmeshp0); group 1: the number.
PLACEHOLDER_MARKER = re.compile(r":" + PLACEHOLDER_PREFIX + r"(\d+)")


def number_placeholders(sql: str, dialect: str = "mysql") -> str:
    """Name each `?` by its position (``:dbmeshp0``, ...) so the parsed tree keeps the order
    of the statement text (sqlglot reorders e.g. ``LIMIT ?, ?`` into LIMIT/OFFSET)."""
    import sqlglot
    from sqlglot.tokens import TokenType

    if "?" not in sql:
        return sql
    marks = [t.start for t in sqlglot.tokenize(sql, read=dialect) if t.token_type == TokenType.PLACEHOLDER]
    for index in reversed(range(len(marks))):
        pos = marks[index]
        sql = f"{sql[:pos]}:{PLACEHOLDER_PREFIX}{index}{sql[pos + 1:]}"
    return sql


def placeholder_positions(tree: exp.Expression) -> dict[int, int]:
    """Map each placeholder node (by id) to its position among the statement's parameters."""
    positions = {}
    anonymous = 0
    for node in tree.walk(bfs=False):
        if not isinstance(node, exp.Placeholder):
            continue
        name = node.name
        if name.startswith(PLACEHOLDER_PREFIX) and name[len(PLACEHOLDER_PREFIX):].isdigit():
            positions[id(node)] = int(name[len(PLACEHOLDER_PREFIX):])
        else:
            positions[id(node)] = anonymous
            anonymous += 1
    return positions


def extract(where: exp.Expression | None, is_sharding_column: Callable[[exp.Column], str | None],
            params: Sequence[Any] | None, placeholder_index: Mapping[int, int]) -> Alternatives:
    """Alternatives of column conditions implied by ``where``.

    ``is_sharding_column`` returns the lower-case sharding column name a Column refers to,
    or None when it is not a sharding column of a routed table.
    """
    if where is None:
        return [{}]
    if isinstance(where, exp.Where):
        where = where.this
    return _extract(where, is_sharding_column, params, placeholder_index)


def _extract(node: exp.Expression, column_of: Callable[[exp.Column], str | None],
             params: Sequence[Any] | None, positions: Mapping[int, int]) -> Alternatives:
    if isinstance(node, exp.Paren):
        return _extract(node.this, column_of, params, positions)
    if isinstance(node, exp.And):
        left = _extract(node.this, column_of, params, positions)
        right = _extract(node.expression, column_of, params, positions)
        if len(left) * len(right) > MAX_ALTERNATIVES:
            return [{}]
        return [_intersect(a, b) for a in left for b in right]
    if isinstance(node, exp.Or):
        left = _extract(node.this, column_of, params, positions)
        right = _extract(node.expression, column_of, params, positions)
        combined = left + right
        if len(combined) > MAX_ALTERNATIVES or any(not alt for alt in combined):
            return [{}]
        return combined
    found = _simple_condition(node, column_of, params, positions)
    return [found] if found else [{}]


def _simple_condition(node: exp.Expression, column_of: Callable[[exp.Column], str | None],
                      params: Sequence[Any] | None, positions: Mapping[int, int]) -> dict[str, ConditionValue]:
    def column_and_value(left: exp.Expression, right: exp.Expression) -> tuple[str | None, Any]:
        if isinstance(left, exp.Column):
            name = column_of(left)
            if name:
                return name, literal_value(right, params, positions)
        return None, _NOT_CONSTANT

    if isinstance(node, exp.EQ):
        for a, b in ((node.this, node.expression), (node.expression, node.this)):
            name, value = column_and_value(a, b)
            if name and is_constant(value) and value is not None:
                return {name: ExactValues((value,))}
        return {}
    if isinstance(node, exp.In) and not node.args.get("query") and isinstance(node.this, exp.Column):
        name = column_of(node.this)
        if not name:
            return {}
        values = [literal_value(v, params, positions) for v in node.expressions]
        if values and all(is_constant(v) for v in values):
            return {name: ExactValues(v for v in values if v is not None)}
        return {}
    if isinstance(node, exp.Between) and isinstance(node.this, exp.Column):
        name = column_of(node.this)
        low = literal_value(node.args["low"], params, positions)
        high = literal_value(node.args["high"], params, positions)
        if name and is_constant(low) and is_constant(high) and low is not None and high is not None:
            return {name: ValueRange(low, high, True, True)}
        return {}
    if isinstance(node, (exp.GT, exp.GTE, exp.LT, exp.LTE)):
        flipped = False
        name, value = column_and_value(node.this, node.expression)
        if not name:
            name, value = column_and_value(node.expression, node.this)
            flipped = True
        if not name or not is_constant(value) or value is None:
            return {}
        lower_bound = isinstance(node, (exp.GT, exp.GTE)) != flipped
        inclusive = isinstance(node, (exp.GTE, exp.LTE))
        if lower_bound:
            return {name: ValueRange(low=value, low_inclusive=inclusive)}
        return {name: ValueRange(high=value, high_inclusive=inclusive)}
    return {}


def _intersect(a: dict[str, ConditionValue], b: dict[str, ConditionValue]) -> dict[str, ConditionValue]:
    """Both hold. Any superset of the true intersection is safe; keep the narrower form."""
    merged = dict(a)
    for column, cond in b.items():
        mine = merged.get(column)
        if mine is None:
            merged[column] = cond
        elif isinstance(mine, ExactValues) and isinstance(cond, ExactValues):
            # Narrow only between numbers: MySQL also equates values Python does not
            # ('5' = 5, 'a' = 'A' under a _ci collation); keeping one side is a superset.
            if all(_is_number(v) for v in (*mine.values, *cond.values)):
                merged[column] = ExactValues(v for v in mine.values if v in cond.values)
        elif isinstance(cond, ExactValues):
            merged[column] = cond
        elif isinstance(mine, ValueRange) and isinstance(cond, ValueRange):
            try:
                low, low_inc = _tighter(mine.low, mine.low_inclusive, cond.low, cond.low_inclusive, max)
                high, high_inc = _tighter(mine.high, mine.high_inclusive, cond.high, cond.high_inclusive, min)
            except TypeError:  # values of different kinds: keep one bound, still a superset
                continue
            merged[column] = ValueRange(low, high, low_inc, high_inc)
    return merged


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal))


def _tighter(a: Any, a_inclusive: bool, b: Any, b_inclusive: bool, pick: Callable[[Any, Any], Any]) -> tuple[Any, bool]:
    """The tighter of two bounds on the same side (None is unbounded)."""
    if a is None:
        return b, b_inclusive
    if b is None or a == b and a_inclusive == b_inclusive:
        return a, a_inclusive
    if a == b:
        return a, False
    return (a, a_inclusive) if pick(a, b) == a else (b, b_inclusive)
