"""Refunds by the original path: stored with a stable number first, sent, followed until final.

A refund order (``RF<invitation id>``) is written in the same transaction as the decline,
expiry or cancellation that causes it, so it can never be forgotten. Then the provider is
asked (``request``); every retry reuses the number, so the provider refunds once. The
outcome — from the provider's answer, its callback, or the follow-up job's query — goes
through ``apply_state``, one path for all three:

- ``processing``: the invitation moves to ``refunding``; the job queries with backoff;
- ``succeeded``: ``escrow`` (or the doctor's pending share and the fee) → ``provider``,
  the invitation becomes ``refunded``, the payer is told;
- ``failed``: the order is flagged ``needs_attention`` for an operator and leaves the queue;
- a provider error: retried with backoff (flagged after ``ATTENTION_AFTER`` tries).

Example
-------
>>> number = add_refund_order(batch, invitation, entries, amount_fen=500, reason="declined", now=now)  # doctest: +SKIP
>>> request(number, now)  # after the batch is committed  # doctest: +SKIP
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from pynamodb.exceptions import DoesNotExist, UpdateError

from chalicelib.clock import iso
from chalicelib.errors import ApiError
from chalicelib.invitations import engine
from chalicelib.invitations.machine import CANCELLED, DECLINED, EXPIRED, NOT_DELIVERED, SYSTEM
from chalicelib.ledger.journal import Posting
from chalicelib.models.ledger import RefundOrder
from chalicelib.models.transactions import Batch, TransactionCancelledError
from chalicelib.notifications.outbox import add_notice
from chalicelib.observability import logger
from chalicelib.payments.dedupe import add_seen

if TYPE_CHECKING:
    from datetime import datetime

    from chalicelib.models.invitations import Invitation
    from chalicelib.payments.provider import RefundRequest

QUEUE = "WORK#refund"
ATTENTION_QUEUE = "WORK#refund_attention"
BACKOFF_SECONDS = (60, 300, 600, 1200, 1800)
"""WeChat's advice for refund queries: every minute, then 5/10/20/30 minutes."""
ATTENTION_AFTER = 5
"""Failed attempts after which an operator is asked to look (the job keeps retrying)."""
OPEN = ("requested", "processing")


def refund_number(invitation_id: str) -> str:
    """The one refund number of an invitation (a full or policy refund happens once)."""
    return f"RF{invitation_id}"


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=BACKOFF_SECONDS[min(attempts, len(BACKOFF_SECONDS) - 1)])


def get(refund_no: str) -> RefundOrder | None:
    try:
        return RefundOrder.get(f"ORDER#{refund_no}", "ORDER", consistent_read=True)
    except (DoesNotExist, ValueError):  # ValueError: the number is another kind of order (a payment)
        return None


def add_refund_order(
    batch: Batch, invitation: Invitation, entries: dict[str, int], *, amount_fen: int, reason: str, now: datetime
) -> str:
    """Add the refund order of ``invitation`` to ``batch``; return its number."""
    if invitation.payment_order_id is None or invitation.channel is None:
        raise ValueError("only a paid invitation can be refunded")
    number = refund_number(invitation.invitation_id)
    refund = RefundOrder(f"ORDER#{number}", "ORDER")
    refund.refund_no, refund.payment_order_id = number, invitation.payment_order_id
    refund.reference, refund.payer_id, refund.channel = (
        invitation.invitation_id,
        invitation.requester_id,
        invitation.channel,
    )
    refund.amount_fen, refund.total_fen, refund.reason = amount_fen, int(invitation.fee_fen), reason
    refund.entries, refund.status, refund.attempts = entries, "requested", 0
    refund.owner_key, refund.created_at, refund.updated_at = f"OWNER#{invitation.requester_id}", iso(now), iso(now)
    refund.work_queue, refund.due_at = QUEUE, iso(now)
    batch.put("refund_order", refund, condition=RefundOrder.pk.does_not_exist())
    return number


def request(refund_no: str, now: datetime) -> RefundOrder | None:
    """Ask the provider to refund (again, with the same number); apply what it answers."""
    from chalicelib.payments.provider import ProviderError
    from chalicelib.payments.registry import get_provider

    refund = get(refund_no)
    if refund is None or refund.status != "requested":
        return refund
    try:
        status = get_provider(refund.channel).refund(_request(refund))
    except ProviderError as error:
        _record_failure(refund, f"{error.code}: {error.message}", now, permanent=not error.retryable)
        return get(refund_no)
    apply_state(refund, status.state, status.refund_id, now)
    return get(refund_no)


def _request(refund: RefundOrder) -> RefundRequest:
    from chalicelib.payments.provider import RefundRequest

    return RefundRequest(
        refund.refund_no, refund.payment_order_id, int(refund.amount_fen), int(refund.total_fen), refund.reason
    )


def send_now(refund_no: str, now: datetime) -> None:
    """Send a refund just ordered, without failing the change that ordered it (already committed).

    Whatever goes wrong here, the order is stored and due: the follow-up job sends it again.
    """
    try:
        request(refund_no, now)
    except Exception:  # the transition committed; the job retries the refund
        logger.exception("refund not sent now; the follow-up job will", extra={"refund_no": refund_no})


def follow_up(refund: RefundOrder, now: datetime) -> None:
    """One step of the follow-up job: send a requested refund, or query a processing one."""
    from chalicelib.payments.provider import ProviderError
    from chalicelib.payments.registry import get_provider

    if refund.status == "requested":
        request(refund.refund_no, now)
        return
    provider = get_provider(refund.channel)
    try:
        try:
            status = provider.query_refund(refund.refund_no, refund.payment_order_id)
        except ProviderError as error:
            if error.code != "refund_not_found":
                raise
            # The provider kept no refund under this number (Alipay: fund_change N, nothing recorded):
            # ask again with the same number, which refunds at most once.
            status = provider.refund(_request(refund))
    except ProviderError as error:
        _record_failure(refund, f"{error.code}: {error.message}", now, permanent=False)
        return
    apply_state(refund, status.state, status.refund_id, now)


def apply_state(
    refund: RefundOrder, state: str, provider_ref: str | None, now: datetime, seen: tuple[str, ...] = ()
) -> str:
    """Apply a refund state reported by the provider; return what happened.

    ``seen`` are provider dedupe keys (``PROVIDER#…``) written with the change, so the
    same event is never applied twice. Returns ``applied``, ``duplicate`` or ``waiting``.
    """
    if refund.status == "succeeded" or (refund.status == "failed" and state != "succeeded"):
        return "duplicate"
    if state == "succeeded":  # also after "failed": an operator may have fixed it at the provider
        return _settle(refund, provider_ref, now, seen)
    if state == "processing":
        return _processing(refund, provider_ref, now)
    _fail(refund, provider_ref, f"provider reported {state}", now)
    return "applied"


def _settle(refund: RefundOrder, provider_ref: str | None, now: datetime, seen: tuple[str, ...]) -> str:
    invitation = engine.load(refund.reference)
    batch = Batch()
    add_seen(batch, seen, refund.refund_no, now)
    batch.update(
        "refund",
        refund,
        actions=[
            RefundOrder.status.set("succeeded"),
            RefundOrder.provider_ref.set(provider_ref or refund.provider_ref or ""),
            RefundOrder.refunded_at.set(iso(now)),
            RefundOrder.updated_at.set(iso(now)),
            RefundOrder.needs_attention.set(False),
            RefundOrder.work_queue.remove(),
            RefundOrder.due_at.remove(),
        ],
        condition=RefundOrder.status.is_in(*OPEN, "failed"),
    )
    add_notice(
        batch, invitation_id=invitation.invitation_id, event="refunded", recipient_id=invitation.requester_id, now=now
    )
    posting = Posting(
        f"refund:{refund.refund_no}",
        "refund",
        {account: int(amount) for account, amount in refund.entries.as_dict().items()},
        f"invitation:{invitation.invitation_id}",
        payer=refund.payer_id,
    )
    try:
        engine.move(invitation, "refund", actor=SYSTEM, actor_id=None, now=now, batch=batch, posting=posting)
    except (ApiError, TransactionCancelledError):
        latest = get(refund.refund_no)
        if latest is not None and latest.status == "succeeded":
            return "duplicate"
        raise
    logger.info("refund settled", extra={"refund_no": refund.refund_no, "amount_fen": int(refund.amount_fen)})
    return "applied"


def _processing(refund: RefundOrder, provider_ref: str | None, now: datetime) -> str:
    attempts = int(refund.attempts) + 1
    refund_actions = [
        RefundOrder.status.set("processing"),
        RefundOrder.attempts.set(attempts),
        RefundOrder.needs_attention.set(attempts >= ATTENTION_AFTER * 3),  # still not final after hours
        RefundOrder.updated_at.set(iso(now)),
        RefundOrder.due_at.set(iso(now + backoff(attempts - 1))),
    ]
    if provider_ref:
        refund_actions.append(RefundOrder.provider_ref.set(provider_ref))
    batch = Batch()
    batch.update("refund", refund, actions=refund_actions, condition=RefundOrder.status.is_in(*OPEN))
    invitation = engine.load(refund.reference)
    try:
        if invitation.status in (DECLINED, EXPIRED, CANCELLED, NOT_DELIVERED):
            engine.move(invitation, "start_refund", actor=SYSTEM, actor_id=None, now=now, batch=batch)
        else:
            batch.commit(RefundOrder._get_connection().connection)
    except (ApiError, TransactionCancelledError):
        return "duplicate"  # another path moved it first; the job looks again
    return "waiting"


def _fail(refund: RefundOrder, provider_ref: str | None, why: str, now: datetime) -> None:
    """The provider gave up on this refund (e.g. WeChat ABNORMAL): an operator must act."""
    actions = [
        RefundOrder.status.set("failed"),
        RefundOrder.needs_attention.set(True),
        RefundOrder.last_error.set(why),
        RefundOrder.work_queue.set(ATTENTION_QUEUE),
        RefundOrder.due_at.set(iso(now)),
        RefundOrder.updated_at.set(iso(now)),
    ]
    if provider_ref:
        actions.append(RefundOrder.provider_ref.set(provider_ref))
    try:
        refund.update(actions=actions, condition=RefundOrder.status.is_in(*OPEN))
    except UpdateError as error:  # a concurrent change won; the job looks again
        logger.warning("refund failure not recorded", extra={"refund_no": refund.refund_no, "error": str(error)})
        return
    logger.error("refund failed at the provider", extra={"refund_no": refund.refund_no, "why": why})


def _record_failure(refund: RefundOrder, why: str, now: datetime, *, permanent: bool) -> None:
    """A provider call failed: try again later with the same number; ask an operator after a few tries."""
    attempts = int(refund.attempts) + 1
    attention = permanent or attempts >= ATTENTION_AFTER
    try:
        refund.update(
            actions=[
                RefundOrder.attempts.set(attempts),
                RefundOrder.last_error.set(why[:500]),
                RefundOrder.needs_attention.set(attention),
                RefundOrder.due_at.set(iso(now + backoff(attempts - 1))),
                RefundOrder.updated_at.set(iso(now)),
            ],
            condition=RefundOrder.status.is_in(*OPEN) & (RefundOrder.attempts == refund.attempts),
        )
    except UpdateError as error:  # a concurrent attempt recorded first
        logger.warning("refund attempt not recorded", extra={"refund_no": refund.refund_no, "error": str(error)})
        return
    log = logger.error if attention else logger.warning
    log("refund attempt failed", extra={"refund_no": refund.refund_no, "attempts": attempts, "why": why})


def due(now: datetime, limit: int) -> list[RefundOrder]:
    """Refund orders whose next step is due (a Query on the sparse ``work_due`` index)."""
    return list(RefundOrder.by_work_due.query(QUEUE, RefundOrder.due_at <= iso(now), limit=limit))


def needing_attention(limit: int = 100) -> list[RefundOrder]:
    """Refunds an operator must look at: failed at the provider, or still failing after retries.

    Both lists are Queries of the sparse ``work_due`` index: it holds open refunds only.
    """
    failed = list(RefundOrder.by_work_due.query(ATTENTION_QUEUE, limit=limit))
    retrying = RefundOrder.by_work_due.query(QUEUE, filter_condition=RefundOrder.needs_attention == True)  # noqa: E712
    return (failed + list(retrying))[:limit]
