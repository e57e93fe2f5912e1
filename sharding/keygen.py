"""Distributed key generators for sharded INSERTs that omit the key column.

SNOWFLAKE ids are 63-bit positive ints laid out as::

    | 41 bits: ms since EPOCH_MS | 10 bits: worker id | 12 bits: sequence |

Uniqueness across sidecar processes rests entirely on every process having a distinct
``worker_id`` (0..1023) in its config; within one process a lock, a per-millisecond
sequence and a refusal to go back in time make ids unique and strictly increasing. The
worker processes of one sidecar (``server.workers``) share its config and so its
``worker_id``: they split the sequence instead, worker k of n using the sequence numbers
congruent to k modulo n (see use_process_slot).
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

# 2020-01-01T00:00:00Z; 41 bits of milliseconds from here last until 2089.
EPOCH_MS = 1_577_836_800_000
WORKER_BITS = 10
SEQUENCE_BITS = 12
TIMESTAMP_BITS = 41
MAX_WORKER_ID = (1 << WORKER_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
MAX_TIMESTAMP = (1 << TIMESTAMP_BITS) - 1


class KeyGeneratorPropsError(ValueError):
    """An invalid key-generator property; ``prop`` names it (None for the whole section)."""

    def __init__(self, prop: str | None, message: str):
        super().__init__(message)
        self.prop = prop


class KeyGenerationError(RuntimeError):
    """No id could be produced safely (e.g. the clock moved back too far)."""


class KeyGenerator(ABC):
    type_name: ClassVar[str]

    @abstractmethod
    def next_id(self) -> int | str: ...


def _props(props: Mapping[str, Any] | None, allowed: set[str]) -> dict[str, Any]:
    # Accept ShardingSphere-style hyphenated names as well as underscores.
    result = {str(k).replace("-", "_"): v for k, v in (props or {}).items()}
    for key in result:
        if key not in allowed:
            raise KeyGeneratorPropsError(key, f"unknown property; expected one of {sorted(allowed)}")
    return result


def _int_prop(props: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = props.get(name, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise KeyGeneratorPropsError(name, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise KeyGeneratorPropsError(name, f"must be between {low} and {high}, got {value}")
    return value


# (index, count) of this process among the sidecar's worker processes; see use_process_slot.
_PROCESS_SLOT = (0, 1)


def use_process_slot(index: int, count: int) -> None:
    """Make SNOWFLAKE generators created from now on use only the sequence numbers ``index``
    modulo ``count``: the worker processes of one sidecar then never issue the same id."""
    global _PROCESS_SLOT
    if not 0 <= index < count or count > MAX_SEQUENCE + 1:
        raise ValueError(f"bad process slot {index}/{count}")
    _PROCESS_SLOT = (index, count)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class SnowflakeKeyGenerator(KeyGenerator):
    """Props: worker_id (0..1023, default 0), max_tolerate_time_difference_ms (default 10),
    max_vibration_offset (0..4095, default 255).

    If the clock steps back by at most the tolerance we wait it out; further back, we refuse
    (an id from the past could collide with one already issued). The sequence of each new
    millisecond starts at a rotating offset so that, at low traffic, ids are not all even
    (which would send every row to shard 0 under ``id % 2``).
    """

    type_name = "SNOWFLAKE"

    def __init__(self, props: Mapping[str, Any] | None = None, *,
                 clock: Callable[[], int] = _wall_clock_ms,
                 sleep: Callable[[float], None] = time.sleep):
        p = _props(props, {"worker_id", "max_tolerate_time_difference_ms", "max_vibration_offset"})
        self.worker_id = _int_prop(p, "worker_id", 0, 0, MAX_WORKER_ID)
        self.max_backward_ms = _int_prop(p, "max_tolerate_time_difference_ms", 10, 0, 60_000)
        self.max_vibration = _int_prop(p, "max_vibration_offset", 255, 0, MAX_SEQUENCE)
        self._clock = clock
        self._sleep = sleep
        # Sequence numbers offset + k * stride only (offset 0, stride 1 in a single process).
        self._offset, self._stride = _PROCESS_SLOT
        self._max_vibration = min(self.max_vibration, (MAX_SEQUENCE - self._offset) // self._stride)
        self._lock = threading.Lock()
        self._last_ms = -1
        self._sequence = 0
        self._vibration = 0

    def next_id(self) -> int:
        with self._lock:
            now = self._current_ms()
            if now == self._last_ms:
                if self._sequence + self._stride > MAX_SEQUENCE:
                    now = self._wait_after(self._last_ms)
                    self._start_millisecond()
                else:
                    self._sequence += self._stride
            else:
                self._start_millisecond()
            self._last_ms = now
            return ((now - EPOCH_MS) << (WORKER_BITS + SEQUENCE_BITS)) | (
                self.worker_id << SEQUENCE_BITS) | self._sequence

    def _start_millisecond(self) -> None:
        self._sequence = self._offset + self._vibration * self._stride
        self._vibration = 0 if self._vibration >= self._max_vibration else self._vibration + 1

    def _current_ms(self) -> int:
        now = self._clock()
        if now < self._last_ms:
            behind = self._last_ms - now
            if behind > self.max_backward_ms:
                raise KeyGenerationError(
                    f"clock moved back {behind} ms (tolerance {self.max_backward_ms} ms); "
                    "refusing to generate ids that could repeat")
            self._sleep(behind / 1000)
            now = self._clock()
            if now < self._last_ms:
                raise KeyGenerationError(f"clock is still {self._last_ms - now} ms behind the last id")
        if now - EPOCH_MS > MAX_TIMESTAMP or now < EPOCH_MS:
            raise KeyGenerationError(f"clock {now} ms is outside the snowflake timestamp range")
        return now

    def _wait_after(self, ms: int) -> int:
        # The sequence is exhausted for this millisecond: spin until the next one.
        now = self._clock()
        while now <= ms:
            self._sleep(0.0001)
            now = self._clock()
        return now


def snowflake_parts(key: int) -> tuple[int, int, int]:
    """(unix ms, worker id, sequence) of a snowflake id; handy in tests and debugging."""
    sequence = key & MAX_SEQUENCE
    worker = (key >> SEQUENCE_BITS) & MAX_WORKER_ID
    ms = (key >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS
    return ms, worker, sequence


class UUIDKeyGenerator(KeyGenerator):
    """Random (version 4) UUIDs. Props: format = hex (32 chars, default) or string (36 chars)."""

    type_name = "UUID"

    def __init__(self, props: Mapping[str, Any] | None = None):
        p = _props(props, {"format"})
        self.format = str(p.get("format", "hex")).lower()
        if self.format not in ("hex", "string"):
            raise KeyGeneratorPropsError("format", f"expected 'hex' or 'string', got {self.format!r}")

    def next_id(self) -> str:
        value = uuid.uuid4()
        return value.hex if self.format == "hex" else str(value)


KEY_GENERATOR_TYPES: dict[str, type[KeyGenerator]] = {
    SnowflakeKeyGenerator.type_name: SnowflakeKeyGenerator,
    UUIDKeyGenerator.type_name: UUIDKeyGenerator,
}


def create_key_generator(type_name: str, props: Mapping[str, Any] | None = None) -> KeyGenerator:
    cls = KEY_GENERATOR_TYPES.get(str(type_name).upper())
    if cls is None:
        raise KeyGeneratorPropsError(None, f"unknown key generator type {type_name!r}; "
                                           f"expected one of {sorted(KEY_GENERATOR_TYPES)}")
    return cls(props)
