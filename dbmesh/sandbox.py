"""A local cluster of real MariaDB servers for development and tests.

``Sandbox(workdir).up(shards=2, replicas_per_shard=1)`` starts one primary per shard
(``ds_0``, ``ds_1``, ...) and its replicas (``ds_0_replica_0``, ...) using the Debian
``mariadbd`` binary, wires them with MariaDB GTID replication and creates the ``dbmesh``
user the proxy connects with. Every server listens on 127.0.0.1 on a free port and keeps
its datadir, socket, pid file and error log under ``workdir/<instance-name>/``.

This is a DEVELOPMENT sandbox: durability is traded for speed
(``innodb_flush_log_at_trx_commit=2``, ``sync_binlog=0``), so a crash of the machine may
lose the last second of commits. Never point it at data you care about.

The servers outlive the Python process that started them; their names, ports, paths and
pids are kept in ``workdir/sandbox.json`` so ``Sandbox.load(workdir).down()`` from another
process (e.g. ``dbmesh sandbox down``) can stop them. The system MariaDB (port 3306) is
never read, touched or signalled: we pass ``--no-defaults`` and only ever signal a pid
whose command line names one of our own datadirs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors
import yaml

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_WORKDIR = Path(".sandbox")
STATE_FILE = "sandbox.json"
TEMPLATE_DIR = "_template"
STATE_VERSION = 1

# Credentials created on every server (the proxy and tests connect over TCP with them).
APP_USER = "dbmesh"
APP_PASSWORD = "dbmesh"
REPL_USER = "repl"
REPL_PASSWORD = "repl"

# Ports we never hand out: the system server and the proxy's usual listen ports.
RESERVED_PORTS = frozenset({3306, 3307, 3308})
START_DEADLINE_S = 60.0
STOP_GRACE_S = 20.0
# AF_UNIX paths are limited to 108 bytes; keep a margin.
MAX_SOCKET_PATH = 100
SERVER_ID_BASE = 100

# Shared by mariadb-install-db and mariadbd so the template matches the servers.
# Small memory footprint: a laptop or CI runner starts several of these at once.
COMMON_SERVER_OPTIONS = (
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M",
    "--performance-schema=OFF",
    "--skip-name-resolve",
)

# Dev-sandbox speed settings: commits are not fsynced (see module docstring).
RUNTIME_SERVER_OPTIONS = (
    "--bind-address=" + HOST,
    "--max-connections=1000",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
    "--innodb-flush-log-at-trx-commit=2",
    "--sync-binlog=0",
    "--binlog-format=ROW",
    # Every server writes a binlog (and re-logs replicated events) so a replica can be
    # promoted in failover tests. Fixed file names keep restarts independent of hostname.
    "--log-bin=mariadb-bin",
    "--relay-log=relay-bin",
    "--log-slave-updates",
    # Notice a dead primary quickly (heartbeat is half of this).
    "--slave-net-timeout=10",
)


class SandboxError(RuntimeError):
    """The sandbox could not be installed, started, queried or stopped."""


# ---------------------------------------------------------------------------------------
# Binaries


def _find_binary(*names: str) -> str | None:
    """The first of ``names`` found in the Debian locations or on PATH."""
    for name in names:
        for directory in ("/usr/sbin", "/usr/bin"):
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        found = shutil.which(name)
        if found:
            return found
    return None


def _mariadbd() -> str | None:
    return _find_binary("mariadbd", "mysqld")


def _install_db() -> str | None:
    return _find_binary("mariadb-install-db", "mysql_install_db")


def ensure_mariadb_installed() -> str:
    """Return the path of ``mariadbd``, installing the Debian packages if it is missing."""
    found = _mariadbd()
    if found and _install_db():
        return found
    if os.geteuid() != 0:
        raise SandboxError("mariadbd is not installed and we are not root to install it; "
                           "run: apt-get install -y mariadb-server mariadb-client")
    log.info("mariadbd not found; installing mariadb-server and mariadb-client with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"],
                ["apt-get", "install", "-y", "mariadb-server", "mariadb-client"]):
        _run_checked(cmd, env=env, what="installing MariaDB")
    found = _mariadbd()
    if not found or not _install_db():
        raise SandboxError("apt-get finished but mariadbd / mariadb-install-db are still missing")
    return found


def _run_checked(cmd: list[str], what: str, env: Mapping[str, str] | None = None) -> None:
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise SandboxError(f"{what}: cannot run {cmd[0]}: {exc}") from exc
    if result.returncode != 0:
        tail = _tail_text(result.stdout + result.stderr)
        raise SandboxError(f"{what}: `{' '.join(cmd)}` exited with {result.returncode}:\n{tail}")


def _mariadbd_version(mariadbd: str) -> str:
    result = subprocess.run([mariadbd, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


# ---------------------------------------------------------------------------------------
# Small helpers


def _tail_text(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _tail_file(path: Path, lines: int = 30) -> str:
    try:
        return _tail_text(path.read_text(errors="replace"), lines)
    except OSError:
        return "(no log)"


def _free_port(taken: set[int]) -> int:
    """A port nobody listens on right now (the kernel picks it), not reserved nor taken."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        if port not in RESERVED_PORTS and port not in taken:
            taken.add(port)
            return port
    raise SandboxError("could not find a free TCP port on 127.0.0.1")


def socket_path_for(workdir: Path, name: str) -> Path:
    """Where instance ``name`` puts its unix socket.

    Inside its own directory when the path fits the AF_UNIX limit; otherwise (deep
    workdirs, e.g. pytest tmp dirs) in a short per-workdir directory under the temp dir.
    """
    preferred = workdir / name / "mariadbd.sock"
    if len(str(preferred)) <= MAX_SOCKET_PATH:
        return preferred
    return _short_socket_dir(workdir) / f"{name}.sock"


def _short_socket_dir(workdir: Path) -> Path:
    digest = hashlib.sha1(str(workdir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"dbmesh-{digest}"


def _quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def default_databases(shard_names: Sequence[str]) -> dict[str, list[str]]:
    """The physical databases ``up()`` creates: ``demo`` on the first shard, ``shop_<shard>`` on each."""
    result = {name: [f"shop_{name}"] for name in shard_names}
    if shard_names:
        result[shard_names[0]].insert(0, "demo")
    return result


# ---------------------------------------------------------------------------------------
# State


@dataclass
class Instance:
    """One mariadbd of the sandbox, as persisted in ``sandbox.json``."""

    name: str
    role: str  # "primary" | "replica"
    port: int
    server_id: int
    dir: str
    datadir: str
    socket: str
    pid_file: str
    error_log: str
    primary: str | None = None  # the primary a replica follows
    pid: int | None = None
    # /proc start time of ``pid``: tells our server apart from a later process reusing the pid.
    pid_start: int | None = None
    host: str = HOST

    @property
    def console_log(self) -> Path:
        # mariadbd's stdout/stderr: catches failures before the error log is opened.
        return Path(self.dir) / "console.log"

    @classmethod
    def plan(cls, workdir: Path, name: str, role: str, port: int, server_id: int,
             primary: str | None = None) -> Instance:
        base = workdir / name
        return cls(name=name, role=role, port=port, server_id=server_id, dir=str(base),
                   datadir=str(base / "data"), socket=str(socket_path_for(workdir, name)),
                   pid_file=str(base / "mariadbd.pid"), error_log=str(base / "error.log"),
                   primary=primary)


@dataclass(frozen=True)
class Endpoint:
    name: str
    host: str
    port: int


@dataclass(frozen=True)
class ShardInfo:
    """A primary and its replicas."""

    name: str
    host: str
    port: int
    replicas: tuple[Endpoint, ...]
    databases: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxInfo:
    workdir: Path
    shards: tuple[ShardInfo, ...]
    user: str = APP_USER
    password: str = APP_PASSWORD

    def shard(self, name: str) -> ShardInfo:
        for shard in self.shards:
            if shard.name == name:
                return shard
        raise KeyError(name)


# ---------------------------------------------------------------------------------------
# Processes


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of ``pid``, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is parenthesised and may hold spaces: split after the last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def _proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _is_our_server(inst: Instance) -> bool:
    """Is ``inst.pid`` still the live mariadbd we started for ``inst``?

    Guards against pid reuse: we must never signal another process (least of all the
    system MariaDB). The process start time recorded at spawn identifies it exactly; the
    command line is only a fallback, because it reads empty while a process execs or exits.
    """
    if not inst.pid:
        return False
    if not Path("/proc").is_dir():  # non-Linux: best effort
        try:
            os.kill(inst.pid, 0)
        except OSError:
            return False
        return True
    stat = _proc_stat(inst.pid)
    if stat is None or stat[0] in ("Z", "X"):  # gone, or a zombie nobody has reaped yet
        return False
    if inst.pid_start is not None:
        return stat[1] == inst.pid_start
    return f"--datadir={inst.datadir}" in _proc_cmdline(inst.pid)


def _server_args(mariadbd: str, inst: Instance) -> list[str]:
    args = [mariadbd, "--no-defaults"]  # must come first: never read the system my.cnf
    if os.geteuid() == 0:
        args.append("--user=root")
    args += [
        f"--datadir={inst.datadir}",
        f"--port={inst.port}",
        f"--socket={inst.socket}",
        f"--pid-file={inst.pid_file}",
        f"--log-error={inst.error_log}",
        f"--server-id={inst.server_id}",
        *COMMON_SERVER_OPTIONS,
        *RUNTIME_SERVER_OPTIONS,
    ]
    if inst.role == "replica":
        args.append("--read-only=ON")
    return args


def _bind_failed(inst: Instance) -> bool:
    text = _tail_file(Path(inst.error_log), 15) + _tail_file(inst.console_log, 15)
    return "Address already in use" in text or "Bind on TCP/IP port" in text


# ---------------------------------------------------------------------------------------
# The sandbox


class Sandbox:
    """A cluster of local MariaDB servers rooted at ``workdir``.

    Constructing it reads ``workdir/sandbox.json`` when present, so ``Sandbox(workdir).down()``
    stops servers started by another process.
    """

    def __init__(self, workdir: Path | str) -> None:
        self.workdir = Path(workdir).resolve()
        self.instances: dict[str, Instance] = {}
        self.databases: dict[str, list[str]] = {}
        # Child processes started by this object, so we can reap them (no zombies).
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        if self.state_path.exists():
            self._read_state()

    # ----- state ---------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.workdir / STATE_FILE

    @classmethod
    def load(cls, workdir: Path | str) -> Sandbox:
        sandbox = cls(workdir)
        if not sandbox.state_path.exists():
            raise SandboxError(f"no sandbox state at {sandbox.state_path}; run `up` first")
        return sandbox

    def _read_state(self) -> None:
        try:
            raw = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as exc:
            raise SandboxError(f"cannot read sandbox state {self.state_path}: {exc}") from exc
        if raw.get("version") != STATE_VERSION:
            raise SandboxError(f"{self.state_path}: unsupported state version {raw.get('version')!r}")
        self.instances = {d["name"]: Instance(**d) for d in raw["instances"]}
        self.databases = {k: list(v) for k, v in raw.get("databases", {}).items()}

    def _write_state(self) -> None:
        state = {
            "version": STATE_VERSION,
            "workdir": str(self.workdir),
            "host": HOST,
            "user": APP_USER,
            "password": APP_PASSWORD,
            "databases": self.databases,
            "instances": [asdict(inst) for inst in self.instances.values()],
        }
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_path)  # atomic: a concurrent reader never sees half a file

    def info(self) -> SandboxInfo:
        shards = []
        for inst in self._primaries():
            replicas = tuple(Endpoint(r.name, r.host, r.port) for r in self._replicas_of(inst.name))
            shards.append(ShardInfo(name=inst.name, host=inst.host, port=inst.port, replicas=replicas,
                                    databases=tuple(self.databases.get(inst.name, ()))))
        return SandboxInfo(workdir=self.workdir, shards=tuple(shards))

    def _primaries(self) -> list[Instance]:
        return [i for i in self.instances.values() if i.role == "primary"]

    def _replicas_of(self, primary: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.role == "replica" and i.primary == primary]

    def _get(self, name: str) -> Instance:
        try:
            return self.instances[name]
        except KeyError:
            raise SandboxError(f"no sandbox instance {name!r}; have {sorted(self.instances)}") from None

    # ----- up ------------------------------------------------------------------------

    def up(self, shards: int = 2, replicas_per_shard: int = 1,
           databases: Mapping[str, Sequence[str]] | None = None) -> SandboxInfo:
        """Start a fresh cluster: ``shards`` primaries, each with ``replicas_per_shard`` replicas.

        Data of an earlier, stopped sandbox in the same workdir is discarded; use
        ``start_instance`` to bring back a stopped server with its data instead.

        ``databases`` maps a primary name to the physical databases to create on it
        (default: :func:`default_databases`). They replicate to the primary's replicas.
        """
        if shards < 1 or replicas_per_shard < 0:
            raise ValueError("need shards >= 1 and replicas_per_shard >= 0")
        started = time.monotonic()
        mariadbd = ensure_mariadb_installed()
        self._refuse_if_running()
        self.workdir.mkdir(parents=True, exist_ok=True)
        template = self._ensure_template(mariadbd)
        self._plan(shards, replicas_per_shard)
        try:
            self._create_datadirs(template)
            self._start(mariadbd, list(self.instances.values()), allow_port_change=True)
            for inst in self.instances.values():
                self._create_users(inst)
            for inst in self.instances.values():
                if inst.role == "replica":
                    self._configure_replication(inst)
            names = [p.name for p in self._primaries()]
            self.create_databases(databases if databases is not None else default_databases(names))
        except BaseException:
            log.error("sandbox start failed; stopping what was started")
            self.down()
            raise
        log.info("sandbox up: %d primaries, %d replicas in %.1fs (%s)", shards,
                 shards * replicas_per_shard, time.monotonic() - started, self.workdir)
        return self.info()

    def _refuse_if_running(self) -> None:
        running = [i.name for i in self.instances.values() if self._alive(i)]
        if running:
            raise SandboxError(f"sandbox in {self.workdir} is already running ({', '.join(running)}); "
                               "call down() first")
        # Leftovers of a previous run that is no longer alive: start over.
        for inst in self.instances.values():
            shutil.rmtree(inst.dir, ignore_errors=True)
        self.instances = {}
        self.databases = {}

    def _plan(self, shards: int, replicas_per_shard: int) -> None:
        taken: set[int] = set()
        server_id = SERVER_ID_BASE
        for s in range(shards):
            primary = f"ds_{s}"
            server_id += 1
            self.instances[primary] = Instance.plan(self.workdir, primary, "primary",
                                                    _free_port(taken), server_id)
            for r in range(replicas_per_shard):
                name = f"{primary}_replica_{r}"
                server_id += 1
                self.instances[name] = Instance.plan(self.workdir, name, "replica",
                                                     _free_port(taken), server_id, primary=primary)

    def _ensure_template(self, mariadbd: str) -> Path:
        """A freshly initialised datadir, built once and copied for each instance.

        Rebuilt when the mariadbd version changes, since an old template would need an upgrade.
        """
        root = self.workdir / TEMPLATE_DIR
        data, marker = root / "data", root / "version"
        version = _mariadbd_version(mariadbd)
        if data.is_dir() and marker.is_file() and marker.read_text() == version:
            log.info("reusing datadir template %s", data)
            return data
        install_db = _install_db()
        if install_db is None:
            raise SandboxError("mariadb-install-db not found")
        shutil.rmtree(root, ignore_errors=True)
        building = self.workdir / (TEMPLATE_DIR + ".building")
        shutil.rmtree(building, ignore_errors=True)
        log.info("creating datadir template with %s", install_db)
        cmd = [install_db, "--no-defaults", f"--datadir={building / 'data'}", "--skip-test-db",
               "--auth-root-authentication-method=socket", *COMMON_SERVER_OPTIONS]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        _run_checked(cmd, what="initialising the datadir template")
        (building / "version").write_text(version)
        os.replace(building, root)  # a half-built template is never mistaken for a good one
        return data

    def _create_datadirs(self, template: Path) -> None:
        def copy(inst: Instance) -> None:
            if Path(inst.dir).exists():
                log.warning("removing leftover directory %s", inst.dir)
                shutil.rmtree(inst.dir)
            Path(inst.dir).mkdir(parents=True)
            Path(inst.socket).parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(template, inst.datadir, symlinks=True)

        # Copying is I/O-bound; in parallel it takes about half the time.
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(copy, self.instances.values()))
        log.info("copied datadir template for %d instances", len(self.instances))

    # ----- start / stop ------------------------------------------------------------------

    def _spawn(self, mariadbd: str, inst: Instance) -> None:
        Path(inst.error_log).unlink(missing_ok=True)  # so failure diagnosis reads this run only
        with open(inst.console_log, "wb") as console:
            # A new session: Ctrl-C in the terminal that ran `dbmesh sandbox up` must not
            # kill the servers.
            proc = subprocess.Popen(_server_args(mariadbd, inst), stdin=subprocess.DEVNULL,
                                    stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
        self._procs[inst.name] = proc
        inst.pid = proc.pid
        stat = _proc_stat(proc.pid)
        inst.pid_start = stat[1] if stat else None
        log.info("started %s (%s) pid %d port %d", inst.name, inst.role, proc.pid, inst.port)

    def _start(self, mariadbd: str, instances: list[Instance], allow_port_change: bool) -> None:
        """Start ``instances`` in parallel and wait until each accepts connections."""
        for inst in instances:
            self._spawn(mariadbd, inst)
        self._write_state()  # pids on disk early so a separate `down` can clean up a failed start
        deadline = time.monotonic() + START_DEADLINE_S
        pending = list(instances)
        retries = {inst.name: 0 for inst in instances}
        while pending:
            for inst in list(pending):
                if self._ready(inst):
                    log.info("%s ready on %s:%d", inst.name, inst.host, inst.port)
                    pending.remove(inst)
                elif not self._alive(inst):
                    if allow_port_change and _bind_failed(inst) and retries[inst.name] < 3:
                        retries[inst.name] += 1
                        self._retry_on_new_port(mariadbd, inst)
                        continue
                    raise SandboxError(self._start_failure(inst, "exited during startup"))
            if pending and time.monotonic() > deadline:
                raise SandboxError(self._start_failure(pending[0], f"not ready after {START_DEADLINE_S:.0f}s"))
            if pending:
                time.sleep(0.05)
        self._write_state()

    def _retry_on_new_port(self, mariadbd: str, inst: Instance) -> None:
        # Someone grabbed the port between our probe and mariadbd's bind.
        taken = {i.port for i in self.instances.values()}
        old = inst.port
        inst.port = _free_port(taken)
        log.warning("%s could not bind port %d; retrying on %d", inst.name, old, inst.port)
        self._spawn(mariadbd, inst)

    def _start_failure(self, inst: Instance, what: str) -> str:
        return (f"MariaDB instance {inst.name} (port {inst.port}) {what}.\n"
                f"--- tail of {inst.error_log} ---\n{_tail_file(Path(inst.error_log))}\n"
                f"--- tail of {inst.console_log} ---\n{_tail_file(inst.console_log)}")

    def _ready(self, inst: Instance) -> bool:
        if not Path(inst.socket).exists():
            return False
        try:
            self.admin_connect(inst.name, connect_timeout=1).close()
        except pymysql.MySQLError:
            return False
        return True

    def _alive(self, inst: Instance) -> bool:
        proc = self._procs.get(inst.name)
        if proc is not None and proc.pid == inst.pid:
            return proc.poll() is None  # our own child: authoritative, and reaps it
        return _is_our_server(inst)

    def down(self, purge: bool = False) -> None:
        """Stop every server of this sandbox (idempotent); ``purge`` also deletes their data."""
        self._stop(list(self.instances.values()))
        if purge:
            for inst in self.instances.values():
                shutil.rmtree(inst.dir, ignore_errors=True)
            shutil.rmtree(_short_socket_dir(self.workdir), ignore_errors=True)
            self.state_path.unlink(missing_ok=True)
            self.instances = {}
            self.databases = {}
            log.info("sandbox purged (%s)", self.workdir)
        elif self.instances:
            self._write_state()
        log.info("sandbox down (%s)", self.workdir)

    def _stop(self, instances: list[Instance], grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM (mariadbd's clean shutdown), then SIGKILL whatever outlives ``grace_s``."""
        running = [i for i in instances if self._alive(i)]
        for inst in running:
            log.info("stopping %s pid %d", inst.name, inst.pid)
            self._signal(inst, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while running and time.monotonic() < deadline:
            running = [i for i in running if self._alive(i)]
            if running:
                time.sleep(0.05)
        for inst in running:
            log.warning("%s did not stop within %.0fs; killing pid %d", inst.name, grace_s, inst.pid)
            self._signal(inst, signal.SIGKILL)
        kill_deadline = time.monotonic() + 5
        while any(self._alive(i) for i in running) and time.monotonic() < kill_deadline:
            time.sleep(0.05)
        for inst in instances:
            if not self._alive(inst):
                inst.pid = inst.pid_start = None
                self._procs.pop(inst.name, None)

    def _signal(self, inst: Instance, sig: signal.Signals) -> None:
        if not self._alive(inst):
            return  # re-checked right before signalling: never hit a reused pid
        try:
            os.kill(inst.pid, sig)
        except ProcessLookupError:
            pass

    def stop_instance(self, name: str, grace_s: float = STOP_GRACE_S) -> None:
        """Stop one server; its datadir, port and replication settings are kept."""
        self._stop([self._get(name)], grace_s)
        self._write_state()

    def start_instance(self, name: str) -> None:
        """Restart one stopped server with the same port and datadir.

        A replica resumes replication by itself (its master info and GTID position persist).
        """
        inst = self._get(name)
        if self._alive(inst):
            log.info("%s already running (pid %s)", name, inst.pid)
            return
        self._start(ensure_mariadb_installed(), [inst], allow_port_change=False)

    # ----- SQL administration --------------------------------------------------------------

    def admin_connect(self, name: str, database: str | None = None, connect_timeout: float = 5,
                      **kwargs: Any) -> pymysql.connections.Connection:
        """A root connection over the instance's unix socket, autocommit on.

        Extra keyword arguments go to ``pymysql.connect`` (e.g. ``cursorclass``).
        """
        inst = self._get(name)
        return pymysql.connect(unix_socket=inst.socket, user="root", database=database,
                               autocommit=True, connect_timeout=connect_timeout,
                               charset="utf8mb4", **kwargs)

    def _execute(self, name: str, statements: Iterable[str]) -> None:
        conn = self.admin_connect(name)
        try:
            with conn.cursor() as cur:
                for sql in statements:
                    cur.execute(sql)
        finally:
            conn.close()

    def _query(self, name: str, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        conn = self.admin_connect(name, connect_timeout=2)
        try:
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def _create_users(self, inst: Instance) -> None:
        # sql_log_bin=0: users exist on every server independently, so nothing is in the
        # binlogs and replicas start from an empty GTID position.
        stmts = ["SET SESSION sql_log_bin = 0"]
        for host in ("%", "127.0.0.1", "localhost"):
            account = f"'{APP_USER}'@'{host}'"
            stmts += [f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{APP_PASSWORD}'",
                      f"GRANT ALL PRIVILEGES ON *.* TO {account} WITH GRANT OPTION"]
            if inst.role == "replica":
                # ALL includes READ_ONLY ADMIN, which would let the proxy's user write to a
                # read_only replica; take it away so a misrouted write fails loudly.
                stmts.append(f"REVOKE READ_ONLY ADMIN ON *.* FROM {account}")
        stmts += [f"CREATE USER IF NOT EXISTS '{REPL_USER}'@'%' IDENTIFIED BY '{REPL_PASSWORD}'",
                  f"GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'%'"]
        self._execute(inst.name, stmts)
        log.info("created users on %s", inst.name)

    def _configure_replication(self, inst: Instance) -> None:
        primary = self._get(inst.primary or "")
        self._execute(inst.name, [
            "CHANGE MASTER TO "
            f"MASTER_HOST='{primary.host}', MASTER_PORT={primary.port}, "
            f"MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', "
            "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
            "START SLAVE",
        ])
        log.info("%s replicating from %s (port %d)", inst.name, primary.name, primary.port)

    def stop_replication(self, name: str) -> None:
        """Stop applying events on a replica (the IO thread keeps fetching, so lag builds up)."""
        self._execute(self._replica(name).name, ["STOP SLAVE SQL_THREAD"])
        log.info("stopped replication SQL thread on %s", name)

    def start_replication(self, name: str) -> None:
        self._execute(self._replica(name).name, ["START SLAVE"])
        log.info("started replication on %s", name)

    def _replica(self, name: str) -> Instance:
        inst = self._get(name)
        if inst.role != "replica":
            raise SandboxError(f"{name} is a {inst.role}, not a replica")
        return inst

    def create_databases(self, databases: Mapping[str, Iterable[str]], sync: bool = True) -> None:
        """Create databases on primaries (``{primary name: [db, ...]}``); they replicate.

        With ``sync`` wait until every replica has them too.
        """
        for primary, names in databases.items():
            if self._get(primary).role != "primary":
                raise SandboxError(f"{primary} is not a primary")
            names = list(names)
            self._execute(primary, [f"CREATE DATABASE IF NOT EXISTS {_quote_ident(db)} "
                                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci" for db in names])
            known = self.databases.setdefault(primary, [])
            known += [db for db in names if db not in known]
            log.info("created databases %s on %s", ", ".join(names), primary)
        self._write_state()
        if sync:
            self.sync_replicas()

    def sync_replicas(self, timeout: float = 10.0) -> None:
        """Wait until every running replica has applied everything its primary has binlogged."""
        for inst in self.instances.values():
            if inst.role != "replica" or not self._alive(inst):
                continue
            primary = self._get(inst.primary or "")
            if not self._alive(primary):
                continue
            pos = self._query(primary.name, "SELECT @@gtid_binlog_pos AS pos")[0]["pos"]
            if not pos:
                continue
            waited = self._query(inst.name, "SELECT MASTER_GTID_WAIT(%s, %s) AS r", (pos, timeout))[0]["r"]
            if waited != 0:
                raise SandboxError(f"{inst.name} did not reach {primary.name}'s GTID {pos} "
                                   f"within {timeout}s")

    # ----- status ---------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """One dict per instance: name, role, host, port, pid, alive, and replication state."""
        return [self._instance_status(inst) for inst in self.instances.values()]

    def _instance_status(self, inst: Instance) -> dict[str, Any]:
        alive = self._alive(inst)
        row: dict[str, Any] = {"name": inst.name, "role": inst.role, "host": inst.host,
                               "port": inst.port, "pid": inst.pid if alive else None, "alive": alive}
        if inst.role == "replica":
            row.update(replicating_from=inst.primary, Slave_IO_Running=None, Slave_SQL_Running=None,
                       Seconds_Behind_Master=None, Gtid_IO_Pos=None, Last_Error=None)
            if alive:
                row.update(self._replica_status(inst))
        return row

    def _replica_status(self, inst: Instance) -> dict[str, Any]:
        try:
            rows = self._query(inst.name, "SHOW SLAVE STATUS")
        except pymysql.MySQLError as exc:
            return {"Last_Error": f"cannot query: {exc}"}
        if not rows:
            return {}
        s = rows[0]
        return {
            "Slave_IO_Running": s.get("Slave_IO_Running"),
            "Slave_SQL_Running": s.get("Slave_SQL_Running"),
            "Seconds_Behind_Master": s.get("Seconds_Behind_Master"),
            "Gtid_IO_Pos": s.get("Gtid_IO_Pos"),
            "Last_Error": s.get("Last_IO_Error") or s.get("Last_SQL_Error") or None,
        }


# ---------------------------------------------------------------------------------------
# Proxy configuration


def write_config(info: SandboxInfo, path: Path | str, listen_port: int = 3307,
                 listen_host: str = HOST, app_user: str = "app", app_password: str = "app") -> Path:
    """Write a dbmesh YAML config (see dbmesh/config.py) that fronts the sandbox.

    ``demo_ds`` is the first shard's primary with database ``demo``; ``ds_<i>`` is shard i
    with database ``shop_ds_<i>`` (the databases ``up()`` creates by default).
    """
    if not info.shards:
        raise SandboxError("the sandbox has no shards")
    first = info.shards[0]
    data_sources = {"demo_ds": _data_source(info, first, "demo")}
    for shard in info.shards:
        data_sources[shard.name] = _data_source(info, shard, f"shop_{shard.name}")
    config = {
        "listen": {"host": listen_host, "port": listen_port},
        "users": [{"name": app_user, "password": app_password, "databases": ["*"]}],
        "default_data_source": "demo_ds",
        "data_sources": data_sources,
        "databases": {"demo": {"data_source": "demo_ds"}},
    }
    if len(info.shards) >= 2:
        config["databases"]["shop"] = {"sharding": shop_sharding_rules([s.name for s in info.shards])}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Generated by dbmesh.sandbox for the sandbox in {info.workdir}\n"
    out.write_text(header + yaml.safe_dump(config, sort_keys=False))
    log.info("wrote sandbox config %s", out)
    return out


def shop_sharding_rules(shards: Sequence[str]) -> dict[str, Any]:
    """The sandbox's sharded example: orders and their items split by user over the shard
    data sources and by order over two tables in each; a broadcast dictionary table."""
    last = len(shards) - 1
    return {
        "data_sources": list(shards),
        "default_data_source": shards[0],
        "tables": {
            "t_order": {
                "actual_data_nodes": f"ds_${{0..{last}}}.t_order_${{0..1}}",
                "database_strategy": {"columns": ["user_id"], "algorithm": "by_user"},
                "table_strategy": {"columns": ["order_id"], "algorithm": "by_order"},
                "key_generator": {"column": "order_id", "algorithm": "snowflake"},
            },
            "t_order_item": {
                "actual_data_nodes": f"ds_${{0..{last}}}.t_order_item_${{0..1}}",
                "database_strategy": {"columns": ["user_id"], "algorithm": "by_user"},
                "table_strategy": {"columns": ["order_id"], "algorithm": "by_order"},
            },
        },
        "binding_tables": [["t_order", "t_order_item"]],
        "broadcast_tables": ["t_dict"],
        "algorithms": {
            "by_user": {"type": "MOD", "props": {"sharding_count": len(shards)}},
            "by_order": {"type": "MOD", "props": {"sharding_count": 2}},
        },
        "key_generators": {"snowflake": {"type": "SNOWFLAKE", "props": {"worker_id": 1}}},
    }


def _data_source(info: SandboxInfo, shard: ShardInfo, database: str) -> dict[str, Any]:
    return {
        "host": shard.host,
        "port": shard.port,
        "user": info.user,
        "password": info.password,
        "database": database,
        "replicas": [{"name": r.name, "host": r.host, "port": r.port} for r in shard.replicas],
    }
