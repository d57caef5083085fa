"""WeChat Pay API v3 callback (notification) verification, and the matching signer for the sandbox.

Why our own verifier and not ``wechatpayv3``'s ``callback()`` (reference/payments.md §0.4, §4.1):

* **No timestamp window.** ``wechatpayv3`` never looks at ``Wechatpay-Timestamp``; a correctly
  signed callback from a day ago is accepted, so a captured callback can be replayed. The official
  SDKs (wechatpay-go ``FiveMinute``) reject anything more than 300 s from local time; so do we.
* **Network I/O on an attacker-chosen serial.** An unknown ``Wechatpay-Serial`` makes the SDK call
  ``GET /v3/certificates`` (``timeout=None`` by default), which can hang a Lambda and lets anyone
  on the internet make us call out. Here the serial must be in a configured allow-list
  (:class:`NotifyKeys`); nothing in this module ever opens a socket.
* **Failures are ``None``.** The SDK cannot tell a forged callback from a wrong APIv3 key. Every
  rejection here is a :class:`NotificationRejected` with a stable machine ``reason`` so the caller
  can answer 4xx (forged, stale, probe) or 5xx plus an alert (our key does not decrypt).

Order of checks (cheap and unauthenticated first; nothing is parsed before the signature holds):

1. the four ``Wechatpay-*`` headers are present (names are case-insensitive) → ``missing_header``
2. a ``WECHATPAY/SIGNTEST/`` signature is WeChat probing that we verify → ``signature_probe``
   (never accepted; WeChat retries with a real signature)
3. the serial is in the allow-list (public-key ``PUB_KEY_ID_…`` and, during a switch, platform
   certificate serials) → ``unknown_serial``
4. the timestamp is ASCII digits within ±300 s of ``now`` → ``stale_timestamp``
5. ``Wechatpay-Signature-Type``, when sent, is ``WECHATPAY2-SHA256-RSA2048`` → ``unsupported_algorithm``
6. SHA256withRSA (PKCS#1 v1.5) over ``"{timestamp}\\n{nonce}\\n{raw body}\\n"`` with the raw body
   bytes exactly as received (re-serialised JSON does not verify) → ``bad_signature``
7. the body is a JSON object with the event fields (``id``, ``create_time``, ``resource_type``,
   ``event_type`` non-empty strings, ``summary`` a string if present) and a ``resource`` object with
   string ``algorithm``, ``ciphertext``, ``nonce`` (``associated_data`` string, null or absent)
   → ``malformed_body``
8. ``resource.algorithm`` is ``AEAD_AES_256_GCM`` → ``unsupported_algorithm``
9. AES-GCM with the APIv3 key, ``resource.nonce`` and ``resource.associated_data`` (may be empty)
   opens ``resource.ciphertext`` (Base64 of ciphertext‖tag) → ``decryption_failed``
10. the plaintext is a UTF-8 JSON object → ``malformed_body``

``sign_notification`` builds the same wire format (body field order as WeChat sends it, compact
JSON, UTF-8) so the sandbox provider can post real-format callbacks to our own endpoint and the
production verifier runs locally. ``cryptography`` is imported inside the functions (cold start).

Example
-------
>>> private_pem, public_pem = generate_sandbox_keys()
>>> keys = NotifyKeys(api_v3_key=b"k" * 32, public_keys={"PUB_KEY_ID_SANDBOX": public_pem})
>>> headers, body = sign_notification(
...     {"id": "EV-1", "create_time": "2024-01-01T08:00:00+08:00", "event_type": "TRANSACTION.SUCCESS"},
...     {"out_trade_no": "T1", "trade_state": "SUCCESS"},
...     private_key_pem=private_pem, serial="PUB_KEY_ID_SANDBOX", api_v3_key=b"k" * 32,
...     timestamp=1704067200, nonce="n0nce",
... )
>>> verify_notification(headers, body, keys, now=1704067200.0).resource["trade_state"]
'SUCCESS'
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

__all__ = [
    "ALGORITHM",
    "REASONS",
    "SIGNATURE_TYPE",
    "SIGNTEST_PREFIX",
    "TIMESTAMP_TOLERANCE_S",
    "Notification",
    "NotificationRejected",
    "NotifyKeys",
    "aead_decrypt",
    "aead_encrypt",
    "generate_sandbox_keys",
    "sign_message",
    "sign_notification",
    "verify_notification",
]

TIMESTAMP_TOLERANCE_S: Final = 300
SIGNTEST_PREFIX: Final = "WECHATPAY/SIGNTEST/"
SIGNATURE_TYPE: Final = "WECHATPAY2-SHA256-RSA2048"
ALGORITHM: Final = "AEAD_AES_256_GCM"
RESOURCE_TYPE: Final = "encrypt-resource"

H_TIMESTAMP: Final = "Wechatpay-Timestamp"
H_NONCE: Final = "Wechatpay-Nonce"
H_SIGNATURE: Final = "Wechatpay-Signature"
H_SERIAL: Final = "Wechatpay-Serial"
H_SIGNATURE_TYPE: Final = "Wechatpay-Signature-Type"
_REQUIRED_HEADERS: Final = (H_TIMESTAMP, H_NONCE, H_SIGNATURE, H_SERIAL)

Reason = Literal[
    "missing_header",
    "signature_probe",
    "unknown_serial",
    "stale_timestamp",
    "bad_signature",
    "malformed_body",
    "unsupported_algorithm",
    "decryption_failed",
    "wrong_merchant",
]
REASONS: Final[frozenset[str]] = frozenset(Reason.__args__)  # type: ignore[attr-defined]

_AES_KEY_SIZES: Final = frozenset({16, 24, 32})  # AES-GCM; real APIv3 keys are 32, the official vector's is 16
_TIMESTAMP = re.compile(r"[0-9]{1,15}", re.ASCII)
# WeChat sends 32 alphanumerics; a newline or space would let bytes slide between nonce and body.
_NONCE = re.compile(r"[\x21-\x7e]{1,128}", re.ASCII)
_NONCE_ALPHABET: Final = string.ascii_letters + string.digits


class NotificationRejected(Exception):  # noqa: N818 - the name the payment flow is specified with
    """A callback that must not be acted on. ``reason`` is one of :data:`REASONS` (stable, for
    metrics and for choosing the HTTP answer); ``detail`` is a short human note with no secrets."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: Reason = reason
        self.detail = detail


@dataclass(frozen=True)
class NotifyKeys:
    """What verifies and decrypts callbacks: the APIv3 key and the serial → public key allow-list.

    ``public_keys`` maps a ``Wechatpay-Serial`` (``PUB_KEY_ID_…`` or a platform certificate's hex
    serial, matched exactly) to a PEM RSA public key (a ``CERTIFICATE`` PEM is accepted too, its
    public key is used). A serial not in this mapping is rejected; it is never fetched.
    A configured PEM that is not an RSA public key of at least 2048 bits raises ``ValueError`` when
    it is first used: that is a deployment fault, not a bad callback.
    """

    api_v3_key: bytes = field(repr=False)
    public_keys: Mapping[str, str]

    def __post_init__(self) -> None:
        if not isinstance(self.api_v3_key, bytes) or len(self.api_v3_key) not in _AES_KEY_SIZES:
            raise ValueError("api_v3_key must be 16, 24 or 32 bytes (real APIv3 keys are 32)")
        if not isinstance(self.public_keys, Mapping) or not self.public_keys:
            raise ValueError("public_keys must be a non-empty mapping of serial to PEM public key")
        for serial, pem in self.public_keys.items():
            if not isinstance(serial, str) or not serial or not isinstance(pem, str) or "-----BEGIN" not in pem:
                raise ValueError(f"public_keys entry {serial!r} must map a serial to a PEM string")
        object.__setattr__(self, "public_keys", MappingProxyType(dict(self.public_keys)))


@dataclass(frozen=True)
class Notification:
    """A verified, decrypted callback. ``resource`` is the decrypted JSON object (e.g. a
    ``transaction`` with ``out_trade_no``, ``trade_state``, ``amount``…); business checks
    (our order, amount, currency, mchid/appid) are the caller's."""

    id: str
    event_type: str
    resource_type: str
    summary: str
    create_time: str
    resource: dict[str, Any]
    original_type: str = ""
    serial: str = ""  # the allow-listed key that verified it (useful during a key switch)


def verify_notification(headers: Mapping[str, str], body: bytes, keys: NotifyKeys, now: float) -> Notification:
    """Verify and decrypt one WeChat Pay v3 callback; raise :class:`NotificationRejected` otherwise.

    ``headers`` are matched case-insensitively; ``body`` must be the raw request bytes; ``now`` is
    Unix seconds (injected so tests can freeze the clock). Never opens a network connection.
    """
    fields = _header_fields(headers)

    signature = fields[H_SIGNATURE]
    if signature.startswith(SIGNTEST_PREFIX):
        raise NotificationRejected("signature_probe", "WECHATPAY/SIGNTEST/ probe")

    serial = fields[H_SERIAL]
    pem = keys.public_keys.get(serial)
    if pem is None:
        raise NotificationRejected("unknown_serial", f"serial {serial[:64]!r} is not in the allow-list")

    timestamp = fields[H_TIMESTAMP]
    # written as 'not within', so a NaN clock fails the check instead of passing it
    if not _TIMESTAMP.fullmatch(timestamp) or not abs(int(timestamp) - now) <= TIMESTAMP_TOLERANCE_S:
        raise NotificationRejected("stale_timestamp", "timestamp is not within 300 s of now")

    signature_type = fields.get(H_SIGNATURE_TYPE)
    if signature_type is not None and signature_type != SIGNATURE_TYPE:
        raise NotificationRejected("unsupported_algorithm", "unsupported Wechatpay-Signature-Type")

    raw = _raw_bytes(body)
    _verify_signature(_load_public_key(pem), timestamp, fields[H_NONCE], raw, signature)

    event = _json_object(raw, "body")
    event_id = _required_str(event, "id")
    event_type = _required_str(event, "event_type")
    resource_type = _required_str(event, "resource_type")
    summary = _optional_str(event, "summary")
    create_time = _required_str(event, "create_time")
    resource = event.get("resource")
    if not isinstance(resource, dict):
        raise NotificationRejected("malformed_body", "resource is missing or not an object")
    algorithm = resource.get("algorithm")
    if not isinstance(algorithm, str):
        raise NotificationRejected("malformed_body", "resource.algorithm is missing or not a string")
    if algorithm != ALGORITHM:
        raise NotificationRejected("unsupported_algorithm", "resource.algorithm is not AEAD_AES_256_GCM")
    ciphertext = resource.get("ciphertext")
    nonce = resource.get("nonce")
    associated_data = resource.get("associated_data")
    if associated_data is None:
        associated_data = ""
    if not isinstance(ciphertext, str) or not isinstance(nonce, str) or not isinstance(associated_data, str):
        raise NotificationRejected("malformed_body", "resource ciphertext/nonce/associated_data are not strings")
    original_type = resource.get("original_type", "")

    plaintext = aead_decrypt(keys.api_v3_key, nonce=nonce, associated_data=associated_data, ciphertext=ciphertext)
    decrypted = _json_object(plaintext, "decrypted resource")

    return Notification(
        id=event_id,
        event_type=event_type,
        resource_type=resource_type,
        summary=summary,
        create_time=create_time,
        resource=decrypted,
        original_type=original_type if isinstance(original_type, str) else "",
        serial=serial,
    )


def aead_decrypt(api_v3_key: bytes, *, nonce: str, associated_data: str, ciphertext: str) -> bytes:
    """AEAD_AES_256_GCM as WeChat uses it (resource decryption, also ``/v3/certificates`` entries):
    ``ciphertext`` is Base64 of ciphertext‖16-byte tag; nonce and associated data are UTF-8 text.
    Any failure (not Base64, bad nonce length, wrong key, tampered data) → ``decryption_failed``."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        sealed = base64.b64decode(ciphertext.encode("ascii"), validate=True)
        return AESGCM(api_v3_key).decrypt(
            nonce.encode("utf-8"), sealed, associated_data.encode("utf-8") if associated_data else None
        )
    except (InvalidTag, ValueError, binascii.Error):  # UnicodeError is a ValueError
        raise NotificationRejected("decryption_failed", "resource does not decrypt with the APIv3 key") from None


def aead_encrypt(api_v3_key: bytes, *, nonce: str, associated_data: str, plaintext: bytes) -> str:
    """The inverse of :func:`aead_decrypt`: Base64 of ciphertext‖tag."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    sealed = AESGCM(api_v3_key).encrypt(
        nonce.encode("utf-8"), plaintext, associated_data.encode("utf-8") if associated_data else None
    )
    return base64.b64encode(sealed).decode("ascii")


def sign_message(body: bytes, *, private_key_pem: str, timestamp: int | str, nonce: str) -> str:
    """Base64 SHA256withRSA (PKCS#1 v1.5) over ``"{timestamp}\\n{nonce}\\n{body}\\n"``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signature = _load_private_key(private_key_pem).sign(
        _message(str(timestamp), nonce, body), padding.PKCS1v15(), hashes.SHA256()
    )
    return base64.b64encode(signature).decode("ascii")


def sign_notification(
    event: dict[str, Any],
    resource: dict[str, Any],
    *,
    private_key_pem: str,
    serial: str,
    api_v3_key: bytes,
    timestamp: int,
    nonce: str,
    resource_nonce: str | None = None,
    associated_data: str = "transaction",
    original_type: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """Build a callback exactly as WeChat Pay sends it: ``(headers, raw body)``.

    ``event`` gives ``id``, ``create_time``, ``event_type`` and optionally ``summary``;
    ``resource`` is the plaintext object (e.g. a ``transaction``) that is AES-GCM encrypted with
    ``api_v3_key`` under ``resource_nonce`` (12 random alphanumerics when omitted) and
    ``associated_data``. ``original_type`` defaults to ``associated_data`` (or ``transaction``).
    The body is compact UTF-8 JSON in WeChat's field order.
    """
    for name in ("id", "create_time", "event_type"):
        if not isinstance(event.get(name), str) or not event[name]:
            raise ValueError(f"event[{name!r}] must be a non-empty string")
    summary = event.get("summary", "")
    if not isinstance(summary, str):
        raise ValueError("event['summary'] must be a string")
    if not isinstance(api_v3_key, bytes) or len(api_v3_key) not in _AES_KEY_SIZES:
        raise ValueError("api_v3_key must be 16, 24 or 32 bytes")
    if resource_nonce is None:
        resource_nonce = "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(12))

    plaintext = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    payload = {
        "id": event["id"],
        "create_time": event["create_time"],
        "resource_type": RESOURCE_TYPE,
        "event_type": event["event_type"],
        "summary": summary,
        "resource": {
            "original_type": original_type if original_type is not None else (associated_data or "transaction"),
            "algorithm": ALGORITHM,
            "ciphertext": aead_encrypt(
                api_v3_key, nonce=resource_nonce, associated_data=associated_data, plaintext=plaintext
            ),
            "associated_data": associated_data,
            "nonce": resource_nonce,
        },
    }
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        H_TIMESTAMP: str(timestamp),
        H_NONCE: nonce,
        H_SIGNATURE: sign_message(body, private_key_pem=private_key_pem, timestamp=timestamp, nonce=nonce),
        H_SERIAL: serial,
        H_SIGNATURE_TYPE: SIGNATURE_TYPE,
    }
    return headers, body


def generate_sandbox_keys() -> tuple[str, str]:
    """A fresh RSA-2048 pair for tests and the local sandbox: ``(private PKCS#8 PEM, public SPKI PEM)``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    public_pem = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
    return private_pem, public_pem


# -- helpers ------------------------------------------------------------------------------------


def _header_fields(headers: object) -> dict[str, str]:
    """The Wechatpay-* headers by canonical name; ``missing_header`` if a required one is absent,
    empty, not a string, or given twice (in different cases) with different values."""
    if not isinstance(headers, Mapping):
        raise NotificationRejected("missing_header", "headers are not a mapping")
    wanted = {name.lower(): name for name in (*_REQUIRED_HEADERS, H_SIGNATURE_TYPE)}
    found: dict[str, str] = {}
    for key, value in headers.items():
        if not isinstance(key, str):
            continue
        name = wanted.get(key.lower())
        if name is None:
            continue
        if not isinstance(value, str) or not value:
            raise NotificationRejected("missing_header", f"{name} is empty or not text")
        if found.setdefault(name, value) != value:
            raise NotificationRejected("missing_header", f"{name} is given twice with different values")
    for name in _REQUIRED_HEADERS:
        if name not in found:
            raise NotificationRejected("missing_header", f"{name} is missing")
    return found


def _raw_bytes(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    raise NotificationRejected("malformed_body", "the body is not bytes")


def _message(timestamp: str, nonce: str, body: bytes) -> bytes:
    return timestamp.encode("utf-8") + b"\n" + nonce.encode("utf-8") + b"\n" + body + b"\n"


def _verify_signature(public_key: RSAPublicKey, timestamp: str, nonce: str, body: bytes, signature: str) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    if not _NONCE.fullmatch(nonce):
        raise NotificationRejected("bad_signature", "Wechatpay-Nonce is not printable ASCII")
    try:
        raw_signature = base64.b64decode(signature.encode("ascii"), validate=True)
        public_key.verify(raw_signature, _message(timestamp, nonce, body), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError, binascii.Error):  # UnicodeError is a ValueError
        raise NotificationRejected("bad_signature", "signature does not verify") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise NotificationRejected("malformed_body", f"{what} is not UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise NotificationRejected("malformed_body", f"{what} is not a JSON object")
    return value


def _required_str(event: dict[str, Any], name: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value:
        raise NotificationRejected("malformed_body", f"{name} is missing or not a string")
    return value


def _optional_str(event: dict[str, Any], name: str) -> str:
    value = event.get(name, "")
    if not isinstance(value, str):
        raise NotificationRejected("malformed_body", f"{name} is not a string")
    return value


@functools.lru_cache(maxsize=32)
def _load_public_key(pem: str) -> RSAPublicKey:
    """The RSA public key of a configured PEM (public key or certificate); cached per PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        data = pem.encode("ascii")
        key = x509.load_pem_x509_certificate(data).public_key() if b"CERTIFICATE" in data else load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError("a configured WeChat Pay public key is not a valid PEM") from exc
    if not isinstance(key, RSAPublicKey) or key.key_size < 2048:
        raise ValueError("a configured WeChat Pay public key is not an RSA key of at least 2048 bits")
    return key


@functools.lru_cache(maxsize=8)
def _load_private_key(pem: str) -> RSAPrivateKey:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(pem.encode("ascii"), password=None)
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("the signing key is not an RSA private key")
    return key
