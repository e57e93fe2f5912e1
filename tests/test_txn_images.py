"""Row values, images and undo records: exact JSON round trips, text-protocol decoding,
SQL literals and exact equality (txn.values, txn.images, txn.sqltext)."""

from __future__ import annotations

import datetime as dt
import json
import math
import struct
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txn.images import (
    ColumnMeta,
    RowImage,
    TableImage,
    TableMeta,
    UndoFormatError,
    UndoRecord,
    from_json,
    image_from_rows,
    to_json,
)
from txn.sqltext import Statement, inline, literal, quote_ident
from txn.values import UndoValueError, decode_text, key_component, tag, untag, values_equal

# One strategy per MySQL value type, as drivers return them.
TIME_RANGE = st.timedeltas(min_value=-dt.timedelta(hours=838, minutes=59, seconds=59),
                           max_value=dt.timedelta(hours=838, minutes=59, seconds=59))
ESCAPED = st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)  # surrogateescape'd bytes
STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "int": st.integers(-(2 ** 63), 2 ** 64 - 1),
    "decimal": st.decimals(allow_nan=False, allow_infinity=False),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "str": st.text() | st.text(alphabet=st.sampled_from("a😀é\u0000'\\%\n") | ESCAPED),
    "bytes": st.binary(),
    "date": st.dates(),
    "datetime": st.datetimes(),
    "timedelta": st.timedeltas(),
    "time": st.times(),
    "bool": st.booleans(),
    "none": st.none(),
}
ANY_VALUE = st.one_of(*STRATEGIES.values())


def identical(a: Any, b: Any) -> bool:
    """Same type and same value, to the bit (stricter than values_equal)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return a == b


# ---------------------------------------------------------------------------------------
# Tagged JSON values


@pytest.mark.parametrize("kind", sorted(STRATEGIES))
@settings(max_examples=200)
@given(data=st.data())
def test_tag_round_trips_every_type_exactly(kind: str, data: st.DataObject) -> None:
    value = data.draw(STRATEGIES[kind])
    stored = json.loads(json.dumps(tag(value)))
    assert identical(untag(stored), value)


@pytest.mark.parametrize("value", [
    2 ** 64 - 1, -(2 ** 63), 2 ** 53 + 1, Decimal("1.50"), Decimal("-0.000"), Decimal("1E+3"),
    Decimal("12345678901234567890.1234567890"), -0.0, 5e-324, 1.7976931348623157e308, 0.1,
    "😀 emoji", "", "\udcff", b"", b"\x00\xff", dt.date(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
    dt.datetime(2024, 1, 1), dt.timedelta(hours=-838, minutes=-59, seconds=-59),
    dt.timedelta(microseconds=-1), dt.time(23, 59, 59, 1), True, False, None,
])
def test_tag_round_trips_edge_values(value: Any) -> None:
    assert identical(untag(json.loads(json.dumps(tag(value)))), value)


def test_big_ints_are_text_in_json() -> None:
    assert tag(2 ** 64 - 1) == {"int": "18446744073709551615"}
    assert tag(Decimal("1.50")) == {"dec": "1.50"}
    assert tag(0.1) == {"float": "0.1"}


def test_tag_refuses_unknown_types() -> None:
    with pytest.raises(UndoValueError, match="set"):
        tag({"a"})
    with pytest.raises(UndoValueError):
        untag({"complex": "1j"})
    with pytest.raises(UndoValueError):
        untag({"int": "x"})


# ---------------------------------------------------------------------------------------
# Undo records

ALL_TYPES = TableMeta("t_all_0", (
    ColumnMeta("id", "bigint", False, auto_increment=True),
    ColumnMeta("c_int", "int"), ColumnMeta("c_decimal", "decimal"), ColumnMeta("c_float", "double"),
    ColumnMeta("c_str", "varchar"), ColumnMeta("c_bytes", "varbinary"), ColumnMeta("c_date", "date"),
    ColumnMeta("c_datetime", "datetime"), ColumnMeta("c_time", "time"), ColumnMeta("c_bit", "bit"),
    ColumnMeta("c_json", "longtext"), ColumnMeta("c_bool", "tinyint"), ColumnMeta("c_gen", "int", generated=True),
), ("id",))
COLUMN_VALUES = {
    "c_int": STRATEGIES["int"], "c_decimal": STRATEGIES["decimal"], "c_float": STRATEGIES["float"],
    "c_str": STRATEGIES["str"], "c_bytes": STRATEGIES["bytes"], "c_date": STRATEGIES["date"],
    "c_datetime": STRATEGIES["datetime"], "c_time": TIME_RANGE, "c_bit": st.binary(max_size=8),
    "c_json": st.just('{"a": [1, 2.50, "😀"]}'), "c_bool": STRATEGIES["bool"], "c_gen": STRATEGIES["int"],
}


@st.composite
def rows(draw: st.DrawFn, n: int | None = None) -> list[RowImage]:
    count = n if n is not None else draw(st.integers(0, 4))
    ids = draw(st.lists(st.integers(0, 2 ** 64 - 1), min_size=count, max_size=count, unique=True))
    return [RowImage({"id": i, **{c: draw(st.none() | s) for c, s in COLUMN_VALUES.items()}}) for i in ids]


def same_record(a: UndoRecord, b: UndoRecord) -> bool:
    def same_image(x: TableImage | None, y: TableImage | None) -> bool:
        if x is None or y is None:
            return x is y
        return x.table == y.table and len(x.rows) == len(y.rows) and all(
            r.values.keys() == s.values.keys() and all(identical(r.values[k], s.values[k]) for k in r.values)
            for r, s in zip(x.rows, y.rows, strict=True))
    return (a.branch_id, a.sql_kind, a.table) == (b.branch_id, b.sql_kind, b.table) and \
        same_image(a.before, b.before) and same_image(a.after, b.after)


@settings(max_examples=150)
@given(kind=st.sampled_from(["INSERT", "UPDATE", "DELETE"]), data=st.data(),
       branch=st.integers(0, 2 ** 63 - 1))
def test_undo_record_json_round_trip(kind: str, data: st.DataObject, branch: int) -> None:
    before_rows = data.draw(rows())
    before = TableImage(ALL_TYPES, before_rows)
    after = TableImage(ALL_TYPES, [RowImage({**r.values, "c_str": "changed"}) for r in before_rows])
    record = UndoRecord(branch, kind, "t_all_0",
                        before=before if kind != "INSERT" else None,
                        after=(after if kind == "UPDATE" else before) if kind != "DELETE" else None)
    text = to_json(record)
    assert text.isascii()
    assert same_record(from_json(text), record)
    assert same_record(UndoRecord.from_json(text.encode()), record)


def test_record_json_has_version_and_is_readable() -> None:
    record = UndoRecord(3, "INSERT", "t_all_0", after=TableImage(ALL_TYPES, [
        RowImage({c.name: None for c in ALL_TYPES.columns} | {"id": 2 ** 64 - 1, "c_str": "😀"})]))
    data = json.loads(record.to_json())
    assert data["format"] == "dbmesh-undo" and data["version"] == 1
    assert data["after"]["rows"][0][0] == {"int": "18446744073709551615"}
    assert data["after"]["rows"][0][4] == "😀"
    assert data["after"]["table"]["columns"][-1] == {"name": "c_gen", "type": "int", "nullable": True,
                                                     "generated": True}


def test_from_json_refuses_other_versions_and_garbage() -> None:
    record = UndoRecord(1, "DELETE", "t_all_0", before=TableImage(ALL_TYPES, []))
    data = json.loads(record.to_json())
    with pytest.raises(UndoFormatError, match="version 2 is not supported"):
        from_json(json.dumps({**data, "version": 2}))
    with pytest.raises(UndoFormatError, match="not a dbmesh undo record"):
        from_json("{}")
    with pytest.raises(UndoFormatError, match="not JSON"):
        from_json(b"\xff")
    with pytest.raises(UndoFormatError, match="before image must be present"):
        from_json(json.dumps({**data, "sql_kind": "INSERT"}))
    with pytest.raises(UndoFormatError, match="malformed"):
        from_json(json.dumps({k: v for k, v in data.items() if k != "table"}))
    with pytest.raises(UndoFormatError, match="bad int"):
        from_json(json.dumps({**data, "before": {**data["before"], "rows": [[{"int": "x"}] * 13]}}))


def test_record_shape_is_checked() -> None:
    image = TableImage(ALL_TYPES, [])
    with pytest.raises(UndoFormatError, match="before image"):
        UndoRecord(1, "INSERT", "t_all_0", before=image, after=image)
    with pytest.raises(UndoFormatError, match="after image"):
        UndoRecord(1, "UPDATE", "t_all_0", before=image)
    with pytest.raises(UndoFormatError, match="image of table t_all_0"):
        UndoRecord(1, "DELETE", "other", before=image)
    with pytest.raises(UndoFormatError, match="unknown kind"):
        UndoRecord(1, "MERGE", "t_all_0")  # type: ignore[arg-type]
    no_key = TableMeta("k", (ColumnMeta("a", "int"),), ())
    with pytest.raises(UndoFormatError, match="no primary key"):
        UndoRecord(1, "DELETE", "k", before=TableImage(no_key, []))
    row = RowImage({c.name: 1 for c in ALL_TYPES.columns})
    with pytest.raises(UndoFormatError, match="different rows"):
        UndoRecord(1, "UPDATE", "t_all_0", before=TableImage(ALL_TYPES, [row]), after=image)
    with pytest.raises(UndoFormatError, match="a row has columns"):
        TableImage(ALL_TYPES, [RowImage({"id": 1})])
    with pytest.raises(UndoFormatError, match="not columns"):
        TableMeta("x", (ColumnMeta("a", "int"),), ("b",))


def test_tag_error_names_the_table() -> None:
    meta = TableMeta("t_x", (ColumnMeta("id", "int"),), ("id",))
    record = UndoRecord(1, "INSERT", "t_x", after=TableImage(meta, [RowImage({"id": object()})]))
    with pytest.raises(UndoValueError, match="t_x"):
        record.to_json()


# ---------------------------------------------------------------------------------------
# Text protocol decoding


@pytest.mark.parametrize(("type_name", "raw", "value"), [
    ("bigint", b"18446744073709551615", 2 ** 64 - 1),
    ("tinyint", b"-128", -128),
    ("year", b"2024", 2024),
    ("decimal", b"-0.50", Decimal("-0.50")),
    ("double", b"1.7976931348623157e308", 1.7976931348623157e308),
    ("float", b"-3.40282e38", -3.40282e38),
    ("varchar", "😀".encode(), "😀"),
    ("json", b'{"a": 1}', '{"a": 1}'),
    ("enum", b"b", "b"),
    ("set", b"x,z", "x,z"),
    ("varbinary", b"\x00\xff", b"\x00\xff"),
    ("blob", b"", b""),
    ("bit", b"\x02\x01", b"\x02\x01"),
    ("date", b"2024-02-29", dt.date(2024, 2, 29)),
    ("date", b"0000-00-00", "0000-00-00"),
    ("date", b"2024-00-10", "2024-00-10"),
    ("datetime", b"2024-02-29 23:59:59.000001", dt.datetime(2024, 2, 29, 23, 59, 59, 1)),
    ("datetime", b"2024-02-29 23:59:59.5", dt.datetime(2024, 2, 29, 23, 59, 59, 500000)),
    ("datetime", b"2024-02-29 23:59:59", dt.datetime(2024, 2, 29, 23, 59, 59)),
    ("timestamp", b"0000-00-00 00:00:00", "0000-00-00 00:00:00"),
    ("time", b"-00:30:00.500000", -dt.timedelta(minutes=30, microseconds=500000)),
    ("time", b"838:59:59", dt.timedelta(hours=838, minutes=59, seconds=59)),
    ("time", b"-838:59:59.000000", -dt.timedelta(hours=838, minutes=59, seconds=59)),
    ("int", None, None),
])
def test_decode_text(type_name: str, raw: bytes | None, value: Any) -> None:
    assert identical(decode_text(type_name, raw), value)


def test_decode_text_keeps_invalid_utf8() -> None:
    text = decode_text("varchar", b"a\xff")
    assert text.encode("utf-8", "surrogateescape") == b"a\xff"


def test_image_from_rows_text_and_driver_values() -> None:
    meta = TableMeta("t", (ColumnMeta("id", "bigint"), ColumnMeta("d", "decimal"), ColumnMeta("t", "time")),
                     ("id",))
    image = image_from_rows(meta, [[b"1", b"1.50", b"-01:00:00"], [b"2", None, None]], text=True)
    assert image.rows[0].values == {"id": 1, "d": Decimal("1.50"), "t": dt.timedelta(hours=-1)}
    assert image.keys() == [(1,), (2,)]
    assert image_from_rows(meta, [(1, None, None)]).rows[0].values == {"id": 1, "d": None, "t": None}
    with pytest.raises(UndoFormatError, match="2 values for 3 columns"):
        image_from_rows(meta, [(1, 2)])


# ---------------------------------------------------------------------------------------
# SQL literals


@settings(max_examples=300)
@given(value=st.one_of(STRATEGIES["datetime"], STRATEGIES["date"], TIME_RANGE))
def test_temporal_literals_read_back(value: Any) -> None:
    text = literal(value)
    assert text[0] == text[-1] == "'"
    type_name = ("time" if isinstance(value, dt.timedelta) else
                 "datetime" if isinstance(value, dt.datetime) else "date")
    assert identical(decode_text(type_name, text[1:-1].encode()), value)


@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_float_literals_are_exact_doubles(value: float) -> None:
    text = literal(value)
    assert "e" in text and struct.pack("<d", float(text)) == struct.pack("<d", value)


@given(value=st.text(alphabet=st.characters(exclude_categories=["Cs"]) | ESCAPED))
def test_string_literals_are_hex(value: str) -> None:
    text = literal(value)
    assert text.startswith("_utf8mb4 X'")
    assert bytes.fromhex(text[len("_utf8mb4 X'"):-1]) == value.encode("utf-8", "surrogateescape")


@pytest.mark.parametrize(("value", "text"), [
    (None, "NULL"), (True, "1"), (2 ** 64 - 1, "18446744073709551615"), (Decimal("1E+3"), "1000"),
    (Decimal("-0.050"), "-0.050"), (0.1, "0.1e0"), (1e300, "1e+300"), (b"\x00\xab", "X'00AB'"),
    (b"", "X''"), ("a'b", "_utf8mb4 X'612762'"), (dt.date(1, 2, 3), "'0001-02-03'"),
    (dt.datetime(2024, 1, 2, 3, 4, 5), "'2024-01-02 03:04:05.000000'"),
    (dt.timedelta(minutes=-30), "'-00:30:00.000000'"), (dt.timedelta(hours=838), "'838:00:00.000000'"),
    (dt.time(1, 2, 3, 4), "'01:02:03.000004'"),
])
def test_literal(value: Any, text: str) -> None:
    assert literal(value) == text


def test_literal_refuses_what_mariadb_cannot_store() -> None:
    for bad in (math.nan, math.inf, Decimal("NaN"), dt.datetime(2024, 1, 1, tzinfo=dt.UTC)):
        with pytest.raises(ValueError):
            literal(bad)
    with pytest.raises(TypeError):
        literal(object())


def test_inline_and_percent_quoting() -> None:
    name = quote_ident("100%`s")
    assert name == "`100%%``s`"
    stmt = Statement(f"SELECT * FROM {name} WHERE a = %s AND b = %s", ("x%s", 5))
    assert stmt.inline() == "SELECT * FROM `100%``s` WHERE a = _utf8mb4 X'782573' AND b = 5"
    with pytest.raises(ValueError, match="placeholders"):
        inline("a = %s", ())
    with pytest.raises(ValueError, match="placeholders"):
        inline("a = 1", (1,))
    with pytest.raises(ValueError, match="stray"):
        inline("a LIKE 'x%'", ())


def test_inline_matches_pymysql_formatting() -> None:
    """The driver applies the same %% convention as inline (on a literal-free statement)."""
    sql = f"SELECT {quote_ident('a%b')} FROM t WHERE x = %s"
    assert (sql % ("1",)) == inline(sql, (1,))


# ---------------------------------------------------------------------------------------
# Exact equality and key text


@pytest.mark.parametrize(("a", "b", "equal"), [
    (Decimal("1.5"), Decimal("1.500"), True),
    (Decimal("0.1"), 0.1, False),
    (1, Decimal("1.0"), True),
    (0.0, -0.0, False),
    (1.5, 1.5, True),
    ("abc", "ABC", False),
    ("a", b"a", False),
    (b"\x00", b"\x00", True),
    (b"\x00", bytearray(b"\x00"), True),
    (dt.datetime(2024, 1, 1), dt.date(2024, 1, 1), False),
    (dt.datetime(2024, 1, 1, 0, 0, 0, 1), dt.datetime(2024, 1, 1), False),
    (dt.timedelta(seconds=-1), dt.timedelta(seconds=-1), True),
    (None, None, True),
    (None, 0, False),
    (0, None, False),
    ("", None, False),
    (math.nan, math.nan, True),
])
def test_values_equal(a: Any, b: Any, equal: bool) -> None:
    assert values_equal(a, b) is equal
    assert values_equal(b, a) is equal


@given(value=ANY_VALUE.filter(lambda v: v is not None))
def test_key_component_is_canonical(value: Any) -> None:
    assert key_component(value) == key_component(untag(json.loads(json.dumps(tag(value)))))


def test_key_component_ignores_decimal_scale() -> None:
    assert key_component(Decimal("1.50")) == key_component(Decimal("1.5")) == "1.5"
    assert key_component(Decimal("1E+2")) == "100"
    assert key_component(Decimal("-0.00")) == "0"
    assert key_component(b"\x01") == "0x01"
