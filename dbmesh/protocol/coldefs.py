"""Column definitions of sharded and shadow results name the logical database and table.

A backend describes its columns with physical names: database ``shop_ds_0``, table
``t_order_1`` (or its shadow, ``t_order_1_shadow``). Clients and ORMs expect what they
queried, ``shop``.``t_order``, as ShardingSphere answers. On a pass-through database only
shadow results are renamed (``acct_shadow`` -> ``acct``). ``Renamer`` rewrites the schema,
table and org_table fields of column-definition payloads; ``RenamingSink`` does it for a
raw relay: it holds back only the column definitions at the head of a result set, and
once they are written every later byte (the rows) passes straight through.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from .constants import ERR_HEADER, LOCAL_INFILE_HEADER, OK_HEADER
from .packets import frame, lenenc_str, read_lenenc_int, read_lenenc_str, sink_parts

if TYPE_CHECKING:
    from ..config import Config, LogicalDatabaseConfig


_HEADS_REMEMBERED: Final = 512  # renamed result-set heads kept per renamer (statement shapes)


class Renamer:
    """Physical -> logical names (lower-case UTF-8 keys) of one data source of a database."""

    __slots__ = ("schemas", "tables", "_heads")

    def __init__(self, schemas: dict[bytes, bytes], tables: dict[bytes, bytes]):
        self.schemas = schemas
        self.tables = tables
        self._heads: dict[bytes, bytes] = {}

    def head(self, wire: bytes) -> bytes:
        """A result set's column count and definitions (wire bytes, headers included) with
        logical names; remembered, since a statement shape answers with the same head."""
        found = self._heads.get(wire)
        if found is None:
            if len(self._heads) >= _HEADS_REMEMBERED:
                self._heads.clear()
            found = self._heads[wire] = self._rename_head(wire)
        return found

    def _rename_head(self, wire: bytes) -> bytes:
        length = wire[0] | wire[1] << 8 | wire[2] << 16
        out = [wire[:4 + length]]  # the column count
        pos = 4 + length
        while pos < len(wire):
            length = wire[pos] | wire[pos + 1] << 8 | wire[pos + 2] << 16
            out.append(frame(self.column(wire[pos + 4:pos + 4 + length]), wire[pos + 3])[0])
            pos += 4 + length
        return b"".join(out)

    def column(self, payload: bytes) -> bytes:
        """One column definition with logical names; the same object when nothing changes."""
        _, pos = read_lenenc_str(payload, 0)                  # catalog
        start = pos
        schema, pos = read_lenenc_str(payload, pos)
        table, pos = read_lenenc_str(payload, pos)
        org_table, pos = read_lenenc_str(payload, pos)
        new_schema = self.schemas.get(schema.lower(), schema) if schema else schema
        new_table = self.tables.get(table.lower(), table) if table else table
        new_org = self.tables.get(org_table.lower(), org_table) if org_table else org_table
        if new_schema is schema and new_table is table and new_org is org_table:
            return payload
        return (payload[:start] + lenenc_str(new_schema or b"") + lenenc_str(new_table or b"")
                + lenenc_str(new_org or b"") + payload[pos:])

    def columns(self, payloads: list[bytes]) -> list[bytes]:
        return [self.column(p) for p in payloads]


def renamer_for(config: Config, database: str, data_source: str) -> Renamer | None:
    """The renamer for results of ``data_source`` in ``database`` (sharded, or a pass-through's
    shadow data source); None when its physical names are the logical ones (then nothing
    needs rewriting)."""
    key = (id(config), database)
    found = _CACHE.get(key)
    if found is None or found[0] is not config:
        found = _CACHE[key] = (config, _renamers(config, database))
    return found[1].get(data_source)


_CACHE: dict[tuple[int, str], tuple[Config, dict[str, Renamer]]] = {}


def _renamers(config: Config, database: str) -> dict[str, Renamer]:
    ldb = config.databases[database]
    rules = ldb.sharding
    if rules is None:
        return _pass_through_renamers(config, ldb)
    tables: dict[str, dict[bytes, bytes]] = {}
    for logical in rules.tables:
        for node in rules.data_nodes(logical):
            tables.setdefault(node.data_source, {})[node.table.lower().encode()] = logical.encode()
    if ldb.shadow is not None:
        for (ds, actual), shadow in ldb.shadow.nodes.items():
            logical = rules.logical_table_of(actual) or actual
            shadow_ds = ldb.shadow.shadow_data_source(ds)
            tables.setdefault(shadow_ds, {})[shadow.lower().encode()] = logical.encode()
    out: dict[str, Renamer] = {}
    for ds in set(rules.data_sources) | set(tables):
        physical = config.data_sources[ds].database
        schemas = {physical.lower().encode(): database.encode()} if physical and physical != database else {}
        renames = {k: v for k, v in tables.get(ds, {}).items() if k != v}
        if schemas or renames:
            out[ds] = Renamer(schemas, renames)
    return out


def _pass_through_renamers(config: Config, ldb: LogicalDatabaseConfig) -> dict[str, Renamer]:
    """A pass-through database renames only the results of its shadows, to what production's
    table would show: the client's table name, and production's physical schema (production
    results are relayed untouched, so that is what they carry)."""
    rules = ldb.shadow
    if rules is None or ldb.data_source is None:
        return {}
    production = config.data_sources[ldb.data_source]
    target = rules.shadow_data_source(ldb.data_source)
    physical = config.data_sources[target].database
    schemas = {}
    if physical and production.database and physical.lower() != production.database.lower():
        schemas[physical.lower().encode()] = production.database.encode()
    tables = {shadow.lower().encode(): _production_name(rules.table_name, shadow).encode()
              for (_, table), shadow in rules.nodes.items() if shadow.lower() != table}
    return {target: Renamer(schemas, tables)} if schemas or tables else {}


def _production_name(pattern: str, shadow: str) -> str:
    """The table a shadow name was made from by ``pattern`` ("{table}_shadow"), in the case
    the configuration spells it (the rules keep only a lower-case key)."""
    count = pattern.count("{table}")
    length = (len(shadow) - len(pattern) + count * len("{table}")) // count
    start = pattern.index("{table}")
    return shadow[start:start + length]


class RenamingSink:
    """Stands in for the client's writer while a backend's result is relayed raw: the
    column definitions are renamed, everything after them is written untouched.

    The head of a result set (column count and definitions, as wire bytes) is the same for
    every execution of a statement shape, so its renamed form is remembered per renamer:
    the usual answer costs one dictionary lookup."""

    def __init__(self, writer: asyncio.StreamWriter, renamer: Renamer):
        self.transport, self._write = sink_parts(writer)
        self._writer = writer
        self._renamer = renamer
        self._pending = b""     # an unfinished head from earlier chunks
        self._renamed = False   # the head is out: the rest passes through
        # The last head renamed, as the backend sent it and as the client gets it: a sink is
        # kept per session and data source, and its next result is mostly the same shape.
        self._last_head = b""
        self._last_renamed = b""

    def restart(self) -> RenamingSink:
        """Ready for the next result (a sink is kept per session and data source)."""
        self._pending = b""
        self._renamed = False
        return self

    def write(self, data: bytes | memoryview) -> None:
        if self._renamed:
            self._write(data)
            return
        if self._pending:
            data = self._pending + bytes(data)
        last = self._last_head
        if last and isinstance(data, bytes) and data.startswith(last):
            # The same column definitions again (read from their own length prefixes, they
            # end where the last ones did): no walk over the packets, no lookup.
            self._renamed = True
            self._pending = b""
            self._write(self._last_renamed + data[len(last):])
            return
        head_end = _head_end(data)
        if head_end < 0:
            self._pending = bytes(data)  # wait for the rest of the definitions
            return
        self._renamed = True
        self._pending = b""
        if head_end == 0:  # OK, ERR, LOCAL INFILE: no result set, nothing to rename
            self._write(data)
            return
        head = bytes(data[:head_end])
        renamed = self._renamer.head(head)
        self._last_head, self._last_renamed = head, renamed
        self._write(renamed + data[head_end:])

    async def drain(self) -> None:
        await self._writer.drain()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


def _head_end(data: bytes | memoryview) -> int:
    """Where the column count and definitions at the start of ``data`` end: 0 when the
    answer is not a result set, -1 when ``data`` does not hold them all yet."""
    end = len(data)
    if end < 4:
        return -1
    length = data[0] | data[1] << 8 | data[2] << 16
    if end < 4 + length:
        return -1
    first = data[4] if length else OK_HEADER
    if first in (OK_HEADER, ERR_HEADER, LOCAL_INFILE_HEADER):
        return 0
    columns = read_lenenc_int(bytes(data[4:4 + length]), 0)[0] or 0
    pos = 4 + length
    for _ in range(columns):
        if pos + 4 > end:
            return -1
        pos += 4 + (data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16)
        if pos > end:
            return -1
    return pos


def logical_sink(writer: asyncio.StreamWriter, config: Config, database: str,
                 data_source: str) -> asyncio.StreamWriter | RenamingSink:
    """Where to relay a result of ``data_source`` raw: the client's writer itself when the
    physical names are the logical ones, else a RenamingSink in front of it."""
    renamer = renamer_for(config, database, data_source)
    return writer if renamer is None else RenamingSink(writer, renamer)
