"""Firing a transition: one conditional write on the expected status, with its effects, at once.

``move`` plans the transition with ``machine.plan`` (who may, from which status), then
writes in ONE ``TransactWriteItems``: the invitation's new status and history entry
(condition: the status it read), the caller's other actions (capacity, orders, notices,
counters) and, when money moves, the ledger posting. If another request changed the
invitation first, nothing is written and the caller gets 409 ``invalid_transition`` with
the status it now has. ``fire`` does the same and reads the invitation back.

Example
-------
>>> invitation = load("i1")  # doctest: +SKIP
>>> fire(invitation, "decline", actor=DOCTOR, actor_id="d1", now=utc_now(), reason="Not free")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pynamodb.exceptions import DoesNotExist

from chalicelib.clock import iso
from chalicelib.errors import ApiError
from chalicelib.invitations.machine import plan
from chalicelib.ledger.journal import post
from chalicelib.models.invitations import Invitation, StatusChange
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from datetime import datetime

    from chalicelib.ledger.journal import Posting

NOT_FOUND = ApiError(404, "invitation_not_found", "No invitation with this id is yours to see", "找不到该邀请")
INVITATION_ACTION = "invitation"
DUE_PAYMENT = "DUE#payment"
"""The sparse ``due`` queue of new invitations without a payment order, by the end of the time to pay
(opening an order takes an invitation off it: the order's follow-up then closes it if unpaid)."""
DUE_RESPONSE = "DUE#response"
"""The sparse ``due`` queue of paid invitations waiting for the doctor, by answer deadline."""
DUE_HOLD = "DUE#hold"
"""The sparse ``due`` queue of completed invitations, by the end of the requester's confirmation hold."""


def load(invitation_id: str) -> Invitation:
    """The invitation, read consistently; 404 ``invitation_not_found`` when there is none."""
    try:
        return Invitation.get(f"INVITATION#{invitation_id}", "META", consistent_read=True)
    except DoesNotExist:
        raise NOT_FOUND from None


def change(
    now: datetime, transition: str, status: str, actor: str, actor_id: str | None, reason: str | None = None
) -> StatusChange:
    """A history entry."""
    return StatusChange(
        at=iso(now), transition=transition, status=status, actor=actor, actor_id=actor_id, reason=reason
    )


def plan_or_raise(invitation: Invitation, name: str, actor: str) -> None:
    """Check early (before reading more) that ``actor`` may fire ``name`` now: 403/409 otherwise."""
    plan(name, status=invitation.status, actor=actor)


def move(
    invitation: Invitation,
    name: str,
    *,
    actor: str,
    actor_id: str | None,
    now: datetime,
    reason: str | None = None,
    actions: Iterable[Any] = (),
    batch: Batch | None = None,
    posting: Posting | None = None,
    refusals: Callable[[list[str]], ApiError | None] | None = None,
    require: Any = None,
) -> None:
    """Move ``invitation`` by the transition ``name`` (for a caller that needs nothing back: see ``fire``).

    ``actions`` are further PynamoDB update actions on the invitation; ``batch`` holds the
    transition's other writes, named; ``refusals`` turns the names of those whose
    condition failed into the error the client should see; ``require`` is a further
    condition on the invitation (its failure is a 409 ``conflict``).
    """
    step = plan(name, status=invitation.status, actor=actor)
    if step.reason_required and not reason:
        raise ApiError(422, "reason_required", "Give a reason", "请填写原因", {"field": "reason"})
    entry = change(now, name, step.target, actor, actor_id, reason)
    batch = batch or Batch()
    batch.update(
        INVITATION_ACTION,
        invitation,
        actions=[
            Invitation.status.set(step.target),
            Invitation.history.set(Invitation.history.append([entry])),
            Invitation.revision.add(1),
            Invitation.updated_at.set(iso(now)),
            *actions,
        ],
        condition=(Invitation.status == invitation.status) & require
        if require is not None
        else Invitation.status == invitation.status,
    )
    try:
        if posting is None:
            batch.commit(Invitation._get_connection().connection)
        elif not post(posting, now, batch):
            raise busy()  # the posting exists but this status change did not happen: never both
    except TransactionCancelledError as cancelled:
        if INVITATION_ACTION in cancelled.failed:
            current = load(invitation.invitation_id)
            plan(name, status=current.status, actor=actor)  # raises 409 invalid_transition
            raise busy() from None
        refused = refusals(cancelled.failed) if refusals and cancelled.failed else None
        if refused is not None:
            raise refused from None
        raise busy() from None


def fire(invitation: Invitation, name: str, **transition: Any) -> Invitation:
    """``move``, then the invitation as stored afterwards (a transaction returns nothing: one read).

    >>> fire(invitation, "accept", actor=DOCTOR, actor_id="d1", now=now, batch=batch)  # doctest: +SKIP
    Invitation(status='accepted', ...)
    """
    move(invitation, name, **transition)
    return load(invitation.invitation_id)
