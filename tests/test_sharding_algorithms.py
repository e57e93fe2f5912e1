"""Sharding algorithms, the inline expression language and key generators.

Most tests compare against a straightforward reference implementation, and every range test
checks the one property that matters for correctness: range routing never misses a target
that a value inside the range would be routed to.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import random
import re
import subprocess
import sys
import threading
import zlib
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sharding.algorithms import (
    AlgorithmPropsError,
    BoundaryRangeAlgorithm,
    ComplexAlgorithm,
    HashModAlgorithm,
    HintAlgorithm,
    InlineAlgorithm,
    IntervalAlgorithm,
    ModAlgorithm,
    NoTargetError,
    VolumeRangeAlgorithm,
    create_algorithm,
)
from sharding.errors import ShardingError
from sharding.inline import (
    InlineError,
    canonical_bytes,
    compile_expression,
    compile_template,
    expand_nodes,
    stable_hash,
)
from sharding.keygen import (
    KeyGenerationError,
    KeyGeneratorPropsError,
    SnowflakeKeyGenerator,
    UUIDKeyGenerator,
    create_key_generator,
    snowflake_parts,
    use_process_slot,
)

REPO = Path(__file__).resolve().parent.parent


def table_targets(n: int, prefix: str = "t_order_", seed: int = 0) -> list[str]:
    targets = [f"{prefix}{i}" for i in range(n)]
    random.Random(seed).shuffle(targets)  # order must not matter: matching is by suffix
    return targets


def values_in(low: int, high: int, low_inc: bool, high_inc: bool) -> range:
    return range(low if low_inc else low + 1, high + 1 if high_inc else high)


# ---------------------------------------------------------------------------------------
# MOD


@given(st.integers(1, 40), st.integers(-10**12, 10**12), st.integers(0, 5))
def test_mod_matches_reference(n, value, seed):
    targets = table_targets(n, seed=seed)
    assert ModAlgorithm({"sharding_count": n}).shard(targets, value) == f"t_order_{value % n}"


@given(st.integers(1, 16), st.integers(0, 10**9))
def test_mod_normalises_value_representations(n, value):
    algorithm = ModAlgorithm({"sharding_count": n})
    targets = table_targets(n)
    expected = algorithm.shard(targets, value)
    for form in (str(value), f" {value} ", Decimal(value), Decimal(f"{value}.000"), str(value).encode(),
                 float(value) if value < 2**53 else value):
        assert algorithm.shard(targets, form) == expected


@settings(max_examples=300)
@given(st.integers(1, 12), st.integers(-200, 200), st.integers(0, 40), st.booleans(), st.booleans())
def test_mod_range_never_misses(n, low, span, low_inc, high_inc):
    algorithm = ModAlgorithm({"sharding_count": n})
    targets = table_targets(n)
    high = low + span
    routed = algorithm.shard_range(targets, low, high, low_inc, high_inc)
    expected = {algorithm.shard(targets, v) for v in values_in(low, high, low_inc, high_inc)}
    assert expected <= set(routed)
    assert expected == set(routed)  # MOD narrows exactly for integer ranges
    assert routed == [t for t in targets if t in routed]  # keeps the caller's order


def test_mod_range_unbounded_or_non_numeric_returns_all():
    algorithm = ModAlgorithm({"sharding_count": 4})
    targets = table_targets(4)
    assert algorithm.shard_range(targets, 5, None) == targets
    assert algorithm.shard_range(targets, None, 5) == targets
    assert algorithm.shard_range(targets, "a", "b") == targets
    assert algorithm.shard_range(targets, 5, 4) == []


def test_mod_errors():
    algorithm = ModAlgorithm({"sharding_count": 2})
    with pytest.raises(ShardingError, match="sharding column value is NULL"):
        algorithm.shard(["t_0", "t_1"], None)
    with pytest.raises(ShardingError, match="not an integer"):
        algorithm.shard(["t_0", "t_1"], "1.5")
    with pytest.raises(ShardingError, match="not a number"):
        algorithm.shard(["t_0", "t_1"], "abc")
    with pytest.raises(NoTargetError, match="no target ends in 1"):
        algorithm.shard(["t_0", "t_2"], 3)
    with pytest.raises(NoTargetError, match="ambiguous"):
        algorithm.shard(["t_1", "t_01"], 1)
    for bad in (0, -1, "x", True, None):
        with pytest.raises(AlgorithmPropsError) as info:
            ModAlgorithm({"sharding_count": bad})
        assert info.value.prop == "sharding_count"
    with pytest.raises(AlgorithmPropsError) as info:
        ModAlgorithm({"sharding_count": 2, "shardng_count": 3})
    assert info.value.prop == "shardng_count"
    # ShardingSphere-style hyphenated names are accepted.
    assert ModAlgorithm({"sharding-count": 3}).shard_count == 3


# ---------------------------------------------------------------------------------------
# HASH_MOD


GOLDEN_HASHES = [
    # value, CRC32 of its canonical text (standard check values where they exist)
    ("123456789", 0xCBF43926),
    (123456789, 0xCBF43926),
    ("abc", 0x352441C2),
    (b"abc", 0x352441C2),
    (0, 4108050209),
    (42, 841265288),
    (-7, 3645828383),
    ("h\u00e9llo", 2654700086),
    (dt.date(2024, 1, 31), 4259163891),
    (dt.datetime(2024, 1, 31, 12, 30), 49244947),
    (Decimal("12.50"), 327728169),
    (10**20, 3382880399),
]


@pytest.mark.parametrize(("value", "expected"), GOLDEN_HASHES)
def test_stable_hash_golden_values(value, expected):
    assert stable_hash(value) == expected
    algorithm = HashModAlgorithm({"sharding_count": 4})
    assert algorithm.shard(table_targets(4), value) == f"t_order_{expected % 4}"


def test_canonical_forms_agree():
    assert canonical_bytes(Decimal("17.000")) == canonical_bytes(17) == canonical_bytes("17") == b"17"
    assert canonical_bytes(17.0) == b"17"
    assert canonical_bytes(True) == b"1"
    assert canonical_bytes(dt.datetime(2024, 1, 2, 3, 4, 5)) == b"2024-01-02 03:04:05"
    assert canonical_bytes(Decimal("1.2300")) == b"1.23"


def test_hash_mod_is_stable_across_processes():
    values = [0, 1, 42, "abc", "h\u00e9llo", 10**20]
    script = ("from sharding.inline import stable_hash\n"
              f"print([stable_hash(v) for v in {values!r}])")
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, check=True,
                                capture_output=True, text=True)
        outputs.add(result.stdout.strip())
    assert outputs == {str([stable_hash(v) for v in values])}


@given(st.one_of(st.integers(), st.text(), st.binary()), st.integers(1, 64))
def test_hash_mod_matches_reference(value, n):
    raw = value if isinstance(value, bytes) else str(value).encode()
    expected = f"t_order_{zlib.crc32(raw) % n}"
    assert HashModAlgorithm({"sharding_count": n}).shard(table_targets(n), value) == expected


def test_hash_mod_null_and_range():
    algorithm = HashModAlgorithm({"sharding_count": 2})
    with pytest.raises(ShardingError, match="NULL"):
        algorithm.shard(["t_0", "t_1"], None)
    assert algorithm.shard_range(["t_0", "t_1"], 1, 2) == ["t_0", "t_1"]
    assert not algorithm.supports_range


# ---------------------------------------------------------------------------------------
# VOLUME_RANGE / BOUNDARY_RANGE


def volume_reference(value, lower, upper, volume):
    if value < lower:
        return 0
    if value >= upper:
        inner = -(-(upper - lower) // volume)
        return inner + 1
    return 1 + (value - lower) // volume


volume_props = st.tuples(st.integers(-1000, 1000), st.integers(1, 500), st.integers(1, 200)).map(
    lambda t: (t[0], t[0] + t[1], t[2]))


@given(volume_props, st.integers(-3000, 3000))
def test_volume_range_matches_reference(props, value):
    lower, upper, volume = props
    algorithm = VolumeRangeAlgorithm({"range_lower": lower, "range_upper": upper, "sharding_volume": volume})
    targets = table_targets(algorithm.shard_count)
    assert algorithm.shard(targets, value) == f"t_order_{volume_reference(value, lower, upper, volume)}"
    assert algorithm.shard_count == volume_reference(upper, lower, upper, volume) + 1


@settings(max_examples=300)
@given(volume_props, st.integers(-2000, 2000), st.integers(0, 600), st.booleans(), st.booleans(),
       st.sampled_from(["both", "no_low", "no_high"]))
def test_volume_range_routing_never_misses(props, low, span, low_inc, high_inc, bounded):
    lower, upper, volume = props
    algorithm = VolumeRangeAlgorithm({"range_lower": lower, "range_upper": upper, "sharding_volume": volume})
    targets = table_targets(algorithm.shard_count)
    high = low + span
    q_low = None if bounded == "no_low" else low
    q_high = None if bounded == "no_high" else high
    routed = set(algorithm.shard_range(targets, q_low, q_high, low_inc, high_inc))
    lo = min(low, lower) - 5 if q_low is None else low
    hi = max(high, upper) + 5 if q_high is None else high
    for value in values_in(lo, hi, low_inc or q_low is None, high_inc or q_high is None):
        assert algorithm.shard(targets, value) in routed


def test_volume_range_props_validation():
    base = {"range_lower": 0, "range_upper": 100, "sharding_volume": 10}
    assert VolumeRangeAlgorithm(base).shard_count == 12
    for change, prop in [({"sharding_volume": 0}, "sharding_volume"), ({"sharding_volume": -5}, "sharding_volume"),
                         ({"range_upper": 0}, "range_upper"), ({"range_upper": -1}, "range_upper"),
                         ({"range_lower": "x"}, "range_lower"), ({"range_upper": None}, "range_upper")]:
        with pytest.raises(AlgorithmPropsError) as info:
            VolumeRangeAlgorithm({**base, **change})
        assert info.value.prop == prop


boundaries = st.lists(st.integers(-1000, 1000), min_size=1, max_size=12, unique=True).map(sorted)


@given(boundaries, st.integers(-1500, 1500))
def test_boundary_range_matches_reference(bounds, value):
    algorithm = BoundaryRangeAlgorithm({"sharding_ranges": bounds})
    expected = sum(1 for b in bounds if b <= value)  # shard i holds [b[i-1], b[i])
    assert algorithm.shard(table_targets(len(bounds) + 1), value) == f"t_order_{expected}"


@settings(max_examples=300)
@given(boundaries, st.integers(-1200, 1200), st.integers(0, 400), st.booleans(), st.booleans())
def test_boundary_range_routing_never_misses(bounds, low, span, low_inc, high_inc):
    algorithm = BoundaryRangeAlgorithm({"sharding_ranges": bounds})
    targets = table_targets(len(bounds) + 1)
    high = low + span
    routed = set(algorithm.shard_range(targets, low, high, low_inc, high_inc))
    expected = {algorithm.shard(targets, v) for v in values_in(low, high, low_inc, high_inc)}
    assert expected <= routed
    # Decimal values inside the range too.
    for value in (Decimal(low) + Decimal("0.5"), Decimal(high) - Decimal("0.5")):
        if low < value < high:
            assert algorithm.shard(targets, value) in routed


def test_boundary_range_exact_narrowing_and_props():
    algorithm = BoundaryRangeAlgorithm({"sharding_ranges": "10, 20, 30"})
    targets = ["t_0", "t_1", "t_2", "t_3"]
    assert algorithm.shard_range(targets, 10, 20, True, False) == ["t_1"]
    assert algorithm.shard_range(targets, 10, 20, True, True) == ["t_1", "t_2"]
    assert algorithm.shard_range(targets, None, 9) == ["t_0"]
    assert algorithm.shard_range(targets, 30, None) == ["t_3"]
    assert algorithm.shard_range(targets, 15, 15, True, False) == []
    assert algorithm.shard(targets, Decimal("19.99")) == "t_1"
    for bad in ([10, 5], [1, 1, 2], [], "a,b", [True]):
        with pytest.raises(AlgorithmPropsError) as info:
            BoundaryRangeAlgorithm({"sharding_ranges": bad})
        assert info.value.prop == "sharding_ranges"
    with pytest.raises(ShardingError, match="NULL"):
        algorithm.shard(targets, None)


# ---------------------------------------------------------------------------------------
# INTERVAL


def month_targets(first: dt.date, count: int) -> list[str]:
    names = []
    year, month = first.year, first.month
    for _ in range(count):
        names.append(f"t_log_{year:04d}{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return names


MONTHLY = {"datetime_lower": "2023-01-01 00:00:00", "datetime_upper": "2025-12-31 23:59:59",
           "sharding_suffix_pattern": "%Y%m", "datetime_interval_unit": "MONTHS"}
moments = st.datetimes(min_value=dt.datetime(2023, 1, 1), max_value=dt.datetime(2025, 12, 31, 23, 59, 59))


@given(moments)
def test_interval_monthly_matches_reference(moment):
    algorithm = IntervalAlgorithm(MONTHLY)
    targets = month_targets(dt.date(2023, 1, 1), 36)
    expected = f"t_log_{moment:%Y%m}"
    assert algorithm.shard(targets, moment) == expected
    assert algorithm.shard(targets, moment.isoformat(sep=" ")) == expected
    assert algorithm.shard(targets, moment.date()) == f"t_log_{moment:%Y%m}"


@settings(max_examples=200)
@given(moments, st.timedeltas(min_value=dt.timedelta(0), max_value=dt.timedelta(days=200)),
       st.booleans(), st.booleans(), st.lists(st.floats(0, 1), min_size=1, max_size=20))
def test_interval_range_never_misses(low, span, low_inc, high_inc, fractions):
    algorithm = IntervalAlgorithm({**MONTHLY, "datetime_interval_unit": "DAYS",
                                   "datetime_interval_amount": 10, "sharding_suffix_pattern": "%Y%m%d"})
    targets = [f"t_log_{algorithm.suffix(i)}" for i in range(algorithm.interval_count)]
    high = low + span
    routed = set(algorithm.shard_range(targets, low, high, low_inc, high_inc))
    probes = [low + span * f for f in fractions] + [low, high, high - dt.timedelta(microseconds=1)]
    for probe in probes:
        inside = (low < probe or (low_inc and probe == low)) and (probe < high or (high_inc and probe == high))
        if inside and algorithm.lower <= probe <= algorithm.upper:
            assert algorithm.shard(targets, probe) in routed


def test_interval_details():
    algorithm = IntervalAlgorithm(MONTHLY)
    targets = month_targets(dt.date(2023, 1, 1), 36)
    assert algorithm.interval_count == 36
    assert algorithm.shard_range(targets, "2024-02-10", "2024-04-01", True, False) == [
        "t_log_202402", "t_log_202403"]
    assert algorithm.shard_range(targets, "2024-02-10", "2024-04-01", True, True) == [
        "t_log_202402", "t_log_202403", "t_log_202404"]
    assert algorithm.shard_range(targets, "2030-01-01", None) == []
    assert algorithm.shard_range(targets, None, "2023-01-15") == ["t_log_202301"]
    assert algorithm.shard_range(targets, "not a date", None) == targets
    with pytest.raises(ShardingError, match="outside the configured interval"):
        algorithm.shard(targets, "2022-12-31")
    with pytest.raises(ShardingError, match="NULL"):
        algorithm.shard(targets, None)
    with pytest.raises(NoTargetError):
        algorithm.validate_targets(targets[:-1])
    algorithm.validate_targets(targets)
    # Month-end lower bound: intervals clamp to shorter months and still cover every moment.
    clamped = IntervalAlgorithm({**MONTHLY, "datetime_lower": "2023-01-31", "sharding_suffix_pattern": "%Y%m%d"})
    names = [f"t_{clamped.suffix(i)}" for i in range(clamped.interval_count)]
    assert names[:3] == ["t_20230131", "t_20230228", "t_20230331"]
    assert clamped.shard(names, "2023-03-01") == "t_20230228"
    # Custom strptime pattern plus YAML-parsed dates for the bounds.
    custom = IntervalAlgorithm({"datetime_pattern": "%d/%m/%Y", "datetime_lower": dt.date(2024, 1, 1),
                                "datetime_upper": dt.date(2024, 12, 31), "sharding_suffix_pattern": "%Y",
                                "datetime_interval_unit": "YEARS"})
    assert custom.shard(["t_2024"], "15/06/2024") == "t_2024"


@pytest.mark.parametrize(("change", "prop"), [
    ({"datetime_lower": None}, "datetime_lower"),
    ({"datetime_upper": "yesterday"}, "datetime_upper"),
    ({"datetime_upper": "2022-01-01"}, "datetime_upper"),
    ({"sharding_suffix_pattern": "yyyyMM"}, "sharding_suffix_pattern"),
    ({"datetime_interval_unit": "FORTNIGHTS"}, "datetime_interval_unit"),
    ({"datetime_interval_amount": 0}, "datetime_interval_amount"),
    ({"datetime_pattern": "yyyy-MM-dd HH:mm:ss"}, "datetime_pattern"),
    ({"datetime_interval_unit": "SECONDS"}, "datetime_upper"),  # too many intervals
])
def test_interval_props_validation(change, prop):
    with pytest.raises(AlgorithmPropsError) as info:
        IntervalAlgorithm({**MONTHLY, **change})
    assert info.value.prop == prop


# ---------------------------------------------------------------------------------------
# INLINE / COMPLEX / HINT


@given(st.integers(-10**6, 10**6), st.integers(1, 16))
def test_inline_matches_python(value, n):
    algorithm = InlineAlgorithm({"algorithm_expression": f"t_order_${{order_id % {n}}}"})
    targets = table_targets(n)
    assert algorithm.shard(targets, value) == f"t_order_{value % n}"
    assert algorithm.shard(targets, str(value)) == f"t_order_{value % n}"
    assert algorithm.shard_range(targets, value, value + 1) == targets


def test_inline_errors():
    algorithm = InlineAlgorithm({"algorithm_expression": "t_${id % 4}"})
    with pytest.raises(NoTargetError, match="gives 't_3' for value 7, which is not one of"):
        algorithm.shard(["t_0", "t_1"], 7)
    with pytest.raises(ShardingError, match="NULL"):
        algorithm.shard(["t_0"], None)
    with pytest.raises(ShardingError, match="needs an integer"):
        algorithm.shard(["t_0"], "abc")
    with pytest.raises(AlgorithmPropsError) as info:
        InlineAlgorithm({"algorithm_expression": "t_${a + b}"})
    assert info.value.prop == "algorithm_expression"
    with pytest.raises(AlgorithmPropsError, match="position"):
        InlineAlgorithm({"algorithm_expression": "t_${id %}"})
    with pytest.raises(NoTargetError):
        algorithm.validate_targets(["t_0", "t_1", "t_2"])
    algorithm.validate_targets(["t_0", "t_1", "t_2", "t_3"])
    # A column whose text reaches the name may be a string column: integer samples prove
    # nothing there, so the check is skipped rather than refusing a valid config.
    InlineAlgorithm({"algorithm_expression": "t_${lower(region)}"}).validate_targets(["t_eu"])
    with pytest.raises(NoTargetError):  # hash_mod buckets are checkable whatever the type
        InlineAlgorithm({"algorithm_expression": "t_${hash_mod(region, 3)}"}).validate_targets(["t_0", "t_1"])


@pytest.mark.parametrize(("source", "confined"), [
    ("t_${id % 2}", True), ("t_${(id % 4) + 1}", True), ("t_${hash_mod(name, 8)}", True),
    ("t_${str(abs(id) / 10)}", True), ("t_${substr(str(id % 100), 0, 1)}", True), ("t_0", True),
    ("t_${id}", False), ("t_${id + 1}", False), ("t_${lower(name)}", False), ("t_${substr(name, 0, 2)}", False),
])
def test_integer_confined(source, confined):
    assert compile_template(source).integer_confined is confined


def test_complex_and_hint():
    complex_ = ComplexAlgorithm({"algorithm_expression": "t_${(user_id + order_id) % 2}"})
    assert complex_.shard(["t_0", "t_1"], {"USER_ID": 1, "order_id": 2}) == "t_1"
    with pytest.raises(ShardingError, match="needs a value for column 'order_id'"):
        complex_.shard(["t_0", "t_1"], {"user_id": 1})
    with pytest.raises(ShardingError, match="NULL"):
        complex_.shard(["t_0", "t_1"], {"user_id": 1, "order_id": None})
    complex_.validate_targets(["t_0", "t_1"])

    hint = HintAlgorithm({})
    assert hint.shard(["ds_0", "ds_1"], "ds_1") == "ds_1"
    assert hint.shard(["ds_0", "ds_1"], 1) == "ds_1"
    with pytest.raises(ShardingError):
        hint.shard(["ds_0", "ds_1"], "ds_9")
    with pytest.raises(ShardingError, match="NULL"):
        hint.shard(["ds_0"], None)
    expr_hint = HintAlgorithm({"algorithm_expression": "ds_${value % 2}"})
    assert expr_hint.shard(["ds_0", "ds_1"], 7) == "ds_1"
    assert expr_hint.shard(["ds_0", "ds_1"], "ds_0") == "ds_0"
    with pytest.raises(AlgorithmPropsError):
        HintAlgorithm({"algorithm_expression": "ds_${user_id % 2}"})


def test_create_algorithm_unknown_type():
    with pytest.raises(AlgorithmPropsError) as info:
        create_algorithm("MODULO", {})
    assert info.value.prop is None
    assert isinstance(create_algorithm("mod", {"sharding_count": 2}), ModAlgorithm)


# ---------------------------------------------------------------------------------------
# Inline expression language


def reference(tree, env):
    """Evaluate a generated tree with Python ints (the documented semantics)."""
    kind = tree[0]
    if kind == "lit":
        return tree[1]
    if kind == "var":
        return env[tree[1]]
    if kind == "neg":
        return -reference(tree[1], env)
    if kind == "abs":
        return abs(reference(tree[1], env))
    op, left, right = tree[1], reference(tree[2], env), reference(tree[3], env)
    if op in "/%" and right == 0:
        raise ZeroDivisionError
    return {"+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
            "/": lambda: left // right, "%": lambda: left % right}[op]()


def render(tree) -> str:
    kind = tree[0]
    if kind == "lit":
        return str(tree[1])
    if kind == "var":
        return tree[1]
    if kind == "neg":
        return f"-({render(tree[1])})"
    if kind == "abs":
        return f"abs({render(tree[1])})"
    return f"({render(tree[2])} {tree[1]} {render(tree[3])})"


trees = st.recursive(
    st.one_of(st.integers(0, 10**6).map(lambda v: ("lit", v)), st.sampled_from(["a", "b", "c"]).map(
        lambda v: ("var", v))),
    lambda inner: st.one_of(
        st.tuples(st.just("bin"), st.sampled_from(list("+-*/%")), inner, inner),
        st.tuples(st.just("neg"), inner),
        st.tuples(st.just("abs"), inner),
    ),
    max_leaves=12,
)


@settings(max_examples=500)
@given(trees, st.integers(-10**9, 10**9), st.integers(-10**9, 10**9), st.integers(-100, 100))
def test_inline_arithmetic_matches_python(tree, a, b, c):
    env = {"a": a, "b": b, "c": c}
    expression = compile_expression(render(tree))
    try:
        expected = reference(tree, env)
    except ZeroDivisionError:
        with pytest.raises(InlineError, match="division by zero"):
            expression.evaluate(env)
        return
    assert expression.evaluate(env) == expected
    assert compile_template(f"x_${{{render(tree)}}}").render(env) == f"x_{expected}"


@given(st.integers(-10**9, 10**9), st.integers(-10**9, 10**9).filter(bool))
def test_precedence_and_floor_semantics(a, b):
    env = {"a": a, "b": b}
    assert compile_expression("a + b * 2 - -a % b").evaluate(env) == a + b * 2 - ((-a) % b)
    assert compile_expression("a / b * b + a % b").evaluate(env) == a


def test_inline_strings_and_functions():
    env = {"name": "Alice", "id": 12345, "code": b"eu-west"}
    cases = {
        "${'t_' + name}": "t_Alice",
        "${lower(name)}_${id % 10}": "alice_5",
        "${upper(substr(name, 0, 3))}": "ALI",
        "${substr(name, 2)}": "ice",
        "${str(id) + '0'}": "123450",
        "${id + '1'}": "12346",  # int + integer text adds (drivers send numbers as text)
        "${int('42') * 2}": "84",
        "${hash_mod(name, 4)}": str(zlib.crc32(b"Alice") % 4),
        "${code}": "eu-west",
        "$->{id % 2}": "1",
        "plain": "plain",
        "${\"it's\"}": "it's",
        "${'a\\'b'}": "a'b",
    }
    for source, expected in cases.items():
        assert compile_template(source).render(env) == expected, source
    assert compile_template("t_${a}_${b}").variables == {"a", "b"}


@pytest.mark.parametrize(("source", "message", "position"), [
    ("t_${id +}", "expected a value", 8),
    ("t_${frob(id)}", "unknown function 'frob'", 4),
    ("t_${id", "unterminated", 4),
    ("t_${'abc}", "unterminated string", 4),
    ("t_${1.5}", "decimal literals", 4),
    ("t_${id # 2}", "unexpected character '#'", 7),
    ("t_${}", "empty", 2),
    ("t_${(id}", "expected ')'", 7),
    ("t_${abs(1, 2)}", "takes 1 arguments", 4),
    ("t_${0..3}", "only allowed in data-node", 5),
    ("t_${id 2}", "unexpected '2'", 7),
])
def test_inline_syntax_errors_have_positions(source, message, position):
    with pytest.raises(InlineError, match=re.escape(message)) as info:
        compile_template(source)
    assert info.value.position == position


def test_inline_evaluation_errors():
    with pytest.raises(InlineError, match="unknown variable 'user'") as info:
        compile_template("t_${id + user}").render({"id": 1})
    assert info.value.position == 9
    with pytest.raises(InlineError, match="needs an integer"):
        compile_template("t_${name % 2}").render({"name": "bob"})
    with pytest.raises(InlineError, match="division by zero"):
        compile_template("t_${id / 0}").render({"id": 1})
    with pytest.raises(InlineError, match="positive modulus"):
        compile_template("t_${hash_mod(id, 0)}").render({"id": 1})
    with pytest.raises(InlineError, match="NULL"):
        compile_template("t_${id}").render({"id": None})


# ---------------------------------------------------------------------------------------
# Data-node expressions


@given(st.integers(0, 5), st.integers(0, 4), st.integers(0, 5), st.integers(0, 4))
def test_expand_nodes_matches_product(ds_low, ds_span, t_low, t_span):
    source = f"ds_${{{ds_low}..{ds_low + ds_span}}}.t_order_${{{t_low}..{t_low + t_span}}}"
    expected = [f"ds_{d}.t_order_{t}" for d, t in itertools.product(
        range(ds_low, ds_low + ds_span + 1), range(t_low, t_low + t_span + 1))]
    assert expand_nodes(source) == expected


def test_expand_nodes_forms():
    assert expand_nodes("ds_${['a', 'b']}.t_${[0, 2]}") == ["ds_a.t_0", "ds_a.t_2", "ds_b.t_0", "ds_b.t_2"]
    assert expand_nodes("ds_0.t_${0..1}, ds_1.t_${2..3}") == ["ds_0.t_0", "ds_0.t_1", "ds_1.t_2", "ds_1.t_3"]
    assert expand_nodes(["ds_0.t_x", "ds_${1..2}.t_x"]) == ["ds_0.t_x", "ds_1.t_x", "ds_2.t_x"]
    assert expand_nodes("ds_0.t_${3..1}") == ["ds_0.t_3", "ds_0.t_2", "ds_0.t_1"]
    assert expand_nodes("ds_0.t_${['a,b']}") == ["ds_0.t_a,b"]  # commas inside ${} do not split
    assert expand_nodes("ds_${0..1}.t_$->{0..1}") == ["ds_0.t_0", "ds_0.t_1", "ds_1.t_0", "ds_1.t_1"]
    assert expand_nodes("ds_0.t_${2 * 3}") == ["ds_0.t_6"]


def test_expand_nodes_errors():
    with pytest.raises(InlineError) as info:
        expand_nodes("ds_0.t_0, ds_1.t_${0..}")
    assert info.value.position == 22
    with pytest.raises(InlineError, match="empty node expression"):
        expand_nodes("ds_0.t_0,,ds_1.t_0")
    with pytest.raises(InlineError, match="larger than"):
        expand_nodes("ds_0.t_${0..100000000}")
    with pytest.raises(InlineError, match="more than"):
        expand_nodes("ds_${0..999}.t_${0..999}")
    with pytest.raises(InlineError, match="unknown variable"):
        expand_nodes("ds_${x}.t_0")


# ---------------------------------------------------------------------------------------
# Key generators


def test_snowflake_unique_and_monotonic_across_workers():
    generators = [SnowflakeKeyGenerator({"worker_id": 1}), SnowflakeKeyGenerator({"worker_id": 2})]
    seen: set[int] = set()
    for generator in generators:
        previous = -1
        for _ in range(30_000):
            key = generator.next_id()
            assert key > previous
            previous = key
            assert 0 < key < 2**63
            seen.add(key)
            assert snowflake_parts(key)[1] == generator.worker_id
    assert len(seen) == 60_000


def test_snowflake_thread_safety():
    generator = SnowflakeKeyGenerator({"worker_id": 7})
    results: list[list[int]] = [[] for _ in range(8)]

    def work(slot: list[int]) -> None:
        for _ in range(5_000):
            slot.append(generator.next_id())

    threads = [threading.Thread(target=work, args=(slot,)) for slot in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    all_ids = [key for slot in results for key in slot]
    assert len(set(all_ids)) == len(all_ids) == 40_000
    for slot in results:
        assert slot == sorted(slot)


class FakeClock:
    def __init__(self, ms: int):
        self.ms = ms
        self.slept: list[float] = []

    def __call__(self) -> int:
        return self.ms

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.ms += max(1, round(seconds * 1000))


def test_snowflake_clock_and_sequence_behaviour():
    start = 1_700_000_000_000
    clock = FakeClock(start)
    generator = SnowflakeKeyGenerator({"worker_id": 3, "max_vibration_offset": 0}, clock=clock,
                                      sleep=clock.sleep)
    ids = [generator.next_id() for _ in range(4096)]
    assert [snowflake_parts(k) for k in ids[:2]] == [(start, 3, 0), (start, 3, 1)]
    assert clock.slept == []
    # The 4097th id in the same millisecond waits for the next one.
    nxt = generator.next_id()
    assert snowflake_parts(nxt) == (start + 1, 3, 0) and clock.slept
    # A small step back is waited out; ids keep increasing.
    clock.ms -= 5
    assert generator.next_id() > nxt
    # A large step back is refused.
    clock.ms -= 1000
    with pytest.raises(KeyGenerationError, match="clock moved back"):
        generator.next_id()


def test_snowflake_worker_processes_split_the_sequence():
    """The worker processes of one sidecar share its worker_id; their ids never collide."""
    clock = FakeClock(1_700_000_000_000)
    generators = []
    try:
        for index in range(3):
            use_process_slot(index, 3)
            generators.append(SnowflakeKeyGenerator({"worker_id": 5}, clock=clock, sleep=clock.sleep))
    finally:
        use_process_slot(0, 1)
    seen: set[int] = set()
    for step in range(3000):  # several milliseconds' worth, each exhausting its share
        if step % 700 == 0:
            clock.ms += 1
        for index, generator in enumerate(generators):
            key = generator.next_id()
            assert key not in seen and snowflake_parts(key)[2] % 3 == index
            seen.add(key)
    assert SnowflakeKeyGenerator({"worker_id": 5}, clock=clock)._stride == 1  # slot reset


def test_snowflake_vibration_spreads_low_bits():
    clock = FakeClock(1_700_000_000_000)
    generator = SnowflakeKeyGenerator({"worker_id": 0}, clock=clock, sleep=clock.sleep)
    parities = set()
    for _ in range(10):
        clock.ms += 1  # one id per millisecond: the low-traffic case
        parities.add(generator.next_id() % 2)
    assert parities == {0, 1}


def test_key_generator_props():
    for bad in (-1, 1024, "x"):
        with pytest.raises(KeyGeneratorPropsError) as info:
            SnowflakeKeyGenerator({"worker_id": bad})
        assert info.value.prop == "worker_id"
    with pytest.raises(KeyGeneratorPropsError) as info:
        create_key_generator("SEQUENCE")
    assert info.value.prop is None
    assert len(UUIDKeyGenerator().next_id()) == 32
    assert len(create_key_generator("uuid", {"format": "string"}).next_id()) == 36
    assert len({UUIDKeyGenerator().next_id() for _ in range(1000)}) == 1000
    with pytest.raises(KeyGeneratorPropsError):
        UUIDKeyGenerator({"format": "base64"})


def test_values_in_helper():
    assert list(values_in(1, 3, False, False)) == [2]
    assert list(values_in(1, 3, True, True)) == [1, 2, 3]
