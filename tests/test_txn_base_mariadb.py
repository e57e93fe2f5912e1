"""The BASE core against a real MariaDB: run statements the way the runner will (images,
undo log rows in the same local transaction), commit, then compensate from the undo log
and check the table is back to its original content byte for byte (CHECKSUM TABLE plus
every value, exactly).

Each scenario runs twice: with PyMySQL (driver values, ``%s`` parameters) and with the
sidecar's own BackendConnection (text-protocol bytes decoded by ``decode_text``, statements
sent as ``Statement.inline()`` text)."""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pymysql
import pytest
import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbmesh.backend.connection import BackendConnection, BackendError
from txn import global_lock, global_log, meta, reverse, snapshot, undo_log
from txn.images import TableImage, TableMeta, UndoRecord, image_from_rows
from txn.sqltext import Statement
from txn.values import values_equal

DB = "dbmesh_txn_base_it"

ALL_TYPES_DDL = """CREATE TABLE all_types (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  c_tinyint TINYINT, c_smallint SMALLINT UNSIGNED, c_mediumint MEDIUMINT, c_int INT, c_bigint BIGINT,
  c_ubigint BIGINT UNSIGNED, c_decimal DECIMAL(30,10), c_decimal0 DECIMAL(20,0), c_float FLOAT, c_double DOUBLE,
  c_char CHAR(10), c_varchar VARCHAR(100), c_text TEXT, c_latin1 VARCHAR(20) CHARACTER SET latin1,
  c_binary BINARY(4), c_varbinary VARBINARY(20), c_blob BLOB,
  c_date DATE, c_datetime DATETIME(6), c_datetime0 DATETIME, c_timestamp TIMESTAMP(6) NULL DEFAULT NULL,
  c_time TIME(6), c_year YEAR, c_bit BIT(10), c_bool BOOLEAN, c_enum ENUM('a','b','c'), c_set SET('x','y','z'),
  c_json JSON,
  c_gen BIGINT AS (c_int + 1) VIRTUAL,
  c_stored VARCHAR(120) AS (CONCAT(c_varchar, '!')) PERSISTENT,
  c_stamp TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""

SEED_COLUMNS = ("id", "c_tinyint", "c_smallint", "c_mediumint", "c_int", "c_bigint", "c_ubigint", "c_decimal",
                "c_decimal0", "c_float", "c_double", "c_char", "c_varchar", "c_text", "c_latin1", "c_binary",
                "c_varbinary", "c_blob", "c_date", "c_datetime", "c_datetime0", "c_timestamp", "c_time",
                "c_year", "c_bit", "c_bool", "c_enum", "c_set", "c_json", "c_stamp")
SEED_ROWS: list[tuple[Any, ...]] = [
    (1, -128, 65535, -8388608, 2147483647, -(2 ** 63), 2 ** 64 - 1, Decimal("-12345678901234567890.1234567890"),
     Decimal("99999999999999999999"), 3.4028234663852886e38, 1.7976931348623157e308, "ab",
     "😀 emoji ' \" \\ %s", "multi\nline\ttext", "café", b"\x00\x01\x02\x03", b"\xff\x00", bytes(range(256)),
     dt.date(1000, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999), dt.datetime(2024, 2, 29, 12, 0, 0),
     dt.datetime(2038, 1, 19, 3, 14, 7, 999999), -dt.timedelta(hours=838, minutes=59, seconds=59), 2155,
     b"\x03\xff", 1, "c", "x,z", '{"a": [1, 2.50, "😀"], "b": null}', dt.datetime(2020, 1, 1, 0, 0, 0, 1)),
    (2, 0, 0, 0, 0, 0, 0, Decimal("0E-10"), Decimal("0"), 0.1, -0.0, "", "", "", "", b"\x00\x00\x00\x00", b"",
     b"", "0000-00-00", "0000-00-00 00:00:00", dt.datetime(1970, 1, 1), dt.datetime(1970, 1, 1, 0, 0, 1),
     dt.timedelta(microseconds=1), 1901, b"\x00\x00", 0, "a", "", "[]", dt.datetime(2021, 6, 1, 12, 0, 0)),
    (3, *([None] * 28), dt.datetime(2022, 1, 1)),
    (4, 7, 7, 7, 7, 7, 7, Decimal("1.5000000000"), Decimal("42"), 1.100000023841858, 2 / 3, "x", "hello",
     "world", "naïve", b"abcd", b"xyz", b"\x00" * 10, dt.date(2024, 1, 2), dt.datetime(2024, 1, 2, 3, 4, 5, 6),
     dt.datetime(2024, 1, 2, 3, 4, 5), dt.datetime(2024, 1, 2, 3, 4, 5, 600000), dt.timedelta(minutes=-30), 2024,
     b"\x00\x05", 1, "b", "y", '{"k": "v"}', dt.datetime(2023, 3, 3)),
]

ITEMS_DDL = """CREATE TABLE items (
  region VARCHAR(8) COLLATE utf8mb4_general_ci NOT NULL, at DATETIME(6) NOT NULL, tag VARBINARY(8) NOT NULL,
  qty INT, note VARCHAR(20), PRIMARY KEY (region, at, tag)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
ITEMS_SEED = [("eu", dt.datetime(2024, 1, 1, 0, 0, 0, 1), b"\x00", 1, "a"),
              ("eu", dt.datetime(2024, 1, 1, 0, 0, 0, 1), b"\x00\x01", 2, None),
              ("us", dt.datetime(2024, 1, 2), b"", None, "😀")]


# ---------------------------------------------------------------------------------------
# Two ways to talk to the server


@dataclass
class Result:
    rows: list[Sequence[Any]]
    affected: int
    last_insert_id: int


class DriverExecutor:
    text = False

    def __init__(self, conn: pymysql.Connection):
        self.conn = conn

    def run(self, sql: str, params: Sequence[Any] | None = None) -> Result:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return Result(list(cur.fetchall() or ()), cur.rowcount, cur.lastrowid or 0)


class TextExecutor:
    text = True

    def __init__(self, conn: BackendConnection, loop: asyncio.AbstractEventLoop):
        self.conn = conn
        self.loop = loop

    def run(self, sql: str, params: Sequence[Any] | None = None) -> Result:
        if params is not None:
            sql = Statement(sql, tuple(params)).inline()
        result = self.loop.run_until_complete(self.conn.query(sql))
        return Result(result.rows, result.affected_rows, result.last_insert_id)


@pytest.fixture(scope="module")
def database(sandbox) -> Iterator[str]:
    with sandbox.admin_connect("ds_0") as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DB}")
        cur.execute(f"CREATE DATABASE {DB}")
    try:
        yield DB
    finally:
        with sandbox.admin_connect("ds_0") as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {DB}")


@pytest.fixture
def admin(sandbox, database) -> Iterator[pymysql.Connection]:
    conn = sandbox.admin_connect("ds_0", database=database)
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        for ddl in (undo_log.UNDO_LOG_DDL, global_log.GLOBAL_TXN_DDL, global_lock.GLOBAL_LOCK_DDL):
            cur.execute(ddl)
        cur.execute("DELETE FROM dbmesh_undo_log")
        cur.execute("DROP TABLE IF EXISTS all_types, items")
        cur.execute(ALL_TYPES_DDL)
        cur.execute(ITEMS_DDL)
        cur.executemany(f"INSERT INTO all_types ({', '.join(SEED_COLUMNS)}) "
                        f"VALUES ({', '.join(['%s'] * len(SEED_COLUMNS))})", SEED_ROWS)
        cur.executemany("INSERT INTO items VALUES (%s, %s, %s, %s, %s)", ITEMS_SEED)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(params=["driver", "text"])
def executor(request, sandbox, database) -> Iterator[DriverExecutor | TextExecutor]:
    if request.param == "driver":
        conn = sandbox.admin_connect("ds_0", database=database)
        ex: DriverExecutor | TextExecutor = DriverExecutor(conn)
        ex.run("SET time_zone = '+00:00'")
        try:
            yield ex
        finally:
            conn.close()
        return
    info = sandbox.info()
    shard = info.shard("ds_0")
    loop = asyncio.new_event_loop()
    backend = BackendConnection("ds_0", shard.host, shard.port, 0)
    loop.run_until_complete(backend.connect(info.user, info.password, database, 5))
    ex = TextExecutor(backend, loop)
    ex.run("SET time_zone = '+00:00'")
    try:
        yield ex
    finally:
        backend.close()
        loop.close()


# ---------------------------------------------------------------------------------------
# A minimal runner built from the core's API, as its docstrings describe


def table_meta(ex, table: str) -> TableMeta:
    return meta.table_meta(table, ex.run(*meta.columns_sql(DB, table)).rows,
                           ex.run(*meta.primary_key_sql(DB, table)).rows)


def select_image(ex, table_meta_: TableMeta, stmt: Statement) -> TableImage:
    return image_from_rows(table_meta_, ex.run(*stmt).rows, text=ex.text)


def execute_dml(ex, sql: str, branch_id: int) -> UndoRecord | None:
    stmt = sqlglot.parse_one(sql, read="mysql")
    kind = snapshot.statement_kind(stmt)
    table = stmt.this.this.name if isinstance(stmt.this, sqlglot.exp.Schema) else stmt.this.name
    tm = table_meta(ex, table)
    if kind == "INSERT":
        result = ex.run(sql)
        keys = snapshot.inserted_keys(stmt, tm, result.last_insert_id, result.affected)
        after = snapshot.inserted_image(select_image(ex, tm, snapshot.after_image_sql(tm, keys)), keys)
        return UndoRecord(branch_id, "INSERT", tm.name, after=after)
    before = image_from_rows(tm, ex.run(snapshot.before_image_sql(stmt, tm)).rows, text=ex.text)
    result = ex.run(snapshot.restrict_to_keys(stmt, tm, before.keys()))
    snapshot.check_affected(stmt, before, result.affected)
    if not before.rows:
        return None
    if kind == "DELETE":
        return UndoRecord(branch_id, "DELETE", tm.name, before=before)
    after = snapshot.updated_image(before, select_image(ex, tm, snapshot.after_image_sql(tm, before.keys())))
    return UndoRecord(branch_id, "UPDATE", tm.name, before=before, after=after)


def run_branch(ex, xid: str, branch_id: int, statements: Sequence[str]) -> list[UndoRecord]:
    """Phase one: the statements and their undo log in one local transaction, committed."""
    records = []
    ex.run("BEGIN")
    ex.run(*undo_log.insert_header(xid, branch_id))
    for sql in statements:
        record = execute_dml(ex, sql, branch_id)
        if record is not None:
            records.append(record)
            ex.run(*undo_log.insert_record(xid, branch_id, len(records), record))
    ex.run("COMMIT")
    return records


def compensate(ex, xid: str, branch_id: int) -> list[reverse.Conflict]:
    """Global rollback of one branch from its undo log; stops at the first conflict."""
    ex.run("BEGIN")
    found = undo_log.parse_branch(ex.run(*undo_log.select_branch(xid, branch_id)).rows)
    assert found.state == "records"
    for record in reversed(found.records):
        current = select_image(ex, record.meta, reverse.current_image_sql(record.meta, reverse.record_keys(record)))
        problems = reverse.conflicts(reverse.expected_image(record), current)
        if problems:
            ex.run("ROLLBACK")
            return problems
        for stmt in reverse.reverse_record(record):
            ex.run(*stmt)
    ex.run(*undo_log.delete_branch(xid, branch_id))
    ex.run("COMMIT")
    return []


def state(admin: pymysql.Connection, table: str) -> tuple[Any, list[tuple[Any, ...]]]:
    """CHECKSUM TABLE (the stored bytes) and every row, floats as their bits."""
    def exact(v: Any) -> Any:
        return ("float", struct.pack("<d", v)) if isinstance(v, float) else (type(v).__name__, v)
    with admin.cursor() as cur:
        cur.execute(f"CHECKSUM TABLE {table} EXTENDED")
        checksum = cur.fetchone()[1]
        cur.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3")
        return checksum, [tuple(exact(v) for v in row) for row in cur.fetchall()]


def differences(old: list[tuple[Any, ...]], new: list[tuple[Any, ...]]) -> str:
    diffs = [f"row {i} column {j}: {a} -> {b}" for i, (ra, rb) in enumerate(zip(old, new, strict=False))
             for j, (a, b) in enumerate(zip(ra, rb, strict=True)) if a != b]
    return "; ".join(diffs) or f"same values, different checksum or row count ({len(old)} -> {len(new)})"


def undo_rows(admin: pymysql.Connection, xid: str) -> int:
    with admin.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM dbmesh_undo_log WHERE xid = %s", (xid,))
        return cur.fetchone()[0]


def round_trip(admin, ex, table: str, statements: Sequence[str], xid: str) -> list[UndoRecord]:
    original = state(admin, table)
    records = run_branch(ex, xid, 1, statements)
    assert state(admin, table) != original, "the statements changed nothing"
    assert compensate(ex, xid, 1) == []
    now = state(admin, table)
    assert now == original, differences(original[1], now[1])
    assert undo_rows(admin, xid) == 0
    return records


# ---------------------------------------------------------------------------------------
# Scenarios

EVERY_COLUMN_SET = (
    "c_tinyint = 127, c_smallint = 1, c_mediumint = 8388607, c_int = -5, c_bigint = 9223372036854775807, "
    "c_ubigint = 18446744073709551614, c_decimal = 0.0000000001, c_decimal0 = -1, c_float = -1.17549435e-38, "
    "c_double = 4.9406564584124654e-324, c_char = 'zz', c_varchar = 'new 🎉', c_text = REPEAT('t', 300), "
    "c_latin1 = 'ÿ', c_binary = X'FFFFFFFF', c_varbinary = X'00', c_blob = X'DEADBEEF', c_date = '2000-02-29', "
    "c_datetime = '1970-01-01 00:00:00.000001', c_datetime0 = '2000-01-01 00:00:00', "
    "c_timestamp = '2001-01-01 00:00:00.5', c_time = '838:59:59', c_year = 1999, c_bit = b'1010101010', "
    "c_bool = 0, c_enum = 'a', c_set = 'x,y,z', c_json = '{\"new\": true}'")


def test_insert_with_generated_ids(admin, executor) -> None:
    records = round_trip(admin, executor, "all_types", [
        "INSERT INTO all_types (c_int, c_varchar, c_decimal, c_json, c_bit, c_time) VALUES "
        "(1, 'a', 1.5, '[]', b'1', '-00:00:01'), (2, 'b😀', NULL, NULL, NULL, NULL), (NULL, NULL, 2, '{}', "
        "X'01', '12:00')"], "it-insert-auto")
    assert [len(r.after.rows) for r in records] == [3]


def test_insert_with_explicit_keys(admin, executor) -> None:
    round_trip(admin, executor, "all_types", [
        "INSERT INTO all_types (id, c_ubigint, c_varchar) VALUES (18446744073709551614, 18446744073709551615, "
        "'max'), (1000, 0, 'k'), ('1001', NULL, NULL)"], "it-insert-explicit")


def test_update_every_column(admin, executor) -> None:
    records = round_trip(admin, executor, "all_types", [
        f"UPDATE all_types SET {EVERY_COLUMN_SET} WHERE id IN (1, 2, 3)",
        "UPDATE all_types SET " + ", ".join(f"{c} = NULL" for c in SEED_COLUMNS[1:-1]) + " WHERE id = 4",
    ], "it-update-all")
    assert [len(r.before.rows) for r in records] == [3, 1]


def test_update_with_order_and_limit(admin, executor) -> None:
    records = round_trip(admin, executor, "all_types", [
        "UPDATE all_types SET c_varchar = CONCAT(c_varchar, '%'), c_double = c_double / 3, "
        "c_float = c_float / 3 WHERE c_int IS NOT NULL ORDER BY c_int DESC LIMIT 2",
        "UPDATE all_types SET c_int = c_int - 1 WHERE RAND() < 2 ORDER BY id LIMIT 1",
    ], "it-update-limit")
    assert [r.before.keys() for r in records] == [[(1,), (4,)], [(1,)]]


def test_update_that_changes_nothing_needs_no_compensation(admin, executor) -> None:
    original = state(admin, "all_types")
    records = run_branch(executor, "it-noop", 1, ["UPDATE all_types SET c_int = c_int WHERE id = 4",
                                                  "DELETE FROM all_types WHERE id = 99"])
    assert len(records) == 1 and reverse.reverse_record(records[0]) == []
    assert compensate(executor, "it-noop", 1) == []
    assert state(admin, "all_types") == original


def test_delete(admin, executor) -> None:
    round_trip(admin, executor, "all_types", ["DELETE FROM all_types WHERE id IN (1, 2)",
                                              "DELETE FROM all_types WHERE c_int IS NULL",
                                              "DELETE FROM all_types ORDER BY id DESC LIMIT 1"], "it-delete")


def test_mixed_branch_touching_the_same_rows(admin, executor) -> None:
    round_trip(admin, executor, "all_types", [
        "INSERT INTO all_types (c_int, c_varchar) VALUES (10, 'n1'), (11, 'n2')",
        "UPDATE all_types SET c_varchar = 'changed', c_decimal = c_decimal + 1 WHERE c_int >= 7",
        "DELETE FROM all_types WHERE c_int = 11 OR id = 2",
        f"UPDATE all_types SET {EVERY_COLUMN_SET} WHERE c_int = 10 OR id = 3",
        "INSERT INTO all_types (id, c_int) VALUES (2, 99)",
        "DELETE FROM all_types WHERE id = 2",
    ], "it-mixed")


def test_composite_key_table(admin, executor) -> None:
    records = round_trip(admin, executor, "items", [
        "INSERT INTO items VALUES ('ap', '2024-01-03 00:00:00.000002', X'FF00', 5, 'n'), "
        "('ap', '2024-01-03', '', NULL, NULL)",
        "UPDATE items SET qty = COALESCE(qty, 0) + 10, note = 'upd' WHERE region = 'EU'",
        "DELETE FROM items WHERE tag = X'00' OR region = 'us'",
    ], "it-composite")
    # The _ci match found the stored 'eu' rows; their keys come from the server.
    assert [k[0] for k in records[1].before.keys()] == ["eu", "eu"]


def test_conflicts_are_detected_and_nothing_is_undone(admin, executor) -> None:
    run_branch(executor, "it-conflict", 1, ["UPDATE items SET qty = 100 WHERE region = 'eu'",
                                            "DELETE FROM items WHERE region = 'us'"])
    with admin.cursor() as cur:
        cur.execute("UPDATE items SET note = 'other' WHERE tag = X'00'")
        cur.execute("INSERT INTO items VALUES ('us', '2024-01-02', '', 1, 'back')")
    before = state(admin, "items")
    problems = compensate(executor, "it-conflict", 1)
    # Newest record first: the DELETE's row is back.
    assert [(c.kind, c.key[0]) for c in problems] == [("inserted", "us")]
    with admin.cursor() as cur:
        cur.execute("DELETE FROM items WHERE region = 'us'")
    problems = compensate(executor, "it-conflict", 1)
    assert [(c.kind, c.columns) for c in problems] == [("changed", ("note",))]
    assert state(admin, "items") != before  # only the test's own DELETE changed it
    assert undo_rows(admin, "it-conflict") == 3


def test_tombstone_blocks_a_late_branch(admin, executor) -> None:
    found = undo_log.parse_branch(executor.run(*undo_log.select_branch("it-late", 1)).rows)
    assert found.state == "absent"
    executor.run(*undo_log.insert_tombstone("it-late", 1))
    with pytest.raises((pymysql.err.IntegrityError, BackendError)) as info:
        executor.run(*undo_log.insert_header("it-late", 1))
    assert str(undo_log.ER_DUP_ENTRY) in str(info.value)
    assert undo_log.parse_branch(executor.run(*undo_log.select_branch("it-late", 1)).rows).state == "tombstone"
    executor.run(*undo_log.delete_xid("it-late"))
    assert undo_log.parse_branch(executor.run(*undo_log.select_branch("it-late", 1)).rows).state == "absent"


def test_table_meta_from_the_server(executor) -> None:
    tm = table_meta(executor, "all_types")
    assert tm.primary_key == ("id",)
    assert tm.column("id").auto_increment and not tm.column("id").nullable
    assert tm.column("c_gen").generated and tm.column("c_stored").generated
    assert not tm.column("c_stamp").generated
    assert tm.column("c_json").type_name == "longtext"
    assert table_meta(executor, "items").primary_key == ("region", "at", "tag")


def test_global_log_on_the_server(admin, executor) -> None:
    parts = [global_log.Participant("ds_0", 1), global_log.Participant("ds_1", 2)]
    executor.run(*global_log.delete("it-g"))
    executor.run("DELETE FROM dbmesh_global_txn WHERE xid = 'it-g'")
    executor.run(*global_log.insert("it-g", parts[:1]))
    assert executor.run(*global_log.set_participants("it-g", parts)).affected == 1
    assert executor.run(*global_log.set_status("it-g", global_log.ROLLED_BACK)).affected == 0  # not rolling back
    assert executor.run(*global_log.set_status("it-g", global_log.ROLLING_BACK)).affected == 1
    assert [r[0] for r in executor.run(*global_log.select_for_recovery("it-", 0)).rows] in (["it-g"], [b"it-g"])
    assert executor.run(*global_log.select_for_recovery("it_", 0)).rows == []  # '_' is no wildcard here
    assert executor.run(*global_log.set_status("it-g", global_log.NEEDS_ATTENTION, "conflict on t")).affected == 1
    txn = global_log.from_row(executor.run(*global_log.select_one("it-g")).rows[0])
    assert (txn.status, txn.participants, txn.detail) == ("needs_attention", tuple(parts), "conflict on t")
    assert executor.run(*global_log.select_for_recovery("it-", 0)).rows == []  # an operator's now
    assert executor.run(*global_log.delete("it-g")).affected == 0  # not final
    executor.run(*global_log.set_status("it-g", global_log.ROLLING_BACK))
    executor.run(*global_log.set_status("it-g", global_log.ROLLED_BACK))
    assert executor.run(*global_log.delete("it-g")).affected == 1


def test_global_lock_on_the_server(admin, executor) -> None:
    tm = table_meta(executor, "items")
    rows = select_image(executor, tm, snapshot.after_image_sql(tm, [("eu", dt.datetime(2024, 1, 1, 0, 0, 0, 1),
                                                                    b"\x00")])).rows
    texts = [global_lock.pk_text(tm, rows[0]), '["other"]']
    executor.run(*global_lock.release("it-l1"))
    executor.run(*global_lock.release("it-l2"))
    executor.run(*global_lock.acquire("it-l1", f"{DB}.items", texts[:1]))
    with pytest.raises((pymysql.err.IntegrityError, BackendError)) as info:
        executor.run(*global_lock.acquire("it-l2", f"{DB}.items", texts))
    assert str(global_lock.ER_DUP_ENTRY) in str(info.value)
    held = executor.run(*global_lock.holders(f"{DB}.items", texts)).rows
    assert global_lock.split_holders(held, "it-l2") == (set(), {texts[0]: "it-l1"})
    assert global_lock.split_holders(held, "it-l1") == ({texts[0]}, {})
    executor.run(*global_lock.release("it-l1"))
    executor.run(*global_lock.acquire("it-l2", f"{DB}.items", texts))  # all or nothing: now all
    assert len(executor.run(*global_lock.holders(f"{DB}.items", texts)).rows) == 2
    executor.run(*global_lock.release("it-l2"))


# ---------------------------------------------------------------------------------------
# Literals and parameters store exactly the value they stand for


LITERAL_COLUMNS = {
    "d": ("DECIMAL(65,30)", st.decimals(min_value=-(10 ** 34), max_value=10 ** 34, places=30)),
    # + 0.0: the server stores -0.0 as 0.
    "f": ("DOUBLE", st.floats(allow_nan=False, allow_infinity=False).map(lambda x: x + 0.0)),
    "fl": ("FLOAT", st.floats(width=32, allow_nan=False, allow_infinity=False).map(lambda x: x + 0.0)),
    "s": ("VARCHAR(60) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
          st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60)),
    "b": ("VARBINARY(100)", st.binary(max_size=100)),
    "dt": ("DATETIME(6)", st.datetimes(min_value=dt.datetime(1000, 1, 1))),
    "da": ("DATE", st.dates(min_value=dt.date(1000, 1, 1))),
    "t": ("TIME(6)", st.timedeltas(min_value=-dt.timedelta(hours=838, minutes=59, seconds=59),
                                   max_value=dt.timedelta(hours=838, minutes=59, seconds=59))),
    "u": ("BIGINT UNSIGNED", st.integers(0, 2 ** 64 - 1)),
}


def test_literals_and_parameters_round_trip_through_the_server(sandbox, database) -> None:
    """Stored by literal or by driver parameter, read by driver and by text protocol."""
    conn = sandbox.admin_connect("ds_0", database=database)
    shard = sandbox.info().shard("ds_0")
    loop = asyncio.new_event_loop()
    backend = BackendConnection("ds_0", shard.host, shard.port, 0)
    loop.run_until_complete(backend.connect(sandbox.info().user, sandbox.info().password, database, 5))
    text = TextExecutor(backend, loop)
    columns = ", ".join(f"{name} {ddl}" for name, (ddl, _) in LITERAL_COLUMNS.items())
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS literals")
        cur.execute(f"CREATE TABLE literals (id INT PRIMARY KEY, {columns})")
    tm = meta.table_meta("literals", _columns_rows(conn, "literals"), [("id",)])
    names = tm.writable_columns()
    insert = Statement(f"INSERT INTO literals ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})")

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(values=st.fixed_dictionaries({n: s | st.none() for n, (_, s) in LITERAL_COLUMNS.items()}),
           inline=st.booleans())
    def check(values: dict[str, Any], inline: bool) -> None:
        row = {"id": 1, **values}
        params = tuple(row[n] for n in names)
        with conn.cursor() as cur:
            cur.execute("DELETE FROM literals")
            if inline:
                cur.execute(Statement(insert.sql, params).inline())
            else:
                cur.execute(insert.sql, params)
            cur.execute(*snapshot.after_image_sql(tm, [(1,)]))
            stored = image_from_rows(tm, cur.fetchall()).rows[0].values
        decoded = select_image(text, tm, snapshot.after_image_sql(tm, [(1,)])).rows[0].values
        for name in names:
            assert values_equal(stored[name], row[name]), (name, stored[name], row[name])
            assert values_equal(decoded[name], row[name]), (name, decoded[name], row[name])

    try:
        check()
    finally:
        conn.close()
        backend.close()
        loop.close()


def _columns_rows(conn: pymysql.Connection, table: str) -> list[Sequence[Any]]:
    with conn.cursor() as cur:
        cur.execute(*meta.columns_sql(DB, table))
        return list(cur.fetchall())
