"""Pure result-merge engine: combine per-shard result rows into what one MySQL server would return.

Rows arrive already decoded (None, int, Decimal, float, str, bytes, date/time
types).  The router rewrites the logical query per shard; this module only
needs a :class:`MergePlan` describing how to put the pieces back together:

1. rows are merged: a lazy k-way merge when shards are sorted (ORDER BY, or
   GROUP BY with ``shards_sorted_by_group``), otherwise concatenated/hashed;
2. GROUP BY / aggregate partials are re-aggregated;
3. HAVING, then ORDER BY (only re-sorted when the stream is not already in
   that order), DISTINCT, OFFSET/LIMIT, and finally hidden columns are cut.

Everything is a generator chain, so with a LIMIT the shards are only pulled
as far as needed.  Comparisons follow MySQL (see :func:`mysql_sort_key`).

Known deviations from MySQL are listed in :func:`merge`'s docstring.
"""

from __future__ import annotations

import datetime as _dt
import heapq
import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

from sharding.collation import collation_info, collation_key, collation_keyer

__all__ = [
    "AGGREGATE_KINDS",
    "Aggregate",
    "MergeOrderError",
    "MergePlan",
    "OrderItem",
    "group_key",
    "merge",
    "mysql_sort_key",
    "pick",
    "picks_whole_rows",
    "row_sort_key",
]

Row = tuple[Any, ...]


class MergeOrderError(RuntimeError):
    """A shard claimed to be sorted by the group key but its rows are not in our key order."""


# Big enough for DECIMAL(65,30) sums without the default 28-digit context rounding them.
_DEC = Context(prec=200, rounding=ROUND_HALF_UP)
_DIV_PRECISION_INCREMENT = 4  # MySQL's div_precision_increment default
_DECIMAL_MAX_SCALE = 30
_BIT_AND_EMPTY = (1 << 64) - 1  # MySQL BIT_AND over no rows

AGGREGATE_KINDS = frozenset(
    {
        "COUNT",
        "SUM",
        "MIN",
        "MAX",
        "AVG",
        "COUNT_DISTINCT",
        "SUM_DISTINCT",
        "AVG_DISTINCT",
        "BIT_OR",
        "BIT_AND",
        "BIT_XOR",
    }
)
_DISTINCT_KINDS = frozenset({"COUNT_DISTINCT", "SUM_DISTINCT", "AVG_DISTINCT"})


# ---------------------------------------------------------------- plan


@dataclass(frozen=True)
class OrderItem:
    """One ORDER BY / GROUP BY key: a column position in the shard rows."""

    index: int
    descending: bool = False
    collation: str | None = None  # None = binary / numeric compare

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError("OrderItem.index must be >= 0")
        collation_info(self.collation)  # fail fast on unknown collations


@dataclass(frozen=True)
class Aggregate:
    """An aggregate output column and where its partial state lives in the shard rows.

    * COUNT / SUM / MIN / MAX / BIT_*: the shard's partial result is at ``index``.
    * AVG: the router asks shards for SUM and COUNT into ``sum_index``/``count_index``.
    * *_DISTINCT: shards group by the argument too, and return it at
      ``distinct_index`` (a tuple for ``COUNT(DISTINCT a, b)``); the value at
      ``index`` is ignored and overwritten.
    * ``collation`` applies to string values for MIN/MAX and distinct equality.
    """

    kind: str
    index: int
    sum_index: int | None = None
    count_index: int | None = None
    distinct_index: int | tuple[int, ...] | None = None
    collation: str | None = None

    def __post_init__(self) -> None:
        kind = self.kind.upper().replace(" ", "_")
        object.__setattr__(self, "kind", kind)
        if kind not in AGGREGATE_KINDS:
            raise ValueError(f"unsupported aggregate kind: {self.kind!r}")
        if kind == "AVG" and (self.sum_index is None or self.count_index is None):
            raise ValueError("AVG needs sum_index and count_index")
        if kind in _DISTINCT_KINDS:
            if self.distinct_index is None:
                raise ValueError(f"{kind} needs distinct_index")
            if kind != "COUNT_DISTINCT" and not isinstance(self.distinct_index, int):
                raise ValueError(f"{kind} takes a single distinct_index")
        collation_info(self.collation)

    @property
    def distinct_indexes(self) -> tuple[int, ...]:
        d = self.distinct_index
        if d is None:
            return ()
        return (d,) if isinstance(d, int) else tuple(d)


@dataclass(frozen=True)
class MergePlan:
    order_by: tuple[OrderItem, ...] = ()
    group_by: tuple[OrderItem, ...] = ()
    aggregates: tuple[Aggregate, ...] = ()
    having: Callable[[Row], bool] | None = None  # on merged full-width rows
    distinct: bool = False
    offset: int = 0
    limit: int | None = None
    visible_columns: int | None = None  # trailing derived columns are cut after everything else
    shards_sorted_by_group: bool = False  # shards ordered by group_by (with its directions)
    # Per output column collation, used by DISTINCT; missing entries = binary.
    column_collations: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        if self.offset < 0:
            raise ValueError("offset must be >= 0")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")
        if self.visible_columns is not None and self.visible_columns < 0:
            raise ValueError("visible_columns must be >= 0")
        for c in self.column_collations:
            collation_info(c)

    @property
    def is_aggregating(self) -> bool:
        return bool(self.group_by or self.aggregates)


# ---------------------------------------------------------------- comparison


# Type ranks keep keys comparable when a column mixes types (MySQL would coerce instead).
_R_NULL, _R_NUM, _R_TEMPORAL, _R_DURATION, _R_STR, _R_BYTES = range(6)
_NULL_KEY: tuple[int] = (_R_NULL,)


def mysql_sort_key(value: Any, collation: str | None = None) -> Hashable:
    """Key whose ``<`` / ``==`` / ``hash`` follow MySQL comparison for one value.

    NULL is smallest (so first in ASC, last in DESC); int/Decimal/float compare
    numerically with each other; DATE compares as midnight DATETIME; TIME as a
    duration; str by ``collation`` (see :mod:`sharding.collation`); bytes by byte.
    Under the ``binary`` collation str is compared as its UTF-8 bytes.
    """
    if value is None:
        return _NULL_KEY
    if isinstance(value, (int, float, Decimal)):  # bool is an int, as in MySQL
        return (_R_NUM, value)
    if isinstance(value, str):
        if collation is not None and collation.lower() == "binary":
            return (_R_BYTES, value.encode("utf-8"))
        return (_R_STR, collation_key(value, collation))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return (_R_BYTES, bytes(value))
    if isinstance(value, _dt.datetime):
        return (_R_TEMPORAL, value)
    if isinstance(value, _dt.date):
        return (_R_TEMPORAL, _dt.datetime(value.year, value.month, value.day))
    if isinstance(value, _dt.timedelta):
        return (_R_DURATION, value)
    if isinstance(value, _dt.time):
        return (
            _R_DURATION,
            _dt.timedelta(
                hours=value.hour, minutes=value.minute, seconds=value.second, microseconds=value.microsecond
            ),
        )
    raise TypeError(f"cannot compare value of type {type(value).__name__}")


class _Desc:
    """Inverts the order of a key (DESC) while keeping equality; NULL therefore sorts last."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __lt__(self, other: _Desc) -> bool:
        return other.key < self.key

    def __gt__(self, other: _Desc) -> bool:
        return self.key < other.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"_Desc({self.key!r})"


def _value_key_func(collation: str | None, descending: bool) -> Callable[[Any], Any]:
    """mysql_sort_key of one column's values (inverted for DESC), the collation looked up once."""
    if collation is not None and collation.lower() == "binary":
        def key(value: Any) -> Any:
            return mysql_sort_key(value, collation)
    else:
        str_key = collation_keyer(collation)

        def key(value: Any) -> Any:
            if type(value) is str:  # the common case first
                return (_R_STR, str_key(value))
            return mysql_sort_key(value, collation)
    if descending:
        return lambda value: _Desc(key(value))
    return key


def _row_key_func(items: Sequence[OrderItem], directional: bool) -> Callable[[Sequence[Any]], tuple]:
    specs = tuple((i.index, _value_key_func(i.collation, directional and i.descending)) for i in items)
    if len(specs) == 1:
        index, value_key = specs[0]
        return lambda row: (value_key(row[index]),)
    return lambda row: tuple([value_key(row[index]) for index, value_key in specs])


def row_sort_key(row: Sequence[Any], items: Sequence[OrderItem]) -> tuple:
    """Sort key of a row for an ORDER BY list (ascending key order == the ORDER BY order)."""
    return _row_key_func(items, directional=True)(row)


def group_key(row: Sequence[Any], items: Sequence[OrderItem]) -> tuple:
    """Hashable key of a row's group: equal iff the group columns are equal under their collations."""
    return _row_key_func(items, directional=False)(row)


# ---------------------------------------------------------------- arithmetic


def _num_add(a: Any, b: Any) -> Any:
    """SQL-ish addition of partials: NULLs are skipped; float wins over exact types."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, float) or isinstance(b, float):
        return float(a) + float(b)
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        return _DEC.add(a, b)
    return a + b


def _scale(value: Any) -> int:
    if isinstance(value, Decimal):
        exp = value.as_tuple().exponent
        return -exp if isinstance(exp, int) and exp < 0 else 0
    return 0


def _mysql_avg(total: Any, count: Any, scale: int) -> Any:
    """AVG = SUM / COUNT; exact inputs give DECIMAL with scale + div_precision_increment (half up)."""
    if total is None or not count:
        return None
    if isinstance(total, float):
        return total / count
    q = Decimal(1).scaleb(-min(scale + _DIV_PRECISION_INCREMENT, _DECIMAL_MAX_SCALE))
    return _DEC.quantize(_DEC.divide(Decimal(total), Decimal(count)), q)


def _exact_sum(values: Iterable[Any]) -> Any:
    """SUM over raw column values (SUM(DISTINCT)): MySQL returns DECIMAL for exact inputs."""
    total: Any = None
    for v in values:
        total = _num_add(total, v)
    if isinstance(total, int):
        return Decimal(total)
    return total


# ---------------------------------------------------------------- accumulators


class _Acc:
    """Merges one aggregate's partial states of a group; writes the final values into the row."""

    __slots__ = ("agg",)

    def __init__(self, agg: Aggregate) -> None:
        self.agg = agg

    def add(self, row: Sequence[Any]) -> None:
        raise NotImplementedError

    def write(self, out: list[Any]) -> None:
        raise NotImplementedError


class _CountAcc(_Acc):
    __slots__ = ("total",)

    def __init__(self, agg: Aggregate) -> None:
        super().__init__(agg)
        self.total = 0

    def add(self, row: Sequence[Any]) -> None:
        v = row[self.agg.index]
        if v is not None:
            self.total += int(v)

    def write(self, out: list[Any]) -> None:
        out[self.agg.index] = self.total


class _SumAcc(_Acc):
    __slots__ = ("total",)

    def __init__(self, agg: Aggregate) -> None:
        super().__init__(agg)
        self.total: Any = None

    def add(self, row: Sequence[Any]) -> None:
        self.total = _num_add(self.total, row[self.agg.index])

    def write(self, out: list[Any]) -> None:
        out[self.agg.index] = self.total


class _MinMaxAcc(_Acc):
    __slots__ = ("best", "best_key", "is_max")

    def __init__(self, agg: Aggregate) -> None:
        super().__init__(agg)
        self.best: Any = None
        self.best_key: Any = None
        self.is_max = agg.kind == "MAX"

    def add(self, row: Sequence[Any]) -> None:
        v = row[self.agg.index]
        if v is None:
            return
        k = mysql_sort_key(v, self.agg.collation)
        # Strict comparison: on collation ties the first value seen wins.
        if self.best_key is None or (k > self.best_key if self.is_max else k < self.best_key):
            self.best, self.best_key = v, k

    def write(self, out: list[Any]) -> None:
        out[self.agg.index] = self.best


class _AvgAcc(_Acc):
    __slots__ = ("total", "count", "scale")

    def __init__(self, agg: Aggregate) -> None:
        super().__init__(agg)
        self.total: Any = None
        self.count = 0
        self.scale = 0

    def add(self, row: Sequence[Any]) -> None:
        s = row[self.agg.sum_index]  # type: ignore[index]
        c = row[self.agg.count_index]  # type: ignore[index]
        if s is not None:
            self.total = _num_add(self.total, s)
            self.scale = max(self.scale, _scale(s))
        if c is not None:
            self.count += int(c)

    def write(self, out: list[Any]) -> None:
        # Keep the derived columns consistent for HAVING/ORDER BY on them; the average goes
        # last because the router may reuse the AVG column itself for the SUM.
        out[self.agg.sum_index] = self.total  # type: ignore[index]
        out[self.agg.count_index] = self.count  # type: ignore[index]
        out[self.agg.index] = _mysql_avg(self.total, self.count, self.scale)


class _DistinctAcc(_Acc):
    """Union of the distinct argument values the shards returned (NULLs never count)."""

    __slots__ = ("values", "scale", "indexes")

    def __init__(self, agg: Aggregate) -> None:
        super().__init__(agg)
        self.values: dict[Hashable, Any] = {}
        self.scale = 0
        self.indexes = agg.distinct_indexes

    def add(self, row: Sequence[Any]) -> None:
        vals = [row[i] for i in self.indexes]
        if any(v is None for v in vals):
            return
        coll = self.agg.collation
        key = tuple(mysql_sort_key(v, coll) for v in vals)
        if key not in self.values:
            self.values[key] = vals[0]
        self.scale = max(self.scale, _scale(vals[0]))

    def write(self, out: list[Any]) -> None:
        kind = self.agg.kind
        if kind == "COUNT_DISTINCT":
            out[self.agg.index] = len(self.values)
        elif kind == "SUM_DISTINCT":
            out[self.agg.index] = _exact_sum(self.values.values())
        else:  # AVG_DISTINCT
            out[self.agg.index] = _mysql_avg(_exact_sum(self.values.values()), len(self.values), self.scale)


class _BitAcc(_Acc):
    __slots__ = ("total",)

    def __init__(self, agg: Aggregate) -> None:
        super().__init__(agg)
        # Start from the operation's identity, which is also MySQL's empty-set result.
        self.total = _BIT_AND_EMPTY if agg.kind == "BIT_AND" else 0

    def add(self, row: Sequence[Any]) -> None:
        v = row[self.agg.index]
        if v is None:
            return
        v = int(v)
        kind = self.agg.kind
        if kind == "BIT_OR":
            self.total |= v
        elif kind == "BIT_AND":
            self.total &= v
        else:
            self.total ^= v

    def write(self, out: list[Any]) -> None:
        out[self.agg.index] = self.total


_ACC_TYPES: dict[str, type[_Acc]] = {
    "COUNT": _CountAcc,
    "SUM": _SumAcc,
    "MIN": _MinMaxAcc,
    "MAX": _MinMaxAcc,
    "AVG": _AvgAcc,
    "COUNT_DISTINCT": _DistinctAcc,
    "SUM_DISTINCT": _DistinctAcc,
    "AVG_DISTINCT": _DistinctAcc,
    "BIT_OR": _BitAcc,
    "BIT_AND": _BitAcc,
    "BIT_XOR": _BitAcc,
}


class _Group:
    """One output group: the first row seen supplies the non-aggregate columns."""

    __slots__ = ("first", "accs")

    def __init__(self, first: Sequence[Any], aggregates: Sequence[Aggregate]) -> None:
        self.first = first
        self.accs = [_ACC_TYPES[a.kind](a) for a in aggregates]

    def add(self, row: Sequence[Any]) -> None:
        for acc in self.accs:
            acc.add(row)

    def finish(self) -> Row:
        out = list(self.first)
        for acc in self.accs:
            acc.write(out)
        return tuple(out)


# ---------------------------------------------------------------- pipeline stages


_END = object()


def _kway(
    shard_rows: Sequence[Iterable[Any]], items: Sequence[OrderItem], check_order: bool = False,
    decode: Callable[[Any], Row] | None = None,
) -> Iterator[tuple[tuple, Any]]:
    """Lazy merge of pre-sorted shard streams, yielding (sort key, row).

    Ties go to the lower shard index, then arrival order.  A shard is only
    pulled when its previous row has been consumed.  With ``check_order`` a
    shard stream that is not monotone under our key raises MergeOrderError.
    With ``decode`` the streams hold raw items (row payloads): the key is taken
    from the decoded row and the item itself is yielded.
    """
    row_key = _row_key_func(items, directional=True)
    keyf = row_key if decode is None else (lambda item: row_key(decode(item)))
    heap: list[tuple[tuple, int, Row, Iterator[Row]]] = []
    for i, rows in enumerate(shard_rows):
        it = iter(rows)
        row = next(it, _END)
        if row is not _END:
            heap.append((keyf(row), i, row, it))
    heapq.heapify(heap)  # (key, shard index) is unique, so rows are never compared
    while heap:
        key, i, row, it = heap[0]
        yield key, row
        nxt = next(it, _END)
        if nxt is _END:
            heapq.heappop(heap)
            continue
        nkey = keyf(nxt)
        if check_order and nkey < key:
            raise MergeOrderError(
                f"shard {i} is not sorted by the group key as this merger orders it "
                f"(collation approximation mismatch?): {nxt!r} after {row!r}"
            )
        heapq.heapreplace(heap, (nkey, i, nxt, it))


def _row_width(plan: MergePlan) -> int:
    idx = [plan.visible_columns or 0]
    idx += [i.index + 1 for i in (*plan.order_by, *plan.group_by)]
    for a in plan.aggregates:
        idx += [a.index + 1] + [i + 1 for i in (a.sum_index, a.count_index) if i is not None]
        idx += [i + 1 for i in a.distinct_indexes]
    return max(idx)


def _scalar_aggregate(shard_rows: Sequence[Iterable[Row]], plan: MergePlan) -> Iterator[Row]:
    """Aggregates without GROUP BY: always exactly one row, even if no shard returned any."""
    group: _Group | None = None
    for rows in shard_rows:
        for row in rows:
            if group is None:
                group = _Group(row, plan.aggregates)
            group.add(row)
    if group is None:
        # No rows at all (e.g. COUNT(DISTINCT x) pushed down as GROUP BY x): empty-set values.
        group = _Group((None,) * _row_width(plan), plan.aggregates)
    yield group.finish()


def _sorted_group_aggregate(shard_rows: Sequence[Iterable[Row]], plan: MergePlan) -> Iterator[Row]:
    """Streaming re-aggregation: equal group keys are adjacent after the k-way merge."""
    # Equality of the directional key is collation equality, so it doubles as the group key.
    # The order check matters here: a shard ordered differently from our key would split a
    # group into two output rows, so fail loudly instead of returning wrong results.
    group: _Group | None = None
    current: tuple | None = None
    for k, row in _kway(shard_rows, plan.group_by, check_order=True):
        if group is not None and k == current:
            group.add(row)
            continue
        if group is not None:
            yield group.finish()
        group, current = _Group(row, plan.aggregates), k
        group.add(row)
    if group is not None:
        yield group.finish()


def _hash_group_aggregate(shard_rows: Sequence[Iterable[Row]], plan: MergePlan) -> Iterator[Row]:
    """Hash re-aggregation for unsorted shards; groups come out in first-seen order."""
    gkey = _row_key_func(plan.group_by, directional=False)
    groups: dict[tuple, _Group] = {}
    for rows in shard_rows:
        for row in rows:
            k = gkey(row)
            g = groups.get(k)
            if g is None:
                g = groups[k] = _Group(row, plan.aggregates)
            g.add(row)
    for g in groups.values():
        yield g.finish()


def _order_preserved(plan: MergePlan) -> bool:
    """Is the grouped stream already in ORDER BY order (so no re-sort is needed)?"""
    if not plan.order_by:
        return True
    if not plan.group_by:
        return True  # plain k-way merge, or a scalar aggregate's single row
    if not plan.shards_sorted_by_group:
        return False
    n = min(len(plan.order_by), len(plan.group_by))
    # Groups are unique on the group key, so sorting by it (or a prefix of it) fixes the order.
    return plan.order_by[:n] == plan.group_by[:n]


def _sort_rows(rows: Iterable[Row], items: Sequence[OrderItem], top: int | None) -> Iterator[Row]:
    key = _row_key_func(items, directional=True)
    # nsmallest is stable like sorted() and keeps only `top` rows in memory.
    ordered = heapq.nsmallest(top, rows, key=key) if top is not None else sorted(rows, key=key)
    yield from ordered


def _distinct_rows(rows: Iterable[Row], plan: MergePlan) -> Iterator[Row]:
    width = plan.visible_columns
    colls = plan.column_collations
    seen: set[tuple] = set()
    for row in rows:
        visible = row if width is None else row[:width]
        key = tuple(mysql_sort_key(v, colls[i] if i < len(colls) else None) for i, v in enumerate(visible))
        if key not in seen:
            seen.add(key)
            yield row


# ---------------------------------------------------------------- entry point


def merge(shard_rows: Sequence[Iterable[Row]], plan: MergePlan) -> Iterator[Row]:
    """Merge per-shard results according to ``plan``; returns a lazy iterator of rows.

    Contract with the router:

    * ORDER BY without aggregation: every shard stream is sorted by
      ``plan.order_by`` and carries the sort columns (hidden ones after the
      visible ones); ``LIMIT o, n`` was rewritten to ``LIMIT 0, o+n``.
    * GROUP BY: each shard returns partial aggregates per group (per
      (group, distinct-arg) for *_DISTINCT kinds); if
      ``shards_sorted_by_group`` every shard is sorted by ``plan.group_by``
      (in an order that :func:`mysql_sort_key` reproduces: numbers,
      temporals, binary/``_bin``/ASCII ``general_ci`` strings are safe;
      otherwise :class:`MergeOrderError` may be raised mid-stream, so prefer
      hash aggregation for keys under approximated collations).
    * Scalar aggregates: shards may return their single row or nothing.

    Known deviations from MySQL: see module docs of :mod:`sharding.collation`
    for string ordering; non-aggregated columns take the value of the first
    row seen (shard order); float SUM/AVG may differ in the last bits because
    addition order differs; scalar aggregate over zero returned rows fills
    non-aggregate columns with NULL.
    """
    if plan.limit == 0:
        return iter(())
    rows: Iterator[Row]
    if plan.is_aggregating:
        if not plan.group_by:
            rows = _scalar_aggregate(shard_rows, plan)
        elif plan.shards_sorted_by_group:
            rows = _sorted_group_aggregate(shard_rows, plan)
        else:
            rows = _hash_group_aggregate(shard_rows, plan)
    elif plan.order_by:
        rows = (row for _key, row in _kway(shard_rows, plan.order_by))
    else:
        rows = itertools.chain.from_iterable(shard_rows)

    if plan.having is not None:
        rows = filter(plan.having, rows)
    if not _order_preserved(plan):
        # DISTINCT may drop rows later, so the top-N shortcut is only safe without it.
        top = None if plan.limit is None or plan.distinct else plan.offset + plan.limit
        rows = _sort_rows(rows, plan.order_by, top)
    if plan.distinct:
        rows = _distinct_rows(rows, plan)
    if plan.offset or plan.limit is not None:
        stop = None if plan.limit is None else plan.offset + plan.limit
        rows = itertools.islice(rows, plan.offset, stop)
    if plan.visible_columns is not None:
        width = plan.visible_columns
        rows = (r[:width] for r in rows)
    return rows


# ---------------------------------------------------------------- whole rows as they came


def picks_whole_rows(plan: MergePlan, width: int) -> bool:
    """Does ``plan`` only choose and order the shards' rows of ``width`` columns, passing each
    on whole (no aggregate, no HAVING, no hidden column to cut)? Then see :func:`pick`."""
    return (not plan.is_aggregating and plan.having is None
            and (plan.visible_columns is None or plan.visible_columns == width))


def pick(shard_items: Sequence[Iterable[Any]], plan: MergePlan, decode: Callable[[Any], Row]) -> Iterator[Any]:
    """What :func:`merge` gives for a plan that picks whole rows, as the shards' own items
    (a row's wire bytes, say): ``decode`` gives an item's values, at least up to the last
    column the plan compares (every column for DISTINCT), and runs only when it compares any."""
    if plan.limit == 0:
        return iter(())
    stop = None if plan.limit is None else plan.offset + plan.limit
    if not plan.order_by and not plan.distinct:
        items = itertools.chain.from_iterable(shard_items)
        return itertools.islice(items, plan.offset, stop) if plan.offset or stop is not None else items
    if plan.order_by and (not plan.distinct or _order_decides_distinct(plan)):
        items = _merged_items(shard_items, plan.order_by, decode, plan.distinct)
        return itertools.islice(items, plan.offset, stop) if plan.offset or stop is not None else items
    # Each row carries its item last: compared by its values, handed on untouched.
    streams = [((*decode(item), item) for item in items) for items in shard_items]
    rows: Iterator[Row]
    if plan.order_by:
        rows = (row for _key, row in _kway(streams, plan.order_by))
    else:
        rows = itertools.chain.from_iterable(streams)
    rows = _distinct_carrying(rows, plan.column_collations)
    if plan.offset or stop is not None:
        rows = itertools.islice(rows, plan.offset, stop)
    return (row[-1] for row in rows)


def _merged_items(shard_items: Sequence[Iterable[Any]], order: Sequence[OrderItem], decode: Callable[[Any], Row],
                  distinct: bool) -> Iterator[Any]:
    """_kway over items of sorted shards, yielding the items themselves; with ``distinct``
    (the order compares every column) only the first of equal neighbours."""
    previous: Any = _END
    for key, item in _kway(shard_items, order, decode=decode):
        if not distinct or key != previous:
            previous = key
            yield item


def _order_decides_distinct(plan: MergePlan) -> bool:
    """Does ORDER BY compare every column, each under its DISTINCT collation? Then rows that
    DISTINCT takes as equal have equal sort keys and arrive next to each other."""
    colls = plan.column_collations
    compared = {(o.index, o.collation) for o in plan.order_by}
    return bool(colls) and all((i, c) in compared for i, c in enumerate(colls))


def _distinct_carrying(rows: Iterable[Row], colls: Sequence[str | None]) -> Iterator[Row]:
    """DISTINCT over rows whose last value is a carried item, not a column."""
    seen: set[tuple] = set()
    for row in rows:
        key = tuple(mysql_sort_key(v, colls[i] if i < len(colls) else None) for i, v in enumerate(row[:-1]))
        if key not in seen:
            seen.add(key)
            yield row
