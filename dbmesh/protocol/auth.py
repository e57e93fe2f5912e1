"""Password scrambles of the MySQL authentication plugins the sidecar speaks."""

from __future__ import annotations

import hashlib
import hmac
import os

NATIVE_PLUGIN = "mysql_native_password"
CACHING_SHA2_PLUGIN = "caching_sha2_password"


def new_scramble() -> bytes:
    """20 random bytes without NUL (clients treat the scramble as a C string)."""
    return bytes(b % 255 + 1 for b in os.urandom(20))


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def native_response(password: str, scramble: bytes) -> bytes:
    """What a client sends for mysql_native_password: SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw)))."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password.encode()).digest()
    stage2 = hashlib.sha1(stage1).digest()
    return _xor(stage1, hashlib.sha1(scramble[:20] + stage2).digest())


def caching_sha2_response(password: str, scramble: bytes) -> bytes:
    """The fast-auth scramble of caching_sha2_password:
    SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + scramble)."""
    if not password:
        return b""
    p1 = hashlib.sha256(password.encode()).digest()
    p2 = hashlib.sha256(p1).digest()
    return _xor(p1, hashlib.sha256(p2 + scramble[:20]).digest())


def verify(plugin: str, password: str, scramble: bytes, response: bytes) -> bool:
    if plugin == NATIVE_PLUGIN:
        expected = native_response(password, scramble)
    elif plugin == CACHING_SHA2_PLUGIN:
        expected = caching_sha2_response(password, scramble)
    else:
        return False
    return hmac.compare_digest(expected, response)
