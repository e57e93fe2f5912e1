"""Image and change SQL for UPDATE/DELETE statements that differ only in their literals.

A BASE write of an UPDATE or DELETE needs its before-image SELECT and its change restricted
to the imaged keys (``txn.snapshot``). Building them from the statement takes a sqlglot
parse and two SQL generations each time; here they are built once per statement shape —
the text with its literals cut out by the plan cache's normaliser — and the literals' own
text is put back. Statements the normaliser cannot see through, and INSERTs (whose keys
are read from the literal values), take the full path (``FullStatement``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import sqlglot
from sqlglot import exp

from sharding.plan_cache import normalise, put_back
from sharding.planner import parse_statement

from .images import TableMeta
from .snapshot import before_image_sql, fill_keys, restricted_template, statement_kind


def _target_name(tree: exp.Expression) -> str:
    target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
    return target.name if isinstance(target, exp.Table) else ""


class FullStatement:
    """One parsed statement, its SQL generated for this execution only."""

    def __init__(self, sql: str):
        self.tree = sqlglot.parse_one(sql, read="mysql")
        self.kind = statement_kind(self.tree)
        self.table = _target_name(self.tree)

    def before_sql(self, meta: TableMeta) -> str:
        return before_image_sql(self.tree, meta)

    def change_sql(self, meta: TableMeta, keys: Sequence[Sequence[Any]]) -> str:
        return fill_keys(restricted_template(self.tree, meta), meta, keys)


class _Shape:
    """The parsed shape and, for the table metadata last seen, its two SQL templates."""

    def __init__(self, tree: exp.Expression):
        self.tree = tree
        self.kind = statement_kind(tree)
        self.table = _target_name(tree)
        self.meta: TableMeta | None = None
        self.before = self.change = ""

    def templates(self, meta: TableMeta) -> tuple[str, str]:
        if self.meta is not meta:  # new table metadata (first use, or after DDL)
            self.before, self.change = before_image_sql(self.tree, meta), restricted_template(self.tree, meta)
            self.meta = meta
        return self.before, self.change


class ShapedStatement:
    """A statement of a cached shape with its own literals."""

    def __init__(self, shape: _Shape, literals: list[str]):
        self.shape, self.literals = shape, literals
        self.tree, self.kind, self.table = shape.tree, shape.kind, shape.table

    def before_sql(self, meta: TableMeta) -> str:
        return put_back(self.shape.templates(meta)[0], self.literals)

    def change_sql(self, meta: TableMeta, keys: Sequence[Sequence[Any]]) -> str:
        # Keys first: a literal's text could look like the key marker.
        return put_back(fill_keys(self.shape.templates(meta)[1], meta, keys), self.literals)


class Templates:
    """Shapes of UPDATE/DELETE statements seen, least recently used dropped first."""

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity
        self._shapes: OrderedDict[str, _Shape | None] = OrderedDict()

    def statement(self, sql: str) -> FullStatement | ShapedStatement:
        normalised = normalise(sql)
        if normalised is None:
            return FullStatement(sql)
        text, literals = normalised
        if text not in self._shapes:
            self._shapes[text] = self._shape(text)
            if len(self._shapes) > self.capacity:
                self._shapes.popitem(last=False)
        else:
            self._shapes.move_to_end(text)
        shape = self._shapes[text]
        return FullStatement(sql) if shape is None else ShapedStatement(shape, literals)

    @staticmethod
    def _shape(text: str) -> _Shape | None:
        try:
            tree = parse_statement(text)
        except Exception:  # noqa: BLE001 - a shape sqlglot cannot take goes the full way
            return None
        if not isinstance(tree, exp.Update | exp.Delete) or not _target_name(tree):
            return None
        return _Shape(tree)
