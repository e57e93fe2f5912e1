"""Prepared statements whose parameters only route (ranges, aggregates, ORDER BY, DISTINCT,
IN lists, writes) on a sharded database, through a real driver: the same statements,
prepared the same way, on one plain MariaDB database and through the proxy must answer
alike, whatever values each execute binds (NULL included, a different shard each time).
A raw client checks what drivers do not: parameter types sent only on the first execute,
and backend statements prepared once per connection, not per execute."""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
import unicodedata
from decimal import Decimal
from typing import Any

import mysql.connector
import pytest

from conftest import fast_lane_counts, free_port, sandbox_proxy_config, start_proxy, stop_proxy
from dbmesh.backend.connection import BackendConnection
from dbmesh.protocol.binary import decode_binary_row
from dbmesh.protocol.constants import Command, FieldType
from dbmesh.protocol.resultset import result_rows
from dbmesh.protocol.scanner import ResponseKind

LOGICAL = "shop_pr"
PLAIN = "plain_pr"
RULES = {
    "data_sources": ["ds_0", "ds_1"],
    "tables": {
        "pr_item": {
            "actual_data_nodes": "ds_${0..1}.pr_item_${0..1}",
            "database_strategy": {"columns": ["user_id"], "algorithm": "two"},
            "table_strategy": {"columns": ["id"], "algorithm": "two"},
        },
    },
    "broadcast_tables": ["pr_dict"],
    "algorithms": {"two": {"type": "MOD", "props": {"sharding_count": 2}}},
}
SCHEMA = [
    """CREATE TABLE pr_item (id BIGINT PRIMARY KEY, user_id INT NOT NULL, grp VARCHAR(12) NULL,
        amount DECIMAL(10,2) NULL, f FLOAT NULL, created DATETIME(6) NULL, t TIME NULL, bin VARBINARY(8) NULL,
        note TEXT NULL) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
    """CREATE TABLE pr_dict (code VARCHAR(8) PRIMARY KEY, label VARCHAR(20) NOT NULL)
        DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
]
GROUPS = ["a", "A", "b", "B ", "ä", None, "c", "Ç"]
BASE = dt.datetime(2024, 5, 1, 12, 0, 0)
ITEMS = [(i, (i * 7) % 13, GROUPS[i % len(GROUPS)],
          None if i % 11 == 0 else Decimal(i * 37 % 1000) / 4,
          None if i % 9 == 0 else (i % 17) * 1.1,
          None if i % 10 == 0 else BASE + dt.timedelta(hours=i * 5, microseconds=i * 1001),
          # TIME from -120 h to 180 h: as text, negative and 3-digit hours would sort wrong
          None if i % 8 == 0 else dt.timedelta(hours=(i * 37) % 300 - 120, minutes=i % 60),
          None if i % 6 == 0 else bytes([i % 4, 255 - i % 3]),
          None if i % 4 == 0 else f"n{i % 5}")
         for i in range(1, 131)]
DICT = [("a", "Alpha"), ("b", "Beta"), ("c", "Gamma"), ("x", "Unused")]
COLLATIONS = {"utf8mb4": "utf8mb4_general_ci", "latin1": "latin1_swedish_ci"}


def _connect(host: str, port: int, user: str, password: str, database: str, charset: str = "utf8mb4"):
    return mysql.connector.connect(host=host, port=port, user=user, password=password, database=database,
                                   autocommit=True, use_pure=True, charset=charset,
                                   collation=COLLATIONS[charset])


def _load(conn) -> None:
    cur = conn.cursor()
    for table in ("pr_item", "pr_dict"):
        cur.execute(f"DROP TABLE IF EXISTS {table}")
    for ddl in SCHEMA:
        cur.execute(ddl)
    cur.close()
    cur = conn.cursor(prepared=True)
    cur.executemany("INSERT INTO pr_item (id, user_id, grp, amount, f, created, t, bin, note) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", ITEMS)
    cur.executemany("INSERT INTO pr_dict (code, label) VALUES (?, ?)", DICT)
    cur.close()


@pytest.fixture(scope="module")
def pair(sandbox, tmp_path_factory):
    """(connect to the plain database, connect through the proxy, the proxy)."""
    workdir = tmp_path_factory.mktemp("pr")
    config = sandbox_proxy_config(sandbox, workdir, {LOGICAL: {"sharding": RULES}})
    config["metrics"] = {"host": "127.0.0.1", "port": free_port()}
    proxy = start_proxy(config, workdir)
    proxy.metrics_port = config["metrics"]["port"]
    info = sandbox.info()
    shard = info.shard("ds_0")

    def plain(charset: str = "utf8mb4"):
        return _connect(shard.host, shard.port, info.user, info.password, PLAIN, charset)

    def sharded(charset: str = "utf8mb4"):
        return _connect(proxy.host, proxy.port, "app", "app", LOGICAL, charset)

    try:
        with sandbox.admin_connect("ds_0") as admin, admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {PLAIN}")
            cur.execute(f"CREATE DATABASE {PLAIN} DEFAULT CHARSET utf8mb4 COLLATE utf8mb4_general_ci")
        for connect in (plain, sharded):
            conn = connect()
            _load(conn)
            conn.close()
        yield plain, sharded, proxy
    finally:
        try:
            conn = sharded()
            cur = conn.cursor()
            for table in ("pr_item", "pr_dict"):
                cur.execute(f"DROP TABLE IF EXISTS {table}")
            conn.close()
        finally:
            stop_proxy(proxy)
            with sandbox.admin_connect("ds_0") as admin, admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {PLAIN}")


def _norm(value: Any, ci: bool) -> tuple[str, str]:
    if value is None:
        return ("null", "")
    if isinstance(value, (bytes, bytearray)):
        return ("bytes", bytes(value).hex())
    if isinstance(value, str):  # ci: which of the equal spellings a group shows is the server's choice
        return ("str", _fold(value) if ci else value)
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, str(value))  # Decimal keeps its scale, datetimes their text


def _fold(text: str) -> str:
    """general_ci-like equality: case- and accent-insensitive, trailing spaces ignored."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper().rstrip(" ")


def _answer(cur, sql: str, args: tuple, ordered: bool, ci: bool) -> tuple:
    try:
        cur.execute(sql, args)
        rows = cur.fetchall() if cur.with_rows else []
    except mysql.connector.Error as exc:
        return ("error", exc.errno)
    described = [(d[0], d[1]) for d in cur.description or ()]
    out = [tuple(_norm(v, ci) for v in row) for row in rows]
    return described, out if ordered else sorted(out), cur.rowcount if not cur.with_rows else None


# (SQL, parameter sets executed one after the other on one prepared statement, ordered, ci)
READS = [
    ("SELECT id, grp, amount FROM pr_item WHERE id BETWEEN ? AND ?",
     [(10, 60), (61, 61), (62, 62), (200, 300), (None, 5), (5, None), (-5, 3), (1, 130)], False, False),
    ("SELECT id, grp FROM pr_item WHERE id BETWEEN ? AND ? ORDER BY grp, id",
     [(1, 130), (40, 45), (7, 7), (None, None)], True, False),
    ("SELECT id, created, t FROM pr_item WHERE id > ? ORDER BY created DESC, id LIMIT 5",
     [(0,), (100,), (None,), (129,)], True, False),
    ("SELECT id, f, bin FROM pr_item WHERE id >= ? ORDER BY t, id", [(1,), (120,)], True, False),
    ("SELECT DISTINCT grp FROM pr_item WHERE id BETWEEN ? AND ? ORDER BY grp", [(1, 130), (3, 9), (2, 1)],
     True, True),
    ("SELECT DISTINCT user_id FROM pr_item WHERE id < ?", [(50,), (2,), (None,)], False, False),
    ("SELECT DISTINCT grp, user_id % 2 FROM pr_item WHERE id > ? ORDER BY grp DESC", [(0,), (64,)], False, True),
    ("SELECT SUM(amount), COUNT(*), AVG(amount), MIN(created), MAX(t), MAX(f), MIN(bin) FROM pr_item "
     "WHERE id BETWEEN ? AND ?", [(1, 130), (10, 20), (500, 600), (None, 4)], True, False),
    ("SELECT grp, COUNT(*), SUM(amount) FROM pr_item WHERE id >= ? GROUP BY grp ORDER BY grp",
     [(1,), (100,)], True, True),
    ("SELECT id, t, note FROM pr_item WHERE user_id = ? ORDER BY t, id", [(3,), (4,), (None,), (3,)], True, False),
    ("SELECT id, note FROM pr_item WHERE user_id = ? AND id IN (?, ?)",
     [(ITEMS[9][1], 10, 12), (ITEMS[10][1], 11, 11), (1, 2, None), (ITEMS[9][1], 10, 11)], False, False),
    ("SELECT id FROM pr_item WHERE note <=> ? ORDER BY id", [(None,), ("n1",)], True, False),
    ("SELECT id, amount FROM pr_item WHERE amount > ? AND grp = ? ORDER BY amount DESC, id",
     [(Decimal("10.5"), "a"), (Decimal("0"), "b"), (None, "a")], True, False),
    ("SELECT id, created FROM pr_item WHERE created BETWEEN ? AND ? ORDER BY created, id",
     [(BASE, BASE + dt.timedelta(days=5)), (BASE + dt.timedelta(days=20), BASE + dt.timedelta(days=40))],
     True, False),
    ("SELECT id FROM pr_item WHERE bin = ? ORDER BY id", [(bytes([1, 254]),), (b"\x00",)], True, False),
    ("SELECT label FROM pr_dict WHERE code = ?", [("b",), ("B",), ("zz",), (None,)], False, False),
    ("SELECT i.id, d.label FROM pr_item i JOIN pr_dict d ON d.code = i.grp WHERE i.id BETWEEN ? AND ? "
     "ORDER BY i.id", [(1, 40), (90, 95)], True, False),
    ("SELECT id FROM pr_item WHERE id BETWEEN ? AND ? ORDER BY id LIMIT ?, ?", [(1, 130, 3, 4), (50, 60, 0, 2)],
     True, False),
    ("SELECT COUNT(*) FROM pr_item WHERE user_id IN (?, ?, ?)", [(1, 2, 3), (3, 3, None), (None, None, None)],
     True, False),
]


# TIME compares as a duration, also with a literal in HAVING (a string, or a number as HHMMSS)
TIME_READS = [
    "SELECT id, t FROM pr_item ORDER BY t DESC, id LIMIT 20",
    "SELECT MIN(t), MAX(t), COUNT(t) FROM pr_item",
    "SELECT grp, MIN(t), MAX(t) FROM pr_item GROUP BY grp HAVING MAX(t) > '100:00:00' ORDER BY grp",
    "SELECT user_id, MIN(t) FROM pr_item GROUP BY user_id HAVING MIN(t) < -500000 ORDER BY MIN(t), user_id",
    "SELECT DISTINCT t FROM pr_item WHERE t < '-60:00:00' ORDER BY t",
]


@pytest.mark.parametrize("sql", TIME_READS)
def test_time_values_merge_as_durations(pair, sql):
    plain, sharded, _ = pair
    conns = plain(), sharded()
    try:
        for prepared in (False, True):
            expected, got = (_answer(conn.cursor(prepared=prepared), sql, (), True, True) for conn in conns)
            assert got == expected and expected[1], (sql, prepared)
    finally:
        for conn in conns:
            conn.close()


@pytest.mark.parametrize("sql,args_list,ordered,ci", READS, ids=[r[0][:60] for r in READS])
def test_prepared_reads_answer_as_one_database(pair, sql, args_list, ordered, ci):
    plain, sharded, _ = pair
    conns = plain(), sharded()
    try:
        cursors = [conn.cursor(prepared=True) for conn in conns]
        for args in args_list:
            expected, got = (_answer(cur, sql, args, ordered, ci) for cur in cursors)
            assert got == expected, (sql, args)
    finally:
        for conn in conns:
            conn.close()


WRITES = [
    ("UPDATE pr_item SET note = ? WHERE user_id = ? AND id IN (?, ?)",
     [("one", ITEMS[9][1], 10, 12), ("two", ITEMS[10][1], 11, 11), ("three", 1, 2, None)]),
    ("UPDATE pr_item SET amount = amount + ? WHERE id BETWEEN ? AND ?", [(Decimal("1.25"), 20, 40), (1, None, 3)]),
    ("DELETE FROM pr_item WHERE user_id = ? AND id > ?", [(5, 100), (None, 1)]),
    ("INSERT INTO pr_item (id, user_id, grp, note) VALUES (?, ?, ?, ?)",
     [(1001, 1, "new", None), (1002, 2, None, "x"), (1003, 3, "ä", "y")]),
    ("UPDATE pr_item SET grp = ? WHERE id IN (?, ?, ?)", [("in", 1001, 1002, 5), (None, 1003, None, None)]),
]


def test_prepared_writes_change_what_one_database_changes(pair):
    plain, sharded, _ = pair
    conns = plain(), sharded()
    try:
        for sql, args_list in WRITES:
            cursors = [conn.cursor(prepared=True) for conn in conns]
            for args in args_list:
                counts = []
                for cur in cursors:
                    cur.execute(sql, args)
                    counts.append(cur.rowcount)
                assert counts[1] == counts[0], (sql, args)
        tables = []
        for conn in conns:
            cur = conn.cursor()
            cur.execute("SELECT * FROM pr_item ORDER BY id")
            tables.append([tuple(_norm(v, False) for v in row) for row in cur.fetchall()])
        assert tables[1] == tables[0]
    finally:
        for conn in conns:
            conn.close()


# -- a raw client ----------------------------------------------------------------------


def _execute_payload(stmt_id: int, values: list[int | None], with_types: bool) -> bytes:
    """COM_STMT_EXECUTE of BIGINT parameters; the types only when ``with_types``."""
    bitmap = bytearray((len(values) + 7) // 8)
    data = b""
    for i, value in enumerate(values):
        if value is None:
            bitmap[i // 8] |= 1 << (i % 8)
        else:
            data += struct.pack("<q", value)
    types = bytes((FieldType.LONGLONG, 0)) * len(values) if with_types else b""
    return (bytes((Command.STMT_EXECUTE,)) + struct.pack("<IBI", stmt_id, 0, 1) + bytes(bitmap)
            + (b"\x01" + types if with_types else b"\x00") + data)


def _backend_counts(sandbox) -> tuple[int, int]:
    """COM_STMT_PREPARE and COM_STMT_EXECUTE commands the shards' servers have run."""
    prepares = executes = 0
    for ds in ("ds_0", "ds_1"):
        with sandbox.admin_connect(ds) as direct, direct.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_stmt_prepare', 'Com_stmt_execute')")
            counts = dict(cur.fetchall())
            prepares += int(counts["Com_stmt_prepare"])
            executes += int(counts["Com_stmt_execute"])
    return prepares, executes


def test_types_sent_once_and_backend_statements_reused(pair, sandbox):
    """Executes after the first carry no parameter types (the driver may leave them out);
    the proxy still answers each one right, and prepares each shard's statement once per
    backend connection rather than once per execute."""
    plain, _, proxy = pair
    sql = "SELECT id, user_id FROM pr_item WHERE id BETWEEN ? AND ? ORDER BY id"
    sets = [[1, 20], [61, 61], [62, 62], [None, 5], [100, 130], [7, 9]] * 4

    async def run() -> list[list[tuple]]:
        conn = BackendConnection("proxy", proxy.host, proxy.port, 0)
        await conn.connect("app", "app", LOGICAL, 10)
        try:
            payloads, scanner = await conn.collect(bytes((Command.STMT_PREPARE,)) + sql.encode(),
                                                   ResponseKind.PREPARE)
            assert scanner.error is None, scanner.error
            stmt_id = scanner.stmt_id
            answers = []
            for n, values in enumerate(sets):
                payloads, scanner = await conn.collect(_execute_payload(stmt_id, values, n == 0), ResponseKind.RESULT)
                assert scanner.error is None, (values, scanner.error)
                result = result_rows(payloads, conn.deprecate_eof)
                fields = result.parsed_fields()
                answers.append([decode_binary_row(p, fields) for p in result.rows])
            return answers
        finally:
            conn.close()

    before = _backend_counts(sandbox)
    answers = asyncio.run(run())
    prepares, executes = (after - was for after, was in zip(_backend_counts(sandbox), before, strict=True))
    direct = plain()
    try:
        cur = direct.cursor(prepared=True)
        for values, rows in zip(sets, answers, strict=True):
            cur.execute(sql, tuple(values))
            assert [tuple(r) for r in rows] == [tuple(r) for r in cur.fetchall()], values
    finally:
        direct.close()
    # 24 executes over up to 4 actual tables: one describe, then at most one prepare per
    # actual table and backend connection (a single session uses few connections); the
    # executes reach the shards as COM_STMT_EXECUTE (the client's parameters), not as text
    assert prepares <= 12, prepares
    assert executes >= len(sets), executes


def test_text_statements_with_raw_bytes_reach_the_shards_unchanged(pair):
    """A driver's text statement may carry raw bytes in a binary string (not UTF-8): they go
    to the shard byte for byte, by the text path and the prepared one alike."""
    plain, sharded, _ = pair
    conns = plain(), sharded()
    raw = bytes([0xFE, 0x00, 0xFF, 0x27])
    try:
        for conn in conns:
            cur = conn.cursor()
            cur.execute("INSERT INTO pr_item (id, user_id, bin) VALUES (%s, %s, %s), (%s, %s, %s)",
                        (2001, 1, raw, 2002, 2, raw[::-1]))
            cur.execute("UPDATE pr_item SET note = 'raw' WHERE bin IN (%s, %s)", (raw, raw[::-1]))
        answers = []
        for conn in conns:
            cur = conn.cursor()
            cur.execute("SELECT id, bin, note FROM pr_item WHERE bin = %s OR id = %s ORDER BY id", (raw, 2002))
            text = cur.fetchall()
            ps = conn.cursor(prepared=True)
            ps.execute("SELECT id, bin FROM pr_item WHERE id BETWEEN ? AND ? ORDER BY id", (2001, 2002))
            answers.append((text, ps.fetchall()))
        assert answers[1] == answers[0]
        assert [bytes(row[1]) for row in answers[0][0]] == [raw, raw[::-1]]
    finally:
        for conn in conns:
            cur = conn.cursor()
            cur.execute("DELETE FROM pr_item WHERE id IN (2001, 2002)")
            conn.close()


@pytest.mark.parametrize(("charset", "notes"), [
    # What the statement checks look for, inside a literal: the fast lane checks a shape's
    # text once, so these come before and after a plain literal of the same shape.
    ("utf8mb4", ["@v", "n1", "a;b", "GET_LOCK('x', 1)", "n2", "@v", "SQL_CALC_FOUND_ROWS"]),
    # Not UTF-8 on the wire: the lane leaves such text to the command loop.
    ("latin1", ["ÿ", "n1", "é@v", "n3", "ÿ"]),
])
def test_point_reads_answer_whatever_their_string_literals_hold(pair, charset, notes):
    """Sharded text point reads whose string literal holds what the statement checks look
    for, or bytes that are not UTF-8, answer as one plain database does (a pinned statement
    is refused on a sharded database, so a false pin would be an error here)."""
    plain, sharded, _ = pair
    sql = "SELECT id, note FROM pr_item WHERE user_id = %s AND id = %s AND note <> %s"
    rows = [(user, item) for item, user, *_ in ITEMS[:24]]
    answers = []
    for connect in (plain, sharded):
        conn = connect(charset)
        try:
            cur = conn.cursor()
            answer = []
            for note in notes:
                for user, item in rows:
                    cur.execute(sql, (user, item, note))
                    answer.append(cur.fetchall())
            answers.append(answer)
        finally:
            conn.close()
    assert answers[1] == answers[0]
    assert sum(1 for rows_found in answers[0] if rows_found) > len(answers[0]) // 2


def test_sharded_point_reads_take_the_fast_lane(pair):
    """A known point shape, as text or prepared, is served from the event loop's callbacks
    (dbmesh_fast_lane_commands_total), in a transaction too once the transaction is on the
    data source (the command loop enlists it). The answers are the same either way."""
    _, sharded, proxy = pair
    rows = [(user, item) for item, user, *_ in ITEMS[:40]]
    conn = sharded()
    cur = conn.cursor()
    ps = conn.cursor(prepared=True)

    def read_all() -> list[list[tuple]]:
        answers = []
        for args in rows:
            cur.execute("SELECT id, note FROM pr_item WHERE user_id = %s AND id = %s", args)
            answers.append(cur.fetchall())
            ps.execute("SELECT id, note FROM pr_item WHERE user_id = ? AND id = ?", args)
            answers.append([tuple(r) for r in ps.fetchall()])
        return answers

    try:
        # First sights go to the command loop: a shape's planning, and the statement's
        # preparation on each actual table (the lane executes only where it is prepared).
        read_all()
        before = fast_lane_counts(proxy.metrics_port)
        outside = read_all()
        during = fast_lane_counts(proxy.metrics_port)
        conn.start_transaction()
        inside = read_all()
        conn.commit()
        after = fast_lane_counts(proxy.metrics_port)
    finally:
        conn.close()
    assert during["served"] - before.get("served", 0) == 2 * len(rows)
    # In the transaction, the first read on each of the two data sources enlists it (the
    # command loop's), and one on a connection the statement is not prepared on yet.
    assert after["served"] - during["served"] >= 2 * len(rows) - 4
    assert inside == outside and sum(1 for found in outside if found) == len(outside)


@pytest.mark.parametrize("sql", [
    "SELECT id, note FROM pr_item WHERE user_id = ? AND id = ?",         # point shape
    "SELECT id, note FROM pr_item WHERE user_id = ? AND id IN (?)",      # one unit, by values
    "SELECT id, note FROM pr_item WHERE user_id >= ? AND id >= ? ORDER BY id LIMIT 3",  # merged
])
def test_prepared_results_name_the_logical_table(pair, sql):
    """Every execute's column definitions name the logical database and table, however the
    statement is routed (the backend's names are shop_ds_N / pr_item_N)."""
    from dbmesh.protocol.packets import parse_column_definition

    _, _, proxy = pair

    async def describe() -> list[tuple]:
        conn = BackendConnection("proxy", proxy.host, proxy.port, 0)
        await conn.connect("app", "app", LOGICAL, 10)
        try:
            _, scanner = await conn.collect(bytes((Command.STMT_PREPARE,)) + sql.encode(), ResponseKind.PREPARE)
            assert scanner.error is None, scanner.error
            payloads, scanner = await conn.collect(_execute_payload(scanner.stmt_id, [ITEMS[3][1], 4], True),
                                                   ResponseKind.RESULT)
            assert scanner.error is None, scanner.error
            return [(f.schema, f.table, f.org_table, f.name) for f in
                    (parse_column_definition(p) for p in result_rows(payloads, conn.deprecate_eof).field_packets)]
        finally:
            conn.close()

    assert asyncio.run(describe()) == [(LOGICAL, "pr_item", "pr_item", "id"), (LOGICAL, "pr_item", "pr_item", "note")]
