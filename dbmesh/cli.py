"""The `dbmesh` command: serve, and manage the local sandbox cluster."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from .config import Config, ConfigError, load_config

DEFAULT_SANDBOX_DIR = ".sandbox"


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def _install_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(config: Config, slot: tuple[int, int, int, int] | None = None) -> None:
    from . import native, workers
    from .frontend.server import Server

    logging.getLogger("dbmesh.server").info("%s", native.status())

    if slot is None:
        server = Server(config)
    else:
        index, count, port, _ = slot
        server = Server(config, worker_index=index, worker_count=count, port=port)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if slot is not None:
        watcher = asyncio.create_task(workers.watch_supervisor(slot[3], stop))
    serving = asyncio.create_task(server.serve_forever())
    await stop.wait()
    serving.cancel()
    if slot is not None:
        watcher.cancel()
    await server.close()


def cmd_run(args: argparse.Namespace) -> int:
    from . import workers

    _setup_logging(args.log_level)
    slot = workers.parse_slot(args.worker_slot) if args.worker_slot else None
    if slot is not None:
        workers.die_with_supervisor(slot[3])
        from sharding import keygen

        keygen.use_process_slot(slot[0], slot[1])  # before the config builds key generators
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"dbmesh: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 0:
        print("dbmesh: --workers must be 0 (one per CPU) or more", file=sys.stderr)
        return 2
    count = workers.worker_count(args.workers if args.workers is not None else config.server.workers)
    if slot is None and count > 1:
        return workers.supervise(args.config, config, count, args.log_level)
    _install_loop_policy()
    asyncio.run(_serve(config, slot))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"dbmesh: configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.config}: OK ({len(config.data_sources)} data sources, "
          f"{len(config.databases)} logical databases, {len(config.users)} users)")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    from . import sandbox

    workdir = Path(args.dir)
    if args.action == "up":
        sandbox.ensure_mariadb_installed()
        box = sandbox.Sandbox(workdir)
        info = box.up(shards=args.shards, replicas_per_shard=args.replicas)
        config_path = Path(args.config) if args.config else workdir / "dbmesh.yaml"
        sandbox.write_config(info, config_path, listen_port=args.port)
        print(f"sandbox up in {workdir}; proxy config written to {config_path}")
        print(f"start the proxy:  dbmesh run -c {config_path}")
        return 0
    if args.action == "down":
        if not (workdir / "sandbox.json").exists():
            print(f"no sandbox in {workdir}")
            return 0
        sandbox.Sandbox.load(workdir).down(purge=args.purge)
        print("sandbox stopped")
        return 0
    if not (workdir / "sandbox.json").exists():
        print(f"no sandbox in {workdir}")
        return 1
    print(json.dumps(sandbox.Sandbox.load(workdir).status(), indent=2, default=str))
    return 0


def cmd_native(args: argparse.Namespace) -> int:
    from . import native
    if args.action == "build":
        if native.up_to_date() and not args.force:
            print("compiled modules are up to date")
            return 0
        native.build()
        print(f"compiled {len(native.MODULES)} modules; processes started from now on run them")
    elif args.action == "clean":
        native.clean()
    else:
        print(native.status())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dbmesh", description="database mesh sidecar for MySQL/MariaDB")
    parser.add_argument("--log-level", default="info")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve the MySQL protocol with a config file")
    run.add_argument("-c", "--config", required=True)
    run.add_argument("--workers", type=int, default=None, metavar="N",
                     help="worker processes sharing the port (overrides server.workers; 0: one per CPU)")
    run.add_argument("--worker-slot", help=argparse.SUPPRESS)  # set by the supervisor for its workers
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("-c", "--config", required=True)
    check.set_defaults(func=cmd_check)

    box = sub.add_parser("sandbox", help="local MariaDB cluster for development and tests")
    box.add_argument("action", choices=["up", "down", "status"])
    box.add_argument("--dir", default=DEFAULT_SANDBOX_DIR, help="working folder (default .sandbox)")
    box.add_argument("--shards", type=int, default=2)
    box.add_argument("--replicas", type=int, default=1, help="replicas per shard primary")
    box.add_argument("--port", type=int, default=3307, help="proxy listen port written to the config")
    box.add_argument("--config", help="where to write the proxy config (default DIR/dbmesh.yaml)")
    box.add_argument("--purge", action="store_true", help="with down: delete the data folders")
    box.set_defaults(func=cmd_sandbox)

    native = sub.add_parser("native", help="compile the hot-path modules with mypyc (dbmesh/native.py)")
    native.add_argument("action", choices=["build", "status", "clean"], nargs="?", default="status")
    native.add_argument("--force", action="store_true", help="with build: rebuild even when up to date")
    native.set_defaults(func=cmd_native)

    from shadow import provision

    from . import pressure
    provision.add_parser(sub)   # dbmesh shadow provision
    pressure.add_parser(sub)    # dbmesh pressure
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
