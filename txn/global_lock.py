"""Global row locks for the ``record_lock`` isolation of the BASE mode.

A branch's local commit releases its row locks long before its global transaction ends;
until then another global transaction could change the same rows and make their undo
unsafe. With ``record_lock``, a global transaction holds a global lock on every row it
changes, from before its local commit until its global commit or rollback is finished.

A lock is a row of ``dbmesh_global_lock`` on the data source that holds the locked row,
keyed by (table, hash of the primary key's canonical text). Protocol for the runner:

* after a DML statement, take ``pk_text`` of every row of its images (always from the
  images, which hold the keys as stored — never from the statement's literals: under a
  case-insensitive collation 'A' and 'a' are the same row) and drop the texts this xid
  already holds (the runner remembers them);
* run ``acquire`` in the branch's local transaction: one multi-row INSERT, so it takes all
  of its keys or, on ER_DUP_ENTRY (1062), none of them. On 1062, ``holders`` says who
  holds what: keys held by this xid (e.g. after a sidecar restart) are dropped and the
  INSERT retried at once; keys held by others mean wait and retry, up to the lock wait
  timeout — then fail the statement, which the client sees as a lock wait timeout. Note
  that the waiting branch keeps its local row locks meanwhile, which can block the other
  transaction's rollback: keep the timeout short;
* because the locks commit with the branch, a crash never leaves locks without a global
  transaction; ``release`` (by xid, on every participant) ends them when the global
  commit or rollback is finished.

``table_name`` should identify the table on its data source ("database.table") when
several databases share one lock table.

Why a hash in the key rather than the text: a composite utf8mb4 key's canonical text can be
longer than InnoDB's 3072-byte index limit, and the comparison must be byte-exact whatever
the server's default collation; SHA-256 of the text gives both. The text is kept for people.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from .images import RowImage, TableMeta
from .sqltext import Statement
from .values import key_component

GLOBAL_LOCK_TABLE = "dbmesh_global_lock"
ER_DUP_ENTRY = 1062

GLOBAL_LOCK_DDL = (
    f"CREATE TABLE IF NOT EXISTS {GLOBAL_LOCK_TABLE} ("
    "table_name VARCHAR(192) NOT NULL, "
    "pk_hash BINARY(32) NOT NULL, "
    "pk_text TEXT NOT NULL, "
    "xid VARCHAR(128) NOT NULL, "
    "created DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
    "PRIMARY KEY (table_name, pk_hash), "
    "KEY idx_xid (xid)"
    ") ENGINE=InnoDB")


def pk_text(meta: TableMeta, row: RowImage) -> str:
    """Canonical text of a row's primary key: a JSON array of each key value's canonical
    text (``txn.values.key_component``), e.g. ``["42","EU"]``."""
    return json.dumps([key_component(row.values[k]) for k in meta.primary_key],
                      ensure_ascii=False, separators=(",", ":"))


def pk_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def acquire(xid: str, table_name: str, texts: Sequence[str]) -> Statement:
    """All-or-nothing: one INSERT of every key; ER_DUP_ENTRY means some key is held."""
    if not texts:
        raise ValueError("acquire needs at least one key")
    rows = ", ".join(["(%s, %s, %s, %s)"] * len(texts))
    params: list[Any] = []
    for text in texts:
        params += [table_name, pk_hash(text), text, xid]
    return Statement(f"INSERT INTO {GLOBAL_LOCK_TABLE} (table_name, pk_hash, pk_text, xid) VALUES {rows}",
                     tuple(params))


def holders(table_name: str, texts: Sequence[str]) -> Statement:
    """``(pk_text, xid)`` of the keys among ``texts`` that are held."""
    if not texts:
        raise ValueError("holders needs at least one key")
    return Statement(f"SELECT pk_text, xid FROM {GLOBAL_LOCK_TABLE} WHERE table_name = %s "
                     f"AND pk_hash IN ({', '.join(['%s'] * len(texts))})",
                     (table_name, *(pk_hash(t) for t in texts)))


def split_holders(rows: Iterable[Sequence[Any]], xid: str) -> tuple[set[str], dict[str, str]]:
    """From ``holders`` rows: (texts this xid holds, {text: other xid} for the rest)."""
    mine: set[str] = set()
    others: dict[str, str] = {}
    for text, holder in rows:
        text = text.decode("utf-8", "surrogateescape") if isinstance(text, bytes | bytearray) else text
        holder = holder.decode("utf-8") if isinstance(holder, bytes | bytearray) else holder
        if holder == xid:
            mine.add(text)
        else:
            others[text] = holder
    return mine, others


def release(*xids: str) -> Statement:
    """Every lock these global transactions hold on this data source."""
    return Statement(f"DELETE FROM {GLOBAL_LOCK_TABLE} WHERE xid IN ({', '.join(['%s'] * len(xids))})", xids)
