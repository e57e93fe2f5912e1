"""The processes under test: dbmesh proxies and HAProxy, each started by us and stopped by us."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
LISTEN_DEADLINE_S = 20.0
STOP_GRACE_S = 10.0
# Lines of a proxy log that mean something went wrong (Python logging levels, tracebacks).
_TROUBLE_MARKERS = (" ERROR ", " CRITICAL ", "Traceback", " WARNING ")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@dataclass
class Service:
    """A child process listening on ``port``, its output in ``log_path``."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    _log_offset: int = field(default=0, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; idempotent."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def new_trouble(self, limit: int = 40) -> list[str]:
        """Warning/error/traceback lines (with what follows a traceback) logged since the last call."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                chunk = log.read()
        except OSError:
            return []
        self._log_offset += len(chunk)
        return _trouble_lines(chunk.decode(errors="replace").splitlines(), limit)


def _trouble_lines(lines: list[str], limit: int) -> list[str]:
    picked: list[str] = []
    in_traceback = False
    for line in lines:
        if any(marker in line for marker in _TROUBLE_MARKERS):
            in_traceback = "Traceback" in line
            picked.append(line)
        elif in_traceback:
            picked.append(line)  # the traceback's frames, then its exception line ends it
            in_traceback = line.startswith(" ")
        if len(picked) >= limit:
            break
    return picked


def _wait_listening(service: Service) -> Service:
    deadline = time.monotonic() + LISTEN_DEADLINE_S
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited at start:\n{service.log_tail()}")
        try:
            socket.create_connection((HOST, service.port), timeout=0.5).close()
            return service
        except OSError:
            time.sleep(0.05)
    service.stop()
    raise RuntimeError(f"{service.name} did not listen within {LISTEN_DEADLINE_S:.0f}s:\n{service.log_tail()}")


def _spawn(name: str, cmd: list[str], port: int, workdir: Path, env: dict[str, str] | None = None) -> Service:
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        # A session of its own: Ctrl-C in the terminal reaches only the harness, which then
        # stops its children in order (and the run's last figures are not disturbed).
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, cwd=workdir, start_new_session=True)
    service = Service(name, port, process, log_path)
    try:
        return _wait_listening(service)
    except BaseException:  # also Ctrl-C while waiting: never leave the child behind
        service.stop()
        raise


def start_dbmesh(name: str, config: dict, workdir: Path, workers: int = 1, source: Path = ROOT) -> Service:
    """Write ``config`` with a free listen port and serve it with ``python -m dbmesh run``
    (``workers`` worker processes when more than 1) from the source tree ``source``."""
    port = free_port()
    config = {**config, "listen": {"host": HOST, "port": port}}
    if workers != 1:
        config["server"] = {"workers": workers}
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(source)}
    cmd = [sys.executable, "-m", "dbmesh", "run", "-c", str(config_path)]
    return _spawn(name, cmd, port, workdir, env)


def haproxy_config(listen_port: int, backend_host: str, backend_port: int, maxconn: int) -> str:
    """A plain TCP relay: one frontend, one backend server, no health checks."""
    return "\n".join([
        "global",
        f"    maxconn {maxconn}",
        "defaults",
        "    mode tcp",
        f"    maxconn {maxconn}",
        "    timeout connect 5s",
        "    timeout client 1h",
        "    timeout server 1h",
        "frontend mysql_in",
        f"    bind {HOST}:{listen_port}",
        "    default_backend mysql_out",
        "backend mysql_out",
        f"    server ds_0 {backend_host}:{backend_port} maxconn {maxconn}",
        "",
    ])


def start_haproxy(backend_host: str, backend_port: int, workdir: Path, maxconn: int = 4096) -> Service:
    """HAProxy in TCP mode in the foreground (``-db``), config generated in ``workdir``."""
    port = free_port()
    config_path = workdir / "haproxy.cfg"
    config_path.write_text(haproxy_config(port, backend_host, backend_port, maxconn))
    return _spawn("haproxy", ["haproxy", "-db", "-f", str(config_path)], port, workdir)


def start_python_relay(backend_host: str, backend_port: int, workdir: Path) -> Service:
    """python_relay.py: a 1:1 TCP relay on uvloop, the floor of any Python proxy."""
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).with_name("python_relay.py")), str(port), backend_host, str(backend_port)]
    return _spawn("python-relay", cmd, port, workdir)


def haproxy_version() -> str:
    done = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, check=False)
    return done.stdout.splitlines()[0] if done.stdout else "unknown"
