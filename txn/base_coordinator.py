"""One session's BASE global transaction: statements committed branch by branch at once,
undone by compensation if the global transaction rolls back.

Every write statement runs in its own local transaction on each data source it touches
(a branch): images, the change, its undo record and (``record_lock``) its global locks
commit together right away, so row locks are held for one statement only. The global
transaction's row in ``dbmesh_global_txn`` (on the log data source) is written before
the first branch commits and lists every participant before that participant commits,
so a crash at any point leaves enough for recovery (``txn.base_recovery``).

* COMMIT: the row becomes ``committed``; the undo rows, locks and the row itself are
  removed afterwards, in the background.
* ROLLBACK: ``rolling_back``, then every branch is compensated (``txn.base_compensate``);
  ``rolled_back`` and clean-up, or ``needs_attention`` when a row was changed meanwhile
  by someone else (isolation ``version`` or ``record_lock``), which is reported and not
  overwritten.
* A statement that fails leaves nothing behind (all its branches roll back locally); if
  a COMMIT of a branch fails after another branch of the same statement committed, the
  statement is half applied and the transaction can only roll back.

Isolation: ``none`` compensates as is; ``version`` checks each row against the image the
transaction left before undoing it; ``record_lock`` also takes a global lock on every
written row (and on rows read with FOR UPDATE / LOCK IN SHARE MODE) until the global
transaction ends, so two global transactions writing one row run one after the other.
A statement that finds a row locked by another global transaction rolls back its local
work, waits and retries, up to ``lock_wait_timeout_s``.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from sqlglot import exp

from . import failpoints, global_lock, global_log, undo_log
from .base_branch import (
    Conn,
    Pipelined,
    Result,
    error_code,
    images_of,
    read_image,
    run,
    run_dml,
    table_meta,
)
from .base_cleanup import Finished, clean_up
from .base_compensate import compensate, rollback_all
from .base_templates import Templates
from .global_log import Participant
from .images import TableMeta, UndoRecord
from .snapshot import SnapshotError, UnsupportedStatement, before_image_sql
from .sqltext import Statement

ISOLATIONS = ("none", "version", "record_lock")
_COMPENSATION_ATTEMPTS = 8  # a compensation chosen as a deadlock victim runs again

ER_LOCK_WAIT_TIMEOUT = 1205
ER_LOCK_DEADLOCK = 1213
ER_ERROR_DURING_ROLLBACK = 1180
ER_XA_RBROLLBACK = 1614
ER_NOT_SUPPORTED_YET = 1235


class BaseTxnError(Exception):
    """A failure the client sees as a MySQL error (code, SQLSTATE, message)."""

    def __init__(self, code: int, sqlstate: str, message: str):
        super().__init__(message)
        self.code, self.sqlstate, self.message = code, sqlstate, message


class Busy(Exception):
    """The statement's local work was rolled back and may simply run again."""


class LockBusy(Busy):
    def __init__(self, table: str, key: str, holder: str):
        super().__init__(f"row {key} of {table} is locked by global transaction {holder}")


class DeadlockBusy(Busy):
    """InnoDB chose a branch as a deadlock victim (the undo and lock tables' gap locks can
    deadlock statements that touch different rows): the whole statement is retried."""


def new_xid(instance_id: str) -> str:
    return f"dbmesh-{instance_id}-{uuid.uuid4().hex}"


def xid_prefix(instance_id: str) -> str:
    return f"dbmesh-{instance_id}-"


@dataclass
class Backends:
    """What the coordinator needs of the sidecar."""

    # The branch connection of a data source (held by the session for the transaction).
    branch: Callable[[str], Awaitable[Conn]]
    # Run a statement in autocommit on the log data source / on a data source.
    log: Callable[[Statement], Awaitable[Result]]
    on_data_source: Callable[[str, Statement], Awaitable[Result]]
    # The physical database (schema) of a data source.
    schema_of: Callable[[str], str]
    # Run once per data source before its first branch (creates the undo and lock tables).
    prepare: Callable[[str, Conn], Awaitable[None]]
    # Actual table metadata and statement shapes, shared by the sidecar's sessions.
    meta_cache: dict[tuple[str, str], TableMeta] = field(default_factory=dict)
    templates: Templates = field(default_factory=Templates)
    # Told each time a statement runs again ('lock' or 'deadlock'), for the metrics.
    retried: Callable[[str], None] = lambda reason: None
    # The log data source, and where finished transactions go for (batched) clean-up.
    log_source: str = ""
    finished: Callable[[Finished], None] = lambda f: None


@dataclass
class _Unit:
    """One statement part on one data source: its index among the plan's units and SQL."""

    index: int
    sql: str


class BaseTransaction:
    def __init__(self, backends: Backends, instance_id: str, isolation: str, lock_wait_timeout_s: float,
                 found_rows: bool = False):
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}")
        self.backends = backends
        self.isolation = isolation
        self.lock_wait_timeout_s = lock_wait_timeout_s
        self.found_rows = found_rows
        self.xid = new_xid(instance_id)
        self.logged = False                       # the global row exists
        self.participants: dict[str, Participant] = {}
        self.headers: set[str] = set()            # data sources whose undo header committed
        self.seq: dict[str, int] = {}             # last undo record seq per data source
        self.locks: dict[str, set[tuple[str, str]]] = {}  # (table, key text) held per data source
        self.rollback_only = ""                   # why the transaction can only roll back

    # -- statements ---------------------------------------------------------------------

    async def write(self, units: Sequence[tuple[str, str]]) -> list[Result]:
        """Run write units ((data source, SQL), in plan order); results in the same order."""
        return await self._with_retry(units, self._write_branch)

    async def lock_rows(self, units: Sequence[tuple[str, str]]) -> None:
        """``record_lock``: take global locks on the rows a locking SELECT will read."""
        if self.isolation == "record_lock":
            await self._with_retry(units, self._lock_branch)

    async def _with_retry(self, units: Sequence[tuple[str, str]], branch_work) -> list[Result]:
        if self.rollback_only:
            raise BaseTxnError(ER_XA_RBROLLBACK, "XA100", f"{self.rollback_only}; the transaction can only "
                                                          "be rolled back (ROLLBACK)")
        by_source: dict[str, list[_Unit]] = {}
        for index, (ds, sql) in enumerate(units):
            by_source.setdefault(ds, []).append(_Unit(index, sql))
        await self._register(list(by_source))
        deadline = time.monotonic() + self.lock_wait_timeout_s
        pause = 0.005
        while True:
            try:
                return await self._attempt(by_source, branch_work, len(units))
            except Busy as busy:
                if time.monotonic() >= deadline:
                    if isinstance(busy, DeadlockBusy):
                        raise BaseTxnError(ER_LOCK_DEADLOCK, "40001", f"Deadlock found when trying to get lock "
                                           f"({busy}; retried for {self.lock_wait_timeout_s:g} s); try "
                                           "restarting transaction") from None
                    raise BaseTxnError(ER_LOCK_WAIT_TIMEOUT, "HY000",
                                       f"Lock wait timeout exceeded: {busy} (dbmesh BASE record_lock, waited "
                                       f"{self.lock_wait_timeout_s:g} s); try restarting transaction") from None
                self.backends.retried("deadlock" if isinstance(busy, DeadlockBusy) else "lock")
                await asyncio.sleep(pause * random.uniform(0.5, 1.5))
                pause = min(pause * 2, 0.1)

    async def _register(self, data_sources: list[str]) -> None:
        """Record the global transaction and its new participants before any of them commits."""
        new = [ds for ds in data_sources if ds not in self.participants]
        if not new:
            return
        everyone = [*self.participants.values(),
                    *(Participant(ds, len(self.participants) + n) for n, ds in enumerate(new, 1))]
        if not self.logged:
            await self.backends.log(global_log.insert(self.xid, everyone))
            self.logged = True
        else:
            result = await self.backends.log(global_log.set_participants(self.xid, everyone))
            if result.affected_rows != 1:
                raise BaseTxnError(ER_XA_RBROLLBACK, "XA100", f"global transaction {self.xid} is no longer "
                                                              "running (a recovery finished it); roll back")
        # Only once logged: a branch never commits where recovery would not look.
        self.participants = {p.data_source: p for p in everyone}

    async def _attempt(self, by_source: dict[str, list[_Unit]], branch_work, count: int) -> list[Result]:
        """Every branch's local transaction, committed only if all of them succeeded."""
        results: list[Result | None] = [None] * count
        opened: dict[str, Pipelined] = {}
        pending: dict[str, tuple[int, set[tuple[str, str]]]] = {}

        async def one(ds: str, units: list[_Unit]) -> None:
            raw = await self.backends.branch(ds)
            await self.backends.prepare(ds, raw)
            conn = Pipelined(raw)
            conn.defer("START TRANSACTION")
            opened[ds] = conn
            pending[ds] = await branch_work(ds, conn, units, results)

        outcomes = await asyncio.gather(*(one(ds, u) for ds, u in by_source.items()), return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            await rollback_all(opened.values())
            busy = next((f for f in failures if isinstance(f, LockBusy)), None)
            deadlock = next((f for f in failures if error_code(f) == ER_LOCK_DEADLOCK), None)
            if busy is None and deadlock is not None:
                busy = DeadlockBusy(str(deadlock))
            raise busy or _most_telling(failures)
        branches = list(opened.items())
        for position, (ds, conn) in enumerate(branches):
            try:
                if position:
                    failpoints.hit("base_after_first_branch_commit")
                await conn.query("COMMIT")
            except Exception as exc:
                if position:
                    self.rollback_only = f"a statement committed on some data sources but not on {ds} ({exc})"
                await rollback_all([c for _, c in branches[position + 1:]])
                raise
            self.headers.add(ds)
            self.seq[ds], locks = pending[ds]
            self.locks.setdefault(ds, set()).update(locks)
        failpoints.hit("base_after_statement")
        return results  # type: ignore[return-value]

    async def _write_branch(self, ds: str, conn: Pipelined, units: list[_Unit],
                            results: list[Result | None]) -> tuple[int, set[tuple[str, str]]]:
        participant = self.participants[ds]
        schema = self.backends.schema_of(ds)
        records: list[UndoRecord] = []
        to_lock: list[tuple[str, TableMeta, list]] = []
        for unit in units:
            statement = self.backends.templates.statement(unit.sql)
            if not statement.table:
                raise UnsupportedStatement("BASE transaction mode cannot undo a statement that does not "
                                           "write a plain table")
            meta = await table_meta(conn, schema, statement.table, self.backends.meta_cache)
            result, record = await run_dml(conn, statement, unit.sql, meta, participant.branch_id,
                                           self.found_rows)
            results[unit.index] = result
            if record is not None:
                records.append(record)
                to_lock.append((f"{schema}.{meta.name}", meta, images_of(record)))
        seq = self.seq.get(ds, 0)
        bookkeeping = []
        if records or ds not in self.headers:
            # The header goes with the branch's first local commit: a rollback's tombstone meets it.
            bookkeeping.append(undo_log.insert_records(self.xid, participant.branch_id, seq + 1, records,
                                                       with_header=ds not in self.headers).inline())
        locks: set[tuple[str, str]] = set()
        if self.isolation == "record_lock":
            locks = await self._acquire(ds, conn, to_lock, bookkeeping)
        else:
            await conn.pipeline(bookkeeping)
        return seq + len(records), locks

    async def _lock_branch(self, ds: str, conn: Pipelined, units: list[_Unit],
                           results: list[Result | None]) -> tuple[int, set[tuple[str, str]]]:
        schema = self.backends.schema_of(ds)
        to_lock: list[tuple[str, TableMeta, list]] = []
        for unit in units:
            table, as_delete = _locked_rows_statement(_parse(unit.sql))
            meta = await table_meta(conn, schema, table, self.backends.meta_cache)
            image = await read_image(conn, meta, before_image_sql(as_delete, meta))
            to_lock.append((f"{schema}.{meta.name}", meta, image.rows))
        return self.seq.get(ds, 0), await self._acquire(ds, conn, to_lock)

    async def _acquire(self, ds: str, conn: Pipelined, to_lock: list[tuple[str, TableMeta, list]],
                       along: Sequence[str] = ()) -> set[tuple[str, str]]:
        """Global locks on these rows, in the branch's local transaction, sent with the
        ``along`` statements (whose errors are raised); LockBusy if another global
        transaction holds one of them."""
        claimed = set(self.locks.get(ds, ()))
        requests: list[tuple[str, list[str]]] = []
        for table, meta, rows in to_lock:
            wanted = sorted({global_lock.pk_text(meta, row) for row in rows} - {t for n, t in claimed if n == table})
            if wanted:
                requests.append((table, wanted))
                claimed |= {(table, t) for t in wanted}
        answers = await conn.answers([*along, *(global_lock.acquire(self.xid, t, w).inline() for t, w in requests)])
        for answer in answers[:len(along)]:
            if isinstance(answer, Exception):
                raise answer
        taken: set[tuple[str, str]] = set()
        for (table, wanted), answer in zip(requests, answers[len(along):], strict=True):
            if isinstance(answer, Exception):
                if error_code(answer) != global_lock.ER_DUP_ENTRY:
                    raise answer
                wanted = await self._acquire_contended(conn, table, wanted)
            taken |= {(table, t) for t in wanted}
        return taken

    async def _acquire_contended(self, conn: Pipelined, table: str, wanted: list[str]) -> list[str]:
        """Some of ``wanted`` are held: by this transaction (e.g. taken in an earlier
        statement on another actual table name) they are dropped and the rest taken;
        by another one, LockBusy."""
        while wanted:
            result = await run(conn, global_lock.holders(table, wanted))
            mine, others = global_lock.split_holders(result.rows, self.xid)
            if others:
                key, holder = next(iter(others.items()))
                raise LockBusy(table, key, holder) from None
            wanted = [t for t in wanted if t not in mine]
            try:
                await run(conn, global_lock.acquire(self.xid, table, wanted))
                return wanted
            except Exception as exc:
                if error_code(exc) != global_lock.ER_DUP_ENTRY:
                    raise
        return wanted

    # -- the end of the global transaction ------------------------------------------------

    async def commit(self) -> None:
        if not self.logged:
            return
        if self.rollback_only:
            reason = self.rollback_only
            await self.rollback()
            raise BaseTxnError(ER_XA_RBROLLBACK, "XA100", f"transaction rolled back: {reason}")
        failpoints.hit("base_before_commit_status")
        self.logged = False
        result = await self.backends.log(global_log.set_status(self.xid, global_log.COMMITTED))
        if result.affected_rows != 1:
            raise BaseTxnError(ER_XA_RBROLLBACK, "XA100", f"global transaction {self.xid} was rolled back by "
                                                          "recovery before it could commit")
        failpoints.hit("base_after_commit_status")
        self._finished()

    async def rollback(self) -> None:
        if not self.logged:
            return
        self.logged = False
        await self.backends.log(global_log.set_status(self.xid, global_log.ROLLING_BACK))
        failpoints.hit("base_before_compensation")
        conns = [await self.backends.branch(ds) for ds in self.participants]
        detail = await roll_back_global(self.backends, self.xid, list(self.participants.values()), conns,
                                        check=self.isolation != "none")
        if detail:
            raise BaseTxnError(ER_ERROR_DURING_ROLLBACK, "HY000",
                               f"ROLLBACK of global transaction {self.xid} was not applied, to keep another "
                               f"transaction's changes: {detail}. Its changes stay committed; the transaction "
                               f"is marked needs_attention in {global_log.GLOBAL_TXN_TABLE}")
        self._finished()

    def _finished(self) -> None:
        self.backends.finished(Finished(self.backends.log_source, self.xid, tuple(self.participants.values())))


async def roll_back_global(backends: Backends, xid: str, participants: Sequence[Participant],
                           conns: Sequence[Conn], check: bool) -> str:
    """Compensate every branch (status ``rolling_back`` already). Returns "" when done
    (status ``rolled_back``), else what conflicted (status ``needs_attention``, locks freed)."""
    branches = [(p.branch_id, c) for p, c in zip(participants, conns, strict=True)]
    for attempt in range(_COMPENSATION_ATTEMPTS):
        try:
            found = await compensate(branches, xid, check)
            break
        except Exception as exc:
            if error_code(exc) != ER_LOCK_DEADLOCK or attempt == _COMPENSATION_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.01 * random.uniform(1, 2 ** attempt))
    if not found:
        await backends.log(global_log.set_status(xid, global_log.ROLLED_BACK))
        return ""
    detail = "; ".join(c.describe() for c in found)
    await backends.log(global_log.set_status(xid, global_log.NEEDS_ATTENTION, detail[:60000]))
    for p in participants:
        await backends.on_data_source(p.data_source, global_lock.release(xid))
    return detail


async def finish_clean_up(backends: Backends, xid: str, participants: Sequence[Participant]) -> None:
    """Remove a finished transaction's undo rows, locks and log row now (recovery's way)."""
    await clean_up(backends.on_data_source, [Finished(backends.log_source, xid, tuple(participants))])


def _parse(sql: str) -> exp.Expression:
    import sqlglot

    return sqlglot.parse_one(sql, read="mysql")


def _locked_rows_statement(tree: exp.Expression) -> tuple[str, exp.Delete]:
    """A locking single-table SELECT as the DELETE whose before image selects its rows."""
    if not isinstance(tree, exp.Select) or tree.args.get("joins") or tree.args.get("group") \
            or not isinstance(tree.args.get("from_"), exp.From) \
            or not isinstance(tree.args["from_"].this, exp.Table):
        raise UnsupportedStatement("BASE record_lock isolation can lock the rows of a single-table "
                                   "SELECT ... FOR UPDATE only; split the statement or use another isolation")
    table = tree.args["from_"].this
    delete = exp.Delete(this=table.copy())
    for arg in ("where", "order", "limit"):
        if tree.args.get(arg):
            delete.set(arg, tree.args[arg].copy())
    return table.name, delete


def _most_telling(failures: list[BaseException]) -> BaseException:
    """The failure to report: a server's or the snapshot's own error before a lost connection."""
    for kind in (BaseTxnError, SnapshotError):
        for f in failures:
            if isinstance(f, kind):
                return f
    return next((f for f in failures if error_code(f) is not None), failures[0])
