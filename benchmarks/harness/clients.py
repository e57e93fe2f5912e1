"""Memory of a proxy process under many client connections (idle, then busy).

Clients are aiomysql connections from this process: each completes the MySQL login, so
the proxy holds a real session for it. Figures are the proxy's VmRSS.
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
from dataclasses import dataclass, field

import aiomysql

from harness import procstat, sysbench

CONNECT_CONCURRENCY = 50
CONNECT_TIMEOUT_S = 30
SAMPLE_EVERY_S = 0.25
SETTLE_S = 1.0
POINT_SELECT = "SELECT c FROM sbtest1 WHERE id = %s"


@dataclass
class IdleFigures:
    wanted: int
    opened: int = 0
    failed: int = 0
    first_error: str = ""
    rss_before: int = 0
    rss_with_clients: int = 0
    proxy_fds_with_clients: int = 0  # a check that the proxy really holds the sessions
    open_seconds: float = 0.0


@dataclass
class BusyFigures:
    clients: int
    seconds: float
    opened: int = 0
    queries: int = 0
    errors: int = 0
    first_error: str = ""
    rss_before: int = 0
    rss_peak: int = 0
    rss_end: int = 0
    samples: list[int] = field(default_factory=list, repr=False)

    @property
    def qps(self) -> float:
        return self.queries / self.seconds if self.seconds else 0.0


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's (and so its children's) RLIMIT_NOFILE soft limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


async def _connect(endpoint: sysbench.Endpoint) -> aiomysql.Connection:
    return await aiomysql.connect(host=endpoint.host, port=endpoint.port, user=endpoint.user,
                                  password=endpoint.password, db=endpoint.database, autocommit=True,
                                  connect_timeout=CONNECT_TIMEOUT_S)


async def _open_many(endpoint: sysbench.Endpoint, count: int) -> tuple[list[aiomysql.Connection], list[str]]:
    """Open ``count`` logged-in connections, a bounded number at a time; (connections, errors)."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> aiomysql.Connection:
        async with gate:
            return await _connect(endpoint)

    outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    conns = [o for o in outcomes if isinstance(o, aiomysql.Connection)]
    errors = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
    return conns, errors


def _close_all(conns: list[aiomysql.Connection]) -> None:
    for conn in conns:
        conn.close()


async def _idle(pid: int, endpoint: sysbench.Endpoint, count: int) -> IdleFigures:
    figures = IdleFigures(wanted=count, rss_before=procstat.tree_rss_bytes(pid))
    started = time.monotonic()
    conns, errors = await _open_many(endpoint, count)
    figures.open_seconds = time.monotonic() - started
    figures.opened, figures.failed = len(conns), len(errors)
    figures.first_error = errors[0] if errors else ""
    await asyncio.sleep(SETTLE_S)
    figures.rss_with_clients = procstat.tree_rss_bytes(pid)
    figures.proxy_fds_with_clients = procstat.tree_open_fds(pid)
    _close_all(conns)
    return figures


async def _point_select_loop(conn: aiomysql.Connection, table_size: int, stop_at: float,
                             figures: BusyFigures) -> None:
    async with conn.cursor() as cur:
        while time.monotonic() < stop_at:
            try:
                await cur.execute(POINT_SELECT, (random.randint(1, table_size),))
                await cur.fetchall()
                figures.queries += 1
            except (aiomysql.Error, OSError) as exc:
                figures.errors += 1
                figures.first_error = figures.first_error or f"{type(exc).__name__}: {exc}"
                return


async def _sample_rss(pid: int, stop_at: float, figures: BusyFigures) -> None:
    while time.monotonic() < stop_at:
        figures.samples.append(procstat.tree_rss_bytes(pid))
        await asyncio.sleep(SAMPLE_EVERY_S)


async def _busy(pid: int, endpoint: sysbench.Endpoint, count: int, seconds: float,
                table_size: int) -> BusyFigures:
    figures = BusyFigures(clients=count, seconds=seconds, rss_before=procstat.tree_rss_bytes(pid))
    conns, errors = await _open_many(endpoint, count)
    figures.opened = len(conns)
    figures.errors += len(errors)
    figures.first_error = errors[0] if errors else ""
    stop_at = time.monotonic() + seconds
    await asyncio.gather(_sample_rss(pid, stop_at, figures),
                         *(_point_select_loop(conn, table_size, stop_at, figures) for conn in conns))
    figures.rss_end = procstat.tree_rss_bytes(pid)
    figures.rss_peak = max([*figures.samples, figures.rss_end])
    _close_all(conns)
    return figures


def measure_idle(pid: int, endpoint: sysbench.Endpoint, count: int) -> IdleFigures:
    """RSS of process ``pid`` before and while ``count`` logged-in clients sit idle."""
    return asyncio.run(_idle(pid, endpoint, count))


def measure_busy(pid: int, endpoint: sysbench.Endpoint, count: int, seconds: float,
                 table_size: int) -> BusyFigures:
    """RSS of process ``pid`` while ``count`` clients run point selects back to back."""
    return asyncio.run(_busy(pid, endpoint, count, seconds, table_size))
