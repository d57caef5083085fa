"""The payout settlement (C10): requested withdrawals are paid out and followed until final.

The scheduled job takes due payout orders from the sparse ``WORK#payout`` queue
(``due``) and moves each one step (``follow_up``):

- ``requested``, never sent (``attempts == 0``): ``attempts`` becomes 1 by a conditional
  write *before* the provider is called, then the answer is applied. A crash after the
  call therefore leads to a query, never to a blind second transfer;
- ``requested`` after a call whose outcome is unknown (timeout, 5xx): the provider is
  queried first; only ``payout_not_found`` sends it again, with the SAME ``out_bill_no``;
- ``processing`` / ``wait_user_confirm`` (WeChat holds the transfer until the doctor
  confirms it, and fails it after 24 h): queried with backoff until final.

``apply_status`` is the one transition function for every report — the provider's answer,
a query, a callback (``apply_event``):

- ``succeeded``: ``doctor:payout → provider`` (the money has left), the order leaves the queue;
- ``failed`` / ``cancelled``: ``doctor:payout → doctor:available`` and the day's withdrawn
  total lowered again (the limit comes back), with the provider's reason for the doctor;
- ``processing`` / ``wait_user_confirm``: the state, the provider's bill id and the
  ``package_info`` the doctor's WeChat needs are kept; the next check is scheduled.

A final state is written once, in one transaction conditional on the order being open
(with the posting and the callback's dedupe key). It never changes again: the same state
again is a ``duplicate``; another final state is logged as an error and ignored. A
reported amount other than the order's is never applied (``amount_mismatch``, an error).

Example
-------
>>> for order in due(utc_now(), 100):  # doctest: +SKIP
...     follow_up(order, utc_now())
'waiting'
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pynamodb.exceptions import UpdateError

from chalicelib.clock import iso
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.ledger import accounts as ledger_accounts
from chalicelib.ledger.journal import Posting, post
from chalicelib.models.ledger import PayoutOrder, WithdrawalDay
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy
from chalicelib.observability import logger
from chalicelib.payments.dedupe import add_seen
from chalicelib.payouts.withdrawals import FINAL, QUEUE, get, payee_of

if TYPE_CHECKING:
    from datetime import datetime

    from chalicelib.payments.provider import PayoutRequest, PayoutStatus, ProviderError, ProviderEvent

OPEN = ("requested", "processing", "wait_user_confirm")
BACKOFF_SECONDS = (60, 300, 600, 1800, 3600)
"""Checks of an open payout: after 1, 5, 10 and 30 minutes, then hourly."""
ATTENTION_AFTER = 5
"""Checks after which a failing provider call asks an operator to look (the job keeps retrying;
the next answer the provider gives clears the flag)."""
REMARK = "麻醉平台提现"
"""What the payee's WeChat or bank statement shows (WeChat: at most 32 characters)."""
EVENT_STATES = {"payout_succeeded": "succeeded", "payout_failed": "failed", "payout_cancelled": "cancelled"}


def backoff(checks: int) -> timedelta:
    """The wait before the next check, after ``checks`` checks (0: the first)."""
    return timedelta(seconds=BACKOFF_SECONDS[min(max(checks, 0), len(BACKOFF_SECONDS) - 1)])


def due(now: datetime, limit: int) -> list[PayoutOrder]:
    """Open payout orders whose next step is due (a Query on the sparse ``work_due`` index)."""
    return list(PayoutOrder.by_work_due.query(QUEUE, PayoutOrder.due_at <= iso(now), limit=limit))


def needing_attention(limit: int = 100) -> list[PayoutOrder]:
    """Open payouts still failing after ``ATTENTION_AFTER`` tries (for an operator)."""
    found = PayoutOrder.by_work_due.query(QUEUE, filter_condition=PayoutOrder.needs_attention == True)  # noqa: E712
    return list(found)[:limit]


def follow_up(order: PayoutOrder, now: datetime) -> str:
    """One step of the job for ``order``; returns what happened (``applied``, ``waiting``, ``retry``, ...)."""
    from chalicelib.payments.provider import ProviderError
    from chalicelib.payments.registry import get_provider

    current = get(order.out_bill_no)  # the queue's copy may be stale
    if current is None or current.status not in OPEN:
        return "duplicate"
    if current.status == "requested" and int(current.attempts) == 0:
        return _send(current, now)
    provider = get_provider(current.channel)
    try:
        status = provider.query_payout(current.out_bill_no)
        if status.state == "wait_user_confirm" and not (status.package_info or current.package_info):
            # A transfer query carries no package_info; the first answer was lost. The same bill
            # asked again with the same number answers it (the provider pays once).
            status = provider.payout(_request(current))
    except ProviderError as error:
        if error.code == "payout_not_found" and current.status == "requested":
            return _send(current, now)  # the unknown call never reached the provider: send it, same number
        if error.code == "payout_not_found":
            logger.error("accepted payout unknown to the provider", extra={"out_bill_no": current.out_bill_no})
        return _record_failure(current, f"{error.code}: {error.message}", now)
    return apply_status(current, status, now)


def _request(order: PayoutOrder) -> PayoutRequest:
    from chalicelib.payments.provider import PayoutRequest

    return PayoutRequest(order.out_bill_no, int(order.amount_fen), order.payee_kind, payee_of(order), REMARK)  # type: ignore[arg-type]


def _send(order: PayoutOrder, now: datetime) -> str:
    """Claim the next call (``attempts + 1``, conditionally), then call ``payout`` with the stored number."""
    from chalicelib.payments.provider import ProviderError
    from chalicelib.payments.registry import get_provider

    attempts = int(order.attempts) + 1
    try:
        order.update(
            actions=[
                PayoutOrder.attempts.set(attempts),
                PayoutOrder.due_at.set(iso(now + backoff(int(order.checks)))),
                PayoutOrder.updated_at.set(iso(now)),
            ],
            condition=(PayoutOrder.status == "requested") & (PayoutOrder.attempts == int(order.attempts)),
        )
    except UpdateError:  # another run claimed this call
        return "duplicate"
    try:
        status = get_provider(order.channel).payout(_request(order))
    except ProviderError as error:
        if error.retryable:  # the outcome is unknown: the next step queries before any resend
            return _record_failure(order, f"{error.code}: {error.message}", now)
        return _refused(order, error, now)
    logger.info("payout sent", extra={"out_bill_no": order.out_bill_no, "attempts": attempts, "state": status.state})
    return apply_status(order, status, now)


def _refused(order: PayoutOrder, error: ProviderError, now: datetime) -> str:
    """A refused transfer gives the money back only once the provider holds none under this number.

    A resend after a lost answer may be refused (a code we do not know, "already processing")
    while the first transfer goes on and pays: returning the money then would pay it twice.
    """
    from chalicelib.payments.provider import ProviderError
    from chalicelib.payments.registry import get_provider

    try:
        status = get_provider(order.channel).query_payout(order.out_bill_no)
    except ProviderError as query_error:
        if query_error.code != "payout_not_found":  # cannot tell: ask again later, never fail blind
            return _record_failure(order, f"{error.code}: {error.message}", now)
        logger.warning("payout refused", extra={"out_bill_no": order.out_bill_no, "code": error.code})
        return _end(order, "failed", error.code, None, now, ())
    return apply_status(order, status, now)


def apply_status(order: PayoutOrder, status: PayoutStatus, now: datetime, seen: tuple[str, ...] = ()) -> str:
    """Apply what the provider reports for ``order``; return ``applied``, ``waiting``, ``duplicate``,
    ``ignored`` or ``amount_mismatch``.

    ``seen`` are provider dedupe keys (``PROVIDER#…``) written with a final change, so one
    event is never applied twice.
    """
    if status.amount_fen is not None and int(status.amount_fen) != int(order.amount_fen):
        logger.error(
            "payout amount mismatch",
            extra={"out_bill_no": order.out_bill_no, "reported": status.amount_fen, "expected": int(order.amount_fen)},
        )
        return "amount_mismatch"
    if order.status in FINAL:
        return _after_final(order, status.state)
    if status.state == "succeeded":
        return _settle(order, status.bill_id, now, seen)
    if status.state in ("failed", "cancelled"):
        return _end(order, status.state, status.fail_reason or status.state, status.bill_id, now, seen)
    return _progress(order, status, now)


def apply_event(event: ProviderEvent, now: datetime) -> str:
    """A verified payout callback: ``applied``, ``duplicate``, ``ignored``, ``unknown_order`` or ``amount_mismatch``."""
    from chalicelib.payments.dedupe import seen_key
    from chalicelib.payments.provider import PayoutStatus

    order = get(event.merchant_ref)
    if order is None or order.channel != event.channel or event.kind not in EVENT_STATES:
        return "unknown_order"
    status = PayoutStatus(
        order.out_bill_no,
        EVENT_STATES[event.kind],  # type: ignore[arg-type]
        event.provider_ref,
        event.amount_fen,
        None,
        event.reason,
    )
    return apply_status(order, status, now, (seen_key(event.channel, "event", event.event_id),))


def _after_final(order: PayoutOrder, state: str) -> str:
    if state == order.status:
        return "duplicate"
    if state in FINAL:
        logger.error(
            "payout reported in another final state; ignored",
            extra={"out_bill_no": order.out_bill_no, "status": order.status, "reported": state},
        )
    return "ignored"


def _final_actions(state: str, provider_ref: str | None, now: datetime) -> list[Any]:
    actions = [
        PayoutOrder.status.set(state),
        PayoutOrder.settled_at.set(iso(now)),
        PayoutOrder.updated_at.set(iso(now)),
        PayoutOrder.needs_attention.set(False),
        PayoutOrder.package_info.remove(),
        PayoutOrder.work_queue.remove(),
        PayoutOrder.due_at.remove(),
    ]
    if provider_ref:
        actions.append(PayoutOrder.provider_ref.set(provider_ref))
    return actions


def _commit_final(order: PayoutOrder, state: str, posting: Posting, batch: Batch, now: datetime) -> str:
    """Post ``posting`` with ``batch``; a lost race with another report of the same state is a duplicate."""
    try:
        posted = post(posting, now, batch)
    except (TransactionCancelledError, ApiError) as error:
        if isinstance(error, ApiError) and error.code != "conflict":
            raise
        latest = get(order.out_bill_no)
        if latest is not None and latest.status in FINAL:
            return _after_final(latest, state)
        if isinstance(error, TransactionCancelledError) and any(name.startswith("seen:") for name in error.failed):
            return "duplicate"  # this event was applied before
        raise busy() from None
    if not posted:  # the movement exists while the order was open: nothing was written now
        logger.error("payout posting exists for an open order", extra={"out_bill_no": order.out_bill_no})
        return "duplicate"
    return "applied"


def _settle(order: PayoutOrder, provider_ref: str | None, now: datetime, seen: tuple[str, ...]) -> str:
    """The transfer succeeded: the money has left, ``doctor:payout → provider``."""
    amount, number = int(order.amount_fen), order.out_bill_no
    batch = Batch()
    add_seen(batch, seen, number, now)
    batch.update(
        "payout_order",
        order,
        actions=_final_actions("succeeded", provider_ref, now),
        condition=PayoutOrder.status.is_in(*OPEN),
    )
    clearing = ledger_accounts.clearing_account(order.channel, number, get_settings().ledger_shards)
    posting = Posting(
        f"payout:{number}",
        "payout",
        {ledger_accounts.doctor_payout(order.doctor_id): -amount, clearing: amount},
        f"withdrawal:{number}",
    )
    outcome = _commit_final(order, "succeeded", posting, batch, now)
    if outcome == "applied":
        logger.info("payout succeeded", extra={"out_bill_no": number, "amount_fen": amount})
    return outcome


def _end(
    order: PayoutOrder, state: str, reason: str, provider_ref: str | None, now: datetime, seen: tuple[str, ...]
) -> str:
    """The transfer failed or was cancelled: the money goes back to ``available``, the day's limit too."""
    amount, number = int(order.amount_fen), order.out_bill_no
    batch = Batch()
    add_seen(batch, seen, number, now)
    batch.update(
        "payout_order",
        order,
        actions=[*_final_actions(state, provider_ref, now), PayoutOrder.fail_reason.set(reason[:200])],
        condition=PayoutOrder.status.is_in(*OPEN),
    )
    # Inside this transaction, whose order and journal conditions fail on any repeat, the ADD applies once.
    batch.update(
        "withdrawal_day",
        WithdrawalDay(f"WITHDRAWN#{order.doctor_id}", order.requested_on),
        actions=[WithdrawalDay.item_type.set(WithdrawalDay), WithdrawalDay.total_fen.add(-amount)],
    )
    posting = Posting(
        f"payout_return:{number}",
        "payout_return",
        {
            ledger_accounts.doctor_payout(order.doctor_id): -amount,
            ledger_accounts.doctor_available(order.doctor_id): amount,
        },
        f"withdrawal:{number}",
    )
    outcome = _commit_final(order, state, posting, batch, now)
    if outcome == "applied":
        logger.warning("payout returned", extra={"out_bill_no": number, "state": state, "reason": reason})
    return outcome


def _progress(order: PayoutOrder, status: PayoutStatus, now: datetime) -> str:
    """Not final yet: keep the state, bill id and ``package_info``; check again later."""
    checks = int(order.checks) + 1
    actions = [
        PayoutOrder.status.set(status.state),
        PayoutOrder.checks.set(checks),
        PayoutOrder.due_at.set(iso(now + backoff(checks - 1))),
        PayoutOrder.updated_at.set(iso(now)),
        PayoutOrder.needs_attention.set(False),  # the provider answers again
    ]
    if status.bill_id:
        actions.append(PayoutOrder.provider_ref.set(status.bill_id))
    if status.package_info:
        actions.append(PayoutOrder.package_info.set(status.package_info))
    elif status.state != "wait_user_confirm":
        actions.append(PayoutOrder.package_info.remove())
    try:
        order.update(actions=actions, condition=PayoutOrder.status.is_in(*OPEN))
    except UpdateError:  # a final report won meanwhile
        return "duplicate"
    return "waiting"


def _record_failure(order: PayoutOrder, why: str, now: datetime) -> str:
    """A provider call failed: check again later (same number); ask an operator after a few tries."""
    checks = int(order.checks) + 1
    attention = checks >= ATTENTION_AFTER
    try:
        order.update(
            actions=[
                PayoutOrder.checks.set(checks),
                PayoutOrder.last_error.set(why[:500]),
                PayoutOrder.needs_attention.set(attention),
                PayoutOrder.due_at.set(iso(now + backoff(checks - 1))),
                PayoutOrder.updated_at.set(iso(now)),
            ],
            condition=PayoutOrder.status.is_in(*OPEN) & (PayoutOrder.checks == int(order.checks)),
        )
    except UpdateError:  # a concurrent step recorded first
        return "duplicate"
    log = logger.error if attention else logger.warning
    log("payout call failed", extra={"out_bill_no": order.out_bill_no, "checks": checks, "why": why})
    return "retry"
