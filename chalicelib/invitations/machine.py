"""The invitation state machine, declared as data: the only place that says how a status may change.

Each ``Transition`` names the states it leaves, the state it enters, who may fire it, the
guards that must hold and the effects that come with it (a ledger posting, a capacity
booking, a refund order, a notification). Flows fire transitions by name through
``plan``; nothing else sets a status. Every firing is one conditional write on the
expected current state, together with its effects, in one DynamoDB transaction.

Money follows design.md §4: a payment fills the escrow; acceptance splits it between the
doctor (pending) and the platform fee; confirmation makes the doctor's share available;
a decline, an expiry or a cancellation refunds by the original path; so does a confirmed
complaint that the service was not delivered (C7, C8), even after confirmation.

Example
-------
>>> plan("accept", status="pending_response", actor="doctor").target
'accepted'
>>> plan("accept", status="accepted", actor="doctor")  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
ApiError: invalid_transition
"""

from __future__ import annotations

from dataclasses import dataclass

from chalicelib.errors import ApiError

REQUESTER, DOCTOR, SYSTEM, ADMIN = "requester", "doctor", "system", "admin"
"""Who fires a transition: the invitation's requester, its doctor, a job or callback, an admin."""

AWAITING_PAYMENT = "awaiting_payment"
PENDING_RESPONSE = "pending_response"
ACCEPTED = "accepted"
COMPLETED = "completed"
CONFIRMED = "confirmed"
DECLINED = "declined"
EXPIRED = "expired"
CANCELLED = "cancelled"
NOT_DELIVERED = "not_delivered"
REFUNDING = "refunding"
REFUNDED = "refunded"
CLOSED = "closed"

STATES = (
    AWAITING_PAYMENT,
    PENDING_RESPONSE,
    ACCEPTED,
    COMPLETED,
    CONFIRMED,
    DECLINED,
    EXPIRED,
    CANCELLED,
    NOT_DELIVERED,
    REFUNDING,
    REFUNDED,
    CLOSED,
)
FINAL_STATES = frozenset({CONFIRMED, REFUNDED, CLOSED})
"""No transition leaves these, except a payment that arrives after closing (refunded at once) and
a confirmed complaint that a confirmed service was not delivered (refunded)."""


@dataclass(frozen=True)
class Transition:
    """One way an invitation's status may change."""

    name: str
    sources: frozenset[str]
    target: str
    actors: frozenset[str]
    guards: tuple[str, ...] = ()
    effects: tuple[str, ...] = ()
    reason_required: bool = False


def _t(
    name: str,
    sources: set[str],
    target: str,
    actors: set[str],
    guards: tuple[str, ...] = (),
    effects: tuple[str, ...] = (),
    *,
    reason_required: bool = False,
) -> Transition:
    return Transition(name, frozenset(sources), target, frozenset(actors), guards, effects, reason_required)


TRANSITIONS: dict[str, Transition] = {
    t.name: t
    for t in (
        # paying
        _t(
            "pay",
            {AWAITING_PAYMENT},
            PENDING_RESPONSE,
            {SYSTEM},
            ("amount_matches",),
            ("post_payment", "set_response_deadline", "notify_doctor"),
        ),
        _t("lapse_unpaid", {AWAITING_PAYMENT}, CLOSED, {SYSTEM}, ("payment_window_passed",), ("close_payment_order",)),
        _t("withdraw_unpaid", {AWAITING_PAYMENT}, CLOSED, {REQUESTER}, (), ("close_payment_order",)),
        _t(
            "pay_after_closing",
            {CLOSED},
            REFUNDING,
            {SYSTEM},
            ("amount_matches",),
            ("post_payment", "create_refund_order"),
        ),
        # the doctor answers
        _t(
            "accept",
            {PENDING_RESPONSE},
            ACCEPTED,
            {DOCTOR},
            ("before_response_deadline", "date_has_capacity"),
            ("book_capacity", "post_acceptance", "notify_requester"),
        ),
        _t("decline", {PENDING_RESPONSE}, DECLINED, {DOCTOR}, (), ("notify_requester",), reason_required=True),
        _t(
            "expire",
            {PENDING_RESPONSE},
            EXPIRED,
            {SYSTEM},
            ("response_deadline_passed",),
            ("notify_requester", "notify_doctor"),
        ),
        _t(
            "cancel",
            {PENDING_RESPONSE, ACCEPTED},
            CANCELLED,
            {REQUESTER},
            (),
            ("release_capacity_if_booked", "notify_doctor"),
            reason_required=True,
        ),
        # refunds by the original path
        _t(
            "start_refund",
            {DECLINED, EXPIRED, CANCELLED, NOT_DELIVERED},
            REFUNDING,
            {SYSTEM},
            (),
            ("create_refund_order",),
        ),
        _t(
            "refund",
            {DECLINED, EXPIRED, CANCELLED, NOT_DELIVERED, REFUNDING},
            REFUNDED,
            {SYSTEM},
            ("provider_confirmed_refund",),
            ("post_refund", "notify_requester"),
        ),
        # the service
        _t(
            "complete",
            {ACCEPTED},
            COMPLETED,
            {DOCTOR},
            ("scheduled_time_passed",),
            ("set_hold_deadline", "notify_requester"),
        ),
        _t("confirm", {COMPLETED}, CONFIRMED, {REQUESTER}, (), ("post_release", "count_anesthesia", "notify_doctor")),
        _t(
            "auto_confirm",
            {COMPLETED},
            CONFIRMED,
            {SYSTEM},
            ("hold_passed",),
            ("post_release", "count_anesthesia", "notify_doctor"),
        ),
        # a complaint the back office confirmed: the service was not delivered (C7, C8)
        _t(
            "refund_not_delivered",
            {ACCEPTED, COMPLETED, CONFIRMED},
            NOT_DELIVERED,
            {ADMIN},
            ("complaint_open",),
            ("post_claim", "uncount_anesthesia_if_confirmed", "create_refund_order", "notify_both"),
            reason_required=True,
        ),
    )
}


def transition(name: str) -> Transition:
    """The declared transition ``name``; ``KeyError`` for a name nobody declared."""
    return TRANSITIONS[name]


def plan(name: str, *, status: str, actor: str) -> Transition:
    """The transition ``name`` if ``actor`` may fire it from ``status``; a 403 or 409 ``ApiError`` otherwise.

    The guards and effects are the caller's to check and carry out, in the same
    transaction as the conditional status write (``status`` as the condition).
    """
    step = transition(name)
    if actor not in step.actors:
        raise ApiError(
            403, "forbidden", f"{actor} may not {name} an invitation", "无权执行此操作", {"transition": name}
        )
    if status not in step.sources:
        raise ApiError(
            409,
            "invalid_transition",
            f"'{name}' is not allowed while the invitation is {status}",
            "当前状态不允许此操作",
            {"transition": name, "status": status, "allowed_from": sorted(step.sources)},
        )
    return step


def mermaid() -> str:
    """The machine as a Mermaid state diagram (for the README)."""
    lines = ["stateDiagram-v2", f"    [*] --> {AWAITING_PAYMENT}"]
    for step in TRANSITIONS.values():
        actors = "/".join(sorted(step.actors))
        lines += [f"    {source} --> {step.target}: {step.name} ({actors})" for source in sorted(step.sources)]
    lines += [f"    {state} --> [*]" for state in sorted(FINAL_STATES)]
    return "\n".join(lines)
