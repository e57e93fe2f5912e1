"""SQL text for the statements the BASE transaction core generates.

Every generated statement is a ``Statement(sql, params)``: ``%s`` placeholders in the
``format`` paramstyle of PyMySQL, asyncmy and aiomysql, so a literal ``%`` (only possible
inside a quoted identifier) is written ``%%``. Run it as ``cursor.execute(sql, params)`` —
always with the params, even when empty, so the driver turns ``%%`` back into ``%`` — or,
on a connection that only takes text (the sidecar's ``BackendConnection.query``), as
``statement.inline()``, which renders every parameter as a literal that means the same
whatever the session's sql_mode (strings go as ``_utf8mb4 X'..'``, so backslashes and
quotes need no escaping and NO_BACKSLASH_ESCAPES does not matter).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

from .values import FLOAT_TYPES, timedelta_micros

if TYPE_CHECKING:
    from .images import TableMeta


class Statement(NamedTuple):
    """A parameterised statement; unpacks as ``sql, params``."""

    sql: str
    params: tuple[Any, ...] = ()

    def inline(self) -> str:
        return inline(self.sql, self.params)


def quote_ident(name: str) -> str:
    """A backtick-quoted identifier, ready for a ``format``-paramstyle statement."""
    return "`" + name.replace("`", "``").replace("%", "%%") + "`"


def quote_table(name: str, schema: str | None = None) -> str:
    return (quote_ident(schema) + "." if schema else "") + quote_ident(name)


def select_list(meta: TableMeta) -> str:
    """Every column of ``meta``, in order, as image SELECTs read them. FLOAT and DOUBLE go
    through ``CAST(.. AS DOUBLE)``: MariaDB prints a FLOAT with 6 significant digits (and
    DOUBLE(M,D) with D decimals), which loses bits; the cast prints the exact value, the
    shortest text that reads back as the same double, and a FLOAT column stores it back
    unchanged."""
    parts = []
    for column in meta.columns:
        name = quote_ident(column.name)
        parts.append(f"CAST({name} AS DOUBLE) AS {name}" if column.type_name in FLOAT_TYPES else name)
    return ", ".join(parts)


def literal(value: Any) -> str:
    """``value`` as a MariaDB literal that stores exactly the same value."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"MariaDB has no DECIMAL {value}")
        return format(value, "f")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"MariaDB has no DOUBLE {value}")
        text = repr(value)
        # Without an exponent the server would read a DECIMAL literal; with one, a DOUBLE
        # parsed by a correctly rounding strtod, so the bits come back unchanged.
        return text if "e" in text else text + "e0"
    if isinstance(value, bytes | bytearray | memoryview):
        return "X'" + bytes(value).hex().upper() + "'"
    if isinstance(value, str):
        return "_utf8mb4 X'" + value.encode("utf-8", "surrogateescape").hex().upper() + "'"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            raise ValueError(f"MariaDB datetimes have no time zone: {value!r}")
        return "'" + value.isoformat(" ", "microseconds") + "'"
    if isinstance(value, dt.date):
        return "'" + value.isoformat() + "'"
    if isinstance(value, dt.timedelta):
        micros = timedelta_micros(value)
        sign, micros = ("-" if micros < 0 else ""), abs(micros)
        seconds, fraction = divmod(micros, 1_000_000)
        return f"'{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{fraction:06d}'"
    if isinstance(value, dt.time):
        if value.tzinfo is not None:
            raise ValueError(f"MariaDB times have no time zone: {value!r}")
        return "'" + value.isoformat("microseconds") + "'"
    raise TypeError(f"no SQL literal for a {type(value).__name__} value: {value!r}")


def inline(sql: str, params: Sequence[Any]) -> str:
    """Replace each ``%s`` with the literal of the next parameter and ``%%`` with ``%``."""
    out: list[str] = []
    index = 0
    pos = 0
    while True:
        found = sql.find("%", pos)
        if found < 0:
            out.append(sql[pos:])
            break
        out.append(sql[pos:found])
        marker = sql[found + 1:found + 2]
        if marker == "%":
            out.append("%")
        elif marker == "s":
            if index >= len(params):
                raise ValueError(f"statement has more placeholders than the {len(params)} parameters")
            out.append(literal(params[index]))
            index += 1
        else:
            raise ValueError(f"stray % at offset {found} of a parameterised statement")
        pos = found + 2
    if index != len(params):
        raise ValueError(f"statement has {index} placeholders for {len(params)} parameters")
    return "".join(out)


def key_match(columns: Sequence[str], count: int) -> str:
    """A condition matching ``count`` primary keys given as parameters, in key order:
    ``pk IN (%s, ...)`` or ``(a, b) IN ((%s, %s), ...)``. ``count`` may be 0 (matches nothing)."""
    if count == 0:
        return "1 = 0"
    if len(columns) == 1:
        return f"{quote_ident(columns[0])} IN ({', '.join(['%s'] * count)})"
    row = "(" + ", ".join(["%s"] * len(columns)) + ")"
    names = "(" + ", ".join(quote_ident(c) for c in columns) + ")"
    return f"{names} IN ({', '.join([row] * count)})"


def key_equals(columns: Sequence[str]) -> str:
    """``a = %s AND b = %s``: one primary key, as parameters in key order."""
    return " AND ".join(f"{quote_ident(c)} = %s" for c in columns)
