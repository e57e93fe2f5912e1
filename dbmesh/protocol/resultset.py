"""One backend result set kept as it came: column definitions and row payloads, undecoded.

Merged sharded reads take their rows this way so that a row the merge only passes on goes
to the client as the backend sent it (text or binary protocol alike), and a row is decoded
only when the merge compares or combines its values.
"""

from __future__ import annotations

from dataclasses import dataclass

from .packets import Field, parse_column_definition, read_lenenc_int


@dataclass(slots=True)
class ResultRows:
    field_packets: list[bytes]
    rows: list[bytes]               # row payloads, text or binary as the command asked
    fields: list[Field] | None = None  # parsed on first use (see parsed_fields)

    def parsed_fields(self) -> list[Field]:
        if self.fields is None:
            self.fields = [parse_column_definition(p) for p in self.field_packets]
        return self.fields


def result_rows(payloads: list[bytes], deprecate_eof: bool) -> ResultRows:
    """The parts of a complete result-set response (the caller has checked it is no error);
    an OK packet (a statement without result set) gives no columns and no rows."""
    if payloads[0][0] == 0x00:
        return ResultRows([], [], [])
    count, _ = read_lenenc_int(payloads[0], 0)
    first_row = 1 + count + (0 if deprecate_eof else 1)
    return ResultRows(payloads[1:1 + count], payloads[first_row:-1])
