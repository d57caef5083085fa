"""Complaints (C8, C7): the requester complains; the back office confirms or rejects.

- **Filing**: the requester of an accepted invitation whose time has come, or of a
  completed or confirmed one (within ``COMPLAINT_WINDOW_DAYS`` of confirmation), files
  one complaint: a category and details. The doctor is told.
- **Confirming** lowers the doctor's level by ``COMPLAINT_PENALTY_STARS`` for
  ``COMPLAINT_PENALTY_DAYS`` (through the stream, like every reputation change). With
  ``refund: true`` (the service was not delivered) the invitation moves to
  ``not_delivered`` and the requester is refunded in full by the original path: the
  doctor's share comes back from ``doctor:pending`` (not yet released) or from
  ``doctor:available`` (released) — and what the available balance cannot cover is
  recorded as the doctor's receivable, paid back from their next earnings — and the
  platform fee from ``platform:fees``. That money waits in ``claim:<invitation>`` until
  the provider confirms the refund.
- **Rejecting** records the reason. Either decision notifies both sides.
- ``lift_due`` (the ``lift_penalties`` job) ends penalties whose period has passed.

Example
-------
>>> file(patient, "i1", ComplaintRequest(category="not_delivered", details="Nobody came"), now)  # doctest: +SKIP
(201, {'complaint_id': 'CPi1', 'status': 'open', ...})
>>> confirm(admin, "CPi1", Decision(reason="Confirmed with the ward", refund=True), now)  # doctest: +SKIP
{'complaint_id': 'CPi1', 'status': 'confirmed', 'refund_fen': 50000, ...}
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from pynamodb.exceptions import DoesNotExist, UpdateError

from chalicelib.clock import iso, iso_precise
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.invitations import engine
from chalicelib.invitations.machine import ACCEPTED, ADMIN, COMPLETED, CONFIRMED
from chalicelib.ledger import accounts
from chalicelib.ledger.journal import Posting, balance
from chalicelib.models.invitations import Complaint, Invitation
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy
from chalicelib.models.users import Account
from chalicelib.notifications.outbox import add_notice
from chalicelib.pagination import decode_cursor, encode_cursor, read_page

if TYPE_CHECKING:
    from chalicelib.accounts.roles import Principal

COMPLAINT_SK = "FEEDBACK#COMPLAINT"
PENALTY_QUEUE = "DUE#penalty"
"""The sparse ``due`` queue of confirmed complaints, by the end of their penalty."""
STATUSES = ("open", "confirmed", "rejected")
CATEGORIES = ("not_delivered", "late", "poor_quality", "conduct", "billing", "other")
NOT_FOUND = ApiError(404, "complaint_not_found", "No complaint has this id", "找不到该投诉")


class ComplaintRequest(msgspec.Struct, forbid_unknown_fields=True):
    category: Literal["not_delivered", "late", "poor_quality", "conduct", "billing", "other"]
    details: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]


class Decision(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    refund: bool = False


class ComplaintQuery(msgspec.Struct, forbid_unknown_fields=True):
    status: Literal["open", "confirmed", "rejected"] = "open"
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    cursor: Annotated[str, msgspec.Meta(max_length=2048)] | None = None


def complaint_id_of(invitation_id: str) -> str:
    """One complaint per invitation, so its id follows from the invitation's."""
    return f"CP{invitation_id}"


def view(complaint: Complaint) -> dict[str, Any]:
    """A complaint as its requester, its doctor and the back office see it."""
    return {
        "complaint_id": complaint.complaint_id,
        "invitation_id": complaint.invitation_id,
        "doctor_id": complaint.doctor_id,
        "requester_id": complaint.requester_id,
        "category": complaint.category,
        "details": complaint.details,
        "status": complaint.status,
        "filed_at": complaint.filed_at,
        "decided_at": complaint.decided_at,
        "decision_reason": complaint.decision_reason,
        "refund_fen": int(complaint.refund_fen) if complaint.refund_fen is not None else None,
        "penalty_until": complaint.penalty_until,
        "penalty_lifted_at": complaint.penalty_lifted_at,
    }


def load(complaint_id: str) -> Complaint:
    if not complaint_id.startswith("CP"):
        raise NOT_FOUND
    try:
        return Complaint.get(f"INVITATION#{complaint_id[2:]}", COMPLAINT_SK, consistent_read=True)
    except DoesNotExist:
        raise NOT_FOUND from None


# --- filing -------------------------------------------------------------------------------


def _complainable(invitation: Invitation, now: datetime) -> None:
    if invitation.status == ACCEPTED and now < datetime.fromisoformat(invitation.scheduled_at):
        raise ApiError(
            409,
            "complaint_too_early",
            "The service's time has not come: cancel instead if it is no longer wanted",
            "服务时间未到；如不再需要请取消邀请",
            {"scheduled_at": invitation.scheduled_at},
        )
    if invitation.status == CONFIRMED:
        closes = datetime.fromisoformat(invitation.ended_at or invitation.updated_at) + timedelta(
            days=get_settings().complaint_window_days
        )
        if now > closes:
            raise ApiError(
                409,
                "complaint_window_closed",
                "The time to complain about this service has passed",
                "投诉期已过",
                {"closed_at": iso(closes)},
            )
    elif invitation.status not in (ACCEPTED, COMPLETED):
        raise ApiError(
            409,
            "not_complainable",
            "Only an accepted, completed or confirmed service can be complained about",
            "只能对已接受、已完成或已确认的服务投诉",
            {"status": invitation.status},
        )


def _existing(invitation_id: str) -> Complaint | None:
    try:
        return Complaint.get(f"INVITATION#{invitation_id}", COMPLAINT_SK, consistent_read=True)
    except DoesNotExist:
        return None


def _again(earlier: Complaint, request: ComplaintRequest) -> tuple[int, dict[str, Any]]:
    if earlier.category == request.category and earlier.details == request.details:
        return 200, view(earlier)
    raise ApiError(
        409,
        "complaint_exists",
        "A complaint about this invitation was filed already",
        "该邀请已有投诉",
        {"complaint_id": earlier.complaint_id, "status": earlier.status},
    )


def file(
    principal: Principal, invitation_id: str, request: ComplaintRequest, now: datetime
) -> tuple[int, dict[str, Any]]:
    """The requester's complaint; the same one again answers 200, a different one 409."""
    from chalicelib.invitations.service import requested_by

    invitation = requested_by(principal, invitation_id)
    earlier = _existing(invitation_id)
    if earlier is not None:
        return _again(earlier, request)
    _complainable(invitation, now)
    complaint = Complaint(f"INVITATION#{invitation_id}", COMPLAINT_SK)
    complaint.complaint_id, complaint.invitation_id = complaint_id_of(invitation_id), invitation_id
    complaint.doctor_id, complaint.requester_id = invitation.doctor_id, principal.user_id
    complaint.category, complaint.details, complaint.status = request.category, request.details, "open"
    complaint.filed_at = iso(now)
    complaint.created_at = iso_precise(now)
    complaint.doctor_key, complaint.requester_key = f"COMPLAINTS#{invitation.doctor_id}", "COMPLAINTS#open"
    batch = Batch()
    batch.put("complaint", complaint, condition=Complaint.pk.does_not_exist())
    batch.check(
        "invitation", Invitation, invitation.pk, invitation.sk, condition=Invitation.status == invitation.status
    )
    add_notice(batch, invitation_id=invitation_id, event="complaint_filed", recipient_id=invitation.doctor_id, now=now)
    try:
        batch.commit(Complaint._get_connection().connection)
    except TransactionCancelledError as cancelled:
        earlier = _existing(invitation_id)
        if earlier is not None:
            return _again(earlier, request)
        if "invitation" in cancelled.failed:
            _complainable(engine.load(invitation_id), now)
        raise busy() from None
    return 201, view(complaint)


# --- the back office ----------------------------------------------------------------------


def queue(query: ComplaintQuery) -> dict[str, Any]:
    """Complaints of one status, by filing time: open ones oldest first (to decide), decided ones newest first."""
    scope = f"complaints:{query.status}"
    items, last_key = read_page(
        lambda **page: Complaint.by_requester.query(
            f"COMPLAINTS#{query.status}", scan_index_forward=query.status == "open", **page
        ),
        Complaint,
        limit=query.limit,
        start=decode_cursor(query.cursor, scope),
    )
    return {"items": [view(item) for item in items], "next_cursor": encode_cursor(last_key, scope)}


def _decided_actions(admin: Principal, status: str, reason: str, now: datetime) -> list[Any]:
    return [
        Complaint.status.set(status),
        Complaint.decided_at.set(iso(now)),
        Complaint.decided_by.set(admin.user_id),
        Complaint.decision_reason.set(reason),
        Complaint.requester_key.set(f"COMPLAINTS#{status}"),
    ]


def _open(complaint: Complaint) -> None:
    if complaint.status != "open":
        raise ApiError(
            409,
            "complaint_decided",
            f"This complaint was {complaint.status} already",
            "该投诉已处理",
            {"status": complaint.status},
        )


def _notify_both(batch: Batch, complaint: Complaint, event: str, now: datetime) -> None:
    for recipient in (complaint.requester_id, complaint.doctor_id):
        add_notice(batch, invitation_id=complaint.invitation_id, event=event, recipient_id=recipient, now=now)


def reject(admin: Principal, complaint_id: str, reason: str, now: datetime) -> dict[str, Any]:
    """Reject an open complaint with the reason both sides see."""
    complaint = load(complaint_id)
    _open(complaint)
    batch = Batch()
    batch.update(
        "complaint",
        complaint,
        actions=_decided_actions(admin, "rejected", reason, now),
        condition=Complaint.status == "open",
    )
    _notify_both(batch, complaint, "complaint_rejected", now)
    _commit(batch, complaint_id)
    return view(load(complaint_id))


def confirm(admin: Principal, complaint_id: str, decision: Decision, now: datetime) -> dict[str, Any]:
    """Confirm an open complaint: the penalty starts; with ``refund`` the requester gets everything back."""
    complaint = load(complaint_id)
    _open(complaint)
    penalty_until = iso(now + timedelta(days=get_settings().star_rules.penalty_days))
    actions = [
        *_decided_actions(admin, "confirmed", decision.reason, now),
        Complaint.penalty_until.set(penalty_until),
        Complaint.due_queue.set(PENALTY_QUEUE),
        Complaint.due_at.set(penalty_until),
    ]
    batch = Batch()
    _notify_both(batch, complaint, "complaint_confirmed", now)
    if not decision.refund:
        batch.update("complaint", complaint, actions=actions, condition=Complaint.status == "open")
        _commit(batch, complaint_id)
        return view(load(complaint_id))
    invitation = engine.load(complaint.invitation_id)
    fee = int(invitation.fee_fen)
    batch.update(
        "complaint", complaint, actions=[*actions, Complaint.refund_fen.set(fee)], condition=Complaint.status == "open"
    )
    _refund_not_delivered(admin, invitation, decision.reason, batch, now)
    return view(load(complaint_id))


def _commit(batch: Batch, complaint_id: str) -> None:
    try:
        batch.commit(Complaint._get_connection().connection)
    except TransactionCancelledError as cancelled:
        if "complaint" in cancelled.failed:
            _open(load(complaint_id))
        raise busy() from None


def claim_entries(invitation: Invitation, available_fen: int) -> dict[str, int]:
    """Where the refund of a service not delivered comes from, into ``claim:<invitation>``.

    Before release the doctor's share is still pending; after it, it comes from what is
    available, and what is not (withdrawn meanwhile) becomes the doctor's receivable.

    >>> i = Invitation(invitation_id="i1", doctor_id="d1", status="confirmed", fee_fen=500, doctor_share_fen=450,
    ...     platform_fee_fen=50)
    >>> sorted(claim_entries(i, available_fen=300).items())  # doctest: +NORMALIZE_WHITESPACE
    [('claim:i1', 500), ('doctor:d1:available', -300), ('doctor:d1:receivable', -150), ('platform:fees:7', -50)]
    """
    share, fee = int(invitation.doctor_share_fen or 0), int(invitation.platform_fee_fen or 0)
    doctor = invitation.doctor_id
    if invitation.status == CONFIRMED:
        taken = min(share, max(0, available_fen))
        doctor_entries = {accounts.doctor_available(doctor): -taken, accounts.doctor_receivable(doctor): taken - share}
    else:
        doctor_entries = {accounts.doctor_pending(doctor): -share}
    entries = {
        **doctor_entries,
        accounts.fee_account(invitation.invitation_id, get_settings().ledger_shards): -fee,
        accounts.claim(invitation.invitation_id): int(invitation.fee_fen),
    }
    return {account: amount for account, amount in entries.items() if amount}


def _refund_not_delivered(admin: Principal, invitation: Invitation, reason: str, batch: Batch, now: datetime) -> None:
    """Fire ``refund_not_delivered`` with the complaint's decision, the claim posting and the refund order."""
    from chalicelib.invitations.service import give_back_day
    from chalicelib.payments import refunds

    if invitation.status not in (ACCEPTED, COMPLETED, CONFIRMED):
        raise ApiError(
            409,
            "not_refundable",
            "This invitation holds no money to refund (it was refunded or never paid)",
            "该邀请没有可退款项",
            {"status": invitation.status},
        )
    engine.plan_or_raise(invitation, "refund_not_delivered", ADMIN)
    fee = int(invitation.fee_fen)
    available = balance(accounts.doctor_available(invitation.doctor_id)) if invitation.status == CONFIRMED else 0
    posting = Posting(
        f"claim:{invitation.invitation_id}",
        "claim",
        claim_entries(invitation, available),
        f"invitation:{invitation.invitation_id}",
    )
    clearing = accounts.clearing_account(
        invitation.channel or "sandbox", invitation.invitation_id, get_settings().ledger_shards
    )
    number = refunds.add_refund_order(
        batch,
        invitation,
        {accounts.claim(invitation.invitation_id): -fee, clearing: fee},
        amount_fen=fee,
        reason="service not delivered",
        now=now,
    )
    if invitation.status == CONFIRMED and invitation.kind == "invitation":
        batch.update(
            "doctor",
            Account(f"USER#{invitation.doctor_id}", "PROFILE"),
            actions=[Account.anesthesia_count.add(-1), Account.revision.add(1)],  # see ``service.release``
            condition=Account.anesthesia_count >= 1,
        )
    # never delivered: the unit of the day that accepting booked is given back
    booked_actions = give_back_day(batch, invitation) if invitation.status == ACCEPTED else []
    try:
        engine.move(
            invitation,
            "refund_not_delivered",
            actor=ADMIN,
            actor_id=admin.user_id,
            now=now,
            reason=reason,
            batch=batch,
            posting=posting,
            actions=[
                Invitation.refund_order_id.set(number),
                Invitation.ended_at.set(iso(now)),
                Invitation.due_queue.remove(),
                Invitation.due_at.remove(),
                *booked_actions,
            ],
            refusals=_refusal,
        )
    except ApiError as error:
        if error.code == "insufficient_funds":  # the doctor withdrew meanwhile: read the balance again
            raise busy() from None
        raise
    refunds.send_now(number, now)


def _refusal(failed: list[str]) -> ApiError | None:
    if "complaint" in failed:
        return ApiError(409, "complaint_decided", "This complaint was decided meanwhile", "该投诉已处理")
    if "doctor" in failed or "capacity" in failed:  # counts kept in the same transactions as the invitations
        return ApiError(
            409,
            "counts_out_of_sync",
            "The doctor's anesthesia count or calendar disagrees with the invitations; an operator must run "
            "make recompute-stars FIX=1 (or correct the calendar day) before this refund",
            "\u533b\u751f\u7684\u8ba1\u6570\u4e0e\u9080\u8bf7\u8bb0\u5f55\u4e0d\u7b26\uff0c\u8bf7\u8054\u7cfb\u8fd0\u7ef4\u5904\u7406",
            {"failed": sorted(set(failed) & {"doctor", "capacity"})},
        )
    return None


# --- the penalty's end --------------------------------------------------------------------


def lift(complaint: Complaint, now: datetime) -> None:
    """End a confirmed complaint's penalty once its period has passed (the stream restores the level)."""
    if complaint.penalty_until is None or now < datetime.fromisoformat(complaint.penalty_until):
        raise ApiError(409, "not_due", "The penalty has not ended", "处罚期未结束")
    try:
        complaint.update(
            actions=[
                Complaint.penalty_lifted_at.set(iso(now)),
                Complaint.due_queue.remove(),
                Complaint.due_at.remove(),
            ],
            condition=(Complaint.status == "confirmed") & Complaint.penalty_lifted_at.does_not_exist(),
        )
    except UpdateError as error:
        if error.cause_response_code == "ConditionalCheckFailedException":
            raise ApiError(409, "already_lifted", "The penalty was lifted already", "处罚已结束") from None
        raise


def penalties_due(now: datetime, limit: int) -> list[Complaint]:
    """Confirmed complaints whose penalty period has passed (a Query of the sparse ``due`` index)."""
    return list(Complaint.by_due.query(PENALTY_QUEUE, Complaint.due_at <= iso(now), limit=limit))
