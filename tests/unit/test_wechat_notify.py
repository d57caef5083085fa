"""WeChat Pay v3 callback verification (reference/payments.md §1.3, §1.10, §4.2, §6.5) and the
sandbox signer that produces the same wire format."""

from __future__ import annotations

import base64
import json
import random
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from chalice.app import CaseInsensitiveMapping

from chalicelib.payments import wechat_notify
from chalicelib.payments.wechat_notify import (
    REASONS,
    Notification,
    NotificationRejected,
    NotifyKeys,
    aead_decrypt,
    aead_encrypt,
    generate_sandbox_keys,
    sign_message,
    sign_notification,
    verify_notification,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# --- the official wechatpay-go vector: core/notify/notify_test.go, TestHandler_ParseNotifyRequest ----

VECTOR_NOW = 1624523846
VECTOR_API_V3_KEY = b"testMchAPIv3Key0"  # 16 bytes: AES-128-GCM in the vector; real keys are 32
VECTOR_SERIAL = "D7CE59D1F522D701"
VECTOR_CERT = """-----BEGIN CERTIFICATE-----
MIIDVzCCAj+gAwIBAgIJANfOWdH1ItcBMA0GCSqGSIb3DQEBCwUAMEIxCzAJBgNV
BAYTAlhYMRUwEwYDVQQHDAxEZWZhdWx0IENpdHkxHDAaBgNVBAoME0RlZmF1bHQg
Q29tcGFueSBMdGQwHhcNMjEwNDI3MDg1NTIzWhcNMzEwNDI1MDg1NTIzWjBCMQsw
CQYDVQQGEwJYWDEVMBMGA1UEBwwMRGVmYXVsdCBDaXR5MRwwGgYDVQQKDBNEZWZh
dWx0IENvbXBhbnkgTHRkMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA
2VCTd91fnUn73Xy9DLvt/V62TVxRTEEstVdeRaZ3B3leO0pldE806mXO4RwdHXag
HQ4vGeZN0yqm++rDsGK+U3AH7kejyD2pXshNP9Cq5YwbptiLGtjcquw4HNxJQUOm
DeJf2vg6byms9RUipiq4SzbJKqJFlUpbuIPDpSpWz10PYmyCNeDGUUK65E5h2B83
4uxl1zNLYQCrkdBzb8oUxwYeP5a2DNxmjL5lsJML7DGr5znsevnoqGRwTm9fxCGf
y8wus7hwKz6clt3Whmmda7UAdb1c08hEQFVRbF14AR73xbnd8N0obCWJPCbzMCtk
aSef4FdEEgEXJiw0VAJT8wIDAQABo1AwTjAdBgNVHQ4EFgQUT1c7nd/SUO76HSoZ
umNUJv1R5PwwHwYDVR0jBBgwFoAUT1c7nd/SUO76HSoZumNUJv1R5PwwDAYDVR0T
BAUwAwEB/zANBgkqhkiG9w0BAQsFAAOCAQEAfTjxKRQMzNB/U6ZoCUS+BSNfa2Oh
0plMN6ZuzwiVVZwg1jywvv5yv04koS7Pd4i9E4gt9ZBUQXlpq+A3oOCEEHNRR6b2
kyazGRM7s0OP5X21WrbpSmKmU6K7hkfx30yYs08LVs/Q8DIhvaj1FCFeJzUCzYn/
fHMq4tsbKO0dKAeydPM/nrUZBmaYQVKMVOORGLFjFKVO7JV6Kq/R86ouhjEPgJOe
2xulNBUcjicqtZlBdEh/PWCYP2SpGVDclKm8jeo175T3EVAkdKzzmfpxtMmnMlmq
cTJOU9TxuGvNASMtjj7pYIerTx+xgZDXEVBWFW9PjJ0TV06tCRsgSHItgg==
-----END CERTIFICATE-----
"""
VECTOR_HEADERS = {
    "Content-Type": "application/json",
    "Wechatpay-Nonce": "EcZ9Cmy4Xyx1i6RlJQzLcCyEqDa26NBz",
    "Wechatpay-Timestamp": "1624523846",
    "Wechatpay-Serial": "D7CE59D1F522D701",
    "Wechatpay-Signature": (
        "tJHIiIS9eB2hAYstmAmbbD3ZE5LiIm/Ug5tuL4fC0YOFRWIHV39UFIZXC0e9Wl6lBu6sKvkqDkzpqzBsVHyXF"
        "lbYZTOQrVdG4b6LfTnK4mikv9++ixJMd3vTf2yCqvBkh98zs3Ds5zsYQakzbcwhmw4fMJs4nPLws28H0UW9FjDR//rxELLwXvV1VEA1I"
        "BLX70xptjL8hrfUjEE8kkry6yNJTHZRU8CAc7qHli2Ng1V1qb9ARbK8A3ThmFmPQvRGrapI/jS2laKKgYUmfdEdkNO6B2Cke5e8VTxY4"
        "06ArAmQ90GAihDwIcb16TQMnzCMBoutnwZKNiKRACrFmtxw2Q=="
    ),
}
VECTOR_SUMMARY = "\u7b7e\u7ea6\u6210\u529f"  # "signing succeeded"
VECTOR_BODY = (
    "{"
    '"id":"3119dfba-e649-5eec-ab1e-3412bc4d2e17",'
    '"create_time":"2021-06-24T16:37:26+08:00",'
    '"resource_type":"encrypt-resource",'
    '"event_type":"PAYSCORE.USER_OPEN_SERVICE",'
    f'"summary":"{VECTOR_SUMMARY}",'
    '"resource":{'
    '"original_type":"payscore",'
    '"algorithm":"AEAD_AES_256_GCM",'
    '"ciphertext":"YDS3lKPaC4Y52Gf3uhft5qUBlIa8b428AWTtTauHQfQrRw+X1WpiuHIDy0vo1Vd6VEq67aVyqPdDYMkRVSDaZL3iZt'
    "tevRMOoPKMifozg6XPWjIZumks/GpT48lI4NizyeaqLBokNebthah3o1H76qSlO9NkDjp9bzmKLEYYH9TEklFUpsvPqOTOcgSLgh21YJXYR"
    '7dEBXFgRLiNIKRgO5JdXh1hccRUAlyVWxE54PXpnQ==",'
    '"associated_data":"payscore",'
    '"nonce":"Kj7QIyUiYx1q"}'
    "}"
).encode()
VECTOR_PLAINTEXT = (
    b'{"mchid":"1234567890","appid":"054aa7d7a2a54ab5898df65bd96f001c",'
    b'"create_time":"2020-06-30T12:12:00+08:00","out_contract_code":"21640bdbd08e473e828f3206a2741c6e"}'
)


def vector_public_key_pem() -> str:
    """The vector certificate's public key as an SPKI PEM (how a PUB_KEY_ID_ key is configured)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(VECTOR_CERT.encode("ascii"))
    return (
        cert.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


@pytest.fixture(params=["certificate", "public_key"])
def vector_keys(request: pytest.FixtureRequest) -> NotifyKeys:
    pem = VECTOR_CERT if request.param == "certificate" else vector_public_key_pem()
    return NotifyKeys(api_v3_key=VECTOR_API_V3_KEY, public_keys={VECTOR_SERIAL: pem})


def test_the_official_vector_verifies_and_decrypts_with_the_frozen_clock(vector_keys: NotifyKeys) -> None:
    notification = verify_notification(VECTOR_HEADERS, VECTOR_BODY, vector_keys, now=VECTOR_NOW)

    assert notification == Notification(
        id="3119dfba-e649-5eec-ab1e-3412bc4d2e17",
        event_type="PAYSCORE.USER_OPEN_SERVICE",
        resource_type="encrypt-resource",
        summary=VECTOR_SUMMARY,
        create_time="2021-06-24T16:37:26+08:00",
        resource=json.loads(VECTOR_PLAINTEXT),
        original_type="payscore",
        serial=VECTOR_SERIAL,
    )
    resource = json.loads(VECTOR_BODY)["resource"]
    assert (
        aead_decrypt(
            VECTOR_API_V3_KEY,
            nonce=resource["nonce"],
            associated_data=resource["associated_data"],
            ciphertext=resource["ciphertext"],
        )
        == VECTOR_PLAINTEXT
    )


def test_no_single_byte_change_anywhere_in_the_official_body_verifies(vector_keys: NotifyKeys) -> None:
    # GIVEN the official body; WHEN any one byte of it is changed THEN the signature fails
    for index in range(len(VECTOR_BODY)):
        tampered = bytearray(VECTOR_BODY)
        tampered[index] ^= 0x01
        with pytest.raises(NotificationRejected) as rejected:
            verify_notification(VECTOR_HEADERS, bytes(tampered), vector_keys, now=VECTOR_NOW)
        assert rejected.value.reason == "bad_signature", index


@pytest.mark.parametrize(
    "reserialise",
    [
        lambda body: json.dumps(json.loads(body), ensure_ascii=False).encode("utf-8"),  # spaces
        lambda body: json.dumps(json.loads(body), ensure_ascii=True, separators=(",", ":")).encode(),  # \\u escapes
        lambda body: json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode(),  # key order
        lambda body: body + b"\n",
        lambda body: body.decode("utf-8").encode("utf-16"),
    ],
)
def test_the_same_json_serialised_differently_does_not_verify(
    vector_keys: NotifyKeys, reserialise: Callable[[bytes], bytes]
) -> None:
    body = reserialise(VECTOR_BODY)
    assert body != VECTOR_BODY

    with pytest.raises(NotificationRejected) as rejected:
        verify_notification(VECTOR_HEADERS, body, vector_keys, now=VECTOR_NOW)
    assert rejected.value.reason == "bad_signature"


def test_the_official_vector_is_stale_301_seconds_later(vector_keys: NotifyKeys) -> None:
    verify_notification(VECTOR_HEADERS, VECTOR_BODY, vector_keys, now=VECTOR_NOW + 300)

    with pytest.raises(NotificationRejected) as rejected:
        verify_notification(VECTOR_HEADERS, VECTOR_BODY, vector_keys, now=VECTOR_NOW + 301)
    assert rejected.value.reason == "stale_timestamp"


@pytest.mark.parametrize("clock", [float("nan"), float("inf"), float("-inf")])
def test_a_broken_clock_never_passes_the_window(vector_keys: NotifyKeys, clock: float) -> None:
    with pytest.raises(NotificationRejected) as rejected:
        verify_notification(VECTOR_HEADERS, VECTOR_BODY, vector_keys, now=clock)
    assert rejected.value.reason == "stale_timestamp"


def test_the_signer_reproduces_the_official_body_byte_for_byte() -> None:
    # GIVEN the vector's event, plaintext, key and GCM nonce (GCM is deterministic for those)
    private_pem, _ = generate_sandbox_keys()
    event = json.loads(VECTOR_BODY)

    # WHEN the sandbox signer builds the callback
    headers, body = sign_notification(
        {key: event[key] for key in ("id", "create_time", "event_type", "summary")},
        json.loads(VECTOR_PLAINTEXT),
        private_key_pem=private_pem,
        serial=VECTOR_SERIAL,
        api_v3_key=VECTOR_API_V3_KEY,
        timestamp=VECTOR_NOW,
        nonce=VECTOR_HEADERS["Wechatpay-Nonce"],
        resource_nonce="Kj7QIyUiYx1q",
        associated_data="payscore",
    )

    # THEN the body is exactly what WeChat Pay sent, so our wire format is WeChat's
    assert body == VECTOR_BODY
    assert headers["Wechatpay-Timestamp"] == VECTOR_HEADERS["Wechatpay-Timestamp"]
    assert headers["Wechatpay-Signature-Type"] == "WECHATPAY2-SHA256-RSA2048"


def test_the_official_aes_gcm_vector_decrypts() -> None:
    # wechatpay-go utils/aes_test.go
    plaintext = aead_decrypt(
        b"testAPIv3Key0000",
        nonce="wCq51qZv4Yfg",
        associated_data="Dl56FrqWQJF1t9LtC3vEUsniZKvbqdR8",
        ciphertext="FsdXzxryWfKwvLJKf8LG/ToRPTRh8RN9wROC",
    )
    assert plaintext == b"Hello World"


# --- generated keys: the sandbox provider's setup ---------------------------------------------------

NOW = 1_700_000_000
SERIAL = "PUB_KEY_ID_0000000000000000SANDBOX000001"
OLD_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"  # a platform certificate serial during a switch
API_V3_KEY = b"0123456789abcdef0123456789abcdef"
EVENT = {
    "id": "EV-2018022511223320873",
    "create_time": "2023-11-15T06:13:20+08:00",
    "event_type": "TRANSACTION.SUCCESS",
    "summary": "\u652f\u4ed8\u6210\u529f",
}
TRANSACTION = {
    "mchid": "1900000001",
    "appid": "wx0000000000000001",
    "out_trade_no": "PAY-000001",
    "transaction_id": "4200000000000000000000000001",
    "trade_type": "JSAPI",
    "trade_state": "SUCCESS",
    "success_time": "2023-11-15T06:13:19+08:00",
    "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
    "amount": {"total": 20000, "payer_total": 20000, "currency": "CNY", "payer_currency": "CNY"},
}


@dataclass(frozen=True)
class Sandbox:
    private_pem: str
    old_private_pem: str
    stranger_private_pem: str
    keys: NotifyKeys

    def sign(self, **overrides: Any) -> tuple[dict[str, str], bytes]:
        arguments: dict[str, Any] = {
            "private_key_pem": self.private_pem,
            "serial": SERIAL,
            "api_v3_key": API_V3_KEY,
            "timestamp": NOW,
            "nonce": "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
        }
        event = overrides.pop("event", EVENT)
        resource = overrides.pop("resource", TRANSACTION)
        arguments.update(overrides)
        return sign_notification(event, resource, **arguments)

    def sign_raw(self, body: bytes, *, timestamp: int | str = NOW, nonce: str = "n0nce") -> dict[str, str]:
        """Headers with a valid signature over an arbitrary body (to reach the post-signature checks)."""
        return {
            "Wechatpay-Timestamp": str(timestamp),
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": sign_message(
                body, private_key_pem=self.private_pem, timestamp=timestamp, nonce=nonce
            ),
            "Wechatpay-Serial": SERIAL,
        }

    def encrypted_body(self, plaintext: bytes, **resource_overrides: Any) -> bytes:
        resource: dict[str, Any] = {
            "original_type": "transaction",
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": aead_encrypt(
                API_V3_KEY, nonce="abcdefghijkl", associated_data="transaction", plaintext=plaintext
            ),
            "associated_data": "transaction",
            "nonce": "abcdefghijkl",
        }
        resource.update(resource_overrides)
        resource = {key: value for key, value in resource.items() if value is not DROP}
        event = {**EVENT, "resource_type": "encrypt-resource", "resource": resource}
        return json.dumps({key: value for key, value in event.items() if value is not DROP}).encode()


DROP = object()


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    private_pem, public_pem = generate_sandbox_keys()
    old_private_pem, old_public_pem = generate_sandbox_keys()
    stranger_private_pem, _ = generate_sandbox_keys()
    keys = NotifyKeys(api_v3_key=API_V3_KEY, public_keys={SERIAL: public_pem, OLD_SERIAL: old_public_pem})
    return Sandbox(private_pem, old_private_pem, stranger_private_pem, keys)


def reason_of(headers: Mapping[str, Any], body: Any, keys: NotifyKeys, now: float = NOW) -> str:
    with pytest.raises(NotificationRejected) as rejected:
        verify_notification(headers, body, keys, now=now)
    return rejected.value.reason


def test_generated_keys_are_an_rsa_2048_pair() -> None:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

    private_pem, public_pem = generate_sandbox_keys()
    private_key = load_pem_private_key(private_pem.encode(), password=None)
    assert isinstance(private_key, RSAPrivateKey)
    assert private_key.key_size == 2048
    assert load_pem_public_key(public_pem.encode()).public_numbers() == private_key.public_key().public_numbers()
    assert generate_sandbox_keys()[1] != public_pem


def test_a_signed_notification_round_trips(sandbox: Sandbox) -> None:
    headers, body = sandbox.sign()

    notification = verify_notification(headers, body, sandbox.keys, now=NOW)

    assert notification == Notification(
        id=EVENT["id"],
        event_type="TRANSACTION.SUCCESS",
        resource_type="encrypt-resource",
        summary=EVENT["summary"],
        create_time=EVENT["create_time"],
        resource=TRANSACTION,
        original_type="transaction",
        serial=SERIAL,
    )


def test_the_signed_callback_has_the_wechat_wire_format(sandbox: Sandbox) -> None:
    headers, body = sandbox.sign()

    assert set(headers) == {
        "Content-Type",
        "Wechatpay-Timestamp",
        "Wechatpay-Nonce",
        "Wechatpay-Signature",
        "Wechatpay-Serial",
        "Wechatpay-Signature-Type",
    }
    assert headers["Wechatpay-Serial"] == SERIAL
    assert len(base64.b64decode(headers["Wechatpay-Signature"], validate=True)) == 256  # RSA-2048
    payload = json.loads(body)
    assert list(payload) == ["id", "create_time", "resource_type", "event_type", "summary", "resource"]
    assert payload["resource_type"] == "encrypt-resource"
    assert list(payload["resource"]) == ["original_type", "algorithm", "ciphertext", "associated_data", "nonce"]
    assert payload["resource"]["algorithm"] == "AEAD_AES_256_GCM"
    assert payload["resource"]["associated_data"] == "transaction"
    assert len(payload["resource"]["nonce"]) == 12
    assert "out_trade_no" not in body.decode("utf-8")  # the resource travels encrypted
    # a fresh GCM nonce each time
    assert sandbox.sign()[1] != body


def test_the_signer_refuses_an_event_without_an_id(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="id"):
        sandbox.sign(event={**EVENT, "id": ""})


def test_an_old_platform_serial_is_accepted_while_it_is_configured(sandbox: Sandbox) -> None:
    headers, body = sandbox.sign(private_key_pem=sandbox.old_private_pem, serial=OLD_SERIAL)

    assert verify_notification(headers, body, sandbox.keys, now=NOW).serial == OLD_SERIAL


def test_a_known_serial_with_another_keys_signature_is_rejected(sandbox: Sandbox) -> None:
    # signed by the old key but claiming the new serial, or by a stranger claiming either
    assert reason_of(*sandbox.sign(private_key_pem=sandbox.old_private_pem), sandbox.keys) == "bad_signature"
    assert reason_of(*sandbox.sign(private_key_pem=sandbox.stranger_private_pem), sandbox.keys) == "bad_signature"
    stranger = sandbox.sign(private_key_pem=sandbox.stranger_private_pem, serial=OLD_SERIAL)
    assert reason_of(*stranger, sandbox.keys) == "bad_signature"


@pytest.mark.parametrize("offset", [-300, -299, 0, 299, 300])
def test_a_timestamp_within_300_seconds_is_accepted(sandbox: Sandbox, offset: int) -> None:
    headers, body = sandbox.sign(timestamp=NOW + offset)

    assert verify_notification(headers, body, sandbox.keys, now=NOW).id == EVENT["id"]


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 86_400])
def test_a_timestamp_more_than_300_seconds_away_is_stale(sandbox: Sandbox, offset: int) -> None:
    # GIVEN a correctly signed callback 301 s old (a replay) or 301 s in the future
    headers, body = sandbox.sign(timestamp=NOW + offset)

    assert reason_of(headers, body, sandbox.keys) == "stale_timestamp"


def test_the_window_is_measured_against_a_fractional_now(sandbox: Sandbox) -> None:
    headers, body = sandbox.sign()
    verify_notification(headers, body, sandbox.keys, now=NOW + 300.0)
    assert reason_of(headers, body, sandbox.keys, now=NOW + 300.5) == "stale_timestamp"


@pytest.mark.parametrize(
    "timestamp",
    [
        "abc",
        "1.7e9",
        f"{NOW}.0",
        f" {NOW}",
        f"{NOW} ",
        f"+{NOW}",
        "-1",
        "\uff11\uff17\uff10\uff10",  # full-width digits, which int() would accept
        "9" * 40,
    ],
)
def test_a_timestamp_that_is_not_plain_digits_is_rejected(sandbox: Sandbox, timestamp: str) -> None:
    _, body = sandbox.sign()
    headers = sandbox.sign_raw(body, timestamp=timestamp)

    assert reason_of(headers, body, sandbox.keys) == "stale_timestamp"


def test_an_unknown_serial_is_rejected_without_any_network_io(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a callback correctly signed by a key whose serial we never configured,
    headers, body = sandbox.sign(private_key_pem=sandbox.stranger_private_pem, serial="PUB_KEY_ID_ATTACKER")
    # AND any attempt to open a connection or resolve a name is recorded and refused
    attempts: list[str] = []

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            attempts.append(name)
            raise OSError(f"network disabled in this test ({name})")

        return refused

    monkeypatch.setattr(socket, "socket", refuse("socket"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))

    # WHEN it is verified THEN it is rejected as unknown, and nothing tried the network
    assert reason_of(headers, body, sandbox.keys) == "unknown_serial"
    assert attempts == []


@pytest.mark.parametrize("serial", [SERIAL.lower(), f" {SERIAL}", f"{SERIAL} ", SERIAL[:-1], "PUB_KEY_ID_"])
def test_the_serial_must_match_exactly(sandbox: Sandbox, serial: str) -> None:
    headers, body = sandbox.sign(serial=serial)

    assert reason_of(headers, body, sandbox.keys) == "unknown_serial"


@pytest.mark.parametrize(
    "signature",
    [
        "WECHATPAY/SIGNTEST/" + base64.b64encode(b"x" * 256).decode(),
        "WECHATPAY/SIGNTEST/",
        "WECHATPAY/SIGNTEST/not base64 at all",
    ],
)
def test_a_signtest_probe_is_rejected(sandbox: Sandbox, signature: str) -> None:
    headers, body = sandbox.sign()

    assert reason_of({**headers, "Wechatpay-Signature": signature}, body, sandbox.keys) == "signature_probe"


def test_a_signtest_probe_is_never_accepted_even_around_a_valid_signature(sandbox: Sandbox) -> None:
    headers, body = sandbox.sign()
    probe = {**headers, "Wechatpay-Signature": "WECHATPAY/SIGNTEST/" + headers["Wechatpay-Signature"]}

    assert reason_of(probe, body, sandbox.keys) == "signature_probe"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # every check failing at once: the first in the documented order wins
        ({"Wechatpay-Nonce": None, "Wechatpay-Signature": "WECHATPAY/SIGNTEST/x"}, "missing_header"),
        ({"Wechatpay-Signature": "WECHATPAY/SIGNTEST/x", "Wechatpay-Serial": "nope"}, "signature_probe"),
        ({"Wechatpay-Serial": "nope", "Wechatpay-Timestamp": "1"}, "unknown_serial"),
        ({"Wechatpay-Timestamp": "1", "Wechatpay-Signature-Type": "SM2"}, "stale_timestamp"),
        ({"Wechatpay-Signature-Type": "SM2", "Wechatpay-Signature": "AAAA"}, "unsupported_algorithm"),
        ({"Wechatpay-Signature": "AAAA"}, "bad_signature"),
    ],
)
def test_checks_run_in_the_documented_order(sandbox: Sandbox, changes: dict[str, str | None], expected: str) -> None:
    headers, _ = sandbox.sign()
    for name, value in changes.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value

    # the body is garbage too: nothing may look at it before the headers and signature pass
    assert reason_of(headers, b"\xff not json", sandbox.keys) == expected


@pytest.mark.parametrize("name", ["Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial"])
def test_each_required_header_is_required(sandbox: Sandbox, name: str) -> None:
    headers, body = sandbox.sign()

    without = {key: value for key, value in headers.items() if key != name}
    assert reason_of(without, body, sandbox.keys) == "missing_header"
    assert reason_of({**headers, name: ""}, body, sandbox.keys) == "missing_header"
    assert reason_of({**headers, name: None}, body, sandbox.keys) == "missing_header"


def test_the_signature_type_header_is_optional(sandbox: Sandbox) -> None:
    headers, body = sandbox.sign()
    del headers["Wechatpay-Signature-Type"]

    assert verify_notification(headers, body, sandbox.keys, now=NOW).id == EVENT["id"]


@pytest.mark.parametrize("signature_type", ["WECHATPAY2-SM2-WITH-SM3", "wechatpay2-sha256-rsa2048"])
def test_another_signature_type_is_unsupported(sandbox: Sandbox, signature_type: str) -> None:
    headers, body = sandbox.sign()

    assert reason_of({**headers, "Wechatpay-Signature-Type": signature_type}, body, sandbox.keys) == (
        "unsupported_algorithm"
    )


@pytest.mark.parametrize("spell", [str.lower, str.upper, lambda name: name.replace("Wechatpay", "WeChatPay")])
def test_header_names_are_case_insensitive(sandbox: Sandbox, spell: Callable[[str], str]) -> None:
    headers, body = sandbox.sign()

    respelled = {spell(name): value for name, value in headers.items()}
    assert verify_notification(respelled, body, sandbox.keys, now=NOW).id == EVENT["id"]


def test_chalice_request_headers_are_accepted(sandbox: Sandbox) -> None:
    headers, body = sandbox.sign()

    assert verify_notification(CaseInsensitiveMapping(headers), body, sandbox.keys, now=NOW).id == EVENT["id"]


def test_a_header_given_twice_with_different_values_is_rejected(sandbox: Sandbox) -> None:
    headers, body = sandbox.sign()
    # the same value twice is harmless
    verify_notification({**headers, "wechatpay-nonce": headers["Wechatpay-Nonce"]}, body, sandbox.keys, now=NOW)

    assert reason_of({**headers, "wechatpay-timestamp": str(NOW + 1)}, body, sandbox.keys) == "missing_header"


@pytest.mark.parametrize("headers", [None, [], "Wechatpay-Serial: x", 42])
def test_headers_that_are_not_a_mapping_are_rejected(sandbox: Sandbox, headers: Any) -> None:
    assert reason_of(headers, b"{}", sandbox.keys) == "missing_header"


@pytest.mark.parametrize(
    "signature",
    ["", "not base64!", base64.b64encode(b"\x00" * 256).decode(), base64.b64encode(b"short").decode(), "\u00e9"],
)
def test_a_signature_that_is_not_one_is_rejected(sandbox: Sandbox, signature: str) -> None:
    headers, body = sandbox.sign()

    expected = "missing_header" if signature == "" else "bad_signature"
    assert reason_of({**headers, "Wechatpay-Signature": signature}, body, sandbox.keys) == expected


@pytest.mark.parametrize("nonce", ["a\nb", "two words", "\u00e9t\u00e9", "x" * 129])
def test_a_nonce_that_could_shift_bytes_into_the_message_is_rejected(sandbox: Sandbox, nonce: str) -> None:
    # even when it is signed as sent: only printable ASCII without spaces is a WeChat nonce
    _, body = sandbox.sign()
    headers = sandbox.sign_raw(body, nonce=nonce)

    assert reason_of(headers, body, sandbox.keys) == "bad_signature"


def test_a_nonce_with_a_newline_cannot_move_bytes_from_the_body() -> None:
    # GIVEN a genuine signature over "ts\nN\n" + "X\n{...}" + "\n"
    private_pem, public_pem = generate_sandbox_keys()
    keys = NotifyKeys(api_v3_key=API_V3_KEY, public_keys={SERIAL: public_pem})
    body = b'X\n{"id":"EV-1"}'
    signature = sign_message(body, private_key_pem=private_pem, timestamp=NOW, nonce="N")
    # WHEN the same message is re-split as nonce "N\nX" and body '{"id":"EV-1"}'
    headers = {
        "Wechatpay-Timestamp": str(NOW),
        "Wechatpay-Nonce": "N\nX",
        "Wechatpay-Signature": signature,
        "Wechatpay-Serial": SERIAL,
    }
    # THEN it is refused
    assert reason_of(headers, b'{"id":"EV-1"}', keys) == "bad_signature"


@pytest.mark.parametrize(
    "body", [b"not json", b"", b"[]", b'"text"', b"null", b"\xff\xfe{}", b'{"id": ', b"[" * 50_000]
)
def test_a_signed_body_that_is_not_a_json_object_is_malformed(sandbox: Sandbox, body: bytes) -> None:
    assert reason_of(sandbox.sign_raw(body), body, sandbox.keys) == "malformed_body"


@pytest.mark.parametrize("resource", [DROP, None, "text", [], 42])
def test_a_body_without_a_resource_object_is_malformed(sandbox: Sandbox, resource: Any) -> None:
    body = json.dumps(
        {**EVENT, "resource_type": "encrypt-resource"} | ({} if resource is DROP else {"resource": resource})
    )
    raw = body.encode()

    assert reason_of(sandbox.sign_raw(raw), raw, sandbox.keys) == "malformed_body"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"algorithm": "AEAD_AES_128_GCM"}, "unsupported_algorithm"),
        ({"algorithm": "aead_aes_256_gcm"}, "unsupported_algorithm"),
        ({"algorithm": ""}, "unsupported_algorithm"),
        ({"algorithm": DROP}, "malformed_body"),
        ({"algorithm": 256}, "malformed_body"),
        ({"ciphertext": DROP}, "malformed_body"),
        ({"ciphertext": 12345}, "malformed_body"),
        ({"nonce": DROP}, "malformed_body"),
        ({"nonce": ["abcdefghijkl"]}, "malformed_body"),
        ({"associated_data": {"a": 1}}, "malformed_body"),
        ({"ciphertext": "not*base64!"}, "decryption_failed"),
        ({"ciphertext": "QUJD"}, "decryption_failed"),  # valid Base64, shorter than a GCM tag
        ({"ciphertext": "\u00e9\u00e9\u00e9\u00e9"}, "decryption_failed"),
        ({"nonce": "abcdefghijkm"}, "decryption_failed"),  # another GCM nonce
        ({"nonce": "short"}, "decryption_failed"),  # too short for AES-GCM
        ({"nonce": "\ud800" * 12}, "decryption_failed"),  # a lone surrogate from a \\u escape
        ({"associated_data": "refund"}, "decryption_failed"),
        ({"associated_data": ""}, "decryption_failed"),
        ({"associated_data": None}, "decryption_failed"),
    ],
)
def test_each_resource_fault_is_named(sandbox: Sandbox, overrides: dict[str, Any], expected: str) -> None:
    # GIVEN a correctly signed body whose resource has one fault
    body = sandbox.encrypted_body(json.dumps(TRANSACTION).encode(), **overrides)
    resource = json.loads(body)["resource"]
    assert all(resource.get(key) == value for key, value in overrides.items() if value is not DROP)

    assert reason_of(sandbox.sign_raw(body), body, sandbox.keys) == expected


def test_the_unchanged_helper_body_is_accepted(sandbox: Sandbox) -> None:
    # the control for the table above
    body = sandbox.encrypted_body(json.dumps(TRANSACTION).encode())

    assert verify_notification(sandbox.sign_raw(body), body, sandbox.keys, now=NOW).resource == TRANSACTION


@pytest.mark.parametrize("flip", [0, 10, -17, -1])
def test_a_tampered_ciphertext_fails_decryption(sandbox: Sandbox, flip: int) -> None:
    # GIVEN a ciphertext changed by one bit (ciphertext or tag) and a body re-signed around it
    _, body = sandbox.sign()
    payload = json.loads(body)
    sealed = bytearray(base64.b64decode(payload["resource"]["ciphertext"]))
    sealed[flip] ^= 0x01
    payload["resource"]["ciphertext"] = base64.b64encode(sealed).decode()
    tampered = json.dumps(payload).encode()

    assert reason_of(sandbox.sign_raw(tampered), tampered, sandbox.keys) == "decryption_failed"


def test_a_truncated_ciphertext_fails_decryption(sandbox: Sandbox) -> None:
    _, body = sandbox.sign()
    payload = json.loads(body)
    payload["resource"]["ciphertext"] = base64.b64encode(
        base64.b64decode(payload["resource"]["ciphertext"])[:-1]
    ).decode()
    tampered = json.dumps(payload).encode()

    assert reason_of(sandbox.sign_raw(tampered), tampered, sandbox.keys) == "decryption_failed"


def test_a_wrong_api_v3_key_fails_decryption(sandbox: Sandbox) -> None:
    headers, body = sandbox.sign()
    wrong = NotifyKeys(api_v3_key=b"x" * 32, public_keys=sandbox.keys.public_keys)

    assert reason_of(headers, body, wrong) == "decryption_failed"


@pytest.mark.parametrize("associated_data", ["", "refund"])
def test_the_associated_data_may_be_empty_or_absent(sandbox: Sandbox, associated_data: str) -> None:
    headers, body = sandbox.sign(associated_data=associated_data)
    assert verify_notification(headers, body, sandbox.keys, now=NOW).resource == TRANSACTION

    if not associated_data:
        plaintext = json.dumps(TRANSACTION).encode()
        sealed = aead_encrypt(API_V3_KEY, nonce="abcdefghijkl", associated_data="", plaintext=plaintext)
        for absent in ({"associated_data": DROP}, {"associated_data": None}):
            raw = sandbox.encrypted_body(plaintext, ciphertext=sealed, **absent)
            assert verify_notification(sandbox.sign_raw(raw), raw, sandbox.keys, now=NOW).resource == TRANSACTION


@pytest.mark.parametrize("plaintext", [b"not json", b"[1, 2]", b"\xff\xfe", b"", b'"SUCCESS"', b"[" * 50_000])
def test_a_decrypted_resource_that_is_not_a_json_object_is_malformed(sandbox: Sandbox, plaintext: bytes) -> None:
    body = sandbox.encrypted_body(plaintext)

    assert reason_of(sandbox.sign_raw(body), body, sandbox.keys) == "malformed_body"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("id", DROP),
        ("id", ""),
        ("id", 12345),
        ("event_type", DROP),
        ("event_type", None),
        ("create_time", DROP),
        ("create_time", 1700000000),
        ("resource_type", DROP),
        ("summary", ["a"]),
    ],
)
def test_event_fields_of_the_wrong_type_are_malformed(sandbox: Sandbox, name: str, value: Any) -> None:
    # even with an undecryptable resource: the event's shape is checked before decryption
    payload = json.loads(sandbox.encrypted_body(json.dumps(TRANSACTION).encode(), ciphertext="QUJD"))
    if value is DROP:
        del payload[name]
    else:
        payload[name] = value
    body = json.dumps(payload).encode()

    assert reason_of(sandbox.sign_raw(body), body, sandbox.keys) == "malformed_body"


def test_a_missing_summary_reads_as_empty(sandbox: Sandbox) -> None:
    payload = json.loads(sandbox.encrypted_body(json.dumps(TRANSACTION).encode()))
    del payload["summary"]
    body = json.dumps(payload).encode()

    assert verify_notification(sandbox.sign_raw(body), body, sandbox.keys, now=NOW).summary == ""


@pytest.mark.parametrize("body", ["a str body", None, 42])
def test_a_body_that_is_not_bytes_is_malformed(sandbox: Sandbox, body: Any) -> None:
    headers, _ = sandbox.sign()

    assert reason_of(headers, body, sandbox.keys) == "malformed_body"


def test_a_bytearray_or_memoryview_body_is_accepted(sandbox: Sandbox) -> None:
    headers, body = sandbox.sign()

    assert verify_notification(headers, bytearray(body), sandbox.keys, now=NOW).id == EVENT["id"]
    assert verify_notification(headers, memoryview(body), sandbox.keys, now=NOW).id == EVENT["id"]


# --- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("api_v3_key", [b"", b"k" * 31, b"k" * 33, "k" * 32, bytearray(b"k" * 32)])
def test_an_api_v3_key_of_the_wrong_size_or_type_is_a_configuration_error(api_v3_key: Any) -> None:
    with pytest.raises(ValueError, match="api_v3_key"):
        NotifyKeys(api_v3_key=api_v3_key, public_keys={SERIAL: VECTOR_CERT})


@pytest.mark.parametrize("public_keys", [{}, {"": VECTOR_CERT}, {SERIAL: "not a pem"}, {SERIAL: b"-----BEGIN"}, None])
def test_an_empty_or_malformed_allow_list_is_a_configuration_error(public_keys: Any) -> None:
    with pytest.raises(ValueError, match="public_keys"):
        NotifyKeys(api_v3_key=API_V3_KEY, public_keys=public_keys)


def test_the_keys_do_not_show_the_api_key_and_cannot_be_changed() -> None:
    source = {SERIAL: VECTOR_CERT}
    keys = NotifyKeys(api_v3_key=API_V3_KEY, public_keys=source)

    assert API_V3_KEY.decode() not in repr(keys)
    source["PUB_KEY_ID_LATER"] = VECTOR_CERT
    assert list(keys.public_keys) == [SERIAL]
    with pytest.raises(TypeError):
        keys.public_keys["PUB_KEY_ID_X"] = VECTOR_CERT  # type: ignore[index]


def test_a_configured_key_that_is_not_rsa_is_a_configuration_error_not_a_rejection(sandbox: Sandbox) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    headers, body = sandbox.sign()
    keys = NotifyKeys(api_v3_key=API_V3_KEY, public_keys={SERIAL: ec_pem})

    with pytest.raises(ValueError, match="RSA") as raised:
        verify_notification(headers, body, keys, now=NOW)
    assert not isinstance(raised.value, NotificationRejected)


def test_a_rejection_reason_outside_the_list_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown rejection reason"):
        NotificationRejected("nope")  # type: ignore[arg-type]
    assert NotificationRejected("bad_signature", "x").reason == "bad_signature"
    assert str(NotificationRejected("bad_signature", "x")) == "bad_signature: x"


def test_the_module_imports_no_chalice_and_defers_cryptography() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import chalicelib.payments.wechat_notify; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('chalice', 'cryptography')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- fuzz: nothing but NotificationRejected, whatever arrives --------------------------------------

HEADER_NAMES = [
    "Wechatpay-Timestamp",
    "Wechatpay-Nonce",
    "Wechatpay-Signature",
    "Wechatpay-Serial",
    "Wechatpay-Signature-Type",
]


def random_text(rng: random.Random, size: int = 12) -> str:
    alphabet = "aZ09+/=_-. \n\t/\u00e9\u4e2d\ud800\x00WECHATPAY/SIGNTEST/"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, size)))


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["null", "bool", "int", "float", "str", "list", "dict"] if depth < 3 else ["null", "int", "str"]
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 2**63, rng.randint(-(10**6), 10**6)])
    if kind == "float":
        return rng.choice([0.5, -1e308, float("inf"), float("nan")])
    if kind == "str":
        return random_text(rng)
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {random_text(rng, 6): random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def fuzz_case(rng: random.Random, sandbox: Sandbox) -> tuple[Any, Any]:
    """One (headers, body): unsigned noise, signed structural damage, or byte-level mutation."""
    kind = rng.randrange(6)
    headers, body = sandbox.sign(timestamp=NOW + rng.randint(-400, 400))
    if kind == 0:  # noise headers (random case, random types) and noise body
        noise: dict[Any, Any] = {}
        for name in rng.sample(HEADER_NAMES, rng.randint(0, len(HEADER_NAMES))):
            spelled = rng.choice([name, name.lower(), name.upper()])
            noise[spelled] = rng.choice([random_text(rng, 40), headers.get(name, ""), None, 7, b"bytes", ["x"]])
        if rng.random() < 0.3:
            noise[rng.choice([1, None, b"k"])] = "odd key"
        return noise, rng.randbytes(rng.randint(0, 300))
    if kind == 1:  # a valid body with random bytes flipped, not re-signed
        mutated = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        return headers, bytes(mutated)
    if kind == 2:  # a valid body with bytes flipped, then correctly signed
        mutated = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        return sandbox.sign_raw(bytes(mutated)), bytes(mutated)
    if kind == 3:  # correctly signed JSON with a random value at a random place
        payload = json.loads(body)
        target = payload if rng.random() < 0.4 else payload["resource"]
        target[rng.choice([*target, "extra"])] = random_json(rng)
        if rng.random() < 0.2:
            payload = random_json(rng)
        raw = json.dumps(payload, ensure_ascii=rng.random() < 0.7).encode("utf-8", "surrogatepass")
        return sandbox.sign_raw(raw), raw
    if kind == 4:  # a correctly signed and encrypted random plaintext
        plaintext = rng.choice(
            [
                json.dumps(random_json(rng)).encode(),
                rng.randbytes(rng.randint(0, 64)),
                json.dumps({random_text(rng, 5): random_json(rng)}).encode(),
            ]
        )
        raw = sandbox.encrypted_body(plaintext)
        return sandbox.sign_raw(raw), raw
    # kind 5: valid headers with one header value replaced by noise
    name = rng.choice(HEADER_NAMES)
    value = rng.choice(
        [random_text(rng, 30), str(rng.randint(0, 2 * NOW)), "", "WECHATPAY/SIGNTEST/" + random_text(rng)]
    )
    return {**headers, name: value}, body


def outcome_of(headers: Any, body: Any, keys: NotifyKeys, case: int) -> str:
    """ "accepted" or the rejection reason; any other exception fails the test with the case."""
    try:
        notification = verify_notification(headers, body, keys, now=NOW)
    except NotificationRejected as rejected:
        return rejected.reason
    except Exception as exc:
        pytest.fail(f"case {case}: {type(exc).__name__}: {exc!r} for headers={headers!r} body={body!r}")
    assert isinstance(notification.resource, dict)
    return "accepted"


def test_fuzz_only_notification_rejected_escapes(sandbox: Sandbox) -> None:
    rng = random.Random(20240611)
    outcomes: dict[str, int] = {}

    for case in range(400):
        headers, body = fuzz_case(rng, sandbox)
        outcome = outcome_of(headers, body, sandbox.keys, case)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    # the fuzz reached every stage, so it proves something about each (wrong_merchant is the
    # adapters' business check on a verified notification, never the verifier's)
    assert set(outcomes) == {*REASONS - {"wrong_merchant"}, "accepted"}, outcomes


def test_fuzz_flipped_bytes_never_verify_without_a_new_signature(sandbox: Sandbox) -> None:
    rng = random.Random(7)
    headers, body = sandbox.sign()

    for _ in range(200):
        mutated = bytearray(body)
        index = rng.randrange(len(mutated))
        mutated[index] = (mutated[index] + rng.randint(1, 255)) % 256
        assert reason_of(headers, bytes(mutated), sandbox.keys) == "bad_signature"


def test_module_constants_match_the_reference() -> None:
    assert wechat_notify.TIMESTAMP_TOLERANCE_S == 300
    assert wechat_notify.SIGNTEST_PREFIX == "WECHATPAY/SIGNTEST/"
    expected = {
        "missing_header",
        "signature_probe",
        "unknown_serial",
        "stale_timestamp",
        "bad_signature",
        "malformed_body",
        "unsupported_algorithm",
        "decryption_failed",
        "wrong_merchant",
    }
    assert expected == REASONS
