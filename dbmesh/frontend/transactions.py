"""The session's global transaction on a sharded database: which mode commits it (LOCAL or
XA, see txn/), its id, and how a backend connection joins it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from txn import xa

from .. import errors
from ..backend.connection import BackendConnection, BackendError
from ..errors import ProxyError

if TYPE_CHECKING:
    from .session import Session

MODES = ("LOCAL", "XA")


class GlobalTransaction:
    def __init__(self, session: Session):
        self.session = session
        self.mode_override: str | None = None  # SET dbmesh_transaction_mode = ...
        self.start_sql = "START TRANSACTION"
        self.xid = ""

    @property
    def mode(self) -> str:
        if self.mode_override:
            return self.mode_override
        s = self.session
        return s.config.databases[s.database].transaction.mode if s.database else "LOCAL"

    def set_mode(self, value: str) -> None:
        mode = value.strip().strip("'\"`").upper()
        if mode not in MODES:
            raise ProxyError(1231, "42000", f"dbmesh_transaction_mode must be one of {', '.join(MODES)}, "
                                            f"not '{value.strip()}'")
        self.mode_override = mode

    def begin(self, start_sql: str = "START TRANSACTION") -> None:
        self.start_sql = start_sql
        self.xid = xa.new_xid(self.session.config.instance_id) if self.mode == "XA" else ""

    async def enlist(self, conn: BackendConnection, data_source: str) -> None:
        """Open this transaction's branch on a connection just borrowed for it."""
        if self.xid:
            await xa.start(conn, self.xid, data_source)
        else:
            await conn.query(self.start_sql)

    async def finish(self, branches: dict[str, BackendConnection], commit: bool) -> None:
        if self.xid:
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
        if not branches:
            return
        if not commit:
            await xa.rollback(branches, xid)
            return
        try:
            await xa.commit(branches, xid, self._write_decision, self._forget_decision)
        except xa.XaError as exc:
            raise ProxyError(1614, "XA100", str(exc)) from exc  # ER_XA_RBROLLBACK

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
            if ds not in s.server.xa_log_ready:
                await conn.query(xa.LOG_DDL)
                s.server.xa_log_ready.add(ds)
            await conn.query(sql)
        finally:
            pool.release(conn)
