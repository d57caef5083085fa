"""The secret keys: from Secrets Manager on deployed stages, from the environment locally.

Read once per container, on first use (never at import: no network at cold start).
The secret is a JSON object::

    {"jwt_signing_key": "<base64, 32+ bytes>", "pii_encryption_key": "<base64, 32 bytes>",
     "lookup_hash_key": "<base64, 32+ bytes>", "wechat_oa_secret": "...", "wechat_mp_secret": "..."}

Example
-------
>>> get_keys().pii_key  # doctest: +SKIP
b'...32 bytes...'
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from chalicelib.config import ConfigError, get_settings

_ENV_TO_SECRET = {
    "JWT_SIGNING_KEY": "jwt_signing_key",
    "PII_ENCRYPTION_KEY": "pii_encryption_key",
    "LOOKUP_HASH_KEY": "lookup_hash_key",
}


@dataclass(frozen=True)
class Keys:
    """The key material of one stage."""

    jwt_signing_key: bytes = field(repr=False)
    pii_key: bytes = field(repr=False)
    lookup_key: bytes = field(repr=False)
    wechat_secrets: dict[str, str] = field(default_factory=dict, repr=False)


def _decode(name: str, value: Any, *, exact: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"key {name} must be base64") from None
    if exact is not None and len(raw) != exact:
        raise ConfigError(f"key {name} must be {exact} bytes, got {len(raw)}")
    if len(raw) < 32:
        raise ConfigError(f"key {name} must be at least 32 bytes, got {len(raw)}")
    return raw


def keys_from_secret(secret: dict[str, Any]) -> Keys:
    """Build ``Keys`` from the secret's JSON object, checking every key's size."""
    missing = [name for name in _ENV_TO_SECRET.values() if not secret.get(name)]
    if missing:
        raise ConfigError(f"the keys secret lacks {', '.join(missing)}")
    return Keys(
        jwt_signing_key=_decode("jwt_signing_key", secret["jwt_signing_key"]),
        pii_key=_decode("pii_encryption_key", secret["pii_encryption_key"], exact=32),
        lookup_key=_decode("lookup_hash_key", secret["lookup_hash_key"]),
        wechat_secrets={
            app: str(secret[f"wechat_{app}_secret"]) for app in ("oa", "mp") if secret.get(f"wechat_{app}_secret")
        },
    )


@lru_cache(maxsize=1)
def get_keys() -> Keys:
    """The stage's keys, fetched once per container."""
    settings = get_settings()
    if settings.secrets_name:
        from aws_lambda_powertools.utilities import parameters

        secret = parameters.get_secret(settings.secrets_name, transform="json")
        if not isinstance(secret, dict):
            raise ConfigError(f"secret {settings.secrets_name} must hold a JSON object")
        return keys_from_secret(secret)
    return keys_from_secret({_ENV_TO_SECRET[name]: value for name, value in settings.inline_keys.items()})
