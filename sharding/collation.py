"""Approximate MySQL collation semantics for values the proxy has already decoded.

The merge engine has to order and group strings the way the backend MySQL
servers did, without asking them.  Implementing the full Unicode Collation
Algorithm (UCA) tables is out of scope, so each collation family is mapped to
a cheap, documented approximation that agrees with MySQL on equality for the
common cases (case, accents, trailing spaces) and on ordering for Latin text:

* ``None`` / ``"binary"``: codepoint order (== UTF-8 byte order), NO PAD.
* ``*_bin``: codepoint order; PAD SPACE unless it is a ``0900`` collation.
* legacy ``*_ci`` (``utf8mb4_general_ci``, ``latin1_swedish_ci`` ...): one
  weight per character = the upper-cased base letter with accents removed,
  so ``'_'`` sorts after letters just like MySQL; characters outside the BMP
  all weigh U+FFFD (MySQL's general_ci treats them as equal); ``'ß' = 's'``.
  Language tailorings (e.g. Swedish ``'ä'`` after ``'z'``) are ignored.
* UCA-based (``*_unicode_ci``, ``*_unicode_520_ci``, ``*_0900_ai_ci``,
  ``*_0900_as_ci``, ``*_cs`` ...): NFKD + casefold, combining marks are
  ignored at the primary level; primary weights are grouped like DUCET
  (whitespace/punctuation/symbols < digits by numeric value < letters),
  ASCII punctuation follows the DUCET order, everything else is ordered by
  codepoint inside its group; other control/format characters are
  ignorable.  Expansions/contractions beyond what NFKD + casefold give
  (e.g. 'æ' = 'ae') are not modelled.  ``_as`` adds an accent level and ``_cs`` a case level
  (lower before upper), compared only on primary ties, as in UCA.

PAD SPACE is emulated by comparing ``s.rstrip(' ') + ' '``: exact for
equality, and for ordering it differs from real padding only when trailing
spaces are followed by a character weighing less than a space (e.g. a tab).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import cache, lru_cache

__all__ = ["CollationInfo", "collation_info", "collation_key", "collation_keyer", "is_binary_collation"]


@dataclass(frozen=True)
class CollationInfo:
    name: str
    style: str  # "binary" | "bin" | "general" | "uca"
    pad_space: bool
    accent_sensitive: bool
    case_sensitive: bool


BINARY = CollationInfo("binary", "binary", pad_space=False, accent_sensitive=True, case_sensitive=True)


@lru_cache(maxsize=512)
def collation_info(name: str | None) -> CollationInfo:
    """Classify a MySQL/MariaDB collation name; raises ValueError if unknown."""
    if name is None:
        return BINARY
    n = name.strip().lower()
    if n == "binary":
        return BINARY
    # MySQL 8's 0900 collations and MariaDB's *_nopad_* ones are NO PAD; all older ones PAD SPACE.
    pad = "0900" not in n and "nopad" not in n
    if n.endswith("_bin"):
        return CollationInfo(n, "bin", pad, True, True)
    if n.endswith("_cs") or n.endswith("_cs_ks"):
        return CollationInfo(n, "uca", pad, True, True)
    if n.endswith("_ci") or n.endswith("_ci_ks"):
        accent = "_as_ci" in n
        uca = accent or "unicode" in n or "0900" in n or "uca" in n or "_ai_ci" in n
        return CollationInfo(n, "uca" if uca else "general", pad, accent, False)
    raise ValueError(f"unsupported collation: {name!r}")


def is_binary_collation(name: str | None) -> bool:
    return collation_info(name).style in ("binary", "bin")


def _pad(s: str) -> str:
    # One trailing space stands in for MySQL's "infinitely many" pad spaces.
    return s.rstrip(" ") + " "


# ---------------------------------------------------------------- general_ci

_GENERAL_SPECIAL = {"ß": "S"}


@cache  # bounded by the number of distinct characters seen
def _general_weight(c: str) -> str:
    if ord(c) > 0xFFFF:
        return "\ufffd"
    special = _GENERAL_SPECIAL.get(c)
    if special is not None:
        return special
    base = unicodedata.normalize("NFD", c)[0]
    up = base.upper()
    return up if len(up) == 1 else base


def _general_key(s: str, info: CollationInfo) -> str:
    if info.pad_space:
        s = _pad(s)
    if s.isascii():
        return s.upper()
    return "".join(map(_general_weight, s))


# ---------------------------------------------------------------- UCA-like

_PUNCT, _DIGIT, _LETTER = 0, 1 << 21, 2 << 21

# DUCET (root collation) order of the ASCII whitespace, punctuation and symbols; other
# non-letter characters follow them in codepoint order.
_ASCII_VARIABLE_ORDER = "\t\n\v\f\r " + "_-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$"
_ASCII_VARIABLE_RANK = {c: i for i, c in enumerate(_ASCII_VARIABLE_ORDER)}


@cache
def _uca_units(ch: str) -> tuple[tuple[int, bool], ...]:
    """(primary weight, or -codepoint for a combining mark, is_upper) per unit of one NFKD character."""
    upper = ch.isupper()
    out: list[tuple[int, bool]] = []
    for c in ch.casefold():
        rank = _ASCII_VARIABLE_RANK.get(c)
        if rank is not None:
            out.append((_PUNCT | rank, upper))
            continue
        cat = unicodedata.category(c)
        if cat[0] == "M":
            out.append((-ord(c), upper))  # negative = secondary-only unit (accent)
        elif cat in ("Cc", "Cf"):
            continue  # ignorable at every level
        elif cat == "Nd":
            out.append((_DIGIT | unicodedata.digit(c), upper))
        elif cat[0] in ("L", "N"):
            out.append((_LETTER | ord(c), upper))
        else:
            out.append((_PUNCT | (0x100 + ord(c)), upper))
    return tuple(out)


def _uca_key(s: str, info: CollationInfo) -> Hashable:
    if info.pad_space:
        s = _pad(s)
    if not s.isascii():
        s = unicodedata.normalize("NFKD", s)
    primary: list[int] = []
    accents: list[tuple[int, ...]] = []
    case: list[int] = []
    for ch in s:
        for weight, upper in _uca_units(ch):
            if weight < 0:
                if accents:
                    accents[-1] = accents[-1] + (-weight,)
                continue
            primary.append(weight)
            accents.append(())
            case.append(1 if upper else 0)
    if info.case_sensitive:
        return (tuple(primary), tuple(accents), tuple(case))
    if info.accent_sensitive:
        return (tuple(primary), tuple(accents))
    return tuple(primary)


# ---------------------------------------------------------------- dispatch


def _binary_key(s: str, info: CollationInfo) -> str:
    return s


def _bin_key(s: str, info: CollationInfo) -> str:
    return _pad(s) if info.pad_space else s


_KEYERS: dict[str, Callable[[str, CollationInfo], Hashable]] = {
    "binary": _binary_key,
    "bin": _bin_key,
    "general": _general_key,
    "uca": _uca_key,
}


def collation_key(s: str, collation: str | None) -> Hashable:
    """A hashable key: equal keys <=> equal under the collation; key order ~ collation order.

    Keys are only comparable with keys produced for the same collation.
    """
    info = collation_info(collation)
    return _KEYERS[info.style](s, info)


def collation_keyer(collation: str | None) -> Callable[[str], Hashable]:
    """``collation_key`` for one collation, looked up once (for keys of many values)."""
    info = collation_info(collation)
    keyer = _KEYERS[info.style]
    if keyer is _general_key and info.pad_space:  # the usual case, inline
        def general(s: str) -> str:
            s = s.rstrip(" ") + " "
            return s.upper() if s.isascii() else "".join(map(_general_weight, s))

        return general
    return lambda s: keyer(s, info)
