"""Logical names in column definitions (dbmesh/protocol/coldefs.py), without servers."""

from __future__ import annotations

from dbmesh.config import parse_config
from dbmesh.protocol.coldefs import Renamer, RenamingSink, logical_sink, renamer_for
from dbmesh.protocol.packets import (
    Column,
    column_definition,
    frame,
    ok_packet,
    parse_column_definition,
    result_set_payloads,
)


class Transport:
    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


class Writer:
    def __init__(self) -> None:
        self.transport = Transport()
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


def wire(payloads: list[bytes], seq: int = 1) -> bytes:
    out = []
    for p in payloads:
        data, seq = frame(p, seq)
        out.append(data)
    return b"".join(out)


RENAMER = Renamer({b"shop_ds_0": b"shop"}, {b"t_order_1": b"t_order", b"t_order_1_shadow": b"t_order"})
PHYSICAL = [Column("order_id", schema="shop_ds_0", table="t_order_1", org_table="t_order_1", org_name="order_id"),
            Column("n", schema="shop_ds_0", table="o", org_table="T_ORDER_1", org_name="note"),
            Column("COUNT(*)")]
LOGICAL = [Column("order_id", schema="shop", table="t_order", org_table="t_order", org_name="order_id"),
           Column("n", schema="shop", table="o", org_table="t_order", org_name="note"),
           Column("COUNT(*)")]
ROWS = [[1, "t_order_1 shop_ds_0"], [2, None]]  # row values are never touched


def test_renamer_rewrites_only_the_name_fields():
    for physical, logical in zip(PHYSICAL, LOGICAL, strict=True):
        assert RENAMER.column(column_definition(physical)) == column_definition(logical)
    unchanged = column_definition(LOGICAL[0])
    assert RENAMER.column(unchanged) is unchanged
    assert parse_column_definition(RENAMER.column(column_definition(PHYSICAL[1]))).org_name == "note"


def test_sink_renames_definitions_in_any_chunking_and_passes_rows_through():
    for deprecate_eof in (False, True):
        physical = wire(result_set_payloads(PHYSICAL, ROWS, deprecate_eof, 2))
        expected = wire(result_set_payloads(LOGICAL, ROWS, deprecate_eof, 2))
        for size in (1, 3, 7, 64, len(physical)):
            writer = Writer()
            sink = RenamingSink(writer, RENAMER)
            for start in range(0, len(physical), size):
                sink.write(physical[start:start + size])
            assert bytes(writer.data) == expected, (deprecate_eof, size)


def test_a_kept_sink_renames_each_result_after_restart():
    """A session keeps its sink per data source and restarts it per result; the head it
    renamed last is reused only for a result that starts with the very same bytes."""
    other = [PHYSICAL[1]], [LOGICAL[1]]
    results = []
    for columns, logical, rows in ((PHYSICAL, LOGICAL, ROWS), (*other, [["x"]]), (PHYSICAL, LOGICAL, [[3, "y"]])):
        results.append((wire(result_set_payloads(columns, rows, True, 2)),
                        wire(result_set_payloads(logical, rows, True, 2))))
    ok = wire([ok_packet(1, 0, 2)])
    results.insert(2, (ok, ok))
    writer = Writer()
    sink = RenamingSink(writer, RENAMER)
    for size in (10_000, 5, 10_000, 1):
        for physical, expected in results:
            del writer.data[:]
            sink.restart()
            for start in range(0, len(physical), size):
                sink.write(physical[start:start + size])
            assert bytes(writer.data) == expected, size


def test_sink_passes_ok_and_error_answers_through():
    for answer in (ok_packet(3, 0, 2), b"\xff\x7a\x04#42S02Table 't_order_1' doesn't exist"):
        writer = Writer()
        RenamingSink(writer, RENAMER).write(wire([answer]))
        assert bytes(writer.data) == wire([answer])


def test_renamers_of_a_config():
    ds = {"host": "127.0.0.1", "port": 3306, "user": "u", "password": "p"}
    config = parse_config({
        "users": [{"name": "app", "password": "app"}],
        "data_sources": {"s_0": {**ds, "database": "shop_0"}, "s_1": {**ds, "database": "shop"},
                         "s_0_sh": {**ds, "database": "shop_0_sh"}, "s_1_sh": {**ds, "database": "shop_1_sh"},
                         "u": {**ds, "database": "users"}},
        "databases": {"shop": {
            "sharding": {"data_sources": ["s_0", "s_1"],
                         "tables": {"t_order": {"actual_data_nodes": "s_${0..1}.t_order_${0..1}",
                                                "database_strategy": {"columns": ["user_id"], "algorithm": "two"},
                                                "table_strategy": {"columns": ["order_id"], "algorithm": "two"}},
                                    "t_user": {"actual_data_nodes": "s_${0..1}.t_user",
                                               "database_strategy": {"columns": ["user_id"], "algorithm": "two"}}},
                         "algorithms": {"two": {"type": "MOD", "props": {"sharding_count": 2}}}},
            "shadow": {"data_sources": {"s_0": "s_0_sh", "s_1": "s_1_sh"}, "tables": ["t_order", "t_user"]}},
            "users": {"sharding": {"data_sources": ["u"], "tables": {"t_user": {"actual_data_nodes": "u.t_user"}}}},
        }})
    s_0 = renamer_for(config, "shop", "s_0")
    assert s_0.schemas == {b"shop_0": b"shop"} and s_0.tables == {b"t_order_0": b"t_order", b"t_order_1": b"t_order"}
    assert renamer_for(config, "shop", "s_1").schemas == {}
    assert renamer_for(config, "shop", "s_1_sh").tables == {b"t_order_0_shadow": b"t_order",
                                                           b"t_order_1_shadow": b"t_order",
                                                           b"t_user_shadow": b"t_user"}
    # Physical names that are the logical ones: the client's writer itself, nothing in between.
    assert renamer_for(config, "users", "u") is None
    writer = Writer()
    assert logical_sink(writer, config, "users", "u") is writer
    assert isinstance(logical_sink(writer, config, "shop", "s_0"), RenamingSink)


def test_renamers_of_pass_through_shadows():
    """Pass-through: only shadow results are renamed, to what production's would show."""
    ds = {"host": "127.0.0.1", "port": 3306, "user": "u", "password": "p"}
    config = parse_config({
        "users": [{"name": "app", "password": "app"}],
        "data_sources": {"p": {**ds, "database": "app_db"}, "q": {**ds, "database": "other_db"},
                         "q_sh": {**ds, "database": "other_db_sh"}},
        "databases": {
            "beside": {"data_source": "p", "shadow": {"tables": ["acct", "Log"]}},
            "elsewhere": {"data_source": "q", "shadow": {"table_name": "{table}", "data_sources": {"q": "q_sh"},
                                                         "tables": ["acct"]}},
            "plain": {"data_source": "p"}}})
    beside = renamer_for(config, "beside", "p")
    assert beside.schemas == {} and beside.tables == {b"acct_shadow": b"acct", b"log_shadow": b"Log"}
    elsewhere = renamer_for(config, "elsewhere", "q_sh")
    assert elsewhere.schemas == {b"other_db_sh": b"other_db"} and elsewhere.tables == {}
    assert renamer_for(config, "elsewhere", "q") is None  # production results: never touched
    writer = Writer()
    assert logical_sink(writer, config, "plain", "p") is writer
    shadow_result = column_definition(Column("id", schema="other_db_sh", table="a", org_table="acct", org_name="id"))
    assert parse_column_definition(elsewhere.column(shadow_result)).schema == "other_db"
