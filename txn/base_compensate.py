"""Undoing BASE branches: the compensation a global rollback (or recovery) runs.

Every branch is undone in one local transaction on its data source, newest record first,
with the 'version' check interleaved record by record (see ``txn.reverse``). All branches'
local transactions stay open until every branch has been undone; only then are they
committed. A conflict in any branch rolls all of them back, so the data keeps every
change of the global transaction (as if it had committed) instead of a half-undone mix,
and the caller marks the transaction ``needs_attention``.

A branch's local transaction also deletes its undo rows and releases the global locks its
transaction holds on that data source: the compensation, the end of the undo log and the
end of the locks commit together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from . import global_lock, undo_log
from .base_branch import Conn, Pipelined, error_code, has_timestamp, run, utc
from .images import image_from_rows
from .reverse import Conflict, conflicts, current_image_sql, expected_image, record_keys, reverse_record


async def undo_branch(conn: Pipelined, xid: str, branch_id: int, check: bool) -> list[Conflict]:
    """Undo one branch inside the caller's open local transaction; returns the conflicts
    found (then nothing more was undone and the caller must roll back)."""
    for _ in range(3):
        branch = undo_log.parse_branch((await run(conn, undo_log.select_branch(xid, branch_id))).rows)
        if branch.state != "absent":
            break
        # Never committed (or a COMMIT in flight): the tombstone waits for it and then
        # either stands (the branch is over) or collides with its header (it committed).
        try:
            await run(conn, undo_log.insert_tombstone(xid, branch_id))
            break
        except Exception as exc:
            if error_code(exc) != undo_log.ER_DUP_ENTRY:
                raise
    else:
        raise RuntimeError(f"undo log of {xid} branch {branch_id} keeps changing under the rollback")
    if branch.state == "records":
        with utc(conn, any(has_timestamp(r.meta) for r in branch.records)):
            for record in reversed(branch.records):
                if check:
                    current = await run(conn, current_image_sql(record.meta, record_keys(record)))
                    found = conflicts(expected_image(record), image_from_rows(record.meta, current.rows, text=True))
                    if found:
                        return found
                for statement in reverse_record(record):
                    conn.defer(statement.inline())  # sent with the next read; its error raised there
        conn.defer(undo_log.delete_branch(xid, branch_id).inline())
    await run(conn, global_lock.release(xid))
    return []


async def compensate(branches: Sequence[tuple[int, Conn]], xid: str, check: bool) -> list[Conflict]:
    """Undo ``branches`` ((branch id, connection), in the order they were opened) as one
    unit: all committed, or — on a conflict or an error — all rolled back."""
    opened: list[Pipelined] = []
    found: list[Conflict] = []
    try:
        for branch_id, raw in reversed(branches):
            conn = Pipelined(raw)
            # No gap locks on the undo and lock tables: they would deadlock concurrent rollbacks.
            conn.defer("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            conn.defer("START TRANSACTION")
            opened.append(conn)
            found += await undo_branch(conn, xid, branch_id, check)
        if found:
            await rollback_all(opened)
            return found
        for conn in opened:
            await conn.query("COMMIT")
        return []
    except BaseException:
        await rollback_all(opened)
        raise


async def rollback_all(conns: Iterable[Conn]) -> None:
    for conn in conns:
        try:
            await conn.query("ROLLBACK")
        except Exception:  # noqa: BLE001, S110 - a lost connection rolls back by itself
            pass
