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
from typing import TYPE_CHECKING

from txn import recovery

from .. import metrics
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
