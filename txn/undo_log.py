"""The undo log: a table on every data source holding the undo records of its branches.

A branch is one global transaction's local transaction on one data source. Its undo rows
are written in that local transaction, next to the changes they undo, so they commit or
vanish with them::

    (xid, branch_id, seq 0)  header     log_status NORMAL, written first
    (xid, branch_id, seq 1)  record 1   rollback_info = UndoRecord.to_json() (UTF-8, ASCII)
    (xid, branch_id, seq n)  record n

Global commit: ``delete_xid`` on each participant (lazily, in batches: ``txn.base_cleanup``;
the global transaction's row says what a leftover is). Global rollback, per branch, in one
local transaction:

1. ``select_branch`` (FOR UPDATE) and ``parse_branch``;
2. no rows: the branch's local transaction never committed — or its COMMIT is still in
   flight. Run ``insert_tombstone``: it waits on the in-flight header's row lock, then
   either succeeds (the branch rolled back; the tombstone makes a late retry of it fail
   on the duplicate key) or fails with ER_DUP_ENTRY (the branch committed: start again);
3. tombstone: nothing to undo;
4. records: undo them (``txn.reverse``), then ``delete_branch`` and commit.

Tombstones go with the global transaction (``delete_xid``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .images import FORMAT_VERSION, UndoFormatError, UndoRecord
from .sqltext import Statement

UNDO_LOG_TABLE = "dbmesh_undo_log"
CONTEXT = f"serializer=json;version={FORMAT_VERSION}"

LOG_STATUS_NORMAL = 0
LOG_STATUS_TOMBSTONE = 1  # written by a rollback that found no undo log: the branch is over
HEADER_SEQ = 0
ER_DUP_ENTRY = 1062

UNDO_LOG_DDL = (
    f"CREATE TABLE IF NOT EXISTS {UNDO_LOG_TABLE} ("
    "xid VARCHAR(128) NOT NULL, "
    "branch_id BIGINT NOT NULL, "
    "seq INT NOT NULL, "
    "context VARCHAR(255) NOT NULL, "
    "rollback_info LONGBLOB NOT NULL, "
    "log_status TINYINT NOT NULL, "
    "created DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
    "PRIMARY KEY (xid, branch_id, seq), "
    "KEY idx_created (created)"
    ") ENGINE=InnoDB")  # must be transactional: it commits with the business rows

_COLUMNS = "(xid, branch_id, seq, context, rollback_info, log_status)"


def insert_header(xid: str, branch_id: int) -> Statement:
    """First write of every branch: the row a rollback's tombstone collides with."""
    return Statement(f"INSERT INTO {UNDO_LOG_TABLE} {_COLUMNS} VALUES (%s, %s, %s, %s, %s, %s)",
                     (xid, branch_id, HEADER_SEQ, CONTEXT, b"", LOG_STATUS_NORMAL))


def insert_record(xid: str, branch_id: int, seq: int, record: UndoRecord) -> Statement:
    """The undo record of the branch's ``seq``-th statement (1, 2, ... in execution order)."""
    if seq <= HEADER_SEQ:
        raise ValueError(f"undo record seq must be > {HEADER_SEQ}, got {seq}")
    if record.branch_id != branch_id:
        raise ValueError(f"record of branch {record.branch_id} written to branch {branch_id}")
    return Statement(f"INSERT INTO {UNDO_LOG_TABLE} {_COLUMNS} VALUES (%s, %s, %s, %s, %s, %s)",
                     (xid, branch_id, seq, CONTEXT, record.to_json().encode("ascii"), LOG_STATUS_NORMAL))


def insert_records(xid: str, branch_id: int, first_seq: int, records: Sequence[UndoRecord],
                   with_header: bool = False) -> Statement:
    """One INSERT of a statement's records (seq ``first_seq``, ``first_seq + 1``, ...), after
    the branch header when it is the branch's first statement: one round trip for all."""
    rows = [insert_header(xid, branch_id).params] if with_header else []
    for seq, record in enumerate(records, first_seq):
        rows.append(insert_record(xid, branch_id, seq, record).params)
    if not rows:
        raise ValueError("insert_records needs a header or at least one record")
    return Statement(f"INSERT INTO {UNDO_LOG_TABLE} {_COLUMNS} VALUES "
                     + ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(rows)), tuple(v for row in rows for v in row))


def insert_tombstone(xid: str, branch_id: int) -> Statement:
    return Statement(f"INSERT INTO {UNDO_LOG_TABLE} {_COLUMNS} VALUES (%s, %s, %s, %s, %s, %s)",
                     (xid, branch_id, HEADER_SEQ, CONTEXT, b"", LOG_STATUS_TOMBSTONE))


def select_branch(xid: str, branch_id: int) -> Statement:
    """Rows as ``(seq, context, rollback_info, log_status)`` in seq order, locked."""
    return Statement(f"SELECT seq, context, rollback_info, log_status FROM {UNDO_LOG_TABLE} "
                     "WHERE xid = %s AND branch_id = %s ORDER BY seq FOR UPDATE", (xid, branch_id))


def delete_branch(xid: str, branch_id: int) -> Statement:
    return Statement(f"DELETE FROM {UNDO_LOG_TABLE} WHERE xid = %s AND branch_id = %s", (xid, branch_id))


def delete_xid(*xids: str) -> Statement:
    """Every undo row (records, headers, tombstones) of these global transactions."""
    return Statement(f"DELETE FROM {UNDO_LOG_TABLE} WHERE xid IN ({', '.join(['%s'] * len(xids))})", xids)


@dataclass(frozen=True)
class BranchUndo:
    """What ``select_branch`` found: 'absent' (no rows), 'tombstone', or 'records'."""

    state: Literal["absent", "tombstone", "records"]
    records: list[UndoRecord] = field(default_factory=list)


def parse_branch(rows: Iterable[Sequence[Any]]) -> BranchUndo:
    """Read ``select_branch`` rows (driver values or text-protocol bytes)."""
    rows = sorted(((int(r[0]), r[1], r[2], int(r[3])) for r in rows), key=lambda r: r[0])
    if not rows:
        return BranchUndo("absent")
    if rows[0][0] != HEADER_SEQ:
        raise UndoFormatError(f"undo log rows without a header (first seq {rows[0][0]})")
    if rows[0][3] == LOG_STATUS_TOMBSTONE:
        return BranchUndo("tombstone")
    records = []
    for seq, context, info, _status in rows[1:]:
        context = context.decode() if isinstance(context, bytes | bytearray) else context
        if context != CONTEXT:
            raise UndoFormatError(f"undo record {seq} has context {context!r}; this build reads {CONTEXT!r}")
        records.append(UndoRecord.from_json(bytes(info)))
    return BranchUndo("records", records)
