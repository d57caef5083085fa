"""What a payment's outcome does, whoever reports it: a verified callback or the follow-up job's query.

``apply_payment`` is the one transition function of both paths (reference/payments.md §6.3).
It checks the order is ours and the amount and currency match, then writes in one
transaction: the provider dedupe keys (event id, transaction id; kept forever), the
order's new state (conditional on its old one), and what the payment is for —

- an invitation: its transition and ``provider → escrow``; a payment for an invitation
  that was closed meanwhile is taken in and refunded at once;
- a tip: ``provider → doctor:available`` (less the tip fee), a notice to the doctor;
- a membership: ``provider → platform:membership`` and the membership extended.

A tip or membership paid after its order closed is honoured all the same. A repeat changes nothing; a ``CLOSED`` after
``SUCCESS`` is ignored and flagged.

Example
-------
>>> apply_payment(Outcome("PI3f", "succeeded", "tx1", 500, "CNY"), utc_now(), event_id="EV-1")  # doctest: +SKIP
'applied'
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pynamodb.exceptions import UpdateError

from chalicelib.clock import iso
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.invitations import engine, policy
from chalicelib.invitations.machine import AWAITING_PAYMENT, CLOSED, SYSTEM
from chalicelib.ledger import accounts
from chalicelib.ledger.journal import Posting, post
from chalicelib.models.invitations import Invitation
from chalicelib.models.ledger import PaymentOrder
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy
from chalicelib.notifications.outbox import add_notice
from chalicelib.observability import logger
from chalicelib.payments import orders, refunds
from chalicelib.payments.dedupe import add_seen, seen_key


class AmountMismatchError(Exception):
    """The provider reports another amount or currency than our order: never applied, always alerted."""


@dataclass(frozen=True)
class Outcome:
    """A payment's state as the provider reports it."""

    order_id: str
    state: str
    transaction_id: str | None = None
    amount_fen: int | None = None
    currency: str | None = None


def apply_payment(outcome: Outcome, now: datetime, *, event_id: str | None = None) -> str:
    """Apply a reported payment state; return ``applied``, ``duplicate``, ``ignored`` or ``unknown_order``.

    Raises ``AmountMismatchError`` when amount or currency differ from the order.
    """
    order = orders.get(outcome.order_id)
    if order is None:
        return "unknown_order"
    if outcome.state == "succeeded":
        if outcome.amount_fen != int(order.amount_fen) or (outcome.currency or "CNY") != order.currency:
            logger.error(
                "payment amount mismatch",
                extra={"order_id": order.order_id, "reported": outcome.amount_fen, "expected": int(order.amount_fen)},
            )
            raise AmountMismatchError(order.order_id)
        if order.status == "succeeded":
            if outcome.transaction_id and outcome.transaction_id != order.provider_ref:
                logger.error(
                    "second transaction for one order",
                    extra={"order_id": order.order_id, "txn": outcome.transaction_id},
                )
            return "duplicate"
        return _paid(order, outcome, now, event_id)
    if outcome.state == "closed":
        return _closed(order, now)
    return "ignored"


def _seen_keys(order: PaymentOrder, outcome: Outcome, event_id: str | None) -> list[str]:
    keys = [seen_key(order.channel, "txn", outcome.transaction_id or order.order_id)]
    if event_id:
        keys.append(seen_key(order.channel, "event", event_id))
    return keys


def _paid(order: PaymentOrder, outcome: Outcome, now: datetime, event_id: str | None) -> str:
    batch = Batch()
    add_seen(batch, _seen_keys(order, outcome, event_id), order.order_id, now)
    batch.update(
        "order",
        order,
        actions=[
            PaymentOrder.status.set("succeeded"),
            PaymentOrder.provider_ref.set(outcome.transaction_id or ""),
            PaymentOrder.paid_at.set(iso(now)),
            PaymentOrder.updated_at.set(iso(now)),
            PaymentOrder.work_queue.remove(),
            PaymentOrder.due_at.remove(),
        ],
        condition=PaymentOrder.status.is_in("pending", "closed"),
    )
    if order.purpose == "invitation":
        return _invitation_paid(order, batch, now)
    if order.status == "pending":  # a closed order freed its slot already
        orders.free_slot(batch, order)
    posting = _tip_posting(order, batch, now) if order.purpose == "tip" else _membership_posting(order, batch, now)
    try:
        post(posting, now, batch)
    except TransactionCancelledError:
        latest = orders.get(order.order_id)
        if latest is not None and latest.status == "succeeded":
            return "duplicate"
        raise busy() from None
    logger.info("paid", extra={"order_id": order.order_id, "purpose": order.purpose})
    return "applied"


def _tip_posting(order: PaymentOrder, batch: Batch, now: datetime) -> Posting:
    """A tip: to the doctor's available balance at once (after anything they owe), less the tip fee (0 by default)."""
    from chalicelib.ledger.wallet import earnings

    settings = get_settings()
    amount, doctor = int(order.amount_fen), order.beneficiary_id or ""
    fee = policy.share(amount, settings.tip_fee_bps)
    entries = {
        accounts.clearing_account(order.channel, order.order_id, settings.ledger_shards): -amount,
        **earnings(doctor, amount - fee),
    }
    if fee:
        entries[accounts.PLATFORM_TIPS] = fee
    add_notice(batch, invitation_id=order.reference, event="tipped", recipient_id=doctor, now=now)
    return Posting(f"tip:{order.order_id}", "tip", entries, f"invitation:{order.reference}", payer=order.payer_id)


def _membership_posting(order: PaymentOrder, batch: Batch, now: datetime) -> Posting:
    """A membership: the platform earns it; the hospital's membership starts or is extended."""
    from chalicelib.accounts.memberships import add_purchase

    amount = int(order.amount_fen)
    add_purchase(batch, order.payer_id, days=int(order.plan_days or 0), order_id=order.order_id, now=now)
    return Posting(
        f"membership:{order.order_id}",
        "membership",
        {
            accounts.clearing_account(order.channel, order.order_id, get_settings().ledger_shards): -amount,
            accounts.PLATFORM_MEMBERSHIP: amount,
        },
        f"membership:{order.payer_id}",
        payer=order.payer_id,
    )


def _invitation_paid(order: PaymentOrder, batch: Batch, now: datetime) -> str:
    settings = get_settings()
    invitation = engine.load(order.reference)
    amount = int(order.amount_fen)
    posting = Posting(
        f"pay:{order.order_id}",
        "payment",
        {
            accounts.clearing_account(order.channel, invitation.invitation_id, settings.ledger_shards): -amount,
            accounts.escrow(invitation.invitation_id): amount,
        },
        f"invitation:{invitation.invitation_id}",
        payer=order.payer_id,
    )
    refund_no = None
    if invitation.status == AWAITING_PAYMENT:
        name, actions = "pay", _on_paid(invitation, order, now)
        add_notice(
            batch,
            invitation_id=invitation.invitation_id,
            event="new_invitation",
            recipient_id=invitation.doctor_id,
            now=now,
        )
    elif invitation.status == CLOSED:
        invitation.channel = order.channel  # the refund goes back the way the money came
        refund_no = refunds.add_refund_order(
            batch,
            invitation,
            policy.full_refund(invitation.invitation_id, order.channel, amount, settings),
            amount_fen=amount,
            reason="paid after the invitation closed",
            now=now,
        )
        name, actions = (
            "pay_after_closing",
            [Invitation.channel.set(order.channel), Invitation.refund_order_id.set(refund_no)],
        )
    else:
        if invitation.payment_order_id == order.order_id and invitation.channel:
            return "duplicate"  # another copy applied this payment since we read the order
        logger.error("payment for an invitation that cannot take it", extra={"order_id": order.order_id})
        return "ignored"
    try:
        engine.move(
            invitation, name, actor=SYSTEM, actor_id=None, now=now, actions=actions, batch=batch, posting=posting
        )
    except ApiError:  # the transaction was cancelled: a repeat (seen, or the order moved) or a race
        latest = orders.get(order.order_id)
        if latest is not None and latest.status == "succeeded":
            return "duplicate"
        raise
    if refund_no is not None:
        logger.warning("payment after closing: refunding", extra={"order_id": order.order_id, "refund_no": refund_no})
        refunds.send_now(refund_no, now)
    return "applied"


def _on_paid(invitation: Invitation, order: PaymentOrder, now: datetime) -> list:
    """The invitation's changes on payment: the doctor sees it now and must answer by the deadline."""
    deadline = policy.response_deadline(now, datetime.fromisoformat(invitation.scheduled_at), get_settings())
    return [
        Invitation.channel.set(order.channel),
        Invitation.doctor_key.set(f"DOCTOR#{invitation.doctor_id}"),
        Invitation.response_deadline.set(iso(max(deadline, now))),
        Invitation.due_queue.set(engine.DUE_RESPONSE),
        Invitation.due_at.set(iso(max(deadline, now))),
    ]


def _closed(order: PaymentOrder, now: datetime) -> str:
    """The provider closed the order: close ours and the invitation; never after a success."""
    if order.status == "succeeded":
        logger.warning("closed after success ignored", extra={"order_id": order.order_id})
        try:
            order.update(
                actions=[PaymentOrder.flags.set((PaymentOrder.flags | []).append(["closed_after_success"]))],
                condition=PaymentOrder.status == "succeeded",
            )
        except UpdateError:  # the flag is a courtesy for operators; the log line is the alert
            logger.exception("could not flag the order")
        return "ignored"
    if order.status == "closed":
        return "duplicate"
    return orders.close(order, now)
