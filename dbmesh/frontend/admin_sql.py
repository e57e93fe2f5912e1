"""The grammar of the sidecar's admin statements (run by admin.py); no I/O.

    SHOW DBMESH TRANSACTIONS [WHERE <column> <op> '<text>' [AND ...]] [LIMIT <n>]
    DBMESH RETRY TRANSACTION '<xid>'
    DBMESH FORGET TRANSACTION '<xid>'

<column>: xid, mode, status, participants or detail; <op>: =, <>, !=, LIKE, NOT LIKE.
Keywords in any case, one statement per query, an optional trailing semicolon.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from txn import global_log, xa

from ..errors import ProxyError

ER_PARSE_ERROR = 1064
ER_WRONG_VALUE = 1525

FORMS = ("SHOW DBMESH TRANSACTIONS [WHERE status = 'needs_attention'] [LIMIT n]",
         "DBMESH RETRY TRANSACTION 'xid'", "DBMESH FORGET TRANSACTION 'xid'")
_XID_MAX = 128  # dbmesh_global_txn.xid is VARCHAR(128)
# BASE statuses, then those only XA transactions in doubt have.
_STATUSES = (*global_log.STATUSES, *(s for s in xa.LISTING_STATUSES if s not in global_log.STATUSES))


@dataclass(frozen=True)
class ShowTransactions:
    conditions: tuple[tuple[str, str, str], ...] = ()  # (column, operator, text), all must hold
    limit: int | None = None


@dataclass(frozen=True)
class RetryTransaction:
    xid: str


@dataclass(frozen=True)
class ForgetTransaction:
    xid: str


AdminStatement = ShowTransactions | RetryTransaction | ForgetTransaction

_TOKEN = re.compile(r"""
    (?P<space>\s+|/\*.*?\*/|(?:--\s|\#)[^\n]*)
  | (?P<string>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")
  | (?P<open>(?:['"]|/\*).*)  # a quote or comment left open, to the end: a token no rule takes
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>\d+)
  | (?P<op><>|!=|=)
  | (?P<semi>;)
  | (?P<other>.)
""", re.S | re.X)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    pos: int


def _tokens(sql: str) -> list[_Token]:
    found = []
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup or "other"
        if kind != "space":
            found.append(_Token(kind, m.group(), m.start()))
    return found


def _unquote(text: str) -> str:
    quote = text[0]
    body = text[1:-1].replace(quote * 2, quote)
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "0": "\0"}.get(m.group(1), m.group(1)), body)


class _Parser:
    def __init__(self, sql: str):
        self.sql = sql
        self.tokens = _tokens(sql)
        self.i = 0

    def error(self, expected: str) -> ProxyError:
        at = self.tokens[self.i].pos if self.i < len(self.tokens) else len(self.sql)
        near = self.sql[at:at + 80]
        return ProxyError(ER_PARSE_ERROR, "42000",
                          f"You have an error in your dbmesh admin statement near '{near}': expected {expected}. "
                          f"The admin statements are: {'; '.join(FORMS)}")

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def word(self, *choices: str) -> str | None:
        """The next token if it is one of these keywords (consumed), else None."""
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.upper() in choices:
            self.i += 1
            return token.text.upper()
        return None

    def expect_word(self, *choices: str) -> str:
        found = self.word(*choices)
        if found is None:
            raise self.error(" or ".join(choices))
        return found

    def string(self, what: str) -> str:
        token = self.peek()
        if token is None or token.kind != "string":
            raise self.error(f"{what} as a quoted string")
        self.i += 1
        return _unquote(token.text)

    def end(self) -> None:
        if self.peek() is not None and self.peek().kind == "semi":
            self.i += 1
        if self.peek() is not None:
            raise self.error("the end of the statement (one admin statement per query)")


def parse(sql: str) -> AdminStatement:
    """The admin statement in ``sql`` (its first word is SHOW or DBMESH); ProxyError 1064
    with the forms that exist when it is none of them."""
    p = _Parser(sql)
    if p.word("SHOW"):
        p.expect_word("DBMESH")
        p.expect_word("TRANSACTIONS")
        return _show(p)
    p.expect_word("DBMESH")
    verb = p.expect_word("RETRY", "FORGET")
    p.expect_word("TRANSACTION")
    xid = p.string("the global transaction's xid (see SHOW DBMESH TRANSACTIONS)")
    if not xid or len(xid) > _XID_MAX:
        raise ProxyError(ER_WRONG_VALUE, "HY000", f"Incorrect xid value: '{xid[:_XID_MAX]}'; a dbmesh xid has "
                                                  f"1 to {_XID_MAX} characters (see SHOW DBMESH TRANSACTIONS)")
    p.end()
    return RetryTransaction(xid) if verb == "RETRY" else ForgetTransaction(xid)


def _show(p: _Parser) -> ShowTransactions:
    conditions = []
    if p.word("WHERE"):
        while True:
            column = p.word(*(c.upper() for c in global_log.LISTING_COLUMNS))
            if column is None:
                raise p.error(f"a column to filter on ({', '.join(global_log.LISTING_COLUMNS)})")
            conditions.append(_condition(p, column.lower()))
            if not p.word("AND"):
                break
    limit = None
    if p.word("LIMIT"):
        token = p.peek()
        if token is None or token.kind != "number":
            raise p.error("a row count after LIMIT")
        p.i += 1
        limit = int(token.text)
    p.end()
    return ShowTransactions(tuple(conditions), limit)


def _condition(p: _Parser, column: str) -> tuple[str, str, str]:
    token = p.peek()
    if token is not None and token.kind == "op":
        p.i += 1
        operator = "=" if token.text == "=" else "<>"
    elif p.word("LIKE"):
        operator = "LIKE"
    elif p.word("NOT"):
        p.expect_word("LIKE")
        operator = "NOT LIKE"
    else:
        raise p.error(f"=, <>, LIKE or NOT LIKE after {column}")
    value = p.string(f"the {column} to compare with")
    if column == "status" and operator in ("=", "<>"):
        # A misspelt status would list nothing and look like all is well.
        if value.lower() not in _STATUSES:
            raise ProxyError(ER_WRONG_VALUE, "HY000",
                             f"Incorrect status value: '{value}'; a global transaction's status is one of "
                             f"{', '.join(_STATUSES)}")
        value = value.lower()
    return column, operator, value
