"""XA two-phase commit over MariaDB, with a durable coordinator log.

Every data source a global transaction touches runs an XA branch
(``XA START 'gtrid','<data source>'``). COMMIT ends and prepares every branch; only when
all are prepared is the decision written to the coordinator log (a table on a data
source, committed before any branch commits), then each branch commits and the log row is
deleted. A sidecar killed at any point is finished on restart by ``recover``: prepared
branches whose transaction has a logged commit decision are committed, all others rolled
back. Transaction ids carry the sidecar's instance id, so recovery only touches the
transactions this instance started.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from . import failpoints

log = logging.getLogger("dbmesh.xa")

LOG_TABLE = "dbmesh_xa_log"
LOG_DDL = (f"CREATE TABLE IF NOT EXISTS {LOG_TABLE} ("
           "xid VARCHAR(96) PRIMARY KEY, "
           "decision ENUM('commit') NOT NULL, "
           "participants TEXT NOT NULL, "
           "created DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))")


# What an XA transaction in doubt waits for, as SHOW DBMESH TRANSACTIONS words it: a branch
# prepared without a commit decision (rolled back by recovery), branches prepared with one
# (committed by recovery), a decision whose branches are all committed (forgotten next).
PREPARED, COMMITTING, COMMITTED = "prepared", "committing", "committed"
LISTING_STATUSES = (PREPARED, COMMITTING, COMMITTED)


class Branch(Protocol):
    """What the coordinator needs of a backend connection."""

    async def query(self, sql: str) -> object: ...


class XaError(Exception):
    pass


def new_xid(instance_id: str) -> str:
    return f"dbmesh-{instance_id}-{uuid.uuid4().hex}"


def quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def branch_id(xid: str, data_source: str) -> str:
    return f"{quote(xid)},{quote(data_source)}"


async def start(conn: Branch, xid: str, data_source: str) -> None:
    await conn.query(f"XA START {branch_id(xid, data_source)}")


async def rollback(branches: Mapping[str, Branch], xid: str) -> list[str]:
    """End and roll back every branch; returns the data sources where that failed."""
    failed = []
    for ds, conn in branches.items():
        bid = branch_id(xid, ds)
        try:
            try:
                await conn.query(f"XA END {bid}")
            except Exception:  # noqa: BLE001 - already ended (e.g. after a failed PREPARE)
                pass
            failpoints.fail_connection(f"xa_rollback_on_{ds}")
            await conn.query(f"XA ROLLBACK {bid}")
        except Exception as exc:  # noqa: BLE001 - reported; recovery finishes it
            log.warning("XA ROLLBACK of %s on %s failed: %s", xid, ds, exc)
            failed.append(ds)
    return failed


async def commit(branches: Mapping[str, Branch], xid: str,
                 write_decision: Callable[[str, Sequence[str]], Awaitable[None]],
                 forget_decision: Callable[[str], Awaitable[None]]) -> list[str]:
    """Two-phase commit. Raises XaError (after rolling back) if any branch fails to prepare.
    Once the decision is logged the transaction is committed: returns the data sources whose
    branch is still prepared because its XA COMMIT failed (recovery commits them)."""
    if len(branches) == 1:
        ((ds, conn),) = branches.items()
        bid = branch_id(xid, ds)
        await conn.query(f"XA END {bid}")
        await conn.query(f"XA COMMIT {bid} ONE PHASE")
        return []
    try:
        for ds, conn in branches.items():
            bid = branch_id(xid, ds)
            await conn.query(f"XA END {bid}")
            failpoints.fail_connection(f"xa_prepare_on_{ds}")
            await conn.query(f"XA PREPARE {bid}")
            failpoints.hit("xa_after_first_prepare")
    except Exception as exc:
        failed = await rollback(branches, xid)
        raise XaError(f"XA PREPARE failed, transaction {xid} rolled back"
                      + (f" (rollback pending on {', '.join(failed)})" if failed else "") + f": {exc}") from exc
    failpoints.hit("xa_before_decision")
    await write_decision(xid, list(branches))
    failpoints.hit("xa_after_decision")
    failed = []
    for index, (ds, conn) in enumerate(branches.items()):
        if index == 1:
            failpoints.hit("xa_after_first_commit")
        try:
            failpoints.fail_connection(f"xa_commit_on_{ds}")
            await conn.query(f"XA COMMIT {branch_id(xid, ds)}")
        except Exception as exc:  # noqa: BLE001 - decided: recovery will commit it
            log.warning("XA COMMIT of %s on %s failed (%s); recovery will finish it", xid, ds, exc)
            failed.append(ds)
    if not failed:
        await forget_decision(xid)
    return failed


def parse_recover_row(row: Sequence[bytes | None]) -> tuple[str, str] | None:
    """(gtrid, bqual) of an XA RECOVER row: formatID, gtrid_length, bqual_length, data."""
    try:
        gtrid_length, bqual_length = int(row[1]), int(row[2])
        data = row[3] or b""
        return (data[:gtrid_length].decode("utf-8", "replace"),
                data[gtrid_length:gtrid_length + bqual_length].decode("utf-8", "replace"))
    except (TypeError, ValueError, IndexError):
        return None
