"""WeChat Pay v3 notifications (already verified and decrypted) as provider-neutral events.

Shared by the WeChat adapter and the sandbox, which speaks the same wire format. Amounts
stay in fen as WeChat sends them; anything we do not act on (another event type, a
payment still open, a transfer not final yet) becomes None, to be acknowledged and logged,
never applied. Covers payments (``TRANSACTION.*``), refunds (``REFUND.*``) and merchant
transfers to payees (``MCHTRANSFER.*``: the 商家转账 bill's SUCCESS, FAIL or CANCELLED).

Example
-------
>>> payment_event("wechat", notification)  # doctest: +SKIP
ProviderEvent(channel='wechat', event_id='3119…', kind='payment_succeeded', merchant_ref='PAY-1', …)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chalicelib.payments.provider import ProviderEvent

if TYPE_CHECKING:
    from chalicelib.payments.provider import Channel, EventKind
    from chalicelib.payments.wechat_notify import Notification

_PAYMENT_STATES: dict[str, EventKind] = {"SUCCESS": "payment_succeeded", "CLOSED": "payment_closed"}
_REFUND_STATES: dict[str, EventKind] = {
    "SUCCESS": "refund_succeeded",
    "ABNORMAL": "refund_failed",
    "CLOSED": "refund_closed",
}


_PAYOUT_STATES: dict[str, EventKind] = {
    "SUCCESS": "payout_succeeded",
    "FAIL": "payout_failed",
    "CANCELLED": "payout_cancelled",
}


class MalformedEventError(ValueError):
    """A verified notification whose resource lacks what its type requires (alert: the provider changed)."""


def _text(resource: dict[str, Any], name: str) -> str:
    value = resource.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedEventError(f"resource field {name} missing")
    return value


def _amount(resource: dict[str, Any], name: str) -> tuple[int, str | None]:
    amount = resource.get("amount")
    if not isinstance(amount, dict) or not isinstance(amount.get(name), int) or isinstance(amount.get(name), bool):
        raise MalformedEventError(f"resource field amount.{name} missing")
    currency = amount.get("currency")
    return amount[name], currency if isinstance(currency, str) else None


def _whole_fen(resource: dict[str, Any], name: str) -> int:
    value = resource.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedEventError(f"resource field {name} missing")
    return value


def payment_event(channel: Channel, notification: Notification) -> ProviderEvent | None:
    """The event a ``TRANSACTION.*``, ``REFUND.*`` or ``MCHTRANSFER.*`` notification reports; None when there
    is none to act on."""
    resource = notification.resource
    if notification.event_type.startswith("TRANSACTION."):
        kind = _PAYMENT_STATES.get(str(resource.get("trade_state")))
        if kind is None:
            return None
        total, currency = _amount(resource, "total")
        return ProviderEvent(
            channel=channel,
            event_id=notification.id,
            kind=kind,
            merchant_ref=_text(resource, "out_trade_no"),
            provider_ref=resource.get("transaction_id") or None,
            amount_fen=total,
            currency=currency,
            occurred_at=resource.get("success_time") or notification.create_time,
            raw=resource,
        )
    if notification.event_type.startswith("REFUND."):
        kind = _REFUND_STATES.get(str(resource.get("refund_status")))
        if kind is None:
            return None
        refunded, _ = _amount(resource, "refund")
        return ProviderEvent(
            channel=channel,
            event_id=notification.id,
            kind=kind,
            merchant_ref=_text(resource, "out_refund_no"),
            provider_ref=resource.get("refund_id") or None,
            amount_fen=refunded,
            currency="CNY",
            occurred_at=resource.get("success_time") or notification.create_time,
            order_ref=_text(resource, "out_trade_no"),
            raw=resource,
        )
    if notification.event_type.startswith("MCHTRANSFER."):
        kind = _PAYOUT_STATES.get(str(resource.get("state")))
        if kind is None:
            return None
        fail_reason = resource.get("fail_reason")
        return ProviderEvent(
            channel=channel,
            event_id=notification.id,
            kind=kind,
            merchant_ref=_text(resource, "out_bill_no"),
            provider_ref=_text(resource, "transfer_bill_no"),
            amount_fen=_whole_fen(resource, "transfer_amount"),
            currency="CNY",
            occurred_at=resource.get("update_time") or notification.create_time,
            reason=fail_reason if isinstance(fail_reason, str) and fail_reason else None,
            raw=resource,
        )
    return None
