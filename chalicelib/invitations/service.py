"""Invitations and consultations: create, read, list, and every transition a person fires.

Each function checks who the caller is to the invitation (requester, invited doctor,
admin) before anything else: someone else's invitation is a 404, never a 403, so ids
cannot be probed. Transitions go through ``engine.fire``: one transaction with the
status change, the money, the capacity and the notices.

Example
-------
>>> status, body = create(patient, parse(payload, InvitationRequest), utc_now())  # doctest: +SKIP
>>> body["status"], body["fee_fen"]
('awaiting_payment', 50000)
"""

from __future__ import annotations

import contextlib
import json
import secrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from pynamodb.exceptions import DoesNotExist, PutError, UpdateError

from chalicelib.accounts.roles import ADMIN, DOCTOR, HOSPITAL
from chalicelib.clock import SHANGHAI, iso, iso_precise, shanghai_date
from chalicelib.config import get_settings
from chalicelib.doctors.calendar import HORIZON_DAYS
from chalicelib.errors import ApiError
from chalicelib.invitations import engine, policy
from chalicelib.invitations.machine import (
    ACCEPTED,
    AWAITING_PAYMENT,
    COMPLETED,
    CONFIRMED,
    PENDING_RESPONSE,
    REQUESTER,
    SYSTEM,
)
from chalicelib.ledger import accounts
from chalicelib.ledger.journal import Posting
from chalicelib.models.invitations import CalendarDay, Invitation
from chalicelib.models.transactions import Batch
from chalicelib.models.users import Account
from chalicelib.notifications.outbox import add_notice
from chalicelib.pagination import decode_cursor, encode_cursor, read_page
from chalicelib.security import privacy
from chalicelib.validation import invalid

if TYPE_CHECKING:
    from chalicelib.accounts.roles import Principal
    from chalicelib.invitations.requests import InvitationQuery, InvitationRequest

DOCTOR_NOT_FOUND = ApiError(404, "doctor_not_found", "No verified anesthesiologist has this id", "找不到该麻醉医生")
CLINICAL_FIELD = "invitation_clinical"
REQUESTER_VISIBLE_AFTER = (ACCEPTED, COMPLETED, CONFIRMED)


def _new_id() -> str:
    return secrets.token_hex(13)


# --- creating -----------------------------------------------------------------------------


def _invited_doctor(doctor_id: str) -> Account:
    try:
        doctor = Account.get(f"USER#{doctor_id}", "PROFILE")
    except DoesNotExist:
        raise DOCTOR_NOT_FOUND from None
    if doctor.role != DOCTOR or doctor.verification_status != "verified":
        raise DOCTOR_NOT_FOUND
    return doctor


def _own_hospital(principal: Principal, hospital_id: str) -> None:
    """A hospital account invites for operations at its own institution."""
    from chalicelib.accounts.profiles import load_account

    if load_account(principal.user_id).hospital_id != hospital_id:
        raise ApiError(
            422,
            "not_your_hospital",
            "A hospital account invites for operations at its own hospital",
            "医院账号只能为本院的手术发出邀请",
            {"field": "hospital_id"},
        )


def _scheduled_at(request: InvitationRequest, now: datetime) -> datetime:
    today = shanghai_date(now)
    if not today <= request.date <= today + timedelta(days=HORIZON_DAYS):
        raise invalid(f"The date must be from today to {HORIZON_DAYS} days ahead", "date")
    hour, minute = (int(part) for part in request.time.split(":"))
    at = datetime(request.date.year, request.date.month, request.date.day, hour, minute, tzinfo=SHANGHAI)
    earliest = policy.latest_start_to_request(now, get_settings())
    if at < earliest:
        raise ApiError(
            422,
            "too_soon",
            "The doctor needs time to answer: choose a later time",
            "时间太近，医生来不及答复，请选择更晚的时间",
            {"field": "time", "earliest": iso(earliest)},
        )
    return at


def _check_day(doctor_id: str, kind: str, day: str) -> None:
    """The doctor takes this kind of request on that day and has capacity left (booked when accepted)."""
    try:
        calendar_day = CalendarDay.get(f"CALENDAR#{doctor_id}", day)
    except DoesNotExist:
        calendar_day = None
    if calendar_day is None or not calendar_day.working:
        raise ApiError(
            409,
            "date_unavailable",
            "The doctor does not take requests on this date",
            "医生当天不接受预约",
            {"date": day},
        )
    capacity, booked = (
        (calendar_day.invitation_capacity, calendar_day.invitations_booked)
        if kind == "invitation"
        else (calendar_day.consultation_capacity, calendar_day.consultations_booked)
    )
    if int(booked or 0) >= int(capacity or 0):
        raise ApiError(
            409, "date_full", "The doctor has no capacity left on this date", "医生当天已约满", {"date": day}
        )


def _clinical(request: InvitationRequest) -> str | None:
    if request.kind == "invitation":
        if request.operation is None:
            raise invalid("An invitation names the operation", "operation")
        if request.summary is None:
            raise invalid("An invitation carries the pre-anesthesia summary", "summary")
    elif request.operation is not None:
        raise invalid("A consultation has no operation", "operation")
    if request.summary is None and request.note is None:
        return None
    payload = {"summary": msgspec.to_builtins(request.summary), "note": request.note}
    return privacy.encrypt(CLINICAL_FIELD, json.dumps(payload, ensure_ascii=False))


def create(principal: Principal, request: InvitationRequest, now: datetime) -> tuple[int, dict[str, Any]]:
    """A new invitation or consultation, waiting for payment, at the doctor's fee of this moment."""
    from chalicelib.directory.hospitals import require_hospital
    from chalicelib.payments import orders

    doctor = _invited_doctor(request.doctor_id)
    hospital = require_hospital(request.hospital_id)
    if principal.role == HOSPITAL:
        _own_hospital(principal, request.hospital_id)
    elif doctor.hospital_id != request.hospital_id:
        raise ApiError(
            422,
            "doctor_not_at_hospital",
            "Patients may invite only anesthesiologists registered at the hospital they name",
            "只能邀请所选医院的麻醉医生",
            {"field": "doctor_id", "hospital_id": request.hospital_id},
        )
    scheduled_at = _scheduled_at(request, now)
    fee = doctor.invitation_fee if request.kind == "invitation" else doctor.consultation_fee
    if not fee:
        raise ApiError(
            409,
            "fee_not_set",
            "The doctor has not published a fee for this",
            "医生尚未设置费用",
            {"kind": request.kind},
        )
    _check_day(doctor.user_id, request.kind, request.date.isoformat())
    invitation_id = _new_id()
    invitation = Invitation(f"INVITATION#{invitation_id}", "META")
    invitation.invitation_id, invitation.kind, invitation.status = invitation_id, request.kind, AWAITING_PAYMENT
    invitation.requester_id, invitation.requester_role = principal.user_id, principal.role
    invitation.doctor_id, invitation.hospital_id, invitation.hospital_name = (
        doctor.user_id,
        hospital.hospital_id,
        hospital.name,
    )
    invitation.scheduled_date, invitation.scheduled_time = request.date.isoformat(), request.time
    invitation.scheduled_at = iso(scheduled_at)
    invitation.operation = msgspec.to_builtins(request.operation) if request.operation else None
    invitation.clinical_cipher = _clinical(request)
    invitation.fee_fen, invitation.currency = int(fee), "CNY"
    invitation.requester_key, invitation.updated_at = f"REQUESTER#{principal.user_id}", iso(now)
    invitation.created_at = iso_precise(now)  # the lists' sort key: invitations of one second stay in order
    invitation.history = [engine.change(now, "create", AWAITING_PAYMENT, REQUESTER, principal.user_id)]
    invitation.due_queue, invitation.due_at = engine.DUE_PAYMENT, iso(orders.payment_window_end(invitation))
    try:
        invitation.save(condition=Invitation.pk.does_not_exist())
    except PutError:
        raise ApiError(409, "conflict", "Retry", "请重试") from None
    return 201, view(invitation, principal, doctor_name=doctor.name)


# --- reading ------------------------------------------------------------------------------


def side_of(invitation: Invitation, principal: Principal) -> str:
    """``requester``, ``doctor`` or ``admin``; 404 for anyone else (and for a doctor before payment)."""
    if principal.user_id == invitation.requester_id:
        return REQUESTER
    if principal.user_id == invitation.doctor_id and invitation.doctor_key:
        return DOCTOR
    if principal.role == ADMIN:
        return ADMIN
    raise engine.NOT_FOUND


def _requester_card(invitation: Invitation) -> dict[str, Any] | None:
    try:
        account = Account.get(f"USER#{invitation.requester_id}", "PROFILE")
    except DoesNotExist:
        return None
    phone = privacy.decrypt("phone", account.phone_cipher) if account.phone_cipher else None
    return {"user_id": account.user_id, "role": account.role, "name": account.name, "phone": phone}


def summary_item(invitation: Invitation) -> dict[str, Any]:
    """The fields every list shows."""
    return {
        "invitation_id": invitation.invitation_id,
        "kind": invitation.kind,
        "status": invitation.status,
        "doctor_id": invitation.doctor_id,
        "hospital": {"hospital_id": invitation.hospital_id, "name": invitation.hospital_name},
        "scheduled_date": invitation.scheduled_date,
        "scheduled_time": invitation.scheduled_time,
        "fee_fen": int(invitation.fee_fen),
        "currency": invitation.currency,
        "created_at": invitation.created_at,
        "updated_at": invitation.updated_at,
        "rating": int(invitation.rating) if invitation.rating is not None else None,
    }


def view(invitation: Invitation, principal: Principal, *, doctor_name: str | None = None) -> dict[str, Any]:
    """One invitation as the caller may see it: history, deadlines, review and complaint for all sides;
    the clinical summary for the requester and the doctor; the requester's identity for the doctor
    only once accepted."""
    from chalicelib.payments import orders
    from chalicelib.reputation import complaints, reviews

    side = side_of(invitation, principal)
    body = summary_item(invitation)
    body.update(
        scheduled_at=invitation.scheduled_at,
        operation=invitation.operation.as_dict() if invitation.operation else None,
        payment_order_id=invitation.payment_order_id,
        payment_due_at=iso(orders.payment_window_end(invitation)) if invitation.status == AWAITING_PAYMENT else None,
        response_deadline=invitation.response_deadline,
        accepted_at=invitation.accepted_at,
        completed_at=invitation.completed_at,
        confirm_by=invitation.hold_until if invitation.status == COMPLETED else None,
        refund_order_id=invitation.refund_order_id,
        history=[
            {
                "at": step.at,
                "transition": step.transition,
                "status": step.status,
                "by": step.actor,
                "reason": step.reason,
            }
            for step in invitation.history
        ],
    )
    # only an accepted invitation can be reviewed or complained about: spare the others the Query
    review, complaint = reviews.feedback(invitation.invitation_id) if invitation.accepted_at else (None, None)
    body["review"] = reviews.review_view(review) if review else None
    body["complaint"] = complaints.view(complaint) if complaint else None
    if doctor_name is not None:
        body["doctor_name"] = doctor_name
    if side in (REQUESTER, DOCTOR):
        clinical = (
            json.loads(privacy.decrypt(CLINICAL_FIELD, invitation.clinical_cipher))
            if invitation.clinical_cipher
            else {}
        )
        body.update(summary=clinical.get("summary"), note=clinical.get("note"))
    if side in (DOCTOR, ADMIN):
        body.update(doctor_share_fen=invitation.doctor_share_fen, platform_fee_fen=invitation.platform_fee_fen)
        body["requester"] = (
            _requester_card(invitation) if invitation.status in REQUESTER_VISIBLE_AFTER or side == ADMIN else None
        )
    return body


def read(invitation_id: str, principal: Principal) -> dict[str, Any]:
    return view(engine.load(invitation_id), principal)


def list_own(principal: Principal, query: InvitationQuery) -> dict[str, Any]:
    """The caller's invitations, newest first: as the invited doctor, or as the requester."""
    if principal.role == DOCTOR:
        index, key = Invitation.by_doctor, f"DOCTOR#{principal.user_id}"
    else:
        index, key = Invitation.by_requester, f"REQUESTER#{principal.user_id}"
    scope = f"invitations:{principal.user_id}:{query.kind}:{query.status}"
    condition = None
    if query.kind:
        condition = Invitation.kind == query.kind
    if query.status:
        condition = (
            (Invitation.status == query.status)
            if condition is None
            else condition & (Invitation.status == query.status)
        )

    def page(**kwargs: Any) -> Any:
        return index.query(key, scan_index_forward=False, filter_condition=condition, **kwargs)

    items, last = read_page(page, Invitation, limit=query.limit, start=decode_cursor(query.cursor, scope))
    return {"items": [summary_item(item) for item in items], "next_cursor": encode_cursor(last, scope)}


# --- transitions by people ----------------------------------------------------------------


def _as(invitation: Invitation, principal: Principal, side: str) -> None:
    """404 unless the caller is this side of the invitation."""
    if side_of(invitation, principal) != side:
        raise engine.NOT_FOUND


def requested_by(principal: Principal, invitation_id: str) -> Invitation:
    """The invitation, when the caller made it; 404 otherwise (ids cannot be probed)."""
    invitation = engine.load(invitation_id)
    _as(invitation, principal, REQUESTER)
    return invitation


def give_back_day(batch: Batch, invitation: Invitation) -> list[Any]:
    """Add to ``batch`` the return of the unit of the doctor's day that accepting booked; the invitation's actions."""
    if not invitation.booked:
        return []
    booked, _ = _capacity(invitation.kind)
    batch.update(
        "capacity",
        CalendarDay(f"CALENDAR#{invitation.doctor_id}", invitation.scheduled_date),
        actions=[booked.add(-1)],
        condition=booked >= 1,
    )
    return [Invitation.booked.set(False)]


def _capacity(kind: str) -> tuple[Any, Any]:
    if kind == "invitation":
        return CalendarDay.invitations_booked, CalendarDay.invitation_capacity
    return CalendarDay.consultations_booked, CalendarDay.consultation_capacity


def _date_full(failed: list[str]) -> ApiError | None:
    if "capacity" in failed:
        return ApiError(409, "date_full", "The date has no capacity left", "当天已约满")
    return None


def accept(principal: Principal, invitation_id: str, now: datetime) -> dict[str, Any]:
    """The doctor accepts: one unit of the date's capacity, and the fee split between doctor and platform."""
    invitation = engine.load(invitation_id)
    _as(invitation, principal, DOCTOR)
    engine.plan_or_raise(invitation, "accept", DOCTOR)
    if invitation.response_deadline and now >= datetime.fromisoformat(invitation.response_deadline):
        raise ApiError(
            409,
            "response_deadline_passed",
            "The time to answer has passed",
            "答复时间已过",
            {"response_deadline": invitation.response_deadline},
        )
    settings = get_settings()
    fee = int(invitation.fee_fen)
    doctor_share, platform_fee = policy.split_fee(fee, settings.platform_fee_bps)
    booked, capacity = _capacity(invitation.kind)
    batch = Batch()
    batch.update(
        "capacity",
        CalendarDay(f"CALENDAR#{invitation.doctor_id}", invitation.scheduled_date),
        actions=[booked.add(1)],
        condition=(CalendarDay.working == True) & ((booked.does_not_exist() & (capacity > 0)) | (booked < capacity)),  # noqa: E712
    )
    add_notice(batch, invitation_id=invitation_id, event="accepted", recipient_id=invitation.requester_id, now=now)
    entries = {accounts.escrow(invitation_id): -fee, accounts.doctor_pending(invitation.doctor_id): doctor_share}
    if platform_fee:
        entries[accounts.fee_account(invitation_id, settings.ledger_shards)] = platform_fee
    posting = Posting(f"accept:{invitation_id}", "acceptance", entries, f"invitation:{invitation_id}")
    updated = engine.fire(
        invitation,
        "accept",
        actor=DOCTOR,
        actor_id=principal.user_id,
        now=now,
        actions=[
            Invitation.booked.set(True),
            Invitation.accepted_at.set(iso(now)),
            Invitation.doctor_share_fen.set(doctor_share),
            Invitation.platform_fee_fen.set(platform_fee),
            Invitation.due_queue.remove(),
            Invitation.due_at.remove(),
        ],
        batch=batch,
        posting=posting,
        refusals=_date_full,
    )
    return view(updated, principal)


def _refund_after(
    invitation: Invitation,
    name: str,
    actor: str,
    actor_id: str | None,
    reason: str | None,
    now: datetime,
    notices: list[tuple[str, str]],
    quote: policy.RefundQuote | None = None,
    extra: Batch | None = None,
    actions: list[Any] | None = None,
) -> Invitation:
    """Fire a transition that ends the invitation with a refund by the original path, then ask the provider."""
    from chalicelib.payments import refunds

    settings = get_settings()
    batch = extra or Batch()
    if quote is None:
        entries, amount = (
            policy.full_refund(invitation.invitation_id, invitation.channel, int(invitation.fee_fen), settings),
            int(invitation.fee_fen),
        )
    else:
        entries, amount = quote.entries, quote.refund_fen
    number = refunds.add_refund_order(batch, invitation, entries, amount_fen=amount, reason=reason or name, now=now)
    for event, recipient in notices:
        add_notice(batch, invitation_id=invitation.invitation_id, event=event, recipient_id=recipient, now=now)
    updated = engine.fire(
        invitation,
        name,
        actor=actor,
        actor_id=actor_id,
        now=now,
        reason=reason,
        actions=[
            Invitation.refund_order_id.set(number),
            Invitation.ended_at.set(iso(now)),
            Invitation.due_queue.remove(),
            Invitation.due_at.remove(),
            *(actions or []),
        ],
        batch=batch,
    )
    refunds.send_now(number, now)
    return engine.load(updated.invitation_id)


def decline(principal: Principal, invitation_id: str, reason: str, now: datetime) -> dict[str, Any]:
    """The doctor declines, with a reason; the requester is refunded in full."""
    invitation = engine.load(invitation_id)
    _as(invitation, principal, DOCTOR)
    engine.plan_or_raise(invitation, "decline", DOCTOR)
    updated = _refund_after(
        invitation, "decline", DOCTOR, principal.user_id, reason, now, [("declined", invitation.requester_id)]
    )
    return view(updated, principal)


def _quote(invitation: Invitation, now: datetime) -> policy.RefundQuote:
    return policy.refund_quote(
        invitation_id=invitation.invitation_id,
        doctor_id=invitation.doctor_id,
        channel=invitation.channel or "sandbox",
        fee_fen=int(invitation.fee_fen),
        accepted=invitation.status == ACCEPTED,
        doctor_share_fen=int(invitation.doctor_share_fen or 0),
        platform_fee_fen=int(invitation.platform_fee_fen or 0),
        scheduled_at=datetime.fromisoformat(invitation.scheduled_at),
        now=now,
        settings=get_settings(),
    )


RULES = {
    "not_paid": ("Nothing was paid yet: cancelling only closes the payment order", "尚未支付，取消将关闭支付订单"),
    "not_accepted": ("The doctor has not accepted yet: everything is refunded", "医生尚未接受，全额退款"),
    "early_cancellation": (
        "Cancelled early enough before the scheduled time: everything is refunded",
        "距预约时间尚早，全额退款",
    ),
    "late_cancellation": ("Cancelled late: part of the fee stays with the doctor", "临近预约时间取消，部分费用归医生"),
}


def _before_service(invitation: Invitation, now: datetime) -> None:
    """A service whose time has come is not cancelled: a dispute about it is a complaint."""
    if invitation.status == ACCEPTED and now >= datetime.fromisoformat(invitation.scheduled_at):
        raise ApiError(
            409,
            "service_time_passed",
            "The scheduled time has passed: the service can no longer be cancelled; complain if it was not delivered",
            "预约时间已过，无法取消；如未提供服务请投诉",
            {"scheduled_at": invitation.scheduled_at},
        )


def refund_preview(principal: Principal, invitation_id: str, now: datetime) -> dict[str, Any]:
    """What cancelling now would refund under the configured policy, and why."""
    invitation = engine.load(invitation_id)
    _as(invitation, principal, REQUESTER)
    fee = int(invitation.fee_fen)
    if invitation.status == AWAITING_PAYMENT:
        refund, kept, rule = 0, 0, "not_paid"
    elif invitation.status in (PENDING_RESPONSE, ACCEPTED):
        _before_service(invitation, now)
        quote = _quote(invitation, now)
        refund, kept, rule = quote.refund_fen, quote.kept_fen, quote.rule
    else:
        raise ApiError(
            409,
            "not_cancellable",
            "This invitation can no longer be cancelled",
            "该邀请已无法取消",
            {"status": invitation.status},
        )
    message, message_zh = RULES[rule]
    return {
        "invitation_id": invitation_id,
        "status": invitation.status,
        "fee_fen": fee,
        "refund_fen": refund,
        "kept_fen": kept,
        "currency": invitation.currency,
        "rule": rule,
        "explanation": message,
        "explanation_zh": message_zh,
        "as_of": iso(now),
    }


def cancel(principal: Principal, invitation_id: str, reason: str, now: datetime) -> dict[str, Any]:
    """The requester cancels: an unpaid invitation is closed; a paid one is refunded under the policy."""
    invitation = engine.load(invitation_id)
    _as(invitation, principal, REQUESTER)
    if invitation.status == AWAITING_PAYMENT:
        return view(_withdraw_unpaid(invitation, principal, reason, now), principal)
    engine.plan_or_raise(invitation, "cancel", REQUESTER)
    _before_service(invitation, now)
    quote = _quote(invitation, now)
    batch = Batch()
    actions = give_back_day(batch, invitation)
    updated = _refund_after(
        invitation,
        "cancel",
        REQUESTER,
        principal.user_id,
        reason,
        now,
        [("cancelled", invitation.doctor_id)],
        quote=quote,
        extra=batch,
        actions=actions,
    )
    return view(updated, principal)


def _withdraw_unpaid(invitation: Invitation, principal: Principal, reason: str, now: datetime) -> Invitation:
    """Close the payment order at the provider first (no payment can land after), then ours and the invitation."""
    from chalicelib.payments import orders
    from chalicelib.payments.provider import ProviderError
    from chalicelib.payments.registry import get_provider

    engine.plan_or_raise(invitation, "withdraw_unpaid", REQUESTER)
    batch = Batch()
    order = orders.get(invitation.payment_order_id) if invitation.payment_order_id else None
    if order is not None and order.status == "pending":
        try:
            get_provider(order.channel).close_payment(order.order_id)
        except ProviderError as error:
            if error.code == "order_paid" or error.retryable:
                raise ApiError(
                    409,
                    "payment_in_progress",
                    "A payment is arriving for this invitation; look again shortly",
                    "该邀请的付款正在处理中，请稍后刷新",
                ) from None
        batch.update(
            "order", order, actions=orders.close_actions(order, now), condition=orders.PaymentOrder.status == "pending"
        )
    return engine.fire(
        invitation,
        "withdraw_unpaid",
        actor=REQUESTER,
        actor_id=principal.user_id,
        now=now,
        reason=reason,
        actions=[Invitation.ended_at.set(iso(now)), Invitation.due_queue.remove(), Invitation.due_at.remove()],
        batch=batch,
    )


def complete(principal: Principal, invitation_id: str, now: datetime) -> dict[str, Any]:
    """The doctor reports the service done, once its time has come; the requester then confirms."""
    invitation = engine.load(invitation_id)
    _as(invitation, principal, DOCTOR)
    engine.plan_or_raise(invitation, "complete", DOCTOR)
    if now < datetime.fromisoformat(invitation.scheduled_at):
        raise ApiError(
            409,
            "too_early",
            "The service can be marked done only after its scheduled time",
            "预约时间未到",
            {"scheduled_at": invitation.scheduled_at},
        )
    hold_until = iso(now + timedelta(hours=get_settings().confirm_hold_hours))
    batch = Batch()
    add_notice(batch, invitation_id=invitation_id, event="completed", recipient_id=invitation.requester_id, now=now)
    updated = engine.fire(
        invitation,
        "complete",
        actor=DOCTOR,
        actor_id=principal.user_id,
        now=now,
        batch=batch,
        actions=[
            Invitation.completed_at.set(iso(now)),
            Invitation.hold_until.set(hold_until),
            Invitation.due_queue.set(engine.DUE_HOLD),
            Invitation.due_at.set(hold_until),
        ],
    )
    return view(updated, principal)


def release(invitation: Invitation, actor: str, actor_id: str | None, now: datetime) -> Invitation:
    """Confirmation (by the requester, or by the hold running out): the doctor's share becomes available
    (after anything they owe)."""
    from chalicelib.ledger.wallet import earnings

    name = "confirm" if actor == REQUESTER else "auto_confirm"
    engine.plan_or_raise(invitation, name, actor)
    if actor == SYSTEM and (invitation.hold_until is None or now < datetime.fromisoformat(invitation.hold_until)):
        raise ApiError(409, "not_due", "The confirmation hold has not ended", "确认期未结束")
    share = int(invitation.doctor_share_fen or 0)
    batch = Batch()
    if invitation.kind == "invitation":
        batch.update(
            "doctor",
            Account(f"USER#{invitation.doctor_id}", "PROFILE"),
            # the revision moves too: the reputation stream derives the level from this count,
            # and its writes are conditional on the revision they read
            actions=[Account.anesthesia_count.add(1), Account.revision.add(1)],
            condition=Account.pk.exists(),
        )
    add_notice(
        batch, invitation_id=invitation.invitation_id, event="confirmed", recipient_id=invitation.doctor_id, now=now
    )
    posting = None
    if share:
        posting = Posting(
            f"release:{invitation.invitation_id}",
            "release",
            {accounts.doctor_pending(invitation.doctor_id): -share, **earnings(invitation.doctor_id, share)},
            f"invitation:{invitation.invitation_id}",
        )
    return engine.fire(
        invitation,
        name,
        actor=actor,
        actor_id=actor_id,
        now=now,
        batch=batch,
        posting=posting,
        actions=[Invitation.ended_at.set(iso(now)), Invitation.due_queue.remove(), Invitation.due_at.remove()],
    )


def confirm(principal: Principal, invitation_id: str, now: datetime) -> dict[str, Any]:
    invitation = engine.load(invitation_id)
    _as(invitation, principal, REQUESTER)
    return view(release(invitation, REQUESTER, principal.user_id, now), principal)


def lapse_unpaid(invitation: Invitation, now: datetime) -> Invitation:
    """The job: the time to pay ended and no payment order was ever opened — close the invitation.

    An invitation with an order is the order's follow-up's to close (it asks the provider first);
    ``require`` keeps this from closing one whose order opened at the same moment.
    """
    from chalicelib.payments import orders

    if invitation.status != AWAITING_PAYMENT or invitation.payment_order_id:  # moved on: only the entry is left
        with contextlib.suppress(UpdateError):
            invitation.update(
                actions=[Invitation.due_queue.remove(), Invitation.due_at.remove()],
                condition=Invitation.due_queue == engine.DUE_PAYMENT,
            )
        return invitation
    if now < orders.payment_window_end(invitation):
        raise ApiError(409, "not_due", "The time to pay has not ended", "尚未到期")
    return engine.fire(
        invitation,
        "lapse_unpaid",
        actor=SYSTEM,
        actor_id=None,
        now=now,
        actions=[Invitation.ended_at.set(iso(now)), Invitation.due_queue.remove(), Invitation.due_at.remove()],
        require=Invitation.payment_order_id.does_not_exist(),
    )


def expire(invitation: Invitation, now: datetime) -> Invitation:
    """The job: no answer by the deadline — refund in full, tell both sides."""
    engine.plan_or_raise(invitation, "expire", SYSTEM)
    if invitation.response_deadline is None or now < datetime.fromisoformat(invitation.response_deadline):
        raise ApiError(409, "not_due", "The answer deadline has not passed", "尚未到期")
    return _refund_after(
        invitation,
        "expire",
        SYSTEM,
        None,
        "no answer by the deadline",
        now,
        [("expired", invitation.requester_id), ("expired", invitation.doctor_id)],
    )
