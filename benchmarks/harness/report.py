"""Results of a benchmark run: ratios, targets, the console table and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import clients, sysbench

# sharded: two data sources on two servers; sharded-1s: the same two on one server.
CONFIGS = ("direct", "passthrough", "haproxy", "sharded", "sharded-1s")
SHARDED_CONFIGS = ("sharded", "sharded-1s")
DBMESH_CONFIGS = ("passthrough", "sharded")  # measured for memory too
MB = 1024 * 1024
STALL_FACTOR = 1.5

# The issue's targets.
CPU_US_PER_POINT_SELECT_MAX = 40.0
PASSTHROUGH_VS_HAPROXY_MIN = 0.5
SHARDED_VS_PASSTHROUGH_MIN = 0.8
IDLE_1000_RSS_MB_MAX = 200.0


@dataclass
class Run:
    """One sysbench run of one configuration."""

    config: str
    workload: sysbench.Workload
    result: sysbench.Result
    requested_s: int = 0  # --time given to sysbench
    status: str = "ok"  # ok | unsupported | error
    proxy_cpu_s: float | None = None  # CPU the proxy process used during the run
    servers_cpu_s: float | None = None  # CPU the sandbox's MariaDB servers used during the run
    proxy_trouble: list[str] = field(default_factory=list)  # warnings/errors it logged meanwhile

    @property
    def stalled(self) -> bool:
        """sysbench needed far longer than --time: its threads waited on something (e.g. locks)."""
        return self.result.ok and self.result.seconds > STALL_FACTOR * self.requested_s + 1

    @property
    def cpu_us_per_statement(self) -> float | None:
        if self.proxy_cpu_s is None or not self.result.ok or not self.result.queries:
            return None
        return self.proxy_cpu_s / self.result.queries * 1e6

    @property
    def servers_cpu_us_per_statement(self) -> float | None:
        """What the MariaDB servers spent per statement, all of them together: where a
        configuration's QPS goes when the proxy's own CPU does not explain it."""
        if self.servers_cpu_s is None or not self.result.ok or not self.result.queries:
            return None
        return self.servers_cpu_s / self.result.queries * 1e6


@dataclass
class Memory:
    """RSS figures of one fresh proxy process per phase."""

    config: str
    idle: clients.IdleFigures
    busy: clients.BusyFigures


@dataclass
class Target:
    name: str
    subject: str
    value: float | None
    limit: float
    met: bool | None  # None: could not be measured


def classify(result: sysbench.Result) -> str:
    """ok, unsupported (the proxy refused with ER_NOT_SUPPORTED_YET 1235) or error."""
    if result.ok:
        return "ok"
    return "unsupported" if "1235" in result.error else "error"


# ---------------------------------------------------------------------------------------
# Ratios


def _find(runs: list[Run], config: str, workload: sysbench.Workload) -> Run | None:
    for run in runs:
        if run.config == config and run.workload == workload and run.result.ok:
            return run
    return None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def ratios(run: Run, runs: list[Run]) -> dict[str, float | None]:
    """QPS, p95 and p99 as a multiple of the direct run of the same workload; and pass-through
    QPS as a multiple of HAProxy's."""
    direct = _find(runs, "direct", run.workload)
    mine = run.result if run.result.ok else None
    out: dict[str, float | None] = {
        "qps_vs_direct": _ratio(mine and mine.qps, direct and direct.result.qps),
        "p95_vs_direct": _ratio(mine and mine.p95_ms, direct and direct.result.p95_ms),
        "p99_vs_direct": _ratio(mine and mine.p99_ms, direct and direct.result.p99_ms),
    }
    if run.config == "passthrough":
        haproxy = _find(runs, "haproxy", run.workload)
        out["qps_vs_haproxy"] = _ratio(mine and mine.qps, haproxy and haproxy.result.qps)
    if run.config in SHARDED_CONFIGS:
        passthrough = _find(runs, "passthrough", run.workload)
        out["qps_vs_passthrough"] = _ratio(mine and mine.qps, passthrough and passthrough.result.qps)
    return out


# ---------------------------------------------------------------------------------------
# Targets


def _at_most(name: str, subject: str, value: float | None, limit: float) -> Target:
    return Target(name, subject, value, limit, None if value is None else value <= limit)


def _at_least(name: str, subject: str, value: float | None, limit: float) -> Target:
    return Target(name, subject, value, limit, None if value is None else value >= limit)


def targets(runs: list[Run], memory: list[Memory]) -> list[Target]:
    found: list[Target] = []
    for run in runs:
        if run.workload.script != "oltp_point_select" or run.status != "ok":
            continue
        subject = f"{run.config} {run.workload.ps_label} {run.workload.threads}t"
        if run.config in ("passthrough", *SHARDED_CONFIGS):
            found.append(_at_most("proxy CPU per point select (µs)", subject, run.cpu_us_per_statement,
                                  CPU_US_PER_POINT_SELECT_MAX))
        if run.config == "passthrough":
            found.append(_at_least("pass-through point-select QPS / HAProxy", subject,
                                   ratios(run, runs)["qps_vs_haproxy"], PASSTHROUGH_VS_HAPROXY_MIN))
        if run.config in SHARDED_CONFIGS:
            found.append(_at_least("sharded point-select QPS / pass-through", subject,
                                   ratios(run, runs)["qps_vs_passthrough"], SHARDED_VS_PASSTHROUGH_MIN))
    for mem in memory:
        rss = mem.idle.rss_with_clients / MB if mem.idle.opened == mem.idle.wanted else None
        found.append(Target(f"RSS with {mem.idle.wanted} idle clients (MB)", mem.config, rss,
                            IDLE_1000_RSS_MB_MAX, None if rss is None else rss < IDLE_1000_RSS_MB_MAX))
    return found


# ---------------------------------------------------------------------------------------
# Machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _command_output(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd, env=env)
    except OSError:
        return "unknown"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else "unknown"


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info(mariadb_version: str, haproxy_version: str, root: Path) -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401 - only asking whether dbmesh will run on uvloop
        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "os": _read("/etc/debian_version").strip() or platform.platform(),
        "python": platform.python_version(),
        "mariadb": mariadb_version,
        "sysbench": _command_output(["sysbench", "--version"]),
        "haproxy": haproxy_version,
        "dbmesh_event_loop": loop,
        "dbmesh_commit": _command_output(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]),
        "dbmesh_build": native_status(root),
    }


def native_status(root: Path) -> str:
    """Whether the proxies this harness starts from ``root`` run compiled hot-path modules
    (dbmesh/native.py), as a fresh process there sees it."""
    return _command_output([sys.executable, "-m", "dbmesh", "native", "status"], cwd=root,
                           env={**os.environ, "PYTHONPATH": str(root)})


# ---------------------------------------------------------------------------------------
# Console


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


_HEADER = (f"{'workload':<18} {'ps':<4} {'thr':>3} {'config':<11} {'QPS':>9} {'p95 ms':>7} {'p99 ms':>7} "
           f"{'QPS/dir':>7} {'p95/dir':>7} {'p99/dir':>7} {'cpu µs/st':>9} {'srv µs/st':>9}  note")


def _note(run: Run, ratio: dict[str, float | None]) -> str:
    if run.status != "ok":
        return f"{run.status.upper()}: {run.result.error.splitlines()[0][:120]}"
    notes = []
    if run.stalled:
        notes.append(f"STALLED: ran {run.result.seconds:.0f}s for --time={run.requested_s}")
    if "qps_vs_haproxy" in ratio:
        notes.append(f"{_num(ratio['qps_vs_haproxy'], '.2f')}× HAProxy QPS")
    if "qps_vs_passthrough" in ratio:
        notes.append(f"{_num(ratio['qps_vs_passthrough'], '.2f')}× pass-through QPS")
    if run.result.ignored_errors:
        notes.append(f"{run.result.ignored_errors} ignored errors")
    if run.proxy_trouble:
        notes.append(f"proxy logged {len(run.proxy_trouble)} warning/error lines")
    return "; ".join(notes)


def run_row(run: Run, runs: list[Run]) -> str:
    r, w = run.result, run.workload
    ratio = ratios(run, runs)
    ok = r.ok
    return (f"{w.script:<18} {w.ps_label:<4} {w.threads:>3} {run.config:<11} "
            f"{_num(r.qps if ok else None, '9.0f'):>9} {_num(r.p95_ms, '7.2f'):>7} {_num(r.p99_ms, '7.2f'):>7} "
            f"{_num(ratio['qps_vs_direct'], '.2f'):>7} {_num(ratio['p95_vs_direct'], '.2f'):>7} "
            f"{_num(ratio['p99_vs_direct'], '.2f'):>7} {_num(run.cpu_us_per_statement, '.1f'):>9} "
            f"{_num(run.servers_cpu_us_per_statement, '.1f'):>9}  "
            f"{_note(run, ratio)}")


def runs_table(runs: list[Run]) -> str:
    return "\n".join([_HEADER, "-" * len(_HEADER), *(run_row(run, runs) for run in runs)])


def memory_table(memory: list[Memory]) -> str:
    lines = []
    for mem in memory:
        idle, busy = mem.idle, mem.busy
        lines.append(f"{mem.config:<11} idle: {idle.opened}/{idle.wanted} clients open, RSS "
                     f"{idle.rss_before / MB:.1f} MB -> {idle.rss_with_clients / MB:.1f} MB "
                     f"(proxy holds {idle.proxy_fds_with_clients} fds; logins took {idle.open_seconds:.1f}s"
                     f"{', ' + str(idle.failed) + ' failed' if idle.failed else ''})")
        lines.append(f"{'':<11} busy: {busy.opened}/{busy.clients} clients, {busy.qps:.0f} point selects/s, "
                     f"RSS {busy.rss_before / MB:.1f} MB -> peak {busy.rss_peak / MB:.1f} MB, "
                     f"end {busy.rss_end / MB:.1f} MB{', ' + str(busy.errors) + ' errors' if busy.errors else ''}")
        for error in (idle.first_error, busy.first_error):
            if error:
                lines.append(f"{'':<11} first error: {error}")
    return "\n".join(lines)


def targets_table(found: list[Target]) -> str:
    lines = []
    for t in found:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t.met]
        bound = "≤" if "CPU" in t.name else ("<" if "RSS" in t.name else "≥")
        lines.append(f"{t.name:<42} {t.subject:<24} {_num(t.value, '8.3f'):>8}  (target {bound} {t.limit:g})  "
                     f"{verdict}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# JSON


def run_json(run: Run, runs: list[Run]) -> dict[str, Any]:
    return {
        "config": run.config,
        "workload": run.workload.script,
        "prepared_statements": run.workload.prepared,
        "threads": run.workload.threads,
        "status": run.status,
        "requested_seconds": run.requested_s,
        "stalled": run.stalled,
        **asdict(run.result),
        "proxy_cpu_s": run.proxy_cpu_s,
        "proxy_cpu_us_per_statement": run.cpu_us_per_statement,
        "servers_cpu_s": run.servers_cpu_s,
        "servers_cpu_us_per_statement": run.servers_cpu_us_per_statement,
        **ratios(run, runs),
        "proxy_log_trouble": run.proxy_trouble,
    }


def memory_json(mem: Memory) -> dict[str, Any]:
    busy = asdict(mem.busy)
    busy.pop("samples")
    return {"config": mem.config, "idle": asdict(mem.idle), "busy": {**busy, "qps": mem.busy.qps}}


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
