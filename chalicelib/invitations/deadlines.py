"""The scheduled work of the flow, read from sparse queues: a run costs what is due, not the table.

- ``expire_due``: paid invitations the doctor did not answer by the deadline → expired, refunded;
- ``confirm_due``: completed invitations whose confirmation hold ran out → confirmed, released;
- ``follow_up_payments``: pending payment orders → queried (a callback may be lost), closed at the window's end;
  invitations that never opened an order → closed at the window's end;
- ``follow_up_refunds``: refunds → sent again with the same number, or queried, until final;
- ``settle_payouts``: withdrawals → paid out with their stable number, followed until final;
- ``lift_penalties``: confirmed complaints whose penalty period passed → lifted (the stream
  gives the star level back).

Each item is handled on its own: one that fails is logged and stays due for the next run;
a race with a person (the doctor accepting at the deadline) is settled by the conditional
write, and the loser is counted as ``skipped``.

Example
-------
>>> expire_due(utc_now())  # doctest: +SKIP
{'due': 3, 'done': 3, 'skipped': 0, 'failed': 0}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chalicelib.clock import iso
from chalicelib.errors import ApiError
from chalicelib.invitations import engine
from chalicelib.invitations.machine import SYSTEM
from chalicelib.models.invitations import Invitation
from chalicelib.observability import logger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from datetime import datetime

BATCH = 100
"""Items one run takes from a queue; the next run (minutes later) takes the rest."""


def _run(job: str, items: Iterable[Any], step: Callable[[Any], Any], key: Callable[[Any], str]) -> dict[str, int]:
    report = {"due": 0, "done": 0, "skipped": 0, "failed": 0}
    for item in items:
        report["due"] += 1
        try:
            step(item)
        except ApiError as error:  # someone else moved it first: nothing to do
            report["skipped"] += 1
            logger.info(f"{job}: skipped", extra={"item": key(item), "code": error.code})
        except Exception:
            report["failed"] += 1
            logger.exception(f"{job}: failed", extra={"item": key(item)})
        else:
            report["done"] += 1
    logger.info(job, extra=report)
    return report


def _due_invitations(queue: str, now: datetime, limit: int) -> Iterable[Invitation]:
    return Invitation.by_due.query(queue, Invitation.due_at <= iso(now), limit=limit)


def expire_due(now: datetime, limit: int = BATCH) -> dict[str, int]:
    from chalicelib.invitations import service

    return _run(
        "expire_invitations",
        _due_invitations(engine.DUE_RESPONSE, now, limit),
        lambda item: service.expire(engine.load(item.invitation_id), now),
        lambda item: item.invitation_id,
    )


def confirm_due(now: datetime, limit: int = BATCH) -> dict[str, int]:
    from chalicelib.invitations import service

    return _run(
        "auto_confirm",
        _due_invitations(engine.DUE_HOLD, now, limit),
        lambda item: service.release(engine.load(item.invitation_id), SYSTEM, None, now),
        lambda item: item.invitation_id,
    )


def follow_up_payments(now: datetime, limit: int = BATCH) -> dict[str, int]:
    from chalicelib.invitations import service
    from chalicelib.payments import orders

    orders_report = _run(
        "follow_up_payments",
        orders.due(now, limit),
        lambda order: orders.follow_up(order, now),
        lambda order: order.order_id,
    )
    unpaid_report = _run(
        "lapse_unpaid",
        _due_invitations(engine.DUE_PAYMENT, now, limit),
        lambda item: service.lapse_unpaid(engine.load(item.invitation_id), now),
        lambda item: item.invitation_id,
    )
    return {name: orders_report[name] + unpaid_report[name] for name in orders_report}


def follow_up_refunds(now: datetime, limit: int = BATCH) -> dict[str, int]:
    from chalicelib.payments import refunds

    return _run(
        "follow_up_refunds",
        refunds.due(now, limit),
        lambda refund: refunds.follow_up(refund, now),
        lambda refund: refund.refund_no,
    )


def settle_payouts(now: datetime, limit: int = BATCH) -> dict[str, int]:
    from chalicelib.payouts import transfers

    return _run(
        "settle_payouts",
        transfers.due(now, limit),
        lambda order: transfers.follow_up(order, now),
        lambda order: order.out_bill_no,
    )


def lift_penalties(now: datetime, limit: int = BATCH) -> dict[str, int]:
    from chalicelib.reputation import complaints

    return _run(
        "lift_penalties",
        complaints.penalties_due(now, limit),
        lambda complaint: complaints.lift(complaint, now),
        lambda complaint: complaint.complaint_id,
    )
