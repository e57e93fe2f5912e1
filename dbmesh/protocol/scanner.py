"""Finds where a server response ends in a stream of raw bytes, without decoding rows.

The relay forwards backend bytes to the client chunk by chunk as they arrive; this scanner
walks the packet headers in those chunks, looks only at the first bytes of each packet, and
says when the whole response (all result sets of a multi-result) is complete. It also keeps
what the sidecar must learn from the response: the final status flags, the OK packet's
affected rows / last insert id, an error, and for COM_STMT_PREPARE the statement's shape.
"""

from __future__ import annotations

from typing import Final

from .constants import EOF_HEADER, ERR_HEADER, LOCAL_INFILE_HEADER, MAX_PACKET, OK_HEADER, ServerStatus
from .packets import ErrInfo, MalformedPacket, parse_eof, parse_err, parse_ok, read_lenenc_int

# Bytes of a packet's start kept for inspection: enough for an OK/EOF packet's status
# flags and a PREPARE-OK's counts. Error packets are kept whole (they are short).
_INSPECT: Final = 32


# Plain ints rather than IntEnum: the scanner compares them for every packet it sees (Final:
# compiled, they are constants).
class ResponseKind:
    RESULT: Final = 1       # COM_QUERY, COM_STMT_EXECUTE: OK/ERR or result set(s)
    ROWS: Final = 2         # COM_STMT_FETCH: rows then EOF/OK, or ERR
    PREPARE: Final = 3      # COM_STMT_PREPARE
    FIELD_LIST: Final = 4   # COM_FIELD_LIST: column definitions then EOF, or ERR
    SINGLE: Final = 5       # one packet of any form (COM_PING, COM_STATISTICS, COM_INIT_DB, ...)


class _State:
    FIRST: Final = 1
    COLUMNS: Final = 2
    COLUMNS_EOF: Final = 3
    ROWS: Final = 4
    PREPARE_PARAMS: Final = 5
    PREPARE_PARAMS_EOF: Final = 6
    PREPARE_COLUMNS: Final = 7
    PREPARE_COLUMNS_EOF: Final = 8
    DONE: Final = 9


# States where a packet is a column or parameter definition, only counted.
_DEFINITIONS = frozenset((_State.COLUMNS, _State.PREPARE_PARAMS, _State.PREPARE_COLUMNS))


class ResponseScanner:
    __slots__ = ("kind", "deprecate_eof", "done", "_status", "status_seen", "affected_rows", "last_insert_id",
                 "warnings", "error", "result_sets", "stmt_id", "num_params", "num_columns",
                 "_state", "_left", "_header", "_remaining", "_length", "_head", "_continuation")

    def __init__(self, kind: int, deprecate_eof: bool):
        self.kind = kind
        self.deprecate_eof = deprecate_eof
        self._start()

    def _start(self) -> None:
        """The state before the response's first byte."""
        kind = self.kind
        self.done = False
        self._status = 0
        # Whether an OK/EOF packet carried status flags: 0 is a real status (autocommit off,
        # no transaction), not "unknown".
        self.status_seen = False
        self.affected_rows = 0
        self.last_insert_id = 0
        self.warnings = 0
        self.error: ErrInfo | None = None
        self.result_sets = 0
        self.stmt_id = 0
        self.num_params = 0
        self.num_columns = 0
        self._state = _State.ROWS if kind == ResponseKind.ROWS else (
            _State.COLUMNS if kind == ResponseKind.FIELD_LIST else _State.FIRST)
        self._left = 0                # column definitions still expected
        self._header = b""            # a packet header split across chunks
        self._remaining = 0           # payload bytes of the current packet not yet seen
        self._length = 0
        self._head = b""              # the current packet's first bytes (split packets only)
        self._continuation = False    # the current packet continues a 16 MiB one

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        self._status = value
        self.status_seen = True

    def feed(self, data: bytes) -> int:
        """Consume ``data``; return how many bytes belong to this response (less than
        len(data) only when the response ended before the chunk did)."""
        if self._state == _State.FIRST and self.kind == ResponseKind.RESULT and not self._remaining \
                and not self._header and not self._continuation:
            used = self._whole_result_set(data)
            if used:
                return used
        pos = 0
        end = len(data)
        while pos < end and not self.done:
            if self._remaining == 0 and not self._header and not self._continuation and end - pos >= 4:
                # Fast path: a whole packet in this chunk (the usual case) is looked at in
                # place, without the header/head buffers the split case needs.
                length = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
                start = pos + 4
                stop = start + length
                if stop <= end and length < MAX_PACKET:
                    pos = stop
                    self._length = length
                    first = data[start] if length else -1
                    state = self._state
                    # Rows and column definitions need no look inside: skip them here
                    # rather than in _on_packet (most packets of a result are these).
                    if state == _State.ROWS and 0 <= first < EOF_HEADER:
                        continue
                    if state in _DEFINITIONS and self.kind != ResponseKind.FIELD_LIST:
                        self._left -= 1
                        if self._left == 0:
                            self._after_definitions()
                        continue
                    if length > _INSPECT and first != ERR_HEADER:
                        stop = start + _INSPECT
                    self._on_packet(bytes(data[start:stop]), length)
                    continue
            if self._remaining == 0 and len(self._header) < 4:
                need = 4 - len(self._header)
                self._header += data[pos:pos + need]
                pos += min(need, end - pos)
                if len(self._header) < 4:
                    break
                h = self._header
                self._length = self._remaining = h[0] | h[1] << 8 | h[2] << 16
                self._head = b""
                if self._length == 0:
                    self._packet_complete()
                continue
            take = min(self._remaining, end - pos)
            first = self._head[0] if self._head else data[pos]  # an ERR packet is kept whole (its message)
            room = (_INSPECT if first != ERR_HEADER else 1 << 16) - len(self._head)
            if room > 0:
                self._head += data[pos:pos + min(take, room)]
            pos += take
            self._remaining -= take
            if self._remaining == 0:
                self._packet_complete()
        return pos

    def _whole_result_set(self, data: bytes) -> int:
        """The usual answer to a query, one result set of fewer than 251 columns wholly in
        ``data``, walked in one tight loop: how many bytes it took, or 0 to leave ``data`` to
        the general walk (anything else: OK, ERR, a partial result, several result sets, a
        cursor, 16 MiB packets)."""
        end = len(data)
        if end < 5 or data[0] != 1 or data[1] or data[2]:
            return 0  # not a one-byte column count: OK, ERR, LOCAL INFILE, or a lenenc count
        count = data[4]
        if count == 0 or count >= 0xFB:
            return 0
        pos = 5
        for _ in range(count):  # column definitions, only counted
            if pos + 4 > end:
                return 0
            pos += 4 + (data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16)
        deprecate_eof = self.deprecate_eof
        if not deprecate_eof:  # the EOF after the definitions: a cursor sends no rows now
            if pos + 9 > end or data[pos + 4] != EOF_HEADER or data[pos] >= 9 or data[pos + 1] or data[pos + 2]:
                return 0
            if (data[pos + 7] | data[pos + 8] << 8) & ServerStatus.CURSOR_EXISTS:
                return 0
            pos += 4 + data[pos]
        while True:  # rows, up to the packet that ends them
            if pos + 4 > end:
                return 0
            length = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
            start = pos + 4
            pos = start + length
            if pos > end or length >= MAX_PACKET:
                return 0
            first = data[start] if length else -1
            if first == EOF_HEADER and (length < 9 or deprecate_eof):
                break
            if first == ERR_HEADER:
                return 0
        if deprecate_eof and length >= 7:
            self._on_ok(bytes(data[start:pos]))
        else:
            self.warnings, self.status = parse_eof(bytes(data[start:pos]))
        if self.status & ServerStatus.MORE_RESULTS_EXISTS:
            self._start()  # leave it all to the general walk
            return 0
        self.num_columns = count
        self.result_sets = 1
        self._state = _State.DONE
        self.done = True
        return pos

    def _packet_complete(self) -> None:
        self._header = b""
        continuation = self._continuation
        self._continuation = self._length == MAX_PACKET
        if not continuation:
            self._on_packet(bytes(self._head), self._length)

    def _on_packet(self, head: bytes, length: int) -> None:
        first = head[0] if head else -1
        state = self._state
        if state == _State.ROWS:
            if first == ERR_HEADER and length < MAX_PACKET:
                self._on_error(head)
            elif first == EOF_HEADER and (length < 9 or (self.deprecate_eof and length < MAX_PACKET)):
                self._end_of_result(head)
            return
        if state == _State.FIRST:
            if first == ERR_HEADER:
                self._on_error(head)
            elif self.kind == ResponseKind.SINGLE:
                if first == OK_HEADER and length >= 7:
                    self._on_ok(head)
                self.done = True
            elif first == OK_HEADER and self.kind == ResponseKind.PREPARE:
                self._on_prepare_ok(head)
            elif first == OK_HEADER:
                self._on_ok(head)
                self._next_result_or_done()
            elif first == LOCAL_INFILE_HEADER:
                # We never offer LOCAL_FILES, so a server asking for a file is a protocol error.
                raise MalformedPacket("backend requested LOCAL INFILE data, which the sidecar does not offer")
            else:
                count, _ = read_lenenc_int(head, 0)
                self._left = count or 0
                self.num_columns = self._left
                self._state = _State.COLUMNS
            return
        if state in (_State.COLUMNS, _State.PREPARE_PARAMS, _State.PREPARE_COLUMNS):
            if self.kind == ResponseKind.FIELD_LIST:
                if first == ERR_HEADER:
                    self._on_error(head)
                elif first == EOF_HEADER and length < 9:
                    self.status = parse_eof(head)[1]
                    self.done = True
                return
            self._left -= 1
            if self._left == 0:
                self._after_definitions()
            return
        if state in (_State.COLUMNS_EOF, _State.PREPARE_PARAMS_EOF, _State.PREPARE_COLUMNS_EOF):
            self.warnings, self.status = parse_eof(head)
            if state == _State.COLUMNS_EOF:
                self._after_columns()
            elif state == _State.PREPARE_PARAMS_EOF:
                self._prepare_columns()
            else:
                self.done = True

    # -- transitions -------------------------------------------------------------------

    def _after_definitions(self) -> None:
        state = self._state
        if state == _State.COLUMNS:
            if self.deprecate_eof:
                self._after_columns()
            else:
                self._state = _State.COLUMNS_EOF
        elif state == _State.PREPARE_PARAMS:
            if self.deprecate_eof:
                self._prepare_columns()
            else:
                self._state = _State.PREPARE_PARAMS_EOF
        elif self.deprecate_eof:
            self.done = True
        else:
            self._state = _State.PREPARE_COLUMNS_EOF

    def _after_columns(self) -> None:
        # An execute that opened a cursor sends no rows now; they come with COM_STMT_FETCH.
        if self.status & ServerStatus.CURSOR_EXISTS and not self.deprecate_eof:
            self.result_sets += 1
            self.done = True
        else:
            self._state = _State.ROWS

    def _on_prepare_ok(self, head: bytes) -> None:
        if len(head) < 12:
            raise MalformedPacket("truncated COM_STMT_PREPARE response")
        self.stmt_id = int.from_bytes(head[1:5], "little")
        self.num_columns = int.from_bytes(head[5:7], "little")
        self.num_params = int.from_bytes(head[7:9], "little")
        self.warnings = int.from_bytes(head[10:12], "little")
        if self.num_params:
            self._left = self.num_params
            self._state = _State.PREPARE_PARAMS
        else:
            self._prepare_columns()

    def _prepare_columns(self) -> None:
        if self.num_columns:
            self._left = self.num_columns
            self._state = _State.PREPARE_COLUMNS
        else:
            self.done = True

    def _on_ok(self, head: bytes) -> None:
        ok = parse_ok(head)
        self.affected_rows, self.last_insert_id = ok.affected_rows, ok.last_insert_id
        self.status, self.warnings = ok.status, ok.warnings

    def _on_error(self, head: bytes) -> None:
        self.error = parse_err(head)
        self.done = True

    def _end_of_result(self, head: bytes) -> None:
        if len(head) >= 7 and self.deprecate_eof:
            self._on_ok(head)
        else:
            self.warnings, self.status = parse_eof(head)
        self.result_sets += 1
        if self.kind == ResponseKind.ROWS:
            self.done = True
        else:
            self._next_result_or_done()

    def _next_result_or_done(self) -> None:
        if self.status & ServerStatus.MORE_RESULTS_EXISTS:
            self._state = _State.FIRST
        else:
            self.done = True
