"""Several worker processes serving one listen port (``server.workers`` / ``--workers``).

The supervisor (the process ``dbmesh run`` started) does what must happen once: XA recovery
before any worker accepts a client, choosing the port (when the config says 0), and serving
/metrics for all workers (prometheus_client multiprocess mode). Then it starts the workers
as fresh interpreters (``python -m dbmesh run ... --worker-slot k/n``: no fork of a running
event loop), each binding the port with SO_REUSEPORT so the kernel spreads new connections
over them, and watches them:

- SIGTERM / SIGINT to the supervisor stops the workers (SIGTERM, then SIGKILL after a grace).
- A worker that exits on its own stops the whole sidecar (exit status 1): a supervisor above
  (systemd, Kubernetes) restarts it, and XA recovery runs again before clients return. A
  worker restarted alone would leave the dead worker's prepared XA branches for later.
- A supervisor killed outright (SIGKILL) takes its workers with it: each asks the kernel for
  SIGTERM when its parent dies (PR_SET_PDEATHSIG) and also checks its parent every second.

Per worker, not shared: client sessions, backend pools (``pool.max_size`` is per worker, so a
data source sees up to workers x max_size connections), the plan cache, replica health
probes, SNOWFLAKE sequence numbers (split by worker, see sharding.keygen.use_process_slot).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import Config

log = logging.getLogger("dbmesh.workers")

_STOP_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1


def worker_count(configured: int) -> int:
    """``server.workers`` as a number of processes: 0 means one per CPU."""
    return configured if configured > 0 else (os.cpu_count() or 1)


def supervise(config_path: str, config: Config, workers: int, log_level: str) -> int:
    """Run ``workers`` worker processes until told to stop; the exit status of the sidecar."""
    from .frontend.server import Server

    asyncio.run(Server(config).recover_once())  # once, before any worker serves a client
    holder, port = _reserve_port(config)
    metrics_dir = tempfile.mkdtemp(prefix="dbmesh-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    if config.metrics.port:
        from . import metrics

        metrics.serve_workers(config.metrics.host, config.metrics.port, metrics_dir)
        log.info("metrics of %d workers on http://%s:%d/metrics", workers, config.metrics.host,
                 config.metrics.port)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs = [_start_worker(config_path, index, workers, port, log_level, env) for index in range(workers)]
    log.info("supervising %d workers on %s:%d (pids %s)", workers, config.listen.host, port,
             ", ".join(str(p.pid) for p in procs))
    status = 0
    try:
        while not stopping:
            exited = [p for p in procs if p.poll() is not None]
            if exited:
                log.error("worker pid %d exited with %s; stopping the sidecar", exited[0].pid,
                          exited[0].returncode)
                status = 1
                break
            time.sleep(0.2)
    finally:
        _stop_workers(procs)
        holder.close()
        _remove_tree(metrics_dir)
    return status


def _reserve_port(config: Config) -> tuple[socket.socket, int]:
    """A socket bound (not listening) to the listen address with SO_REUSEPORT: it fixes the
    port when the config says 0 and receives no connections itself."""
    listen = config.listen
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((listen.host, listen.port))
    return holder, holder.getsockname()[1]


def _start_worker(config_path: str, index: int, count: int, port: int, log_level: str,
                  env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "dbmesh", "--log-level", log_level, "run", "-c", config_path,
           "--worker-slot", f"{index}/{count}/{port}/{os.getpid()}"]
    return subprocess.Popen(cmd, env=env)


def _stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + _STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _remove_tree(path: str) -> None:
    for file in Path(path).glob("*"):
        file.unlink(missing_ok=True)
    Path(path).rmdir()


# ---------------------------------------------------------------------------------------
# In a worker


def parse_slot(text: str) -> tuple[int, int, int, int]:
    """``index/count/port/supervisor pid`` as passed by _start_worker."""
    index, count, port, parent = (int(part) for part in text.split("/"))
    return index, count, port, parent


def die_with_supervisor(parent: int) -> None:
    """Ask for SIGTERM when the supervisor dies (Linux), in case it is killed outright."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: watch_supervisor still notices within a second
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # it died before prctl took effect


async def watch_supervisor(parent: int, stop: asyncio.Event) -> None:
    """Stop this worker when its supervisor is gone (re-parented to init or a subreaper)."""
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("supervisor pid %d is gone; worker stopping", parent)
            stop.set()
            return
        await asyncio.sleep(1.0)
