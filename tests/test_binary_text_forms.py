"""Rows a merge compares decode to the same values from either protocol: the same table read
from a real MariaDB with COM_QUERY (text rows) and with COM_STMT_EXECUTE (binary rows)."""

from __future__ import annotations

import asyncio
import datetime as dt
import struct

import pytest

from dbmesh.backend.connection import BackendConnection
from dbmesh.protocol.binary import text_form_decoder
from dbmesh.protocol.constants import Command, FieldType
from dbmesh.protocol.resultset import result_rows
from dbmesh.protocol.scanner import ResponseKind
from dbmesh.protocol.textvalues import RawTime, encode_value, row_decoder

DB = "binary_forms"
TABLE = f"""CREATE TABLE {DB}.t (
    id INT PRIMARY KEY, i INT, u INT UNSIGNED, big BIGINT UNSIGNED, tiny TINYINT, small SMALLINT,
    medium MEDIUMINT, y YEAR, d DECIMAL(12,3), f FLOAT, g DOUBLE, day DATE, dt DATETIME, dt3 DATETIME(3),
    dt6 DATETIME(6), ts TIMESTAMP(2) NULL, tm TIME, tm4 TIME(4), s VARCHAR(20), vb VARBINARY(8), b BLOB,
    tx TEXT, e ENUM('x', 'y'), st SET('a', 'b'), bits BIT(8), js JSON, ch CHAR(3) BINARY
) DEFAULT CHARSET=utf8mb4"""
ROWS = [
    "(1, -5, 4000000000, 18446744073709551615, -128, 32767, -8388608, 2024, -123456789.125, 1.1, 0.1, "
    "'2024-02-29', '2024-01-02 03:04:05', '2024-01-02 03:04:05.5', '2024-01-02 03:04:05.000001', "
    "'2024-01-02 03:04:05.25', '-838:59:59', '100:00:00.1234', 'Ünterwegs', X'00FF', X'C0', 'Étage', 'y', "
    "'a,b', b'101', '{\"k\": [1, 2]}', 'ab')",
    "(2, NULL, 0, 0, 0, 0, 0, 1901, 0.000, -3.5e38, 1e-300, '0000-00-00', '0000-00-00 00:00:00', "
    "'2024-01-02 00:00:00', '1999-12-31 23:59:59.999999', NULL, '00:00:00', '-00:00:01.5', '', '', '', '', "
    "'x', '', b'0', 'null', '')",
    "(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
    "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
]
SELECT = f"SELECT *, MAX(dt6) OVER () AS latest, CAST(tm AS TIME(2)) AS tm2 FROM {DB}.t ORDER BY id"


@pytest.fixture(scope="module")
def both_protocols(sandbox):
    """The rows of SELECT as (text fields, text rows, binary fields, binary rows)."""
    with sandbox.admin_connect("ds_0") as admin, admin.cursor() as cur:
        cur.execute("SET SESSION sql_mode = ''")  # zero dates
        cur.execute(f"DROP DATABASE IF EXISTS {DB}")
        cur.execute(f"CREATE DATABASE {DB}")
        cur.execute(TABLE)
        cur.execute(f"INSERT INTO {DB}.t VALUES {', '.join(ROWS)}")

    async def fetch():
        info = sandbox.info()
        shard = info.shard("ds_0")
        conn = BackendConnection("ds_0", shard.host, shard.port, 0)
        await conn.connect(info.user, info.password, DB, 10)
        try:
            payloads, scanner = await conn.collect(bytes((Command.QUERY,)) + SELECT.encode(), ResponseKind.RESULT)
            assert scanner.error is None, scanner.error
            text = result_rows(payloads, conn.deprecate_eof)
            payloads, scanner = await conn.collect(bytes((Command.STMT_PREPARE,)) + SELECT.encode(),
                                                   ResponseKind.PREPARE)
            assert scanner.error is None, scanner.error
            execute = bytes((Command.STMT_EXECUTE,)) + struct.pack("<IBI", scanner.stmt_id, 0, 1)
            payloads, scanner = await conn.collect(execute, ResponseKind.RESULT)
            assert scanner.error is None, scanner.error
            return text, result_rows(payloads, conn.deprecate_eof)
        finally:
            conn.close()

    try:
        yield asyncio.run(fetch())
    finally:
        with sandbox.admin_connect("ds_0") as admin, admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {DB}")


def test_binary_rows_decode_to_the_text_protocols_values(both_protocols):
    text, binary = both_protocols
    fields = binary.parsed_fields()
    assert [(f.name, f.type, f.charset) for f in fields] == [(f.name, f.type, f.charset)
                                                            for f in text.parsed_fields()]
    from_text = [row_decoder(text.parsed_fields())(p) for p in text.rows]
    from_binary = [text_form_decoder(fields)(p) for p in binary.rows]
    assert len(from_binary) == len(ROWS)
    for row_text, row_binary in zip(from_text, from_binary, strict=True):
        for field, a, b in zip(fields, row_text, row_binary, strict=True):
            if field.type == FieldType.FLOAT and a is not None:
                # single precision: the text has 6 significant digits, the binary value is exact
                assert float(f"{b:.6g}") == a, (field.name, a, b)
            else:
                assert (isinstance(a, float) or type(a) is type(b)) and a == b, (field.name, a, b)
            if isinstance(a, RawTime):
                assert a.raw == b.raw, (field.name, a.raw, b.raw)  # sent back as the server wrote it


def test_time_values_order_as_durations_and_keep_their_text():
    texts = ["100:00:00", "99:59:59.5", "-00:00:01.5", "-838:59:59", "00:00:00", "-00:00:00.25", "02:03:04.000100"]
    ordered = sorted(RawTime(t) for t in texts)
    assert [t.raw for t in ordered] == ["-838:59:59", "-00:00:01.5", "-00:00:00.25", "00:00:00", "02:03:04.000100",
                                        "99:59:59.5", "100:00:00"]
    assert RawTime("-00:00:00.25") == dt.timedelta(microseconds=-250000)
    assert [encode_value(RawTime(t)) for t in texts] == [encode_value(t) for t in texts]


def test_the_first_columns_decode_alone(both_protocols):
    """A merge that compares only leading columns decodes only those."""
    text, binary = both_protocols
    fields = binary.parsed_fields()
    for count in (0, 1, 5, len(fields)):
        from_binary = [text_form_decoder(fields, count)(p) for p in binary.rows]
        assert from_binary == [text_form_decoder(fields)(p)[:count] for p in binary.rows]
        assert [row_decoder(text.parsed_fields(), count)(p) for p in text.rows] == \
            [row_decoder(text.parsed_fields())(p)[:count] for p in text.rows]
