"""Finishing XA transactions whose branches were left prepared: by a sidecar killed mid-commit
(at its next start), or by a commit or rollback that lost a data source (by the sweep of
the running sidecar, see dbmesh/frontend/xa_mode.py)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Set
from typing import Any

from . import xa

log = logging.getLogger("dbmesh.recovery")

Connect = Callable[[str], Awaitable[Any]]  # data source -> connection with async query()


ER_NO_SUCH_TABLE = 1146
ER_XAER_NOTA = 1397  # the branch is not (any more) there: finished meanwhile


def no_such_table(exc: BaseException) -> bool:
    return getattr(getattr(exc, "err", None), "code", None) == ER_NO_SUCH_TABLE


def _error_code(exc: BaseException) -> int | None:
    return getattr(getattr(exc, "err", None), "code", None)


async def committed_xids(conn: Any, prefix: str) -> set[str]:
    """The logged commit decisions of the xids that start with ``prefix``."""
    try:
        result = await conn.query(f"SELECT xid FROM {xa.LOG_TABLE} "
                                  f"WHERE LEFT(xid, {len(prefix)}) = {xa.quote(prefix)}")
    except Exception as exc:
        if no_such_table(exc):  # no XA transaction ever committed through this data source
            return set()
        raise
    return {row[0].decode() for row in result.rows}


async def finish_prepared(data_sources: Iterable[str], log_data_sources: Iterable[str], prefix: str,
                          acquire: Connect, release: Callable[[Any], None],
                          running: Set[str] = frozenset(), begun_meanwhile: Set[str] = frozenset()
                          ) -> dict[str, int]:
    """Commit the prepared branches of the xids starting with ``prefix`` that have a logged
    commit decision, roll back their other prepared branches, and forget the decisions no
    branch needs any more.

    ``running`` holds the xids sessions drive now and ``begun_meanwhile`` those begun since
    this call began (both live sets, read as they change): their branches are left alone.
    An xid no session drives never runs again, so its decision, read after its branches
    were listed, is final. A decision is forgotten only when no branch of it can be
    prepared any more: its transaction ended before the listing began (so the listing saw
    every branch it left), and what the listing saw is finished now."""
    log_data_sources = list(log_data_sources)
    running_before = set(running)
    prepared: dict[str, list[tuple[str, str]]] = {}
    for ds in data_sources:
        conn = await acquire(ds)
        try:
            result = await conn.query("XA RECOVER")
        finally:
            release(conn)
        for row in result.rows:
            parsed = xa.parse_recover_row(row)
            if parsed is None:
                continue
            gtrid, bqual = parsed
            if gtrid.startswith(prefix) and gtrid not in running and gtrid not in begun_meanwhile:
                prepared.setdefault(gtrid, []).append((ds, bqual))
    committed: set[str] = set()
    for ds in log_data_sources:
        conn = await acquire(ds)
        try:
            committed |= await committed_xids(conn, prefix)
        finally:
            release(conn)
    counts = {"commit": 0, "rollback": 0}
    unfinished: set[str] = set()
    for gtrid, branches in prepared.items():
        action = "commit" if gtrid in committed else "rollback"
        for ds, bqual in branches:
            finished = await _finish_branch(ds, gtrid, bqual, action, acquire, release)
            if finished is False:
                unfinished.add(gtrid)
            elif finished:
                counts[action] += 1
    settled = [xid for xid in committed
               if xid not in running_before and xid not in running and xid not in begun_meanwhile
               and xid not in unfinished]
    if settled:
        for ds in log_data_sources:
            conn = await acquire(ds)
            try:
                await conn.query(f"DELETE FROM {xa.LOG_TABLE} WHERE xid IN ({', '.join(map(xa.quote, settled))})")
            finally:
                release(conn)
    return counts


async def _finish_branch(ds: str, gtrid: str, bqual: str, action: str, acquire: Connect,
                         release: Callable[[Any], None]) -> bool | None:
    """XA COMMIT or ROLLBACK of one prepared branch: True, done; None, it was gone already;
    False, it is still there."""
    verb = "COMMIT" if action == "commit" else "ROLLBACK"
    conn = await acquire(ds)
    try:
        await conn.query(f"XA {verb} {xa.branch_id(gtrid, bqual)}")
    except Exception as exc:  # noqa: BLE001 - the next sweep or start tries again
        if _error_code(exc) == ER_XAER_NOTA:
            return None
        log.warning("XA %s of prepared branch %s on %s failed (%s); it is tried again", verb, gtrid, ds, exc)
        return False
    finally:
        release(conn)
    log.info("finished prepared XA branch %s on %s: %s", gtrid, ds, verb.lower())
    return True
