"""Cheap classification of statement text: what the sidecar itself must do with it.

This runs for every COM_QUERY, so it looks only at the first keyword and a few byte
patterns; no SQL parse. It answers: is this a statement the sidecar answers itself (USE,
SHOW DATABASES), does it change session state that must be replayed on other backend
connections (SET ...), or does it tie the session to its backend connection for good
(user variables, temporary tables, locks, cursors of text-protocol PREPARE).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, auto


class Kind(Enum):
    PASS = auto()             # relay to the backend as is
    USE = auto()              # change the logical database
    SHOW_DATABASES = auto()   # list the logical databases the user may use
    SELECT_DATABASE = auto()  # SELECT DATABASE(): the logical name, not the physical one
    PREVIEW = auto()          # PREVIEW <statement>: show the route units instead of running it
    ADMIN = auto()            # SHOW DBMESH ... / DBMESH ...: the sidecar's admin statements (admin.py)


@dataclass(frozen=True, slots=True)
class Statement:
    kind: Kind
    # USE: the database named
    database: str | None = None
    # a SET whose effect must be replayed on any backend connection the session borrows:
    # (key identifying what it sets, the statement text)
    session_set: tuple[str, str] | None = None
    # why the session must keep its backend connection from now on (None: it need not)
    pin_reason: str | None = None
    # a plain read a replica may serve (SELECT without locking clauses)
    read_only: bool = False
    # changes data: reads that follow it must see it (read-your-writes)
    writes: bool = False
    # a /* dbmesh:primary */ or /* dbmesh:replica=NAME */ hint in the statement
    route_hint: str | None = None
    # SHOW WARNINGS / SHOW ERRORS: about the previous statement, so on the same connection
    diagnostics: bool = False


PASS = Statement(Kind.PASS)
READ = Statement(Kind.PASS, read_only=True)
WRITE = Statement(Kind.PASS, writes=True)
DIAGNOSTICS = Statement(Kind.PASS, diagnostics=True)
ADMIN = Statement(Kind.ADMIN)
_DIAGNOSTICS = re.compile(rb"SHOW\s+(?:COUNT\s*\(\s*\*\s*\)\s+)?(?:WARNINGS|ERRORS)\b", re.I)

_LEADING = re.compile(rb"(?:\s+|/\*(?!!).*?\*/|(?:--\s|#)[^\n]*(?:\n|$))*", re.S)
_WORD = re.compile(rb"[A-Za-z_]+")
_USER_VARIABLE = re.compile(rb"(?<![@\w])@(?!@)")
_PINNING_PATTERNS = (
    (re.compile(rb"\bCREATE\s+(?:OR\s+REPLACE\s+)?TEMPORARY\s", re.I), "temporary table"),
    (re.compile(rb"\bLOCK\s+TABLES?\b", re.I), "LOCK TABLES"),
    (re.compile(rb"\b(?:GET_LOCK|RELEASE_LOCK|IS_USED_LOCK)\s*\(", re.I), "named lock"),
    (re.compile(rb"\bSQL_CALC_FOUND_ROWS\b", re.I), "SQL_CALC_FOUND_ROWS"),
)
# Patterns anchored at the start of the text: only worth trying for these first keywords.
_PINNING_BY_KEYWORD = {
    b"PREPARE": (re.compile(rb"^\s*PREPARE\s", re.I), "SQL-level prepared statement"),
    b"EXECUTE": (re.compile(rb"^\s*EXECUTE\s", re.I), "SQL-level prepared statement"),
    b"DEALLOCATE": (re.compile(rb"^\s*DEALLOCATE\s", re.I), "SQL-level prepared statement"),
    b"HANDLER": (re.compile(rb"^\s*HANDLER\s", re.I), "HANDLER"),
}
# Every _PINNING_PATTERNS match contains TEMPORARY, LOCK or SQL_CALC_FOUND_ROWS, and every
# _LOCKING_READ match UPDATE, SHARE or FILE: substring tests on the upper-cased text rule
# the regexes out for almost every statement (this runs per COM_QUERY; written as `or`
# chains because a generator in any() costs more than the tests themselves, and with
# find() because `in` on bytes first tries its operand as an int, raising and clearing a
# TypeError).
_LOCKING_READ = re.compile(rb"\bFOR\s+UPDATE\b|\bLOCK\s+IN\s+SHARE\s+MODE\b|\bINTO\s+(?:OUT|DUMP)FILE\b", re.I)
# Quoted strings and identifiers, and comments (a versioned /*! one never gets this far):
# what the patterns above must not look into, or 'a@b.com' would read as a user variable.
# A doubled quote inside ('it''s') reads as two strings next to each other, just as blank.
# An unterminated one runs to the end (\Z): a text the server refuses anyway, and one pass over
# it however it is cut (without that, each quote of a long unterminated string would start
# a scan to the end).
_QUOTED_OR_COMMENT = re.compile(rb"'(?:[^'\\]|\\.)*(?:'|\Z)|\"(?:[^\"\\]|\\.)*(?:\"|\Z)|`[^`]*(?:`|\Z)"
                                rb"|/\*.*?(?:\*/|\Z)|(?:--\s|#)[^\n]*", re.S)


def _code(sql: bytes) -> bytes:
    """``sql`` with its quoted parts and comments blanked (only once a cheap substring test
    found something worth a second look)."""
    return _QUOTED_OR_COMMENT.sub(b" ", sql)


_ROUTE_HINT = re.compile(rb"/\*\+?\s*dbmesh:(primary|replica)(?:=([\w.-]+))?\s*\*/", re.I)
_WRITE_KEYWORDS = {b"INSERT", b"UPDATE", b"DELETE", b"REPLACE", b"CREATE", b"ALTER", b"DROP", b"TRUNCATE",
                   b"RENAME", b"CALL", b"LOAD", b"COMMIT", b"GRANT", b"REVOKE"}
_USE = re.compile(rb"USE\s+(`(?:[^`]|``)+`|[^\s;`]+)\s*;?\s*$", re.I | re.S)
_SHOW_DBMESH = re.compile(rb"SHOW\s+DBMESH\b", re.I)
_SHOW_DATABASES = re.compile(rb"SHOW\s+(?:DATABASES|SCHEMAS)\s*;?\s*$", re.I)
_SELECT_DATABASE = re.compile(rb"SELECT\s+(?:DATABASE|SCHEMA)\s*\(\s*\)\s*;?\s*$", re.I)
_SET_SIMPLE = re.compile(
    rb"SET\s+(?:(?:SESSION|LOCAL)\s+|@@(?:SESSION\.|LOCAL\.)?)?`?([A-Za-z_][\w]*)`?\s*(?::=|=)\s*"
    rb"(?:'[^']*'|\"[^\"]*\"|[^,;'\"]+)\s*;?\s*$", re.I | re.S)
_SET_NAMES = re.compile(rb"SET\s+(?:NAMES|CHARACTER\s+SET|CHARSET)\b", re.I)
_SET_TRANSACTION = re.compile(rb"SET\s+(?:(SESSION|GLOBAL)\s+)?TRANSACTION\b", re.I)
_SET_GLOBAL = re.compile(rb"SET\s+(?:GLOBAL\s|@@GLOBAL\.)", re.I)
# Settings the sidecar tracks from the server's status flags instead of replaying text.
TRACKED_BY_STATUS = {"autocommit"}


def leading_keyword(sql: bytes, start: int = 0) -> tuple[bytes, int]:
    """The first word after whitespace and comments (upper-cased), and where it starts."""
    end = start
    length = len(sql)
    while end < length and _is_word_byte(sql[end]):  # the usual case: the text starts with it
        end += 1
    if end > start:
        return sql[start:end].upper(), start
    leading = _LEADING.match(sql, start)
    pos = leading.end() if leading is not None else start  # (it matches the empty string too)
    word = _WORD.match(sql, pos)
    return (word.group(0).upper(), pos) if word else (b"", pos)


def _is_word_byte(c: int) -> bool:
    """A byte of _WORD (A-Z, a-z, _), tested without a regex match object (per statement)."""
    return 97 <= (c | 0x20) <= 122 or c == 95


def classify(sql: bytes) -> Statement:
    statement = _classify(sql)
    if sql.find(b"dbmesh:") >= 0:
        hint = _ROUTE_HINT.search(sql)
        if hint:
            target = hint.group(2).decode() if hint.group(2) else hint.group(1).decode().lower()
            return Statement(statement.kind, statement.database, statement.session_set, statement.pin_reason,
                             statement.read_only, statement.writes, target, statement.diagnostics)
    return statement


def _classify(sql: bytes) -> Statement:
    keyword, pos = leading_keyword(sql)
    if sql.find(b"/*!") >= 0:
        # Versioned comments hide executable SQL (mysqldump's SET @OLD_...); be conservative.
        return Statement(Kind.PASS, pin_reason="versioned comment")
    body = sql[pos:] if pos else sql
    if _is_admin(keyword, body):
        return ADMIN  # before the multi-statement split: admin.py refuses a second statement clearly
    if has_several_statements(sql, pos):
        return _classify_multi(sql)
    if keyword == b"SELECT":
        upper = sql.upper()
        if (upper.find(b"DATABASE") >= 0 or upper.find(b"SCHEMA") >= 0) and _SELECT_DATABASE.match(body):
            return Statement(Kind.SELECT_DATABASE)
        pinning = _pinning(sql, keyword, upper)
        if pinning:
            return pinning
        if (upper.find(b"UPDATE") >= 0 or upper.find(b"SHARE") >= 0 or upper.find(b"FILE") >= 0) \
                and _LOCKING_READ.search(_code(body)):
            return PASS
        return READ
    if keyword == b"USE":
        m = _USE.match(body)
        if m:
            name = m.group(1)
            if name.startswith(b"`"):
                name = name[1:-1].replace(b"``", b"`")
            return Statement(Kind.USE, database=name.decode("utf-8", "replace"))
        return PASS
    if keyword == b"PREVIEW":
        return Statement(Kind.PREVIEW)
    if keyword == b"SHOW" and _SHOW_DATABASES.match(body):
        return Statement(Kind.SHOW_DATABASES)
    if keyword == b"SHOW" and _DIAGNOSTICS.match(body):
        return DIAGNOSTICS
    if keyword == b"SET":
        return _classify_set(body)
    return _pinning(sql, keyword, sql.upper()) or (WRITE if keyword in _WRITE_KEYWORDS else PASS)


def _is_admin(keyword: bytes, body: bytes) -> bool:
    return keyword == b"DBMESH" or (keyword == b"SHOW" and _SHOW_DBMESH.match(body) is not None)


def is_admin(sql: bytes) -> bool:
    """SHOW DBMESH ... / DBMESH ...: one of the sidecar's admin statements (admin.py)."""
    keyword, pos = leading_keyword(sql)
    return _is_admin(keyword, sql[pos:])


def _pinning(sql: bytes, keyword: bytes, upper: bytes) -> Statement | None:
    """Why ``sql`` ties the session to its backend connection, if it does (``upper`` is
    ``sql.upper()``, ``keyword`` its first keyword)."""
    if sql.find(b"@") >= 0 and _USER_VARIABLE.search(_code(sql)):
        return Statement(Kind.PASS, pin_reason="user variable")
    if upper.find(b"LOCK") >= 0 or upper.find(b"TEMPORARY") >= 0 or upper.find(b"SQL_CALC_FOUND_ROWS") >= 0:
        code = _code(sql)
        for pattern, reason in _PINNING_PATTERNS:
            if pattern.search(code):
                return Statement(Kind.PASS, pin_reason=reason)
    anchored = _PINNING_BY_KEYWORD.get(keyword)
    if anchored is not None and anchored[0].search(sql):
        return Statement(Kind.PASS, pin_reason=anchored[1])
    return None


def _classify_set(body: bytes) -> Statement:
    if _SET_GLOBAL.match(body):
        return PASS
    if b"@" in body and _USER_VARIABLE.search(_code(body)):
        return Statement(Kind.PASS, pin_reason="user variable")
    text = body.decode("utf-8", "replace").strip().rstrip(";").strip()
    if _SET_NAMES.match(body):
        return Statement(Kind.PASS, session_set=("names", text))
    tx = _SET_TRANSACTION.match(body)
    if tx:
        if tx.group(1) and tx.group(1).upper() == b"SESSION":
            return Statement(Kind.PASS, session_set=("transaction", text))
        # Applies to the next transaction of this connection only.
        return Statement(Kind.PASS, pin_reason="SET TRANSACTION for the next transaction")
    m = _SET_SIMPLE.match(body)
    if m:
        name = m.group(1).lower()
        if name.decode() in TRACKED_BY_STATUS:
            return Statement(Kind.PASS, session_set=(name.decode(), text))
        return Statement(Kind.PASS, session_set=(name.decode(), text))
    # Several assignments in one SET: replay the text as a whole.
    return Statement(Kind.PASS, session_set=(text.lower(), text))


def _classify_multi(sql: bytes) -> Statement:
    """Multi-statement text: USE inside it cannot be followed; anything stateful pins."""
    for part in split_statements(sql):
        inner = classify(part)
        if inner.kind != Kind.PASS or inner.session_set or inner.pin_reason:
            return Statement(Kind.PASS, pin_reason="multi-statement text that changes session state")
    return PASS


def has_several_statements(sql: bytes, start: int = 0) -> bool:
    semi = sql.find(b";", start)
    if semi < 0 or not sql[semi + 1:].strip():
        return False
    return len(split_statements(sql)) > 1


def split_statements(sql: bytes) -> list[bytes]:
    """Split text at semicolons that are outside quotes and comments."""
    parts: list[bytes] = []
    start = 0
    i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c in b"'\"`":
            i = _skip_quoted(sql, i, c)
            continue
        if c == 0x2F and sql[i + 1:i + 2] == b"*":  # /* ... */
            end = sql.find(b"*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if c == 0x23 or (c == 0x2D and sql[i + 1:i + 2] == b"-" and sql[i + 2:i + 3] in (b" ", b"\t", b"\n")):
            end = sql.find(b"\n", i)
            i = n if end < 0 else end + 1
            continue
        if c == 0x3B:
            if sql[start:i].strip():
                parts.append(sql[start:i])
            start = i + 1
        i += 1
    if sql[start:].strip():
        parts.append(sql[start:])
    return parts


def _skip_quoted(sql: bytes, i: int, quote: int) -> int:
    n = len(sql)
    i += 1
    while i < n:
        c = sql[i]
        if c == 0x5C and quote != 0x60:  # backslash escape (not inside backticks)
            i += 2
            continue
        if c == quote:
            if sql[i + 1:i + 2] == bytes((quote,)):
                i += 2
                continue
            return i + 1
        i += 1
    return n
