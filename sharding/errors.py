"""Errors raised while routing a statement (as opposed to ConfigError, raised at load)."""

from __future__ import annotations


class ShardingError(Exception):
    """A value could not be routed to a data node.

    The message names the table, column and value at fault when they are known; the
    fields are kept too so the front end can build a MySQL error without parsing text.
    """

    def __init__(self, message: str, *, table: str | None = None, column: str | None = None,
                 value: object = None):
        super().__init__(message)
        self.table = table
        self.column = column
        self.value = value

    def with_context(self, table: str | None, column: str | None) -> ShardingError:
        """A copy whose message also names the logical table and column."""
        where = []
        if table is not None and self.table is None:
            where.append(f"table {table!r}")
        if column is not None and self.column is None:
            where.append(f"column {column!r}")
        message = str(self)
        if where:
            message = f"{', '.join(where)}: {message}"
        return ShardingError(message, table=self.table or table, column=self.column or column,
                             value=self.value)
