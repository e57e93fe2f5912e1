"""Finishing BASE global transactions a sidecar left unfinished (crash, lost connection).

Run at start (when the instance has no transaction in flight) and then now and again for
transactions idle for a while that no session of this process is running. What the global
log says decides:

* ``committed`` / ``rolled_back``: only the clean-up was left (undo rows, locks, tombstones);
* ``begun`` / ``committing`` / ``rolling_back``: the commit was never recorded, so every
  branch is compensated from its undo log (``txn.base_compensate``); a branch that never
  committed gets a tombstone. A conflict leaves the transaction ``needs_attention``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

from . import global_log
from .base_coordinator import Backends, finish_clean_up, roll_back_global, xid_prefix
from .recovery import no_such_table

log = logging.getLogger("dbmesh.base_recovery")


async def recover(backends_for_log: Callable[[str], Backends], log_data_sources: Iterable[str], instance_id: str,
                  acquire: Callable[[str], Awaitable[Any]], release: Callable[[Any], None],
                  min_age_s: float = 0.0, running: Collection[str] = (), check: bool = True) -> dict[str, int]:
    """Finish this instance's BASE transactions on every log data source; counts by outcome.
    ``running``: xids a session of this process still drives (left alone)."""
    counts = {"committed": 0, "rolled_back": 0, "needs_attention": 0}
    for log_ds in log_data_sources:
        backends = backends_for_log(log_ds)
        try:
            result = await backends.log(global_log.select_for_recovery(xid_prefix(instance_id), min_age_s))
        except Exception as exc:
            if no_such_table(exc):  # no BASE transaction ever logged here
                continue
            raise
        for row in result.rows:
            txn = global_log.from_row(row)
            if txn.xid in running:
                continue
            try:
                outcome, _ = await finish(backends, txn, acquire, release, check)
            except Exception as exc:  # noqa: BLE001 - e.g. a participant is down: the others go on
                log.warning("BASE transaction %s not finished (%s); the next recovery tries again", txn.xid, exc)
                continue
            if outcome:
                counts[outcome] += 1
                log.info("recovered BASE transaction %s: %s", txn.xid, outcome)
    return counts


async def finish(backends: Backends, txn: global_log.GlobalTxn, acquire, release,
                 check: bool = True) -> tuple[str | None, str]:
    """Finish one transaction no session drives (recovery's way, also an operator's retry):
    (outcome, what conflicted if the outcome is ``needs_attention``); outcome None when
    someone else moved it meanwhile."""
    if txn.status in global_log.FINAL_STATUSES:
        await finish_clean_up(backends, txn.xid, txn.participants)
        return ("committed" if txn.status == global_log.COMMITTED else "rolled_back"), ""
    claimed = await backends.log(global_log.set_status(txn.xid, global_log.ROLLING_BACK))
    if claimed.affected_rows != 1 and txn.status != global_log.ROLLING_BACK:
        return None, ""  # someone else moved it meanwhile
    conns = []
    try:
        for p in txn.participants:
            conns.append(await acquire(p.data_source))
        detail = await roll_back_global(backends, txn.xid, txn.participants, conns, check)
    finally:
        for conn in conns:
            release(conn)
    if detail:
        log.warning("BASE transaction %s needs attention: %s", txn.xid, detail)
        return "needs_attention", detail
    await finish_clean_up(backends, txn.xid, txn.participants)
    return "rolled_back", ""
