"""The coordinator's global transaction log: one row per BASE global transaction.

Lives on the coordinator's log data source (like ``xa.LOG_TABLE``). The runner moves a row
through ``TRANSITIONS`` with ``set_status``, whose WHERE names the statuses allowed to
precede the new one: 0 affected rows means another actor (a recovery sweep, a second
sidecar) got there first, so re-read with ``select_one`` instead of acting.

    begun ──> committing ──> committed                (row then deleted)
      │            │
      └──> rolling_back ──> rolled_back               (row then deleted)
                   │
                   └──> needs_attention ──> rolling_back (an operator's retry)

``committing`` covers the branches' local commits; if one fails the others are undone
(``rolling_back``). ``needs_attention``: a compensation found a conflict (see
``txn.reverse.conflicts``) or failed; ``detail`` says why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .sqltext import Statement

GLOBAL_TXN_TABLE = "dbmesh_global_txn"

BEGUN = "begun"
COMMITTING = "committing"
COMMITTED = "committed"
ROLLING_BACK = "rolling_back"
ROLLED_BACK = "rolled_back"
NEEDS_ATTENTION = "needs_attention"
STATUSES = (BEGUN, COMMITTING, COMMITTED, ROLLING_BACK, ROLLED_BACK, NEEDS_ATTENTION)
FINAL_STATUSES = frozenset({COMMITTED, ROLLED_BACK})

MODE_BASE = "base"

# new status -> statuses it may follow
TRANSITIONS: dict[str, frozenset[str]] = {
    COMMITTING: frozenset({BEGUN}),
    COMMITTED: frozenset({BEGUN, COMMITTING}),  # BEGUN: branches already committed
    ROLLING_BACK: frozenset({BEGUN, COMMITTING, NEEDS_ATTENTION}),
    ROLLED_BACK: frozenset({ROLLING_BACK}),
    NEEDS_ATTENTION: frozenset({ROLLING_BACK, COMMITTING}),
}

GLOBAL_TXN_DDL = (
    f"CREATE TABLE IF NOT EXISTS {GLOBAL_TXN_TABLE} ("
    "xid VARCHAR(128) NOT NULL PRIMARY KEY, "
    "mode VARCHAR(16) NOT NULL, "
    f"status ENUM({', '.join(repr(s) for s in STATUSES)}) NOT NULL, "
    "participants TEXT NOT NULL, "
    "created DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
    "updated DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
    "detail TEXT NOT NULL, "
    "KEY idx_status_updated (status, updated)"
    ") ENGINE=InnoDB")


@dataclass(frozen=True)
class Participant:
    data_source: str
    branch_id: int


@dataclass(frozen=True)
class GlobalTxn:
    xid: str
    mode: str
    status: str
    participants: tuple[Participant, ...]
    created: Any
    updated: Any
    detail: str


def can_transition(old: str, new: str) -> bool:
    return old in TRANSITIONS.get(new, frozenset())


def encode_participants(participants: Sequence[Participant]) -> str:
    return json.dumps([{"data_source": p.data_source, "branch_id": p.branch_id} for p in participants],
                      separators=(",", ":"))


def decode_participants(text: str | bytes) -> tuple[Participant, ...]:
    return tuple(Participant(p["data_source"], int(p["branch_id"])) for p in json.loads(text or "[]"))


def insert(xid: str, participants: Sequence[Participant], status: str = BEGUN, mode: str = MODE_BASE,
           detail: str = "") -> Statement:
    if status not in (BEGUN, COMMITTING):
        raise ValueError(f"a global transaction starts as {BEGUN} or {COMMITTING}, not {status}")
    return Statement(f"INSERT INTO {GLOBAL_TXN_TABLE} (xid, mode, status, participants, detail) "
                     "VALUES (%s, %s, %s, %s, %s)",
                     (xid, mode, status, encode_participants(participants), detail))


def set_status(xid: str, status: str, detail: str | None = None) -> Statement:
    """Move to ``status`` if the current status may precede it (check affected rows)."""
    allowed = TRANSITIONS.get(status)
    if not allowed:
        raise ValueError(f"no transition leads to status {status!r}")
    before = sorted(allowed)
    detail_sql = ", detail = %s" if detail is not None else ""
    return Statement(f"UPDATE {GLOBAL_TXN_TABLE} SET status = %s, updated = CURRENT_TIMESTAMP(6){detail_sql} "
                     f"WHERE xid = %s AND status IN ({', '.join(['%s'] * len(before))})",
                     (status, *((detail,) if detail is not None else ()), xid, *before))


def set_participants(xid: str, participants: Sequence[Participant]) -> Statement:
    """Record the branches a still-running transaction has opened (before they commit)."""
    return Statement(f"UPDATE {GLOBAL_TXN_TABLE} SET participants = %s, updated = CURRENT_TIMESTAMP(6) "
                     "WHERE xid = %s AND status = %s", (encode_participants(participants), xid, BEGUN))


_COLUMNS = "xid, mode, status, participants, created, updated, detail"
_SELECT = f"SELECT {_COLUMNS} FROM {GLOBAL_TXN_TABLE}"


def select_one(xid: str, lock: bool = False) -> Statement:
    return Statement(f"{_SELECT} WHERE xid = %s" + (" FOR UPDATE" if lock else ""), (xid,))


def select_for_recovery(xid_prefix: str, min_age_s: float, limit: int = 100) -> Statement:
    """Transactions of one sidecar instance (``xid_prefix``) that recovery finishes or cleans
    up: every status but ``needs_attention`` (an operator's), untouched for ``min_age_s``
    seconds by the server's clock (the one that stamped them)."""
    return Statement(f"{_SELECT} WHERE xid LIKE %s AND status <> %s "
                     "AND updated < NOW(6) - INTERVAL %s MICROSECOND ORDER BY updated LIMIT %s",
                     (xid_prefix.replace("%", "\\%").replace("_", "\\_") + "%", NEEDS_ATTENTION,
                      int(min_age_s * 1_000_000), int(limit)))


# What an operator may filter SHOW DBMESH TRANSACTIONS on, and how.
LISTING_COLUMNS = ("xid", "mode", "status", "participants", "detail")
LISTING_OPERATORS = ("=", "<>", "LIKE", "NOT LIKE")


def select_listing(conditions: Sequence[tuple[str, str, str]] = (), limit: int | None = None) -> Statement:
    """Every transaction matching all ``conditions`` ((column, operator, text)), oldest first,
    as ``select_*`` rows followed by the age since created and since last updated in
    microseconds, by the server's clock (the one that stamped them)."""
    where = []
    params: list[Any] = []
    for column, operator, value in conditions:
        if column not in LISTING_COLUMNS or operator not in LISTING_OPERATORS:
            raise ValueError(f"cannot filter on {column} {operator}")
        where.append(f"{column} {operator} %s")
        params.append(value)
    sql = (f"SELECT {_COLUMNS}, TIMESTAMPDIFF(MICROSECOND, created, NOW(6)), "
           "TIMESTAMPDIFF(MICROSECOND, updated, NOW(6)) "
           f"FROM {GLOBAL_TXN_TABLE}" + (f" WHERE {' AND '.join(where)}" if where else "")
           + " ORDER BY created, xid")
    if limit is not None:
        sql += " LIMIT %s"
        params.append(int(limit))
    return Statement(sql, tuple(params))


def count_status(status: str) -> Statement:
    return Statement(f"SELECT COUNT(*) FROM {GLOBAL_TXN_TABLE} WHERE status = %s", (status,))


def forget(xid: str) -> Statement:
    """Drop a transaction's row whatever its status (an operator's FORGET, once its undo
    rows and locks are gone)."""
    return Statement(f"DELETE FROM {GLOBAL_TXN_TABLE} WHERE xid = %s", (xid,))


def delete(*xids: str) -> Statement:
    """Forget finished transactions (only once their undo logs are gone)."""
    return Statement(f"DELETE FROM {GLOBAL_TXN_TABLE} WHERE xid IN ({', '.join(['%s'] * len(xids))}) "
                     "AND status IN (%s, %s)", (*xids, COMMITTED, ROLLED_BACK))


def from_row(row: Sequence[Any]) -> GlobalTxn:
    """A ``select_*`` row (driver values or text-protocol bytes)."""
    def text(v: Any) -> str:
        return v.decode("utf-8") if isinstance(v, bytes | bytearray) else ("" if v is None else str(v))
    xid, mode, status, participants, created, updated, detail = row
    return GlobalTxn(text(xid), text(mode), text(status), decode_participants(text(participants)),
                     created, updated, text(detail))
