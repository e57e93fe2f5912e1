"""Tests for the result-merge engine (sharding.merge).

Property tests split a random table across 1-5 shards, compute what each MySQL
shard would return (written out below, independently of the merge code), merge,
and compare with a reference evaluated over the whole table at once.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sharding.merge import (
    Aggregate,
    MergeOrderError,
    MergePlan,
    OrderItem,
    group_key,
    merge,
    mysql_sort_key,
    pick,
    picks_whole_rows,
    row_sort_key,
)

# ---------------------------------------------------------------- reference comparison
#
# Hand-written weight tables for the tiny alphabet the generators use.  Every
# character weighs at least as much as a space, so for PAD SPACE collations
# stripping trailing spaces is exactly MySQL's padding rule.

ALPHABET = "aAáÁbB _"
GENERAL_CI = {"a": "A", "A": "A", "á": "A", "Á": "A", "b": "B", "B": "B", " ": " ", "_": "_"}
UCA_AI_CI = {" ": 0, "_": 1, "a": 2, "A": 2, "á": 2, "Á": 2, "b": 3, "B": 3}

REF_STR_KEYS: dict[str | None, Callable[[str], Any]] = {
    None: lambda s: s,
    "utf8mb4_bin": lambda s: s.rstrip(" "),
    "utf8mb4_general_ci": lambda s: "".join(GENERAL_CI[c] for c in s).rstrip(" "),
    "utf8mb4_0900_ai_ci": lambda s: tuple(UCA_AI_CI[c] for c in s),  # NO PAD
}
COLLATIONS = list(REF_STR_KEYS)


def ref_cmp(a: Any, b: Any, collation: str | None) -> int:
    """MySQL-like three-way compare: NULL lowest, numbers numerically, strings via the table."""
    if a is None or b is None:
        return (a is not None) - (b is not None)
    if isinstance(a, str):
        a, b = REF_STR_KEYS[collation](a), REF_STR_KEYS[collation](b)
    return (a > b) - (a < b)


def ref_value_key(v: Any, collation: str | None) -> Any:
    if v is None:
        return (0,)
    if isinstance(v, str):
        return (2, REF_STR_KEYS[collation](v))
    return (1, v)


def ref_sorted(rows: Iterable[tuple], items: Sequence[OrderItem]) -> list[tuple]:
    def cmp(r1: tuple, r2: tuple) -> int:
        for it in items:
            c = ref_cmp(r1[it.index], r2[it.index], it.collation)
            if c:
                return -c if it.descending else c
        return 0

    return sorted(rows, key=functools.cmp_to_key(cmp))  # stable, like the merge's tie rule


# ---------------------------------------------------------------- random sharded tables
#
# Table columns: 0 g INT (NULLable, few values), 1 s VARCHAR, 2 d DECIMAL(5,2), 3 n INT.

G, S, D, N = range(4)

rows_st = st.tuples(
    st.none() | st.integers(0, 3),
    st.text(alphabet=ALPHABET, max_size=3),
    st.none() | st.decimals(min_value=-50, max_value=50, places=2, allow_nan=False, allow_infinity=False),
    st.none() | st.integers(-5, 5),
)


@st.composite
def sharded(draw: st.DrawFn, max_rows: int = 40) -> list[list[tuple]]:
    rows = draw(st.lists(rows_st, max_size=max_rows))
    nshards = draw(st.integers(1, 5))
    owner = draw(st.lists(st.integers(0, nshards - 1), min_size=len(rows), max_size=len(rows)))
    return [[r for r, o in zip(rows, owner, strict=True) if o == i] for i in range(nshards)]


def whole(shards: list[list[tuple]]) -> list[tuple]:
    return [r for shard in shards for r in shard]


def page(rows: list[tuple], offset: int, limit: int | None) -> list[tuple]:
    return rows[offset:] if limit is None else rows[offset : offset + limit]


limits = st.none() | st.integers(0, 8)
offsets = st.integers(0, 4)


# ---------------------------------------------------------------- ORDER BY


@settings(max_examples=300, deadline=None)
@given(
    shards=sharded(),
    cols=st.lists(st.sampled_from([G, S, D, N]), min_size=1, max_size=4, unique=True),
    desc=st.lists(st.booleans(), min_size=4, max_size=4),
    collation=st.sampled_from(COLLATIONS),
    offset=offsets,
    limit=limits,
    visible=st.none() | st.integers(1, 4),
)
def test_order_by_merge_matches_global_sort(shards, cols, desc, collation, offset, limit, visible):
    items = tuple(OrderItem(c, d, collation if c == S else None) for c, d in zip(cols, desc, strict=False))
    # Router: each shard runs ORDER BY ... LIMIT 0, offset+limit.
    per_shard = [page(ref_sorted(s, items), 0, None if limit is None else offset + limit) for s in shards]
    plan = MergePlan(order_by=items, offset=offset, limit=limit, visible_columns=visible)

    got = list(merge(per_shard, plan))

    expected = page(ref_sorted(whole(shards), items), offset, limit)
    if visible is not None:
        expected = [r[:visible] for r in expected]
    assert got == expected


def test_order_by_nulls_first_asc_last_desc():
    shards = [[(None,), (1,), (3,)], [(None,), (2,)]]
    asc = list(merge(shards, MergePlan(order_by=(OrderItem(0),))))
    assert asc == [(None,), (None,), (1,), (2,), (3,)]
    shards_desc = [[(3,), (1,), (None,)], [(2,), (None,)]]
    desc = list(merge(shards_desc, MergePlan(order_by=(OrderItem(0, descending=True),))))
    assert desc == [(3,), (2,), (1,), (None,), (None,)]


def test_order_by_mixed_numeric_types_and_ties_are_stable():
    shards = [[(1, "s0a"), (Decimal("2.50"), "s0b")], [(1.0, "s1a"), (2.25, "s1b"), (3, "s1c")]]
    got = list(merge(shards, MergePlan(order_by=(OrderItem(0),))))
    assert [r[1] for r in got] == ["s0a", "s1a", "s1b", "s0b", "s1c"]


def test_order_by_case_insensitive_collation():
    items = (OrderItem(0, collation="utf8mb4_general_ci"),)
    shards = [[("apple",), ("Banana",)], [("Apple",), ("banana ",), ("cherry",)]]
    got = [r[0] for r in merge(shards, MergePlan(order_by=items))]
    assert got == ["apple", "Apple", "Banana", "banana ", "cherry"]
    bin_plan = MergePlan(order_by=(OrderItem(0, collation="utf8mb4_bin"),))
    assert [r[0] for r in merge([[("A",), ("a",)], [("B",), ("b",)]], bin_plan)] == ["A", "B", "a", "b"]


class Counting:
    """Sorted generator-backed shard that records how many rows were pulled."""

    def __init__(self, rows: Iterable[tuple]) -> None:
        self.rows = rows
        self.pulled = 0

    def __iter__(self) -> Iterator[tuple]:
        for r in self.rows:
            self.pulled += 1
            yield r


def test_order_by_merge_is_lazy_with_small_limit():
    shards = [Counting([(i * 5 + k,) for i in range(1000)]) for k in range(5)]
    it = merge(shards, MergePlan(order_by=(OrderItem(0),), offset=2, limit=3))
    assert sum(s.pulled for s in shards) == 0  # nothing happens before iteration
    assert list(it) == [(2,), (3,), (4,)]
    # One row per shard to prime the heap, plus one refill per row emitted (at most).
    assert sum(s.pulled for s in shards) <= 5 + 5


def test_limit_zero_pulls_nothing():
    shard = Counting([(1,), (2,)])
    assert list(merge([shard], MergePlan(order_by=(OrderItem(0),), offset=1, limit=0))) == []
    assert shard.pulled == 0


def test_no_order_by_concatenates_lazily():
    shards = [Counting((i,) for i in range(100)) for _ in range(3)]
    assert list(merge(shards, MergePlan(limit=2))) == [(0,), (1,)]
    assert [s.pulled for s in shards] == [2, 0, 0]


# ---------------------------------------------------------------- GROUP BY / aggregates
#
# The logical query is
#   SELECT <group cols>, COUNT(*), COUNT(n), SUM(d), SUM(n), MIN(n), MAX(n), MIN(s), MAX(s),
#          MIN(d), MAX(d), AVG(d), AVG(n), BIT_OR(g), BIT_AND(g), BIT_XOR(g)
#          [, COUNT(DISTINCT n), COUNT(DISTINCT s), SUM(DISTINCT n), AVG(DISTINCT d)]
#   FROM t GROUP BY <group cols> [HAVING COUNT(*) >= h] [ORDER BY ...] [LIMIT]
# and the router appends hidden columns: SUM(d), COUNT(d), SUM(n), COUNT(n) for the AVGs and,
# with DISTINCT aggregates, the arguments n, s, d (shards then GROUP BY <group cols>, n, s, d).

PLAIN_AGGS = [
    ("COUNT_STAR", None),
    ("COUNT", N),
    ("SUM", D),
    ("SUM", N),
    ("MIN", N),
    ("MAX", N),
    ("MIN", S),
    ("MAX", S),
    ("MIN", D),
    ("MAX", D),
    ("AVG", D),
    ("AVG", N),
    ("BIT_OR", G),
    ("BIT_AND", G),
    ("BIT_XOR", G),
]
DISTINCT_AGGS = [("COUNT_DISTINCT", N), ("COUNT_DISTINCT", S), ("SUM_DISTINCT", N), ("AVG_DISTINCT", D)]
DISTINCT_ARGS = (N, S, D)


class Query:
    """Column layout of the rewritten query shared by the shard simulation and the plan."""

    def __init__(self, gcols: Sequence[int], with_distinct: bool, collation: str | None) -> None:
        self.gcols = list(gcols)
        self.aggs = PLAIN_AGGS + (DISTINCT_AGGS if with_distinct else [])
        self.dcols = list(DISTINCT_ARGS) if with_distinct else []
        self.collation = collation
        self.first_agg = len(self.gcols)
        self.visible = self.first_agg + len(self.aggs)
        self.avg_slots = {}  # aggregate position -> (sum column, count column)
        pos = self.visible
        for i, (kind, _col) in enumerate(self.aggs):
            if kind == "AVG":
                self.avg_slots[i] = (pos, pos + 1)
                pos += 2
        self.dcol_pos = {c: pos + j for j, c in enumerate(self.dcols)}

    def coll(self, col: int | None) -> str | None:
        return self.collation if col == S else None

    def plan_aggregates(self) -> tuple[Aggregate, ...]:
        out = []
        for i, (kind, col) in enumerate(self.aggs):
            idx = self.first_agg + i
            if kind == "COUNT_STAR":
                out.append(Aggregate("COUNT", idx))
            elif kind == "AVG":
                s_idx, c_idx = self.avg_slots[i]
                out.append(Aggregate("AVG", idx, sum_index=s_idx, count_index=c_idx))
            elif kind.endswith("_DISTINCT"):
                out.append(Aggregate(kind, idx, distinct_index=self.dcol_pos[col], collation=self.coll(col)))
            else:
                out.append(Aggregate(kind, idx, collation=self.coll(col)))
        return tuple(out)

    def count_star_index(self) -> int:
        return self.first_agg

    def avg_indexes(self) -> list[int]:
        return [self.first_agg + i for i, (k, _c) in enumerate(self.aggs) if k in ("AVG", "AVG_DISTINCT")]


def ref_min_max(values: list[Any], collation: str | None, is_max: bool) -> Any:
    best = None
    for v in values:
        if v is None:
            continue
        if best is None or (ref_cmp(v, best, collation) > 0 if is_max else ref_cmp(v, best, collation) < 0):
            best = v
    return best


def ref_distinct(values: list[Any], collation: str | None) -> list[Any]:
    seen: dict[Any, Any] = {}
    for v in values:
        if v is not None:
            seen.setdefault(ref_value_key(v, collation), v)
    return list(seen.values())


def ref_avg(values: list[Any], scale: int) -> Decimal | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    q = Decimal(1).scaleb(-(scale + 4))
    return (Decimal(sum(vals)) / Decimal(len(vals))).quantize(q, rounding=ROUND_HALF_UP)


def ref_sum(values: list[Any]) -> Decimal | None:
    vals = [v for v in values if v is not None]
    return Decimal(sum(vals)) if vals else None  # MySQL SUM of INT/DECIMAL is DECIMAL


def ref_bits(values: list[Any], kind: str) -> int:
    vals = [v for v in values if v is not None]
    if kind == "BIT_OR":
        return functools.reduce(lambda a, b: a | b, vals, 0)
    if kind == "BIT_AND":
        return functools.reduce(lambda a, b: a & b, vals, (1 << 64) - 1)
    return functools.reduce(lambda a, b: a ^ b, vals, 0)


def ref_group(rows: list[tuple], keycols: Sequence[int], q: Query) -> dict[tuple, list[tuple]]:
    groups: dict[tuple, list[tuple]] = {}
    for r in rows:
        groups.setdefault(tuple(ref_value_key(r[c], q.coll(c)) for c in keycols), []).append(r)
    return groups


def shard_partials(rows: list[tuple], q: Query) -> list[tuple]:
    """What one MySQL shard returns for the rewritten query (first-seen group order)."""
    keycols = q.gcols + q.dcols
    groups = ref_group(rows, keycols, q)
    if not keycols:
        groups = {(): rows}  # an aggregate without GROUP BY always yields one row
    out = []
    for members in groups.values():
        first = members[0] if members else (None,) * 4
        row: list[Any] = [first[c] for c in q.gcols]
        hidden: list[Any] = []
        for kind, col in q.aggs:
            vals = [m[col] for m in members] if col is not None else []
            if kind == "COUNT_STAR":
                row.append(len(members))
            elif kind == "COUNT":
                row.append(sum(v is not None for v in vals))
            elif kind == "SUM":
                row.append(ref_sum(vals))
            elif kind in ("MIN", "MAX"):
                row.append(ref_min_max(vals, q.coll(col), kind == "MAX"))
            elif kind == "AVG":
                row.append(None)  # the shard's own AVG is meaningless here; rewritten to SUM/COUNT
                hidden += [ref_sum(vals), sum(v is not None for v in vals)]
            elif kind.startswith("BIT_"):
                row.append(ref_bits(vals, kind))
            else:
                row.append(None)  # *_DISTINCT: the shard only provides the argument values
        out.append(tuple(row + hidden + [first[c] for c in q.dcols]))
    return out


def ref_final(rows: list[tuple], q: Query) -> list[tuple]:
    """The whole-table answer (visible columns only), groups in first-seen order."""
    groups = ref_group(rows, q.gcols, q)
    if not q.gcols:
        groups = {(): rows}
    out = []
    for members in groups.values():
        first = members[0] if members else (None,) * 4
        row: list[Any] = [first[c] for c in q.gcols]
        for kind, col in q.aggs:
            vals = [m[col] for m in members] if col is not None else []
            if kind == "COUNT_STAR":
                row.append(len(members))
            elif kind == "COUNT":
                row.append(sum(v is not None for v in vals))
            elif kind == "SUM":
                row.append(ref_sum(vals))
            elif kind in ("MIN", "MAX"):
                row.append(ref_min_max(vals, q.coll(col), kind == "MAX"))
            elif kind == "AVG":
                row.append(ref_avg(vals, 2 if col == D else 0))
            elif kind.startswith("BIT_"):
                row.append(ref_bits(vals, kind))
            elif kind == "COUNT_DISTINCT":
                row.append(len(ref_distinct(vals, q.coll(col))))
            elif kind == "SUM_DISTINCT":
                row.append(ref_sum(ref_distinct(vals, q.coll(col))))
            elif kind == "AVG_DISTINCT":
                row.append(ref_avg(ref_distinct(vals, None), 2))
        out.append(tuple(row))
    return out


def canonical(rows: Iterable[tuple], q: Query, str_positions: set[int]) -> list[tuple]:
    """Collation-equal strings are interchangeable (MySQL may return any of them); AVG keeps its scale."""
    avg = set(q.avg_indexes())
    out = []
    for r in rows:
        out.append(
            tuple(
                ("str", REF_STR_KEYS[q.collation](v))
                if i in str_positions and isinstance(v, str)
                else ("avg", str(v))
                if i in avg
                else v
                for i, v in enumerate(r)
            )
        )
    return out


@settings(max_examples=300, deadline=None)
@given(
    shards=sharded(),
    gcols=st.lists(st.sampled_from([G, S]), max_size=2, unique=True),
    gdesc=st.lists(st.booleans(), min_size=2, max_size=2),
    with_distinct=st.booleans(),
    collation=st.sampled_from(COLLATIONS),
    sorted_shards=st.booleans(),
    having=st.none() | st.integers(0, 4),
    order=st.sampled_from(["none", "group", "count_desc"]),
    offset=offsets,
    limit=limits,
)
def test_group_by_merge_matches_whole_table(
    shards, gcols, gdesc, with_distinct, collation, sorted_shards, having, order, offset, limit
):
    q = Query(gcols, with_distinct, collation)
    group_items = tuple(
        OrderItem(i, d, q.coll(c)) for i, (c, d) in enumerate(zip(q.gcols, gdesc, strict=False))
    )
    per_shard = [shard_partials(s, q) for s in shards]
    if sorted_shards and group_items:
        per_shard = [ref_sorted(p, group_items) for p in per_shard]  # router added ORDER BY <group cols>

    count_idx = q.count_star_index()
    if order == "group":
        order_by = group_items
    elif order == "count_desc":
        order_by = (OrderItem(count_idx, True), *group_items)
    else:
        order_by = ()
    # Group columns end every ORDER BY here, so the order is total (a scalar aggregate is one row);
    # otherwise which groups a bare LIMIT returns is unspecified in MySQL.
    total_order = bool(order_by) or not gcols
    if not total_order:
        offset, limit = 0, None
    plan = MergePlan(
        order_by=order_by,
        group_by=group_items,
        aggregates=q.plan_aggregates(),
        having=None if having is None else (lambda r: r[count_idx] >= having),
        offset=offset,
        limit=limit,
        visible_columns=q.visible,
        shards_sorted_by_group=sorted_shards,
    )

    got = list(merge(per_shard, plan))

    expected = ref_final(whole(shards), q)
    if not gcols:
        assert len(expected) == 1  # scalar aggregates always produce one row before HAVING
    if having is not None:
        expected = [r for r in expected if r[count_idx] >= having]
    str_pos = {i for i, c in enumerate(q.gcols) if c == S}
    str_pos |= {q.first_agg + i for i, (k, c) in enumerate(q.aggs) if c == S and k in ("MIN", "MAX")}
    assert all(len(r) == q.visible for r in got)
    if total_order:
        expected = page(ref_sorted(expected, order_by), offset, limit)
        assert canonical(got, q, str_pos) == canonical(expected, q, str_pos)
    else:
        assert Counter(canonical(got, q, str_pos)) == Counter(canonical(expected, q, str_pos))


def test_scalar_aggregates_over_empty_shards():
    aggs = (
        Aggregate("COUNT", 0),
        Aggregate("SUM", 1),
        Aggregate("MIN", 2),
        Aggregate("MAX", 3),
        Aggregate("AVG", 4, sum_index=6, count_index=7),
        Aggregate("COUNT_DISTINCT", 5, distinct_index=8),
    )
    plan = MergePlan(aggregates=aggs, visible_columns=6)
    # COUNT(DISTINCT) pushes down GROUP BY x, so empty shards return no row at all.
    assert list(merge([[], [], []], plan)) == [(0, None, None, None, None, 0)]
    assert list(merge([], plan)) == [(0, None, None, None, None, 0)]
    # Without DISTINCT aggregates every shard returns its own single row.
    plan2 = MergePlan(aggregates=aggs[:5], visible_columns=5)
    empty_row = (0, None, None, None, None, None, None, 0)
    assert list(merge([[empty_row], [empty_row]], plan2)) == [(0, None, None, None, None)]
    rows = [[empty_row], [(2, Decimal("3"), 1, 2, None, None, Decimal("3"), 2)], [empty_row]]
    assert list(merge(rows, plan2)) == [(2, Decimal("3"), 1, 2, Decimal("1.5000"))]


def test_scalar_aggregate_having_can_remove_the_row():
    plan = MergePlan(aggregates=(Aggregate("COUNT", 0),), having=lambda r: r[0] > 5)
    assert list(merge([[(2,)], [(3,)]], plan)) == []
    assert list(merge([[(2,)], [(4,)]], plan)) == [(6,)]


@pytest.mark.parametrize(
    ("sums", "counts", "expected"),
    [
        ([Decimal("1"), Decimal("2")], [1, 1], "1.5000"),  # AVG(INT): scale 0 + 4
        ([Decimal("2"), None], [3, 0], "0.6667"),  # rounds half up like MySQL
        ([Decimal("-2")], [3], "-0.6667"),
        ([Decimal("1.25"), Decimal("0.50")], [2, 1], "0.583333"),  # DECIMAL(x,2): scale 2 + 4
        ([None, None], [0, 0], "None"),
        ([1.5, 2.5], [1, 1], "2.0"),  # FLOAT/DOUBLE stay float
    ],
)
def test_avg_precision(sums, counts, expected):
    plan = MergePlan(aggregates=(Aggregate("AVG", 0, sum_index=1, count_index=2),), visible_columns=1)
    shards = [[(None, s, c)] for s, c in zip(sums, counts, strict=True)]
    (row,) = merge(shards, plan)
    assert str(row[0]) == expected


def test_sum_keeps_full_decimal_precision():
    big = Decimal("12345678901234567890123456789012345.123456789012345678901234567890")
    plan = MergePlan(aggregates=(Aggregate("SUM", 0),))
    # The default 28-digit decimal context would round this DECIMAL(65,30)-sized sum.
    assert next(merge([[(big,)], [(big,)]], plan))[0] == Decimal(
        "24691357802469135780246913578024690.246913578024691357802469135780"
    )


def test_group_by_case_insensitive_keeps_first_key_and_merges():
    ci = "utf8mb4_general_ci"
    plan = MergePlan(
        group_by=(OrderItem(0, collation=ci),),
        aggregates=(Aggregate("COUNT", 1), Aggregate("MAX", 2, collation=ci)),
    )
    shards = [[("a", 2, "x"), ("B", 1, "y")], [("A ", 5, "Z"), ("á", 1, "z"), ("b", 1, "Y")]]
    assert list(merge(shards, plan)) == [("a", 8, "Z"), ("B", 2, "y")]


def test_count_distinct_unions_values_across_shards():
    # SELECT g, COUNT(DISTINCT x) ... pushed down as SELECT g, NULL, x ... GROUP BY g, x
    plan = MergePlan(
        group_by=(OrderItem(0),),
        aggregates=(Aggregate("COUNT_DISTINCT", 1, distinct_index=2, collation="utf8mb4_0900_ai_ci"),),
        visible_columns=2,
        shards_sorted_by_group=True,
    )
    shards = [
        [(1, None, "a"), (1, None, "b"), (2, None, None)],
        [(1, None, "A"), (1, None, "c"), (2, None, "q")],
    ]
    assert list(merge(shards, plan)) == [(1, 3), (2, 1)]


def test_multi_column_count_distinct_skips_rows_with_nulls():
    plan = MergePlan(aggregates=(Aggregate("COUNT_DISTINCT", 0, distinct_index=(1, 2)),), visible_columns=1)
    shards = [[(None, 1, 1), (None, 1, None)], [(None, 1, 1), (None, 2, 1)]]
    assert list(merge(shards, plan)) == [(2,)]


def test_sorted_group_merge_is_lazy():
    # Each shard sorted by g with 10 rows per group; LIMIT 2 must not drain the shards.
    shards = [Counting((g, 1) for g in range(1000) for _ in range(10)) for _ in range(3)]
    plan = MergePlan(
        group_by=(OrderItem(0),),
        order_by=(OrderItem(0),),
        aggregates=(Aggregate("COUNT", 1),),
        limit=2,
        shards_sorted_by_group=True,
    )
    assert list(merge(shards, plan)) == [(0, 30), (1, 30)]
    assert sum(s.pulled for s in shards) <= 3 * 10 * 3 + 3


def test_sorted_group_merge_rejects_shards_out_of_order():
    # A shard whose order disagrees with ours would split a group; that must not pass silently.
    plan = MergePlan(
        group_by=(OrderItem(0),), aggregates=(Aggregate("COUNT", 1),), shards_sorted_by_group=True
    )
    with pytest.raises(MergeOrderError):
        list(merge([[("b", 1), ("a", 1)], [("a", 1)]], plan))


def test_order_by_aggregate_uses_top_n():
    plan = MergePlan(
        group_by=(OrderItem(0),),
        aggregates=(Aggregate("SUM", 1),),
        order_by=(OrderItem(1, descending=True), OrderItem(0)),
        limit=2,
    )
    shards = [[("a", 1), ("b", 5)], [("c", 7), ("a", 9), ("d", None)]]
    assert list(merge(shards, plan)) == [("a", 10), ("c", 7)]


def test_distinct_over_groups_ordered_by_aggregate_with_limit():
    # SELECT DISTINCT COUNT(*) FROM t GROUP BY g ORDER BY COUNT(*) DESC LIMIT 2 (g hidden):
    # duplicates must be removed before the limit, so no top-N shortcut may cut them early.
    plan = MergePlan(
        group_by=(OrderItem(1),),
        aggregates=(Aggregate("COUNT", 0),),
        order_by=(OrderItem(0, descending=True),),
        distinct=True,
        limit=2,
        visible_columns=1,
    )
    shards = [[(3, "a"), (3, "b"), (1, "c")], [(2, "d"), (1, "e")]]
    assert list(merge(shards, plan)) == [(3,), (2,)]


def test_having_sees_merged_avg_derived_columns():
    # SELECT g, AVG(x) ... HAVING COUNT(x) > 2, where COUNT(x) is AVG's hidden derived column.
    plan = MergePlan(
        group_by=(OrderItem(0),),
        aggregates=(Aggregate("AVG", 1, sum_index=2, count_index=3),),
        having=lambda r: r[3] > 2,
        visible_columns=2,
    )
    shards = [[("a", None, Decimal("3"), 2), ("b", None, Decimal("1"), 1)], [("a", None, Decimal("4"), 1)]]
    assert list(merge(shards, plan)) == [("a", Decimal("2.3333"))]


# ---------------------------------------------------------------- DISTINCT


@settings(max_examples=200, deadline=None)
@given(
    shards=sharded(),
    collation=st.sampled_from(COLLATIONS),
    ordered=st.booleans(),
    offset=offsets,
    limit=limits,
)
def test_distinct_matches_whole_table(shards, collation, ordered, offset, limit):
    # SELECT DISTINCT s, g FROM t [ORDER BY s, g]; shards run the same DISTINCT themselves.
    q = Query([], False, collation)
    items = (OrderItem(0, collation=collation), OrderItem(1))

    def distinct(rows: Iterable[tuple]) -> list[tuple]:
        seen: dict[Any, tuple] = {}
        for s, g, _d, _n in rows:
            seen.setdefault((ref_value_key(s, collation), g), (s, g))
        return list(seen.values())

    per_shard = [distinct(s) for s in shards]
    if ordered:
        per_shard = [
            page(ref_sorted(p, items), 0, None if limit is None else offset + limit) for p in per_shard
        ]
    else:
        offset, limit = 0, None
    plan = MergePlan(
        order_by=items if ordered else (),
        distinct=True,
        offset=offset,
        limit=limit,
        column_collations=(collation, None),
    )
    got = canonical(merge(per_shard, plan), q, {0})
    expected = distinct(whole(shards))
    if ordered:
        assert got == canonical(page(ref_sorted(expected, items), offset, limit), q, {0})
    else:
        assert Counter(got) == Counter(canonical(expected, q, {0}))


@settings(max_examples=200, deadline=None)
@given(
    shards=sharded(),
    cols=st.lists(st.sampled_from([G, S, D, N]), max_size=4, unique=True),
    desc=st.lists(st.booleans(), min_size=4, max_size=4),
    collation=st.sampled_from(COLLATIONS),
    distinct=st.booleans(),
    offset=offsets,
    limit=limits,
)
def test_pick_gives_merges_rows_as_the_shards_items(shards, cols, desc, collation, distinct, offset, limit):
    """Rows kept as items (their wire bytes, in the sidecar) come out as merge() orders and
    chooses them; an item is decoded only when the plan compares rows."""
    items = tuple(OrderItem(c, d, collation if c == S else None) for c, d in zip(cols, desc, strict=False))
    per_shard = [ref_sorted(s, items) if items else s for s in shards]
    if distinct:
        per_shard = [list({tuple(mysql_sort_key(v, collation if i == S else None) for i, v in enumerate(r)): r
                           for r in reversed(rows)}.values())[::-1] for rows in per_shard]
        per_shard = [ref_sorted(rows, items) for rows in per_shard]
    plan = MergePlan(order_by=items, distinct=distinct, offset=offset, limit=limit, visible_columns=4,
                     column_collations=(None, collation, None, None))
    assert picks_whole_rows(plan, 4)
    tagged = [[(row, f"{n}:{i}") for i, row in enumerate(rows)] for n, rows in enumerate(per_shard)]
    decoded = []

    def decode(item):
        decoded.append(item)
        return item[0]

    got = list(pick(tagged, plan, decode))
    assert [row for row, _tag in got] == list(merge(per_shard, plan))
    assert len({tag for _row, tag in got}) == len(got)  # each item at most once, as given
    if not items and not distinct:
        assert decoded == []


def test_pick_distinct_ordered_by_every_column_keeps_the_first_of_equal_rows():
    """SELECT DISTINCT s ORDER BY s: equal rows (under the collation) arrive together, the
    first one of them (lowest shard on ties) is kept."""
    coll = "utf8mb4_general_ci"
    plan = MergePlan(order_by=(OrderItem(0, collation=coll),), distinct=True, visible_columns=1,
                     column_collations=(coll,))
    shards = [[("a",), ("B",), ("c ",)], [("A",), ("b",), ("C",), ("d",)]]
    tagged = [[(row, n) for row in rows] for n, rows in enumerate(shards)]
    assert list(pick(tagged, plan, lambda item: item[0])) == [(("a",), 0), (("B",), 0), (("c ",), 0), (("d",), 1)]
    assert [row for row, _ in pick(tagged, plan, lambda item: item[0])] == list(merge(shards, plan))


def test_picks_whole_rows_only_without_aggregates_having_or_hidden_columns():
    assert picks_whole_rows(MergePlan(order_by=(OrderItem(0),), distinct=True, limit=3), 2)
    assert not picks_whole_rows(MergePlan(order_by=(OrderItem(1),), visible_columns=1), 2)
    assert not picks_whole_rows(MergePlan(group_by=(OrderItem(0),)), 2)
    assert not picks_whole_rows(MergePlan(aggregates=(Aggregate("SUM", 0),)), 1)
    assert not picks_whole_rows(MergePlan(having=lambda row: True), 1)


def test_distinct_uses_only_visible_columns():
    plan = MergePlan(order_by=(OrderItem(1),), distinct=True, visible_columns=1)
    assert list(merge([[("x", 1), ("y", 2)], [("x", 3)]], plan)) == [("x",), ("y",)]


# ---------------------------------------------------------------- helpers and validation


def test_mysql_sort_key_semantics():
    k = mysql_sort_key
    assert k(None) < k(-(10**30)) < k(Decimal("-1.5")) < k(-1) < k(0.5) < k(1) < k(Decimal("1.01"))
    assert k(1) == k(Decimal("1.00")) == k(1.0) and hash(k(1)) == hash(k(Decimal("1.00")))
    assert k(dt.date(2024, 1, 2)) == k(dt.datetime(2024, 1, 2)) < k(dt.datetime(2024, 1, 2, 0, 0, 1))
    assert k(dt.time(1, 2, 3)) == k(dt.timedelta(hours=1, minutes=2, seconds=3))
    assert k(b"a") < k(b"b")
    with pytest.raises(TypeError):
        k(object())


@pytest.mark.parametrize(
    ("collation", "a", "b", "rel"),
    [
        ("utf8mb4_general_ci", "a", "A", "=="),
        ("utf8mb4_general_ci", "é", "E", "=="),
        ("utf8mb4_general_ci", "a  ", "a", "=="),  # PAD SPACE
        ("utf8mb4_general_ci", "z", "_", "<"),  # general_ci weighs letters as upper case
        ("utf8mb4_general_ci", "😀", "🐬", "=="),  # all supplementary characters are equal
        ("utf8mb4_general_ci", "ß", "s", "=="),
        ("utf8mb4_unicode_ci", "Straße", "STRASSE", "=="),
        ("utf8mb4_unicode_ci", "a ", "a", "=="),
        ("utf8mb4_0900_ai_ci", "a ", "a", ">"),  # NO PAD
        ("utf8mb4_0900_ai_ci", "Ångström", "angstrom", "=="),
        ("utf8mb4_0900_ai_ci", "_", "a", "<"),
        ("utf8mb4_0900_ai_ci", "9", "a", "<"),
        ("utf8mb4_0900_ai_ci", "ﬁ", "fi", "=="),
        ("utf8mb4_0900_ai_ci", "a-b", "a_b", ">"),  # DUCET: '_' < '-' < ... < '$' < digits
        ("utf8mb4_0900_ai_ci", "$", "0", "<"),
        ("utf8mb4_0900_ai_ci", "\t", " ", "<"),
        ("utf8mb4_0900_as_ci", "é", "e", ">"),
        ("utf8mb4_0900_as_ci", "É", "é", "=="),
        ("utf8mb4_0900_as_cs", "a", "A", "<"),
        ("utf8mb4_0900_as_cs", "A", "á", "<"),
        ("utf8mb4_0900_as_cs", "Ab", "ab", ">"),
        ("utf8mb4_bin", "a ", "a", "=="),  # utf8mb4_bin is PAD SPACE too
        ("utf8mb4_bin", "B", "a", "<"),
        ("utf8mb4_0900_bin", "a ", "a", ">"),
        ("binary", "a ", "a", ">"),
        (None, "é", "f", ">"),
    ],
)
def test_collation_examples(collation, a, b, rel):
    ka, kb = mysql_sort_key(a, collation), mysql_sort_key(b, collation)
    assert {"==": ka == kb, "<": ka < kb, ">": ka > kb}[rel]


def test_row_key_helpers():
    items = (OrderItem(0, collation="utf8mb4_general_ci"), OrderItem(1, descending=True))
    assert group_key(("abc", 1), items) == group_key(("ABC ", 1), items)
    assert row_sort_key(("a", 2), items) < row_sort_key(("a", 1), items) < row_sort_key(("a", None), items)


def test_bit_aggregates():
    plan = MergePlan(aggregates=(Aggregate("BIT_OR", 0), Aggregate("BIT_AND", 1), Aggregate("BIT_XOR", 2)))
    assert list(merge([[(1, 7, 3)], [(4, 5, 1)]], plan)) == [(5, 5, 2)]
    assert list(merge([], plan)) == [(0, (1 << 64) - 1, 0)]


def test_invalid_plans_rejected():
    with pytest.raises(ValueError):
        Aggregate("MEDIAN", 0)
    with pytest.raises(ValueError):
        Aggregate("AVG", 0)
    with pytest.raises(ValueError):
        Aggregate("COUNT_DISTINCT", 0)
    with pytest.raises(ValueError):
        OrderItem(0, collation="klingon_ci_xx")
    with pytest.raises(ValueError):
        MergePlan(limit=-1)
    assert Aggregate("count", 0).kind == "COUNT"
