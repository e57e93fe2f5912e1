"""Basic pass-through through the proxy: login, statements, errors."""

import pymysql
import pytest


def test_select_and_show_databases(proxy):
    with proxy.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 + 1, 'é😀'")
        assert cur.fetchall() == ((2, "é😀"),)
        cur.execute("SHOW DATABASES")
        assert {r[0] for r in cur.fetchall()} == {"demo", "other", "shop"}
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == ("demo",)


def test_wrong_password_is_1045(proxy):
    with pytest.raises(pymysql.err.OperationalError) as info:
        proxy.connect(password="wrong")
    assert info.value.args[0] == 1045


def test_unknown_and_forbidden_database(proxy):
    with pytest.raises(pymysql.err.OperationalError) as info:
        proxy.connect(database="nope")
    assert info.value.args[0] == 1049
    with pytest.raises(pymysql.err.OperationalError) as info:
        proxy.connect(user="limited", password="limited-pw", database="other")
    assert info.value.args[0] == 1044
    with proxy.connect(user="limited", password="limited-pw") as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as info:
            cur.execute("USE other")
        assert info.value.args[0] == 1044
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_syntax_error_relayed(proxy):
    with proxy.connect() as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.ProgrammingError) as info:
            cur.execute("SELEC 1")
        assert info.value.args[0] == 1064
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
