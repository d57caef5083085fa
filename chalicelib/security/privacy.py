"""Personal data at rest and on screen: field encryption, keyed lookup hashes, masking.

Phone, ID and licence numbers are encrypted with AES-256-GCM (a fresh nonce each time;
the field's name is the associated data, so a ciphertext cannot be moved to another
field). Lookups use a keyed HMAC, so the Users table never holds a bare phone number.
Anyone but the owner or an admin sees only the mask.

Example
-------
>>> mask_phone("13812345678")
'138****5678'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from chalicelib.security.keys import get_keys

CIPHER_VERSION = "v1"


class DecryptionError(ValueError):
    """A stored ciphertext does not decrypt with this stage's key."""


def encrypt(field_name: str, plaintext: str) -> str:
    """Encrypt ``plaintext`` for ``field_name``: ``v1:<base64(nonce + ciphertext + tag)>``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    sealed = AESGCM(get_keys().pii_key).encrypt(nonce, plaintext.encode("utf-8"), field_name.encode("utf-8"))
    return f"{CIPHER_VERSION}:{base64.b64encode(nonce + sealed).decode('ascii')}"


def decrypt(field_name: str, stored: str) -> str:
    """The plaintext of ``encrypt(field_name, ...)``; ``DecryptionError`` if it was not made here."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    version, _, payload = stored.partition(":")
    if version != CIPHER_VERSION:
        raise DecryptionError(f"unknown cipher version {version!r}")
    try:
        raw = base64.b64decode(payload, validate=True)
        plain = AESGCM(get_keys().pii_key).decrypt(raw[:12], raw[12:], field_name.encode("utf-8"))
    except (InvalidTag, ValueError):  # binascii.Error is a ValueError; so is a too-short nonce
        raise DecryptionError("ciphertext does not verify") from None
    return plain.decode("utf-8")


def lookup_hash(kind: str, value: str) -> str:
    """A keyed hash of ``value`` for exact-match lookups (hex, 64 characters)."""
    return hmac.new(get_keys().lookup_key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def mask_phone(phone: str) -> str:
    """Show the first three and last four digits of a mainland mobile number.

    >>> mask_phone("+8613812345678")
    '138****5678'
    """
    digits = phone[-11:]
    return f"{digits[:3]}****{digits[-4:]}"
