"""SQLAlchemy ORM and reflection on a sharded logical database."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from conftest import sandbox_proxy_config, start_proxy, stop_proxy

RULES = {
    "data_sources": ["ds_0", "ds_1"],
    "tables": {
        name: {"actual_data_nodes": f"ds_${{0..1}}.{name}_${{0..1}}",
               "database_strategy": {"columns": ["user_id"], "algorithm": "two"},
               "table_strategy": {"columns": ["order_id"], "algorithm": "two"}}
        for name in ("sa_order", "sa_item")
    },
    "binding_tables": [["sa_order", "sa_item"]],
    "broadcast_tables": ["sa_status"],
    "algorithms": {"two": {"type": "MOD", "props": {"sharding_count": 2}}},
}


class Base(DeclarativeBase):
    pass


class Status(Base):
    __tablename__ = "sa_status"
    code: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    label: Mapped[str] = mapped_column(sa.String(40))


class Order(Base):
    __tablename__ = "sa_order"
    order_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    status: Mapped[str] = mapped_column(sa.String(10))
    items: Mapped[list[Item]] = relationship(
        primaryjoin="and_(Order.order_id == foreign(Item.order_id), Order.user_id == foreign(Item.user_id))")


class Item(Base):
    __tablename__ = "sa_item"
    item_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    order_id: Mapped[int] = mapped_column(sa.BigInteger)
    user_id: Mapped[int] = mapped_column(sa.Integer)
    sku: Mapped[str] = mapped_column(sa.String(20))


@pytest.fixture(scope="module")
def engine(sandbox, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sa")
    config = sandbox_proxy_config(sandbox, workdir, {"shop_sa": {"sharding": RULES}})
    proxy = start_proxy(config, workdir)
    engine = sa.create_engine(f"mysql+pymysql://app:app@127.0.0.1:{proxy.port}/shop_sa")
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        yield engine
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()
        stop_proxy(proxy)


def test_reflection_shows_logical_tables(engine):
    inspector = sa.inspect(engine)
    names = set(inspector.get_table_names())  # other tests leave their own tables in these databases
    assert {"sa_order", "sa_item", "sa_status"} <= names
    assert not names & {"sa_order_0", "sa_order_1", "sa_item_0", "sa_item_1"}, "actual tables stay hidden"
    assert [c["name"] for c in inspector.get_columns("sa_order")] == ["order_id", "user_id", "status"]
    assert inspector.get_pk_constraint("sa_item")["constrained_columns"] == ["item_id"]
    assert {i["name"] for i in inspector.get_indexes("sa_order")} == {"ix_sa_order_user_id"}


def test_orm_round_trip(engine, sandbox):
    with Session(engine) as session:
        session.add_all([Status(code="new", label="New"), Status(code="paid", label="Paid")])
        session.add_all([Order(order_id=i, user_id=i % 4, status="new" if i % 2 else "paid") for i in range(1, 21)])
        session.add_all([Item(item_id=i, order_id=i // 2 + 1, user_id=(i // 2 + 1) % 4, sku=f"sku{i}")
                         for i in range(1, 31)])
        session.commit()

    with Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Order)) == 20
        assert session.scalar(sa.select(sa.func.count()).where(Order.user_id == 1).select_from(Order)) == 5
        order = session.get(Order, 5)
        assert (order.user_id, order.status) == (1, "new")
        assert sorted(i.sku for i in order.items) == ["sku8", "sku9"]
        order.status = "paid"
        session.commit()
        top = session.scalars(sa.select(Order).order_by(Order.order_id.desc()).limit(3)).all()
        assert [o.order_id for o in top] == [20, 19, 18]
        joined = session.execute(sa.select(Order.order_id, Status.label).join(Status, Status.code == Order.status)
                                 .where(Order.user_id == 1).order_by(Order.order_id)).all()
        assert joined == [(1, "New"), (5, "Paid"), (9, "New"), (13, "New"), (17, "New")]
        session.delete(session.get(Order, 20))
        session.commit()
        assert session.scalar(sa.select(sa.func.count()).select_from(Order)) == 19

    # The broadcast table is on every data source; orders sit where their keys say.
    for ds in ("ds_0", "ds_1"):
        with sandbox.admin_connect(ds, database=f"shop_{ds}") as direct, direct.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM sa_status")
            assert cur.fetchone()[0] == 2
            for table in ("sa_order_0", "sa_order_1"):
                cur.execute(f"SELECT order_id, user_id FROM {table}")
                assert all(f"ds_{u % 2}" == ds and table.endswith(str(o % 2)) for o, u in cur.fetchall())
