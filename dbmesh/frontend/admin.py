"""The sidecar's own admin statements over the MySQL protocol (in the manner of
ShardingSphere's DistSQL and ProxySQL's admin statements): an operator's view of, and hand
on, the BASE global transactions in the coordinators' logs (txn/global_log.py) of every
sharded database; the listing also shows the XA transactions left in doubt (a branch
prepared, or a commit decision logged; xa_mode.py), which the XA sweep finishes.

    SHOW DBMESH TRANSACTIONS [WHERE status = 'needs_attention'] [LIMIT n]
    DBMESH RETRY TRANSACTION 'xid'    compensate again (a needs_attention or stuck one)
    DBMESH FORGET TRANSACTION 'xid'   drop its undo rows, locks and log row (data fixed by hand)

Only users with ``admin: true`` may run them (error 1227 otherwise). The grammar is in
admin_sql.py; what may be done to which transaction, in txn/base_operator.py.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from txn import base_operator, global_log
from txn.base_operator import Listed
from txn.recovery import ER_XAER_NOTA

from .. import errors, metrics
from ..backend.connection import BackendError
from ..errors import ProxyError
from ..protocol.constants import COLLATION_BINARY, FieldType
from ..protocol.packets import Column, ok_packet
from . import admin_sql, base_mode, xa_mode
from .sharded import like_regex
from .statement import is_admin

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

log = logging.getLogger("dbmesh.admin")

ER_ERROR_DURING_ROLLBACK = 1180
ER_XAER_RMFAIL = 1399
ER_UNSUPPORTED_PS = 1295

_TIME = {"type": FieldType.DATETIME, "length": 26, "decimals": 6, "charset": COLLATION_BINARY}
_SECONDS = {"type": FieldType.NEWDECIMAL, "length": 20, "decimals": 3, "charset": COLLATION_BINARY}
COLUMNS = [Column("xid", length=512), Column("mode", length=64), Column("status", length=64),
           Column("log_data_source", length=256), Column("participants", length=4096),
           Column("created", **_TIME), Column("updated", **_TIME),
           Column("age_s", **_SECONDS), Column("idle_s", **_SECONDS),
           Column("running_here", length=12), Column("detail", length=65535)]


def refuse_prepare(sql: bytes) -> None:
    """COM_STMT_PREPARE of an admin statement: refused as the server refuses statements it
    runs only as plain queries (they would otherwise reach a backend as bad SQL)."""
    if is_admin(sql):
        raise ProxyError(ER_UNSUPPORTED_PS, "HY000",
                         "This command is not supported in the prepared statement protocol yet: run the dbmesh "
                         "admin statements as plain queries (a client-side or non-prepared cursor)")


async def execute(session: Session, sql: bytes) -> None:
    statement = admin_sql.parse(sql.decode("utf-8", "surrogateescape"))
    user = session.user
    if user is None or not user.admin:
        name = user.name if user is not None else ""
        raise ProxyError(errors.ER_SPECIFIC_ACCESS_DENIED_ERROR, "42000",
                         "Access denied; you need (at least one of) the DBMESH ADMIN privilege(s) for this "
                         f"operation: user '{name}' has no 'admin: true' in the dbmesh config")
    if isinstance(statement, admin_sql.ShowTransactions):
        server = session.server
        items = await listing(server, statement.conditions, statement.limit)
        rows = [_row(item, item.txn.xid in server.base.running) for item in items]
        rows += [row for row in await _xa_rows(server) if _matches(row, statement.conditions)]
        rows.sort(key=lambda row: (_text(row[5]) if row[5] is not None else "", row[0]))  # created, xid
        session.send_result(COLUMNS, rows[:statement.limit] if statement.limit is not None else rows)
        return
    action = "retry" if isinstance(statement, admin_sql.RetryTransaction) else "forget"
    try:
        outcome, answer = await _act(session, action, statement.xid)
    except ProxyError:
        metrics.BASE_OPERATOR_ACTIONS.labels(action, "refused").inc()
        raise
    metrics.BASE_OPERATOR_ACTIONS.labels(action, outcome).inc()
    if isinstance(answer, ProxyError):
        raise answer
    session.send(ok_packet(1, 0, session.status_flags(), info=answer.encode("utf-8")))


async def listing(server: Server, conditions=(), limit: int | None = None) -> list[Listed]:
    """Global transactions on every log data source, oldest first."""
    items: list[Listed] = []
    statement = global_log.select_listing(conditions, limit)
    for log_source in base_mode.base_log_sources(server):
        try:
            result = await base_mode.run_plain(server, log_source, statement)
        except BackendError as exc:
            if base_mode.no_such_table(exc):  # no BASE transaction ever logged here
                continue
            raise
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise ProxyError(errors.ER_QUERY_ON_FOREIGN_DATA_SOURCE, errors.SQLSTATE_LINK_FAILURE,
                             f"Lost connection to log data source '{log_source}' while reading "
                             f"{global_log.GLOBAL_TXN_TABLE} ({exc})") from exc
        items += [base_operator.listed(row, log_source) for row in result.rows]
    items.sort(key=lambda item: (_text(item.txn.created), item.txn.xid))
    return items[:limit] if limit is not None else items


async def _xa_rows(server: Server) -> list[list[object]]:
    """The in-doubt XA transactions (xa_mode.in_doubt) as listing rows."""
    try:
        items = await xa_mode.in_doubt(server)
    except (ConnectionError, OSError, TimeoutError) as exc:
        raise ProxyError(errors.ER_QUERY_ON_FOREIGN_DATA_SOURCE, errors.SQLSTATE_LINK_FAILURE,
                         f"Lost connection to a data source while listing its prepared XA branches ({exc})") from exc
    rows: list[list[object]] = []
    for item in items:
        status, detail = xa_mode.status_and_detail(item, server.config.instance_id)
        rows.append([item.xid, "XA", status, item.log_source, item.participants or ", ".join(item.prepared_on),
                     item.created, item.created, f"{item.age_s:.3f}" if item.age_s is not None else None, None,
                     "YES" if item.xid in server.xa.running else "NO", detail])
    return rows


# The columns a WHERE may name (global_log.LISTING_COLUMNS), by position in COLUMNS.
_CONDITION_COLUMNS = {"xid": 0, "mode": 1, "status": 2, "participants": 4, "detail": 10}


def _matches(row: list[object], conditions) -> bool:
    """A listing row against SHOW's WHERE conditions, compared as the log table's columns
    are (case-insensitive, NULL matches nothing)."""
    for column, operator, text in conditions:
        value = row[_CONDITION_COLUMNS[column]]
        if value is None:
            return False
        if operator in ("LIKE", "NOT LIKE"):
            found = like_regex(text).match(str(value)) is not None
        else:
            found = str(value).lower() == text.lower()
        if found != (operator in ("=", "LIKE")):
            return False
    return True


def _row(item: Listed, running_here: bool) -> list[object]:
    txn = item.txn
    return [txn.xid, txn.mode, txn.status, item.log_source,
            ", ".join(f"{p.data_source}#{p.branch_id}" for p in txn.participants),
            txn.created, txn.updated, f"{item.age_s:.3f}", f"{item.idle_s:.3f}",
            "YES" if running_here else "NO", txn.detail or None]


async def _act(session: Session, action: str, xid: str) -> tuple[str, str | ProxyError]:
    """RETRY or FORGET one transaction: (outcome, the OK packet's message or the error to
    send). A statement refused before anything ran raises instead."""
    server = session.server
    state = server.base
    found = await listing(server, [("xid", "=", xid)])
    if not found:
        sources = ", ".join(base_mode.base_log_sources(server)) or "(no sharded database is configured)"
        raise ProxyError(ER_XAER_NOTA, "XAE04", f"XAER_NOTA: Unknown XID '{xid}': no global transaction with this "
                                                f"xid in {global_log.GLOBAL_TXN_TABLE} on {sources}; SHOW DBMESH "
                                                "TRANSACTIONS lists them")
    item = found[0]
    txn = item.txn
    if xid in state.operating:
        raise ProxyError(ER_XAER_RMFAIL, "XAE07", f"XAER_RMFAIL: another DBMESH statement is acting on global "
                                                  f"transaction '{xid}' now; wait for it to end")
    owner = base_operator.owner_of(xid, server.config.instance_id, server.xid_instance)
    busy = base_operator.why_busy(item, xid in state.running, owner, server.config.transaction.base_orphan_age_s)
    if busy:
        raise ProxyError(ER_XAER_RMFAIL, "XAE07", f"XAER_RMFAIL: {busy}")
    missing = sorted({p.data_source for p in txn.participants} - set(server.pools))
    if missing:
        raise ProxyError(ER_XAER_RMFAIL, "XAE07",
                         f"XAER_RMFAIL: global transaction '{xid}' has branches on data sources this sidecar's "
                         f"config no longer has ({', '.join(missing)}); add them back to {action} it")
    state.operating.add(xid)  # keeps this process's recovery sweep and other admin statements away
    try:
        answer = await _run(server, action, item)
    finally:
        state.operating.discard(xid)
        await _refresh_gauge(server)
    outcome = answer[0]
    log.log(logging.INFO if isinstance(answer[1], str) else logging.WARNING,
            "admin %s@%s: DBMESH %s TRANSACTION %s (was %s): %s", session.user.name, session.client_host,
            action.upper(), xid, txn.status, outcome)
    return answer


# What a retry or forget that stopped half-way left, for its error message.
_PARTLY = {"retry": "every branch's compensation was rolled back, so nothing is half undone; run it again",
           "forget": "some of its rows may be gone already; run it again to finish"}


async def _run(server: Server, action: str, item: Listed) -> tuple[str, str | ProxyError]:
    txn, xid = item.txn, item.txn.xid
    backends = base_mode.backends(server, item.log_source)
    try:
        if action == "forget":
            undo_rows, locks = await base_operator.forget(backends, txn)
            return "forgotten", (f"global transaction '{xid}' ({txn.status}) forgotten: {undo_rows} undo rows and "
                                 f"{locks} global locks removed, nothing undone")
        outcome, detail = await base_operator.retry(backends, txn, lambda ds: base_mode.acquire_plain(server, ds),
                                                    lambda conn: base_mode.release_plain(server, conn))
    except BackendError as exc:
        return "failed", ProxyError(exc.err.code, exc.err.sqlstate,
                                    f"DBMESH {action.upper()} TRANSACTION '{xid}' stopped on a data source: "
                                    f"{exc.err.message}; {_PARTLY[action]}")
    except ProxyError as exc:  # a data source that cannot be reached
        return "failed", exc
    except (ConnectionError, OSError, TimeoutError) as exc:
        return "failed", ProxyError(errors.ER_QUERY_ON_FOREIGN_DATA_SOURCE, errors.SQLSTATE_LINK_FAILURE,
                                    f"DBMESH {action.upper()} TRANSACTION '{xid}' lost a data source ({exc}); "
                                    f"{_PARTLY[action]} once the data source is back")
    except Exception as exc:  # noqa: BLE001 - the session and the sidecar go on
        log.exception("DBMESH %s TRANSACTION %s failed", action.upper(), xid)
        return "failed", ProxyError(errors.ER_UNKNOWN_ERROR, "HY000",
                                    f"DBMESH {action.upper()} TRANSACTION '{xid}' failed: {exc}; {_PARTLY[action]}")
    return outcome or "moved", _retried(xid, txn.status, outcome, detail)


def _retried(xid: str, status: str, outcome: str | None, detail: str) -> str | ProxyError:
    """The OK message of a retry, or the error saying why it did not finish."""
    if outcome == "rolled_back":
        return f"global transaction '{xid}' ({status}) rolled back: every branch compensated"
    if outcome == "committed":
        return f"global transaction '{xid}' had committed; its undo rows and locks are cleaned up"
    if outcome == "needs_attention":
        return ProxyError(ER_ERROR_DURING_ROLLBACK, "HY000",
                          f"DBMESH RETRY TRANSACTION '{xid}' was not applied, to keep another transaction's "
                          f"changes: {detail}. Its changes stay committed and it stays needs_attention. Put those "
                          f"rows back as the transaction left them and retry, or fix the data by hand and run "
                          f"DBMESH FORGET TRANSACTION '{xid}'")
    return ProxyError(ER_XAER_RMFAIL, "XAE07", f"XAER_RMFAIL: global transaction '{xid}' changed status as the retry "
                                               "began (another sidecar's recovery may be finishing it); see SHOW "
                                               "DBMESH TRANSACTIONS")


async def _refresh_gauge(server: Server) -> None:
    try:
        await base_mode.count_needs_attention(server)
    except (BackendError, ProxyError, ConnectionError, OSError, TimeoutError) as exc:
        log.debug("needs_attention gauge not refreshed: %s", exc)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)
