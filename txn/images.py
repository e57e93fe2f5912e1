"""Row images and undo records of the BASE (compensating) transaction mode.

An ``UndoRecord`` is what one DML statement on one actual table did inside a branch (the
local transaction of one global transaction on one data source): the rows before it
(``before``), after it (``after``), or both. INSERT has only ``after``, DELETE only
``before``, UPDATE both, with the same primary keys in the same order. Each image carries
the ``TableMeta`` it was captured with, so a rollback never needs the live schema.

Row values are exact Python values (see ``txn.values``). ``to_json`` / ``from_json`` store
a record as ASCII JSON text (``{"format": "dbmesh-undo", "version": 1, ...}``) that comes
back equal value by value and type by type; ``undo_log`` stores that text in the
``rollback_info`` column. Rows are stored as arrays in column order, non-string values as
one-key tagged objects (``{"int": "18446744073709551615"}``, ``{"dec": "1.50"}``, ...).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .values import UndoValueError, decode_text, tag, untag

FORMAT = "dbmesh-undo"
FORMAT_VERSION = 1

SqlKind = Literal["INSERT", "UPDATE", "DELETE"]
SQL_KINDS: tuple[SqlKind, ...] = ("INSERT", "UPDATE", "DELETE")


class UndoFormatError(ValueError):
    """An undo record that is malformed, or written in a format this code does not read."""


@dataclass(frozen=True)
class ColumnMeta:
    name: str
    type_name: str  # information_schema DATA_TYPE: 'bigint', 'varchar', 'decimal', ...
    nullable: bool = True
    auto_increment: bool = False
    generated: bool = False  # VIRTUAL/STORED: read in images, never written back
    invisible: bool = False  # left out of INSERT without a column list


@dataclass(frozen=True)
class TableMeta:
    name: str
    columns: tuple[ColumnMeta, ...]
    primary_key: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "primary_key", tuple(self.primary_key))
        names = [c.name for c in self.columns]
        if len({n.lower() for n in names}) != len(names):
            raise UndoFormatError(f"table {self.name}: duplicate column names {names}")
        missing = [k for k in self.primary_key if k not in names]
        if missing:
            raise UndoFormatError(f"table {self.name}: primary key columns {missing} are not columns")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> ColumnMeta | None:
        """The column called ``name`` (MariaDB column names are case-insensitive)."""
        folded = name.lower()
        for c in self.columns:
            if c.name.lower() == folded:
                return c
        return None

    def writable_columns(self) -> tuple[str, ...]:
        """Columns a compensating INSERT/UPDATE may set (generated columns are computed)."""
        return tuple(c.name for c in self.columns if not c.generated)

    def key_of(self, row: RowImage) -> tuple[Any, ...]:
        return tuple(row.values[k] for k in self.primary_key)


@dataclass(frozen=True)
class RowImage:
    values: dict[str, Any]


@dataclass(frozen=True)
class TableImage:
    table: TableMeta
    rows: list[RowImage] = field(default_factory=list)

    def keys(self) -> list[tuple[Any, ...]]:
        return [self.table.key_of(r) for r in self.rows]

    def __post_init__(self) -> None:
        names = set(self.table.column_names)
        for row in self.rows:
            if set(row.values) != names:
                raise UndoFormatError(f"table {self.table.name}: a row has columns {sorted(row.values)}, "
                                      f"the table has {sorted(names)}")


def image_from_rows(meta: TableMeta, rows: Iterable[Sequence[Any]], text: bool = False) -> TableImage:
    """The image of rows selected with the column list of ``meta`` (as every SELECT of
    ``snapshot`` and ``reverse`` does). ``text=True``: the values are text-protocol bytes
    (``BackendConnection.query`` rows), decoded by column type; otherwise they are a
    driver's Python values, taken as they are."""
    names = meta.column_names
    out = []
    for row in rows:
        if len(row) != len(names):
            raise UndoFormatError(f"table {meta.name}: a row of {len(row)} values for {len(names)} columns")
        if text:
            row = [decode_text(c.type_name, v) for c, v in zip(meta.columns, row, strict=True)]
        out.append(RowImage(dict(zip(names, row, strict=True))))
    return TableImage(meta, out)


@dataclass(frozen=True)
class UndoRecord:
    branch_id: int
    sql_kind: SqlKind
    table: str
    before: TableImage | None = None
    after: TableImage | None = None

    def __post_init__(self) -> None:
        where = f"undo record for {self.sql_kind} on {self.table}"
        if self.sql_kind not in SQL_KINDS:
            raise UndoFormatError(f"undo record for table {self.table}: unknown kind {self.sql_kind!r}")
        if (self.before is not None) != (self.sql_kind in ("UPDATE", "DELETE")):
            raise UndoFormatError(f"{where}: before image must be present exactly for UPDATE and DELETE")
        if (self.after is not None) != (self.sql_kind in ("INSERT", "UPDATE")):
            raise UndoFormatError(f"{where}: after image must be present exactly for INSERT and UPDATE")
        for image in (self.before, self.after):
            if image is not None:
                if image.table.name != self.table:
                    raise UndoFormatError(f"{where}: image of table {image.table.name}")
                if not image.table.primary_key:
                    raise UndoFormatError(f"{where}: the table has no primary key")
        if self.before is not None and self.after is not None and self.before.keys() != self.after.keys():
            raise UndoFormatError(f"{where}: before and after images hold different rows")

    @property
    def meta(self) -> TableMeta:
        image = self.after if self.after is not None else self.before
        assert image is not None
        return image.table

    def to_json(self) -> str:
        return json.dumps(_record_to_data(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> UndoRecord:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UndoFormatError(f"undo record is not JSON: {exc}") from exc
        return _record_from_data(data)


def to_json(record: UndoRecord) -> str:
    return record.to_json()


def from_json(text: str | bytes) -> UndoRecord:
    return UndoRecord.from_json(text)


# ---------------------------------------------------------------------------------------
# JSON data


def _meta_to_data(meta: TableMeta) -> dict[str, Any]:
    columns = []
    for c in meta.columns:
        col: dict[str, Any] = {"name": c.name, "type": c.type_name, "nullable": c.nullable}
        for flag in ("auto_increment", "generated", "invisible"):
            if getattr(c, flag):
                col[flag] = True
        columns.append(col)
    return {"name": meta.name, "columns": columns, "primary_key": list(meta.primary_key)}


def _meta_from_data(data: Mapping[str, Any]) -> TableMeta:
    columns = tuple(ColumnMeta(c["name"], c["type"], bool(c["nullable"]),
                               auto_increment=bool(c.get("auto_increment", False)),
                               generated=bool(c.get("generated", False)),
                               invisible=bool(c.get("invisible", False)))
                    for c in data["columns"])
    return TableMeta(data["name"], columns, tuple(data["primary_key"]))


def _image_to_data(image: TableImage | None) -> dict[str, Any] | None:
    if image is None:
        return None
    names = image.table.column_names
    rows = []
    for row in image.rows:
        try:
            rows.append([tag(row.values[n]) for n in names])
        except UndoValueError as exc:
            raise UndoValueError(f"table {image.table.name}: {exc}") from exc
    return {"table": _meta_to_data(image.table), "rows": rows}


def _image_from_data(data: Mapping[str, Any] | None) -> TableImage | None:
    if data is None:
        return None
    meta = _meta_from_data(data["table"])
    names = meta.column_names
    rows = []
    for values in data["rows"]:
        if len(values) != len(names):
            raise UndoFormatError(f"table {meta.name}: a stored row of {len(values)} values "
                                  f"for {len(names)} columns")
        rows.append(RowImage({n: untag(v) for n, v in zip(names, values, strict=True)}))
    return TableImage(meta, rows)


def _record_to_data(record: UndoRecord) -> dict[str, Any]:
    return {"format": FORMAT, "version": FORMAT_VERSION, "branch_id": record.branch_id,
            "sql_kind": record.sql_kind, "table": record.table,
            "before": _image_to_data(record.before), "after": _image_to_data(record.after)}


def _record_from_data(data: Any) -> UndoRecord:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UndoFormatError("not a dbmesh undo record")
    if data.get("version") != FORMAT_VERSION:
        raise UndoFormatError(f"undo record format version {data.get('version')!r} is not supported "
                              f"(this build reads version {FORMAT_VERSION})")
    try:
        return UndoRecord(int(data["branch_id"]), data["sql_kind"], data["table"],
                          _image_from_data(data["before"]), _image_from_data(data["after"]))
    except (KeyError, TypeError, UndoValueError) as exc:
        raise UndoFormatError(f"malformed undo record: {exc!r}") from exc
