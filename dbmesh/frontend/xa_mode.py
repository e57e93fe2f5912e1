"""The sidecar's side of the XA transaction mode: the server-wide state its sessions share,
and the finishing of branches left prepared (txn/recovery.py).

At start the sidecar finishes every XA transaction of its instance (all workers' too: none
is running yet). While it runs, a commit or rollback that loses a data source leaves that
branch prepared, holding its row locks; the sweep finishes it (commit if the decision was
logged, else roll back) every ``transaction.xa_sweep_interval_s``, leaving alone the
transactions this process's sessions drive. Each worker process sweeps only its own xids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from txn import recovery, xa
from txn.sqltext import Statement

from .. import metrics
from ..backend.connection import BackendError
from . import base_mode
from .sweeps import sweep_forever

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("dbmesh.xa")


class XaState:
    """Server-wide: the XA transactions this process's sessions drive, and which log tables exist."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.log_ready: set[str] = set()  # data sources whose coordinator log table exists
        # xids begun while a sweep runs (None between sweeps): see recovery.finish_prepared
        self.begun_during_sweep: set[str] | None = None

    def begun(self, xid: str) -> None:
        self.running.add(xid)
        if self.begun_during_sweep is not None:
            self.begun_during_sweep.add(xid)


def xa_sources(server: Server) -> tuple[list[str], list[str]]:
    """(data sources, log data sources) of every sharded database: a session may choose XA
    whatever the configured mode."""
    databases = [d for d in server.config.databases.values() if d.sharding is not None]
    data_sources = {ds for d in databases for ds in d.sharding.data_sources}
    log_sources = {d.transaction.log_data_source or d.sharding.default_data_source for d in databases}
    return sorted(data_sources), sorted(log_sources)


async def finish_prepared(server: Server, instance: str) -> dict[str, int]:
    """Finish the prepared XA branches of ``instance`` that no session of this process drives."""
    data_sources, log_sources = xa_sources(server)
    state = server.xa
    state.begun_during_sweep = begun = set()
    try:
        counts = await recovery.finish_prepared(
            data_sources, log_sources, f"dbmesh-{instance}-",
            lambda ds: base_mode.acquire_plain(server, ds), lambda conn: base_mode.release_plain(server, conn),
            running=state.running, begun_meanwhile=begun)
    finally:
        state.begun_during_sweep = None
    for outcome, count in counts.items():
        if count:
            metrics.TRANSACTIONS_RECOVERED.labels("XA", outcome).inc(count)
    return counts


async def sweep(server: Server) -> None:
    """Now and again, finish the branches this process's XA transactions left prepared."""
    async def one_round() -> None:
        counts = await finish_prepared(server, server.xid_instance)
        if any(counts.values()):
            log.info("XA sweep: %d prepared branches committed, %d rolled back", counts["commit"], counts["rollback"])

    await sweep_forever("XA sweep", server.config.transaction.xa_sweep_interval_s, one_round, log)


@dataclass
class InDoubt:
    """An XA transaction of a dbmesh sidecar (any instance) with a branch still prepared
    somewhere or a commit decision still logged: what SHOW DBMESH TRANSACTIONS lists."""

    xid: str
    prepared_on: list[str]         # data sources where a branch waits prepared
    log_source: str | None = None  # where its commit decision is logged; None: no decision
    participants: str = ""         # as the decision names them
    created: Any = None            # when the decision was logged (the log server's clock)
    age_s: float | None = None


async def in_doubt(server: Server) -> list[InDoubt]:
    """Every dbmesh XA transaction with a prepared branch or a logged decision, on the data
    sources of every sharded database."""
    data_sources, log_sources = xa_sources(server)
    found: dict[str, InDoubt] = {}
    for ds in data_sources:
        result = await base_mode.run_plain(server, ds, Statement("XA RECOVER"))
        for row in result.rows:
            parsed = xa.parse_recover_row(row)
            if parsed is not None and parsed[0].startswith("dbmesh-"):
                found.setdefault(parsed[0], InDoubt(parsed[0], [])).prepared_on.append(ds)
    for log_source in log_sources:
        try:
            result = await base_mode.run_plain(server, log_source, Statement(
                f"SELECT xid, participants, created, TIMESTAMPDIFF(MICROSECOND, created, NOW(6)) FROM {xa.LOG_TABLE}"))
        except BackendError as exc:
            if recovery.no_such_table(exc):  # no XA transaction ever committed through it
                continue
            raise
        for xid, participants, created, age in result.rows:
            item = found.setdefault(xid.decode(), InDoubt(xid.decode(), []))
            item.log_source, item.participants, item.created = log_source, participants.decode(), created
            item.age_s = int(age) / 1_000_000 if age is not None else None
    return sorted(found.values(), key=lambda item: (item.created or b"", item.xid))


def status_and_detail(item: InDoubt, instance_id: str) -> tuple[str, str]:
    """The listing's status and detail of an in-doubt XA transaction."""
    prepared = f"prepared on {', '.join(item.prepared_on)}" if item.prepared_on else "no branch prepared"
    if item.log_source is None:
        status, fate = xa.PREPARED, "no commit decision: the XA sweep or recovery rolls it back"
    elif item.prepared_on:
        status, fate = xa.COMMITTING, "commit decided: the XA sweep or recovery commits it"
    else:
        status, fate = xa.COMMITTED, "its decision is forgotten by the next XA sweep or recovery"
    owner = "" if item.xid.startswith(f"dbmesh-{instance_id}-") else " (another sidecar's: its own sweep does it)"
    return status, f"{prepared}; {fate}{owner}"
