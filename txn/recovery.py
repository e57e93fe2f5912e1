"""Finishing XA transactions a crashed (or briefly disconnected) sidecar left prepared."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from . import xa

log = logging.getLogger("dbmesh.recovery")

Connect = Callable[[str], Awaitable[Any]]  # data source -> connection with async query()


ER_NO_SUCH_TABLE = 1146


def no_such_table(exc: BaseException) -> bool:
    return getattr(getattr(exc, "err", None), "code", None) == ER_NO_SUCH_TABLE


async def committed_xids(conn: Any) -> set[str]:
    try:
        result = await conn.query(f"SELECT xid FROM {xa.LOG_TABLE}")
    except Exception as exc:
        if no_such_table(exc):  # no XA transaction ever committed through this data source
            return set()
        raise
    return {row[0].decode() for row in result.rows}


async def recover(data_sources: Iterable[str], log_data_sources: Iterable[str], instance_id: str,
                  acquire: Connect, release: Callable[[Any], None]) -> dict[str, int]:
    """At start, when this instance has no transaction in flight: commit its prepared
    branches that have a logged commit decision, roll back its other prepared branches,
    and forget the decisions."""
    committed: set[str] = set()
    for ds in log_data_sources:
        conn = await acquire(ds)
        try:
            committed |= await committed_xids(conn)
        finally:
            release(conn)
    counts = {"commit": 0, "rollback": 0}
    for ds in data_sources:
        conn = await acquire(ds)
        try:
            result = await conn.query("XA RECOVER")
            for row in result.rows:
                parsed = xa.parse_recover_row(row)
                if parsed is None:
                    continue
                gtrid, bqual = parsed
                action = xa.resolution(gtrid, instance_id, committed)
                if action is None:
                    continue
                verb = "COMMIT" if action == "commit" else "ROLLBACK"
                await conn.query(f"XA {verb} {xa.branch_id(gtrid, bqual)}")
                counts[action] += 1
                log.info("recovered XA branch %s on %s: %s", gtrid, ds, verb.lower())
        finally:
            release(conn)
    # Every branch of ours is finished now: the decisions are no longer needed.
    for ds in log_data_sources if committed else ():
        conn = await acquire(ds)
        try:
            for xid in committed:
                await conn.query(f"DELETE FROM {xa.LOG_TABLE} WHERE xid = '{xid}'")
        finally:
            release(conn)
    return counts
