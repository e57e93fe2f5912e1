"""SQL that captures the before/after images of one DML statement on one actual table.

Pure: the functions take a sqlglot statement (MySQL dialect, names already rewritten by the
router to the actual table) and the table's ``TableMeta``, and return SQL; the runner runs
it on the branch's connection, inside the branch's local transaction, in this order:

UPDATE / DELETE::

    before = image_from_rows(meta, run(before_image_sql(stmt, meta)))     # locks the rows
    run(restrict_to_keys(stmt, meta, before.keys()))   # the DML itself, on exactly those rows
    check_affected(stmt, before, affected_rows)        # DELETE: every row went
    UPDATE: after = updated_image(before, image_from_rows(meta, run(*after_image_sql(meta, before.keys()))))
    record = UndoRecord(branch_id, kind, meta.name, before=before, after=after or None)

INSERT::

    run(stmt)
    keys = inserted_keys(stmt, meta, last_insert_id, affected_rows)
    after = inserted_image(image_from_rows(meta, run(*after_image_sql(meta, keys))), keys)
    record = UndoRecord(branch_id, "INSERT", meta.name, after=after)

An UPDATE or DELETE that matched nothing needs no record. ``before_image_sql`` and
``restrict_to_keys`` return plain SQL text holding the client's literals: run it without
parameters. ``after_image_sql`` returns a ``Statement`` (see ``txn.sqltext``).

Why ``restrict_to_keys``: the before image is taken by ``SELECT ... FOR UPDATE`` with the
statement's WHERE/ORDER BY/LIMIT; running the DML on exactly the primary keys it returned
makes the image and the change agree even when they could otherwise differ — LIMIT with
ties in ORDER BY, a non-deterministic WHERE (RAND(), NOW(6)), or a phantom row inserted
between the two under READ COMMITTED. The FOR UPDATE locks keep the selected rows matching
until the DML runs. Running the original statement instead is only safe without LIMIT,
with a deterministic WHERE, under REPEATABLE READ (next-key locks block phantoms).

INSERT keys come from the statement's literals, or — for an AUTO_INCREMENT key column that
gets NULL/DEFAULT/0 or is left out — from LAST_INSERT_ID: the first generated id, the others
following at ``@@auto_increment_increment`` steps. That is only true when InnoDB allocates a
statement's ids as one block, i.e. ``innodb_autoinc_lock_mode`` 0 or 1 (MariaDB's default is
1); mode 2 (interleaved) may hand a multi-row INSERT ids that are not consecutive. Check
once per data source with ``AUTOINC_SETTINGS_SQL`` / ``check_autoinc_settings``. A statement
mixing generated and explicit values of the AUTO_INCREMENT column is refused (mode 0 would
not give consecutive ids after an explicit value). ``inserted_image`` checks that exactly
as many rows came back as were inserted, which catches a literal the server converted to a
different key than the one searched for.

Refused with ``UnsupportedStatement`` (the snapshot could not be exact): a table without a
primary key, multi-table UPDATE/DELETE, an UPDATE that sets a primary-key column, INSERT
... SELECT, INSERT IGNORE (keys of ignored rows would be taken as inserted), INSERT ... ON
DUPLICATE KEY UPDATE, REPLACE, and INSERTs whose primary key comes from an expression, a
bind parameter or a column default other than AUTO_INCREMENT.

Not covered by the images, so not compensated: triggers' side effects and ON DELETE/ON
UPDATE CASCADE changes to other tables.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlglot import exp

from .images import TableImage, TableMeta
from .sqltext import Statement, inline, key_match, quote_table, select_list
from .values import BINARY_TYPES, DECIMAL_TYPES, INTEGER_TYPES, key_component

DIALECT = "mysql"
AUTOINC_SETTINGS_SQL = "SELECT @@innodb_autoinc_lock_mode, @@auto_increment_increment"
_MARKER = "dbmesh_snapshot_keys_marker"
_COLUMNS_MARKER = "dbmesh_snapshot_columns_marker"


class SnapshotError(Exception):
    """The images could not be captured exactly; the statement must not stand."""


class UnsupportedStatement(SnapshotError):
    """A statement the BASE mode refuses, because it could not undo it exactly."""


def _refuse(table: str, reason: str) -> UnsupportedStatement:
    return UnsupportedStatement(f"BASE transaction mode cannot undo this statement on table {table}: {reason}")


def statement_kind(stmt: exp.Expression) -> str:
    """'INSERT', 'UPDATE' or 'DELETE'; anything else (REPLACE parses as a Command) is refused."""
    if isinstance(stmt, exp.Insert):
        return "INSERT"
    if isinstance(stmt, exp.Update):
        return "UPDATE"
    if isinstance(stmt, exp.Delete):
        return "DELETE"
    name = stmt.name.upper() if isinstance(stmt, exp.Command) else type(stmt).__name__.upper()
    raise UnsupportedStatement(f"BASE transaction mode cannot undo a {name} statement"
                               + (f": {_command_table(stmt)}" if isinstance(stmt, exp.Command) else ""))


def _command_table(stmt: exp.Command) -> str:
    text = stmt.expression.name if isinstance(stmt.expression, exp.Expression) else str(stmt.expression)
    m = re.match(r"\s*(?:LOW_PRIORITY\s+|DELAYED\s+)?(?:INTO\s+)?(`(?:[^`]|``)+`|[\w$.]+)", text, re.I)
    return f"REPLACE on table {m.group(1)} is not supported (use INSERT / UPDATE)" if m else \
        "statement not supported"


def _target(stmt: exp.Expression, meta: TableMeta) -> exp.Table:
    kind = statement_kind(stmt)
    target = stmt.this.this if isinstance(stmt.this, exp.Schema) else stmt.this
    if not isinstance(target, exp.Table) or not target.name:
        raise _refuse(meta.name, f"the {kind} does not target a plain table")
    if target.name.lower() != meta.name.lower():
        raise SnapshotError(f"statement targets table {target.name} but the metadata is of {meta.name}")
    if not meta.primary_key:
        raise _refuse(meta.name, "the table has no primary key")
    if kind in ("UPDATE", "DELETE") and (target.args.get("joins") or stmt.args.get("from_")
                                         or stmt.args.get("tables") or stmt.args.get("using")):
        raise _refuse(meta.name, f"multi-table {kind} is not supported")
    return target


def _splice(stmt: exp.Expression, marker: str, text: str) -> str:
    """Render ``stmt`` and put ``text`` (our own SQL) where the ``marker`` column stands."""
    sql = stmt.sql(DIALECT)
    if sql.count(marker) != 1:
        raise SnapshotError(f"statement contains the snapshot marker {marker}")
    return sql.replace(marker, text)


def before_image_sql(stmt: exp.Expression, meta: TableMeta) -> str:
    """``SELECT <all columns> FROM t WHERE <where> [ORDER BY .. LIMIT ..] FOR UPDATE`` for an
    UPDATE or DELETE; refuses what cannot be undone exactly."""
    kind = statement_kind(stmt)
    if kind == "INSERT":
        raise SnapshotError("an INSERT has no before image (use inserted_keys)")
    target = _target(stmt, meta)
    if kind == "UPDATE":
        _check_update_keeps_keys(stmt, meta)
    select = exp.Select(expressions=[exp.column(_COLUMNS_MARKER)]).from_(target.copy())
    for arg in ("where", "limit", "with_"):
        if stmt.args.get(arg):
            select.set(arg, stmt.args[arg].copy())
    order = stmt.args.get("order")
    if order is not None:
        order = order.copy()
        if stmt.args.get("limit"):
            # Ties in ORDER BY must not leave the choice of rows to the server.
            for k in meta.primary_key:
                order.append("expressions", exp.Ordered(this=exp.column(k, quoted=True), nulls_first=True))
        select.set("order", order)
    select.set("locks", [exp.Lock(update=True)])
    return _splice(select, _COLUMNS_MARKER, inline(select_list(meta), ()))


def _check_update_keeps_keys(stmt: exp.Update, meta: TableMeta) -> None:
    keys = {k.lower() for k in meta.primary_key}
    for assignment in stmt.expressions:
        column = assignment.this if isinstance(assignment, exp.EQ) else None
        if not isinstance(column, exp.Column):
            raise _refuse(meta.name, f"cannot read the SET clause {assignment.sql(DIALECT)}")
        if column.name.lower() in keys:
            raise _refuse(meta.name, f"the UPDATE changes primary-key column {column.name}")


def restrict_to_keys(stmt: exp.Expression, meta: TableMeta, keys: Sequence[Sequence[Any]]) -> str:
    """The UPDATE/DELETE ``stmt`` changed to act on exactly the rows with these primary
    keys (the before image's): WHERE becomes the key match, LIMIT goes, ORDER BY stays (it
    orders the changes, which unique keys may depend on)."""
    return fill_keys(restricted_template(stmt, meta), meta, keys)


def restricted_template(stmt: exp.Expression, meta: TableMeta) -> str:
    """``restrict_to_keys``'s SQL with a marker where the key match goes (``fill_keys``
    puts it there): built once for statements that differ only in literals."""
    if statement_kind(stmt) == "INSERT":
        raise SnapshotError("restrict_to_keys is for UPDATE and DELETE")
    _target(stmt, meta)
    copy = stmt.copy()
    copy.set("limit", None)
    copy.set("where", exp.Where(this=exp.column(_MARKER)))
    return _splice(copy, _MARKER, _MARKER)


def fill_keys(template: str, meta: TableMeta, keys: Sequence[Sequence[Any]]) -> str:
    return template.replace(_MARKER, inline(key_match(meta.primary_key, len(keys)),
                                            [v for key in keys for v in key]), 1)


def after_image_sql(meta: TableMeta, keys: Sequence[Sequence[Any]], schema: str | None = None) -> Statement:
    """``SELECT <all columns> FROM t WHERE <pk> IN (...) FOR UPDATE`` for these keys."""
    return Statement(f"SELECT {select_list(meta)} FROM {quote_table(meta.name, schema)} "
                     f"WHERE {key_match(meta.primary_key, len(keys))} FOR UPDATE",
                     tuple(v for key in keys for v in key))


# ---------------------------------------------------------------------------------------
# INSERT


class _Generated:
    """The AUTO_INCREMENT column gets a generated value in this row."""


_GENERATED = _Generated()
_INT_TEXT = re.compile(r"[+-]?\d+")


def inserted_keys(stmt: exp.Expression, meta: TableMeta, last_insert_id: int, affected_rows: int, *,
                  auto_increment_increment: int = 1, no_auto_value_on_zero: bool = False
                  ) -> list[tuple[Any, ...]]:
    """Primary keys of the rows a plain ``INSERT ... VALUES`` inserted, in statement order.

    ``last_insert_id`` and ``affected_rows`` are those of the INSERT's OK packet;
    ``auto_increment_increment`` is the session's ``@@auto_increment_increment`` and
    ``no_auto_value_on_zero`` whether sql_mode has NO_AUTO_VALUE_ON_ZERO."""
    if statement_kind(stmt) != "INSERT":
        raise SnapshotError("inserted_keys is for INSERT")
    _target(stmt, meta)
    name = meta.name
    if stmt.args.get("ignore"):
        raise _refuse(name, "INSERT IGNORE is not supported (ignored rows cannot be told apart)")
    if stmt.args.get("conflict") or stmt.args.get("alternative"):
        raise _refuse(name, "INSERT ... ON DUPLICATE KEY UPDATE is not supported")
    values = stmt.expression
    if not isinstance(values, exp.Values):
        raise _refuse(name, "INSERT ... SELECT is not supported (only INSERT ... VALUES)")
    columns = _insert_columns(stmt, meta)
    rows = [t.expressions if isinstance(t, exp.Tuple) else [t] for t in values.expressions]
    if affected_rows != len(rows):
        raise SnapshotError(f"INSERT into {name} affected {affected_rows} rows for {len(rows)} VALUES rows")
    keyed = [[_key_value(row, columns, meta, k, no_auto_value_on_zero) for k in meta.primary_key]
             for row in rows]
    auto = [i for i, k in enumerate(meta.primary_key) if meta.column(k).auto_increment]
    generated = sum(1 for key in keyed for i in auto if key[i] is _GENERATED)
    if generated and generated != len(keyed):
        raise _refuse(name, "the INSERT mixes generated and explicit AUTO_INCREMENT values")
    if generated and last_insert_id <= 0:
        raise SnapshotError(f"INSERT into {name} generated ids but reported no LAST_INSERT_ID")
    return [tuple(last_insert_id + n * auto_increment_increment if v is _GENERATED else v for v in key)
            for n, key in enumerate(keyed)]


def _insert_columns(stmt: exp.Insert, meta: TableMeta) -> list[str]:
    if isinstance(stmt.this, exp.Schema) and stmt.this.expressions:
        return [c.name.lower() for c in stmt.this.expressions]
    return [c.name.lower() for c in meta.columns if not c.invisible]


def _key_value(row: Sequence[exp.Expression], columns: list[str], meta: TableMeta, key: str,
               no_auto_value_on_zero: bool) -> Any:
    column = meta.column(key)
    assert column is not None
    if not row:  # VALUES (): every column gets its default
        expr = None
    else:
        if len(row) != len(columns):
            raise SnapshotError(f"INSERT into {meta.name}: {len(row)} values for {len(columns)} columns")
        expr = row[columns.index(key.lower())] if key.lower() in columns else None
    default = expr is None or (isinstance(expr, exp.Var) and expr.name.upper() == "DEFAULT")
    if default or isinstance(expr, exp.Null):
        if column.auto_increment:
            return _GENERATED
        what = "its column default" if default else "NULL"
        raise _refuse(meta.name, f"primary-key column {key} gets {what}, which the snapshot cannot know")
    value = _literal(expr, column.type_name, meta.name, key)
    if column.auto_increment and not no_auto_value_on_zero and isinstance(value, int | Decimal) and value == 0:
        return _GENERATED
    return _coerce_key(value, column.type_name)


def _literal(expr: exp.Expression, type_name: str, table: str, key: str) -> Any:
    negate = False
    while isinstance(expr, exp.Neg | exp.Paren):
        negate ^= isinstance(expr, exp.Neg)
        expr = expr.this
    value: Any
    if isinstance(expr, exp.Literal) and not expr.is_string:
        text = expr.this
        try:
            value = int(text) if _INT_TEXT.fullmatch(text) else Decimal(text)
        except InvalidOperation:
            raise _refuse(table, f"cannot read the number {text} for primary-key column {key}") from None
    elif isinstance(expr, exp.Boolean) and not negate:
        value = int(expr.this)
    elif isinstance(expr, exp.Literal | exp.National) and not negate:
        value = expr.this
    elif isinstance(expr, exp.Introducer) and isinstance(expr.expression, exp.Literal) and not negate:
        text = expr.expression.this
        value = text.encode("utf-8") if expr.this.lower() == "_binary" else text
    elif isinstance(expr, exp.HexString) and type_name in BINARY_TYPES and not negate:
        value = bytes.fromhex(expr.this if len(expr.this) % 2 == 0 else "0" + expr.this)
    elif isinstance(expr, exp.HexString | exp.BitString):
        raise _refuse(table, f"primary-key column {key} gets the hex/bit literal {expr.sql(DIALECT)}, "
                             "whose value depends on the column type")
    elif isinstance(expr, exp.Placeholder):
        raise _refuse(table, f"primary-key column {key} is a bind parameter; bind the values first")
    else:
        raise _refuse(table, f"primary-key column {key} gets a computed value {expr.sql(DIALECT)}")
    return -value if negate else value


def _coerce_key(value: Any, type_name: str) -> Any:
    """Send a key in the column's own type where the server's conversion is obvious, so the
    after-image search compares like with like (a string column searched with a number
    would match '5' and '05')."""
    if type_name in INTEGER_TYPES and isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        return int(value)
    if type_name in DECIMAL_TYPES and isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return value
    if type_name not in INTEGER_TYPES | DECIMAL_TYPES and isinstance(value, int):
        return str(value) if type_name not in BINARY_TYPES else str(value).encode()
    return value


# ---------------------------------------------------------------------------------------
# Checking and ordering captured images


def _canonical(key: Sequence[Any]) -> tuple[str, ...]:
    return tuple(key_component(v) for v in key)


def inserted_image(after: TableImage, keys: Sequence[Sequence[Any]]) -> TableImage:
    """The INSERT's after image, checked to hold exactly one row per inserted key and put
    in insertion order where the stored keys equal the literals (else left as read)."""
    if len(after.rows) != len(keys):
        raise SnapshotError(f"INSERT into {after.table.name}: found {len(after.rows)} rows by the "
                            f"{len(keys)} inserted keys; the keys cannot be trusted")
    by_key = {_canonical(after.table.key_of(r)): r for r in after.rows}
    ordered = [by_key.get(_canonical(k)) for k in keys]
    if None in ordered or len(by_key) != len(after.rows):
        return after
    return TableImage(after.table, ordered)


def updated_image(before: TableImage, after: TableImage) -> TableImage:
    """The UPDATE's after image in the before image's row order, checked to hold the same
    rows (the primary keys were read from the server, so they compare exactly)."""
    by_key = {_canonical(after.table.key_of(r)): r for r in after.rows}
    rows = [by_key.get(_canonical(k)) for k in before.keys()]
    if None in rows or len(by_key) != len(after.rows) or len(after.rows) != len(before.rows):
        raise SnapshotError(f"UPDATE of {before.table.name}: the after image does not hold the "
                            f"{len(before.rows)} rows of the before image")
    return TableImage(after.table, rows)


def check_affected(stmt: exp.Expression, before: TableImage, affected_rows: int,
                   client_found_rows: bool = False) -> None:
    """A DELETE must remove every row of its before image; an UPDATE cannot change more
    rows than it matched (with CLIENT_FOUND_ROWS it reports matched rows: all of them)."""
    kind = statement_kind(stmt)
    count = len(before.rows)
    if kind == "DELETE" and affected_rows != count:
        raise SnapshotError(f"DELETE from {before.table.name} removed {affected_rows} rows; "
                            f"its before image has {count}")
    if kind == "UPDATE" and (affected_rows != count if client_found_rows else affected_rows > count):
        raise SnapshotError(f"UPDATE of {before.table.name} affected {affected_rows} rows; "
                            f"its before image has {count}")


def check_autoinc_settings(lock_mode: int, increment: int) -> None:
    """Refuse a data source whose generated ids ``inserted_keys`` could not predict."""
    if int(lock_mode) not in (0, 1):
        raise SnapshotError(f"innodb_autoinc_lock_mode = {lock_mode}: generated ids of one INSERT may not "
                            "be consecutive; the BASE mode needs 0 or 1")
    if int(increment) < 1:
        raise SnapshotError(f"auto_increment_increment = {increment} is not valid")
