"""Clean-up of finished BASE global transactions, batched.

Once a global transaction is committed (or rolled back), its undo rows, global locks and
log row are only bookkeeping. Sessions hand finished transactions to a ``CleanupQueue``,
whose one task deletes everything that piled up since its last pass with one statement per
data source and table, so the cost is shared by all transactions that finished meanwhile.
A pass that fails leaves the rows to the recovery sweep (their status says what to do).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from . import global_lock, global_log, undo_log
from .global_log import Participant
from .sqltext import Statement

log = logging.getLogger("dbmesh.base_cleanup")

RunOn = Callable[[str, Statement], Awaitable[object]]  # (data source, statement) in autocommit
_BATCH = 200  # xids per statement


@dataclass(frozen=True)
class Finished:
    log_source: str
    xid: str
    participants: tuple[Participant, ...]


async def clean_up(run_on: RunOn, finished: Sequence[Finished]) -> None:
    """Undo rows and locks on every participant first, then the log rows (a crash between
    leaves a finished log row, which recovery cleans up again)."""
    by_source: dict[str, list[str]] = {}
    by_log: dict[str, list[str]] = {}
    for f in finished:
        for p in f.participants:
            by_source.setdefault(p.data_source, []).append(f.xid)
        by_log.setdefault(f.log_source, []).append(f.xid)
    for ds, xids in by_source.items():
        for chunk in _chunks(xids):
            await run_on(ds, undo_log.delete_xid(*chunk))
            await run_on(ds, global_lock.release(*chunk))
    for ds, xids in by_log.items():
        for chunk in _chunks(xids):
            await run_on(ds, global_log.delete(*chunk))


def _chunks(xids: list[str]) -> list[list[str]]:
    return [xids[i:i + _BATCH] for i in range(0, len(xids), _BATCH)]


class CleanupQueue:
    def __init__(self, run_on: RunOn):
        self.run_on = run_on
        self.pending: list[Finished] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, finished: Finished) -> None:
        self.pending.append(finished)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            try:
                await clean_up(self.run_on, batch)
            except Exception as exc:  # noqa: BLE001 - the recovery sweep finishes what is left
                log.warning("BASE clean-up of %d transactions did not finish (%s); the recovery sweep "
                            "finishes it", len(batch), exc)

    async def drain(self) -> None:
        """Wait for the pending clean-up (at shutdown)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
