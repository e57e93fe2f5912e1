"""``dbmesh pressure``: run a workload as shadow traffic through the sidecar, at a target rate.

It connects to the sidecar of a config file like any client (the listen address and, unless
given, the first user of the file) and marks its traffic as shadow traffic: with the session
setting ``SET dbmesh_shadow = 1`` (default; refused on a database without shadow rules, so
a workload can never land on production by mistake) or with the ``/* dbmesh:shadow */``
hint on every statement. Statements are scheduled open-loop at ``--rate`` per second for
``--duration`` seconds over ``--concurrency`` connections; a progress bar shows the run and
a report gives throughput and latency percentiles (``--json FILE`` writes it as JSON).

Statement templates: ``{seq}`` (a number unique in the run), ``{worker}``, ``{rand}`` and
``{rand:LOW:HIGH}`` (random integers) are filled in for every execution.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_TEMPLATE = re.compile(r"\{(seq|worker|rand)(?::(-?\d+):(-?\d+))?\}")
HINT = "/* dbmesh:shadow */ "


def fill(template: str, seq: int, worker: int, rng: random.Random) -> str:
    def value(m: re.Match[str]) -> str:
        kind = m.group(1)
        if kind == "seq":
            return str(seq)
        if kind == "worker":
            return str(worker)
        if m.group(2) is not None:
            return str(rng.randint(int(m.group(2)), int(m.group(3))))
        return str(rng.randint(0, 2**31 - 1))

    return _TEMPLATE.sub(value, template)


def load_statements(sql_file: str | None, statements: list[str] | None) -> list[str]:
    from .frontend.statement import split_statements

    found: list[str] = []
    if sql_file:
        text = Path(sql_file).read_bytes()
        for part in split_statements(text):
            lines = [ln for ln in part.decode("utf-8").splitlines() if not ln.strip().startswith("--")]
            body = "\n".join(lines).strip()
            if body:
                found.append(body)
    found.extend(s.strip().rstrip(";") for s in statements or () if s.strip())
    return found


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


@dataclass
class Report:
    database: str
    mark: str
    target_rate: float
    duration_s: float
    concurrency: int
    statements: int = 0
    ok: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    throughput: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    max_behind_ms: float = 0.0
    error_kinds: dict[str, int] = field(default_factory=dict)


class Run:
    def __init__(self, args: argparse.Namespace, statements: list[str], connect: dict[str, Any]):
        self.args = args
        self.statements = statements
        self.connect = connect
        self.tickets = itertools.count()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.done = 0
        self.behind = 0.0
        self.start = 0.0
        self.total = int(args.rate * args.duration)
        self.fatal: str | None = None

    def open(self) -> Any:
        import pymysql

        conn = pymysql.connect(autocommit=True, **self.connect)
        with conn.cursor() as cur:
            cur.execute("SET dbmesh_shadow = 1")  # refused where there are no shadow rules
            if self.args.mark == "hint":
                cur.execute("SET dbmesh_shadow = 0")
        return conn

    def worker(self, index: int) -> None:
        import pymysql

        rng = random.Random(index)
        try:
            conn = self.open()
        except pymysql.err.MySQLError as exc:
            self.fatal = f"cannot start shadow traffic: {exc.args[-1] if exc.args else exc}"
            return
        prefix = HINT if self.args.mark == "hint" else ""
        try:
            with conn.cursor() as cur:
                while self.fatal is None:
                    ticket = next(self.tickets)
                    if ticket >= self.total:
                        return
                    due = self.start + ticket / self.args.rate
                    wait = due - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    sql = prefix + fill(self.statements[ticket % len(self.statements)], ticket, index, rng)
                    began = time.perf_counter()
                    try:
                        cur.execute(sql)
                        cur.fetchall()
                        error = None
                    except pymysql.err.MySQLError as exc:
                        error = f"{exc.args[0]}: {exc.args[1]}" if len(exc.args) > 1 else str(exc)
                        if isinstance(exc, pymysql.err.OperationalError) and exc.args and exc.args[0] in (2006, 2013):
                            conn.close()
                            try:
                                conn = self.open()
                            except pymysql.err.MySQLError as again:
                                self.fatal = f"lost the connection to the sidecar: {again}"
                                return
                            cur = conn.cursor()
                    ended = time.perf_counter()
                    with self.lock:
                        self.done += 1
                        self.behind = max(self.behind, began - due)
                        if error is None:
                            self.latencies.append(ended - began)
                        else:
                            self.errors[error[:120]] += 1
        finally:
            conn.close()

    def execute(self, progress: bool) -> Report:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        args = self.args
        self.start = time.perf_counter() + 0.2
        threads = [threading.Thread(target=self.worker, args=(i,), daemon=True) for i in range(args.concurrency)]
        for t in threads:
            t.start()
        with Progress(TextColumn("[bold]shadow traffic"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), disable=not progress,
                      transient=False) as bar:
            task = bar.add_task("run", total=self.total, rate="")
            while any(t.is_alive() for t in threads):
                time.sleep(0.1)
                elapsed = max(1e-9, time.perf_counter() - self.start)
                bar.update(task, completed=self.done, rate=f"{self.done / elapsed:,.0f}/s")
            bar.update(task, completed=self.done)
        elapsed = max(1e-9, time.perf_counter() - self.start)
        latencies = sorted(self.latencies)
        return Report(
            database=args.database, mark=args.mark, target_rate=args.rate, duration_s=args.duration,
            concurrency=args.concurrency, statements=self.done, ok=len(latencies),
            errors=sum(self.errors.values()), elapsed_s=round(elapsed, 3),
            throughput=round(len(latencies) / elapsed, 1),
            latency_ms={name: round(percentile(latencies, p) * 1000, 3)
                        for name, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))},
            max_behind_ms=round(self.behind * 1000, 1),
            error_kinds=dict(self.errors.most_common(10)),
        )


def print_report(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"pressure test on {report.database} (shadow traffic, marked by {report.mark})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("statements", f"{report.statements:,}"), ("ok", f"{report.ok:,}"), ("errors", f"{report.errors:,}"),
        ("elapsed", f"{report.elapsed_s:.2f} s"),
        ("throughput", f"{report.throughput:,.1f}/s (target {report.target_rate:,.0f}/s)"),
        *((f"latency {k}", f"{v:.2f} ms") for k, v in report.latency_ms.items()),
        ("most behind schedule", f"{report.max_behind_ms:.1f} ms"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console = Console()
    console.print(table)
    for kind, count in report.error_kinds.items():
        console.print(f"[red]{count} x {kind}")


def cmd_pressure(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"dbmesh: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.database not in config.databases:
        print(f"dbmesh: no logical database named {args.database!r}", file=sys.stderr)
        return 2
    if config.databases[args.database].shadow is None:
        print(f"dbmesh: database {args.database!r} has no shadow rules; shadow traffic would reach production",
              file=sys.stderr)
        return 2
    statements = load_statements(args.sql, args.statements)
    if not statements:
        print("dbmesh: give the workload with --sql FILE or --statements", file=sys.stderr)
        return 2
    if args.rate <= 0 or args.duration <= 0 or args.concurrency <= 0:
        print("dbmesh: --rate, --duration and --concurrency must be positive", file=sys.stderr)
        return 2
    user = args.user or next(iter(config.users))
    password = args.password if args.password is not None else config.users[user].password \
        if user in config.users else ""
    host = args.host or (config.listen.host if config.listen.host not in ("0.0.0.0", "::") else "127.0.0.1")
    connect = {"host": host, "port": args.port or config.listen.port, "user": user, "password": password,
               "database": args.database, "charset": "utf8mb4"}
    run = Run(args, statements, connect)
    report = run.execute(progress=not args.no_progress)
    if run.fatal:
        print(f"dbmesh: {run.fatal}", file=sys.stderr)
        return 1
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
    return 0 if report.errors == 0 else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("pressure", help="run a workload as shadow traffic through the sidecar")
    p.add_argument("-c", "--config", required=True, help="the sidecar's config (listen address, users)")
    p.add_argument("--database", required=True, help="logical database with shadow rules")
    p.add_argument("--sql", help="file of statements separated by ';'")
    p.add_argument("--statements", nargs="+", help="statements (templates: {seq} {worker} {rand} {rand:A:B})")
    p.add_argument("--rate", type=float, required=True, help="statements per second")
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p.add_argument("--concurrency", type=int, default=8, help="client connections (default 8)")
    p.add_argument("--mark", choices=["session", "hint"], default="session",
                   help="mark traffic with SET dbmesh_shadow = 1 (default) or a /* dbmesh:shadow */ hint")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--host", help="sidecar address (default: listen.host of the config)")
    p.add_argument("--port", type=int, help="sidecar port (default: listen.port of the config)")
    p.add_argument("--json", help="also write the report to this file as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pressure)
