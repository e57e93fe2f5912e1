"""Collation ids a client may announce in its handshake, mapped to what SET NAMES needs."""

from __future__ import annotations

# id -> (character set, collation). Ids MariaDB does not know (MySQL 8's utf8mb4_0900_*)
# map to the nearest MariaDB collation so MySQL 8 style clients work.
COLLATIONS: dict[int, tuple[str, str]] = {
    8: ("latin1", "latin1_swedish_ci"),
    11: ("ascii", "ascii_general_ci"),
    28: ("gbk", "gbk_chinese_ci"),
    33: ("utf8mb3", "utf8mb3_general_ci"),
    45: ("utf8mb4", "utf8mb4_general_ci"),
    46: ("utf8mb4", "utf8mb4_bin"),
    47: ("latin1", "latin1_bin"),
    48: ("latin1", "latin1_general_ci"),
    63: ("binary", "binary"),
    83: ("utf8mb3", "utf8mb3_bin"),
    192: ("utf8mb3", "utf8mb3_unicode_ci"),
    224: ("utf8mb4", "utf8mb4_unicode_ci"),
    246: ("utf8mb4", "utf8mb4_unicode_520_ci"),
    255: ("utf8mb4", "utf8mb4_general_ci"),  # MySQL 8 utf8mb4_0900_ai_ci
    305: ("utf8mb4", "utf8mb4_general_ci"),  # MySQL 8 utf8mb4_0900_as_ci
    309: ("utf8mb4", "utf8mb4_bin"),         # MySQL 8 utf8mb4_0900_bin
}

DEFAULT_COLLATION_ID = 45


def set_names_for(collation_id: int) -> str | None:
    """The SET NAMES a backend connection needs to match a client's handshake collation,
    or None when the backend's handshake default (utf8mb4_general_ci) already matches."""
    if collation_id == DEFAULT_COLLATION_ID:
        return None
    charset, collation = COLLATIONS.get(collation_id, COLLATIONS[DEFAULT_COLLATION_ID])
    if collation == "utf8mb4_general_ci":
        return None
    return f"SET NAMES {charset} COLLATE {collation}"
