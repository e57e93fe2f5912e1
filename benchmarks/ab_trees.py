"""Same-run A/B of dbmesh source trees: which figure one change moved, and by how much.

Starts one two-shard sandbox, loads the sysbench table, and serves it with one dbmesh proxy
per source tree (a git revision exported with ``git archive``, ``.`` for the working
tree, or a directory), plus HAProxy as a reference. An exported revision runs as Python
sources unless ``--native`` compiles its hot-path modules (dbmesh/native.py); ``.`` and a
directory run as they are built. Then it alternates short sysbench runs between them,
round after round, the order reversed every other round, so a drift of the machine spreads
over all trees. It prints, per tree, the medians of QPS, proxy CPU per statement and proxy
user CPU per statement, and the median of the per-round ratios against the first tree.
Two references run on the unsharded table: HAProxy in TCP mode, and
harness/python_relay.py, a byte relay on uvloop that parses nothing (the floor of any
Python proxy on this machine). A tree may name its own configuration after a colon
(``pt=.:passthrough --tree sh=.:sharded``): the sharded/pass-through ratio of one tree, in
the same run.

    .venv/bin/python benchmarks/ab_trees.py --tree main=main --tree head=. --rounds 6 --native
    .venv/bin/python benchmarks/ab_trees.py --tree a=HEAD~1 --tree b=HEAD --config sharded --text
    .venv/bin/python benchmarks/ab_trees.py --tree pt=.:passthrough --tree sh=.:sharded --threads 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from harness import cluster, procstat, services, sysbench  # noqa: E402

REFERENCE = "haproxy"
CONFIGS = {"passthrough": cluster.passthrough_config, "sharded": cluster.sharded_config,
           "sharded-1s": cluster.sharded_one_server_config}


@dataclass
class Figures:
    """One tree's measurements, one entry per round."""

    qps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    user_us: list[float] = field(default_factory=list)


def export_tree(revision: str, into: Path) -> Path:
    """The source of ``revision`` under ``into`` (``.``: this working tree as it is; a
    directory: that tree as it is, e.g. one with compiled modules)."""
    if revision == ".":
        return HERE.parent
    if Path(revision).is_dir():
        return Path(revision).resolve()
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", revision],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def build_native(tree: Path) -> str:
    """Compile ``tree``'s hot-path modules (a revision that has dbmesh/native.py); its status."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-m", "dbmesh", "native", "build"], cwd=tree, env=env, check=True,
                   capture_output=True)
    return subprocess.run([sys.executable, "-m", "dbmesh", "native", "status"], cwd=tree, env=env,
                          capture_output=True, text=True, check=True).stdout.strip()


def measure(service: services.Service, workload: sysbench.Workload, endpoint: sysbench.Endpoint,
            seconds: int, table_size: int) -> tuple[float, float, float]:
    """QPS, CPU µs per statement and user CPU µs per statement of one run."""
    user_before, system_before = procstat.user_and_system_seconds(service.pid)
    result = sysbench.run(workload, endpoint, seconds, table_size)
    user_after, system_after = procstat.user_and_system_seconds(service.pid)
    if not result.ok or not result.queries:
        raise RuntimeError(f"{service.name}: {result.error}\n{service.log_tail()}")
    user = user_after - user_before
    total = user + system_after - system_before
    return result.qps, total / result.queries * 1e6, user / result.queries * 1e6


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=REV[:CONFIG]",
                        help="a source tree to measure: a git revision, . for the working tree, or a "
                             "directory; CONFIG (passthrough or sharded) overrides --config for it")
    parser.add_argument("--config", choices=CONFIGS, default="passthrough",
                        help="sharded: two data sources on two servers; sharded-1s: on one server")
    parser.add_argument("--script", default="oltp_point_select")
    parser.add_argument("--text", action="store_true", help="--db-ps-mode=disable")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--table-size", type=int, default=10000)
    parser.add_argument("--native", action="store_true",
                        help="compile the hot-path modules of each exported revision (dbmesh/native.py)")
    args = parser.parse_args(argv)
    for spec in args.tree:
        config = spec.partition("=")[2].partition(":")[2]
        if config and config not in CONFIGS:
            parser.error(f"--tree {spec}: the configuration after ':' is one of {', '.join(CONFIGS)}")
    return args


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Figures]:
    box = cluster.start_sandbox(workdir)
    started: list[services.Service] = []
    try:
        cluster.load_data(box, args.table_size)
        endpoints: dict[str, tuple[services.Service, sysbench.Endpoint]] = {}
        for spec in args.tree:
            name, _, revision = spec.partition("=")
            revision, _, config = revision.partition(":")
            make_config = CONFIGS[config or args.config]
            source = export_tree(revision, workdir / "trees" / name)
            if args.native and (source / "dbmesh" / "native.py").exists() and source != HERE.parent:
                print(f"{name}: {build_native(source)}", flush=True)
            proxy = services.start_dbmesh(f"dbmesh-{name}", make_config(box), workdir, source=source)
            started.append(proxy)
            endpoints[name] = (proxy, cluster.proxy_endpoint(proxy.port))
        shard = box.info().shard("ds_0")
        # References on ds_0's unsharded table: HAProxy, and a Python relay that parses nothing.
        for name, start in ((REFERENCE, services.start_haproxy), ("py-relay", services.start_python_relay)):
            reference = start(shard.host, shard.port, workdir)
            started.append(reference)
            endpoints[name] = (reference, cluster.direct_endpoint(box, reference.port))
        workload = sysbench.Workload(args.script, not args.text, args.threads)
        for service, endpoint in endpoints.values():  # warm-up: logins, plan caches, pools
            measure(service, workload, endpoint, 1, args.table_size)
        figures = {name: Figures() for name in endpoints}
        names = list(endpoints)
        for round_no in range(args.rounds):
            for name in names if round_no % 2 == 0 else reversed(names):
                service, endpoint = endpoints[name]
                qps, cpu_us, user_us = measure(service, workload, endpoint, args.seconds, args.table_size)
                figures[name].qps.append(qps)
                figures[name].cpu_us.append(cpu_us)
                figures[name].user_us.append(user_us)
            print(f"round {round_no + 1}/{args.rounds}: " + "  ".join(
                f"{name} {figures[name].qps[-1]:.0f} qps {figures[name].cpu_us[-1]:.1f} µs" for name in names),
                flush=True)
        return figures
    finally:
        for service in started:
            service.stop()
        box.down(purge=True)


def median_ratio(values: list[float], baseline: list[float]) -> float:
    return statistics.median(v / b for v, b in zip(values, baseline, strict=True))


def print_table(figures: dict[str, Figures]) -> None:
    first = next(iter(figures))
    base = figures[first]
    print(f"\n{'tree':<12}{'QPS':>9}{'CPU µs/st':>11}{'user µs/st':>12}"
          f"{'QPS ×':>8}{'CPU ×':>8}{'user ×':>8}   (× = median per-round ratio to {first})")
    for name, fig in figures.items():
        print(f"{name:<12}{statistics.median(fig.qps):>9.0f}{statistics.median(fig.cpu_us):>11.1f}"
              f"{statistics.median(fig.user_us):>12.1f}{median_ratio(fig.qps, base.qps):>8.3f}"
              f"{median_ratio(fig.cpu_us, base.cpu_us):>8.3f}{median_ratio(fig.user_us, base.user_us):>8.3f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dbmesh-ab-"))
    try:
        print_table(run(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
