"""The shadow of a statement: actual tables renamed to their shadows, the data source
switched to the shadow data source (pure: no I/O).

The same function serves a pass-through statement (its one data source) and each route
unit of a sharded plan (the unit's data source and actual SQL), so shadows follow the
sharding layout exactly: the planner routes as for production, then every unit is moved
to its shadow.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlglot import exp

from sharding.conditions import PLACEHOLDER_PREFIX
from sharding.planner import parse_statement, requalify_columns

from .decide import ShadowError, table_refs
from .rules import ShadowRules

DIALECT = "mysql"
_WRITES = (exp.Insert, exp.Update, exp.Delete)
DDL = (exp.Create, exp.Drop, exp.Alter)


def render(tree: exp.Expression) -> str:
    text = tree.sql(dialect=DIALECT)
    if isinstance(tree, exp.Insert) and tree.meta.get("replace"):
        return "REPLACE" + text[len("INSERT"):]
    return text


def is_write(tree: exp.Expression) -> bool:
    return isinstance(tree, _WRITES) or isinstance(tree, DDL) or isinstance(tree, exp.TruncateTable)


def rename(tree: exp.Expression, mapping: dict[str, str], own_dbs: Iterable[str]) -> exp.Expression:
    """A copy of ``tree`` with tables (lower-case name -> new name) renamed, and column
    qualifiers that name a renamed table without an alias."""
    copy = tree.copy()
    unaliased: dict[str, str] = {}
    for node, name in table_refs(copy, own_dbs):
        new = mapping.get(name)
        if new is None:
            continue
        if not node.alias:
            unaliased[name] = new
        node.set("this", exp.to_identifier(new))
        node.set("db", None)
    requalify_columns(copy, unaliased)
    return copy


_NUMBERED = re.compile(":" + PLACEHOLDER_PREFIX + r"(\d+)")


def prepared_sql(tree: exp.Expression) -> str:
    """SQL for a backend PREPARE: numbered placeholders (``:dbmeshp0``) back to ``?``. The
    parameters must come in the client's order (sqlglot writes ``LIMIT ?, ?`` as LIMIT ...
    OFFSET ..., which would swap them): such a statement raises ShadowError."""
    text = render(tree)
    order = [int(m.group(1)) for m in _NUMBERED.finditer(text)]
    if order != sorted(order):
        raise ShadowError("the shadow statement would take its parameters in another order than the client "
                          "sends them (e.g. LIMIT ?, ?); write it with LIMIT ? OFFSET ?")
    return _NUMBERED.sub("?", text)


def shadow_statement(tree: exp.Expression, rules: ShadowRules, data_source: str, own_dbs: Iterable[str],
                     keep_text: bool = False) -> tuple[str, exp.Expression | None] | None:
    """(shadow data source, renamed tree) of a shadow statement on ``data_source``; the tree
    is None when only the data source changes (the text can stay as it is, if ``keep_text``).
    None: the statement touches no shadowed table and may run on production (a read).
    Raises ShadowError for a write to a table without a shadow, or a read that mixes
    shadowed tables with tables that do not exist where the shadows are."""
    refs = table_refs(tree, own_dbs)
    shadowed: dict[str, str] = {}
    plain: list[str] = []
    for _, name in refs:
        shadow_name = rules.nodes.get((data_source, name))
        if shadow_name is None:
            plain.append(name)
        else:
            shadowed[name] = shadow_name
    write = is_write(tree)
    if write and plain and not isinstance(tree, DDL):
        raise ShadowError(f"shadow traffic would write production table(s) {', '.join(sorted(set(plain)))}, "
                          f"which have no shadow in database '{rules.database}'; add them to shadow.tables")
    if not shadowed:
        if write:
            raise ShadowError(f"shadow traffic would run {type(tree).__name__.upper()} on production; no table "
                              f"of the statement has a shadow in database '{rules.database}'")
        return None
    target = rules.shadow_data_source(data_source)
    if target != data_source and plain:
        raise ShadowError(f"table(s) {', '.join(sorted(set(plain)))} have no shadow, and the shadow statement "
                          f"runs on shadow data source '{target}' where they do not live; add them to "
                          "shadow.tables")
    if keep_text and all(new == name for name, new in shadowed.items()):
        return target, None
    return target, rename(tree, shadowed, own_dbs)


def shadow_unit_sql(data_source: str, sql: str, rules: ShadowRules) -> tuple[str, str] | None:
    """The shadow of one sharded route unit (actual table names, no database qualifiers)."""
    tree = parse_statement(sql)
    found = shadow_statement(tree, rules, data_source, ())
    if found is None:
        return None
    target, renamed = found
    return target, render(renamed if renamed is not None else tree)


def ddl_target(tree: exp.Expression) -> exp.Table | None:
    """The table whose schema a DDL statement changes (CREATE / ALTER / DROP TABLE, CREATE /
    DROP INDEX); None for other objects (views, triggers, databases)."""
    kind = (tree.args.get("kind") or "").upper()
    if isinstance(tree, exp.Create):
        if kind == "TABLE":
            return tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
        if kind == "INDEX" and isinstance(tree.this, exp.Index):
            return tree.this.args.get("table")
    elif isinstance(tree, exp.Drop):
        if kind == "TABLE":
            tables = tree.args.get("tables") or []
            return tables[0] if tables else None
        if kind == "INDEX" and isinstance(tree.args.get("cluster"), exp.OnProperty):
            return tree.args["cluster"].this
    elif isinstance(tree, exp.Alter) and kind == "TABLE":
        return tree.this
    return None


def shadow_ddl(tree: exp.Expression, rules: ShadowRules, data_source: str,
               own_dbs: Iterable[str], replace_stale: bool = True) -> list[tuple[str, str]]:
    """The statements that apply a production DDL to the shadows of the table it changes:
    [(shadow data source, SQL)], empty when that table has no shadow. CREATE TABLE
    replaces a stale shadow (with ``replace_stale``: production did not have the table, so a
    shadow of that name is left from an earlier table); DROP TABLE drops shadows if they
    exist. Other tables the statement names (LIKE, REFERENCES) become their shadows when
    they have one."""
    if not isinstance(tree, DDL):
        return []
    target = ddl_target(tree)
    if not isinstance(target, exp.Table) or (target.db and target.db.lower() not in {d.lower() for d in own_dbs}):
        return []
    refs = table_refs(tree, own_dbs)
    mapping = {name: rules.nodes[(data_source, name)] for _, name in refs if (data_source, name) in rules.nodes}
    is_drop_table = isinstance(tree, exp.Drop) and (tree.args.get("kind") or "").upper() == "TABLE"
    if is_drop_table:
        if not any(t.name.lower() in mapping for t in tree.args.get("tables") or []):
            return []
    elif target.name.lower() not in mapping:
        return []
    if isinstance(tree, exp.Alter) and any(isinstance(a, exp.AlterRename) for a in tree.args.get("actions") or ()):
        raise ShadowError("renaming a table that has a shadow is not supported through dbmesh: rename it on "
                          "the backends, then update shadow.tables")
    shadow_ds = rules.shadow_data_source(data_source)
    if is_drop_table:
        copy = tree.copy()
        copy.set("tables", [t for t in copy.args.get("tables") or [] if t.name.lower() in mapping])
        copy.set("exists", copy.args.get("exists") or replace_stale)
        return [(shadow_ds, render(rename(copy, mapping, own_dbs)))]
    renamed = render(rename(tree, mapping, own_dbs))
    if replace_stale and isinstance(tree, exp.Create) and (tree.args.get("kind") or "").upper() == "TABLE" \
            and not tree.args.get("exists"):
        return [(shadow_ds, f"DROP TABLE IF EXISTS `{mapping[target.name.lower()]}`"), (shadow_ds, renamed)]
    return [(shadow_ds, renamed)]
