"""The BASE (compensating) transaction mode's pure core, in one import.

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

The I/O side: ``txn.base_branch`` (one DML with its images on a branch connection),
``txn.base_coordinator`` (a session's global transaction: statements, commit, rollback),
``txn.base_compensate`` (undoing branches), ``txn.base_cleanup`` (batched removal of
finished transactions' bookkeeping) and ``txn.base_recovery`` (finishing what a crash left).

Lifecycle of a global transaction (``txn.base_coordinator`` has the details):

1. first write: ``global_log.insert(xid, participants)`` (status begun) on the log data
   source; a data source joining later is added with ``set_participants`` — always before
   its branch commits anything;
2. each write statement, per data source, in a local transaction of its own: the undo
   header (first time), the DML with its images (``snapshot``), ``undo_log.insert_record``,
   with 'record_lock' ``global_lock.acquire``; committed at once when every data source
   of the statement succeeded, else rolled back everywhere;
3. client COMMIT: ``set_status(committed)``; undo rows, locks and the log row are removed
   in the background (``base_cleanup``);
4. client ROLLBACK: ``set_status(rolling_back)``, every branch compensated
   (``base_compensate``), then ``rolled_back`` and clean-up, or ``needs_attention`` with
   the conflicts' ``describe()`` as detail;
5. recovery (at start, and a periodic sweep): ``global_log.select_for_recovery`` —
   committed/rolled_back rows are cleaned up, all others compensated.

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
