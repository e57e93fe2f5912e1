"""Statements on a sharded logical database: plan, run on the route units, merge.

One unit: the rewritten SQL is relayed raw, like pass-through. Several units: rows are
fetched from every unit concurrently and merged (sharding.merge) into one result set; a
merge that only chooses and orders rows passes each row on as its shard sent it, decoding
only the columns it compares; writes add up their affected rows. Inside an explicit transaction the session
keeps one backend connection per data source it touched and commits or rolls back all of
them together (LOCAL mode: each branch commits in turn).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError

from sharding import planner
from sharding.errors import ShardingError
from sharding.merge import Aggregate, MergePlan, OrderItem, merge, mysql_sort_key, pick, picks_whole_rows
from sharding.rules import ShardingRuleSet
from txn import global_lock, global_log, undo_log, xa

from .. import errors
from ..backend.connection import BackendConnection, BackendError, QueryResult
from ..errors import ProxyError
from ..protocol.binary import text_form_decoder
from ..protocol.coldefs import logical_sink, renamer_for
from ..protocol.constants import COLLATION_BINARY, Command, FieldFlag, FieldType
from ..protocol.packets import Column, Field, column_definition, eof_packet, lenenc_int, ok_packet
from ..protocol.resultset import ResultRows, result_rows
from ..protocol.scanner import ResponseKind, ResponseScanner
from ..protocol.textvalues import RawTime, collation_of, encode_row, row_decoder
from . import deadlocks
from .diagnostics import Diagnostics
from .transactions import GlobalTransaction

if TYPE_CHECKING:
    from ..backend.pool import Pool
    from .session import Session

log = logging.getLogger("dbmesh.sharded")

ER_SHARDING = 1235  # ER_NOT_SUPPORTED_YET: drivers treat it as a statement error
_DML_KINDS = ("insert", "update", "delete")
# The transaction coordinator's own tables on the data sources: not the application's.
_BOOKKEEPING_TABLES = frozenset({xa.LOG_TABLE, undo_log.UNDO_LOG_TABLE, global_lock.GLOBAL_LOCK_TABLE,
                                 global_log.GLOBAL_TXN_TABLE})
ER_LOCK_WAIT_TIMEOUT = 1205

_TXN_START = re.compile(r"^\s*(BEGIN(\s+WORK)?|START\s+TRANSACTION\b.*)\s*;?\s*$", re.I | re.S)
_TXN_COMMIT = re.compile(r"^\s*COMMIT(\s+WORK)?\s*;?\s*$", re.I)
_TXN_ROLLBACK = re.compile(r"^\s*ROLLBACK(\s+WORK)?\s*;?\s*$", re.I)
_SHOW_TABLES = re.compile(r"^\s*SHOW\s+(FULL\s+)?TABLES\s*(?:(?:FROM|IN)\s+`?(\w+)`?)?\s*(LIKE\s+'([^']*)')?\s*;?\s*$",
                          re.I)
_SHOW_RULES = re.compile(r"^\s*SHOW\s+SHARDING\s+TABLE\s+RULES?\s*;?\s*$", re.I)
# The first words the regexes of query() can match: other statements (SELECT, INSERT, ...,
# almost all of them) skip those regexes after one cheap match.
_FIRST_WORD = re.compile(r"\s*([A-Za-z]+)")
_CONTROL_WORDS = frozenset(("BEGIN", "START", "COMMIT", "ROLLBACK", "SHOW", "DESCRIBE", "DESC", "EXPLAIN"))
# DESCRIBE t / SHOW CREATE TABLE t / SHOW [FULL] COLUMNS|INDEX FROM t, the table optionally
# qualified with the logical database: ``prefix`` is kept, ``table`` names the logical table.
_TABLE_REF = r"(?:`?(?P<db>\w+)`?\.)?`?(?P<table>\w+)`?\s*;?\s*$"
_ON_TABLE = re.compile(
    r"^\s*(?P<prefix>(?:DESCRIBE|DESC|EXPLAIN)\s+|SHOW\s+CREATE\s+TABLE\s+"
    r"|SHOW\s+(?:FULL\s+)?(?:COLUMNS|FIELDS|INDEX|INDEXES|KEYS)\s+(?:FROM|IN)\s+)" + _TABLE_REF, re.I)


class BinaryResult:
    """Column definitions and row encoder of a prepared statement's binary result."""

    def __init__(self, field_packets: list[bytes], encode_row: Callable[[tuple], bytes]):
        self.field_packets = field_packets
        self.encode_row = encode_row


# A comment left open runs to the end (\Z) and is not a hint; without that, each of many
# open ones would start a scan to the end.
_HINT_COMMENT = re.compile(r"/\*\+?\s*dbmesh:(.*?)(\*/|\Z)", re.S)
_HINT = re.compile(r"\b(db|table)_hint\s*=\s*('[^']*'|\"[^\"]*\"|[\w.-]+)", re.I)


def _hint_value(text: str) -> Any:
    """A hint as written: quoted text stays text, digits become a number."""
    if text[:1] in ("'", '"'):
        return text[1:-1]
    return int(text) if text.lstrip("-").isdigit() else text


def sharding_error(exc: ShardingError | str) -> ProxyError:
    return ProxyError(ER_SHARDING, "42000", f"dbmesh sharding: {exc}")


def parse(sql: str) -> exp.Expression:
    try:
        tree = planner.parse_statement(sql)
    except SqlglotError as exc:  # ParseError, or TokenError (e.g. a string left open)
        first = exc.errors[0] if isinstance(exc, ParseError) and exc.errors else {}
        near = first.get("highlight") or ""
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ProxyError(1064, "42000", "You have an error in your SQL syntax (dbmesh could not parse it "
                                        f"for sharding) near '{near}': {reason}") from exc
    if tree is None:
        raise ProxyError(1065, "42000", "Query was empty")
    return tree


class ShardedExecutor:
    """Runs a session's statements on a sharded logical database."""

    def __init__(self, session: Session):
        self.session = session
        self.in_transaction = False
        self.txn = GlobalTransaction(session)
        self.conns: dict[str, tuple[BackendConnection, Pool]] = {}
        # The statement running now is a plain read that replicas may serve.
        self.reading = False
        self.diagnostics = Diagnostics()  # of the last statement: SHOW WARNINGS / SHOW ERRORS
        # The deadlock detector interrupted the statement running now (frontend/deadlocks.py).
        self.deadlock_victim = False

    @property
    def rules(self) -> ShardingRuleSet:
        return self.session.config.databases[self.session.database].sharding

    def replica_may_serve(self, plan: planner.Plan) -> bool:
        """A plain read outside a transaction: a healthy replica may serve it, as read/write
        splitting allows (connection() then borrows from the replica's pool)."""
        return plan.kind == "select" and not self.in_transaction and not plan.locking and not plan.force_primary

    # -- backend connections ------------------------------------------------------------

    async def connection(self, data_source: str, replica_may_serve: bool = False) -> BackendConnection:
        """The statement's (or transaction's) connection to ``data_source``; borrowed from a
        replica's pool for a read that ``replica_may_serve`` (or self.reading) allows."""
        held = self.conns.get(data_source)
        if held is not None:
            return held[0]
        session = self.session
        pool = ((self._replica_pool(data_source) if self.reading or replica_may_serve else None)
                or session.server.pools[data_source])
        conn = pool.acquire_idle(session.caps_key) or await pool.acquire(session.caps_key)
        self.conns[data_source] = (conn, pool)
        try:
            await session.sync_state(conn, session.config.data_sources[data_source].database)
            if self.in_transaction:
                await self.txn.enlist(conn, data_source)
        except (ConnectionError, OSError) as exc:
            conn.broken = True
            self.release(force=True)
            raise errors.backend_lost(data_source, conn.address) from exc
        return conn

    def _replica_pool(self, data_source: str) -> Pool | None:
        """A healthy replica's pool for a read on ``data_source``, when read/write splitting
        allows one (see read_split.py for the same rules on pass-through databases)."""
        session = self.session
        replicas = session.server.replica_sets.get(data_source)
        if replicas is None or session.route_setting == "primary":
            return None
        wrote = session.last_write_at.get(data_source)
        if (replicas.config.read_your_writes != "none" and wrote is not None
                and time.monotonic() - wrote < replicas.config.window_s):
            return None
        replica = replicas.choose()
        return replica.pool if replica is not None else None

    def release(self, force: bool = False) -> None:
        """Give back connections not needed any more (all of them when ``force``)."""
        if self.in_transaction and not force:
            return
        for conn, pool in self.conns.values():
            pool.release(conn)
        self.conns.clear()

    async def close(self) -> None:
        """Session end: roll back an open transaction and return everything."""
        await self.diagnostics.settle()
        if self.in_transaction:
            branches = {ds: conn for ds, (conn, _) in self.conns.items()}
            self.in_transaction = False
            try:
                await asyncio.wait_for(self.txn.finish(branches, commit=False), 5.0)
            except (ProxyError, BackendError, OSError, ConnectionError, TimeoutError):
                for conn in branches.values():
                    conn.broken = True
        self.release(force=True)

    # -- statements ---------------------------------------------------------------------

    async def query(self, sql: str) -> None:
        session = self.session
        first = _FIRST_WORD.match(sql)
        control = first is not None and first.group(1).upper() in _CONTROL_WORDS
        if control and _TXN_START.match(sql):
            await self._commit_or_rollback("COMMIT")  # like MySQL: BEGIN commits an open transaction
            self.in_transaction = True
            self.txn.begin(sql.strip().rstrip(";"))
            session.send_ok()
            return
        if control and (_TXN_COMMIT.match(sql) or _TXN_ROLLBACK.match(sql)):
            await self._commit_or_rollback("COMMIT" if _TXN_COMMIT.match(sql) else "ROLLBACK")
            session.send_ok()
            return
        if not session.autocommit and not self.in_transaction:
            # autocommit=0: every statement runs in a transaction that COMMIT/ROLLBACK ends.
            self.in_transaction = True
            self.txn.begin()
        if control and _SHOW_RULES.match(sql):
            self._show_rules()
            return
        m = _SHOW_TABLES.match(sql) if control else None
        if m:
            await self._show_tables(full=bool(m.group(1)), like=m.group(4))
            return
        m = _ON_TABLE.match(sql) if control else None
        if m and (m.group("db") is None or m.group("db").lower() == session.database.lower()):
            await self._on_first_node(m.group("prefix"), m.group("table"))
            return
        if session.shadow_engaged(sql):
            await session.shadow.sharded_query(sql)  # shadow traffic / read mirroring: frontend/shadow.py
            return
        plan = self.cached_plan(sql) or self.plan(parse(sql), sql)
        await self.execute(plan)

    def cached_plan(self, sql: str) -> planner.Plan | None:
        """The plan from the shared plan cache, for statements that differ only in literals."""
        token = planner.ROUTING_HINTS.set(self.hints(""))
        try:
            return self.session.server.plan_cache.plan(sql, self.rules, self.session.database)
        except ShardingError as exc:
            raise sharding_error(exc) from exc
        finally:
            planner.ROUTING_HINTS.reset(token)

    def plan(self, tree: exp.Expression, sql: str | None = None, params: Sequence[Any] | None = None,
             prepared: bool = False) -> planner.Plan:
        """Plan with the routing hints of the statement text and of the session. ``params``:
        values of the tree's placeholders. A prepared statement's text (``prepared``) has
        `?` where the tree has values: it gives hints only, never the units' SQL."""
        token = planner.ROUTING_HINTS.set(self.hints(sql or ""))
        try:
            return planner.plan(tree, self.rules, self.session.database, params=params,
                                sql_text=None if prepared else sql)
        except ShardingError as exc:
            raise sharding_error(exc) from exc
        finally:
            planner.ROUTING_HINTS.reset(token)

    def hints(self, sql: str) -> planner.Hints:
        if not self.session.sharding_hints and "dbmesh:" not in sql:
            return planner.NO_HINTS  # the usual case, per statement
        found = dict(self.session.sharding_hints)
        if "dbmesh:" in sql:
            for comment, closing in _HINT_COMMENT.findall(sql):
                if not closing:
                    continue  # left open: no hint
                for kind, value in _HINT.findall(comment):
                    found[kind.lower()] = _hint_value(value)
        return planner.Hints(database=(found["db"],) if "db" in found else (),
                             table=(found["table"],) if "table" in found else ())

    def preview(self, sql: str) -> list[planner.RouteUnit]:
        return self.plan(parse(sql), sql).units

    async def execute(self, plan: planner.Plan, binary: BinaryResult | None = None) -> None:
        """Run a plan; ``binary`` answers a prepared statement's execute in the binary protocol."""
        self.reading = self.replica_may_serve(plan)
        try:
            if plan.locking and self.in_transaction and self.txn.base is not None:
                await self.txn.base_lock_rows([(u.data_source, u.sql) for u in plan.units])
            if len(plan.units) == 1 and not plan.write:
                await self._relay(plan.units[0])
            elif plan.write:
                await self._write(plan)
            else:
                await self._merged_select(plan, binary)
        except BackendError as exc:
            if self.deadlock_victim and exc.err.code == deadlocks.ER_QUERY_INTERRUPTED:
                sources = sorted(self.conns)
                await self._end_as_deadlock_victim()
                raise deadlocks.deadlock_error(sources) from exc
            if exc.err.code == ER_LOCK_WAIT_TIMEOUT and self.in_transaction and len(self.conns) > 1:
                # Neither server sees a deadlock across two data sources; say what it may be.
                log.warning("lock wait timeout in a transaction on data sources %s: possibly a deadlock "
                            "across shards (each server sees only its half); keep innodb_lock_wait_timeout "
                            "short or use BASE with record_lock", ", ".join(sorted(self.conns)))
            raise
        finally:
            self.reading = False
            self.deadlock_victim = False
            self.release()

    def sink(self, data_source: str) -> Any:
        """Where a result of ``data_source`` relayed raw goes: the client, with the logical
        names; in a transaction, through the deadlock detector's stand-in."""
        session = self.session
        sink = logical_sink(session.writer, session.config, session.database, data_source)
        return deadlocks.VictimAwareSink(sink, self) if self.in_transaction else sink

    async def relayed(self, conn: BackendConnection, scanner: ResponseScanner) -> None:
        """A response relayed raw has reached the client: keep its diagnostics, and if the
        deadlock detector interrupted it, roll the transaction back (the client got 1213)."""
        victim, self.deadlock_victim = self.deadlock_victim, False
        error = scanner.error
        if victim and error is not None and error.code == deadlocks.ER_QUERY_INTERRUPTED:
            answered = deadlocks.deadlock_error(sorted(self.conns))
            self.diagnostics.error(answered.code, answered.message)
            await self._end_as_deadlock_victim()
            return
        await self.diagnostics.after_relay(conn, scanner)

    async def _end_as_deadlock_victim(self) -> None:
        """As a server ends a deadlock's victim: the whole transaction rolled back."""
        self.deadlock_victim = False
        await self._commit_or_rollback("ROLLBACK")

    async def _relay(self, unit: planner.RouteUnit) -> None:
        session = self.session
        conn = await self.connection(unit.data_source)
        try:
            statement = bytes((Command.QUERY,)) + unit.sql.encode("utf-8", "surrogateescape")
            scanner = await conn.relay(statement, ResponseKind.RESULT, self.sink(unit.data_source))
        except (ConnectionError, OSError) as exc:
            conn.broken = True
            self.release(force=True)
            raise errors.backend_lost(unit.data_source, conn.address) from exc
        await self.relayed(conn, scanner)
        if scanner.status_seen and not self.in_transaction:
            session.autocommit = bool(scanner.status & 0x0002)

    async def _run_all(self, units: Sequence[planner.RouteUnit]) -> list[QueryResult]:
        """Run every unit; units of one data source run in turn on its connection, data
        sources run concurrently. Results come back in unit order."""
        by_source: dict[str, list[int]] = {}
        for i, unit in enumerate(units):
            by_source.setdefault(unit.data_source, []).append(i)
        for ds in by_source:
            await self.connection(ds)
        results: list[QueryResult | None] = [None] * len(units)

        async def run_source(ds: str, indexes: list[int]) -> None:
            conn = self.conns[ds][0]
            for i in indexes:
                results[i] = await conn.query(units[i].sql)
                if conn.warnings:
                    await self.diagnostics.read(conn)

        try:
            await asyncio.gather(*(run_source(ds, ix) for ds, ix in by_source.items()))
        except (ConnectionError, OSError) as exc:
            self.release(force=True)
            raise ProxyError(errors.ER_QUERY_ON_FOREIGN_DATA_SOURCE, errors.SQLSTATE_LINK_FAILURE,
                             f"Lost connection to a data source during a sharded statement: {exc}") from exc
        return results

    async def _write(self, plan: planner.Plan) -> None:
        results = await self._write_results(plan)
        now = time.monotonic()
        for unit in plan.units:
            self.session.last_write_at[unit.data_source] = now
        if plan.broadcast:
            affected = results[0].affected_rows
        else:
            affected = sum(r.affected_rows for r in results)
        last_id = plan.last_insert_id or next((r.last_insert_id for r in results if r.last_insert_id), 0)
        self.session.send_ok(affected_rows=affected, last_insert_id=last_id, warnings=self.diagnostics.count)

    async def _write_results(self, plan: planner.Plan) -> list[QueryResult]:
        """Run a write's units; in BASE mode with their undo images (see txn/base_coordinator.py)."""
        if plan.kind == "ddl":
            self.session.server.base.meta_cache.clear()
        units = [(u.data_source, u.sql) for u in plan.units]
        if self.in_transaction and self.txn.base is not None:
            if plan.kind not in _DML_KINDS:
                raise ProxyError(errors.ER_NOT_SUPPORTED_YET, "25000",
                                 f"a {plan.kind.upper()} statement cannot be undone by a BASE transaction; "
                                 "COMMIT or ROLLBACK first")
            return await self.txn.base_write(units)
        if (not self.in_transaction and plan.kind in _DML_KINDS and self.txn.mode == "BASE"
                and len({ds for ds, _ in units}) > 1):
            # One statement over several data sources is a global transaction of its own.
            self.in_transaction = True
            self.txn.begin()
            try:
                results = await self.txn.base_write(units)
            except BaseException:
                await self._commit_or_rollback("ROLLBACK")
                raise
            await self._commit_or_rollback("COMMIT")
            return results
        return await self._run_all(plan.units)

    async def _merged_select(self, plan: planner.Plan, binary: BinaryResult | None) -> None:
        results = await self.collect_all(plan.units, _query_rows)
        self.send_merged(plan, results, binary)

    async def collect_all(self, units: Sequence[planner.RouteUnit],
                          command: Callable[[BackendConnection, planner.RouteUnit], Awaitable[ResultRows]]
                          ) -> list[ResultRows]:
        """The result sets of ``command`` run for every unit, in unit order; units of one data
        source run in turn on its connection, data sources concurrently. The first failure is
        raised once every unit has finished (no connection is left mid-response)."""
        by_source: dict[str, list[int]] = {}
        for i, unit in enumerate(units):
            by_source.setdefault(unit.data_source, []).append(i)
        for ds in by_source:
            await self.connection(ds)
        results: list[Any] = [None] * len(units)

        async def run_source(ds: str, indexes: list[int]) -> None:
            conn = self.conns[ds][0]
            for i in indexes:
                results[i] = await command(conn, units[i])
                if conn.warnings:
                    await self.diagnostics.read(conn)

        # The first data source runs in this task, the others in tasks of their own (no gather).
        (first, first_indexes), *others = by_source.items()
        tasks = [asyncio.ensure_future(run_source(ds, ix)) for ds, ix in others]
        outcomes: list[Exception] = []
        try:
            await run_source(first, first_indexes)
        except Exception as exc:  # noqa: BLE001 - raised below, once every unit is done
            outcomes.append(exc)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        for task in tasks:
            try:
                await task
            except Exception as exc:  # noqa: BLE001 - as above
                outcomes.append(exc)
        failure = outcomes[0] if outcomes else None
        if isinstance(failure, (ConnectionError, OSError)):
            self.release(force=True)
            raise ProxyError(errors.ER_QUERY_ON_FOREIGN_DATA_SOURCE, errors.SQLSTATE_LINK_FAILURE,
                             f"Lost connection to a data source during a sharded statement: {failure}") from failure
        if failure is not None:
            raise failure
        return results

    def send_merged(self, plan: planner.Plan, results: list[ResultRows], binary: BinaryResult | None = None,
                    binary_rows: bool = False) -> None:
        """Merge the units' result sets and send them. ``binary`` answers a prepared statement
        (its rows are encoded with it unless the merge passes the units' own binary rows on);
        ``binary_rows``: the units' rows are in the binary protocol (then ``binary`` is given)."""
        first = results[0]
        fields = first.parsed_fields()
        spec = plan.merge
        width = len(fields)
        merge_plan = _merge_plan(spec, fields)
        packets = list(first.field_packets[:width - spec.hidden])
        renamer = renamer_for(self.session.config, self.session.database, plan.units[0].data_source)
        if renamer is not None:
            packets = renamer.columns(packets)  # logical database and table names
        if picks_whole_rows(merge_plan, width) and binary_rows == (binary is not None):
            # Rows go out as the shards sent them; only what the merge compares is decoded.
            compared = width if merge_plan.distinct else max((o.index + 1 for o in merge_plan.order_by), default=0)
            decode = text_form_decoder(fields, compared) if binary_rows else row_decoder(fields, compared)
            self._send_rows(packets, pick([r.rows for r in results], merge_plan, decode), encode=None)
            return
        decode = text_form_decoder(fields) if binary_rows else row_decoder(fields)
        rows = merge([[decode(p) for p in r.rows] for r in results], merge_plan)
        for i in spec.avg_indexes:
            # AVG carries four more decimals than the SUM it was computed from.
            p = bytearray(packets[i])
            p[-3] = min(p[-3] + 4, 38)
            packets[i] = bytes(p)
        for kind, i, _, _ in spec.aggregates:
            if kind == "COUNT_DISTINCT" and 0 <= i < len(packets):
                # The shards returned the distinct values themselves; the merged count is a
                # BIGINT NOT NULL, as MySQL describes COUNT(...).
                packets[i] = column_definition(Column(fields[i].name, type=FieldType.LONGLONG, length=21,
                                                      flags=FieldFlag.NOT_NULL | FieldFlag.BINARY,
                                                      charset=COLLATION_BINARY))
        if binary is not None:
            packets = binary.field_packets
        self._send_rows(packets, rows, binary.encode_row if binary is not None else encode_row)

    def _send_rows(self, field_packets: list[bytes], rows,
                   encode: Callable[[tuple], bytes] | None = encode_row) -> None:
        """A result set; without ``encode`` the rows are payloads already."""
        session = self.session
        status = session.status_flags()
        payloads = [lenenc_int(len(field_packets)), *field_packets]
        if not session.deprecate_eof:
            payloads.append(eof_packet(status))
        payloads.extend(rows if encode is None else (encode(row) for row in rows))
        warnings = self.diagnostics.count  # of every shard's part
        payloads.append(ok_packet(status=status, warnings=warnings, eof_header=True) if session.deprecate_eof
                        else eof_packet(status, warnings))
        session.send(*payloads)

    # -- transactions -----------------------------------------------------------------

    async def _commit_or_rollback(self, verb: str) -> None:
        if not self.in_transaction:
            return
        branches = {ds: conn for ds, (conn, _) in self.conns.items()}
        self.in_transaction = False
        try:
            await self.txn.finish(branches, commit=verb == "COMMIT")
        finally:
            self.release(force=True)

    # -- metadata statements ---------------------------------------------------------------

    def _show_rules(self) -> None:
        rules = self.rules
        columns = [Column(n) for n in ("table", "actual_data_nodes", "actual_data_sources",
                                       "database_strategy", "table_strategy", "key_generator", "binding_group")]
        rows = []
        for name, rule in rules.tables.items():
            def describe(strategy) -> str | None:
                if strategy is None:
                    return None
                return f"{','.join(strategy.columns) or 'hint'} -> {strategy.algorithm_name}"
            group = rules.binding_group_of(name)
            rows.append([name, ", ".join(map(str, rule.data_nodes)), ", ".join(rule.data_sources),
                         describe(rule.database_strategy), describe(rule.table_strategy),
                         f"{rule.key_generator.column} -> {rule.key_generator.generator_name}"
                         if rule.key_generator else None,
                         ", ".join(group) if group else None])
        for name in sorted(rules.broadcast_tables):
            rows.append([name, "(broadcast) " + ", ".join(rules.data_sources), ", ".join(rules.data_sources),
                         None, None, None, None])
        self.session.send_result(columns, rows)

    async def _show_tables(self, full: bool, like: str | None) -> None:
        """Logical names of the tables that exist on any data source of this database."""
        rules = self.rules
        try:
            results = await self._run_all([planner.RouteUnit(ds, "SHOW FULL TABLES") for ds in rules.data_sources])
        finally:
            self.release()
        names: dict[str, str] = {}
        shadow = self.session.config.databases[self.session.database].shadow
        hidden = shadow.tables_beside_production() if shadow is not None else frozenset()  # shadow tables
        for ds, result in zip(rules.data_sources, results, strict=True):
            for row in result.rows:
                actual = row[0].decode()
                if (ds, actual.lower()) in hidden or actual.lower() in _BOOKKEEPING_TABLES:
                    continue
                logical = rules.logical_table_of(actual)
                names.setdefault(logical or actual, row[1].decode() if row[1] else "BASE TABLE")
        pattern = like_regex(like) if like else None
        chosen = sorted(n for n in names if pattern is None or pattern.match(n))
        title = f"Tables_in_{self.session.database}" + (f" ({like})" if like else "")
        columns = [Column(title, length=256)] + ([Column("Table_type", length=64)] if full else [])
        self.session.send_result(columns, [[n, names[n]] if full else [n] for n in chosen])

    async def _on_first_node(self, prefix: str, table: str) -> None:
        """DESCRIBE / SHOW COLUMNS / SHOW INDEX / SHOW CREATE TABLE of a logical table: ask its
        first actual table and show the logical name."""
        rules = self.rules
        nodes = rules.data_nodes(table)
        node = nodes[0]
        actual_sql = f"{prefix}`{node.table}`"
        conn = await self.connection(node.data_source)
        try:
            result = await conn.query(actual_sql)
        finally:
            self.release()
        def rename(value: Any) -> Any:
            if not isinstance(value, bytes) or node.table == table:
                return value
            if value == node.table.encode():
                return table.encode()
            return value.replace(f"`{node.table}`".encode(), f"`{table}`".encode())

        rows = [tuple(rename(v) for v in row) for row in result.rows]
        self._send_rows(result.field_packets, rows)


def _merge_plan(spec: planner.SelectMerge, fields: list[Field]) -> MergePlan:
    """The merge of a planned SELECT, for shard rows described by ``fields``."""
    width = len(fields)

    def at(index: int) -> int:
        return width + index if index < 0 else index

    collations = [collation_of(f) for f in fields]
    return MergePlan(
        order_by=tuple(OrderItem(at(i), desc, collations[at(i)]) for i, desc in spec.order_by),
        group_by=tuple(OrderItem(at(i), False, collations[at(i)]) for i in spec.group_by),
        aggregates=tuple(_aggregate(kind, at(i), s, c, at, collations) for kind, i, s, c in spec.aggregates),
        having=_having(spec, at, collations) if spec.having is not None else None,
        distinct=spec.distinct,
        offset=spec.offset,
        limit=spec.limit,
        visible_columns=width - spec.hidden,
        column_collations=tuple(collations),
    )


async def _query_rows(conn: BackendConnection, unit: planner.RouteUnit) -> ResultRows:
    """A unit's SQL run as a text query, its result set undecoded."""
    statement = bytes((Command.QUERY,)) + unit.sql.encode("utf-8", "surrogateescape")
    payloads, scanner = await conn.collect(statement, ResponseKind.RESULT)
    if scanner.error is not None:
        raise BackendError(scanner.error)
    return result_rows(payloads, conn.deprecate_eof)


def _aggregate(kind: str, index: int, sum_index: int | None, count_index: int | None,
               at: Callable[[int], int], collations: list[str | None]) -> Aggregate:
    if kind == "AVG":
        return Aggregate("AVG", index, sum_index=at(sum_index), count_index=at(count_index))
    if kind == "COUNT_DISTINCT":
        return Aggregate("COUNT_DISTINCT", index, distinct_index=at(count_index),
                         collation=collations[at(count_index)])
    return Aggregate(kind, index, collation=collations[index] if kind in ("MIN", "MAX") else None)


def _having(spec: planner.SelectMerge, at: Callable[[int], int],
            collations: Sequence[str | None] = ()) -> Callable[[tuple], bool]:
    """HAVING over merged rows, with SQL's three-valued logic; strings compare under the
    collation of the column they are compared with."""
    columns = {k: at(v) for k, v in spec.having_columns.items()}
    expression = spec.having

    def index_of(node: exp.Expression) -> int | None:
        key = node.sql(dialect=planner.DIALECT)
        if key in columns:
            return columns[key]
        if isinstance(node, exp.Column) and node.name.lower() in columns:
            return columns[node.name.lower()]
        return None

    def collation(*nodes: exp.Expression) -> str | None:
        for node in nodes:
            while isinstance(node, exp.Paren):
                node = node.this
            index = index_of(node)
            if index is not None and index < len(collations) and collations[index]:
                return collations[index]
        return "utf8mb4_general_ci"

    def compare(op: Callable[[Any, Any], Any], a: Any, b: Any, coll: str | None) -> Any:
        if a is None or b is None:
            return None
        if isinstance(a, RawTime) != isinstance(b, RawTime):  # MySQL compares TIME with a value as TIME
            a, b = _as_time(a), _as_time(b)
            if a is None or b is None:
                return None
        if isinstance(a, str) and isinstance(b, str):
            return op(mysql_sort_key(a, coll), mysql_sort_key(b, coll))
        if isinstance(a, str) != isinstance(b, str):  # MySQL compares a string with a number as numbers
            a, b = _as_number(a), _as_number(b)
        return op(a, b)

    def value(node: exp.Expression, row: tuple) -> Any:
        index = index_of(node)
        if index is not None:
            return row[index]
        if isinstance(node, exp.Paren):
            return value(node.this, row)
        if isinstance(node, exp.Literal):
            return node.this if node.is_string else _number(node.this)
        if isinstance(node, exp.Null):
            return None
        if isinstance(node, exp.Boolean):
            return 1 if node.this else 0
        if isinstance(node, exp.Neg):
            v = value(node.this, row)
            return None if v is None else -v
        if isinstance(node, exp.Not):
            v = value(node.this, row)
            return None if v is None else not v
        if isinstance(node, (exp.And, exp.Or)):
            a, b = value(node.this, row), value(node.expression, row)
            decisive = isinstance(node, exp.Or)  # TRUE decides OR, FALSE decides AND
            if (a is not None and bool(a) == decisive) or (b is not None and bool(b) == decisive):
                return decisive
            return None if a is None or b is None else not decisive
        if isinstance(node, exp.Is):
            return value(node.this, row) is None  # only IS NULL parses into Is here
        if isinstance(node, exp.Between):
            coll = collation(node.this)
            v = value(node.this, row)
            low = compare(lambda x, y: x >= y, v, value(node.args["low"], row), coll)
            high = compare(lambda x, y: x <= y, v, value(node.args["high"], row), coll)
            if low is False or high is False:
                return False
            return None if low is None or high is None else True
        if isinstance(node, exp.In):
            coll = collation(node.this)
            v = value(node.this, row)
            results = [compare(lambda x, y: x == y, v, value(item, row), coll) for item in node.expressions]
            if any(results):
                return True
            return None if any(r is None for r in results) else False
        op = _BINARY.get(type(node))
        if op is not None:
            a, b = value(node.this, row), value(node.expression, row)
            if type(node) in _ARITHMETIC:
                return None if a is None or b is None else op(a, b)
            return compare(op, a, b, collation(node.this, node.expression))
        raise ShardingError(f"HAVING {expression.sql(dialect=planner.DIALECT)} across shards uses "
                            f"{node.sql(dialect=planner.DIALECT)}, which the merge cannot evaluate")

    return lambda row: bool(value(expression, row))


def _as_time(value: Any) -> timedelta | None:
    """``value`` as a TIME: a string in TIME's text form, a number as [-]HHMMSS; None when it
    is neither (MySQL would warn and compare with something made up)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        try:
            return RawTime(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, Decimal)):
        sign = -1 if value < 0 else 1
        whole = int(abs(value))
        return sign * timedelta(hours=whole // 10000, minutes=whole // 100 % 100, seconds=whole % 100,
                                microseconds=int(abs(value) % 1 * 1_000_000))
    return None


def _as_number(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    match = re.match(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value)
    return _number(match.group(0).strip()) if match else 0


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return Decimal(text)


_BINARY = {
    exp.EQ: lambda a, b: a == b, exp.NEQ: lambda a, b: a != b, exp.GT: lambda a, b: a > b,
    exp.GTE: lambda a, b: a >= b, exp.LT: lambda a, b: a < b, exp.LTE: lambda a, b: a <= b,
    exp.Add: lambda a, b: a + b, exp.Sub: lambda a, b: a - b, exp.Mul: lambda a, b: a * b,
    exp.Div: lambda a, b: None if b == 0 else a / b,
}
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div)


def like_regex(pattern: str) -> re.Pattern[str]:
    """A LIKE pattern (% and _) as a case-insensitive regular expression of the whole text."""
    out = []
    for ch in pattern:
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
    return re.compile("^" + "".join(out) + "$", re.I)
