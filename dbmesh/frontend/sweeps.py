"""The loop of a periodic recovery sweep (BASE: base_mode.py, XA: xa_mode.py).

A round that finds a pool saturated yields to the clients and waits for the next round;
only a run of such rounds is worth a warning. Any other failure (say a data source is
down) is logged and the next round tries again: a sweep that died would leave its
transactions unfinished for good, silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..backend.connection import BackendError
from ..errors import ER_CON_COUNT_ERROR, ProxyError

# Rounds in a row that found a pool saturated, between two warnings (at a 30 s interval, a
# warning per 5 min).
SATURATED_ROUNDS_BEFORE_WARNING = 10


async def sweep_forever(name: str, interval_s: float, one_round: Callable[[], Awaitable[float | None]],
                        log: logging.Logger) -> None:
    """Run ``one_round`` every ``interval_s``, or sooner when a round returns how soon."""
    saturated_rounds = 0
    pause = interval_s
    while True:
        await asyncio.sleep(pause)
        pause = interval_s
        try:
            sooner = await one_round()
            if sooner is not None:
                pause = min(sooner, interval_s)
        except (ProxyError, BackendError, OSError, ConnectionError, TimeoutError) as exc:
            if isinstance(exc, ProxyError) and exc.code == ER_CON_COUNT_ERROR:
                saturated_rounds += 1
                level = logging.WARNING if saturated_rounds % SATURATED_ROUNDS_BEFORE_WARNING == 0 else logging.INFO
                log.log(level, "%s deferred %d time(s) in a row, the pool busy with clients (%s); it runs again "
                        "in %g s", name, saturated_rounds, exc, interval_s)
                continue
            log.warning("%s failed (%s); it runs again in %g s", name, exc, interval_s)
            continue
        except Exception:
            log.exception("%s failed; it runs again in %g s", name, interval_s)
            continue
        saturated_rounds = 0
