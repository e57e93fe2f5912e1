"""An operator's actions on one BASE global transaction (the sidecar's admin statements,
dbmesh/frontend/admin.py): retry the compensation of one that needs attention or that
nobody finishes, or forget one whose data was put right by hand.

Who else may be acting on the same transaction decides what is allowed:

* a session of this process that drives it (``running_here``): never touched; it ends with
  that session's COMMIT or ROLLBACK (or when the session closes);
* ``needs_attention``: nobody (the session gave up and the recovery sweep skips it);
* ``committed`` / ``rolled_back``: only clean-up is left, and clean-up may run twice;
* ``begun`` / ``committing`` / ``rolling_back`` of this process: nobody (no session of this
  process drives it, and the caller keeps this process's sweep away while it acts);
* the same of another worker process of this sidecar: left to that worker, whose sessions
  are out of sight here and whose recovery sweep finishes it once no session drives it;
* the same of another sidecar instance: its sessions are out of sight too, so only once it
  has been idle as long as a recovery sweep would wait (``orphan_age_s``) — for a sidecar
  that is gone for good, whose transactions no sweep will ever finish.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import global_lock, global_log, undo_log
from .base_coordinator import Backends, xid_prefix
from .base_recovery import finish
from .recovery import no_such_table


@dataclass(frozen=True)
class Listed:
    """A row of ``global_log.select_listing`` from one log data source."""

    txn: global_log.GlobalTxn
    log_source: str
    age_s: float   # since created, by the log server's clock
    idle_s: float  # since the last change of status or participants


def listed(row: Sequence[Any], log_source: str) -> Listed:
    def seconds(v: Any) -> float:
        return int(v) / 1_000_000 if v is not None else 0.0
    return Listed(global_log.from_row(row[:7]), log_source, seconds(row[7]), seconds(row[8]))


THIS_PROCESS, OTHER_WORKER, OTHER_SIDECAR = "this process", "another worker", "another sidecar"


def owner_of(xid: str, instance_id: str, xid_instance: str) -> str:
    """Who issued ``xid``: this process (its xids name ``xid_instance``), another worker
    process of the same sidecar (``instance_id``), or another sidecar."""
    if xid.startswith(xid_prefix(xid_instance)):
        return THIS_PROCESS
    return OTHER_WORKER if xid.startswith(xid_prefix(instance_id)) else OTHER_SIDECAR


def why_busy(item: Listed, running_here: bool, owner: str, orphan_age_s: float) -> str:
    """Why an operator may not act on this transaction now ("" when they may)."""
    txn = item.txn
    if running_here:
        return (f"global transaction '{txn.xid}' is running in a session of this sidecar; it ends with that "
                "session's COMMIT or ROLLBACK, or when the session closes")
    if owner == THIS_PROCESS or txn.status == global_log.NEEDS_ATTENTION or txn.status in global_log.FINAL_STATUSES:
        return ""
    if owner == OTHER_WORKER:
        return (f"global transaction '{txn.xid}' is {txn.status} and belongs to another worker process of this "
                "sidecar, whose session may still drive it; that worker's recovery sweep finishes it once it "
                f"has been idle for {orphan_age_s:g} s with no session driving it")
    if item.idle_s < orphan_age_s:
        return (f"global transaction '{txn.xid}' is {txn.status} and changed {item.idle_s:.1f} s ago; it belongs "
                "to another sidecar instance, whose session may still drive it. Act on it once it has been idle "
                f"for {orphan_age_s:g} s (transaction.base_orphan_age_s) and that sidecar is gone, or let that "
                "sidecar's recovery finish it")
    return ""


async def retry(backends: Backends, txn: global_log.GlobalTxn, acquire, release) -> tuple[str | None, str]:
    """Compensate again, checking every row as the 'version' isolation does (an operator's
    retry never overwrites another writer's change): see ``base_recovery.finish``."""
    return await finish(backends, txn, acquire, release, check=True)


async def forget(backends: Backends, txn: global_log.GlobalTxn) -> tuple[int, int]:
    """Drop the transaction's undo rows, global locks and log row, undoing nothing; the
    numbers of undo rows and locks removed. The log row goes last: if this stops half-way,
    the transaction is still listed and FORGET runs again."""
    undo_rows = locks = 0
    for p in txn.participants:
        try:
            undo_rows += (await backends.on_data_source(p.data_source, undo_log.delete_xid(txn.xid))).affected_rows
            locks += (await backends.on_data_source(p.data_source, global_lock.release(txn.xid))).affected_rows
        except Exception as exc:
            if not no_such_table(exc):  # listed, but stopped before its first branch there
                raise
    await backends.log(global_log.forget(txn.xid))
    return undo_rows, locks
