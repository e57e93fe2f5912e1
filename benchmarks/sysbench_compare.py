"""Compare dbmesh with a direct connection and with HAProxy, using sysbench, in one run.

    .venv/bin/python benchmarks/sysbench_compare.py [--quick]

Starts its own two-shard MariaDB sandbox in a temporary folder, loads the sysbench table,
then alternates five configurations over every workload: direct to MariaDB, dbmesh
pass-through, HAProxy (TCP mode), dbmesh sharded (sbtest1 split by id % 2 over two
servers), and the same sharding with both data sources on one server (sharded-1s). Then
measures the proxy's memory with 1,000 idle and 200 busy clients. Prints a table and
writes ``benchmarks/results/latest.json``. See ``benchmarks/README.md``.

Exit status is 0 unless the harness itself failed: a figure that misses its target, or a
combination the proxy does not support, is reported, never fatal.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from harness import clients, cluster, procstat, report, services, sysbench
from harness.report import Memory, Run

from dbmesh.sandbox import Sandbox

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SCRIPTS = ("oltp_point_select", "oltp_read_only", "oltp_read_write")
PAUSE_BETWEEN_RUNS_S = 0.5


@dataclass(frozen=True)
class Settings:
    quick: bool
    seconds: int
    warmup_seconds: int
    threads: tuple[int, ...]
    table_size: int
    idle_clients: int
    busy_clients: int
    busy_seconds: int
    lock_wait_timeout: int | None  # None: MariaDB's default (50 s)
    workers: int = 1  # dbmesh server.workers (CPU and memory then cover the supervisor and workers)

    def workloads(self) -> list[sysbench.Workload]:
        """Every combination, prepared statements first (sysbench's default), then text."""
        return [sysbench.Workload(script, prepared, threads)
                for script in SCRIPTS for prepared in (True, False) for threads in self.threads]


def settings_from(args: argparse.Namespace) -> Settings:
    if args.quick:
        return Settings(quick=True, seconds=3, warmup_seconds=1, threads=(8,), table_size=args.table_size,
                        idle_clients=1000, busy_clients=200, busy_seconds=3,
                        lock_wait_timeout=args.lock_wait_timeout, workers=args.workers)
    return Settings(quick=False, seconds=args.seconds, warmup_seconds=3, threads=(8, 64),
                    table_size=args.table_size, idle_clients=1000, busy_clients=200, busy_seconds=10,
                    lock_wait_timeout=args.lock_wait_timeout, workers=args.workers)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs at 8 threads only (about 1.5 minutes)")
    parser.add_argument("--seconds", type=int, default=10, help="length of each sysbench run (full mode)")
    parser.add_argument("--table-size", type=int, default=10000, help="rows in sbtest1")
    parser.add_argument("--lock-wait-timeout", type=int, default=None, metavar="S",
                        help="SET GLOBAL innodb_lock_wait_timeout on both servers (default: leave 50 s). "
                             "A deadlock across shards is seen by neither server and lasts this long")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json", help="where to write the JSON")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="run the dbmesh proxies with server.workers = N (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, configs)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------
# The services under test


class Bench:
    """The sandbox and the proxies in front of it; restarts a proxy that died."""

    def __init__(self, box: Sandbox, workdir: Path, workers: int = 1):
        self.box = box
        self.workers = workers
        self.workdir = workdir
        self.services: dict[str, services.Service] = {}
        self.crashes: list[dict[str, Any]] = []
        self._starters: dict[str, Callable[[], services.Service]] = {
            "passthrough": lambda: services.start_dbmesh("dbmesh-passthrough", cluster.passthrough_config(box),
                                                         workdir, workers),
            "sharded": lambda: services.start_dbmesh("dbmesh-sharded", cluster.sharded_config(box), workdir,
                                                     workers),
            "sharded-1s": lambda: services.start_dbmesh("dbmesh-sharded-1s", cluster.sharded_one_server_config(box),
                                                        workdir, workers),
            "haproxy": lambda: services.start_haproxy(*self._ds_0_address(), workdir),
        }

    def _ds_0_address(self) -> tuple[str, int]:
        shard = self.box.info().shard("ds_0")
        return shard.host, shard.port

    def start_all(self) -> None:
        for name, start in self._starters.items():
            self.services[name] = start()

    def endpoint(self, config: str) -> sysbench.Endpoint:
        if config == "direct":
            return cluster.direct_endpoint(self.box)
        if config == "haproxy":
            return cluster.direct_endpoint(self.box, relay_port=self.services[config].port)
        return cluster.proxy_endpoint(self.services[config].port)

    def server_pids(self) -> list[int]:
        """The sandbox's MariaDB servers (both, whichever configuration runs)."""
        return [inst.pid for inst in self.box.instances.values() if inst.pid]

    def pid(self, config: str) -> int | None:
        service = self.services.get(config)
        return service.pid if service is not None and service.alive() else None

    def ensure_running(self, config: str) -> None:
        """Restart a proxy that exited, recording how it ended (exit code, log tail)."""
        service = self.services.get(config)
        if service is None or service.alive():
            return
        crash = {"config": config, "exit_code": service.process.returncode, "log_tail": service.log_tail(60),
                 "at": _now()}
        self.crashes.append(crash)
        print(f"!! {config} proxy exited with {crash['exit_code']}; restarting it. Log tail:\n"
              f"{crash['log_tail']}", flush=True)
        service.log_path.rename(service.log_path.with_suffix(f".crash{len(self.crashes)}.log"))
        self.services[config] = self._starters[config]()

    def stop_all(self) -> None:
        for service in self.services.values():
            service.stop()


# ---------------------------------------------------------------------------------------
# sysbench runs


def run_one(bench: Bench, config: str, workload: sysbench.Workload, settings: Settings) -> Run:
    """One sysbench run, with the proxy's CPU time measured around it."""
    bench.ensure_running(config)
    pid = bench.pid(config)
    cpu_before = procstat.tree_cpu_seconds(pid) if pid else None
    servers = bench.server_pids()
    servers_before = sum(map(procstat.cpu_seconds, servers))
    result = sysbench.run(workload, bench.endpoint(config), settings.seconds, settings.table_size)
    run = Run(config, workload, result, requested_s=settings.seconds, status=report.classify(result))
    run.servers_cpu_s = sum(map(procstat.cpu_seconds, servers)) - servers_before
    if pid and cpu_before is not None and bench.pid(config) == pid:
        run.proxy_cpu_s = procstat.tree_cpu_seconds(pid) - cpu_before
    if config in bench.services:
        run.proxy_trouble = bench.services[config].new_trouble()
    return run


def rotated(configs: tuple[str, ...], step: int) -> list[str]:
    """The configurations in turn, starting one further each workload (no fixed position bias)."""
    shift = step % len(configs)
    return [*configs[shift:], *configs[:shift]]


def warm_up(bench: Bench, settings: Settings) -> None:
    """A short point-select run per configuration: warm caches and pools, check each answers."""
    warm = dataclasses.replace(settings, seconds=settings.warmup_seconds)
    for config in report.CONFIGS:
        run = run_one(bench, config, sysbench.Workload("oltp_point_select", False, 8), warm)
        print(f"warm-up {config:<11} {'ok' if run.result.ok else run.result.error}", flush=True)


def run_matrix(bench: Bench, settings: Settings, runs: list[Run]) -> None:
    """Every workload on every configuration, alternating; appends to ``runs`` as it goes."""
    workloads = settings.workloads()
    total = len(workloads) * len(report.CONFIGS)
    for step, workload in enumerate(workloads):
        for config in rotated(report.CONFIGS, step):
            run = run_one(bench, config, workload, settings)
            runs.append(run)
            print(f"[{len(runs):>2}/{total}] {report.run_row(run, runs)}", flush=True)
            time.sleep(PAUSE_BETWEEN_RUNS_S)


# ---------------------------------------------------------------------------------------
# Memory


def measure_memory(bench: Bench, settings: Settings, config: str) -> Memory:
    """Idle and busy clients, each phase against a freshly started proxy process."""
    start = {"passthrough": cluster.passthrough_config, "sharded": cluster.sharded_config}[config]
    idle_proxy = services.start_dbmesh(f"memory-idle-{config}", start(bench.box), bench.workdir, bench.workers)
    try:
        idle = clients.measure_idle(idle_proxy.pid, cluster.proxy_endpoint(idle_proxy.port),
                                    settings.idle_clients)
    finally:
        idle_proxy.stop()
    busy_proxy = services.start_dbmesh(f"memory-busy-{config}", start(bench.box), bench.workdir, bench.workers)
    try:
        busy = clients.measure_busy(busy_proxy.pid, cluster.proxy_endpoint(busy_proxy.port),
                                    settings.busy_clients, settings.busy_seconds, settings.table_size)
    finally:
        busy_proxy.stop()
    return Memory(config, idle, busy)


# ---------------------------------------------------------------------------------------
# Output


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def document(settings: Settings, state: State, complete: bool, failure: str) -> dict[str, Any]:
    runs, memory = state.runs, state.memory
    return {
        "generated_at": _now(),
        "complete": complete,
        "failure": failure,
        "machine": state.machine,
        "settings": {**dataclasses.asdict(settings), "sysbench_tables": sysbench.TABLES,
                     "percentiles": "p95 and p99 computed from sysbench --histogram; p99_reported_ms is "
                                    "sysbench's own --percentile=99",
                     "dbmesh_pool": "defaults (max_size 64 per data source)"},
        "runs": [report.run_json(run, runs) for run in runs],
        "memory": [report.memory_json(mem) for mem in memory],
        "memory_errors": state.memory_errors,
        "targets": [dataclasses.asdict(t) for t in report.targets(runs, memory)],
        "proxy_crashes": state.bench.crashes if state.bench else [],
    }


def print_summary(runs: list[Run], memory: list[Memory], bench: Bench | None) -> None:
    print("\n=== sysbench (QPS: statements/s; p95/p99: per sysbench event, ms; "
          "cpu µs/st: proxy CPU per statement) ===")
    print(report.runs_table(runs))
    if memory:
        print("\n=== proxy memory (VmRSS) ===")
        print(report.memory_table(memory))
    print("\n=== targets ===")
    print(report.targets_table(report.targets(runs, memory)))
    troubled = [run for run in runs if run.proxy_trouble]
    if troubled or (bench and bench.crashes):
        print("\n=== proxy trouble ===")
        for run in troubled:
            print(f"-- {run.config} {run.workload.label}:")
            print("\n".join(run.proxy_trouble[:15]))
        for crash in bench.crashes if bench else []:
            print(f"-- {crash['config']} exited with {crash['exit_code']}:\n{crash['log_tail']}")


def save_logs(workdir: Path) -> None:
    """Copy the proxies' and HAProxy's logs next to the JSON before the temp folder goes."""
    target = RESULTS / "logs"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for log in workdir.glob("*.log"):
        shutil.copy2(log, target / log.name)


# ---------------------------------------------------------------------------------------
# Main


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class State:
    """What a run has built and measured so far (kept when it is cut short)."""

    workdir: Path
    box: Sandbox | None = None
    bench: Bench | None = None
    runs: list[Run] = field(default_factory=list)
    memory: list[Memory] = field(default_factory=list)
    memory_errors: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)


def execute(settings: Settings, state: State) -> None:
    print(f"sandbox in {state.workdir} ...", flush=True)
    state.box = box = cluster.start_sandbox(state.workdir)
    cluster.load_data(box, settings.table_size)
    if settings.lock_wait_timeout is not None:
        cluster.set_lock_wait_timeout(box, settings.lock_wait_timeout)
    state.machine = report.machine_info(cluster.mariadb_version(box), services.haproxy_version(), HERE.parent)
    state.machine["mariadb_innodb_lock_wait_timeout_s"] = cluster.lock_wait_timeout(box)
    # Other work on the machine moves every figure but the same-run ratios: record how busy it was.
    state.machine["loadavg_1_5_15_at_start"] = [round(x, 2) for x in os.getloadavg()]
    state.machine["dbmesh_workers"] = settings.workers
    print(f"dbmesh: {state.machine['dbmesh_build']}", flush=True)
    print(f"rows: {cluster.row_counts(box)}", flush=True)
    state.bench = Bench(box, state.workdir, settings.workers)
    state.bench.start_all()
    warm_up(state.bench, settings)
    run_matrix(state.bench, settings, state.runs)
    for config in report.DBMESH_CONFIGS:
        print(f"memory: {config} ...", flush=True)
        try:
            state.memory.append(measure_memory(state.bench, settings, config))
        except (OSError, RuntimeError) as exc:  # e.g. the proxy died under 1,000 clients
            state.memory_errors.append(f"{config}: {type(exc).__name__}: {exc}")
            print(f"!! memory test of {config} failed: {exc}", flush=True)


def teardown(state: State, keep: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
    if state.bench is not None:
        state.bench.stop_all()
    if state.box is not None:
        state.box.down(purge=True)
    save_logs(state.workdir)
    if not keep:
        shutil.rmtree(state.workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    clients.raise_open_files_limit(4 * settings.idle_clients + 1024)
    state = State(Path(tempfile.mkdtemp(prefix="dbmesh-bench-")))
    status, failure = 0, ""
    try:
        execute(settings, state)
    except KeyboardInterrupt:
        status, failure = 130, "interrupted"
        print("\ninterrupted; cleaning up", file=sys.stderr)
    except Exception:  # the harness itself failed: report it, clean up, exit 1
        status, failure = 1, traceback.format_exc()
        print(failure, file=sys.stderr)
    finally:
        teardown(state, args.keep)
    print_summary(state.runs, state.memory, state.bench)
    report.write_json(args.output, document(settings, state, complete=status == 0, failure=failure))
    print(f"\nwrote {args.output}; logs in {RESULTS / 'logs'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
