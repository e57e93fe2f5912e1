"""Throughput of the transaction modes on a cross-shard transfer workload, as ratios to LOCAL.

    .venv/bin/python benchmarks/txn_modes.py [--seconds 5] [--rounds 3] [--clients 8]

Starts its own two-shard MariaDB sandbox and one dbmesh process whose logical ``bank``
database shards ``account`` by ``id % 2``. Every client runs transfers, each moving money
from an even to an odd account (so every transaction touches both shards):
``BEGIN; UPDATE .. - x; UPDATE .. + x; COMMIT``. The modes (LOCAL, XA, and BASE with each
isolation) are chosen per session with ``SET dbmesh_transaction_mode`` and alternate in
rounds, starting one further along each round, so drift of the machine spreads over all
of them. Prints transactions per second (the median over rounds), the ratio to LOCAL in
the same run, and the proxy's CPU per transaction; checks the money total at the end.
Writes ``benchmarks/results/txn_modes.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiomysql
from harness import cluster, procstat, services

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ACCOUNTS = 2000
INITIAL = 1_000_000
MODES = (("LOCAL", None), ("XA", None), ("BASE", "none"), ("BASE", "version"), ("BASE", "record_lock"))
RETRIED = (1205, 1213)  # lock wait timeout, deadlock: the client starts the transfer again


@dataclass
class Round:
    mode: str
    seconds: float
    committed: int
    retried: int
    cpu_s: float

    @property
    def tps(self) -> float:
        return self.committed / self.seconds

    @property
    def cpu_us_per_txn(self) -> float:
        return self.cpu_s / self.committed * 1e6 if self.committed else float("nan")


def label(mode: str, isolation: str | None) -> str:
    return f"{mode}/{isolation}" if isolation else mode


def bank_config(box) -> dict:
    data_sources = {name: cluster.data_source_config(box, name, cluster.SHARDED_DB) for name in ("ds_0", "ds_1")}
    rules = {
        "data_sources": ["ds_0", "ds_1"],
        "tables": {"account": {"actual_data_nodes": "ds_${0..1}.account",
                               "database_strategy": {"columns": ["id"], "algorithm": "two"}}},
        "algorithms": {"two": {"type": "MOD", "props": {"sharding_count": 2}}},
    }
    config = cluster.proxy_config(data_sources, {"sharding": rules})
    config["databases"] = {"bank": config["databases"].pop(cluster.LOGICAL_DB)}
    return config


async def connect(port: int) -> aiomysql.Connection:
    return await aiomysql.connect(host=services.HOST, port=port, user=cluster.PROXY_USER,
                                  password=cluster.PROXY_PASSWORD, db="bank", autocommit=True)


async def load(port: int) -> None:
    conn = await connect(port)
    async with conn.cursor() as cur:
        await cur.execute("DROP TABLE IF EXISTS account")
        await cur.execute("CREATE TABLE account (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
        for start in range(0, ACCOUNTS, 500):
            await cur.execute("INSERT INTO account (id, balance) VALUES "
                              + ", ".join(f"({i}, {INITIAL})" for i in range(start, min(start + 500, ACCOUNTS))))
    conn.close()


async def money(port: int) -> int:
    conn = await connect(port)
    async with conn.cursor() as cur:
        await cur.execute("SELECT SUM(balance) FROM account")
        (total,) = await cur.fetchone()
    conn.close()
    return int(total)


async def client(port: int, mode: str, isolation: str | None, stop_at: float, seed: int) -> tuple[int, int]:
    rnd = random.Random(seed)
    conn = await connect(port)
    committed = retried = 0
    async with conn.cursor() as cur:
        await cur.execute(f"SET dbmesh_transaction_mode = '{mode}'")
        if isolation:
            await cur.execute(f"SET dbmesh_base_isolation = '{isolation}'")
        await cur.execute("SET SESSION innodb_lock_wait_timeout = 2")
        while time.monotonic() < stop_at:
            source, target = 2 * rnd.randrange(ACCOUNTS // 2), 2 * rnd.randrange(ACCOUNTS // 2) + 1
            amount = rnd.randint(1, 100)
            try:
                await cur.execute("BEGIN")
                await cur.execute(f"UPDATE account SET balance = balance - {amount} WHERE id = {source}")
                await cur.execute(f"UPDATE account SET balance = balance + {amount} WHERE id = {target}")
                await cur.execute("COMMIT")
                committed += 1
            except aiomysql.OperationalError as exc:
                if exc.args[0] not in RETRIED:
                    raise
                await cur.execute("ROLLBACK")
                retried += 1
    conn.close()
    return committed, retried


async def one_round(proxy: services.Service, mode: str, isolation: str | None, clients: int,
                    seconds: float) -> Round:
    cpu_before = procstat.cpu_seconds(proxy.pid)
    started = time.monotonic()
    outcomes = await asyncio.gather(*(client(proxy.port, mode, isolation, started + seconds, i)
                                      for i in range(clients)))
    elapsed = time.monotonic() - started
    cpu = procstat.cpu_seconds(proxy.pid) - cpu_before
    return Round(label(mode, isolation), elapsed, sum(c for c, _ in outcomes), sum(r for _, r in outcomes), cpu)


def report(rounds: list[Round]) -> list[dict]:
    by_mode: dict[str, list[Round]] = {}
    for r in rounds:
        by_mode.setdefault(r.mode, []).append(r)
    local_tps = statistics.median(r.tps for r in by_mode["LOCAL"])
    rows = []
    print(f"{'mode':<18}{'TPS':>10}{'/LOCAL':>9}{'cpu µs/txn':>13}{'retried':>9}")
    for mode, found in by_mode.items():
        tps = statistics.median(r.tps for r in found)
        cpu = statistics.median(r.cpu_us_per_txn for r in found)
        retried = sum(r.retried for r in found)
        print(f"{mode:<18}{tps:>10.0f}{tps / local_tps:>9.2f}{cpu:>13.0f}{retried:>9}")
        rows.append({"mode": mode, "tps": tps, "ratio_to_local": tps / local_tps, "cpu_us_per_txn": cpu,
                     "retried": retried, "rounds": [asdict(r) for r in found]})
    return rows


async def main_async(args: argparse.Namespace, workdir: Path) -> int:
    box = cluster.start_sandbox(workdir)
    proxy = None
    try:
        proxy = services.start_dbmesh("txn-modes", bank_config(box), workdir)
        await load(proxy.port)
        rounds: list[Round] = []
        modes = [m for m in MODES if not args.only or label(*m) in args.only or m[0] == "LOCAL"]
        for number in range(args.rounds):
            order = modes[number % len(modes):] + modes[:number % len(modes)]
            for mode, isolation in order:
                rounds.append(await one_round(proxy, mode, isolation, args.clients, args.seconds))
                print(f"round {number + 1}: {rounds[-1].mode:<18}{rounds[-1].tps:>8.0f} TPS", flush=True)
        rows = report(rounds)
        total = await money(proxy.port)
        print(f"money total {'unchanged' if total == ACCOUNTS * INITIAL else f'CHANGED to {total}'}")
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "txn_modes.json").write_text(json.dumps(
            {"clients": args.clients, "seconds": args.seconds, "rounds": args.rounds, "modes": rows,
             "total_unchanged": total == ACCOUNTS * INITIAL}, indent=2))
        return 0 if total == ACCOUNTS * INITIAL else 1
    finally:
        if proxy is not None:
            proxy.stop()
        box.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--only", nargs="*", help="modes to run besides LOCAL, e.g. XA BASE/record_lock")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dbmesh-txn-bench-") as tmp:
        return asyncio.run(main_async(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
