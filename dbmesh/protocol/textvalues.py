"""Text-protocol values <-> Python values, for rows the sidecar must merge.

Decoding keeps what comparison needs (numbers as numbers, strings as text under the
column's collation, TIME as a duration) and encoding gives back the bytes MySQL would have
sent: floats and TIME values keep their original text, the other temporal values stay in
MySQL's own text form (which sorts as they do).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

from .charsets import COLLATIONS
from .constants import COLLATION_BINARY, FieldType
from .packets import Field, lenenc_str, read_lenenc_str

_INTEGER_TYPES = {FieldType.TINY, FieldType.SHORT, FieldType.LONG, FieldType.LONGLONG, FieldType.INT24,
                  FieldType.YEAR}
_DECIMAL_TYPES = {FieldType.DECIMAL, FieldType.NEWDECIMAL}
_FLOAT_TYPES = {FieldType.FLOAT, FieldType.DOUBLE}
_TEMPORAL_TYPES = {FieldType.DATE, FieldType.DATETIME, FieldType.TIMESTAMP, FieldType.TIME,
                   FieldType.NEWDATE}


class RawFloat(float):
    """A float that remembers the server's text for it, so it is sent back unchanged."""

    __slots__ = ("raw",)

    def __new__(cls, raw: bytes) -> RawFloat:
        value = super().__new__(cls, raw.decode("ascii"))
        value.raw = raw
        return value


class RawTime(timedelta):
    """A TIME value: compares as the signed duration it is, and remembers the server's text
    for it, sent back unchanged. (As text, '-01:00:00' would sort after '00:30:00' and
    '100:00:00' before '99:00:00'.)"""

    __slots__ = ("raw",)

    def __new__(cls, raw: bytes | str) -> RawTime:
        text = raw.decode("ascii") if isinstance(raw, bytes) else raw
        hours, minutes, seconds = text.lstrip("-").split(":")
        whole, _, fraction = seconds.partition(".")
        micro = ((int(hours) * 60 + int(minutes)) * 60 + int(whole)) * 1_000_000 + int(fraction.ljust(6, "0")[:6] or 0)
        value = super().__new__(cls, microseconds=-micro if text.startswith("-") else micro)
        value.raw = text
        return value

    def __str__(self) -> str:
        return self.raw


def decoder_for(field: Field):
    ftype = field.type
    if ftype in _INTEGER_TYPES:
        return int
    if ftype in _DECIMAL_TYPES:
        return lambda raw: Decimal(raw.decode("ascii"))
    if ftype in _FLOAT_TYPES:
        return RawFloat
    if ftype == FieldType.TIME:
        return RawTime
    if ftype in _TEMPORAL_TYPES or field.charset == COLLATION_BINARY:
        # Dates and datetimes sort correctly as text; binary stays bytes.
        return (lambda raw: raw.decode("ascii")) if ftype in _TEMPORAL_TYPES else bytes
    return lambda raw: raw.decode("utf-8", "surrogateescape")


def collation_of(field: Field) -> str | None:
    """The collation name to compare a column's values with; None for numbers and binary."""
    if field.type in _INTEGER_TYPES | _DECIMAL_TYPES | _FLOAT_TYPES | _TEMPORAL_TYPES:
        return None
    if field.charset == COLLATION_BINARY:
        return None
    return COLLATIONS.get(field.charset, ("utf8mb4", "utf8mb4_general_ci"))[1]


def decode_rows(rows: list[list[bytes | None]], fields: list[Field]) -> list[tuple[Any, ...]]:
    decoders = [decoder_for(f) for f in fields]
    return [tuple(None if v is None else d(v) for d, v in zip(decoders, row, strict=True)) for row in rows]


def row_decoder(fields: list[Field], count: int | None = None) -> Callable[[bytes], tuple[Any, ...]]:
    """Values of one text-protocol row payload, decoded as decode_rows does: of its first
    ``count`` columns (all by default)."""
    decoders = [decoder_for(f) for f in fields[:count]]

    def decode(payload: bytes) -> tuple[Any, ...]:
        values = []
        pos = 0
        for decoder in decoders:
            raw, pos = read_lenenc_str(payload, pos)
            values.append(None if raw is None else decoder(raw))
        return tuple(values)

    return decode


def encode_value(value: Any) -> bytes:
    if value is None:
        return b"\xfb"
    if isinstance(value, RawFloat):
        return lenenc_str(value.raw)
    if isinstance(value, RawTime):
        return lenenc_str(value.raw.encode("ascii"))
    if isinstance(value, bytes):
        return lenenc_str(value)
    if isinstance(value, str):
        return lenenc_str(value.encode("utf-8", "surrogateescape"))
    if isinstance(value, bool):
        return lenenc_str(b"1" if value else b"0")
    if isinstance(value, int):
        return lenenc_str(str(value).encode())
    if isinstance(value, Decimal):
        return lenenc_str(format(value, "f").encode())
    if isinstance(value, float):
        text = repr(value)
        if text.endswith(".0"):
            text = text[:-2]
        return lenenc_str(text.replace("e+", "e").encode())
    return lenenc_str(str(value).encode("utf-8"))


def encode_row(row: tuple[Any, ...]) -> bytes:
    return b"".join(encode_value(v) for v in row)
