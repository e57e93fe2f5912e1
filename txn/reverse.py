"""Compensation: the SQL that undoes undo records, and the check that it is still safe to.

Undoing one branch (the runner, in ONE local transaction on the branch's data source)::

    for record in reversed(records):                      # last change first
        current = image_from_rows(record.meta, run(*current_image_sql(record.meta, record_keys(record))))
        found = conflicts(expected_image(record), current)  # 'version' isolation check
        if found: stop; roll back the local transaction; mark the global transaction needs_attention
        for statement in reverse_record(record): run(*statement)
    delete the branch's undo log rows; commit

The check must be interleaved with the undo, record by record, not done for all records
first: when two statements of a branch changed the same row, the row matches the older
record's after image only once the newer record is undone.

What each record becomes, one statement per row, rows in reverse statement order (a
DELETE's rows are re-inserted last-deleted first, which mirrors the order the server
removed them in and so keeps self-referencing foreign keys satisfiable):

* INSERT → ``DELETE FROM t WHERE pk = %s`` (``a = %s AND b = %s`` for composite keys);
* UPDATE → ``UPDATE t SET c1 = %s, ... WHERE pk = %s`` setting EVERY non-key, non-generated
  column to its before value — not only the columns that differ: a column with ON UPDATE
  CURRENT_TIMESTAMP would otherwise be stamped with the compensation's time. Rows the
  UPDATE left exactly as they were get no statement;
* DELETE → ``INSERT INTO t (c1, ...) VALUES (%s, ...)`` of the before image, generated
  columns left out (the server computes them).

Statements are ``txn.sqltext.Statement`` values (``%s`` parameters, backtick-quoted names).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .images import RowImage, TableImage, TableMeta, UndoRecord
from .sqltext import Statement, key_equals, key_match, quote_ident, quote_table, select_list
from .values import key_component, values_equal

ConflictKind = Literal["changed", "deleted", "inserted"]


def reverse_record(record: UndoRecord, schema: str | None = None) -> list[Statement]:
    """Statements that undo ``record``, to run in the order given."""
    meta = record.meta
    table = quote_table(meta.name, schema)
    where = key_equals(meta.primary_key)
    if record.sql_kind == "INSERT":
        assert record.after is not None
        return [Statement(f"DELETE FROM {table} WHERE {where}", meta.key_of(row))
                for row in reversed(record.after.rows)]
    if record.sql_kind == "DELETE":
        assert record.before is not None
        columns = meta.writable_columns()
        sql = (f"INSERT INTO {table} ({', '.join(quote_ident(c) for c in columns)}) "
               f"VALUES ({', '.join(['%s'] * len(columns))})")
        return [Statement(sql, tuple(row.values[c] for c in columns)) for row in reversed(record.before.rows)]
    assert record.before is not None and record.after is not None
    keys = {k.lower() for k in meta.primary_key}
    columns = [c for c in meta.writable_columns() if c.lower() not in keys]
    if not columns:
        return []
    sql = f"UPDATE {table} SET {', '.join(f'{quote_ident(c)} = %s' for c in columns)} WHERE {where}"
    out = []
    for before, after in reversed(list(zip(record.before.rows, record.after.rows, strict=True))):
        if _same_row(meta, before, after):
            continue
        out.append(Statement(sql, tuple(before.values[c] for c in columns) + meta.key_of(before)))
    return out


def reverse_branch(records: Sequence[UndoRecord], schema: str | None = None) -> list[Statement]:
    """All statements undoing a branch's records, newest record first. (Without the
    interleaved conflict check: for the 'none' isolation, or for tests.)"""
    return [s for record in reversed(records) for s in reverse_record(record, schema)]


def _same_row(meta: TableMeta, a: RowImage, b: RowImage) -> bool:
    return all(values_equal(a.values[c], b.values[c]) for c in meta.column_names)


# ---------------------------------------------------------------------------------------
# The 'version' isolation check: is the row still what this transaction left?


@dataclass(frozen=True)
class Conflict:
    """A row that is not as the transaction left it, so undoing would overwrite another
    transaction's change: 'changed' (``columns`` differ), 'deleted' (the row is gone) or
    'inserted' (a row the transaction did not leave there, e.g. re-inserted after a DELETE)."""

    table: str
    key: tuple[Any, ...]
    kind: ConflictKind
    columns: tuple[str, ...] = ()
    expected: RowImage | None = None
    actual: RowImage | None = None

    def describe(self) -> str:
        key = ", ".join(repr(v) for v in self.key)
        if self.kind == "changed":
            changes = "; ".join(f"{c}: expected {self.expected.values[c]!r}, found {self.actual.values[c]!r}"
                                for c in self.columns)
            return f"row ({key}) of {self.table} was changed by another transaction ({changes})"
        if self.kind == "deleted":
            return f"row ({key}) of {self.table} was deleted by another transaction"
        return f"row ({key}) of {self.table} was inserted by another transaction"


def record_keys(record: UndoRecord) -> list[tuple[Any, ...]]:
    """Primary keys of the rows a record touched."""
    image = record.after if record.after is not None else record.before
    assert image is not None
    return image.keys()


def expected_image(record: UndoRecord) -> TableImage:
    """What the record's rows must look like now for the undo to be safe: the after image,
    or (DELETE) no rows at all."""
    return record.after if record.after is not None else TableImage(record.meta, [])


def current_image_sql(meta: TableMeta, keys: Sequence[Sequence[Any]], schema: str | None = None) -> Statement:
    """``SELECT <all columns> FROM t WHERE <pk> IN (...) FOR UPDATE``: the rows as they are
    now, locked until the compensation commits."""
    return Statement(f"SELECT {select_list(meta)} FROM {quote_table(meta.name, schema)} "
                     f"WHERE {key_match(meta.primary_key, len(keys))} FOR UPDATE",
                     tuple(v for key in keys for v in key))


def conflicts(expected_after: TableImage, current: TableImage) -> list[Conflict]:
    """Differences between the rows as the transaction left them and as they are now,
    value by value with ``values_equal`` (exact; DECIMAL scale does not matter)."""
    meta = expected_after.table
    now = {_canonical(meta, row): row for row in current.rows}
    out: list[Conflict] = []
    for row in expected_after.rows:
        key = _canonical(meta, row)
        actual = now.pop(key, None)
        if actual is None:
            out.append(Conflict(meta.name, meta.key_of(row), "deleted", expected=row))
            continue
        changed = tuple(c for c in meta.column_names
                        if not values_equal(row.values[c], actual.values.get(c, _MISSING)))
        if changed:
            out.append(Conflict(meta.name, meta.key_of(row), "changed", changed, row, actual))
    for actual in now.values():
        out.append(Conflict(meta.name, current.table.key_of(actual), "inserted", actual=actual))
    return out


_MISSING = object()


def _canonical(meta: TableMeta, row: RowImage) -> tuple[str, ...]:
    return tuple(key_component(v) for v in meta.key_of(row))
