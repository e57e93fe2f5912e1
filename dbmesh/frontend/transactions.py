"""The session's global transaction on a sharded database: which mode commits it (LOCAL,
XA or BASE, see txn/), its id, and how a backend connection joins it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from txn import xa
from txn.base_branch import NoSuchTable
from txn.base_coordinator import ER_ERROR_DURING_ROLLBACK, BaseTransaction, BaseTxnError
from txn.snapshot import SnapshotError, UnsupportedStatement

from .. import errors, metrics
from ..backend.connection import BackendConnection, BackendError, QueryResult
from ..config import BASE_ISOLATIONS
from ..errors import ProxyError
from ..protocol.constants import Capability
from . import base_mode

if TYPE_CHECKING:
    from .session import Session

MODES = ("LOCAL", "XA", "BASE")
ISOLATIONS = BASE_ISOLATIONS
ER_NO_SUCH_TABLE = 1146


class GlobalTransaction:
    def __init__(self, session: Session):
        self.session = session
        self.mode_override: str | None = None  # SET dbmesh_transaction_mode = ...
        self.isolation_override: str | None = None  # SET dbmesh_base_isolation = ...
        self.start_sql = "START TRANSACTION"
        self.xid = ""
        self.started_at = 0.0
        self.base: BaseTransaction | None = None  # the running BASE global transaction

    @property
    def mode(self) -> str:
        if self.mode_override:
            return self.mode_override
        s = self.session
        return s.config.databases[s.database].transaction.mode if s.database else "LOCAL"

    def set_mode(self, value: str) -> None:
        self.mode_override = _setting("dbmesh_transaction_mode", value, MODES).upper()

    def set_isolation(self, value: str) -> None:
        self.isolation_override = _setting("dbmesh_base_isolation", value, ISOLATIONS)

    def begin(self, start_sql: str = "START TRANSACTION") -> None:
        self.start_sql = start_sql
        self.started_at = time.monotonic()  # the youngest in a deadlock is rolled back
        mode = self.mode
        self.xid = xa.new_xid(self.session.server.xid_instance) if mode == "XA" else ""
        if self.xid:
            self.session.server.xa.begun(self.xid)
        self.base = self._new_base() if mode == "BASE" else None

    def _new_base(self) -> BaseTransaction:
        s = self.session
        config = s.config.databases[s.database].transaction
        backends = base_mode.backends(s.server, self._log_data_source(), branch=s.sharded.connection,
                                      database=s.database or "")
        base = BaseTransaction(backends, s.server.xid_instance, self.isolation_override or config.base_isolation,
                               config.lock_wait_timeout_s,
                               found_rows=bool(s.capabilities & Capability.FOUND_ROWS))
        s.server.base.running.add(base.xid)
        return base

    async def enlist(self, conn: BackendConnection, data_source: str) -> None:
        """Open this transaction's branch on a connection just borrowed for it."""
        if self.base is not None:
            # BASE branches open a local transaction per statement; reads run in autocommit.
            if not conn.autocommit:
                await conn.query("SET autocommit=1")
                conn.autocommit = True
        elif self.xid:
            await xa.start(conn, self.xid, data_source)
        else:
            await conn.query(self.start_sql)

    async def base_write(self, units: list[tuple[str, str]]) -> list[QueryResult]:
        """Run write units ((data source, SQL)) as BASE branch statements."""
        assert self.base is not None
        with _client_errors():
            return await self.base.write(units)

    async def base_lock_rows(self, units: list[tuple[str, str]]) -> None:
        assert self.base is not None
        with _client_errors():
            await self.base.lock_rows(units)

    async def finish(self, branches: dict[str, BackendConnection], commit: bool) -> None:
        mode, database = self.mode, self.session.database or ""
        touched = bool(branches) or (self.base is not None and bool(self.base.participants))
        try:
            await self._finish(branches, commit)
        except ProxyError as exc:
            if exc.code == ER_ERROR_DURING_ROLLBACK:
                metrics.BASE_NEEDS_ATTENTION.labels(database).inc()
            if touched:
                metrics.GLOBAL_TRANSACTIONS.labels(database, mode, "failed").inc()
            raise
        if touched:
            metrics.GLOBAL_TRANSACTIONS.labels(database, mode, "commit" if commit else "rollback").inc()

    async def _finish(self, branches: dict[str, BackendConnection], commit: bool) -> None:
        if self.base is not None:
            base, self.base = self.base, None
            try:
                with _client_errors():
                    await (base.commit() if commit else base.rollback())
            finally:
                self.session.server.base.running.discard(base.xid)
        elif self.xid:
            await self._finish_xa(branches, commit)
        else:
            await self._finish_local(branches, "COMMIT" if commit else "ROLLBACK")

    async def _finish_local(self, branches: dict[str, BackendConnection], verb: str) -> None:
        failure: ProxyError | None = None
        for ds, conn in branches.items():
            try:
                await conn.query(verb)
            except (BackendError, ConnectionError, OSError) as exc:
                conn.broken = True
                failure = failure or ProxyError(
                    errors.ER_UNKNOWN_ERROR, "HY000",
                    f"{verb} failed on data source '{ds}': {exc}; the other data sources were finished "
                    "(LOCAL transactions are best effort; use XA for atomic commit)")
        if failure is not None:
            raise failure

    async def _finish_xa(self, branches: dict[str, BackendConnection], commit: bool) -> None:
        xid, self.xid = self.xid, ""
        failed = list(branches)  # unless it ends well
        try:
            if not branches:
                return
            if commit:
                failed = await xa.commit(branches, xid, self._write_decision, self._forget_decision)
            else:
                failed = await xa.rollback(branches, xid)
        except xa.XaError as exc:
            raise ProxyError(1614, "XA100", str(exc)) from exc  # ER_XA_RBROLLBACK
        finally:
            # A branch left prepared must leave with its connection: the pool would hand it
            # out in that state, and the server lets another connection finish it only then.
            for ds in failed:
                branches[ds].broken = True
            self.session.server.xa.running.discard(xid)  # what is left is the XA sweep's

    def _log_data_source(self) -> str:
        s = self.session
        ldb = s.config.databases[s.database]
        return ldb.transaction.log_data_source or ldb.sharding.default_data_source

    async def _write_decision(self, xid: str, participants: list[str]) -> None:
        await self._log(f"INSERT INTO {xa.LOG_TABLE} (xid, decision, participants) "
                        f"VALUES ('{xid}', 'commit', '{','.join(participants)}')")

    async def _forget_decision(self, xid: str) -> None:
        await self._log(f"DELETE FROM {xa.LOG_TABLE} WHERE xid = '{xid}'")

    async def _log(self, sql: str) -> None:
        """Run a coordinator-log statement on its own autocommit connection (the branch
        connections are inside XA and cannot)."""
        s = self.session
        ds = self._log_data_source()
        pool = s.server.pools[ds]
        conn = await pool.acquire(s.caps_key)
        try:
            await s.sync_state(conn, s.config.data_sources[ds].database)
            if not conn.autocommit:
                await conn.query("SET autocommit=1")
                conn.autocommit = True
            if ds not in s.server.xa.log_ready:
                await conn.query(xa.LOG_DDL)
                s.server.xa.log_ready.add(ds)
            await conn.query(sql)
        finally:
            pool.release(conn)


def _setting(name: str, value: str, allowed: tuple[str, ...]) -> str:
    """A session setting's value, checked against ``allowed`` (any case)."""
    chosen = value.strip().strip("'\"`")
    found = next((a for a in allowed if a.lower() == chosen.lower()), None)
    if found is None:
        raise ProxyError(1231, "42000", f"{name} must be one of {', '.join(allowed)}, not '{value.strip()}'")
    return found


@contextmanager
def _client_errors() -> Iterator[None]:
    """BASE failures as the MySQL errors the client sees (server errors pass as they are)."""
    try:
        yield
    except BaseTxnError as exc:
        raise ProxyError(exc.code, exc.sqlstate, exc.message) from exc
    except NoSuchTable as exc:
        raise ProxyError(ER_NO_SUCH_TABLE, "42S02", str(exc)) from exc
    except UnsupportedStatement as exc:
        raise ProxyError(errors.ER_NOT_SUPPORTED_YET, "42000", f"{exc}; run it outside a BASE transaction "
                                                               "or use SET dbmesh_transaction_mode = 'XA'") from exc
    except SnapshotError as exc:
        raise ProxyError(errors.ER_UNKNOWN_ERROR, "HY000", f"BASE transaction: the statement was rolled back "
                                                           f"because its undo images could not be taken: {exc}") from exc
    except (ConnectionError, OSError) as exc:
        raise ProxyError(errors.ER_QUERY_ON_FOREIGN_DATA_SOURCE, errors.SQLSTATE_LINK_FAILURE,
                         f"Lost connection to a data source in a BASE transaction ({exc}); what it committed is "
                         "undone by ROLLBACK or by recovery") from exc
