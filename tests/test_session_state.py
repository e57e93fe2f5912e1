"""Per-client session state survives multiplexing over a tiny pool.

The proxy lends each client a backend connection per statement (or per transaction), so
with ``max_size: 2`` many clients take turns on the same two backend sessions. Whatever
a client set on its connection (character set, sql_mode, user variables, database,
autocommit, temporary tables, LAST_INSERT_ID) must follow it, and must never show up
in another client. Clients run in lock-step rounds (a barrier after each round) so their
statements interleave on the shared backend connections.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mysql.connector
import pymysql
import pytest

from conftest import Proxy, start_proxy, stop_proxy

POOL_SIZE = 2


@pytest.fixture(scope="module")
def ss_proxy(sandbox, sandbox_config: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    config = dict(sandbox_config)
    config["data_sources"] = {
        name: {**ds, "pool": {"max_size": POOL_SIZE, "acquire_timeout_s": 20}}
        for name, ds in sandbox_config["data_sources"].items()}
    _admin(sandbox, "ds_0", "demo",
           "DROP TABLE IF EXISTS ss_text", "DROP TABLE IF EXISTS ss_auto", "DROP TABLE IF EXISTS ss_tx",
           "CREATE TABLE ss_text (id INT PRIMARY KEY, name VARCHAR(50) CHARACTER SET utf8mb4 NOT NULL)",
           "INSERT INTO ss_text VALUES (1, 'café €'), (2, 'naïve 😀')",
           "CREATE TABLE ss_auto (id INT AUTO_INCREMENT PRIMARY KEY, client INT NOT NULL)",
           "CREATE TABLE ss_tx (id INT PRIMARY KEY, who VARCHAR(20) NOT NULL)")
    _admin(sandbox, "ds_1", "shop_ds_1", "DROP TABLE IF EXISTS ss_other",
           "CREATE TABLE ss_other (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL)",
           "INSERT INTO ss_other VALUES (1, 'on ds_1')")
    p = start_proxy(config, tmp_path_factory.mktemp("ss-proxy"))
    try:
        yield p
    finally:
        stop_proxy(p)
        log = p.log()
        assert "Traceback" not in log, log[-6000:]


def _admin(sandbox, instance: str, database: str, *statements: str) -> None:
    conn = sandbox.admin_connect(instance, database=database)
    try:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
    finally:
        conn.close()


class Clients:
    """Opens client connections for one test and closes every one of them afterwards, so a
    failing test cannot leave pinned sessions behind that starve the next tests."""

    def __init__(self, proxy: Proxy):
        self.proxy = proxy
        self.opened: list = []

    def pymysql(self, **kwargs: object) -> pymysql.Connection:
        conn = self.proxy.connect(**kwargs)
        self.opened.append(conn)
        return conn

    def connector(self, **kwargs: object) -> mysql.connector.MySQLConnection:
        options = {"host": self.proxy.host, "port": self.proxy.port, "user": "app", "password": "app",
                   "database": "demo", "use_pure": True, "autocommit": True, **kwargs}
        conn = mysql.connector.connect(**options)
        self.opened.append(conn)
        return conn

    def close_all(self) -> None:
        for conn in self.opened:
            with contextlib.suppress(Exception):
                conn.close()


@pytest.fixture
def clients(ss_proxy: Proxy) -> Iterator[Clients]:
    c = Clients(ss_proxy)
    try:
        yield c
    finally:
        c.close_all()


def user_variables(conn: pymysql.Connection) -> list[str]:
    """The user variables of the client's session, asked without naming one: a statement
    mentioning @var would tie the session to its backend connection for good."""
    with conn.cursor() as cur:
        cur.execute("SELECT VARIABLE_NAME FROM information_schema.USER_VARIABLES ORDER BY 1")
        return [r[0] for r in cur.fetchall()]


def lockstep(steps: list[Callable[[int], None]], rounds: int) -> None:
    """Run ``steps[i](round)`` for every client i in its own thread, round by round."""
    barrier = threading.Barrier(len(steps))

    def run(step: Callable[[int], None]) -> None:
        try:
            for r in range(rounds):
                step(r)
                barrier.wait(60)
        except threading.BrokenBarrierError:
            raise
        except BaseException:
            barrier.abort()  # the others stop at once instead of waiting for us
            raise

    with ThreadPoolExecutor(len(steps)) as pool:
        futures = [pool.submit(run, s) for s in steps]
    errors = [f.exception() for f in futures if f.exception() is not None]
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]


def one(conn: pymysql.Connection, sql: str, args: tuple = ()) -> object:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        row = cur.fetchone()
    return row[0] if row is not None and len(row) == 1 else row


def mysql_error(call: Callable[[], object]) -> int:
    with pytest.raises(pymysql.MySQLError) as info:
        call()
    return info.value.args[0]


def _scalar(conn: mysql.connector.MySQLConnection, sql: str) -> object:
    cur = conn.cursor()
    cur.execute(sql)
    row = cur.fetchone()
    cur.close()
    return row[0] if len(row) == 1 else row


# ---------------------------------------------------------------------------------------


def test_character_sets_per_client(clients: Clients) -> None:
    latin_handshake = clients.pymysql(charset="latin1")    # latin1 from the handshake on
    latin_later = clients.pymysql()                        # SET NAMES latin1 after login
    latin_later.set_character_set("latin1")
    utf_clients = [clients.pymysql() for _ in range(3)]
    switcher = clients.pymysql()                           # flips between the two

    def latin(conn: pymysql.Connection) -> Callable[[int], None]:
        def step(r: int) -> None:
            assert one(conn, "SELECT @@character_set_client, @@character_set_results") == ("latin1", "latin1")
            assert one(conn, "SELECT name FROM ss_text WHERE id = 1") == "café €"  # as cp1252 bytes
            assert one(conn, "SELECT name FROM ss_text WHERE id = 2") == "naïve ?"  # no emoji in latin1
            assert one(conn, "SELECT LENGTH(%s), %s", ("é€", "é€")) == (2, "é€")  # sent as latin1
        return step

    def utf8(conn: pymysql.Connection) -> Callable[[int], None]:
        def step(r: int) -> None:
            assert one(conn, "SELECT @@character_set_client, @@character_set_results") == ("utf8mb4", "utf8mb4")
            assert one(conn, "SELECT name FROM ss_text WHERE id = 1") == "café €"
            assert one(conn, "SELECT name FROM ss_text WHERE id = 2") == "naïve 😀"
            assert one(conn, "SELECT LENGTH(%s), %s", ("é€😀", "é€😀")) == (9, "é€😀")
        return step

    def switch(r: int) -> None:
        charset = "latin1" if r % 2 == 0 else "utf8mb4"
        switcher.set_character_set(charset)
        assert one(switcher, "SELECT @@character_set_results") == charset
        assert one(switcher, "SELECT name FROM ss_text WHERE id = 2") == ("naïve ?" if r % 2 == 0 else "naïve 😀")

    lockstep([latin(latin_handshake), latin(latin_later), *map(utf8, utf_clients), switch], rounds=8)


def test_set_statement_does_not_leak_through_the_pool(clients: Clients) -> None:
    """A SET is relayed, the connection goes back to the pool, and only then does the session
    record it: the pooled connection's record must say what it now has, or the next client
    with the old settings gets it without a resync (a bug found and fixed here)."""
    bystander = clients.pymysql()  # same settings as the setter had before its SET
    setter = clients.pymysql()
    default_mode = one(bystander, "SELECT @@SESSION.sql_mode")
    for sql, check, own, default in (
            ("SET SESSION sql_mode = 'ANSI_QUOTES'", "SELECT @@SESSION.sql_mode", "ANSI_QUOTES", default_mode),
            ("SET NAMES latin1", "SELECT @@character_set_results", "latin1", "utf8mb4"),
            ("SET SESSION time_zone = '+05:00'", "SELECT @@SESSION.time_zone", "+05:00", "SYSTEM")):
        with setter.cursor() as cur:
            cur.execute(sql)
        assert one(bystander, check) == default, sql  # right after: the same backend connection
        assert one(setter, check) == own, sql
        assert one(bystander, check) == default, sql


def test_sql_mode_does_not_leak(clients: Clients) -> None:
    ansi = clients.pymysql()
    with ansi.cursor() as cur:
        cur.execute("SET SESSION sql_mode = 'ANSI_QUOTES'")
    others = [clients.pymysql() for _ in range(4)]
    default_mode = one(others[0], "SELECT @@SESSION.sql_mode")
    assert "ANSI_QUOTES" not in default_mode

    def ansi_step(r: int) -> None:
        assert one(ansi, "SELECT @@SESSION.sql_mode") == "ANSI_QUOTES"
        assert one(ansi, 'SELECT "id" FROM ss_text WHERE id = 2') == 2  # a column name

    def other_step(conn: pymysql.Connection) -> Callable[[int], None]:
        def step(r: int) -> None:
            assert one(conn, "SELECT @@SESSION.sql_mode") == default_mode
            assert one(conn, 'SELECT "id" FROM ss_text WHERE id = 2') == "id"  # a string
        return step

    lockstep([ansi_step, *map(other_step, others)], rounds=8)


def test_user_variable_persists_for_its_client_only(clients: Clients) -> None:
    owner = clients.pymysql()
    with owner.cursor() as cur:
        cur.execute("SET @ss_var = 'mine'")  # pins one of the two backend connections
    others = [clients.pymysql() for _ in range(4)]  # take turns on the other one

    def owner_step(r: int) -> None:
        assert one(owner, "SELECT @ss_var") == "mine"
        with owner.cursor() as cur:
            cur.execute("SET @ss_count = COALESCE(@ss_count, 0) + 1")
        assert one(owner, "SELECT @ss_count") == r + 1
        assert user_variables(owner) == ["ss_count", "ss_var"]

    def other_step(conn: pymysql.Connection) -> Callable[[int], None]:
        def step(r: int) -> None:
            assert user_variables(conn) == []
        return step

    lockstep([owner_step, *map(other_step, others)], rounds=8)
    owner.close()
    # Once the owner has gone, its backend connection is clean for everyone: two clients
    # holding transactions get both backend connections.
    holders = others[:POOL_SIZE]

    def hold(conn: pymysql.Connection) -> Callable[[int], None]:
        def step(r: int) -> None:
            if r == 0:
                conn.begin()
                assert user_variables(conn) == []
            else:
                conn.commit()
        return step

    lockstep([hold(c) for c in holders], rounds=2)


def test_use_other_database_then_queries(clients: Clients, sandbox) -> None:
    ports = {s.name: s.port for s in sandbox.info().shards}
    movers = [clients.pymysql() for _ in range(2)]
    stayers = [clients.pymysql() for _ in range(3)]

    def mover(conn: pymysql.Connection, via_init_db: bool) -> Callable[[int], None]:
        def step(r: int) -> None:
            target = "other" if r % 2 == 0 else "demo"
            if via_init_db:
                conn.select_db(target)  # COM_INIT_DB
            else:
                with conn.cursor() as cur:
                    cur.execute(f"USE {target}")
            assert one(conn, "SELECT DATABASE()") == target
            assert one(conn, "SELECT @@port") == ports["ds_1" if target == "other" else "ds_0"]
            if target == "other":
                assert one(conn, "SELECT v FROM ss_other WHERE id = 1") == "on ds_1"
                assert mysql_error(lambda: one(conn, "SELECT name FROM ss_text")) == 1146
            else:
                assert one(conn, "SELECT name FROM ss_text WHERE id = 1") == "café €"
        return step

    def stayer(conn: pymysql.Connection) -> Callable[[int], None]:
        def step(r: int) -> None:
            assert one(conn, "SELECT DATABASE(), @@port") == ("demo", ports["ds_0"])
            assert one(conn, "SELECT COUNT(*) FROM ss_text") == 2
        return step

    lockstep([mover(movers[0], False), mover(movers[1], True), *map(stayer, stayers)], rounds=6)


def test_autocommit_off_transactions(clients: Clients) -> None:
    manual = clients.pymysql()
    manual.autocommit(False)  # SET AUTOCOMMIT = 0
    readers = [clients.pymysql() for _ in range(3)]
    with readers[0].cursor() as cur:
        cur.execute("DELETE FROM ss_tx")

    def manual_step(r: int) -> None:
        if r % 2 == 1:
            manual.rollback()  # last round's insert, left open across the round
        assert one(manual, "SELECT @@autocommit") == 0
        with manual.cursor() as cur:
            cur.execute("INSERT INTO ss_tx VALUES (%s, 'manual')", (r,))
        assert one(manual, "SELECT COUNT(*) FROM ss_tx WHERE id = %s", (r,)) == 1
        if r % 2 == 1:
            manual.commit()

    def reader(conn: pymysql.Connection) -> Callable[[int], None]:
        def step(r: int) -> None:
            assert one(conn, "SELECT @@autocommit") == 1
            with conn.cursor() as cur:
                cur.execute("SELECT id FROM ss_tx ORDER BY id")
                seen = {row[0] for row in cur.fetchall()}
            # Only odd rounds commit. Never an uncommitted row; every row committed in an
            # earlier round (this round's commit may or may not have happened yet).
            assert seen <= set(range(1, r + 1, 2)) and seen >= set(range(1, r, 2)), (r, seen)
        return step

    lockstep([manual_step, *map(reader, readers)], rounds=8)
    manual.rollback()
    assert one(readers[0], "SELECT GROUP_CONCAT(id ORDER BY id) FROM ss_tx") == "1,3,5,7"
    assert one(manual, "SELECT @@autocommit") == 0


def test_reset_connection_clears_state(clients: Clients) -> None:
    conn = clients.connector()
    others = [clients.pymysql() for _ in range(3)]
    default_mode = one(others[0], "SELECT @@SESSION.sql_mode")

    def resetter(r: int) -> None:
        cur = conn.cursor()
        cur.execute("SET @ss_reset = %s", (r,))
        cur.execute("SET SESSION sql_mode = 'ANSI_QUOTES'")
        cur.execute("CREATE TEMPORARY TABLE ss_reset_tmp (x INT)")
        cur.execute("SET autocommit = 0")
        cur.close()
        assert _scalar(conn, "SELECT @ss_reset, @@sql_mode, @@autocommit") == (r, "ANSI_QUOTES", 0)
        conn.cmd_reset_connection()  # COM_RESET_CONNECTION
        assert _scalar(conn, "SELECT @@sql_mode, @@autocommit") == (default_mode, 1)
        assert _scalar(conn, "SELECT COUNT(*) FROM information_schema.USER_VARIABLES") == 0
        cur = conn.cursor()
        with pytest.raises(mysql.connector.Error) as info:
            cur.execute("SELECT * FROM ss_reset_tmp")
        assert info.value.errno == 1146
        cur.close()

    def other(c: pymysql.Connection) -> Callable[[int], None]:
        def step(r: int) -> None:
            assert one(c, "SELECT @@sql_mode, @@autocommit") == (default_mode, 1)
            assert user_variables(c) == []
        return step

    lockstep([resetter, *map(other, others)], rounds=6)


def test_change_user_to_another_configured_user(clients: Clients, sandbox_config: dict) -> None:
    conn = clients.connector()
    cur = conn.cursor()
    cur.execute("SET @ss_cu = 1")
    cur.execute("SHOW DATABASES")
    assert {r[0] for r in cur.fetchall()} == set(sandbox_config["databases"])
    cur.close()

    conn.cmd_change_user(username="limited", password="limited-pw", database="demo")  # COM_CHANGE_USER
    assert _scalar(conn, "SELECT DATABASE()") == "demo"
    assert _scalar(conn, "SELECT COUNT(*) FROM information_schema.USER_VARIABLES") == 0
    cur = conn.cursor()
    cur.execute("SHOW DATABASES")
    assert [r[0] for r in cur.fetchall()] == ["demo"]
    with pytest.raises(mysql.connector.Error) as info:
        cur.execute("USE other")
    assert info.value.errno == 1044 and "'limited'" in info.value.msg
    cur.execute("SELECT name FROM ss_text WHERE id = 1")
    assert cur.fetchall() == [("café €",)]
    cur.close()

    conn.cmd_change_user(username="app", password="app", database="other")
    assert _scalar(conn, "SELECT DATABASE()") == "other"
    assert _scalar(conn, "SELECT v FROM ss_other WHERE id = 1") == "on ds_1"

    with pytest.raises(mysql.connector.Error) as info:
        conn.cmd_change_user(username="app", password="wrong", database="demo")
    assert info.value.errno == 1045


def test_last_insert_id_under_concurrency(clients: Clients) -> None:
    n_clients, inserts = 8, 25
    conns = [clients.pymysql() for _ in range(n_clients)]

    def work(client: int) -> list[int]:
        ids = []
        with conns[client].cursor() as cur:
            for _ in range(inserts):
                cur.execute("INSERT INTO ss_auto (client) VALUES (%s)", (client,))
                new_id = cur.lastrowid
                cur.execute("SELECT LAST_INSERT_ID()")
                assert cur.fetchone() == (new_id,)
                cur.execute("SELECT client FROM ss_auto WHERE id = LAST_INSERT_ID()")
                assert cur.fetchone() == (client,)
                ids.append(new_id)
        conns[client].close()  # done: see the xfail test below for a client that idles instead
        return ids

    with ThreadPoolExecutor(n_clients) as pool:
        results = list(pool.map(work, range(n_clients)))
    assert len({i for ids in results for i in ids}) == n_clients * inserts

    # Two clients in lock-step: both insert, then both ask.
    a, b = clients.pymysql(), clients.pymysql()
    last: dict[int, int] = {}

    def step(conn: pymysql.Connection, n: int) -> Callable[[int], None]:
        def run(r: int) -> None:
            if r % 2 == 0:
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO ss_auto (client) VALUES (%s)", (100 + n,))
                    last[n] = cur.lastrowid
            else:
                assert one(conn, "SELECT LAST_INSERT_ID()") == last[n]
        return run

    lockstep([step(a, 0), step(b, 1)], rounds=10)


def test_idle_client_after_insert_releases_its_backend_connection(sandbox_config: dict,
                                                                  tmp_path: Path) -> None:
    config = dict(sandbox_config)
    config["data_sources"] = {**config["data_sources"], "demo_ds": {
        **config["data_sources"]["demo_ds"], "pool": {"max_size": 1, "acquire_timeout_s": 1}}}
    proxy = start_proxy(config, tmp_path)
    try:
        other = proxy.connect()  # logs in (SET NAMES) while the pool is free
        inserter = proxy.connect()
        with inserter.cursor() as cur:
            cur.execute("INSERT INTO ss_auto (client) VALUES (999)")  # ...then the client idles

        def other_gets_a_connection() -> bool:
            try:
                return one(other, "SELECT 1") == 1
            except pymysql.err.OperationalError as exc:
                assert exc.args[0] == 1040
                return False

        deadline = time.monotonic() + 6
        while not other_gets_a_connection():
            assert time.monotonic() < deadline, "the idle inserter still holds the only backend connection"
        inserter.close()
        other.close()
    finally:
        stop_proxy(proxy)


def test_temporary_table_persists_for_its_client(clients: Clients) -> None:
    owner = clients.pymysql()
    with owner.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE ss_tmp (x INT)")
    others = [clients.pymysql() for _ in range(3)]

    def owner_step(r: int) -> None:
        with owner.cursor() as cur:
            cur.execute("INSERT INTO ss_tmp VALUES (%s)", (r,))
            cur.execute("SELECT GROUP_CONCAT(x ORDER BY x) FROM ss_tmp")
            assert cur.fetchone() == (",".join(str(i) for i in range(r + 1)),)

    def other_step(conn: pymysql.Connection) -> Callable[[int], None]:
        def step(r: int) -> None:
            assert mysql_error(lambda: one(conn, "SELECT COUNT(*) FROM ss_tmp")) == 1146
        return step

    lockstep([owner_step, *map(other_step, others)], rounds=6)
    owner.close()
    # Both backend connections at once (two open transactions): the table is gone from both.
    holders = others[:POOL_SIZE]

    def check(conn: pymysql.Connection) -> Callable[[int], None]:
        def step(r: int) -> None:
            if r == 0:
                conn.begin()
                assert mysql_error(lambda: one(conn, "SELECT COUNT(*) FROM ss_tmp")) == 1146
            else:
                conn.commit()
        return step

    lockstep([check(c) for c in holders], rounds=2)


def test_prepared_statements_survive_multiplexing(clients: Clients) -> None:
    """Server-side prepared statements follow their client onto whichever backend it gets."""
    prepared = [clients.connector() for _ in range(2)]
    plain = [clients.pymysql() for _ in range(2)]

    def ps(conn: mysql.connector.MySQLConnection, n: int) -> Callable[[int], None]:
        cur = conn.cursor(prepared=True)

        def step(r: int) -> None:
            cur.execute("SELECT name, ? + ? FROM ss_text WHERE id = ?", (n, r, 1 + (r % 2)))
            assert cur.fetchall() == [("café €" if r % 2 == 0 else "naïve 😀", n + r)]
        return step

    def text(conn: pymysql.Connection) -> Callable[[int], None]:
        def step(r: int) -> None:
            assert one(conn, "SELECT %s", (r,)) == r
        return step

    lockstep([ps(prepared[0], 10), ps(prepared[1], 20), *map(text, plain)], rounds=8)
