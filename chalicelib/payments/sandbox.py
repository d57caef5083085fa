"""The sandbox payment provider: a local stand-in for WeChat Pay that speaks the real v3 wire format.

TEST-ONLY KEYS. ``sandbox_platform_key.pem`` (next to this file) is an RSA-2048 private key
generated once with ``wechat_notify.generate_sandbox_keys()`` and committed on purpose; the
APIv3 key below is a constant in the source. Both are public, so anyone can sign a
"sandbox" callback with them. Production can never use them:

* ``SandboxProvider()`` and :func:`pay` refuse to run unless ``Settings.sandbox_payments``,
  which ``chalicelib.config`` refuses to switch on for the prod stage (a ConfigError at
  start-up, not a silent fallback);
* the serial :data:`SANDBOX_SERIAL` and its public key live only in :func:`notify_keys` of
  this module, which only ``SandboxProvider.parse_callback`` uses; a live WeChat adapter
  builds its allow-list from the merchant's own WeChat Pay public key (never from this
  module), so a callback signed with this key names a serial production does not know and
  is rejected ``unknown_serial`` before anything is parsed.

What it does (reference/payments.md §1.1–§1.6, §6.4): it keeps its own side of each payment
and refund (``chalicelib.models.sandbox``: what WeChat Pay would hold), answers
``create_payment`` with JSAPI-style client parameters, and answers queries, closes and
refunds as WeChat does. :func:`pay` (behind the local-only route
``POST /v1/sandbox/orders/{order_id}/pay``) plays the payer and WeChat: it moves the order
and POSTs a signed, AES-256-GCM-encrypted notification (``Wechatpay-*`` headers, signature
over ``timestamp\\nnonce\\nbody\\n``) to ``Settings.sandbox_callback_url``, where the same
``verify_notification`` that checks WeChat's callbacks checks it. :class:`PayInstruction`
asks it to duplicate, delay, drop or tamper with that notification, to pay an order that
was already closed, and how to treat the order's later refunds.

Background work (delayed deliveries, refund results) runs in daemon threads: right for
``chalice local`` and the tests; on Lambda a thread runs only while the container is warm.

Example
-------
>>> provider = SandboxProvider(deliver=lambda headers, body: (204, ""))  # doctest: +SKIP
>>> provider.create_payment(request).client_params["package"]  # doctest: +SKIP
'prepay_id=sbx_prepay_…'
>>> pay("PAY-1", PayInstruction(deliveries=2), now)["deliveries"]  # doctest: +SKIP
[{'status': 204, 'body': ''}, {'status': 204, 'body': ''}]
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import secrets
import string
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec
from pynamodb.exceptions import PutError, UpdateError

from chalicelib.clock import SHANGHAI, iso, utc_now
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.models.ledger import LedgerTable
from chalicelib.models.sandbox import PAYMENT_SK, SandboxPayment, SandboxRefund, refund_sk, sandbox_pk
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy
from chalicelib.observability import logger
from chalicelib.payments.provider import (
    HttpReply,
    PaymentIntent,
    PaymentStatus,
    ProviderError,
    RefundStatus,
)
from chalicelib.payments.wechat_events import payment_event
from chalicelib.payments.wechat_notify import (
    H_SERIAL,
    H_SIGNATURE,
    SIGNTEST_PREFIX,
    NotifyKeys,
    generate_sandbox_keys,
    sign_notification,
    verify_notification,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from chalicelib.payments.provider import (
        Channel,
        PaymentRequest,
        PaymentState,
        ProviderEvent,
        RefundRequest,
        RefundState,
    )

__all__ = [
    "SANDBOX_API_V3_KEY",
    "SANDBOX_MCHID",
    "SANDBOX_SERIAL",
    "UNKNOWN_SERIAL",
    "Deliver",
    "PayInstruction",
    "SandboxProvider",
    "deliver_http",
    "finish_refund",
    "notify_keys",
    "pay",
]

Deliver = Callable[[dict[str, str], bytes], tuple[int, str]]
"""Send one notification ``(headers, raw body)``; answer ``(HTTP status, body text)``, status 0 when unreachable."""

SANDBOX_SERIAL: Final = "PUB_KEY_ID_SANDBOX000000000000000001"
"""The ``Wechatpay-Serial`` of the sandbox's platform key (public-key mode style, never a real one)."""
SANDBOX_API_V3_KEY: Final = b"sandbox-apiv3-key-test-only-0001"
"""The sandbox's 32-byte APIv3 key. TEST-ONLY: it is public."""
SANDBOX_MCHID: Final = "1900000001"
UNKNOWN_SERIAL: Final = "PUB_KEY_ID_UNKNOWN000000000000000099"
"""The serial a ``tamper="serial"`` notification names: in no allow-list."""
PRIVATE_KEY_PATH: Final = Path(__file__).with_name("sandbox_platform_key.pem")
DELIVERY_TIMEOUT_S: Final = 5.0
REFUND_RESULT_DELAY_S: Final = 0.2
STALE_BY_S: Final = 600

_APP_IDS: Final = {"jsapi_mp": "wx-sandbox-mp", "jsapi_oa": "wx-sandbox-oa"}
_APP_ID_OTHER: Final = "wx-sandbox-app"
_PAYER_OPENID: Final = "o-sandbox-payer"
_ALPHANUMERIC: Final = string.ascii_letters + string.digits
_CONDITION_FAILED: Final = "ConditionalCheckFailedException"
_PAYMENT_STATES: Final[dict[str, PaymentState]] = {"NOTPAY": "pending", "SUCCESS": "succeeded", "CLOSED": "closed"}
_REFUND_STATES: Final[dict[str, RefundState]] = {
    "PROCESSING": "processing",
    "SUCCESS": "succeeded",
    "ABNORMAL": "failed",
}
# WeChat's summaries and descriptions, as \u escapes (支付成功, 订单已关闭, 退款成功, 退款异常, 失败, 支付用户零钱)
_PAID_ZH: Final = "\u652f\u4ed8\u6210\u529f"
_CLOSED_ZH: Final = "\u8ba2\u5355\u5df2\u5173\u95ed"
_REFUNDED_ZH: Final = "\u9000\u6b3e\u6210\u529f"
_REFUND_ABNORMAL_ZH: Final = "\u9000\u6b3e\u5f02\u5e38"
_FAIL_ZH: Final = "\u5931\u8d25"
_CHANGE_ACCOUNT_ZH: Final = "\u652f\u4ed8\u7528\u6237\u96f6\u94b1"


# -- keys ------------------------------------------------------------------------------------------


@functools.cache
def _private_pem() -> str:
    return PRIVATE_KEY_PATH.read_text(encoding="ascii")


@functools.cache
def _public_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(_private_pem().encode("ascii"), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


@functools.cache
def notify_keys() -> NotifyKeys:
    """What verifies the sandbox's callbacks: its serial → public key, and its APIv3 key. TEST-ONLY."""
    return NotifyKeys(api_v3_key=SANDBOX_API_V3_KEY, public_keys={SANDBOX_SERIAL: _public_pem()})


def _rsa_sign(message: bytes) -> str:
    """Base64 SHA256withRSA (PKCS#1 v1.5) of ``message`` with the sandbox key (as ``paySign`` is made)."""
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(_private_pem().encode("ascii"), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):  # pragma: no cover - the committed file is RSA
        raise RuntimeError("the sandbox platform key is not an RSA key")
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def _require_enabled() -> None:
    if not get_settings().sandbox_payments:
        raise RuntimeError("the sandbox payment provider is off (SANDBOX_PAYMENTS); it never runs on prod")


# -- delivery --------------------------------------------------------------------------------------


def deliver_http(headers: dict[str, str], body: bytes) -> tuple[int, str]:
    """POST one notification to ``Settings.sandbox_callback_url`` (5 s timeout).

    Answers ``(status, body text)``; an HTTP error status is an answer too. A connection
    failure (refused, timeout, reset) answers ``(0, "<error text>")``: it never raises.
    """
    request = urllib.request.Request(get_settings().sandbox_callback_url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=DELIVERY_TIMEOUT_S) as response:
            return response.status, response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException, ValueError) as error:  # URLError and timeouts are OSErrors
        return 0, str(error) or type(error).__name__


def _guarded(deliver: Deliver, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    """``deliver``, with an exception turned into ``(0, text)`` (a background thread must not die loudly)."""
    try:
        return deliver(headers, body)
    except Exception as error:
        return 0, f"{type(error).__name__}: {error}"


def _in_background(delay_s: float, work: Callable[[], None], what: str) -> None:
    """Run ``work`` in a daemon thread after ``delay_s`` seconds; its failure is logged, never raised."""

    def run() -> None:
        threading.Event().wait(delay_s)
        try:
            work()
        except Exception:
            logger.exception("sandbox background work failed", extra={"work": what})

    threading.Thread(target=run, name=f"sandbox-{what}", daemon=True).start()


def _send_copies(
    make: Callable[[], tuple[dict[str, str], bytes]], count: int, concurrent: bool, deliver: Deliver
) -> list[tuple[int, str]]:
    """Send ``count`` copies, one after another or (``concurrent``) all at once from threads."""
    if not concurrent or count == 1:
        return [deliver(*make()) for _ in range(count)]
    messages = [make() for _ in range(count)]  # signed first, so the sends really start together
    results: list[tuple[int, str]] = [(0, "not sent")] * count
    barrier = threading.Barrier(count)

    def send(index: int) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):  # then send anyway, only less simultaneously
            barrier.wait(timeout=DELIVERY_TIMEOUT_S)
        results[index] = _guarded(deliver, *messages[index])

    threads = [threading.Thread(target=send, args=(index,), daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# -- helpers ---------------------------------------------------------------------------------------


def _wechat_time(instant: datetime) -> str:
    """WeChat's time format: RFC 3339 in Beijing time, to the second (``2026-11-25T16:00:00+08:00``)."""
    return instant.astimezone(SHANGHAI).isoformat(timespec="seconds")


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def _nonce(length: int = 32) -> str:
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))


def _get_payment(out_trade_no: str) -> SandboxPayment | None:
    try:
        return SandboxPayment.get(sandbox_pk(out_trade_no), PAYMENT_SK, consistent_read=True)
    except SandboxPayment.DoesNotExist:
        return None


def _get_refund(out_trade_no: str, out_refund_no: str) -> SandboxRefund | None:
    try:
        return SandboxRefund.get(sandbox_pk(out_trade_no), refund_sk(out_refund_no), consistent_read=True)
    except SandboxRefund.DoesNotExist:
        return None


def _condition_failed(error: PutError | UpdateError) -> bool:
    return error.cause_response_code == _CONDITION_FAILED


def _not_found(out_trade_no: str) -> ProviderError:
    return ProviderError("order_not_found", f"no sandbox order {out_trade_no}", retryable=False)


def _refund_status(refund: SandboxRefund) -> RefundStatus:
    return RefundStatus(
        out_refund_no=refund.out_refund_no,
        state=_REFUND_STATES[refund.state],
        refund_id=refund.refund_id,
        amount_fen=int(refund.amount_fen),
    )


def _payment_notification(payment: SandboxPayment) -> tuple[dict[str, str], dict[str, Any]]:
    """The event fields and the decrypted ``transaction`` resource of a payment's terminal notification."""
    resource: dict[str, Any] = {
        "mchid": SANDBOX_MCHID,
        "appid": payment.appid,
        "out_trade_no": payment.out_trade_no,
    }
    total = int(payment.amount_fen)
    if payment.state == "SUCCESS":
        resource.update(
            transaction_id=payment.transaction_id,
            trade_type="JSAPI",
            trade_state="SUCCESS",
            trade_state_desc=_PAID_ZH,
            bank_type="OTHERS",
            attach="",
            success_time=payment.success_time,
            payer={"openid": payment.payer_openid or _PAYER_OPENID},
            amount={"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
        )
        event_type, summary = "TRANSACTION.SUCCESS", _PAID_ZH
    else:
        resource.update(
            trade_type="JSAPI",
            trade_state="CLOSED",
            trade_state_desc=_CLOSED_ZH,
            attach="",
            payer={"openid": payment.payer_openid or _PAYER_OPENID},
            amount={"total": total, "currency": "CNY"},
        )
        event_type, summary = "TRANSACTION.CLOSED", _CLOSED_ZH
    event = {
        "id": payment.event_id or "",
        "create_time": payment.event_time or "",
        "event_type": event_type,
        "summary": summary,
    }
    return event, resource


def _refund_notification(refund: SandboxRefund) -> tuple[dict[str, str], dict[str, Any]]:
    """The event fields and the decrypted ``refund`` resource of a refund's result notification."""
    total, amount = int(refund.total_fen), int(refund.amount_fen)
    resource: dict[str, Any] = {
        "mchid": SANDBOX_MCHID,
        "transaction_id": refund.transaction_id,
        "out_trade_no": refund.out_trade_no,
        "refund_id": refund.refund_id,
        "out_refund_no": refund.out_refund_no,
        "refund_status": refund.state,
        "user_received_account": _CHANGE_ACCOUNT_ZH,
        "amount": {"total": total, "refund": amount, "payer_total": total, "payer_refund": amount},
    }
    if refund.success_time:
        resource["success_time"] = refund.success_time
    success = refund.state == "SUCCESS"
    event = {
        "id": refund.event_id or "",
        "create_time": refund.success_time or _wechat_time(utc_now()),
        "event_type": "REFUND.SUCCESS" if success else "REFUND.ABNORMAL",
        "summary": _REFUNDED_ZH if success else _REFUND_ABNORMAL_ZH,
    }
    return event, resource


def _sign(
    event: dict[str, str],
    resource: dict[str, Any],
    *,
    at: float,
    associated_data: str,
    private_pem: str | None = None,
) -> tuple[dict[str, str], bytes]:
    return sign_notification(
        event,
        resource,
        private_key_pem=private_pem or _private_pem(),
        serial=SANDBOX_SERIAL,
        api_v3_key=SANDBOX_API_V3_KEY,
        timestamp=int(at),
        nonce=_nonce(),
        associated_data=associated_data,
    )


# -- the provider ----------------------------------------------------------------------------------


class SandboxProvider:
    """WeChat Pay v3, played locally: the ``Provider`` of channel ``sandbox``.

    ``deliver`` sends the notifications the provider makes on its own (refund results);
    by default :func:`deliver_http` to ``Settings.sandbox_callback_url``. Refuses to be
    built unless ``Settings.sandbox_payments`` (never on prod).
    """

    channel: Channel = "sandbox"

    def __init__(self, deliver: Deliver | None = None) -> None:
        _require_enabled()
        self._deliver: Deliver = deliver or deliver_http

    # payments

    def create_payment(self, request: PaymentRequest) -> PaymentIntent:
        """Open the order (NOTPAY) and answer JSAPI ``getBrandWCPayRequest`` parameters.

        The same ``out_trade_no`` again with the same amount answers the same prepay id;
        with another amount ``out_trade_no_used``; once paid ``order_paid``, once closed
        ``order_closed`` (WeChat's ORDERPAID / ORDERCLOSED). None of them is retryable.
        """
        now = utc_now()
        payment = SandboxPayment(
            sandbox_pk(request.out_trade_no),
            PAYMENT_SK,
            out_trade_no=request.out_trade_no,
            amount_fen=request.amount_fen,
            description=request.description,
            scene=request.scene,
            appid=_APP_IDS.get(request.scene, _APP_ID_OTHER),
            payer_openid=request.payer_openid,
            prepay_id=_new_id("sbx_prepay_"),
            expires_at=iso(request.expires_at),
            state="NOTPAY",
            refund_behaviour="succeed",
            refunded_fen=0,
            created_at=iso(now),
            updated_at=iso(now),
        )
        try:
            payment.save(condition=SandboxPayment.pk.does_not_exist())
        except PutError as error:
            if not _condition_failed(error):
                raise
            existing = _get_payment(request.out_trade_no)
            if existing is None:  # pragma: no cover - payments are never deleted
                raise
            if int(existing.amount_fen) != request.amount_fen:
                raise ProviderError(
                    "out_trade_no_used", f"{request.out_trade_no} was opened with another amount", retryable=False
                ) from None
            if existing.state == "SUCCESS":
                raise ProviderError("order_paid", f"{request.out_trade_no} is already paid", retryable=False) from None
            if existing.state == "CLOSED":
                raise ProviderError("order_closed", f"{request.out_trade_no} is closed", retryable=False) from None
            payment = existing
        return self._intent(payment, now)

    @staticmethod
    def _intent(payment: SandboxPayment, now: datetime) -> PaymentIntent:
        app_id, timestamp, nonce = payment.appid, str(int(now.timestamp())), _nonce()
        package = f"prepay_id={payment.prepay_id}"
        pay_sign = _rsa_sign(f"{app_id}\n{timestamp}\n{nonce}\n{package}\n".encode())
        return PaymentIntent(
            provider_ref=payment.prepay_id,
            client_params={
                "appId": app_id,
                "timeStamp": timestamp,
                "nonceStr": nonce,
                "package": package,
                "signType": "RSA",
                "paySign": pay_sign,
            },
        )

    def query_payment(self, out_trade_no: str) -> PaymentStatus:
        payment = _get_payment(out_trade_no)
        if payment is None:
            raise _not_found(out_trade_no)
        return PaymentStatus(
            out_trade_no=out_trade_no,
            state=_PAYMENT_STATES[payment.state],
            transaction_id=payment.transaction_id,
            amount_fen=int(payment.amount_fen),
            currency="CNY",
            paid_at=payment.success_time,
        )

    def close_payment(self, out_trade_no: str) -> None:
        """NOTPAY → CLOSED; closing a closed order does nothing; a paid one is ``order_paid``. Sends nothing."""
        now = utc_now()
        payment = SandboxPayment(sandbox_pk(out_trade_no), PAYMENT_SK)
        try:
            payment.update(
                actions=[
                    SandboxPayment.state.set("CLOSED"),
                    SandboxPayment.closed_time.set(_wechat_time(now)),
                    SandboxPayment.updated_at.set(iso(now)),
                ],
                condition=SandboxPayment.state == "NOTPAY",
            )
        except UpdateError as error:
            if not _condition_failed(error):
                raise
            existing = _get_payment(out_trade_no)
            if existing is None:
                raise _not_found(out_trade_no) from None
            if existing.state == "SUCCESS":
                raise ProviderError(
                    "order_paid", f"{out_trade_no} is paid: refund it instead", retryable=False
                ) from None

    # refunds

    def refund(self, request: RefundRequest) -> RefundStatus:
        """Refund by the original path, once per ``out_refund_no``; the result follows as WeChat's would.

        What happens is the payment's ``refund_behaviour`` (set through :func:`pay`):
        ``succeed`` → PROCESSING now, SUCCESS and a REFUND.SUCCESS notification ~0.2 s later;
        ``processing`` → PROCESSING for good; ``fail`` → nothing recorded, ``SYSTEM_ERROR``
        (retryable: call again with the same number); ``abnormal`` → ABNORMAL now (answered
        ``failed``) and a REFUND.ABNORMAL notification ~0.2 s later. An ABNORMAL refund keeps
        its share of the order's refundable amount (WeChat settles it by the abnormal-refund
        API, not by a new refund).
        """
        existing = _get_refund(request.out_trade_no, request.out_refund_no)
        if existing is not None:
            return self._same_refund(existing, request)
        payment = _get_payment(request.out_trade_no)
        if payment is None:
            raise _not_found(request.out_trade_no)
        if payment.state != "SUCCESS":
            raise ProviderError("order_not_paid", f"{request.out_trade_no} is {payment.state}", retryable=False)
        total = int(payment.amount_fen)
        if request.total_fen != total or not 0 < request.amount_fen <= total:
            raise ProviderError(
                "invalid_amount",
                f"refund {request.amount_fen} of {request.total_fen} does not fit an order of {total}",
                retryable=False,
            )
        if request.amount_fen > total - int(payment.refunded_fen):
            raise self._not_enough(request, payment)
        behaviour = payment.refund_behaviour
        if behaviour == "fail":
            raise ProviderError("SYSTEM_ERROR", "sandbox refund outage: retry with the same number", retryable=True)

        now = utc_now()
        abnormal = behaviour == "abnormal"
        refund = SandboxRefund(
            sandbox_pk(request.out_trade_no),
            refund_sk(request.out_refund_no),
            out_trade_no=request.out_trade_no,
            out_refund_no=request.out_refund_no,
            refund_id=_new_id("sbx_rf_"),
            transaction_id=payment.transaction_id or "",
            amount_fen=request.amount_fen,
            total_fen=request.total_fen,
            reason=request.reason,
            state="ABNORMAL" if abnormal else "PROCESSING",
            event_id=_new_id("sbx_ev_") if abnormal else None,
            created_at=iso(now),
            updated_at=iso(now),
        )
        batch = Batch()
        batch.put("refund", refund, condition=SandboxRefund.sk.does_not_exist())
        batch.update(
            "payment",
            payment,
            actions=[
                SandboxPayment.refunded_fen.add(request.amount_fen),
                SandboxPayment.updated_at.set(iso(now)),
            ],
            condition=(SandboxPayment.state == "SUCCESS") & (SandboxPayment.refunded_fen <= total - request.amount_fen),
        )
        try:
            batch.commit(LedgerTable._get_connection().connection)
        except TransactionCancelledError as cancelled:
            if "refund" in cancelled.failed:  # the same number, at the same moment
                raced = _get_refund(request.out_trade_no, request.out_refund_no)
                if raced is not None:
                    return self._same_refund(raced, request)
            if "payment" in cancelled.failed:
                raise self._not_enough(request, _get_payment(request.out_trade_no) or payment) from None
            raise ProviderError(
                "FREQUENCY_LIMITED", "a concurrent refund of this order: retry", retryable=True
            ) from None

        if behaviour == "succeed":
            out_trade_no, out_refund_no = request.out_trade_no, request.out_refund_no
            _in_background(
                REFUND_RESULT_DELAY_S,
                lambda: finish_refund(out_trade_no, out_refund_no, deliver=self._deliver),
                "refund-success",
            )
        elif abnormal:
            _in_background(REFUND_RESULT_DELAY_S, lambda: self._send_refund_result(refund), "refund-abnormal")
        return _refund_status(refund)

    def _send_refund_result(self, refund: SandboxRefund) -> None:
        _send_refund_notification(refund, self._deliver)

    @staticmethod
    def _same_refund(existing: SandboxRefund, request: RefundRequest) -> RefundStatus:
        if int(existing.amount_fen) != request.amount_fen or int(existing.total_fen) != request.total_fen:
            raise ProviderError(
                "out_refund_no_used", f"{request.out_refund_no} was requested with another amount", retryable=False
            )
        return _refund_status(existing)

    @staticmethod
    def _not_enough(request: RefundRequest, payment: SandboxPayment) -> ProviderError:
        left = int(payment.amount_fen) - int(payment.refunded_fen)
        return ProviderError(
            "not_enough",
            f"refund {request.amount_fen} exceeds the {left} left to refund on {request.out_trade_no}",
            retryable=False,
        )

    def query_refund(self, out_refund_no: str, out_trade_no: str) -> RefundStatus:
        refund = _get_refund(out_trade_no, out_refund_no)
        if refund is None:
            raise ProviderError("refund_not_found", f"no sandbox refund {out_refund_no}", retryable=False)
        return _refund_status(refund)

    # callbacks

    def parse_callback(self, headers: Mapping[str, str], body: bytes, now: datetime) -> ProviderEvent | None:
        """Verify (``NotificationRejected``), decrypt and normalise (``MalformedEventError``) one callback."""
        notification = verify_notification(headers, body, notify_keys(), now.timestamp())
        return payment_event("sandbox", notification)

    def acknowledge(self, accepted: bool) -> HttpReply:
        """WeChat's answers: 204 without a body, or 400 ``{"code":"FAIL","message":"失败"}``."""
        if accepted:
            return HttpReply(204, "")
        return HttpReply(
            400, json.dumps({"code": "FAIL", "message": _FAIL_ZH}, ensure_ascii=False, separators=(",", ":"))
        )


def _send_refund_notification(refund: SandboxRefund, deliver: Deliver) -> tuple[int, str]:
    event, resource = _refund_notification(refund)
    headers, body = _sign(event, resource, at=utc_now().timestamp(), associated_data="refund")
    return _guarded(deliver, headers, body)


def finish_refund(out_trade_no: str, out_refund_no: str, *, deliver: Deliver | None = None) -> tuple[int, str] | None:
    """PROCESSING → SUCCESS (a conditional write) and the REFUND.SUCCESS notification.

    What the ``succeed`` behaviour runs ~0.2 s after ``refund``; tests may call it to
    finish a ``processing`` refund. Answers the delivery's ``(status, body)``, or None when
    the refund was not PROCESSING (already finished, abnormal, or unknown): nothing is sent.
    """
    _require_enabled()
    now = utc_now()
    refund = SandboxRefund(sandbox_pk(out_trade_no), refund_sk(out_refund_no))
    try:
        refund.update(
            actions=[
                SandboxRefund.state.set("SUCCESS"),
                SandboxRefund.success_time.set(_wechat_time(now)),
                SandboxRefund.event_id.set(_new_id("sbx_ev_")),
                SandboxRefund.updated_at.set(iso(now)),
            ],
            condition=SandboxRefund.state == "PROCESSING",
        )
    except UpdateError as error:
        if _condition_failed(error):
            return None
        raise
    return _send_refund_notification(refund, deliver or deliver_http)


# -- paying an order (the sandbox route) -----------------------------------------------------------


class PayInstruction(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What the sandbox payer and provider do to an order (body of ``POST /v1/sandbox/orders/{id}/pay``)."""

    outcome: Literal["success", "close"] = "success"
    """``success``: the payer pays; ``close``: the order closes unpaid (a TRANSACTION.CLOSED-type notification)."""
    deliveries: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    """Copies of the same notification (same event id): a provider retrying."""
    concurrent: bool = False
    """Send the copies at the same moment, from threads."""
    delay_seconds: Annotated[int, msgspec.Meta(ge=0, le=30)] = 0
    """Deliver from a background thread after this long (the answer counts them as ``scheduled``)."""
    drop: bool = False
    """Change the state but send nothing: only a query reveals it."""
    tamper: Literal["body", "timestamp", "serial", "signtest", "amount", "signature"] | None = None
    """Spoil every copy: ``body`` one byte changed after signing; ``timestamp`` signed 600 s ago; ``serial`` an
    unknown serial; ``signtest`` a ``WECHATPAY/SIGNTEST/`` probe; ``amount`` a correctly signed notification for
    the order amount + 1; ``signature`` signed with a key nobody knows. The order's state changes all the same."""
    late: bool = False
    """Allow paying a CLOSED order: the payer's money arrived just before the close."""
    refund_behaviour: Literal["succeed", "processing", "fail", "abnormal"] | None = None
    """How the order's later refunds go. Sent alone (everything else default) on a paid order it is only stored."""

    def __post_init__(self) -> None:
        if not 1 <= self.deliveries <= 5:
            raise ValueError("deliveries must be from 1 to 5")
        if not 0 <= self.delay_seconds <= 30:
            raise ValueError("delay_seconds must be from 0 to 30")


def _closed_error(order_id: str) -> ApiError:
    return ApiError(
        409,
        "sandbox_order_closed",
        "The sandbox order is closed; send late=true to pay it anyway",
        "\u8be5\u6c99\u7bb1\u8ba2\u5355\u5df2\u5173\u95ed",  # 该沙箱订单已关闭
        {"order_id": order_id},
    )


def _transition(payment: SandboxPayment, instruction: PayInstruction, now: datetime) -> tuple[SandboxPayment, bool]:
    """Apply the instruction to the order with one conditional write; answer (the order, send a notification?).

    Raises ``UpdateError`` (condition failed) when the order moved meanwhile: the caller reloads and retries.
    """
    order_id = payment.out_trade_no
    behaviour = (
        [SandboxPayment.refund_behaviour.set(instruction.refund_behaviour)] if instruction.refund_behaviour else []
    )
    stamp = [SandboxPayment.updated_at.set(iso(now))]
    if payment.state == "SUCCESS":
        if instruction.outcome == "close":
            raise ApiError(
                409,
                "sandbox_order_paid",
                "The sandbox order is paid and cannot be closed",
                # 该沙箱订单已支付，不能关闭
                "\u8be5\u6c99\u7bb1\u8ba2\u5355\u5df2\u652f\u4ed8\uff0c\u4e0d\u80fd\u5173\u95ed",
                {"order_id": order_id},
            )
        if behaviour:
            payment.update(actions=behaviour + stamp, condition=SandboxPayment.state == "SUCCESS")
        # a paid order: the same notification again (a provider retry), unless only the refund behaviour was sent
        only_behaviour = bool(behaviour) and instruction == PayInstruction(
            refund_behaviour=instruction.refund_behaviour
        )
        return payment, not only_behaviour
    if payment.state == "CLOSED" and not (instruction.late and instruction.outcome == "success"):
        raise _closed_error(order_id)
    event_time = _wechat_time(now)
    if instruction.outcome == "success":
        actions = [
            SandboxPayment.state.set("SUCCESS"),
            SandboxPayment.transaction_id.set(_new_id("sbx_tx_")),
            SandboxPayment.success_time.set(event_time),
        ]
    else:
        actions = [SandboxPayment.state.set("CLOSED"), SandboxPayment.closed_time.set(event_time)]
    actions += [SandboxPayment.event_id.set(_new_id("sbx_ev_")), SandboxPayment.event_time.set(event_time)]
    payment.update(actions=actions + behaviour + stamp, condition=SandboxPayment.state == payment.state)
    return payment, True


def _payment_copy(
    payment: SandboxPayment, tamper: str | None, at: Callable[[], float], stranger_pem: str | None
) -> tuple[dict[str, str], bytes]:
    """One signed copy of the order's notification, spoiled as ``tamper`` says."""
    event, resource = _payment_notification(payment)
    if tamper == "amount":
        resource["amount"] = {**resource["amount"], "total": int(payment.amount_fen) + 1}
        if "payer_total" in resource["amount"]:
            resource["amount"]["payer_total"] = int(payment.amount_fen) + 1
    timestamp = at() - STALE_BY_S if tamper == "timestamp" else at()
    headers, body = _sign(event, resource, at=timestamp, associated_data="transaction", private_pem=stranger_pem)
    if tamper == "body":
        body = _flip_one_byte(body)
    elif tamper == "serial":
        headers[H_SERIAL] = UNKNOWN_SERIAL
    elif tamper == "signtest":
        headers[H_SIGNATURE] = SIGNTEST_PREFIX + headers[H_SIGNATURE]
    return headers, body


def _flip_one_byte(body: bytes) -> bytes:
    """The body with one byte of the ciphertext changed (still JSON and Base64: only the signature tells)."""
    marker = b'"ciphertext":"'
    at = body.index(marker) + len(marker) + 8
    replacement = b"B" if body[at : at + 1] == b"A" else b"A"
    return body[:at] + replacement + body[at + 1 :]


def pay(order_id: str, instruction: PayInstruction, now: datetime, deliver: Deliver | None = None) -> dict[str, Any]:
    """Play the payer and WeChat Pay for one order (``order_id`` is the ``out_trade_no``).

    NOTPAY + ``success`` → SUCCESS (a ``sbx_tx_…`` transaction id, a new event id) and its
    TRANSACTION.SUCCESS notification; NOTPAY + ``close`` → CLOSED and a TRANSACTION.CLOSED
    notification; a paid order → the same notification again (same event id), or 409
    ``sandbox_order_paid`` for ``close``; a CLOSED order → 409 ``sandbox_order_closed``
    unless ``late`` (then it is paid); an unknown order → 404 ``sandbox_order_not_found``.
    Notifications are signed at ``now`` (plus the time spent, for delayed ones).

    Answers ``{"order_id", "state", "transaction_id", "deliveries": [{"status", "body"}…]
    (the synchronous ones), "scheduled" (sent later from a thread), "dropped", "tampered"}``.
    """
    _require_enabled()
    send = deliver or deliver_http
    for _attempt in range(5):
        payment = _get_payment(order_id)
        if payment is None:
            raise ApiError(
                404,
                "sandbox_order_not_found",
                "No such sandbox order",
                "\u6c99\u7bb1\u8ba2\u5355\u4e0d\u5b58\u5728",  # 沙箱订单不存在
                {"order_id": order_id},
            )
        try:
            payment, notify = _transition(payment, instruction, now)
            break
        except UpdateError as error:
            if not _condition_failed(error):
                raise
            # another request moved the order meanwhile: decide again on what it is now
    else:  # pragma: no cover - five lost races in a row
        raise busy()

    report: dict[str, Any] = {
        "order_id": order_id,
        "state": payment.state,
        "transaction_id": payment.transaction_id,
        "deliveries": [],
        "scheduled": 0,
        "dropped": bool(instruction.drop and notify),
        "tampered": instruction.tamper if notify and not instruction.drop else None,
    }
    if not notify or instruction.drop:
        return report

    stranger_pem = generate_sandbox_keys()[0] if instruction.tamper == "signature" else None
    started = time.monotonic()

    def at() -> float:
        return now.timestamp() + (time.monotonic() - started)

    def make() -> tuple[dict[str, str], bytes]:
        return _payment_copy(payment, instruction.tamper, at, stranger_pem)

    count, concurrent = instruction.deliveries, instruction.concurrent
    if instruction.delay_seconds:

        def later() -> None:
            for status, body in _send_copies(make, count, concurrent, lambda h, b: _guarded(send, h, b)):
                logger.info(
                    "sandbox delayed delivery", extra={"order_id": order_id, "status": status, "body": body[:200]}
                )

        _in_background(instruction.delay_seconds, later, "pay-delayed")
        report["scheduled"] = count
    else:
        report["deliveries"] = [
            {"status": status, "body": body} for status, body in _send_copies(make, count, concurrent, send)
        ]
    return report
