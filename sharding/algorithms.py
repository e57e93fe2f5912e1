"""Sharding algorithms: map a sharding value to one of a list of target names.

Targets are data-source names (database strategy) or the actual table names of one data
source (table strategy). Every algorithm offers

* ``shard(targets, value) -> str``: the one target holding ``value`` (ShardingError if none);
* ``shard_range(targets, low, high, low_inclusive, high_inclusive) -> list[str]``: a superset
  of the targets that can hold values in the range (all targets when it cannot narrow);
  ``None`` as a bound means unbounded;
* ``supports_range``: whether ``shard_range`` can ever narrow.

Index-based algorithms (MOD, HASH_MOD, VOLUME_RANGE, BOUNDARY_RANGE) compute a shard number
and pick the target whose name ends in that number (``t_order_3`` is shard 3).
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import re
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, ClassVar

from sharding.errors import ShardingError
from sharding.inline import InlineError, Template, compile_template, stable_hash

Number = int | Decimal

# Guard rail for partition / interval enumeration.
MAX_PARTITIONS = 100_000
# Integer values the sampling checks (config validation) try against expression algorithms.
SAMPLE_INTS = range(0, 1001)


class AlgorithmPropsError(ValueError):
    """A bad algorithm definition; ``prop`` names the property at fault (None: the type)."""

    def __init__(self, prop: str | None, message: str):
        super().__init__(message)
        self.prop = prop


class NoTargetError(ShardingError):
    """The algorithm computed a target that is not among the given targets.

    Distinguished from other ShardingErrors so config validation can tell "this rule set can
    misroute" apart from "this sample value is not valid for the column".
    """


def null_error() -> ShardingError:
    return ShardingError("sharding column value is NULL", value=None)


# ---------------------------------------------------------------------------------------
# Value normalisation


def _text_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("ascii").strip()
        except UnicodeDecodeError:
            return None
    return None


def to_number(value: Any) -> Number:
    """int for integral values, Decimal otherwise; numeric text and bytes are parsed."""
    if value is None:
        raise null_error()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ShardingError(f"sharding value {value!r} is not a finite number", value=value)
        value = Decimal(repr(value))
    elif not isinstance(value, Decimal):
        text = _text_of(value)
        if text is None:
            raise ShardingError(f"sharding value {value!r} is not a number", value=value)
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise ShardingError(f"sharding value {value!r} is not a number", value=value) from None
    if not value.is_finite():
        raise ShardingError(f"sharding value {value!r} is not a finite number", value=value)
    return int(value) if value == value.to_integral_value() else value


def to_int(value: Any) -> int:
    number = to_number(value)
    if not isinstance(number, int):
        raise ShardingError(f"sharding value {value!r} is not an integer", value=value)
    return number


def to_datetime(value: Any, pattern: str | None = None) -> dt.datetime:
    """A naive datetime; aware values are taken at their wall-clock time (MySQL DATETIME has no zone)."""
    if value is None:
        raise null_error()
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    text = _text_of(value)
    if text is None:
        raise ShardingError(f"sharding value {value!r} is not a date or datetime", value=value)
    if pattern:
        try:
            return dt.datetime.strptime(text, pattern)
        except ValueError:
            pass  # fall back to ISO so both the configured pattern and ISO text work
    try:
        return dt.datetime.fromisoformat(text).replace(tzinfo=None)
    except ValueError:
        raise ShardingError(f"sharding value {value!r} is not a date or datetime"
                            + (f" (pattern {pattern!r})" if pattern else ""), value=value) from None


# ---------------------------------------------------------------------------------------
# Target lookup


@lru_cache(maxsize=4096)
def _suffix_map(targets: tuple[str, ...]) -> dict[int, tuple[str, ...]]:
    result: dict[int, list[str]] = {}
    for target in targets:
        match = re.search(r"(\d+)$", target)
        if match:
            result.setdefault(int(match.group(1)), []).append(target)
    return {k: tuple(v) for k, v in result.items()}


def target_with_suffix(targets: Sequence[str], index: int, value: Any = None) -> str:
    """The single target whose trailing integer is ``index``."""
    found = _suffix_map(tuple(targets)).get(index, ())
    if len(found) == 1:
        return found[0]
    if not found:
        raise NoTargetError(f"value {value!r} maps to shard {index}, but no target ends in {index} "
                            f"(targets: {list(targets)})", value=value)
    raise NoTargetError(f"value {value!r} maps to shard {index}, which is ambiguous: {list(found)}",
                        value=value)


@lru_cache(maxsize=65536)
def _target_ending(targets: tuple[str, ...], suffix: str) -> tuple[str, ...]:
    return tuple(t for t in targets if t.endswith(suffix))


def target_ending_with(targets: Sequence[str], suffix: str, value: Any = None) -> str:
    found = _target_ending(tuple(targets), suffix)
    if len(found) == 1:
        return found[0]
    if not found:
        raise NoTargetError(f"value {value!r} maps to suffix {suffix!r}, but no target ends with it "
                            f"(targets: {list(targets)})", value=value)
    raise NoTargetError(f"value {value!r} maps to suffix {suffix!r}, which is ambiguous: {list(found)}",
                        value=value)


def _in_order(targets: Sequence[str], chosen: Iterable[str]) -> list[str]:
    picked = set(chosen)
    return [t for t in targets if t in picked]


def _empty_range(low: Any, high: Any, low_inclusive: bool, high_inclusive: bool) -> bool:
    if low is None or high is None:
        return False
    return low > high or (low == high and not (low_inclusive and high_inclusive))


# ---------------------------------------------------------------------------------------
# Props helpers (ShardingSphere-style hyphenated names are accepted too)


def _props(props: Mapping[str, Any] | None, allowed: set[str]) -> dict[str, Any]:
    if props is not None and not isinstance(props, Mapping):
        raise AlgorithmPropsError("props", f"expected a mapping, got {type(props).__name__}")
    result = {str(k).replace("-", "_"): v for k, v in (props or {}).items()}
    for key in result:
        if key not in allowed:
            raise AlgorithmPropsError(key, f"unknown property; expected one of {sorted(allowed)}")
    return result


def _required(props: Mapping[str, Any], name: str) -> Any:
    if props.get(name) is None:
        raise AlgorithmPropsError(name, "is required")
    return props[name]


def _int_prop(props: Mapping[str, Any], name: str, default: int | None = None, low: int | None = None) -> int:
    raw = props.get(name, default)
    if raw is None:
        raise AlgorithmPropsError(name, "is required")
    if isinstance(raw, bool):
        raise AlgorithmPropsError(name, f"expected an integer, got {raw!r}")
    try:
        value = to_int(raw)
    except ShardingError:
        raise AlgorithmPropsError(name, f"expected an integer, got {raw!r}") from None
    if low is not None and value < low:
        raise AlgorithmPropsError(name, f"must be at least {low}, got {value}")
    return value


def _number_prop(props: Mapping[str, Any], name: str) -> Number:
    raw = _required(props, name)
    if isinstance(raw, bool):
        raise AlgorithmPropsError(name, f"expected a number, got {raw!r}")
    try:
        return to_number(raw)
    except ShardingError:
        raise AlgorithmPropsError(name, f"expected a number, got {raw!r}") from None


def _str_prop(props: Mapping[str, Any], name: str, default: str | None = None) -> str:
    raw = props.get(name, default)
    if raw is None:
        raise AlgorithmPropsError(name, "is required")
    if not isinstance(raw, str) or not raw.strip():
        raise AlgorithmPropsError(name, f"expected a non-empty string, got {raw!r}")
    return raw.strip()


def _template_prop(props: Mapping[str, Any], name: str) -> Template:
    source = _str_prop(props, name)
    try:
        return compile_template(source)
    except InlineError as exc:
        raise AlgorithmPropsError(name, str(exc)) from None


# ---------------------------------------------------------------------------------------
# Base classes


class ShardingAlgorithm(ABC):
    type_name: ClassVar[str]
    supports_range: ClassVar[bool] = False
    # COMPLEX takes a mapping of column -> value; HINT takes hint values, not columns.
    multi_column: ClassVar[bool] = False
    hint_based: ClassVar[bool] = False

    def __init__(self, props: Mapping[str, Any] | None = None):
        if props is not None and not isinstance(props, Mapping):
            raise AlgorithmPropsError("props", f"expected a mapping, got {type(props).__name__}")
        self.props: dict[str, Any] = dict(props or {})

    @abstractmethod
    def shard(self, targets: Sequence[str], value: Any) -> str: ...

    def shard_range(self, targets: Sequence[str], low: Any, high: Any,
                    low_inclusive: bool = True, high_inclusive: bool = True) -> list[str]:
        return list(targets)

    def validate_targets(self, targets: Sequence[str]) -> None:
        """Raise NoTargetError if some value could be routed to a target not in ``targets``."""
        return None  # algorithms that cannot be checked accept any targets

    def sample_values(self) -> list[Any]:
        """Representative values, used to cross-check strategies at config load."""
        return list(SAMPLE_INTS)

    @property
    def variables(self) -> frozenset[str]:
        """Column variables an expression algorithm reads (empty for the others)."""
        return frozenset()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.props!r})"


class IndexedAlgorithm(ShardingAlgorithm):
    """Computes a shard number in 0..shard_count-1 and picks the target with that suffix."""

    shard_count: int

    @abstractmethod
    def index_of(self, value: Any) -> int: ...

    def shard(self, targets: Sequence[str], value: Any) -> str:
        return target_with_suffix(targets, self.index_of(value), value)

    def validate_targets(self, targets: Sequence[str]) -> None:
        for index in range(self.shard_count):
            target_with_suffix(targets, index, f"<shard {index}>")

    def _targets_for(self, targets: Sequence[str], indices: Iterable[int]) -> list[str]:
        """Targets for the shard numbers a range covers.

        A shard number without a target is skipped: rule validation guarantees every value
        that can reach these targets has one, so a missing shard holds no rows here (e.g. the
        odd tables of a data source that only receives even keys).
        """
        suffixes = _suffix_map(tuple(targets))
        chosen: list[str] = []
        for index in indices:
            found = suffixes.get(index, ())
            if len(found) > 1:
                target_with_suffix(targets, index)  # raises: ambiguous
            chosen.extend(found)
        return _in_order(targets, chosen)


# ---------------------------------------------------------------------------------------
# MOD / HASH_MOD


class ModAlgorithm(IndexedAlgorithm):
    """value % sharding_count (floored, so negative values still pick an existing shard)."""

    type_name = "MOD"
    supports_range = True

    def __init__(self, props: Mapping[str, Any] | None = None):
        super().__init__(props)
        p = _props(props, {"sharding_count"})
        self.shard_count = _int_prop(p, "sharding_count", low=1)

    def index_of(self, value: Any) -> int:
        return to_int(value) % self.shard_count

    def shard_range(self, targets: Sequence[str], low: Any, high: Any,
                    low_inclusive: bool = True, high_inclusive: bool = True) -> list[str]:
        if low is None or high is None:
            return list(targets)
        try:
            lo, hi = to_number(low), to_number(high)
        except ShardingError:
            return list(targets)  # not numeric: cannot narrow, so do not try
        first = math.ceil(lo) if low_inclusive else math.floor(lo) + 1
        last = math.floor(hi) if high_inclusive else math.ceil(hi) - 1
        if last < first:
            return []
        if last - first + 1 >= self.shard_count:
            return list(targets)
        return self._targets_for(targets, (v % self.shard_count for v in range(first, last + 1)))

    def sample_values(self) -> list[Any]:
        return list(range(max(len(SAMPLE_INTS), 2 * self.shard_count)))


class HashModAlgorithm(IndexedAlgorithm):
    """CRC32 of the value's canonical text (see sharding.inline.canonical_bytes) % count."""

    type_name = "HASH_MOD"

    def __init__(self, props: Mapping[str, Any] | None = None):
        super().__init__(props)
        p = _props(props, {"sharding_count"})
        self.shard_count = _int_prop(p, "sharding_count", low=1)

    def index_of(self, value: Any) -> int:
        if value is None:
            raise null_error()
        try:
            return stable_hash(value) % self.shard_count
        except TypeError as exc:
            raise ShardingError(f"cannot hash sharding value {value!r}: {exc}", value=value) from None


# ---------------------------------------------------------------------------------------
# BOUNDARY_RANGE / VOLUME_RANGE


class _PartitionAlgorithm(IndexedAlgorithm):
    """Shard 0 is (-inf, b[0]), shard i is [b[i-1], b[i]), the last is [b[-1], +inf)."""

    supports_range = True
    boundaries: list[Number]

    def _set_boundaries(self, boundaries: list[Number]) -> None:
        self.boundaries = boundaries
        self.shard_count = len(boundaries) + 1

    def index_of(self, value: Any) -> int:
        return bisect_right(self.boundaries, to_number(value))

    def shard_range(self, targets: Sequence[str], low: Any, high: Any,
                    low_inclusive: bool = True, high_inclusive: bool = True) -> list[str]:
        try:
            lo = None if low is None else to_number(low)
            hi = None if high is None else to_number(high)
        except ShardingError:
            return list(targets)
        if _empty_range(lo, hi, low_inclusive, high_inclusive):
            return []
        first = 0 if lo is None else bisect_right(self.boundaries, lo)
        last = self.shard_count - 1 if hi is None else bisect_right(self.boundaries, hi)
        # An exclusive upper bound equal to a partition's start does not reach into it.
        if hi is not None and not high_inclusive and last > 0 and self.boundaries[last - 1] == hi:
            last -= 1
        return self._targets_for(targets, range(first, last + 1))

    def sample_values(self) -> list[Any]:
        edges: list[Any] = [b - 1 for b in self.boundaries] + list(self.boundaries)
        return edges + list(SAMPLE_INTS)


class BoundaryRangeAlgorithm(_PartitionAlgorithm):
    """Props: sharding_ranges, a strictly increasing list (or comma-separated text) of numbers."""

    type_name = "BOUNDARY_RANGE"

    def __init__(self, props: Mapping[str, Any] | None = None):
        super().__init__(props)
        p = _props(props, {"sharding_ranges"})
        raw = _required(p, "sharding_ranges")
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or not items:
            raise AlgorithmPropsError("sharding_ranges", "expected a non-empty list of numbers")
        bounds: list[Number] = []
        for i, item in enumerate(items):
            try:
                if isinstance(item, bool):
                    raise ShardingError("bool")
                bounds.append(to_number(item))
            except ShardingError:
                raise AlgorithmPropsError("sharding_ranges", f"item {i} ({item!r}) is not a number") from None
        for i in range(1, len(bounds)):
            if bounds[i] <= bounds[i - 1]:
                what = "overlap (duplicate boundary)" if bounds[i] == bounds[i - 1] else "are not sorted"
                raise AlgorithmPropsError("sharding_ranges", f"boundaries {what}: {bounds[i - 1]} then "
                                                             f"{bounds[i]}; give them strictly increasing")
        if len(bounds) + 1 > MAX_PARTITIONS:
            raise AlgorithmPropsError("sharding_ranges", f"more than {MAX_PARTITIONS} partitions")
        self._set_boundaries(bounds)


class VolumeRangeAlgorithm(_PartitionAlgorithm):
    """Props: range_lower, range_upper, sharding_volume.

    Values below range_lower go to shard 0, then one shard per sharding_volume (the last
    inner one may be shorter), and values at or above range_upper go to the last shard.
    """

    type_name = "VOLUME_RANGE"

    def __init__(self, props: Mapping[str, Any] | None = None):
        super().__init__(props)
        p = _props(props, {"range_lower", "range_upper", "sharding_volume"})
        lower = _number_prop(p, "range_lower")
        upper = _number_prop(p, "range_upper")
        volume = _number_prop(p, "sharding_volume")
        if volume <= 0:
            raise AlgorithmPropsError("sharding_volume", f"must be positive, got {volume}")
        if lower >= upper:
            raise AlgorithmPropsError("range_upper", f"must be greater than range_lower ({lower}), got {upper}")
        # Exact ceiling division (no floats): ints and Decimals alike.
        whole, rest = divmod(upper - lower, volume)
        inner = int(whole) + (1 if rest else 0)
        if inner + 2 > MAX_PARTITIONS:
            raise AlgorithmPropsError("sharding_volume", f"gives more than {MAX_PARTITIONS} partitions")
        self._set_boundaries([lower + i * volume for i in range(inner)] + [upper])


# ---------------------------------------------------------------------------------------
# INTERVAL


_FIXED_UNITS = {
    "SECONDS": dt.timedelta(seconds=1), "MINUTES": dt.timedelta(minutes=1),
    "HOURS": dt.timedelta(hours=1), "DAYS": dt.timedelta(days=1), "WEEKS": dt.timedelta(weeks=1),
}
_MONTH_UNITS = {"MONTHS": 1, "YEARS": 12}


def _add_months(value: dt.datetime, months: int) -> dt.datetime:
    total = value.year * 12 + (value.month - 1) + months
    year, month = divmod(total, 12)
    day = min(value.day, calendar.monthrange(year, month + 1)[1])
    return value.replace(year=year, month=month + 1, day=day)


class IntervalAlgorithm(ShardingAlgorithm):
    """Time intervals from datetime_lower to datetime_upper, each named by a strftime suffix.

    Props: datetime_lower, datetime_upper (ISO text or YAML dates), sharding_suffix_pattern
    (strftime, e.g. ``%Y%m``), datetime_interval_amount (default 1), datetime_interval_unit
    (SECONDS/MINUTES/HOURS/DAYS/WEEKS/MONTHS/YEARS, default DAYS), datetime_pattern (optional
    strptime pattern for text values; ISO text is always accepted).
    A value's target is the one whose name ends with the suffix of its interval's start.
    """

    type_name = "INTERVAL"
    supports_range = True

    def __init__(self, props: Mapping[str, Any] | None = None):
        super().__init__(props)
        p = _props(props, {"datetime_pattern", "datetime_lower", "datetime_upper", "sharding_suffix_pattern",
                           "datetime_interval_amount", "datetime_interval_unit"})
        self.pattern = p.get("datetime_pattern")
        if self.pattern is not None:
            self.pattern = _str_prop(p, "datetime_pattern")
            if "yyyy" in self.pattern or "HH" in self.pattern:
                raise AlgorithmPropsError("datetime_pattern", "use strptime codes such as "
                                          f"'%Y-%m-%d %H:%M:%S', not a Java pattern ({self.pattern!r})")
        self.lower = self._datetime_prop(p, "datetime_lower")
        self.upper = self._datetime_prop(p, "datetime_upper")
        if self.upper < self.lower:
            raise AlgorithmPropsError("datetime_upper", "must not be before datetime_lower")
        self.suffix_pattern = _str_prop(p, "sharding_suffix_pattern")
        if "%" not in self.suffix_pattern:
            raise AlgorithmPropsError("sharding_suffix_pattern", "expected strftime codes such as '%Y%m', "
                                      f"got {self.suffix_pattern!r}")
        amount = _int_prop(p, "datetime_interval_amount", 1, low=1)
        unit = str(p.get("datetime_interval_unit", "DAYS")).upper()
        if unit in _FIXED_UNITS:
            self.step: dt.timedelta | None = _FIXED_UNITS[unit] * amount
            self.months = 0
        elif unit in _MONTH_UNITS:
            self.step = None
            self.months = _MONTH_UNITS[unit] * amount
        else:
            raise AlgorithmPropsError("datetime_interval_unit", f"expected one of "
                                      f"{sorted([*_FIXED_UNITS, *_MONTH_UNITS])}, got {unit!r}")
        self.interval_count = self._index(self.upper) + 1
        if self.interval_count > MAX_PARTITIONS:
            raise AlgorithmPropsError("datetime_upper", f"gives more than {MAX_PARTITIONS} intervals")

    def _datetime_prop(self, props: Mapping[str, Any], name: str) -> dt.datetime:
        raw = _required(props, name)
        try:
            return to_datetime(raw, self.pattern)
        except ShardingError:
            raise AlgorithmPropsError(name, f"expected a date or datetime, got {raw!r}") from None

    def _start(self, index: int) -> dt.datetime:
        if self.step is not None:
            return self.lower + self.step * index
        return _add_months(self.lower, self.months * index)

    def _index(self, when: dt.datetime) -> int:
        """The interval holding ``when`` (which must not be before lower)."""
        if self.step is not None:
            return (when - self.lower) // self.step
        diff = (when.year - self.lower.year) * 12 + when.month - self.lower.month
        index = diff // self.months
        while index > 0 and self._start(index) > when:
            index -= 1
        return index

    def suffix(self, index: int) -> str:
        return self._start(index).strftime(self.suffix_pattern)

    def shard(self, targets: Sequence[str], value: Any) -> str:
        when = to_datetime(value, self.pattern)
        if not self.lower <= when <= self.upper:
            raise ShardingError(f"sharding value {value!r} is outside the configured interval "
                                f"[{self.lower}, {self.upper}]", value=value)
        return target_ending_with(targets, self.suffix(self._index(when)), value)

    def shard_range(self, targets: Sequence[str], low: Any, high: Any,
                    low_inclusive: bool = True, high_inclusive: bool = True) -> list[str]:
        try:
            lo = None if low is None else to_datetime(low, self.pattern)
            hi = None if high is None else to_datetime(high, self.pattern)
        except ShardingError:
            return list(targets)
        # Clip to the configured span; a clipped bound becomes inclusive.
        if lo is None or lo < self.lower:
            lo, low_inclusive = self.lower, True
        if hi is None or hi > self.upper:
            hi, high_inclusive = self.upper, True
        if _empty_range(lo, hi, low_inclusive, high_inclusive):
            return []
        first, last = self._index(lo), self._index(hi)
        if not high_inclusive and last > first and self._start(last) == hi:
            last -= 1
        # As for index-based ranges, an interval without a target holds no rows here.
        chosen: set[str] = set()
        for index in range(first, last + 1):
            found = _target_ending(tuple(targets), self.suffix(index))
            if len(found) > 1:
                target_ending_with(targets, self.suffix(index))  # raises: ambiguous
            chosen.update(found)
        return _in_order(targets, chosen)

    def validate_targets(self, targets: Sequence[str]) -> None:
        for index in range(self.interval_count):
            target_ending_with(targets, self.suffix(index), self._start(index))

    def sample_values(self) -> list[Any]:
        return [self._start(i) for i in range(min(self.interval_count, len(SAMPLE_INTS)))]


# ---------------------------------------------------------------------------------------
# Expression algorithms: INLINE, COMPLEX, HINT


def _render(template: Template, env: Mapping[str, Any], targets: Sequence[str], value: Any) -> str:
    try:
        name = template.render(env)
    except InlineError as exc:
        if any(v is None for v in env.values()):
            raise null_error() from None
        raise ShardingError(f"cannot evaluate {template.source!r} for value {value!r}: {exc.reason}",
                            value=value) from None
    if name not in targets:
        raise NoTargetError(f"{template.source!r} gives {name!r} for value {value!r}, which is not one of "
                            f"{list(targets)}", value=value)
    return name


def _check_samples(template: Template, targets: Sequence[str], samples: Iterable[Any],
                   shard: Callable[[Any], str]) -> None:
    # Best effort: only when integer samples are representative (the column is used as an
    # integer); samples the column cannot take (evaluation errors) are skipped, but any
    # successfully computed name must be a real target.
    if not template.integer_confined:
        return
    for sample in samples:
        try:
            shard(sample)
        except NoTargetError:
            raise
        except ShardingError:
            continue


class InlineAlgorithm(ShardingAlgorithm):
    """Props: algorithm_expression, e.g. ``t_order_${order_id % 2}`` (one column variable).

    Range conditions cannot be narrowed through an arbitrary expression: all targets.
    ``allow_range_query`` is accepted for compatibility and has no effect.
    """

    type_name = "INLINE"

    def __init__(self, props: Mapping[str, Any] | None = None):
        super().__init__(props)
        p = _props(props, {"algorithm_expression", "allow_range_query", "allow_range_query_with_inline_sharding"})
        self.template = _template_prop(p, "algorithm_expression")
        names = self.template.variables
        if len(names) > 1:
            raise AlgorithmPropsError("algorithm_expression", f"uses several columns {sorted(names)}; "
                                      "an INLINE algorithm reads one column (use COMPLEX for several)")
        self.variable = next(iter(names), None)

    @property
    def variables(self) -> frozenset[str]:
        return self.template.variables

    def shard(self, targets: Sequence[str], value: Any) -> str:
        if value is None:
            raise null_error()
        env = {self.variable: value} if self.variable else {}
        return _render(self.template, env, targets, value)

    def validate_targets(self, targets: Sequence[str]) -> None:
        _check_samples(self.template, targets, SAMPLE_INTS, lambda v: self.shard(targets, v))


class ComplexAlgorithm(ShardingAlgorithm):
    """Props: algorithm_expression over several columns; ``shard`` takes {column: value}."""

    type_name = "COMPLEX"
    multi_column = True

    def __init__(self, props: Mapping[str, Any] | None = None):
        super().__init__(props)
        p = _props(props, {"algorithm_expression"})
        self.template = _template_prop(p, "algorithm_expression")

    @property
    def variables(self) -> frozenset[str]:
        return self.template.variables

    def shard(self, targets: Sequence[str], value: Any) -> str:
        if not isinstance(value, Mapping):
            raise ShardingError(f"COMPLEX sharding needs a mapping of column values, got {value!r}", value=value)
        given = {str(k).lower(): v for k, v in value.items()}
        env: dict[str, Any] = {}
        for name in self.template.variables:
            if name.lower() not in given:
                raise ShardingError(f"COMPLEX sharding needs a value for column {name!r}", column=name)
            if given[name.lower()] is None:
                raise null_error()
            env[name] = given[name.lower()]
        return _render(self.template, env, targets, value)

    def sample_values(self) -> list[Any]:
        names = sorted(self.template.variables)
        if not names:
            return [{}]
        side = max(2, int(len(SAMPLE_INTS) ** (1 / len(names))))
        grid: list[dict[str, Any]] = [{}]
        for name in names:
            grid = [{**g, name: i} for g in grid for i in range(side)]
        return grid

    def validate_targets(self, targets: Sequence[str]) -> None:
        _check_samples(self.template, targets, self.sample_values(), lambda v: self.shard(targets, v))


class HintAlgorithm(ShardingAlgorithm):
    """The value comes from a hint, not a column.

    A hint that names a target is used as is; otherwise, with ``algorithm_expression``
    (variable ``value``, e.g. ``t_order_${value % 2}``) the expression names the target;
    without one, an integer hint picks the target with that numeric suffix.
    """

    type_name = "HINT"
    hint_based = True

    def __init__(self, props: Mapping[str, Any] | None = None):
        super().__init__(props)
        p = _props(props, {"algorithm_expression"})
        self.template = _template_prop(p, "algorithm_expression") if "algorithm_expression" in p else None
        if self.template is not None and not self.template.variables <= {"value"}:
            raise AlgorithmPropsError("algorithm_expression", "a HINT expression may only use the variable "
                                      f"'value', found {sorted(self.template.variables)}")

    def shard(self, targets: Sequence[str], value: Any) -> str:
        if value is None:
            raise ShardingError("hint value is NULL", value=None)
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if text in targets:
            return text
        if self.template is not None:
            return _render(self.template, {"value": value}, targets, value)
        return target_with_suffix(targets, to_int(value), value)

    def validate_targets(self, targets: Sequence[str]) -> None:
        if self.template is not None:
            _check_samples(self.template, targets, SAMPLE_INTS, lambda v: self.shard(targets, v))


ALGORITHM_TYPES: dict[str, type[ShardingAlgorithm]] = {
    cls.type_name: cls
    for cls in (ModAlgorithm, HashModAlgorithm, VolumeRangeAlgorithm, BoundaryRangeAlgorithm,
                IntervalAlgorithm, InlineAlgorithm, ComplexAlgorithm, HintAlgorithm)
}


def create_algorithm(type_name: str, props: Mapping[str, Any] | None = None) -> ShardingAlgorithm:
    """Build an algorithm; AlgorithmPropsError (prop None = the type itself) if invalid."""
    if not isinstance(type_name, str):
        raise AlgorithmPropsError(None, f"expected a type name, got {type_name!r}")
    cls = ALGORITHM_TYPES.get(type_name.strip().upper())
    if cls is None:
        raise AlgorithmPropsError(None, f"unknown algorithm type {type_name!r}; "
                                        f"expected one of {sorted(ALGORITHM_TYPES)}")
    return cls(props)
