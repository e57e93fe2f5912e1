"""The cheap statement classification (dbmesh/frontend/statement.py), without servers."""

from __future__ import annotations

import pytest

from dbmesh.frontend.statement import Kind, classify


@pytest.mark.parametrize(("sql", "reason"), [
    (b"SELECT @x", "user variable"),
    (b"SELECT c FROM t WHERE id = @id", "user variable"),
    (b"SELECT 'it''s', @y", "user variable"),
    (b"SET @a = 1", "user variable"),
    (b"SELECT GET_LOCK('a', 1)", "named lock"),
    (b"LOCK TABLES t WRITE", "LOCK TABLES"),
    (b"CREATE TEMPORARY TABLE tmp (id INT)", "temporary table"),
    (b"SELECT SQL_CALC_FOUND_ROWS c FROM t LIMIT 1", "SQL_CALC_FOUND_ROWS"),
    (b"PREPARE s FROM 'SELECT 1'", "SQL-level prepared statement"),
])
def test_what_ties_a_session_to_its_connection(sql, reason):
    assert classify(sql).pin_reason == reason


@pytest.mark.parametrize("sql", [
    b"SELECT c FROM t WHERE email = 'a@b.com'",
    b'SELECT c FROM t WHERE email = "a@b.com"',
    b"SELECT `a@b` FROM t",
    b"SELECT c FROM t /* @x */ WHERE id = 1",
    b"SELECT c FROM t WHERE id = 1 -- @x",
    b"SELECT c FROM t WHERE note = 'a\\' @x'",
    b"SELECT c FROM t WHERE note = 'GET_LOCK(1)' OR note = 'LOCK TABLES t'",
    b"SELECT c FROM t WHERE note = 'SQL_CALC_FOUND_ROWS'",
])
def test_quoted_text_and_comments_pin_nothing(sql):
    """A literal, a quoted identifier or a comment that holds what the pin patterns look for
    is not that thing: on a sharded database such a statement would be refused."""
    statement = classify(sql)
    assert statement.kind is Kind.PASS and statement.pin_reason is None and statement.read_only


@pytest.mark.parametrize(("sql", "read_only"), [
    (b"SELECT c FROM t WHERE id = 1 FOR UPDATE", False),
    (b"SELECT c FROM t WHERE id = 1 LOCK IN SHARE MODE", False),
    (b"SELECT c FROM t WHERE note = 'FOR UPDATE'", True),
    (b"SELECT c FROM t WHERE note = 'x' /* FOR UPDATE */", True),
])
def test_locking_reads_are_read_from_the_code(sql, read_only):
    assert classify(sql).read_only is read_only


def test_a_set_with_an_at_sign_in_its_value_is_a_session_setting():
    statement = classify(b"SET sql_mode = 'a@b'")
    assert statement.pin_reason is None and statement.session_set == ("sql_mode", "SET sql_mode = 'a@b'")
