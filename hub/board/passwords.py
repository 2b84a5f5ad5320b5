"""Password hashes of board users: scrypt from the standard library.

scrypt is a standard memory-hard slow hash (RFC 7914; OWASP lists it next to argon2id) and
hashlib has it, so no dependency is added. The stored form carries its parameters, so they
can be raised later without breaking old hashes:
`scrypt$n=131072,r=8,p=1$<salt, base64>$<hash, base64>` (OWASP's minimum for scrypt).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

HASH_PATTERN = r"^scrypt\$n=\d+,r=\d+,p=\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$"
_PARSE = re.compile(r"^scrypt\$n=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")
N, R, P = 2**17, 8, 1
_LENGTH = 32
# A hash of a password nobody has: checked when the user is unknown, so a wrong user name
# costs as long as a wrong password (no user enumeration by timing).
_DUMMY: str | None = None


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_LENGTH,
                          maxmem=129 * r * n + 2**20)


def hash_password(password: str) -> str:
    """The stored form of a password (random salt)."""
    salt = os.urandom(16)
    digest = _derive(password, salt, N, R, P)
    return (f"scrypt$n={N},r={R},p={P}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def verify_password(password: str, stored: str | None) -> bool:
    """Whether `password` matches `stored` (None: an unknown user, checked against a dummy
    hash so it takes as long)."""
    global _DUMMY
    if stored is None:
        if _DUMMY is None:
            _DUMMY = hash_password(os.urandom(16).hex())
        stored, known = _DUMMY, False
    else:
        known = True
    found = _PARSE.match(stored)
    if found is None:
        return False
    n, r, p = (int(found[i]) for i in (1, 2, 3))
    if n > 2**20 or r > 32 or p > 16:
        return False  # parameters no hash of ours has: refuse rather than burn memory
    digest = _derive(password, base64.b64decode(found[4]), n, r, p)
    return hmac.compare_digest(digest, base64.b64decode(found[5])) and known
