"""Named failure points for recovery tests: DBMESH_FAILPOINTS=name[,name] makes the sidecar
kill itself (SIGKILL, like kill -9) when it reaches that point, or, at a connection
failure point, fail as if that backend connection were lost. Off unless the variable is set."""

from __future__ import annotations

import os
import signal

_ACTIVE = frozenset(filter(None, os.environ.get("DBMESH_FAILPOINTS", "").split(",")))


def hit(name: str) -> None:
    if name in _ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)


def fail_connection(name: str) -> None:
    if name in _ACTIVE:
        raise ConnectionResetError(f"failpoint {name}: connection lost")
