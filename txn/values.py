"""Column values as the BASE transaction core sees them: Python values, exactly.

A value in a row image is what PyMySQL/asyncmy return for a MariaDB column, or what
``decode_text`` makes of the text protocol's bytes (the sidecar's own backend client):

=====================================  ==========================================
column type                            Python value
=====================================  ==========================================
tinyint ... bigint (signed/unsigned),  ``int`` (any size: unsigned 64-bit too)
year
decimal / numeric                      ``Decimal`` (scale kept: ``1.50`` stays ``1.50``)
float / double                         ``float`` (read as CAST(.. AS DOUBLE): see
                                       ``sqltext.select_list``)
char / varchar / text / enum / set /   ``str``
json (an alias of longtext in MariaDB)
binary / varbinary / blob / bit /      ``bytes`` (bit(n): big-endian bytes, as sent)
geometry
date                                   ``datetime.date``
datetime / timestamp                   ``datetime.datetime`` (microseconds kept)
time                                   ``datetime.timedelta`` (negative and > 24h too)
zero / invalid dates (0000-00-00 ...)  ``str``, the server's text, unchanged
NULL                                   ``None``
=====================================  ==========================================

``bool`` and ``datetime.time`` are accepted too, although no driver returns them for
MariaDB columns. TIMESTAMP text depends on the session ``time_zone``: capture images and
run compensation with the same, fixed zone (``SET time_zone = '+00:00'``), or a value in a
DST fold would not come back exactly.

This module holds the value-level pieces: a tagged JSON form that round-trips every value
exactly (``tag`` / ``untag``), text-protocol decoding, and exact, type-aware equality.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
import struct
from decimal import Decimal
from typing import Any

INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year"})
DECIMAL_TYPES = frozenset({"decimal", "numeric", "dec", "fixed"})
FLOAT_TYPES = frozenset({"float", "double", "real", "double precision"})
BINARY_TYPES = frozenset({"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "bit",
                          "geometry", "point", "linestring", "polygon", "multipoint",
                          "multilinestring", "multipolygon", "geometrycollection"})
DATE_TYPES = frozenset({"date"})
DATETIME_TYPES = frozenset({"datetime", "timestamp"})
TIME_TYPES = frozenset({"time"})


class UndoValueError(ValueError):
    """A value that cannot be represented (wrong type for the JSON form, bad text)."""


# ---------------------------------------------------------------------------------------
# Tagged JSON form. str and None are plain JSON; every other type is a one-key object, so
# a reader never has to guess (an int beyond 2**53 is text, not a JSON number).


def tag(value: Any) -> Any:
    """A JSON-compatible form of ``value`` that ``untag`` turns back into an equal value
    of the same type (Decimal keeps its exponent, float its bits, datetime its microseconds)."""
    if value is None or type(value) is str:
        return value
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": str(int(value))}
    if isinstance(value, Decimal):
        return {"dec": str(value)}
    if isinstance(value, float):
        # repr is the shortest text that reads back as the same double (-0.0 included);
        # as text, it also survives JSON readers that would round a number.
        return {"float": repr(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dt.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"timedelta": str(timedelta_micros(value))}
    if isinstance(value, dt.time):
        return {"time": value.isoformat()}
    if isinstance(value, str):  # a str subclass: keep the text
        return str(value)
    raise UndoValueError(f"cannot store a {type(value).__name__} value in an undo record: {value!r}")


_UNTAG = {
    "bool": lambda v: bool(v),
    "int": int,
    "dec": Decimal,
    "float": float,
    "bytes": lambda v: base64.b64decode(v, validate=True),
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "timedelta": lambda v: dt.timedelta(microseconds=int(v)),
    "time": dt.time.fromisoformat,
}


def untag(data: Any) -> Any:
    if data is None or isinstance(data, str):
        return data
    if isinstance(data, dict) and len(data) == 1:
        ((kind, text),) = data.items()
        decode = _UNTAG.get(kind)
        if decode is not None:
            try:
                return decode(text)
            except (TypeError, ValueError, ArithmeticError) as exc:
                raise UndoValueError(f"bad {kind} value {text!r} in an undo record") from exc
    raise UndoValueError(f"unknown value form in an undo record: {data!r}")


def timedelta_micros(value: dt.timedelta) -> int:
    return (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds


# ---------------------------------------------------------------------------------------
# Text protocol: the bytes the server sends for a column, to the value a driver would give.

_DATE_RE = re.compile(rb"(\d{4})-(\d{2})-(\d{2})")
_DATETIME_RE = re.compile(rb"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?")
_TIME_RE = re.compile(rb"(-?)(\d+):(\d{2}):(\d{2})(?:\.(\d{1,6}))?")


def _micros(fraction: bytes | None) -> int:
    return int(fraction.ljust(6, b"0")) if fraction else 0


def decode_text(type_name: str, raw: bytes | None) -> Any:
    """The Python value for a text-protocol column value of a column of ``type_name``
    (the DATA_TYPE of information_schema.COLUMNS)."""
    if raw is None:
        return None
    kind = type_name.lower()
    if kind in INTEGER_TYPES:
        return int(raw)
    if kind in DECIMAL_TYPES:
        return Decimal(raw.decode("ascii"))
    if kind in FLOAT_TYPES:
        return float(raw)
    if kind in BINARY_TYPES:
        return bytes(raw)
    if kind in DATE_TYPES:
        m = _DATE_RE.fullmatch(raw)
        try:
            return dt.date(*map(int, m.groups())) if m else raw.decode("ascii")
        except ValueError:  # 0000-00-00 and invalid dates: keep the server's text
            return raw.decode("ascii")
    if kind in DATETIME_TYPES:
        m = _DATETIME_RE.fullmatch(raw)
        if m is None:
            return raw.decode("ascii")
        try:
            return dt.datetime(*map(int, m.groups()[:6]), _micros(m.group(7)))
        except ValueError:
            return raw.decode("ascii")
    if kind in TIME_TYPES:
        m = _TIME_RE.fullmatch(raw)
        if m is None:
            return raw.decode("ascii")
        sign, hours, minutes, seconds, fraction = m.groups()
        magnitude = dt.timedelta(hours=int(hours), minutes=int(minutes), seconds=int(seconds),
                                 microseconds=_micros(fraction))
        return -magnitude if sign else magnitude
    # surrogateescape: bytes that are not UTF-8 survive to be sent back unchanged.
    return raw.decode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------------------
# Exact equality: a changed value is a change, whatever Python's == thinks of it.

_NUMBER = (int, float, Decimal)


def values_equal(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are the same column value.

    Exact: strings compare by code point (a case change is a change even under a _ci
    collation), bytes by content, floats by bits, temporal values by type and value
    (microseconds count; a date is not a datetime). Numbers compare by exact value, so a
    DECIMAL's scale does not matter (1.5 == 1.50) but 0.1 (float) != Decimal('0.1')."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bytes | bytearray | memoryview) or isinstance(b, bytes | bytearray | memoryview):
        return (isinstance(a, bytes | bytearray | memoryview) and isinstance(b, bytes | bytearray | memoryview)
                and bytes(a) == bytes(b))
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and str(a) == str(b)
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, _NUMBER) and isinstance(b, _NUMBER):
        return a == b
    if isinstance(a, dt.date) or isinstance(b, dt.date):
        return type(a) is type(b) and a == b
    return type(a) is type(b) and a == b


def key_component(value: Any) -> str:
    """Canonical text of one primary-key value, for global lock keys: equal keys (as
    ``values_equal`` sees them) give equal text, different keys different text."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        # Scale-insensitive (1.5 and 1.50 are the same key) and never in exponent form.
        normal = value.normalize()
        return format(normal, "f") if normal != 0 else "0"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "0x" + bytes(value).hex()
    if isinstance(value, dt.timedelta):
        return str(timedelta_micros(value))
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, str):
        return value
    raise UndoValueError(f"cannot make a key of a {type(value).__name__} value: {value!r}")
