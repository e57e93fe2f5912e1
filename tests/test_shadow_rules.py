"""Shadow rules without servers: config validation (YAML paths), shadow decisions and rewrites."""

from __future__ import annotations

import copy

import pytest

from dbmesh.config import ConfigError, parse_config
from shadow.decide import ShadowError, decide, hint_of, marked
from shadow.provision import shadow_create_sql
from shadow.rewrite import prepared_sql, render, shadow_ddl, shadow_statement, shadow_unit_sql
from sharding.planner import parse_statement


def ds(database: str, port: int = 3306) -> dict:
    return {"host": "127.0.0.1", "port": port, "user": "u", "password": "p", "database": database}


BASE = {
    "users": [{"name": "app", "password": "app"}],
    "data_sources": {"p": ds("prod"), "p_shadow": ds("prod_shadow"), "s_0": ds("s0"), "s_1": ds("s1", 3307),
                     "s_0_sh": ds("s0sh"), "s_1_sh": ds("s1sh", 3307), "m": ds("mirror", 3308)},
    "databases": {
        "pt": {"data_source": "p", "shadow": {
            "tables": {"acct": {"algorithms": ["users", "notes"]}, "log": {}},
            "algorithms": {"users": {"type": "VALUE_MATCH", "column": "user_id", "values": [7, "8"],
                                     "ranges": [[9000, 9999]]},
                           "notes": {"type": "REGEX_MATCH", "column": "note", "regex": "^shadow-",
                                     "operations": ["insert", "select"]}}}},
        "shard": {
            "sharding": {"data_sources": ["s_0", "s_1"], "tables": {"ord": {
                "actual_data_nodes": "s_${0..1}.ord_${0..1}",
                "database_strategy": {"columns": ["user_id"], "algorithm": "two"},
                "table_strategy": {"columns": ["order_id"], "algorithm": "two"}}},
                "algorithms": {"two": {"type": "MOD", "props": {"sharding_count": 2}}}},
            "shadow": {"data_sources": {"s_0": "s_0_sh", "s_1": "s_1_sh"},
                       "tables": {"ord": {"algorithms": ["users"]}},
                       "algorithms": {"users": {"type": "VALUE_MATCH", "column": "user_id", "values": [7]}}},
            "mirror": {"data_source": "m", "share": 0.5}},
    },
}


def config(**changes) -> dict:
    raw = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = raw
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[key]
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return raw


def test_valid_config_layout():
    cfg = parse_config(config())
    pt = cfg.databases["pt"].shadow
    assert pt.nodes == {("p", "acct"): "acct_shadow", ("p", "log"): "log_shadow"}
    shard = cfg.databases["shard"].shadow
    assert shard.nodes[("s_1", "ord_0")] == "ord_0_shadow"
    assert shard.shadow_data_source("s_1") == "s_1_sh"
    assert cfg.databases["shard"].mirror.share == 0.5
    assert pt.mentions(b"SELECT * FROM `acct` WHERE x = 1") and not pt.mentions(b"SELECT * FROM acct_2")


@pytest.mark.parametrize("changes, path, words", [
    ({"databases__pt__shadow__algorithms__users__type": "NOPE"}, "databases.pt.shadow.algorithms.users.type",
     "VALUE_MATCH"),
    ({"databases__pt__shadow__algorithms__notes__regex": "(unclosed"}, "databases.pt.shadow.algorithms.notes.regex",
     "regular expression"),
    ({"databases__pt__shadow__tables__acct": {"algorithms": ["nope"]}}, "databases.pt.shadow.tables.acct.algorithms[0]",
     "no shadow algorithm"),
    ({"databases__pt__shadow__table_name": "{table}"}, "databases.pt.shadow.table_name", "production table itself"),
    ({"databases__pt__shadow__table_name": "shadow"}, "databases.pt.shadow.table_name", "{table}"),
    ({"databases__pt__shadow__data_sources": {"p": "nope"}}, "databases.pt.shadow.data_sources.p", "no data source"),
    ({"databases__pt__shadow__data_sources": {"s_0": "p_shadow"}}, "databases.pt.shadow.data_sources.s_0",
     "not a data source of database"),
    ({"databases__shard__shadow__data_sources": {"s_0": "s_1"}}, "databases.shard.shadow.data_sources.s_0",
     "production data source"),
    ({"databases__shard__mirror__data_source": "s_0"}, "databases.shard.mirror.data_source", "production"),
    ({"databases__shard__mirror__share": 2}, "databases.shard.mirror.share", "fraction"),
    ({"databases__pt__shadow__algorithms__users__ranges": [[5, 1]]}, "databases.pt.shadow.algorithms.users.ranges[0]",
     "above"),
    ({"databases__pt__shadow__bogus": 1}, "databases.pt.shadow.bogus", "unknown key"),
    ({"databases__pt__shadow__tables": {}}, "databases.pt.shadow.tables", "list the logical tables"),
])
def test_invalid_config_names_the_yaml_path(changes, path, words):
    with pytest.raises(ConfigError) as info:
        parse_config(config(**changes))
    assert info.value.path == path and words in str(info.value), str(info.value)


def test_same_name_shadow_on_same_server_database_is_refused():
    raw = config(databases__pt__shadow__table_name="{table}", databases__pt__shadow__data_sources={"p": "p_shadow"})
    raw["data_sources"]["p_shadow"]["database"] = "prod"
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.path == "databases.pt.shadow.data_sources.p"


RULES = parse_config(config()).databases["pt"].shadow
SHARD = parse_config(config()).databases["shard"].shadow


def verdict(sql: str, rules=RULES) -> bool:
    return decide(parse_statement(sql), rules, ("pt",)).shadow


def test_marks():
    assert hint_of(b"/* dbmesh:shadow */ SELECT 1") is True
    assert hint_of("SELECT /*+ dbmesh:shadow=0 */ 1") is False
    assert hint_of(b"SELECT 1") is None
    assert marked(b"SELECT 1", True).reason == "session"
    assert marked(b"/* dbmesh:shadow=off */ SELECT 1", True).shadow is False
    with pytest.raises(ShadowError):
        hint_of("/* dbmesh:shadow=maybe */ SELECT 1")


def test_column_rules():
    assert verdict("INSERT INTO acct (id, user_id) VALUES (1, 7)")
    assert verdict("INSERT INTO acct (id, user_id) VALUES (1, '8'), (2, 9500)")
    assert not verdict("INSERT INTO acct (id, user_id) VALUES (1, 1)")
    assert verdict("INSERT INTO acct (id, user_id, note) VALUES (1, 1, 'shadow-x')")
    assert verdict("SELECT * FROM acct a WHERE a.user_id = 7 AND a.id > 3")
    assert verdict("SELECT * FROM acct WHERE user_id IN (7, 9001) OR (user_id = 8 AND id = 2)")
    assert not verdict("SELECT * FROM acct WHERE user_id = 1")
    assert not verdict("SELECT * FROM acct WHERE NOT user_id = 7")
    assert verdict("UPDATE acct SET note = 'x' WHERE user_id = 7")
    assert verdict("DELETE FROM acct WHERE user_id BETWEEN 1 AND 2 AND user_id = 7")
    # operations: the note rule is for INSERT and SELECT only
    assert not verdict("DELETE FROM acct WHERE note = 'shadow-x'")
    assert verdict("SELECT * FROM acct WHERE note = 'shadow-x'")
    # a table without the rule is not decided by it
    assert not verdict("SELECT * FROM log WHERE user_id = 7")


@pytest.mark.parametrize("sql, words", [
    ("INSERT INTO acct (id, user_id) VALUES (1, 7), (2, 1)", "mixes 1 shadow row"),
    ("SELECT * FROM acct WHERE user_id IN (1, 7)", "both shadow rows"),
    ("SELECT * FROM acct WHERE user_id = 7 OR id = 3", "both shadow rows"),
    ("UPDATE acct SET user_id = 7 WHERE id = 3", "cannot move"),
    ("UPDATE acct SET user_id = 1 WHERE user_id = 7", "cannot move"),
])
def test_mixed_statements_are_refused(sql, words):
    with pytest.raises(ShadowError) as info:
        verdict(sql)
    assert words in str(info.value)


def test_rewrites():
    tree = parse_statement("SELECT a.id, acct.note FROM acct JOIN log ON log.id = acct.id JOIN acct a ON a.id = 1")
    target, renamed = shadow_statement(tree, RULES, "p", ("pt", "prod"))
    assert target == "p"
    assert render(renamed) == ("SELECT a.id, acct_shadow.note FROM acct_shadow JOIN log_shadow ON log_shadow.id = "
                               "acct_shadow.id JOIN acct_shadow AS a ON a.id = 1")
    with pytest.raises(ShadowError, match="no shadow"):
        shadow_statement(parse_statement("INSERT INTO other (x) VALUES (1)"), RULES, "p", ())
    assert shadow_statement(parse_statement("SELECT * FROM other"), RULES, "p", ()) is None
    assert shadow_unit_sql("s_1", "INSERT INTO ord_0 (order_id, user_id) VALUES (2, 7)", SHARD) == \
        ("s_1_sh", "INSERT INTO ord_0_shadow (order_id, user_id) VALUES (2, 7)")
    assert prepared_sql(shadow_statement(parse_statement("SELECT * FROM acct WHERE id = ? AND user_id = ?"),
                                         RULES, "p", ())[1]) == "SELECT * FROM acct_shadow WHERE id = ? AND user_id = ?"


def test_ddl_follows_to_shadows():
    def ddl(sql):
        return shadow_ddl(parse_statement(sql), RULES, "p", ("pt",))

    assert ddl("ALTER TABLE acct ADD COLUMN x INT") == [("p", "ALTER TABLE acct_shadow ADD COLUMN x INT")]
    assert ddl("DROP TABLE acct, other") == [("p", "DROP TABLE IF EXISTS acct_shadow")]
    assert ddl("CREATE TABLE log (id INT)") == [("p", "DROP TABLE IF EXISTS `log_shadow`"),
                                                 ("p", "CREATE TABLE log_shadow (id INT)")]
    assert ddl("CREATE TABLE other (id INT)") == []
    assert ddl("CREATE TABLE other LIKE acct") == []
    assert ddl("CREATE VIEW v AS SELECT * FROM acct") == []
    assert ddl("CREATE INDEX i ON acct (x)") == [("p", "CREATE INDEX i ON acct_shadow(x)")]
    assert ddl("DROP INDEX i ON acct") == [("p", "DROP INDEX i ON acct_shadow")]
    assert ddl("DROP INDEX acct ON acct") == [("p", "DROP INDEX acct ON acct_shadow")]  # the index keeps its name
    assert ddl("CREATE TABLE IF NOT EXISTS log LIKE acct") == [("p", "CREATE TABLE IF NOT EXISTS log_shadow LIKE "
                                                                      "acct_shadow")]
    with pytest.raises(ShadowError, match="renaming"):
        ddl("ALTER TABLE acct RENAME TO acct2")


def test_provisioned_create_statement():
    create = ("CREATE TABLE `child` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `pid` int(11) DEFAULT NULL,\n"
              "  PRIMARY KEY (`id`),\n  CONSTRAINT `fk_parent` FOREIGN KEY (`pid`) REFERENCES `parent` (`id`)\n"
              ") ENGINE=InnoDB AUTO_INCREMENT=17 DEFAULT CHARSET=utf8mb4")
    same = shadow_create_sql(create, "child", "child_shadow", True, {"parent": "parent_shadow"})
    assert same.startswith("CREATE TABLE `child_shadow` (") and "AUTO_INCREMENT=17" not in same
    assert "CONSTRAINT `fk_parent_shadow` FOREIGN KEY (`pid`) REFERENCES `parent_shadow` (`id`)" in same
    other = shadow_create_sql(create, "child", "child", False, {})
    assert "CONSTRAINT `fk_parent` FOREIGN KEY (`pid`) REFERENCES `parent` (`id`)" in other


def test_insert_without_columns_and_unions():
    with pytest.raises(ShadowError, match="must list its columns"):
        verdict("INSERT INTO acct VALUES (1, 7)")
    assert not verdict("INSERT INTO log VALUES (1, 7)")
    assert verdict("SELECT id FROM acct WHERE user_id = 7 UNION ALL SELECT id FROM acct WHERE user_id = 8")
    with pytest.raises(ShadowError, match="UNION"):
        verdict("SELECT id FROM acct WHERE user_id = 7 UNION SELECT id FROM acct")
    assert RULES.tables_beside_production() == {("p", "acct_shadow"), ("p", "log_shadow")}
    assert SHARD.tables_beside_production() == frozenset()


def test_statements_that_need_no_parse():
    assert not RULES.needs_parse(b"SELECT * FROM other WHERE user_id = 7", "SELECT")
    assert not RULES.needs_parse(b"SELECT * FROM acct WHERE id = 7", "SELECT")  # no rule column named
    assert RULES.needs_parse(b"SELECT * FROM acct WHERE USER_ID = 7", "SELECT")
    assert RULES.needs_parse(b"INSERT INTO acct VALUES (1, 7)", "INSERT")
    assert RULES.needs_parse("ALTER TABLE log ADD COLUMN x INT", "ALTER")
    assert not RULES.needs_parse(b"UPDATE log SET x = 1;", "UPDATE")
    assert RULES.needs_parse(b"UPDATE log SET x = 1; SELECT 1", "UPDATE")
