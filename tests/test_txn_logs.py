"""Record formats the BASE runner persists: undo log, global transaction log, global locks,
and table metadata from information_schema (txn.undo_log, txn.global_log, txn.global_lock,
txn.meta)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from txn import global_lock, global_log, meta, undo_log
from txn.images import ColumnMeta, RowImage, TableImage, TableMeta, UndoFormatError, UndoRecord

T = TableMeta("t_order_0", (ColumnMeta("id", "bigint", False), ColumnMeta("amount", "decimal")), ("id",))
RECORD = UndoRecord(5, "INSERT", "t_order_0",
                    after=TableImage(T, [RowImage({"id": 2 ** 64 - 1, "amount": Decimal("1.50")})]))


def test_undo_log_ddl() -> None:
    ddl = undo_log.UNDO_LOG_DDL
    for part in ("dbmesh_undo_log", "xid VARCHAR(128)", "branch_id BIGINT", "seq INT", "context VARCHAR(255)",
                 "rollback_info LONGBLOB", "log_status TINYINT", "created DATETIME(6)",
                 "PRIMARY KEY (xid, branch_id, seq)", "ENGINE=InnoDB"):
        assert part in ddl


def test_undo_log_statements() -> None:
    sql, params = undo_log.insert_header("x1", 5)
    assert sql.startswith("INSERT INTO dbmesh_undo_log (xid, branch_id, seq, context, rollback_info, log_status)")
    assert params == ("x1", 5, 0, undo_log.CONTEXT, b"", undo_log.LOG_STATUS_NORMAL)
    stmt = undo_log.insert_record("x1", 5, 1, RECORD)
    assert stmt.params[:4] == ("x1", 5, 1, undo_log.CONTEXT)
    assert UndoRecord.from_json(stmt.params[4]) == RECORD
    assert undo_log.insert_tombstone("x1", 5).params[2:] == (0, undo_log.CONTEXT, b"",
                                                              undo_log.LOG_STATUS_TOMBSTONE)
    assert undo_log.select_branch("x1", 5).sql.endswith("ORDER BY seq FOR UPDATE")
    assert undo_log.delete_branch("x1", 5) == ("DELETE FROM dbmesh_undo_log WHERE xid = %s AND branch_id = %s",
                                               ("x1", 5))
    assert undo_log.delete_xid("x1").params == ("x1",)
    both = undo_log.insert_records("x1", 5, 3, [RECORD, RECORD], with_header=True)
    assert both.sql.count("(%s, %s, %s, %s, %s, %s)") == 3
    assert both.params[:6] == undo_log.insert_header("x1", 5).params
    assert [both.params[i] for i in (8, 14)] == [3, 4]  # the records' seq
    assert undo_log.insert_records("x1", 5, 1, [RECORD]).params == undo_log.insert_record("x1", 5, 1, RECORD).params
    with pytest.raises(ValueError, match="header or at least one record"):
        undo_log.insert_records("x1", 5, 1, [])
    with pytest.raises(ValueError, match="seq must be > 0"):
        undo_log.insert_record("x1", 5, 0, RECORD)
    with pytest.raises(ValueError, match="branch 5 written to branch 6"):
        undo_log.insert_record("x1", 6, 1, RECORD)


def test_parse_branch() -> None:
    assert undo_log.parse_branch([]).state == "absent"
    assert undo_log.parse_branch([(0, undo_log.CONTEXT, b"", 1)]).state == "tombstone"
    info = RECORD.to_json().encode()
    # Text-protocol rows (all bytes) and out of order.
    found = undo_log.parse_branch([(b"2", undo_log.CONTEXT.encode(), info, b"0"),
                                   (b"0", undo_log.CONTEXT.encode(), b"", b"0"),
                                   (b"1", undo_log.CONTEXT.encode(), info, b"0")])
    assert found.state == "records" and found.records == [RECORD, RECORD]
    with pytest.raises(UndoFormatError, match="without a header"):
        undo_log.parse_branch([(1, undo_log.CONTEXT, info, 0)])
    with pytest.raises(UndoFormatError, match="context"):
        undo_log.parse_branch([(0, "x", b"", 0), (1, "serializer=json;version=9", info, 0)])


def test_global_log() -> None:
    ddl = global_log.GLOBAL_TXN_DDL
    assert "ENUM('begun', 'committing', 'committed', 'rolling_back', 'rolled_back', 'needs_attention')" in ddl
    assert "xid VARCHAR(128) NOT NULL PRIMARY KEY" in ddl and "updated DATETIME(6)" in ddl
    parts = [global_log.Participant("ds_0", 1), global_log.Participant("ds_1", 2)]
    sql, params = global_log.insert("g1", parts)
    assert params[:3] == ("g1", "base", "begun")
    assert global_log.decode_participants(params[3]) == tuple(parts)
    with pytest.raises(ValueError):
        global_log.insert("g1", parts, status="committed")
    stmt = global_log.set_status("g1", global_log.ROLLED_BACK, detail="done")
    assert stmt.sql.endswith("WHERE xid = %s AND status IN (%s)")
    assert stmt.params == ("rolled_back", "done", "g1", "rolling_back")
    stmt = global_log.set_status("g1", global_log.ROLLING_BACK)
    assert stmt.params == ("rolling_back", "g1", "begun", "committing", "needs_attention")
    with pytest.raises(ValueError):
        global_log.set_status("g1", global_log.BEGUN)
    assert global_log.can_transition("begun", "committing")
    assert not global_log.can_transition("committed", "rolling_back")
    assert not global_log.can_transition("rolled_back", "committed")
    assert global_log.select_one("g1", lock=True).sql.endswith("WHERE xid = %s FOR UPDATE")
    assert global_log.delete("g1").params == ("g1", "committed", "rolled_back")
    row = (b"g1", b"base", b"needs_attention", params[3].encode(), b"c", b"u", b"conflict")
    txn = global_log.from_row(row)
    assert (txn.xid, txn.status, txn.participants, txn.detail) == ("g1", "needs_attention", tuple(parts),
                                                                   "conflict")
    assert global_log.set_participants("g1", parts).params[1:] == ("g1", "begun")


def test_pk_text_is_canonical() -> None:
    meta2 = TableMeta("t", (ColumnMeta("a", "decimal"), ColumnMeta("b", "varchar"), ColumnMeta("c", "varbinary"),
                            ColumnMeta("d", "datetime")), ("a", "b", "c", "d"))
    row = RowImage({"a": Decimal("1.50"), "b": "é,\"", "c": b"\x00", "d": dt.datetime(2024, 1, 1, 0, 0, 0, 1)})
    assert global_lock.pk_text(meta2, row) == '["1.5","é,\\"","0x00","2024-01-01T00:00:00.000001"]'
    same = RowImage({**row.values, "a": Decimal("1.5")})
    assert global_lock.pk_text(meta2, same) == global_lock.pk_text(meta2, row)
    assert global_lock.pk_text(T, RowImage({"id": 2 ** 64 - 1, "amount": None})) == '["18446744073709551615"]'


def test_global_lock_statements() -> None:
    assert "PRIMARY KEY (table_name, pk_hash)" in global_lock.GLOBAL_LOCK_DDL
    stmt = global_lock.acquire("g1", "shop.t_order_0", ['["1"]', '["2"]'])
    assert stmt.sql.endswith("VALUES (%s, %s, %s, %s), (%s, %s, %s, %s)")
    assert stmt.params[:4] == ("shop.t_order_0", global_lock.pk_hash('["1"]'), '["1"]', "g1")
    assert len(stmt.params[1]) == 32
    assert global_lock.holders("shop.t_order_0", ['["1"]']).params[0] == "shop.t_order_0"
    mine, others = global_lock.split_holders([(b'["1"]', b"g1"), ('["2"]', "g2")], "g1")
    assert mine == {'["1"]'} and others == {'["2"]': "g2"}
    assert global_lock.release("g1").params == ("g1",)
    with pytest.raises(ValueError):
        global_lock.acquire("g1", "t", [])


def test_table_meta_from_information_schema_rows() -> None:
    assert meta.columns_sql("shop", "t").params == ("shop", "t")
    assert "INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX" in meta.primary_key_sql("shop", "t").sql
    columns = [(b"id", b"bigint", b"NO", b"auto_increment"), ("total", "DECIMAL", "YES", "VIRTUAL GENERATED"),
               ("secret", "varchar", "YES", "INVISIBLE"), ("note", "text", "YES", None)]
    got = meta.table_meta("t", columns, [(b"id",)])
    assert got == TableMeta("t", (ColumnMeta("id", "bigint", False, auto_increment=True),
                                  ColumnMeta("total", "decimal", True, generated=True),
                                  ColumnMeta("secret", "varchar", True, invisible=True),
                                  ColumnMeta("note", "text", True)), ("id",))
    with pytest.raises(LookupError):
        meta.table_meta("t", [], [])
