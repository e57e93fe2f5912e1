"""Figures about a running process, read from ``/proc`` (Linux only)."""

from __future__ import annotations

import os
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def user_and_system_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time the process has used so far (all its threads), in seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name is parenthesised and may contain spaces: split after the last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return utime / _CLOCK_TICKS, stime / _CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (all its threads), in seconds."""
    return sum(user_and_system_seconds(pid))


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) of the process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def open_fds(pid: int) -> int:
    """How many file descriptors the process holds (sockets included)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> list[int]:
    """Direct children of the process (dbmesh's worker processes under --workers)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """cpu_seconds of the process and its living children: a dbmesh supervisor and workers."""
    return cpu_seconds(pid) + sum(_or_zero(cpu_seconds, child) for child in children(pid))


def tree_rss_bytes(pid: int) -> int:
    return rss_bytes(pid) + sum(_or_zero(rss_bytes, child) for child in children(pid))


def tree_open_fds(pid: int) -> int:
    return open_fds(pid) + sum(_or_zero(open_fds, child) for child in children(pid))


def _or_zero(figure, pid: int):
    try:
        return figure(pid)
    except (OSError, RuntimeError):
        return 0  # the child exited meanwhile
