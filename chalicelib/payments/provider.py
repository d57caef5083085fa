"""The one interface every payment channel implements, and the provider-neutral values it speaks.

Flows never see a channel's wire format: they ask a ``Provider`` to open, query, close and
refund payments and to pay doctors out, and they receive callbacks as
``ProviderEvent`` values — verified and decrypted by the adapter, never trusted raw.
Merchant numbers (``out_trade_no``, ``out_refund_no``, ``out_bill_no``) are ours, stored before the call:
they are the providers' idempotency keys (design.md §5, reference/payments.md §6.2).

Example
-------
>>> request = PaymentRequest("PAY-1", 50000, "Invitation", "jsapi_mp", "o-1", expires_at)  # doctest: +SKIP
>>> provider.create_payment(request).client_params["package"]  # doctest: +SKIP
'prepay_id=...'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

Channel = Literal["wechat", "alipay", "unionpay", "sandbox"]
Scene = Literal["jsapi_oa", "jsapi_mp", "h5", "app"]
PaymentState = Literal["pending", "succeeded", "closed"]
RefundState = Literal["processing", "succeeded", "failed", "closed"]
PayoutState = Literal["processing", "wait_user_confirm", "succeeded", "failed", "cancelled"]
"""``wait_user_confirm``: WeChat holds the transfer until the payee confirms it (24 h, then ``failed``)."""
PayeeKind = Literal["wechat", "alipay", "bank_card"]
EventKind = Literal[
    "payment_succeeded",
    "payment_closed",
    "refund_succeeded",
    "refund_failed",
    "refund_closed",
    "payout_succeeded",
    "payout_failed",
    "payout_cancelled",
]
FINAL_PAYOUT_STATES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class PaymentRequest:
    """An order to open at the provider: our number, the amount in fen, who pays and where."""

    out_trade_no: str
    amount_fen: int
    description: str
    scene: Scene
    payer_openid: str | None
    expires_at: datetime
    payer_ip: str | None = None
    """The payer's address as API Gateway saw it (WeChat H5 orders must name it)."""


@dataclass(frozen=True)
class PaymentIntent:
    """What the provider answered: its reference, and what the front end needs to pay."""

    provider_ref: str
    client_params: dict[str, Any]


@dataclass(frozen=True)
class PaymentStatus:
    """An order as the provider reports it (a query, or a verified callback)."""

    out_trade_no: str
    state: PaymentState
    transaction_id: str | None = None
    amount_fen: int | None = None
    currency: str | None = None
    paid_at: str | None = None


@dataclass(frozen=True)
class RefundRequest:
    """A refund by the original path; ``out_refund_no`` is stored before the call and reused on every retry."""

    out_refund_no: str
    out_trade_no: str
    amount_fen: int
    total_fen: int
    reason: str


@dataclass(frozen=True)
class RefundStatus:
    out_refund_no: str
    state: RefundState
    refund_id: str | None = None
    amount_fen: int | None = None


@dataclass(frozen=True)
class PayoutRequest:
    """Money to a doctor (WeChat 商家转账, Alipay uni.transfer, a bank card).

    ``out_bill_no`` is stored before the first call and reused on every retry: the
    provider pays once. ``payee`` holds what the kind needs — wechat: ``openid``, ``app``
    (``mp``/``oa``) and ``real_name``; alipay: ``account`` and ``real_name``; bank_card:
    ``holder_name``, ``bank`` and ``card_number``.
    """

    out_bill_no: str
    amount_fen: int
    payee_kind: PayeeKind
    payee: Mapping[str, str]
    remark: str


@dataclass(frozen=True)
class PayoutStatus:
    """A payout as the provider reports it (an answer, a query, or a verified callback).

    ``package_info`` is what the payee's WeChat needs to confirm a ``wait_user_confirm``
    transfer; ``fail_reason`` the provider's reason code for ``failed``/``cancelled``.
    """

    out_bill_no: str
    state: PayoutState
    bill_id: str | None = None
    amount_fen: int | None = None
    package_info: str | None = None
    fail_reason: str | None = None


@dataclass(frozen=True)
class ProviderEvent:
    """A verified callback, normalised: what happened to which of our orders.

    ``event_id`` is the provider's id of the notification (kept forever to drop repeats);
    ``merchant_ref`` is our order or refund number; ``provider_ref`` the provider's.
    """

    channel: Channel
    event_id: str
    kind: EventKind
    merchant_ref: str
    provider_ref: str | None
    amount_fen: int | None
    currency: str | None
    occurred_at: str | None
    order_ref: str | None = None
    """For a refund event: the payment order it refunds."""
    reason: str | None = None
    """For a failed or cancelled payout: the provider's reason code."""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


class ProviderError(Exception):
    """A provider call that did not succeed. ``retryable``: the same call (same merchant number) may be
    repeated later — a timeout, a 5xx, a rate limit; the outcome is unknown until a query says so."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class HttpReply:
    """The answer a provider expects to a callback (WeChat: 204, or 4xx/5xx with a JSON code)."""

    status: int
    body: str = ""
    content_type: str = "application/json"


class Provider(Protocol):
    """One payment channel (WeChat Pay, Alipay, UnionPay, the sandbox) behind the same calls."""

    channel: Channel

    def create_payment(self, request: PaymentRequest) -> PaymentIntent: ...

    def query_payment(self, out_trade_no: str) -> PaymentStatus: ...

    def close_payment(self, out_trade_no: str) -> None: ...

    def refund(self, request: RefundRequest) -> RefundStatus: ...

    def query_refund(self, out_refund_no: str, out_trade_no: str) -> RefundStatus: ...

    def payout(self, request: PayoutRequest) -> PayoutStatus:
        """Send money to a payee; the same ``out_bill_no`` again answers the same transfer."""
        ...

    def query_payout(self, out_bill_no: str) -> PayoutStatus:
        """The transfer's state; ``ProviderError("payout_not_found", retryable=False)`` when the
        provider never received it (then it may be sent, with the same number)."""
        ...

    def cancel_payout(self, out_bill_no: str) -> PayoutStatus:
        """Cancel a transfer that is not final yet (WeChat: ``CANCELING`` → ``CANCELLED``)."""
        ...

    def parse_callback(self, headers: Mapping[str, str], body: bytes, now: datetime) -> ProviderEvent | None:
        """Verify, decrypt and normalise a callback; None for a verified event we do not act on."""
        ...

    def acknowledge(self, accepted: bool) -> HttpReply: ...
