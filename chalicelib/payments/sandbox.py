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

What it does (reference/payments.md §1.1–§1.7, §6.4): it keeps its own side of each payment,
refund and transfer (``chalicelib.models.sandbox``: what WeChat Pay would hold), answers
``create_payment`` with JSAPI-style client parameters, and answers queries, closes and
refunds as WeChat does. It pays doctors out as WeChat's 商家转账 does: ``payout`` accepts a
transfer bill (a WeChat payee must confirm it: WAIT_USER_CONFIRM with a ``package_info``;
Alipay and bank-card payees: PROCESSING), and the bill stays there until told otherwise —
it never completes on its own, so tests and ``make run`` demos decide what the payee does.
:func:`pay` (behind the local-only route ``POST /v1/sandbox/orders/{order_id}/pay``) plays
the payer and WeChat for a payment order, and the payee and WeChat for a transfer bill
(``order_id`` is then its ``out_bill_no``): it moves the order or bill and POSTs a signed,
AES-256-GCM-encrypted notification (TRANSACTION.* or MCHTRANSFER.BILL.FINISHED;
``Wechatpay-*`` headers, signature over ``timestamp\\nnonce\\nbody\\n``) to
``Settings.sandbox_callback_url``, where the same ``verify_notification`` that checks
WeChat's callbacks checks it. :class:`PayInstruction` says what happens (paid, closed;
transfer succeeded, failed, cancelled, expired unconfirmed), asks it to duplicate, delay,
drop or tamper with that notification, to pay an order that was already closed, and how to
treat the order's later refunds.

Background work (delayed deliveries, refund results, cancelled transfers) runs in daemon
threads: right for ``chalice local`` and the tests; on Lambda a thread runs only while the
container is warm.

Example
-------
>>> provider = SandboxProvider(deliver=lambda headers, body: (204, ""))  # doctest: +SKIP
>>> provider.create_payment(request).client_params["package"]  # doctest: +SKIP
'prepay_id=sbx_prepay_…'
>>> pay("PAY-1", PayInstruction(deliveries=2), now)["deliveries"]  # doctest: +SKIP
[{'status': 204, 'body': ''}, {'status': 204, 'body': ''}]
>>> provider.payout(PayoutRequest("WD-1", 10000, "wechat", {"openid": "o-1"}, "Withdrawal")).state  # doctest: +SKIP
'wait_user_confirm'
>>> pay("WD-1", PayInstruction(outcome="success"), now)["state"]  # doctest: +SKIP
'SUCCESS'
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
from chalicelib.models.sandbox import (
    FINAL_PAYOUT_STATES,
    PAYMENT_SK,
    PAYOUT_SK,
    SandboxPayment,
    SandboxPayout,
    SandboxRefund,
    refund_sk,
    sandbox_pk,
)
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy
from chalicelib.observability import logger
from chalicelib.payments.provider import (
    HttpReply,
    PaymentIntent,
    PaymentStatus,
    PayoutStatus,
    ProviderError,
    RefundStatus,
)
from chalicelib.payments.wechat_events import payment_event
from chalicelib.payments.wechat_notify import (
    H_SERIAL,
    H_SIGNATURE,
    SIGNTEST_PREFIX,
    NotificationRejected,
    NotifyKeys,
    generate_sandbox_keys,
    sign_notification,
    verify_notification,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    from chalicelib.payments.provider import (
        Channel,
        PaymentRequest,
        PaymentState,
        PayoutRequest,
        PayoutState,
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
PAYOUT_RESULT_DELAY_S: Final = 0.2
"""How long after ``cancel_payout`` the sandbox sends the cancelled transfer's notification."""
STALE_BY_S: Final = 600

_APP_IDS: Final = {"jsapi_mp": "wx-sandbox-mp", "jsapi_oa": "wx-sandbox-oa"}
_APP_ID_OTHER: Final = "wx-sandbox-app"
_OUR_APP_IDS: Final = frozenset({*_APP_IDS.values(), _APP_ID_OTHER})
_PAYER_OPENID: Final = "o-sandbox-payer"
_ALPHANUMERIC: Final = string.ascii_letters + string.digits
_CONDITION_FAILED: Final = "ConditionalCheckFailedException"
_PAYMENT_STATES: Final[dict[str, PaymentState]] = {"NOTPAY": "pending", "SUCCESS": "succeeded", "CLOSED": "closed"}
_REFUND_STATES: Final[dict[str, RefundState]] = {
    "PROCESSING": "processing",
    "SUCCESS": "succeeded",
    "ABNORMAL": "failed",
}
_PAYOUT_STATES: Final[dict[str, PayoutState]] = {
    "ACCEPTED": "processing",
    "PROCESSING": "processing",
    "TRANSFERING": "processing",
    "CANCELING": "processing",
    "WAIT_USER_CONFIRM": "wait_user_confirm",
    "SUCCESS": "succeeded",
    "FAIL": "failed",
    "CANCELLED": "cancelled",
}
_PAYEE_KINDS: Final = ("wechat", "alipay", "bank_card")
_TRANSFER_OUTCOMES: Final[dict[str, tuple[str, str | None]]] = {
    "success": ("SUCCESS", None),
    "fail": ("FAIL", "PAYEE_ACCOUNT_ABNORMAL"),
    "cancel": ("CANCELLED", "MERCHANT_REVOCATION"),
    "expire": ("FAIL", "OVERDUE_CLOSE"),
}
"""What :func:`pay` does to a transfer bill: outcome → (WeChat's final ``state``, its ``fail_reason``)."""
_PAYMENT_OUTCOMES: Final = ("success", "close")
# WeChat's summaries and descriptions, as \u escapes (支付成功, 订单已关闭, 退款成功, 退款异常, 失败, 支付用户零钱)
_PAID_ZH: Final = "\u652f\u4ed8\u6210\u529f"
_CLOSED_ZH: Final = "\u8ba2\u5355\u5df2\u5173\u95ed"
_REFUNDED_ZH: Final = "\u9000\u6b3e\u6210\u529f"
_REFUND_ABNORMAL_ZH: Final = "\u9000\u6b3e\u5f02\u5e38"
_FAIL_ZH: Final = "\u5931\u8d25"
_CHANGE_ACCOUNT_ZH: Final = "\u652f\u4ed8\u7528\u6237\u96f6\u94b1"
_TRANSFER_FINISHED_ZH: Final = "\u5546\u5bb6\u8f6c\u8d26\u5355\u636e\u7ec8\u6001\u901a\u77e5"  # 商家转账单据终态通知


# -- keys ------------------------------------------------------------------------------------------


@functools.cache
def _private_pem() -> str:
    return PRIVATE_KEY_PATH.read_text(encoding="ascii")


@functools.cache
def _private_key() -> RSAPrivateKey:
    """The sandbox's signing key, parsed once: parsing checks the RSA key, which costs far more than a signature."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(_private_pem().encode("ascii"), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):  # pragma: no cover - the committed file is RSA
        raise RuntimeError("the sandbox platform key is not an RSA key")
    return key


@functools.cache
def _public_pem() -> str:
    from cryptography.hazmat.primitives import serialization

    return (
        _private_key()
        .public_key()
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
    from cryptography.hazmat.primitives.asymmetric import padding

    return base64.b64encode(_private_key().sign(message, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


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


def _get_payout(out_bill_no: str) -> SandboxPayout | None:
    try:
        return SandboxPayout.get(sandbox_pk(out_bill_no), PAYOUT_SK, consistent_read=True)
    except SandboxPayout.DoesNotExist:
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


def _payout_not_found(out_bill_no: str) -> ProviderError:
    return ProviderError("payout_not_found", f"no sandbox transfer {out_bill_no}", retryable=False)


def _payout_status(transfer: SandboxPayout) -> PayoutStatus:
    return PayoutStatus(
        out_bill_no=transfer.out_bill_no,
        state=_PAYOUT_STATES[transfer.state],
        bill_id=transfer.transfer_bill_no,
        amount_fen=int(transfer.amount_fen),
        package_info=transfer.package_info if transfer.state == "WAIT_USER_CONFIRM" else None,
        fail_reason=transfer.fail_reason,
    )


def _masked_account(payee_kind: str, payee: Mapping[str, str]) -> str:
    """What an Alipay or bank-card transfer keeps of its payee: enough to recognise, not to reuse."""
    if payee_kind == "bank_card":
        number = payee.get("card_number", "")
        return f"{payee.get('bank', '')} ****{number[-4:]}".strip()
    account = payee.get("account", "")
    if "@" in account:
        name, _, domain = account.partition("@")
        return f"{name[:1]}***@{domain}"
    return f"{account[:3]}****{account[-4:]}" if len(account) > 7 else "****"


def _check_payout(request: PayoutRequest) -> None:
    """Refuse what WeChat (or Alipay) would refuse: PARAM_ERROR-type answers, never retryable."""
    if isinstance(request.amount_fen, bool) or not isinstance(request.amount_fen, int) or request.amount_fen < 1:
        raise ProviderError("invalid_amount", f"transfer amount {request.amount_fen!r} is under 1 fen", retryable=False)
    if request.payee_kind not in _PAYEE_KINDS:
        raise ProviderError("invalid_payee", f"unknown payee kind {request.payee_kind!r}", retryable=False)
    needed = {"wechat": "openid", "alipay": "account", "bank_card": "card_number"}[request.payee_kind]
    if not request.payee.get(needed):
        raise ProviderError("invalid_payee", f"a {request.payee_kind} payee needs {needed}", retryable=False)


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


def _transfer_notification(transfer: SandboxPayout) -> tuple[dict[str, str], dict[str, Any]]:
    """The event fields and the decrypted ``mch_payment`` resource of a transfer's MCHTRANSFER.BILL.FINISHED."""
    resource: dict[str, Any] = {
        "out_bill_no": transfer.out_bill_no,
        "transfer_bill_no": transfer.transfer_bill_no,
        "state": transfer.state,
        "mch_id": SANDBOX_MCHID,
        "transfer_amount": int(transfer.amount_fen),
    }
    if transfer.payee_openid:
        resource["openid"] = transfer.payee_openid
    if transfer.fail_reason:
        resource["fail_reason"] = transfer.fail_reason
    resource.update(create_time=transfer.create_time, update_time=transfer.update_time)
    event = {
        "id": transfer.event_id or "",
        "create_time": transfer.update_time,
        "event_type": "MCHTRANSFER.BILL.FINISHED",
        "summary": _TRANSFER_FINISHED_ZH,
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

    ``deliver`` sends the notifications the provider makes on its own (refund results,
    cancelled transfers); by default :func:`deliver_http` to ``Settings.sandbox_callback_url``. Refuses to be
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

    # payouts (WeChat 商家转账: transfer bills)

    def payout(self, request: PayoutRequest) -> PayoutStatus:
        """Accept a transfer bill, once per ``out_bill_no``; it stays non-final until :func:`pay` moves it.

        A WeChat payee (``payee["openid"]``) must confirm it in WeChat: WAIT_USER_CONFIRM,
        answered ``wait_user_confirm`` with the ``package_info`` the payee's WeChat needs;
        an Alipay (``account``) or bank-card (``card_number``) payee: PROCESSING. The same
        number again with the same amount and payee kind answers the stored bill (nothing
        new); otherwise ``out_bill_no_used``. Under 1 fen ``invalid_amount``, a payee without
        its identifier ``invalid_payee``. None of these errors is retryable.
        """
        _check_payout(request)
        now = utc_now()
        wechat = request.payee_kind == "wechat"
        transfer = SandboxPayout(
            sandbox_pk(request.out_bill_no),
            PAYOUT_SK,
            out_bill_no=request.out_bill_no,
            transfer_bill_no=_new_id("sbx_tb_"),
            amount_fen=request.amount_fen,
            payee_kind=request.payee_kind,
            payee_openid=request.payee["openid"] if wechat else None,
            payee_account=None if wechat else _masked_account(request.payee_kind, request.payee),
            remark=request.remark,
            state="WAIT_USER_CONFIRM" if wechat else "PROCESSING",
            package_info=_new_id("sbx_pkg_") if wechat else None,
            create_time=_wechat_time(now),
            update_time=_wechat_time(now),
            created_at=iso(now),
            updated_at=iso(now),
        )
        try:
            transfer.save(condition=SandboxPayout.pk.does_not_exist())
        except PutError as error:
            if not _condition_failed(error):
                raise
            existing = _get_payout(request.out_bill_no)
            if existing is None:  # pragma: no cover - transfers are never deleted
                raise
            if int(existing.amount_fen) != request.amount_fen or existing.payee_kind != request.payee_kind:
                raise ProviderError(
                    "out_bill_no_used",
                    f"{request.out_bill_no} was sent with another amount or payee",
                    retryable=False,
                ) from None
            transfer = existing
        return _payout_status(transfer)

    def query_payout(self, out_bill_no: str) -> PayoutStatus:
        """The bill as the sandbox holds it; ``payout_not_found`` when it was never received."""
        transfer = _get_payout(out_bill_no)
        if transfer is None:
            raise _payout_not_found(out_bill_no)
        return _payout_status(transfer)

    def cancel_payout(self, out_bill_no: str) -> PayoutStatus:
        """A non-final bill → CANCELLED (MERCHANT_REVOCATION), its notification ~0.2 s later.

        A CANCELLED bill answers ``cancelled`` again (nothing is sent); a SUCCESS or FAIL one
        is ``invalid_state``, an unknown one ``payout_not_found`` (neither retryable).
        """
        for _attempt in range(5):
            transfer = _get_payout(out_bill_no)
            if transfer is None:
                raise _payout_not_found(out_bill_no)
            if transfer.state == "CANCELLED":
                return _payout_status(transfer)
            if transfer.state in FINAL_PAYOUT_STATES:
                raise ProviderError(
                    "invalid_state", f"{out_bill_no} is {transfer.state}: it cannot be cancelled", retryable=False
                )
            try:
                _finish_transfer(transfer, "CANCELLED", "MERCHANT_REVOCATION", utc_now())
            except UpdateError as error:
                if not _condition_failed(error):
                    raise
                continue  # the payee or another call moved it meanwhile: decide again
            _in_background(
                PAYOUT_RESULT_DELAY_S,
                functools.partial(self._send_transfer_result, transfer),
                "payout-cancelled",
            )
            return _payout_status(transfer)
        raise ProviderError(  # pragma: no cover - five lost races in a row
            "FREQUENCY_LIMITED", f"{out_bill_no} keeps changing: retry", retryable=True
        )

    def _send_transfer_result(self, transfer: SandboxPayout) -> None:
        _send_transfer_notification(transfer, self._deliver)

    # callbacks

    def parse_callback(self, headers: Mapping[str, str], body: bytes, now: datetime) -> ProviderEvent | None:
        """Verify (``NotificationRejected``), decrypt and normalise (``MalformedEventError``) one callback.

        A resource naming another ``mchid``/``mch_id`` than :data:`SANDBOX_MCHID`, or an ``appid`` the
        sandbox never issues, is ``wrong_merchant`` (as ``WeChatPayProvider.parse_callback``).
        """
        notification = verify_notification(headers, body, notify_keys(), now.timestamp())
        event = payment_event("sandbox", notification)
        # as the WeChat adapter does: signed by "WeChat" is not enough, it must be about our merchant and apps
        resource = notification.resource
        mchid = resource.get("mchid", resource.get("mch_id"))
        if (event is not None or mchid is not None) and mchid != SANDBOX_MCHID:
            raise NotificationRejected("wrong_merchant", "the notification names another merchant id")
        appid = resource.get("appid")
        if appid is not None and appid not in _OUR_APP_IDS:
            raise NotificationRejected("wrong_merchant", "the notification names an appid that is not ours")
        return event

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


def _finish_transfer(transfer: SandboxPayout, state: str, fail_reason: str | None, now: datetime) -> None:
    """Move a non-final bill to a final ``state`` with one conditional write on the state it leaves.

    A new event id is its MCHTRANSFER.BILL.FINISHED notification's; ``transfer`` is refreshed
    in place. Raises ``UpdateError`` (condition failed) when the bill moved meanwhile.
    """
    actions: list[Any] = [
        SandboxPayout.state.set(state),
        SandboxPayout.event_id.set(_new_id("sbx_ev_")),
        SandboxPayout.update_time.set(_wechat_time(now)),
        SandboxPayout.updated_at.set(iso(now)),
    ]
    if fail_reason is not None:
        actions.append(SandboxPayout.fail_reason.set(fail_reason))
    transfer.update(actions=actions, condition=SandboxPayout.state == transfer.state)


def _send_transfer_notification(transfer: SandboxPayout, deliver: Deliver) -> tuple[int, str]:
    event, resource = _transfer_notification(transfer)
    headers, body = _sign(event, resource, at=utc_now().timestamp(), associated_data="mch_payment")
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


# -- paying an order, or playing a transfer's payee (the sandbox route) ----------------------------


class PayInstruction(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What the sandbox payer, payee and provider do (body of ``POST /v1/sandbox/orders/{id}/pay``).

    The id names a payment order (``out_trade_no``) or a transfer bill (``out_bill_no``).
    """

    outcome: Literal["success", "close", "fail", "cancel", "expire"] = "success"
    """A payment order: ``success`` the payer pays; ``close`` it closes unpaid (a TRANSACTION.CLOSED-type
    notification). A transfer bill: ``success`` the payee confirmed / the bank credited (SUCCESS); ``fail`` FAIL
    (PAYEE_ACCOUNT_ABNORMAL); ``cancel`` CANCELLED (MERCHANT_REVOCATION); ``expire`` FAIL (OVERDUE_CLOSE: not
    confirmed within 24 h, only from WAIT_USER_CONFIRM). Each sends MCHTRANSFER.BILL.FINISHED."""
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
    the order's (or transfer's) amount + 1; ``signature`` signed with a key nobody knows. The state changes all
    the same."""
    late: bool = False
    """Allow paying a CLOSED order: the payer's money arrived just before the close. Payment orders only."""
    refund_behaviour: Literal["succeed", "processing", "fail", "abnormal"] | None = None
    """How the order's later refunds go. Sent alone (everything else default) on a paid order it is only stored.
    Payment orders only."""

    def __post_init__(self) -> None:
        if not 1 <= self.deliveries <= 5:
            raise ValueError("deliveries must be from 1 to 5")
        if not 0 <= self.delay_seconds <= 30:
            raise ValueError("delay_seconds must be from 0 to 30")


_Copy = Callable[[str | None, Callable[[], float], str | None], tuple[dict[str, str], bytes]]
"""Make one signed copy of a notification: ``(tamper, signing clock, stranger's key PEM or None)``."""


def _closed_error(order_id: str) -> ApiError:
    return ApiError(
        409,
        "sandbox_order_closed",
        "The sandbox order is closed; send late=true to pay it anyway",
        "\u8be5\u6c99\u7bb1\u8ba2\u5355\u5df2\u5173\u95ed",  # 该沙箱订单已关闭
        {"order_id": order_id},
    )


def _outcome_invalid(order_id: str, outcome: str, what: str, allowed: tuple[str, ...]) -> ApiError:
    return ApiError(
        422,
        "sandbox_outcome_invalid",
        f"Outcome {outcome!r} does not apply to a sandbox {what}; it takes {', '.join(allowed)}",
        "\u6b64\u7ed3\u679c\u4e0d\u9002\u7528\u4e8e\u8be5\u6c99\u7bb1\u5355\u636e",  # 此结果不适用于该沙箱单据
        {"order_id": order_id, "outcome": outcome, "allowed": list(allowed)},
    )


def _transition(payment: SandboxPayment, instruction: PayInstruction, now: datetime) -> tuple[SandboxPayment, bool]:
    """Apply the instruction to the order with one conditional write; answer (the order, send a notification?).

    Raises ``UpdateError`` (condition failed) when the order moved meanwhile: the caller reloads and retries.
    """
    order_id = payment.out_trade_no
    if instruction.outcome not in _PAYMENT_OUTCOMES:
        raise _outcome_invalid(order_id, instruction.outcome, "payment order", _PAYMENT_OUTCOMES)
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


def _transfer_transition(
    transfer: SandboxPayout, instruction: PayInstruction, now: datetime
) -> tuple[SandboxPayout, bool]:
    """Apply the instruction to a transfer bill with one conditional write; answer (the bill, send?).

    A final bill re-sends its notification (same event id) when the outcome is the one that
    made it (``success`` on SUCCESS…), else 409 ``sandbox_transfer_final``. Raises
    ``UpdateError`` (condition failed) when the bill moved meanwhile: the caller reloads and retries.
    """
    out_bill_no = transfer.out_bill_no
    target = _TRANSFER_OUTCOMES.get(instruction.outcome)
    if target is None:
        raise _outcome_invalid(out_bill_no, instruction.outcome, "transfer", tuple(_TRANSFER_OUTCOMES))
    if instruction.late or instruction.refund_behaviour is not None:
        raise ApiError(
            422,
            "sandbox_instruction_invalid",
            "late and refund_behaviour apply to sandbox payment orders only, not to transfers",
            "\u8be5\u53c2\u6570\u4ec5\u9002\u7528\u4e8e\u652f\u4ed8\u8ba2\u5355",  # 该参数仅适用于支付订单
            {"order_id": out_bill_no, "fields": ["late", "refund_behaviour"]},
        )
    state, fail_reason = target
    if transfer.state in FINAL_PAYOUT_STATES:
        if (transfer.state, transfer.fail_reason) == (state, fail_reason):
            return transfer, True  # the same final notification again: a provider retry
        raise ApiError(
            409,
            "sandbox_transfer_final",
            f"The sandbox transfer is already final ({transfer.state})",
            "\u8be5\u6c99\u7bb1\u8f6c\u8d26\u5df2\u662f\u7ec8\u6001",  # 该沙箱转账已是终态
            {"order_id": out_bill_no, "state": transfer.state, "fail_reason": transfer.fail_reason},
        )
    if instruction.outcome == "expire" and transfer.state != "WAIT_USER_CONFIRM":
        raise ApiError(
            409,
            "sandbox_transfer_not_waiting",
            f"Only a transfer waiting for the payee's confirmation can expire; this one is {transfer.state}",
            # 该沙箱转账不在等待收款人确认
            "\u8be5\u6c99\u7bb1\u8f6c\u8d26\u4e0d\u5728\u7b49\u5f85\u6536\u6b3e\u4eba\u786e\u8ba4",
            {"order_id": out_bill_no, "state": transfer.state},
        )
    _finish_transfer(transfer, state, fail_reason, now)
    return transfer, True


def _signed_copy(
    event: dict[str, str],
    resource: dict[str, Any],
    *,
    associated_data: str,
    tamper: str | None,
    at: Callable[[], float],
    stranger_pem: str | None,
) -> tuple[dict[str, str], bytes]:
    """Sign one copy of a notification, spoiled as ``tamper`` says (``amount`` is the caller's: it knows the field)."""
    timestamp = at() - STALE_BY_S if tamper == "timestamp" else at()
    headers, body = _sign(event, resource, at=timestamp, associated_data=associated_data, private_pem=stranger_pem)
    if tamper == "body":
        body = _flip_one_byte(body)
    elif tamper == "serial":
        headers[H_SERIAL] = UNKNOWN_SERIAL
    elif tamper == "signtest":
        headers[H_SIGNATURE] = SIGNTEST_PREFIX + headers[H_SIGNATURE]
    return headers, body


def _payment_copy(
    payment: SandboxPayment, tamper: str | None, at: Callable[[], float], stranger_pem: str | None
) -> tuple[dict[str, str], bytes]:
    """One signed copy of the order's notification, spoiled as ``tamper`` says."""
    event, resource = _payment_notification(payment)
    if tamper == "amount":
        resource["amount"] = {**resource["amount"], "total": int(payment.amount_fen) + 1}
        if "payer_total" in resource["amount"]:
            resource["amount"]["payer_total"] = int(payment.amount_fen) + 1
    return _signed_copy(event, resource, associated_data="transaction", tamper=tamper, at=at, stranger_pem=stranger_pem)


def _transfer_copy(
    transfer: SandboxPayout, tamper: str | None, at: Callable[[], float], stranger_pem: str | None
) -> tuple[dict[str, str], bytes]:
    """One signed copy of the bill's MCHTRANSFER.BILL.FINISHED, spoiled as ``tamper`` says."""
    event, resource = _transfer_notification(transfer)
    if tamper == "amount":
        resource["transfer_amount"] = int(transfer.amount_fen) + 1
    return _signed_copy(event, resource, associated_data="mch_payment", tamper=tamper, at=at, stranger_pem=stranger_pem)


def _flip_one_byte(body: bytes) -> bytes:
    """The body with one byte of the ciphertext changed (still JSON and Base64: only the signature tells)."""
    marker = b'"ciphertext":"'
    at = body.index(marker) + len(marker) + 8
    replacement = b"B" if body[at : at + 1] == b"A" else b"A"
    return body[:at] + replacement + body[at + 1 :]


def _send_as_told(
    report: dict[str, Any], instruction: PayInstruction, notify: bool, copy: _Copy, now: datetime, send: Deliver
) -> dict[str, Any]:
    """Send the notification ``copy`` makes as the instruction says (copies, concurrency, delay, drop, tamper).

    Fills in ``report``'s ``deliveries`` (the synchronous ones), ``scheduled``, ``dropped``
    and ``tampered``, and answers it.
    """
    report.update(
        deliveries=[],
        scheduled=0,
        dropped=bool(instruction.drop and notify),
        tampered=instruction.tamper if notify and not instruction.drop else None,
    )
    if not notify or instruction.drop:
        return report

    stranger_pem = generate_sandbox_keys()[0] if instruction.tamper == "signature" else None
    started = time.monotonic()

    def at() -> float:
        return now.timestamp() + (time.monotonic() - started)

    def make() -> tuple[dict[str, str], bytes]:
        return copy(instruction.tamper, at, stranger_pem)

    order_id = report["order_id"]
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


def pay(order_id: str, instruction: PayInstruction, now: datetime, deliver: Deliver | None = None) -> dict[str, Any]:
    """Play the payer and WeChat Pay for one order, or the payee and WeChat for one transfer bill.

    A payment order (``order_id`` is the ``out_trade_no``): NOTPAY + ``success`` → SUCCESS (a
    ``sbx_tx_…`` transaction id, a new event id) and its TRANSACTION.SUCCESS notification;
    NOTPAY + ``close`` → CLOSED and a TRANSACTION.CLOSED notification; a paid order → the
    same notification again (same event id), or 409 ``sandbox_order_paid`` for ``close``; a
    CLOSED order → 409 ``sandbox_order_closed`` unless ``late`` (then it is paid);
    ``fail``/``cancel``/``expire`` → 422 ``sandbox_outcome_invalid``.

    A transfer bill (``order_id`` is the ``out_bill_no``; looked up when no payment order has
    that number): ``success`` → SUCCESS, ``fail`` → FAIL (PAYEE_ACCOUNT_ABNORMAL), ``cancel`` →
    CANCELLED (MERCHANT_REVOCATION), ``expire`` → FAIL (OVERDUE_CLOSE; only from
    WAIT_USER_CONFIRM, else 409 ``sandbox_transfer_not_waiting``), each with a new event id
    and its MCHTRANSFER.BILL.FINISHED notification; a final bill → the same notification
    again for the outcome that made it, else 409 ``sandbox_transfer_final``; ``close`` → 422
    ``sandbox_outcome_invalid``; ``late``/``refund_behaviour`` → 422 ``sandbox_instruction_invalid``.

    Neither → 404 ``sandbox_order_not_found``. Notifications are signed at ``now`` (plus the
    time spent, for delayed ones). Answers ``{"order_id", "state" (WeChat's), "transaction_id"
    (a bill's ``transfer_bill_no``), "deliveries": [{"status", "body"}…] (the synchronous
    ones), "scheduled" (sent later from a thread), "dropped", "tampered"}``.
    """
    _require_enabled()
    send = deliver or deliver_http
    for _attempt in range(5):
        payment = _get_payment(order_id)
        transfer = _get_payout(order_id) if payment is None else None
        try:
            if payment is not None:
                payment, notify = _transition(payment, instruction, now)
            elif transfer is not None:
                transfer, notify = _transfer_transition(transfer, instruction, now)
            else:
                raise ApiError(
                    404,
                    "sandbox_order_not_found",
                    "No such sandbox order",
                    "\u6c99\u7bb1\u8ba2\u5355\u4e0d\u5b58\u5728",  # 沙箱订单不存在
                    {"order_id": order_id},
                )
            break
        except UpdateError as error:
            if not _condition_failed(error):
                raise
            # another request moved the order meanwhile: decide again on what it is now
    else:  # pragma: no cover - five lost races in a row
        raise busy()

    if payment is not None:
        report: dict[str, Any] = {
            "order_id": order_id,
            "state": payment.state,
            "transaction_id": payment.transaction_id,
        }
        return _send_as_told(report, instruction, notify, functools.partial(_payment_copy, payment), now, send)
    assert transfer is not None  # the loop leaves with one or the other
    report = {"order_id": order_id, "state": transfer.state, "transaction_id": transfer.transfer_bill_no}
    return _send_as_told(report, instruction, notify, functools.partial(_transfer_copy, transfer), now, send)
