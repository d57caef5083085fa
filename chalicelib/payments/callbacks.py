"""Provider callbacks: verify, decrypt, check it is our order and amount, apply once, answer as expected.

Nothing is read or written before the adapter has verified the raw body (signature,
timestamp window, serial allow-list). Then:

- an order or refund that is not ours → acknowledged (the provider would retry for a day
  otherwise), quarantined for an operator, logged;
- an amount or currency that differs from ours → refused (4xx), nothing changes, alert;
- a repeat (same event, same transaction) or a stale state (``CLOSED`` after ``SUCCESS``)
  → acknowledged, nothing changes, logged;
- a concurrent change → 409, so the provider retries later.

WeChat expects 200/204 for success and 4xx/5xx with ``{"code": "FAIL", ...}`` otherwise.

Example
-------
>>> handle("sandbox", request.headers, request.raw_body, utc_now())  # doctest: +SKIP
HttpReply(status=204, body='', content_type='application/json')
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING

from pynamodb.exceptions import PutError

from chalicelib.clock import iso
from chalicelib.errors import ApiError
from chalicelib.models.ledger import QuarantinedEvent
from chalicelib.observability import logger
from chalicelib.payments.provider import HttpReply

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from chalicelib.payments.provider import ProviderEvent

QUARANTINE_LIST = "LEDGER#QUARANTINE"
REFUND_STATES = {"refund_succeeded": "succeeded", "refund_failed": "failed", "refund_closed": "failed"}


def _fail(status: int, message: str) -> HttpReply:
    return HttpReply(status, json.dumps({"code": "FAIL", "message": message}, ensure_ascii=False))


def handle(channel: str, headers: Mapping[str, str], body: bytes, now: datetime) -> HttpReply:
    """Answer one callback of ``channel``."""
    from chalicelib.payments.registry import CHANNELS, get_provider
    from chalicelib.payments.wechat_events import MalformedEventError
    from chalicelib.payments.wechat_notify import NotificationRejected

    not_found = ApiError(404, "provider_not_found", f"No callbacks are taken for {channel!r} here", "不支持该渠道")
    if channel not in CHANNELS:
        raise not_found
    try:
        provider = get_provider(channel)
    except ApiError:
        raise not_found from None
    try:
        event = provider.parse_callback(headers, body, now)
    except NotificationRejected as rejected:
        logger.warning("callback rejected", extra={"channel": channel, "reason": rejected.reason})
        if rejected.reason == "decryption_failed":  # our key or theirs changed: retry later, and alert
            logger.error("callback does not decrypt with our key", extra={"channel": channel})
            return _fail(500, "解密失败")
        if rejected.reason in ("malformed_body", "unsupported_algorithm"):
            return _fail(400, "报文格式错误")
        if rejected.reason == "wrong_merchant":  # signed by the provider, but for another merchant or app
            logger.error("callback for another merchant", extra={"channel": channel, "detail": rejected.detail})
            return _fail(400, "商户信息不符")
        return _fail(401, "签名验证失败")
    except MalformedEventError as error:
        logger.error("verified callback without the fields it needs", extra={"channel": channel, "error": str(error)})
        return _fail(500, "报文格式错误")
    if event is None:
        logger.info("callback acknowledged, nothing to do", extra={"channel": channel})
        return provider.acknowledge(True)
    try:
        outcome = _apply(event, now)
    except ApiError as error:
        logger.warning("callback met a concurrent change", extra={"event_id": event.event_id, "code": error.code})
        return _fail(409, "处理冲突，请重试")
    logger.info(
        "callback", extra={"channel": channel, "event_id": event.event_id, "kind": event.kind, "outcome": outcome}
    )
    if outcome == "amount_mismatch":
        return _fail(400, "金额不符")
    return provider.acknowledge(True)


def _apply(event: ProviderEvent, now: datetime) -> str:
    from chalicelib.payments import refunds, settlement

    if event.kind in ("payment_succeeded", "payment_closed"):
        state = "succeeded" if event.kind == "payment_succeeded" else "closed"
        outcome = settlement.Outcome(event.merchant_ref, state, event.provider_ref, event.amount_fen, event.currency)
        try:
            result = settlement.apply_payment(outcome, now, event_id=event.event_id)
        except settlement.AmountMismatchError:
            return "amount_mismatch"
    elif event.kind.startswith("payout_"):
        from chalicelib.payouts import transfers

        result = transfers.apply_event(event, now)
        if result == "amount_mismatch":
            return result
    else:
        refund = refunds.get(event.merchant_ref)
        if refund is None or (event.order_ref and event.order_ref != refund.payment_order_id):
            result = "unknown_order"
        elif event.amount_fen != int(refund.amount_fen):
            logger.error("refund amount mismatch", extra={"refund_no": refund.refund_no, "reported": event.amount_fen})
            return "amount_mismatch"
        else:
            seen = (settlement.seen_key(event.channel, "event", event.event_id),)
            result = refunds.apply_state(refund, REFUND_STATES[event.kind], event.provider_ref, now, seen)
    if result == "unknown_order":
        _quarantine(event, now)
    return result


def _quarantine(event: ProviderEvent, now: datetime) -> None:
    """Keep a verified callback for an order that is not ours, for an operator to look at."""
    item = QuarantinedEvent(f"QUARANTINE#{event.channel}#{event.event_id}", "EVENT")
    item.channel, item.event_id, item.kind, item.merchant_ref = (
        event.channel,
        event.event_id,
        event.kind,
        event.merchant_ref,
    )
    item.reason, item.owner_key, item.created_at = "unknown_order", QUARANTINE_LIST, iso(now)
    with contextlib.suppress(PutError):  # quarantined by an earlier delivery
        item.save(condition=QuarantinedEvent.pk.does_not_exist())
    logger.error(
        "callback for an order that is not ours", extra={"channel": event.channel, "merchant_ref": event.merchant_ref}
    )
