"""Forgers for ``test_callback_forgeries.py``: each channel's world (``test_channel_callbacks``) taught every forgery.

Why a separate module: the forgery families are one list (:data:`FAMILIES`) and each channel maps
every family to the nearest thing its wire format has (:data:`PLAN`), or says why it has none.
The live channels reuse the worlds of ``test_channel_callbacks.py`` (adapter built from offline
credentials, SDK routed by ``responses`` to the double); the ``sandbox`` channel is the real
``chalicelib.payments.sandbox.SandboxProvider`` on DynamoDB Local, its notifications captured by
the ``deliver`` callable instead of being POSTed.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chalicelib.clock import utc_now
from chalicelib.payments import sandbox
from chalicelib.payments.money import fen_to_yuan, yuan_to_fen
from chalicelib.payments.sandbox import PayInstruction, SandboxProvider
from chalicelib.payments.wechat_notify import (
    H_SERIAL,
    H_SIGNATURE,
    SIGNTEST_PREFIX,
    aead_decrypt,
    sign_notification,
)
from devstack.doubles import unionpay as unionpay_double
from tests.integration.test_channel_callbacks import (
    AlipayWorld,
    Note,
    UnionPayWorld,
    WeChatWorld,
    World,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import responses

FAMILIES = (
    "bad_signature",
    "wrong_key",
    "altered_body",
    "stale_timestamp",
    "unknown_serial",
    "probe",
    "mismatched_amount",
    "mismatched_app",
    "mismatched_merchant",
)
"""The forgery families of issue 9, item 4."""


@dataclass(frozen=True)
class Forgery:
    """How one channel forges one family: the ``forge_<how>`` method and the status our route answers."""

    how: str
    status: int


@dataclass(frozen=True)
class NotApplicable:
    """A family the channel's wire format has no counterpart for, and why."""

    reason: str


def _garbled(signature: str) -> str:
    """A signature of the right shape (Base64, same length) whose bytes are not the signer's."""
    raw = bytearray(base64.b64decode(signature))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode("ascii")


def _resigned_wechat(genuine: Note, *, private_pem: str, serial: str, api_v3_key: bytes, **changes: Any) -> Note:
    """A WeChat-v3 notification whose decrypted resource gets ``changes``, encrypted and signed anew (a new id)."""
    payload = json.loads(genuine.body)
    sealed = payload["resource"]
    resource = json.loads(
        aead_decrypt(
            api_v3_key,
            nonce=sealed["nonce"],
            associated_data=sealed["associated_data"],
            ciphertext=sealed["ciphertext"],
        )
    )
    resource.update(changes)
    event = {key: payload[key] for key in ("create_time", "event_type", "summary")}
    headers, body = sign_notification(
        {**event, "id": str(uuid.uuid4())},
        resource,
        private_key_pem=private_pem,
        serial=serial,
        api_v3_key=api_v3_key,
        timestamp=int(time.time()),
        nonce=uuid.uuid4().hex,
        associated_data=sealed["associated_data"],
    )
    return Note(headers, body)


def _wechat_amount(genuine: Note, decrypt: Callable[[Note], dict[str, Any]]) -> dict[str, Any]:
    amount = dict(decrypt(genuine)["amount"])
    amount["total"] = int(amount["total"]) - 1
    if "payer_total" in amount:
        amount["payer_total"] = int(amount["payer_total"]) - 1
    return amount


# --- the sandbox channel: the real SandboxProvider ----------------------------------------------------


class SandboxWorld(World):
    """The ``sandbox`` channel (``chalicelib.payments.sandbox``): its provider installed, its notifications kept."""

    name = "sandbox"
    ack = (204, "")
    payment_marker = b'"id":"'

    def __init__(self) -> None:
        self.credentials = None
        self.notes: list[Note] = []
        self._lock = threading.Lock()
        self.double = None
        self.adapter = SandboxProvider(deliver=self.capture)
        self.refunds_sent: list[str] = []

    def capture(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        with self._lock:
            self.notes.append(Note(dict(headers), bytes(body)))
        return 200, "captured"

    def install(self, rsps: responses.RequestsMock) -> None:
        """Nothing to route: the sandbox keeps its side in DynamoDB Local."""

    def pay(self, client_params: Mapping[str, Any], order_id: str | None = None) -> Note:  # type: ignore[override]
        raise NotImplementedError("use pay_order: the sandbox is paid by order number")

    def pay_order(self, order_id: str, instruction: PayInstruction | None = None) -> Note:
        """The sandbox payer pays (or the same notification again); the notification it sent."""
        before = len(self.notes)
        sandbox.pay(order_id, instruction or PayInstruction(), utc_now(), deliver=self.capture)
        [note] = self.notes[before:]
        return note

    def refund_calls(self, refund_no: str) -> int:
        return 1 if self._refund_of(refund_no) is not None else 0

    @staticmethod
    def _refund_of(refund_no: str) -> Any:
        from chalicelib.payments import refunds

        refund = refunds.get(refund_no)
        if refund is None:
            return None
        return sandbox._get_refund(refund.payment_order_id, refund_no)

    def refund_note(self, refund_no: str) -> Note:
        """The REFUND.SUCCESS the sandbox sends ~0.2 s after taking the refund (waited for)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for note in list(self.notes):
                found = self.adapter.parse_callback(note.headers, note.body, utc_now())
                if found is not None and found.kind == "refund_succeeded" and found.merchant_ref == refund_no:
                    return note
            time.sleep(0.05)
        raise AssertionError(f"the sandbox sent no refund notification for {refund_no}")

    # forgeries: the sandbox's own ``tamper`` instructions where it has them
    def forge_sandbox(self, order_id: str, tamper: str) -> Note:
        return self.pay_order(order_id, PayInstruction(tamper=tamper))  # type: ignore[arg-type]

    def _resigned(self, genuine: Note, **changes: Any) -> Note:
        return _resigned_wechat(
            genuine,
            private_pem=sandbox._private_pem(),
            serial=sandbox.SANDBOX_SERIAL,
            api_v3_key=sandbox.SANDBOX_API_V3_KEY,
            **changes,
        )

    def decrypt(self, note: Note) -> dict[str, Any]:
        sealed = json.loads(note.body)["resource"]
        return json.loads(
            aead_decrypt(
                sandbox.SANDBOX_API_V3_KEY,
                nonce=sealed["nonce"],
                associated_data=sealed["associated_data"],
                ciphertext=sealed["ciphertext"],
            )
        )

    def forge_bad_signature(self, genuine: Note) -> Note:
        return genuine.with_headers({H_SIGNATURE: _garbled(genuine.headers[H_SIGNATURE])})

    def forge_other_merchant(self, genuine: Note) -> Note:
        return self._resigned(genuine, mchid="1900000999")

    def forge_other_appid(self, genuine: Note) -> Note:
        return self._resigned(genuine, appid="wx00000000000000ff")


# --- the live channels: the worlds of test_channel_callbacks, taught the rest ------------------------


class WeChatForger(WeChatWorld):
    def __init__(self) -> None:
        super().__init__()
        self.refund_numbers: list[str] = []

    def route(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        """``WeChatWorld.route``, keeping the number of each refund asked for (the double keeps no bodies)."""
        if request.method == "POST" and (request.url or "").endswith("/v3/refund/domestic/refunds"):
            body = request.body.decode("utf-8") if isinstance(request.body, bytes) else request.body or "{}"
            self.refund_numbers.append(json.loads(body)["out_refund_no"])
        return super().route(request)

    def refund_calls(self, refund_no: str) -> int:
        return self.refund_numbers.count(refund_no)

    def decrypt(self, note: Note) -> dict[str, Any]:
        sealed = json.loads(note.body)["resource"]
        key = self.credentials.double.apiv3_key.encode("utf-8")
        return json.loads(
            aead_decrypt(
                key, nonce=sealed["nonce"], associated_data=sealed["associated_data"], ciphertext=sealed["ciphertext"]
            )
        )

    def forge_bad_signature(self, genuine: Note) -> Note:
        return genuine.with_headers({H_SIGNATURE: _garbled(genuine.headers[H_SIGNATURE])})

    def forge_unknown_serial(self, genuine: Note) -> Note:
        return genuine.with_headers({H_SERIAL: "PUB_KEY_ID_0114232134912000000000000099"})

    def forge_probe(self, genuine: Note) -> Note:
        return genuine.with_headers({H_SIGNATURE: SIGNTEST_PREFIX + genuine.headers[H_SIGNATURE]})

    def forge_amount_signed(self, genuine: Note) -> Note:
        """Signed by WeChat Pay, for one fen less than our order."""
        return self._resigned(genuine, amount=_wechat_amount(genuine, self.decrypt))


class AlipayForger(AlipayWorld):
    def forge_bad_signature(self, genuine: Note) -> Note:
        return genuine.with_form({**genuine.form(), "sign": _garbled(genuine.form()["sign"])})

    def forge_downgraded(self, genuine: Note) -> Note:
        """``sign_type=RSA`` (SHA1): a probe for a verifier that follows the sender's choice of algorithm."""
        return genuine.with_form({**genuine.form(), "sign_type": "RSA"})

    def forge_amount_signed(self, genuine: Note) -> Note:
        """Signed by Alipay, for one fen less than our order."""
        amounts = ("total_amount", "receipt_amount", "invoice_amount", "buyer_pay_amount")
        fields = genuine.form()
        lower = fen_to_yuan(yuan_to_fen(fields["total_amount"]) - 1)
        return self.signed({**fields, **{name: lower for name in amounts if name in fields}})


class UnionPayForger(UnionPayWorld):
    def _issued_by_unionpay_middle(self, **validity: Any) -> tuple[str, str]:
        """A key and a certificate issued by UnionPay's middle CA with UnionPay's CN (``validity``: the dates)."""
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from cryptography.x509 import load_pem_x509_certificate

        keys = self.credentials.double
        middle_key = load_pem_private_key(keys.middle_key.encode("ascii"), password=None)
        middle = load_pem_x509_certificate(keys.middle_cert.encode("ascii"))
        key = unionpay_double.new_key()
        cert = unionpay_double.issue_cert(
            key,
            unionpay_double.SIGNER_CN,
            issuer=(middle_key, middle),  # type: ignore[arg-type]
            **validity,
        )
        return unionpay_double.key_pem(key), unionpay_double.cert_pem(cert)

    def _unsigned_fields(self, genuine: Note) -> dict[str, str]:
        return {key: value for key, value in genuine.form().items() if key not in ("signature", "signPubKeyCert")}

    def forge_bad_signature(self, genuine: Note) -> Note:
        return genuine.with_form({**genuine.form(), "signature": _garbled(genuine.form()["signature"])})

    def forge_expired_certificate(self, genuine: Note) -> Note:
        """Signed with a UnionPay certificate whose validity ended yesterday (UnionPay's only time bound)."""
        from datetime import UTC, datetime, timedelta

        now = datetime.now(UTC)
        key, cert = self._issued_by_unionpay_middle(
            not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
        )
        return genuine.with_form(unionpay_double.sign_with(self._unsigned_fields(genuine), key, cert))

    def forge_unknown_certificate(self, genuine: Note) -> Note:
        """Signed with a self-issued certificate that names UnionPay (not from the configured chain)."""
        key = unionpay_double.new_key()
        cert = unionpay_double.issue_cert(key, unionpay_double.SIGNER_CN)
        return genuine.with_form(
            unionpay_double.sign_with(
                self._unsigned_fields(genuine), unionpay_double.key_pem(key), unionpay_double.cert_pem(cert)
            )
        )

    def forge_downgraded(self, genuine: Note) -> Note:
        """``version=5.0.0`` (certId-based, no certificate chain): a probe for an older, weaker rule."""
        return genuine.with_form(self.double.sign({**self._unsigned_fields(genuine), "version": "5.0.0"}))

    def forge_amount_signed(self, genuine: Note) -> Note:
        """Signed by UnionPay, for one fen less than our order."""
        fields = self._unsigned_fields(genuine)
        lower = str(int(fields["txnAmt"]) - 1)
        return genuine.with_form(self.double.sign({**fields, "txnAmt": lower, "settleAmt": lower}))


FORGERS: dict[str, type[World]] = {
    "sandbox": SandboxWorld,
    "wechat": WeChatForger,
    "alipay": AlipayForger,
    "unionpay": UnionPayForger,
}

PLAN: dict[str, dict[str, Forgery | NotApplicable]] = {
    "sandbox": {
        "bad_signature": Forgery("bad_signature", 401),
        "wrong_key": Forgery("sandbox:signature", 401),
        "altered_body": Forgery("sandbox:body", 401),
        "stale_timestamp": Forgery("sandbox:timestamp", 401),
        "unknown_serial": Forgery("sandbox:serial", 401),
        "probe": Forgery("sandbox:signtest", 401),
        "mismatched_amount": Forgery("sandbox:amount", 400),
        "mismatched_app": Forgery("other_appid", 400),
        "mismatched_merchant": Forgery("other_merchant", 400),
    },
    "wechat": {
        "bad_signature": Forgery("bad_signature", 401),
        "wrong_key": Forgery("other_key", 401),
        "altered_body": Forgery("one_byte", 401),
        "stale_timestamp": Forgery("stale_timestamp", 401),
        "unknown_serial": Forgery("unknown_serial", 401),
        "probe": Forgery("probe", 401),
        "mismatched_amount": Forgery("amount_signed", 400),
        "mismatched_app": Forgery("other_appid", 400),
        "mismatched_merchant": Forgery("other_merchant", 400),
    },
    "alipay": {
        "bad_signature": Forgery("bad_signature", 401),
        "wrong_key": Forgery("other_key", 401),
        "altered_body": Forgery("one_byte", 401),
        "stale_timestamp": NotApplicable(
            "Alipay signs no delivery time: notify_time is a signed field Alipay keeps across its ~25 h of "
            "retries, so an old one is genuine; a replay is stopped by notify_id and the order's state "
            "(the replay test), and an altered notify_time breaks the signature (altered_body)"
        ),
        "unknown_serial": NotApplicable(
            "the verifier pins the one configured Alipay certificate and reads no key or serial from the "
            "notification; a key that is not that certificate's is the wrong_key family"
        ),
        "probe": Forgery("downgraded", 400),
        "mismatched_amount": Forgery("amount_signed", 400),
        "mismatched_app": Forgery("other_app_id", 400),
        "mismatched_merchant": Forgery("other_seller", 400),
    },
    "unionpay": {
        "bad_signature": Forgery("bad_signature", 401),
        "wrong_key": Forgery("other_key", 401),
        "altered_body": Forgery("one_byte", 401),
        "stale_timestamp": Forgery("expired_certificate", 401),
        "unknown_serial": Forgery("unknown_certificate", 401),
        "probe": Forgery("downgraded", 400),
        "mismatched_amount": Forgery("amount_signed", 400),
        "mismatched_app": NotApplicable("UnionPay's back notification names no app: merId is its only party field"),
        "mismatched_merchant": Forgery("other_merchant", 400),
    },
}
"""Channel → family → how it is forged and the status our route answers (or why it does not apply)."""
