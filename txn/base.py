"""The BASE (compensating) transaction mode's pure core, in one import for the runner.

Nothing here does I/O: every function returns SQL (``Statement(sql, params)``, or plain text
where noted) or reads rows the runner fetched. The modules, one job each:

* ``txn.values``   — column values: tagged JSON form, text-protocol decoding, exact equality;
* ``txn.sqltext``  — ``Statement``, identifier quoting, literals (``Statement.inline()``);
* ``txn.images``   — ``TableMeta``/``RowImage``/``TableImage``/``UndoRecord`` and their JSON;
* ``txn.meta``     — ``TableMeta`` from information_schema;
* ``txn.snapshot`` — before/after image SQL for one DML statement, and what is refused;
* ``txn.reverse``  — compensation SQL and the 'version' conflict check;
* ``txn.undo_log`` — the per-data-source undo log table (header / records / tombstone);
* ``txn.global_log`` — the coordinator's global transaction table and status transitions;
* ``txn.global_lock`` — global row locks for the 'record_lock' isolation.

Lifecycle of a global transaction (runner's side; the details are in each module):

1. begin: ``global_log.insert(xid, [])`` (status begun) on the log data source;
2. first statement on a data source: BEGIN there, ``undo_log.insert_header``, add the
   participant (``global_log.set_participants``);
3. each DML: capture images and run it as ``snapshot`` describes, then
   ``undo_log.insert_record`` (seq 1, 2, ...); with 'record_lock' also ``global_lock.acquire``;
4. client COMMIT: ``set_status(committing)``; COMMIT every branch. All committed:
   ``set_status(committed)``, then (may be lazy) ``undo_log.delete_branch`` and
   ``global_lock.release`` per participant and ``global_log.delete``. A branch failed:
   ``set_status(rolling_back)`` and undo the committed ones as ``undo_log`` describes
   (``reverse`` for the statements); ``rolled_back`` when all are undone, or
   ``needs_attention`` with the conflicts' ``describe()`` as detail;
5. client ROLLBACK before COMMIT: plain ROLLBACK of every branch (their undo rows vanish
   with them), ``set_status(rolling_back)`` then ``rolled_back``;
6. recovery at start: ``global_log.select_unfinished`` — committing/rolling_back rows are
   rolled back branch by branch from the undo logs (committed ones only need clean-up).

Session requirements on every branch connection, for images to be exact and undo safe:
``SET time_zone = '+00:00'`` (TIMESTAMP text is zone-dependent), character set utf8mb4,
the same sql_mode for the undo as for the original statement (zero dates, NO_AUTO_VALUE_ON_ZERO),
InnoDB tables, ``innodb_autoinc_lock_mode`` 0 or 1 (``snapshot.check_autoinc_settings``).
Not compensated: trigger side effects, cascaded foreign-key actions, AUTO_INCREMENT counters.
"""

from __future__ import annotations

from .images import (
    ColumnMeta,
    RowImage,
    TableImage,
    TableMeta,
    UndoFormatError,
    UndoRecord,
    from_json,
    image_from_rows,
    to_json,
)
from .reverse import (
    Conflict,
    conflicts,
    current_image_sql,
    expected_image,
    record_keys,
    reverse_branch,
    reverse_record,
)
from .snapshot import (
    SnapshotError,
    UnsupportedStatement,
    after_image_sql,
    before_image_sql,
    check_affected,
    check_autoinc_settings,
    inserted_image,
    inserted_keys,
    restrict_to_keys,
    statement_kind,
    updated_image,
)
from .sqltext import Statement

__all__ = [
    "ColumnMeta", "Conflict", "RowImage", "SnapshotError", "Statement", "TableImage", "TableMeta",
    "UndoFormatError", "UndoRecord", "UnsupportedStatement", "after_image_sql", "before_image_sql",
    "check_affected", "check_autoinc_settings", "conflicts", "current_image_sql", "expected_image",
    "from_json", "image_from_rows", "inserted_image", "inserted_keys", "record_keys", "restrict_to_keys",
    "reverse_branch", "reverse_record", "statement_kind", "to_json", "updated_image",
]
