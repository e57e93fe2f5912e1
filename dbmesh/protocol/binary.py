"""The binary protocol of prepared statements: COM_STMT_EXECUTE parameters in, result rows out.

Used where the sidecar cannot relay a prepared statement's bytes: a sharded database,
where parameters decide the route and rows from several shards are merged.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from .constants import COLLATION_BINARY, FieldFlag, FieldType
from .packets import Field, MalformedPacket, lenenc_str, read_lenenc_str
from .textvalues import RawTime

_UNSIGNED_PARAM: Final = 0x80  # high byte of a parameter type: unsigned


def decode_params(payload: bytes, num_params: int, stored_types: bytes | None,
                  long_data: Mapping[int, bytes]) -> tuple[list[Any], bytes | None]:
    """Parameter values of a COM_STMT_EXECUTE payload, and the parameter types in force."""
    if num_params == 0:
        return [], stored_types
    pos = 10
    bitmap_len = (num_params + 7) // 8
    bitmap = payload[pos:pos + bitmap_len]
    if len(bitmap) != bitmap_len or len(payload) < pos + bitmap_len + 1:
        raise MalformedPacket("COM_STMT_EXECUTE shorter than its NULL bitmap")
    pos += bitmap_len
    types = stored_types
    if payload[pos] == 1:
        types = payload[pos + 1:pos + 1 + 2 * num_params]
        pos += 1 + 2 * num_params
    else:
        pos += 1
    if types is None or len(types) != 2 * num_params:
        raise MalformedPacket("COM_STMT_EXECUTE without parameter types")
    values: list[Any] = []
    for i in range(num_params):
        if bitmap[i // 8] & (1 << (i % 8)):
            values.append(None)
            continue
        if i in long_data:
            values.append(bytes(long_data[i]))
            continue
        ftype, flags = types[2 * i], types[2 * i + 1]
        value, pos = _decode_value(payload, pos, ftype, bool(flags & _UNSIGNED_PARAM))
        values.append(value)
    return values, types


def _decode_value(buf: bytes, pos: int, ftype: int, unsigned: bool) -> tuple[Any, int]:
    try:
        if ftype == FieldType.TINY:
            return struct.unpack_from("<B" if unsigned else "<b", buf, pos)[0], pos + 1
        if ftype in (FieldType.SHORT, FieldType.YEAR):
            return struct.unpack_from("<H" if unsigned else "<h", buf, pos)[0], pos + 2
        if ftype in (FieldType.LONG, FieldType.INT24):
            return struct.unpack_from("<I" if unsigned else "<i", buf, pos)[0], pos + 4
        if ftype == FieldType.LONGLONG:
            return struct.unpack_from("<Q" if unsigned else "<q", buf, pos)[0], pos + 8
        if ftype == FieldType.FLOAT:
            return struct.unpack_from("<f", buf, pos)[0], pos + 4
        if ftype == FieldType.DOUBLE:
            return struct.unpack_from("<d", buf, pos)[0], pos + 8
        if ftype in (FieldType.DATE, FieldType.DATETIME, FieldType.TIMESTAMP):
            return _decode_datetime(buf, pos, ftype)
        if ftype == FieldType.TIME:
            return _decode_time(buf, pos)
        if ftype == FieldType.NULL:
            return None, pos
    except struct.error as exc:
        raise MalformedPacket("COM_STMT_EXECUTE parameter value truncated") from exc
    raw, pos = read_lenenc_str(buf, pos)
    if raw is None:  # 0xFB: NULL is the bitmap's to say, never a value's length
        raise MalformedPacket("COM_STMT_EXECUTE parameter value with a NULL length")
    if ftype in (FieldType.DECIMAL, FieldType.NEWDECIMAL):
        return Decimal(raw.decode("ascii")), pos
    if ftype in (FieldType.BLOB, FieldType.TINY_BLOB, FieldType.MEDIUM_BLOB, FieldType.LONG_BLOB,
                 FieldType.GEOMETRY, FieldType.BIT):
        return raw, pos
    try:
        return raw.decode("utf-8"), pos
    except UnicodeDecodeError:
        return raw, pos


def _decode_datetime(buf: bytes, pos: int, ftype: int) -> tuple[Any, int]:
    length = buf[pos]
    pos += 1
    year = month = day = hour = minute = second = micro = 0
    if length >= 4:
        year, month, day = struct.unpack_from("<HBB", buf, pos)
    if length >= 7:
        hour, minute, second = struct.unpack_from("<BBB", buf, pos + 4)
    if length >= 11:
        micro = struct.unpack_from("<I", buf, pos + 7)[0]
    pos += length
    if length == 0:
        return "0000-00-00" if ftype == FieldType.DATE else "0000-00-00 00:00:00", pos
    if ftype == FieldType.DATE and length == 4:
        return dt.date(year, month, day), pos
    return dt.datetime(year, month, day, hour, minute, second, micro), pos


def _decode_time(buf: bytes, pos: int) -> tuple[dt.timedelta, int]:
    length = buf[pos]
    pos += 1
    if length == 0:
        return dt.timedelta(0), pos
    negative, days, hour, minute, second = struct.unpack_from("<BIBBB", buf, pos)
    micro = struct.unpack_from("<I", buf, pos + 8)[0] if length >= 12 else 0
    value = dt.timedelta(days=days, hours=hour, minutes=minute, seconds=second, microseconds=micro)
    return (-value if negative else value), pos + length


# ---------------------------------------------------------------------------------------
# Result rows


_INT_FORMATS = {
    FieldType.TINY: ("<b", "<B"), FieldType.SHORT: ("<h", "<H"), FieldType.YEAR: ("<h", "<H"),
    FieldType.LONG: ("<i", "<I"), FieldType.INT24: ("<i", "<I"), FieldType.LONGLONG: ("<q", "<Q"),
}


def encode_binary_row(values: Sequence[Any], fields: Sequence[Field]) -> bytes:
    """One binary-protocol result row from decoded text values (see textvalues.decode_rows)."""
    n = len(fields)
    bitmap = bytearray((n + 9) // 8)
    parts: list[bytes] = []
    for i, (value, field) in enumerate(zip(values, fields, strict=True)):
        if value is None:
            bitmap[(i + 2) // 8] |= 1 << ((i + 2) % 8)
            continue
        parts.append(_encode_value(value, field))
    return b"\x00" + bytes(bitmap) + b"".join(parts)


def decode_binary_row(payload: bytes, fields: Sequence[Field]) -> tuple[Any, ...]:
    """Values of one binary-protocol result row (the reverse of encode_binary_row)."""
    n = len(fields)
    pos = 1 + (n + 9) // 8
    values: list[Any] = []
    for i, field in enumerate(fields):
        if payload[1 + (i + 2) // 8] & (1 << ((i + 2) % 8)):
            values.append(None)
            continue
        value, pos = _decode_value(payload, pos, field.type, field.unsigned)
        values.append(value)
    return tuple(values)


def text_form_decoder(fields: Sequence[Field], count: int | None = None) -> Callable[[bytes], tuple[Any, ...]]:
    """Values of one binary-protocol row payload (of its first ``count`` columns, all by
    default) in the forms textvalues.row_decoder gives for the same row sent in the text
    protocol: temporal values as MySQL's text, strings of the binary character set as bytes,
    other strings as str. So a merge compares rows of either protocol alike (floats are
    plain floats here: the same order and equality)."""
    readers = [_text_form_reader(f) for f in fields[:count]]
    bitmap_end = 1 + (len(fields) + 9) // 8

    def decode(payload: bytes) -> tuple[Any, ...]:
        pos = bitmap_end
        values: list[Any] = []
        for i, read in enumerate(readers):
            if payload[1 + (i + 2) // 8] & (1 << ((i + 2) % 8)):
                values.append(None)
                continue
            value, pos = read(payload, pos)
            values.append(value)
        return tuple(values)

    return decode


def _text_form_reader(field: Field) -> Callable[[bytes, int], tuple[Any, int]]:
    ftype = field.type
    if ftype in (FieldType.DATE, FieldType.NEWDATE, FieldType.DATETIME, FieldType.TIMESTAMP):
        return lambda buf, pos: _datetime_text(buf, pos, ftype, field.decimals)
    if ftype == FieldType.TIME:
        return lambda buf, pos: _time_text(buf, pos, field.decimals)
    if ftype in _INT_FORMATS or ftype in (FieldType.FLOAT, FieldType.DOUBLE, FieldType.DECIMAL,
                                          FieldType.NEWDECIMAL):
        unsigned = field.unsigned
        return lambda buf, pos: _decode_value(buf, pos, ftype, unsigned)
    if field.charset == COLLATION_BINARY:
        return read_lenenc_str

    def text(buf: bytes, pos: int) -> tuple[Any, int]:
        raw, pos = read_lenenc_str(buf, pos)
        return (raw.decode("utf-8", "surrogateescape") if raw is not None else None), pos

    return text


def _fraction(micro: int, decimals: int) -> str:
    """MySQL's fraction digits for a column of ``decimals`` (0-6; other values: 6 when the
    value has a fraction, as the column's precision is not fixed)."""
    if 0 < decimals <= 6:
        return "." + f"{micro:06d}"[:decimals]
    if decimals > 6 and micro:
        return f".{micro:06d}"
    return ""


def _datetime_text(buf: bytes, pos: int, ftype: int, decimals: int) -> tuple[str, int]:
    length = buf[pos]
    year = month = day = hour = minute = second = micro = 0
    if length >= 4:
        year, month, day = struct.unpack_from("<HBB", buf, pos + 1)
    if length >= 7:
        hour, minute, second = struct.unpack_from("<BBB", buf, pos + 5)
    if length >= 11:
        micro = struct.unpack_from("<I", buf, pos + 8)[0]
    text = f"{year:04d}-{month:02d}-{day:02d}"
    if ftype not in (FieldType.DATE, FieldType.NEWDATE):
        text += f" {hour:02d}:{minute:02d}:{second:02d}" + _fraction(micro, decimals)
    return text, pos + 1 + length


def _time_text(buf: bytes, pos: int, decimals: int) -> tuple[RawTime, int]:
    length = buf[pos]
    negative = days = hour = minute = second = micro = 0
    if length >= 8:
        negative, days, hour, minute, second = struct.unpack_from("<BIBBB", buf, pos + 1)
    if length >= 12:
        micro = struct.unpack_from("<I", buf, pos + 9)[0]
    text = f"{'-' if negative else ''}{days * 24 + hour:02d}:{minute:02d}:{second:02d}" + _fraction(micro, decimals)
    return RawTime(text), pos + 1 + length


def _encode_value(value: Any, field: Field) -> bytes:
    ftype = field.type
    formats = _INT_FORMATS.get(ftype)
    if formats is not None:
        return struct.pack(formats[1] if field.flags & FieldFlag.UNSIGNED else formats[0], int(value))
    if ftype == FieldType.FLOAT:
        return struct.pack("<f", float(value))
    if ftype == FieldType.DOUBLE:
        return struct.pack("<d", float(value))
    if ftype in (FieldType.DATE, FieldType.DATETIME, FieldType.TIMESTAMP, FieldType.NEWDATE):
        return _encode_datetime(str(value))
    if ftype == FieldType.TIME:
        return _encode_time(str(value))
    if isinstance(value, bytes):
        return lenenc_str(value)
    if isinstance(value, Decimal):
        return lenenc_str(format(value, "f").encode())
    if isinstance(value, str):
        return lenenc_str(value.encode("utf-8", "surrogateescape"))
    return lenenc_str(str(value).encode())


def _encode_datetime(text: str) -> bytes:
    date_part, _, time_part = text.partition(" ")
    year, month, day = (int(x) for x in date_part.split("-"))
    if not time_part:
        return bytes((4,)) + struct.pack("<HBB", year, month, day)
    hms, _, fraction = time_part.partition(".")
    hour, minute, second = (int(x) for x in hms.split(":"))
    if fraction:
        micro = int(fraction.ljust(6, "0")[:6])
        return bytes((11,)) + struct.pack("<HBBBBBI", year, month, day, hour, minute, second, micro)
    return bytes((7,)) + struct.pack("<HBBBBB", year, month, day, hour, minute, second)


def _encode_time(text: str) -> bytes:
    negative = text.startswith("-")
    hms, _, fraction = text.lstrip("-").partition(".")
    hours, minute, second = (int(x) for x in hms.split(":"))
    days, hour = divmod(hours, 24)
    if fraction:
        micro = int(fraction.ljust(6, "0")[:6])
        return bytes((12,)) + struct.pack("<BIBBBI", negative, days, hour, minute, second, micro)
    return bytes((8,)) + struct.pack("<BIBBB", negative, days, hour, minute, second)
