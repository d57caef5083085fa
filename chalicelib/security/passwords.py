"""Password hashing with scrypt (memory-hard, in the standard library), one salt per hash.

Stored form: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``, so the cost can rise later
without breaking older hashes.

Example
-------
>>> stored = hash_password("correct horse 1")
>>> verify_password("correct horse 1", stored), verify_password("wrong", stored)
(True, False)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

N, R, P = 2**14, 8, 1  # 16 MiB of memory per hash
DKLEN = 32


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * n * r * p, dklen=DKLEN)


def hash_password(password: str) -> str:
    """A salted scrypt hash of ``password``."""
    salt = os.urandom(16)
    digest = _derive(password, salt, N, R, P)
    return "$".join(
        ("scrypt", str(N), str(R), str(P), base64.b64encode(salt).decode(), base64.b64encode(digest).decode())
    )


def verify_password(password: str, stored: str | None) -> bool:
    """True when ``password`` matches ``stored``; spends the same time when there is no hash."""
    if stored is None:
        _derive(password, bytes(16), N, R, P)  # the same work, so timing does not reveal unknown phones
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = _derive(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(candidate, base64.b64decode(digest))
