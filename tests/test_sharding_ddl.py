"""DDL on a sharded database fans out to the actual tables it changes (pure planning)."""

from __future__ import annotations

import pytest

from conftest import shop_rules_offline
from sharding import planner
from sharding.errors import ShardingError


@pytest.fixture(scope="module")
def rules():
    return shop_rules_offline()


def units(rules, sql: str) -> list[tuple[str, str]]:
    return [(u.data_source, u.sql) for u in planner.plan(planner.parse_statement(sql), rules, "shop").units]


ACTUAL = [("ds_0", "t_order_0"), ("ds_0", "t_order_1"), ("ds_1", "t_order_0"), ("ds_1", "t_order_1")]


def test_drop_index_fans_out_like_create_index(rules):
    assert units(rules, "CREATE INDEX by_status ON t_order (status)") == [
        (ds, f"CREATE INDEX by_status ON {t}(status)") for ds, t in ACTUAL]
    assert units(rules, "DROP INDEX by_status ON t_order") == [(ds, f"DROP INDEX by_status ON {t}") for ds, t in ACTUAL]
    # Qualified with the logical database, IF EXISTS, an index named like its table: only
    # the ON table is renamed.
    assert units(rules, "DROP INDEX IF EXISTS `t_order` ON shop.t_order") == [
        (ds, f"DROP INDEX IF EXISTS `t_order` ON {t}") for ds, t in ACTUAL]


def test_drop_index_on_broadcast_and_single_tables(rules):
    assert units(rules, "DROP INDEX by_label ON t_dict") == [("ds_0", "DROP INDEX by_label ON t_dict"),
                                                             ("ds_1", "DROP INDEX by_label ON t_dict")]
    assert units(rules, "DROP INDEX i ON t_plain") == [("ds_0", "DROP INDEX i ON t_plain")]


def test_drop_index_without_its_table_is_refused_with_the_syntax(rules):
    with pytest.raises(ShardingError, match="DROP INDEX name ON table"):
        units(rules, "DROP INDEX by_status")
