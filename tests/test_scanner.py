"""The response scanner finds the same end and the same facts whatever the chunking.

A result wholly in one chunk takes the scanner's one-loop path; the same bytes fed a few at
a time take the general packet walk. Both must agree on every response shape: result sets
with and without DEPRECATE_EOF, errors among the rows, several result sets, cursors, OK
packets, and bytes that follow the response (which are never consumed).
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from dbmesh.protocol.constants import ServerStatus
from dbmesh.protocol.packets import eof_packet, err_packet, lenenc_int, lenenc_str, ok_packet
from dbmesh.protocol.scanner import ResponseKind, ResponseScanner

FACTS = ("done", "status", "status_seen", "affected_rows", "last_insert_id", "warnings", "result_sets",
         "num_columns")


def wire(payloads: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(p) | ((seq + 1) & 0xFF) << 24) + p for seq, p in enumerate(payloads))


@st.composite
def result_set(draw, deprecate_eof: bool, last: bool) -> list[bytes]:
    columns = draw(st.integers(1, 300))
    payloads = [lenenc_int(columns)]
    payloads += [b"\x03def" + draw(st.binary(max_size=20)) for _ in range(columns)]
    cursor = draw(st.booleans()) and not deprecate_eof and last
    more = 0 if last else ServerStatus.MORE_RESULTS_EXISTS
    if not deprecate_eof:
        payloads.append(eof_packet(ServerStatus.AUTOCOMMIT | (ServerStatus.CURSOR_EXISTS if cursor else 0) | more))
        if cursor:
            return payloads
    for _ in range(draw(st.integers(0, 5))):
        values = draw(st.lists(st.one_of(st.none(), st.binary(max_size=300)), min_size=columns, max_size=columns))
        payloads.append(b"".join(b"\xfb" if v is None else lenenc_str(v) for v in values))
    if draw(st.integers(0, 9)) == 0:
        payloads.append(err_packet(1317, "70100", "Query execution was interrupted"))
        return payloads
    status = ServerStatus.AUTOCOMMIT | more | draw(st.sampled_from([0, ServerStatus.IN_TRANS]))
    warnings = draw(st.integers(0, 3))
    payloads.append(ok_packet(0, 0, status, warnings, eof_header=True) if deprecate_eof
                    else eof_packet(status, warnings))
    return payloads


@st.composite
def response(draw) -> tuple[bool, bytes]:
    deprecate_eof = draw(st.booleans())
    if draw(st.integers(0, 4)) == 0:
        return deprecate_eof, wire([ok_packet(draw(st.integers(0, 1 << 40)), draw(st.integers(0, 1 << 20)))])
    sets = draw(st.integers(1, 3))
    payloads: list[bytes] = []
    for i in range(sets):
        part = draw(result_set(deprecate_eof, last=i == sets - 1))
        payloads += part
        if part[-1][:1] == b"\xff" or (not deprecate_eof and part[-1][:1] == b"\xfe"
                                        and struct.unpack_from("<H", part[-1], 3)[0] & ServerStatus.CURSOR_EXISTS):
            break
    return deprecate_eof, wire(payloads)


def facts(scanner: ResponseScanner) -> dict:
    found = {name: getattr(scanner, name) for name in FACTS}
    found["error"] = scanner.error.code if scanner.error else None
    return found


@given(response(), st.integers(1, 7), st.binary(max_size=10))
def test_whole_chunk_and_small_chunks_agree(shape: tuple[bool, bytes], step: int, after: bytes) -> None:
    deprecate_eof, data = shape
    whole = ResponseScanner(ResponseKind.RESULT, deprecate_eof)
    assert whole.feed(data + after) == len(data)
    assert whole.done

    pieces = ResponseScanner(ResponseKind.RESULT, deprecate_eof)
    taken = 0
    for pos in range(0, len(data), step):
        taken += pieces.feed(data[pos:pos + step])
    assert taken == len(data)
    assert facts(whole) == facts(pieces)


def test_a_point_select_in_one_chunk_is_read_to_its_end() -> None:
    """The common shape: one column, one binary row, classic EOF packets."""
    data = wire([b"\x01", b"\x03def" + bytes(30), eof_packet(), b"\x00\x00\x05hello", eof_packet(warnings=2)])
    scanner = ResponseScanner(ResponseKind.RESULT, deprecate_eof=False)
    assert scanner.feed(data + b"next") == len(data)
    assert (scanner.done, scanner.num_columns, scanner.warnings, scanner.result_sets) == (True, 1, 2, 1)
    assert scanner.status == ServerStatus.AUTOCOMMIT
