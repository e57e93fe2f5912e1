"""Shadow traffic and read mirroring in a client session (rules: shadow/; mirror: dbmesh/mirror.py).

Only sessions on a database with a ``shadow`` or ``mirror`` section come here; the plain
pass-through path of every other database is untouched. On such a database a statement is
parsed only when it may be shadow traffic: it carries the hint, the session set
``dbmesh_shadow = 1``, or it names a shadowed table (a regular expression over the text)
and column rules exist, or it is DDL on a shadowed table.

- Pass-through: a shadow statement has its tables renamed to their shadows; when the shadow
  lives in the same data source it runs on the session's own backend connection (so
  transactions and prepared statements behave as usual); on a shadow data source it runs
  on a second connection that joins the session's transaction (COMMIT / ROLLBACK end both,
  production first).
- Sharded: the planner routes the statement as for production, then each route unit is
  moved to its shadow (actual table renamed, data source switched); the sharded executor
  runs the units in its transaction like any others.
- DDL on a shadowed table runs on production, then on every shadow, so they never drift.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlglot import exp

from shadow.decide import Decision, ShadowError, decide, hint_of, marked, parse_flag
from shadow.rewrite import DDL, prepared_sql, render, shadow_ddl, shadow_statement, shadow_unit_sql
from sharding import planner
from sharding.errors import ShardingError

from .. import errors, metrics
from ..backend.connection import BackendConnection, BackendError
from ..errors import ProxyError
from ..mirror import Job, Mirror, Tee
from ..protocol.binary import decode_params
from ..protocol.coldefs import logical_sink
from ..protocol.constants import Command
from ..protocol.packets import ErrInfo, MalformedPacket
from ..protocol.scanner import ResponseKind
from .sharded import parse
from .statement import Statement, classify, leading_keyword

if TYPE_CHECKING:
    from shadow.rules import ShadowRules

    from ..backend.pool import Pool
    from ..config import Config, LogicalDatabaseConfig
    from .session import ClientStatement, Session

log = logging.getLogger("dbmesh.shadow")

ER_SHADOW = 1235  # ER_NOT_SUPPORTED_YET, as for sharding refusals

_ROUTABLE = {b"SELECT", b"INSERT", b"REPLACE", b"UPDATE", b"DELETE", b"WITH", b"CREATE", b"ALTER", b"DROP",
             b"TRUNCATE", b"RENAME"}
_DDL_WORDS = {b"CREATE", b"ALTER", b"DROP", b"RENAME"}
# Statements a shadow session may still run (on production): they read metadata or end
# transactions. Anything else marked shadow that cannot be routed is refused.
_HARMLESS = {b"SHOW", b"DESCRIBE", b"DESC", b"EXPLAIN", b"SET", b"USE", b"BEGIN", b"START", b"COMMIT",
             b"ROLLBACK", b"SAVEPOINT", b"RELEASE", b"DO", b"HELP", b"UNLOCK", b"CHECKSUM", b"ANALYZE", b"CHECK"}
_TXN_WORDS = {b"BEGIN", b"START", b"COMMIT", b"ROLLBACK"}
_START_TRANSACTION = re.compile(rb"\s*START\s+TRANSACTION\b", re.I)
_ROLLBACK_TO = re.compile(rb"\s*ROLLBACK\s+(?:WORK\s+)?TO\b", re.I)

_CURSOR_FLAGS = 0x0F  # COM_STMT_EXECUTE flags asking for a cursor

_PREPARED_DDL = ("DDL on a table with a shadow cannot be a prepared statement; send it as text, so that dbmesh "
                 "applies it to the shadows too")

_ENGAGED: dict[int, frozenset[str]] = {}


def engaged_databases(config: Config) -> frozenset[str]:
    """Names of the logical databases with shadow or mirror rules (computed once per config)."""
    found = _ENGAGED.get(id(config))
    if found is None:
        found = _ENGAGED[id(config)] = frozenset(
            name for name, db in config.databases.items() if db.shadow is not None or db.mirror is not None)
    return found


def refused(database: str | None, exc: ShadowError | str) -> ProxyError:
    metrics.SHADOW_REFUSED.labels(database or "").inc()
    return ProxyError(ER_SHADOW, "42000", f"dbmesh shadow: {exc}")


class ShadowSession:
    """A session's shadow state: the dbmesh_shadow setting and the connection to a shadow
    data source (pass-through databases)."""

    def __init__(self, session: Session):
        self.session = session
        self.databases = engaged_databases(session.config)
        self.flag = False
        self.conn: BackendConnection | None = None
        self.pool: Pool | None = None
        self.conn_ds: str | None = None
        self._prepared: dict[int, tuple[bytes, exp.Expression | None]] = {}

    # -- session lifecycle ---------------------------------------------------------------

    def reset(self) -> None:
        self.flag = False
        self._prepared.clear()
        self._release(force=True)

    def close(self) -> None:
        self._release(force=True)

    def set_flag(self, statement: str) -> None:
        """SET dbmesh_shadow = 1 | 0: every statement of the session is shadow traffic (or not)."""
        s = self.session
        try:
            flag = parse_flag(statement.split("=", 1)[1])
        except ShadowError as exc:
            raise ProxyError(1231, "42000", str(exc)) from exc
        ldb = self._database()
        if flag and (ldb is None or ldb.shadow is None):
            raise self._no_rules("SET dbmesh_shadow = 1")
        self.flag = flag
        s.send_ok()

    def _no_rules(self, what: str) -> ProxyError:
        database = self.session.database
        where = f"database '{database}' has no shadow rules" if database else "no database is selected"
        return refused(database, f"{what} asks for shadow traffic, but {where}: it would run on production "
                                 "tables. Add a shadow section to the database's configuration, or drop the mark")

    def check_unmarked(self, sql: bytes | str) -> None:
        """On a database without shadow rules, a statement marked as shadow traffic (by the
        session setting or its hint) is refused: running it on production would write or
        read production data the test meant to keep away from."""
        if self.flag:
            raise self._no_rules("the session's dbmesh_shadow = 1")
        try:
            hint = hint_of(sql)
        except ShadowError as exc:
            raise refused(self.session.database, exc) from exc
        if hint:
            raise self._no_rules("the /* dbmesh:shadow */ hint")

    def _rules(self, sql: bytes | str) -> tuple[LogicalDatabaseConfig | None, ShadowRules | None]:
        """The session's database and its shadow rules; without rules, a statement marked as
        shadow traffic is refused here."""
        ldb = self._database()
        rules = ldb.shadow if ldb is not None else None
        if rules is None:
            self.check_unmarked(sql)
        return ldb, rules

    def _database(self) -> LogicalDatabaseConfig | None:
        s = self.session
        return s.config.databases.get(s.database) if s.database else None

    def _own(self, ldb: LogicalDatabaseConfig) -> tuple[str, ...]:
        """Database qualifiers that mean this database in a pass-through statement."""
        return (ldb.name, self.session.config.data_source_for(ldb.name).database)

    def _count(self, ldb: LogicalDatabaseConfig, decision: Decision) -> None:
        metrics.SHADOW_STATEMENTS.labels(ldb.name, decision.reason or "rule").inc()

    # -- pass-through: text protocol ----------------------------------------------------------

    async def com_query(self, payload: bytes, statement: Statement) -> bool:
        """Serve a COM_QUERY on a pass-through database with shadow or mirror rules; False
        when the session's ordinary path should serve it unchanged."""
        s = self.session
        sql = payload[1:]
        ldb, rules = self._rules(sql)
        if rules is None:
            return await self._maybe_mirror(payload, statement, ldb)
        keyword, _ = leading_keyword(sql)
        if self.conn is not None and keyword in _TXN_WORDS:
            if keyword != b"START" or _START_TRANSACTION.match(sql):
                await self._transaction_control(payload, keyword)
                return True
        if statement.session_set:
            return False
        try:
            mark = marked(sql, self.flag)
        except ShadowError as exc:
            raise refused(s.database, exc) from exc
        if keyword not in _ROUTABLE:
            if mark is not None and mark.shadow and keyword not in _HARMLESS:
                raise refused(s.database, f"{keyword.decode() or 'this statement'} cannot be routed to shadow "
                                          "tables; run it without the shadow mark")
            return await self._maybe_mirror(payload, statement, ldb)
        if mark is None and not rules.needs_parse(sql, keyword.decode()):
            return await self._maybe_mirror(payload, statement, ldb)  # production, no parse needed
        if mark is not None and not mark.shadow and keyword not in _DDL_WORDS:
            return await self._maybe_mirror(payload, statement, ldb)
        text = sql.decode("utf-8", "surrogateescape")
        try:
            tree = planner.parse_statement(text)
        except Exception as exc:  # noqa: BLE001 - sqlglot raises several kinds
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if mark is not None and mark.shadow:
                raise ProxyError(1064, "42000", "You have an error in your SQL syntax (dbmesh could not parse it "
                                                f"to route it to shadow tables): {reason}") from exc
            # Neither the column rules nor a schema change can be applied blind.
            raise refused(s.database, "dbmesh could not parse this statement, which names a table with a shadow, "
                                      f"to apply the shadow rules ({reason})") from exc
        if tree is None:
            return False
        try:
            if isinstance(tree, (exp.Block, exp.Command)):
                self._check_unroutable(tree, mark, rules, ldb, keyword)
                return await self._maybe_mirror(payload, statement, ldb)
            decision = mark if mark is not None else decide(tree, rules, self._own(ldb))
            if decision.shadow:
                return await self._run_shadow(payload, text, statement, tree, ldb, decision)
            if isinstance(tree, DDL):
                return await self._production_ddl(payload, tree, ldb)
        except ShadowError as exc:
            raise refused(s.database, exc) from exc
        return await self._maybe_mirror(payload, statement, ldb)

    def _check_unroutable(self, tree: exp.Expression, mark: Decision | None, rules, ldb: LogicalDatabaseConfig,
                          keyword: bytes) -> None:
        """Several statements in one text, or syntax sqlglot does not parse (a Command): they
        run on production as they are, unless that could send shadow rows there or leave a
        shadow behind a schema change; then they are refused."""
        if mark is not None and mark.shadow:
            raise ShadowError("a shadow statement must be one statement dbmesh can parse; send the statements one "
                              "by one")
        parts = tree.expressions if isinstance(tree, exp.Block) else [tree]
        for part in parts:
            if isinstance(part, exp.Command) or isinstance(part, DDL):
                if keyword in _DDL_WORDS or isinstance(part, DDL) or part.name.upper() in ("RENAME", "ALTER"):
                    raise ShadowError("dbmesh cannot apply this schema change to the shadows of the tables it "
                                      "names (several statements in one text, or syntax it does not parse); run "
                                      "it on the backends for production and shadows alike, or send it alone")
                continue
            if decide(part, rules, self._own(ldb)).shadow:
                raise ShadowError("several statements in one text, and one of them is shadow traffic; send the "
                                  "statements one by one")

    async def _run_shadow(self, payload: bytes, text: str, statement: Statement, tree: exp.Expression,
                          ldb: LogicalDatabaseConfig, decision: Decision) -> bool:
        rules = ldb.shadow
        ds = ldb.data_source
        if isinstance(tree, DDL):
            units = shadow_ddl(tree, rules, ds, self._own(ldb), replace_stale=False)
            if not units:
                raise ShadowError("no table of this DDL has a shadow")
            self._count(ldb, decision)
            failure = await self._run_units(units)
            if failure:
                raise ProxyError(failure.code, failure.sqlstate, failure.message)
            self.session.send_ok()
            return True
        found = shadow_statement(tree, rules, ds, self._own(ldb), keep_text=True)
        if found is None:
            return False  # a read of tables without shadows: production serves it
        self._count(ldb, decision)
        target, renamed = found
        sql = render(renamed) if renamed is not None else text
        shadow_payload = bytes((Command.QUERY,)) + sql.encode("utf-8", "surrogateescape")
        if target == ds:
            with self._logical_names(target):
                await self.session.relay_statement(shadow_payload, statement)
        else:
            if statement.pin_reason:
                raise ShadowError(f"{statement.pin_reason} in a shadow statement is not supported when the "
                                  f"shadow lives on another data source ('{target}')")
            await self._relay_on_shadow_source(target, shadow_payload)
        return True

    @contextmanager
    def _logical_names(self, target: str) -> Iterator[None]:
        """While a shadow result of ``target`` is relayed, its column definitions name the
        table the client asked for, not the shadow (the sharded path does the same)."""
        s = self.session
        sink = logical_sink(s.writer, s.config, s.database, target)
        if sink is s.writer:
            yield  # the shadow has production's names: nothing to rewrite
            return
        writer, s.writer = s.writer, sink
        try:
            yield
        finally:
            s.writer = writer

    # -- pass-through: a shadow data source -----------------------------------------------------

    async def _shadow_connection(self, target: str) -> BackendConnection:
        s = self.session
        if self.conn is not None and self.conn_ds != target:
            self._release(force=True)
        if self.conn is None:
            pool = s.server.pools[target]
            self.conn = await pool.acquire(s.caps_key)
            self.pool, self.conn_ds = pool, target
        conn = self.conn
        try:
            await s.sync_state(conn, s.config.data_sources[target].database)
            if s.held is not None and s.held.in_transaction and not conn.in_transaction:
                await conn.query("START TRANSACTION")  # join the session's production transaction
        except (ConnectionError, OSError) as exc:
            raise self._lost(exc) from exc
        except BaseException:
            self._release(force=True)
            raise
        return conn

    def _lost(self, exc: Exception) -> ProxyError:
        """The shadow connection failed mid-command: drop it; the error for the client."""
        conn, target = self.conn, self.conn_ds
        conn.broken = True
        self._release(force=True)
        log.warning("session %d: shadow data source %s failed: %s", self.session.connection_id, target, exc)
        return errors.backend_lost(target, conn.address)

    async def _relay_on_shadow_source(self, target: str, payload: bytes) -> None:
        conn = await self._shadow_connection(target)
        try:
            with self._logical_names(target):
                await conn.relay(payload, ResponseKind.RESULT, self.session.writer)
        except (ConnectionError, OSError, MalformedPacket) as exc:
            raise self._lost(exc) from exc
        self._release(force=False)

    def _release(self, force: bool) -> None:
        """Give the shadow connection back unless it holds the session's transaction; a
        connection still inside a transaction is closed by the pool (its work rolls back)."""
        conn, pool = self.conn, self.pool
        if conn is None or pool is None:
            return
        if not force and conn.in_transaction and not conn.broken:
            return
        self.conn = self.pool = self.conn_ds = None
        pool.release(conn)

    async def _transaction_control(self, payload: bytes, keyword: bytes) -> None:
        """COMMIT / ROLLBACK (or BEGIN, which commits) with a shadow connection in the
        transaction: production first, then the shadow, like a LOCAL transaction."""
        s = self.session
        scanner = await s.relay(payload, ResponseKind.RESULT)
        if keyword == b"ROLLBACK" and _ROLLBACK_TO.match(payload[1:]):
            return  # savepoints live on the production connection only
        conn = self.conn
        ok = scanner is not None and scanner.error is None
        verb = "ROLLBACK" if keyword == b"ROLLBACK" or not ok else "COMMIT"
        if conn is not None and conn.in_transaction:
            try:
                await conn.query(verb)
            except (BackendError, ConnectionError, OSError) as exc:
                conn.broken = True
                log.warning("session %d: %s on shadow data source %s failed: %s", s.connection_id, verb,
                            self.conn_ds, exc)
        self._release(force=True)

    # -- DDL ----------------------------------------------------------------------------------

    async def _production_ddl(self, payload: bytes, tree: exp.Expression, ldb: LogicalDatabaseConfig) -> bool:
        """DDL on a shadowed table: production, then the shadows; the client gets production's
        answer, or an error naming the shadow that could not follow."""
        units = shadow_ddl(tree, ldb.shadow, ldb.data_source, self._own(ldb))
        if not units:
            return False
        s = self.session
        conn = await s.borrow()
        try:
            payloads, scanner = await conn.collect(payload, ResponseKind.RESULT)
        except (ConnectionError, OSError, MalformedPacket) as exc:
            s._backend_failed(conn, exc)
            return True
        s._after_response(conn, scanner)
        if scanner.error is not None:
            s.send(*payloads)
            return True
        failure = await self._run_units(units)
        if failure is not None:
            raise self._not_followed(ldb, failure.code, failure.message)
        metrics.SHADOW_DDL.labels(ldb.name, "applied").inc()
        s.send(*payloads)
        return True

    async def _run_units(self, units: list[tuple[str, str]]):
        """Run (data source, SQL) units in order on pooled connections; the first error or None."""
        s = self.session
        for ds, sql in units:
            pool = s.server.pools[ds]
            try:
                conn = await pool.acquire(s.caps_key)
            except ProxyError as exc:  # the shadow data source cannot be reached
                return ErrInfo(exc.code, exc.sqlstate, exc.message)
            try:
                await s.sync_state(conn, s.config.data_sources[ds].database)
                await conn.query(sql)
            except BackendError as exc:
                return exc.err
            except (ConnectionError, OSError) as exc:
                conn.broken = True
                raise errors.backend_lost(ds, conn.address) from exc
            finally:
                pool.release(conn)
        return None

    # -- mirroring -----------------------------------------------------------------------------

    def _mirror_for(self, ldb: LogicalDatabaseConfig | None) -> Mirror | None:
        config = ldb.mirror if ldb is not None else None
        if config is None:
            return None
        if config.share < 1.0 and random.random() >= config.share:
            return None
        return Mirror.of(self.session.server, ldb.name, config)

    def _mirror_read(self, ldb: LogicalDatabaseConfig | None, read: bool) -> Mirror | None:
        """The mirror of a production read outside a transaction, if the share picks it."""
        s = self.session
        if not read or not s.autocommit or (s.held is not None and s.held.in_transaction) \
                or s.sharded.in_transaction:
            return None
        return self._mirror_for(ldb)

    async def _maybe_mirror(self, payload: bytes, statement: Statement, ldb: LogicalDatabaseConfig | None) -> bool:
        """A production read outside a transaction, possibly mirrored; False: not mirrored,
        the ordinary path serves it."""
        mirror = self._mirror_read(ldb, statement.read_only)
        if mirror is None:
            return False
        await self._teed(mirror, lambda: self.session.relay_statement(payload, statement), payload[1:])
        return True

    async def _maybe_mirror_execute(self, stmt: ClientStatement, payload: bytes,
                                    ldb: LogicalDatabaseConfig | None) -> bool:
        """A pass-through prepared read outside a transaction, possibly mirrored; False: not
        mirrored, the ordinary path executes it."""
        if payload[5] & _CURSOR_FLAGS or ldb is None or ldb.mirror is None:
            return False  # rows fetched through a cursor come later, in pieces
        mirror = self._mirror_read(ldb, classify(stmt.sql).read_only)
        if mirror is None:
            return False
        job = self._execute_job(stmt, payload, stmt.long_data)  # before the execute consumes the long data
        await self._teed(mirror, lambda: self.session.execute_prepared(stmt, payload), stmt.sql, **job)
        return True

    def _execute_job(self, stmt: ClientStatement, payload: bytes, long_data: dict[int, bytearray]) -> dict:
        """What the mirror needs to execute a prepared read as the client did."""
        packet = self.session._execute_packet(payload, stmt, 0)
        return {"execute": b"\x00" + packet[6:],  # no cursor on the mirror
                "long_data": tuple((param, bytes(data)) for param, data in long_data.items())}

    async def _teed(self, mirror: Mirror, serve: Callable[[], Awaitable[object]], sql: bytes | str, **job) -> None:
        """Serve a production read (``serve``) while keeping a copy of the response, then
        queue it for the mirror; the client never waits for the mirror."""
        s = self.session
        tee = Tee(s.writer, mirror.config.max_result_bytes)
        writer, s.writer = s.writer, tee
        try:
            await serve()
        finally:
            s.writer = writer
        captured = tee.captured()
        if captured is None:
            mirror.too_large()
            return
        if isinstance(sql, bytes):
            sql = sql.decode("utf-8", "surrogateescape")
        mirror.submit(Job(sql, s.vars_signature, captured, s.deprecate_eof, **job))

    def mirror_for_plan(self, ldb: LogicalDatabaseConfig, plan: planner.Plan, shadow: bool) -> Mirror | None:
        """The mirror of a sharded production read outside a transaction, if the share picks it."""
        return self._mirror_read(ldb, plan.kind == "select" and not shadow and not plan.locking)

    async def mirrored_execute(self, mirror: Mirror, stmt: ClientStatement, payload: bytes,
                               long_data: dict[int, bytearray], serve: Callable[[], Awaitable[object]]) -> None:
        """A sharded prepared read served by ``serve`` and mirrored."""
        await self._teed(mirror, serve, stmt.sql, **self._execute_job(stmt, payload, long_data))

    # -- pass-through: prepared statements ---------------------------------------------------------

    async def stmt_execute(self, stmt: ClientStatement, payload: bytes) -> bool:
        """COM_STMT_EXECUTE on a pass-through database with shadow or mirror rules: a shadow
        execute is prepared as its shadow statement (the same parameters) and relayed raw; a
        production read may be mirrored. False when the ordinary path should execute it."""
        ldb, rules = self._rules(stmt.sql)
        if rules is not None and await self._shadow_execute(stmt, payload, ldb, rules):
            return True
        return await self._maybe_mirror_execute(stmt, payload, ldb)

    async def _shadow_execute(self, stmt: ClientStatement, payload: bytes, ldb: LogicalDatabaseConfig,
                              rules: ShadowRules) -> bool:
        """Execute ``stmt`` as shadow traffic if it is; False: it is production traffic."""
        s = self.session
        try:
            mark = marked(stmt.sql, self.flag)
        except ShadowError as exc:
            raise refused(s.database, exc) from exc
        if mark is not None and not mark.shadow:
            return False
        if mark is None and not rules.needs_parse(stmt.sql, leading_keyword(stmt.sql)[0].decode()):
            return False
        cached = self._prepared.get(stmt.id)
        if cached is None or cached[0] is not stmt.sql:
            try:
                tree = planner.parse_statement(stmt.sql.decode("utf-8", "surrogateescape"))
            except Exception:  # noqa: BLE001 - sqlglot raises several kinds
                tree = None
            if len(self._prepared) >= 256:  # forget closed statements
                self._prepared = {k: v for k, v in self._prepared.items() if k in s.statements}
            cached = self._prepared[stmt.id] = (stmt.sql, tree)
        tree = cached[1]
        if tree is None:
            if mark is not None:
                raise refused(s.database, "dbmesh could not parse this prepared statement to route it to shadow "
                                          "tables")
            return False
        try:
            if isinstance(tree, (*DDL, exp.Block, exp.Command)):
                raise ShadowError(_PREPARED_DDL)
            if mark is None:
                values, stmt.param_types = decode_params(payload, stmt.num_params, stmt.param_types, stmt.long_data)
                try:
                    bound = planner.bind_parameters(tree, values)
                except ShardingError as exc:
                    raise ShadowError(str(exc)) from exc
                mark = decide(bound, rules, self._own(ldb))
                if not mark.shadow:
                    return False
            found = shadow_statement(tree, rules, ldb.data_source, self._own(ldb))
            if found is None:
                return False
            self._count(ldb, mark)
            target, renamed = found
            sql = prepared_sql(renamed if renamed is not None else tree)
        except ShadowError as exc:
            raise refused(s.database, exc) from exc
        await self._execute_shadow(stmt, payload, target, ldb.data_source, sql)
        return True

    async def _execute_shadow(self, stmt: ClientStatement, payload: bytes, target: str, production: str,
                              sql: str) -> None:
        from .session import ClientStatement

        s = self.session
        shadow_stmt = ClientStatement(stmt.id, sql.encode("utf-8", "surrogateescape"), stmt.num_params,
                                      stmt.num_columns)
        shadow_stmt.param_types = stmt.param_types
        shadow_stmt.long_data = stmt.long_data  # sent, then cleared, with the shadow's execute
        on_session = target == production
        conn = await (s.borrow() if on_session else self._shadow_connection(target))
        give_back = (lambda: s._return_held(force=False)) if on_session else (lambda: self._release(force=False))
        try:
            # No server-side cursor: the rows come at once.
            with self._logical_names(target):
                scanner = await s.relay_execute(conn, shadow_stmt, payload, cursor=False)
        except (ConnectionError, OSError, MalformedPacket) as exc:
            if on_session:
                s._backend_failed(conn, exc)
                return
            raise self._lost(exc) from exc
        except BaseException:
            give_back()
            raise
        stmt.param_types = shadow_stmt.param_types
        if scanner is not None and on_session:
            s._after_response(conn, scanner)
        else:
            give_back()

    # -- sharded databases ---------------------------------------------------------------------------

    async def sharded_query(self, sql: str) -> None:
        """Plan and run a statement on a sharded database with shadow or mirror rules (called
        by ShardedExecutor.query after transaction control and metadata statements)."""
        s = self.session
        executor = s.sharded
        ldb, rules = self._rules(sql)
        try:
            mark = marked(sql, self.flag) if rules is not None else None
        except ShadowError as exc:
            raise refused(s.database, exc) from exc
        shadow = False
        if rules is not None and (mark is not None or rules.needs_parse(
                sql, leading_keyword(sql.encode("utf-8", "surrogateescape"))[0].decode())):
            tree = parse(sql)
            try:
                decision = mark if mark is not None else decide(tree, rules, (ldb.name,))
                if decision.shadow:
                    self._count(ldb, decision)
                    plan = self._shadow_plan(executor.plan(tree, sql), tree, ldb)
                    shadow = True
                elif isinstance(tree, DDL):
                    plan = executor.plan(tree, sql)
                    extra = self._shadow_ddl_units(plan, ldb)
                    if extra:
                        await self._sharded_ddl(plan, extra, ldb)
                        return
                else:
                    plan = executor.cached_plan(sql) or executor.plan(tree, sql)
            except ShadowError as exc:
                raise refused(s.database, exc) from exc
        else:
            plan = executor.cached_plan(sql) or executor.plan(parse(sql), sql)
        mirror = self.mirror_for_plan(ldb, plan, shadow)
        if mirror is None:
            await executor.execute(plan)
        else:
            await self._teed(mirror, lambda: executor.execute(plan), sql)

    def plan_prepared(self, bound: exp.Expression, sql: bytes) -> tuple[planner.Plan, Mirror | None]:
        """The plan of a prepared statement's execute on a sharded database (parameters bound),
        and the mirror that also runs it when it is a production read the share picks."""
        s = self.session
        executor = s.sharded
        ldb, rules = self._rules(sql)
        if rules is None:
            plan = executor.plan(bound, sql.decode("utf-8", "surrogateescape"), prepared=True)
            return plan, self.mirror_for_plan(ldb, plan, False)
        try:
            mark = marked(sql, self.flag)
            decision = mark if mark is not None else decide(bound, rules, (ldb.name,))
            plan = executor.plan(bound, sql.decode("utf-8", "surrogateescape"), prepared=True)
            if isinstance(bound, DDL) and (decision.shadow or self._shadow_ddl_units(plan, ldb)):
                raise ShadowError(_PREPARED_DDL)
            if decision.shadow:
                self._count(ldb, decision)
                plan = self._shadow_plan(plan, bound, ldb)
        except ShadowError as exc:
            raise refused(s.database, exc) from exc
        return plan, self.mirror_for_plan(ldb, plan, decision.shadow)

    def _shadow_plan(self, plan: planner.Plan, tree: exp.Expression, ldb: LogicalDatabaseConfig) -> planner.Plan:
        """Every route unit moved to its shadow."""
        rules = ldb.shadow
        units = []
        if isinstance(tree, DDL):
            for unit in plan.units:
                for ds, sql in shadow_ddl(planner.parse_statement(unit.sql), rules, unit.data_source, (),
                                          replace_stale=False):
                    units.append(planner.RouteUnit(ds, sql))
            if not units:
                raise ShadowError("no table of this DDL has a shadow")
            return dataclasses.replace(plan, units=units)
        for unit in plan.units:
            found = shadow_unit_sql(unit.data_source, unit.sql, rules)
            units.append(planner.RouteUnit(*found) if found is not None else unit)
        return dataclasses.replace(plan, units=units)

    def _shadow_ddl_units(self, plan: planner.Plan, ldb: LogicalDatabaseConfig) -> list[planner.RouteUnit]:
        """The units that apply a production DDL plan to the shadows of its actual tables."""
        return [planner.RouteUnit(ds, sql) for unit in plan.units
                for ds, sql in shadow_ddl(planner.parse_statement(unit.sql), ldb.shadow, unit.data_source, ())]

    async def _sharded_ddl(self, plan: planner.Plan, extra: list[planner.RouteUnit],
                           ldb: LogicalDatabaseConfig) -> None:
        """DDL on every actual table, then on every shadow; the client learns when a shadow
        could not follow."""
        executor = self.session.sharded
        try:
            await executor._run_all(plan.units)
        finally:
            executor.release()
        try:
            await executor._run_all(extra)
        except BackendError as exc:
            raise self._not_followed(ldb, exc.err.code, exc.err.message) from exc
        except ProxyError as exc:  # a shadow data source cannot be reached
            raise self._not_followed(ldb, exc.code, exc.message) from exc
        finally:
            executor.release()
        metrics.SHADOW_DDL.labels(ldb.name, "applied").inc()
        self.session.send_ok()

    @staticmethod
    def _not_followed(ldb: LogicalDatabaseConfig, code: int, message: str) -> ProxyError:
        """Production took a DDL that a shadow did not: the client must know they now differ."""
        metrics.SHADOW_DDL.labels(ldb.name, "failed").inc()
        return ProxyError(errors.ER_UNKNOWN_ERROR, "HY000",
                          f"dbmesh shadow: the DDL ran on production but not on every shadow: ({code}) {message}; "
                          "the shadows now differ from production: fix them, or run `dbmesh shadow provision`")

    # -- PREVIEW -------------------------------------------------------------------------------------

    def preview(self, sql: str) -> list[tuple[str, str]]:
        """PREVIEW's route units (data source, SQL), shadow routing included."""
        s = self.session
        ldb, rules = self._rules(sql)
        if ldb is None:
            return [(s.config.data_source_for(None).name, sql)]
        try:
            mark = marked(sql, self.flag) if rules is not None else None
            if ldb.sharding is not None:
                tree = parse(sql)
                plan = s.sharded.plan(tree, sql)
                if rules is None:
                    return [(u.data_source, u.sql) for u in plan.units]
                decision = mark if mark is not None else decide(tree, rules, (ldb.name,))
                if decision.shadow:
                    plan = self._shadow_plan(plan, tree, ldb)
                elif isinstance(tree, DDL):
                    plan = dataclasses.replace(plan, units=list(plan.units) + self._shadow_ddl_units(plan, ldb))
                return [(u.data_source, u.sql) for u in plan.units]
            ds = ldb.data_source
            if rules is None:
                return [(ds, sql)]
            tree = parse(sql)
            decision = mark if mark is not None else decide(tree, rules, self._own(ldb))
            if not decision.shadow:
                if isinstance(tree, DDL):
                    return [(ds, sql)] + shadow_ddl(tree, rules, ds, self._own(ldb))
                return [(ds, sql)]
            if isinstance(tree, DDL):
                return shadow_ddl(tree, rules, ds, self._own(ldb), replace_stale=False)
            found = shadow_statement(tree, rules, ds, self._own(ldb), keep_text=True)
            if found is None:
                return [(ds, sql)]
            return [(found[0], render(found[1]) if found[1] is not None else sql)]
        except ShadowError as exc:
            raise refused(s.database, exc) from exc
