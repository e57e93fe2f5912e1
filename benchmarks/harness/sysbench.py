"""Run sysbench's OLTP scripts against one MySQL endpoint and read its report.

Latency percentiles: sysbench prints one percentile (``--percentile``) in its summary. We
run with ``--histogram=on`` as well and compute p95 *and* p99 from the printed latency
histogram with sysbench's own rule (the first bucket whose running count reaches
``floor(n * pct / 100 + 0.5)``), so both figures come from one run and the same
histogram (logarithmic buckets, about 1.8% wide). The p99 sysbench reports itself is kept
too, as a cross-check. Latencies are per sysbench *event* (one transaction of the
workload), not per statement.
"""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass

TABLES = 1
REPORTED_PERCENTILE = 99
# sysbench aborts a thread on any error except these (deadlock, lock wait timeout,
# "record has changed"); the default of sysbench 1.0, spelled out so it is visible.
IGNORED_ERRORS = "1213,1020,1205"


@dataclass(frozen=True)
class Endpoint:
    """Where sysbench connects."""

    host: str
    port: int
    user: str
    password: str
    database: str


@dataclass(frozen=True)
class Workload:
    """One sysbench run shape."""

    script: str  # oltp_point_select | oltp_read_only | oltp_read_write
    prepared: bool  # server-side prepared statements (sysbench's default) or --db-ps-mode=disable
    threads: int

    @property
    def ps_label(self) -> str:
        return "ps" if self.prepared else "text"

    @property
    def label(self) -> str:
        return f"{self.script} {self.ps_label} {self.threads}t"


@dataclass
class Result:
    """What one sysbench run measured (or why it did not finish)."""

    ok: bool
    seconds: float = 0.0
    queries: int = 0
    transactions: int = 0
    qps: float = 0.0
    tps: float = 0.0
    p95_ms: float | None = None
    p99_ms: float | None = None
    p99_reported_ms: float | None = None
    ignored_errors: int = 0
    reconnects: int = 0
    error: str = ""


def connection_args(endpoint: Endpoint) -> list[str]:
    return [f"--mysql-host={endpoint.host}", f"--mysql-port={endpoint.port}",
            f"--mysql-user={endpoint.user}", f"--mysql-password={endpoint.password}",
            f"--mysql-db={endpoint.database}"]


def run_command(workload: Workload, endpoint: Endpoint, seconds: int, table_size: int) -> list[str]:
    cmd = ["sysbench", workload.script, *connection_args(endpoint),
           f"--tables={TABLES}", f"--table-size={table_size}",
           f"--threads={workload.threads}", f"--time={seconds}", "--events=0",
           "--report-interval=0", f"--percentile={REPORTED_PERCENTILE}", "--histogram=on",
           f"--mysql-ignore-errors={IGNORED_ERRORS}"]
    if not workload.prepared:
        cmd.append("--db-ps-mode=disable")
    return [*cmd, "run"]


def prepare(endpoint: Endpoint, table_size: int) -> None:
    """Create and fill the sbtest tables (``oltp_common prepare``); raise on failure."""
    cmd = ["sysbench", "oltp_common", *connection_args(endpoint),
           f"--tables={TABLES}", f"--table-size={table_size}", "prepare"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sysbench prepare failed:\n{done.stdout}\n{done.stderr}")


def run(workload: Workload, endpoint: Endpoint, seconds: int, table_size: int) -> Result:
    """Run sysbench once; a failed run comes back as ``Result(ok=False, error=...)``."""
    cmd = run_command(workload, endpoint, seconds, table_size)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=seconds + 120)
    except subprocess.TimeoutExpired as exc:
        return Result(ok=False, error=f"sysbench did not finish within {exc.timeout:.0f}s")
    output = done.stdout + "\n" + done.stderr
    if done.returncode != 0:
        return Result(ok=False, error=failure_text(output, done.returncode))
    return parse_report(output)


def failure_text(output: str, returncode: int) -> str:
    """The FATAL/ALERT lines sysbench printed, or the tail of its output."""
    lines = [line.strip() for line in output.splitlines() if "FATAL" in line or "ALERT" in line]
    unique = list(dict.fromkeys(lines))  # threads repeat the same message
    text = "\n".join(unique[:6]) or "\n".join(output.strip().splitlines()[-6:])
    return f"sysbench exited with {returncode}: {text}"


_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def _find(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    if match is None:
        raise ValueError(f"sysbench report has no match for {pattern!r}")
    return float(match.group(1))


def parse_report(output: str) -> Result:
    """Read totals, rates and latencies from a finished sysbench run's output."""
    histogram = parse_histogram(output)
    return Result(
        ok=True,
        seconds=_find(r"total time:\s+" + _NUMBER + "s", output),
        queries=int(_find(r"queries:\s+" + _NUMBER + r"\s+\(", output)),
        transactions=int(_find(r"transactions:\s+" + _NUMBER, output)),
        qps=_find(r"queries:\s+[0-9]+\s+\(" + _NUMBER + " per sec", output),
        tps=_find(r"transactions:\s+[0-9]+\s+\(" + _NUMBER + " per sec", output),
        p95_ms=percentile(histogram, 95),
        p99_ms=percentile(histogram, 99),
        p99_reported_ms=_find(rf"{REPORTED_PERCENTILE}th percentile:\s+" + _NUMBER, output),
        ignored_errors=int(_find(r"ignored errors:\s+" + _NUMBER, output)),
        reconnects=int(_find(r"reconnects:\s+" + _NUMBER, output)),
    )


_HISTOGRAM_ROW = re.compile(r"^\s*([0-9]+\.[0-9]+)\s+\|\**\s+([0-9]+)\s*$")


def parse_histogram(output: str) -> list[tuple[float, int]]:
    """(bucket value in ms, count) rows of sysbench's ``--histogram`` block, in order."""
    rows: list[tuple[float, int]] = []
    in_block = False
    for line in output.splitlines():
        if line.startswith("Latency histogram"):
            in_block = True
            continue
        if not in_block:
            continue
        match = _HISTOGRAM_ROW.match(line)
        if match:
            rows.append((float(match.group(1)), int(match.group(2))))
        elif rows:  # the first non-row line after the rows ends the block
            break
    return rows


def percentile(histogram: list[tuple[float, int]], pct: float) -> float | None:
    """sysbench's percentile rule applied to a parsed histogram (None when it is empty)."""
    total = sum(count for _, count in histogram)
    if total == 0:
        return None
    wanted = max(1, math.floor(total * pct / 100 + 0.5))
    running = 0
    for value, count in histogram:
        running += count
        if running >= wanted:
            return value
    return histogram[-1][0]
