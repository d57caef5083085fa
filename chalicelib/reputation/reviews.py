"""Reviews (M-j, M-l, C3): the requester rates a confirmed invitation once; others see it masked.

A review is one item (``FEEDBACK#REVIEW``), written with ``attribute_not_exists`` in the
same transaction as the invitation's ``rating`` (so the doctor's list shows it) and a
notice to the doctor. It never changes afterwards. The doctor's reputation follows from
the stream (``reputation.aggregates``), not from this write.

Example
-------
>>> submit(patient, "i1", ReviewRequest(rating=5, comment="Calm and clear"), utc_now())  # doctest: +SKIP
(201, {'invitation_id': 'i1', 'rating': 5, 'comment': 'Calm and clear', ...})
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from pynamodb.exceptions import DoesNotExist

from chalicelib.clock import iso, iso_precise
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.invitations import engine
from chalicelib.invitations.machine import CONFIRMED
from chalicelib.models.invitations import Complaint, Invitation, InvitationsTable, Review
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy
from chalicelib.models.users import Account
from chalicelib.notifications.outbox import add_notice
from chalicelib.pagination import decode_cursor, encode_cursor, read_page

if TYPE_CHECKING:
    from chalicelib.accounts.roles import Principal

REVIEW_SK = "FEEDBACK#REVIEW"
LATEST_SHOWN = 5


class ReviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    rating: Annotated[int, msgspec.Meta(ge=1, le=5)]
    comment: Annotated[str, msgspec.Meta(min_length=1, max_length=500)] | None = None


def mask_name(name: str | None) -> str:
    """What others see of a reviewer: the first character and two stars.

    >>> mask_name("张三丰"), mask_name("Li Lei"), mask_name(None)
    ('张**', 'L**', '匿名用户')
    """
    name = (name or "").strip()
    return f"{name[0]}**" if name else "\u533f\u540d\u7528\u6237"


def review_view(review: Review, *, public: bool = False) -> dict[str, Any]:
    """A review: the reviewer's name masked, never their id; in public (the storefront) not the invitation either."""
    shown = {} if public else {"invitation_id": review.invitation_id}
    return {
        **shown,
        "kind": review.kind,
        "rating": int(review.rating),
        "comment": review.comment,
        "reviewer": review.reviewer_masked,
        "created_at": review.created_at,
    }


def _reviewable(invitation: Invitation, now: datetime) -> None:
    if invitation.status != CONFIRMED:
        raise ApiError(
            409,
            "not_reviewable",
            "A service can be rated once it is confirmed",
            "服务确认后才能评价",
            {"status": invitation.status},
        )
    closes = datetime.fromisoformat(invitation.ended_at or invitation.updated_at) + timedelta(
        days=get_settings().review_window_days
    )
    if now > closes:
        raise ApiError(
            409,
            "review_window_closed",
            "The time to rate this service has passed",
            "评价期已过",
            {"closed_at": iso(closes)},
        )


def _existing(invitation_id: str) -> Review | None:
    try:
        return Review.get(f"INVITATION#{invitation_id}", REVIEW_SK, consistent_read=True)
    except DoesNotExist:
        return None


def submit(
    principal: Principal, invitation_id: str, request: ReviewRequest, now: datetime
) -> tuple[int, dict[str, Any]]:
    """Rate the caller's confirmed invitation; the same review again answers 200, another 409."""
    from chalicelib.invitations.service import requested_by

    invitation = requested_by(principal, invitation_id)
    earlier = _existing(invitation_id)
    if earlier is not None:
        return _again(earlier, request)
    _reviewable(invitation, now)
    try:
        requester = Account.get(f"USER#{principal.user_id}", "PROFILE")
        name = requester.hospital_name if requester.role == "hospital" and requester.hospital_name else requester.name
    except DoesNotExist:
        name = None
    review = Review(f"INVITATION#{invitation_id}", REVIEW_SK)
    review.invitation_id, review.doctor_id, review.requester_id = invitation_id, invitation.doctor_id, principal.user_id
    review.kind, review.rating, review.comment = invitation.kind, request.rating, request.comment
    review.reviewer_masked = mask_name(name)
    review.doctor_key, review.created_at = f"REVIEWS#{invitation.doctor_id}", iso_precise(now)
    batch = Batch()
    batch.put("review", review, condition=Review.pk.does_not_exist())
    batch.update(
        "invitation",
        invitation,
        actions=[Invitation.rating.set(request.rating)],
        condition=(Invitation.status == CONFIRMED) & Invitation.rating.does_not_exist(),
    )
    add_notice(batch, invitation_id=invitation_id, event="reviewed", recipient_id=invitation.doctor_id, now=now)
    try:
        batch.commit(Invitation._get_connection().connection)
    except TransactionCancelledError as cancelled:
        earlier = _existing(invitation_id)
        if earlier is not None:
            return _again(earlier, request)
        if "invitation" in cancelled.failed:
            _reviewable(engine.load(invitation_id), now)
        raise busy() from None
    return 201, review_view(review)


def _again(earlier: Review, request: ReviewRequest) -> tuple[int, dict[str, Any]]:
    if int(earlier.rating) == request.rating and earlier.comment == request.comment:
        return 200, review_view(earlier)
    raise ApiError(
        409,
        "already_reviewed",
        "This service was rated already; a review cannot be changed",
        "该服务已评价，评价不可修改",
        {"review": review_view(earlier)},
    )


def feedback(invitation_id: str) -> tuple[Review | None, Complaint | None]:
    """The review and the complaint of an invitation: one Query."""
    review = complaint = None
    for item in InvitationsTable.query(
        f"INVITATION#{invitation_id}", InvitationsTable.sk.startswith("FEEDBACK#"), consistent_read=True
    ):
        if isinstance(item, Review):
            review = item
        elif isinstance(item, Complaint):
            complaint = item
    return review, complaint


def latest(doctor_id: str, limit: int = LATEST_SHOWN, cursor: str | None = None) -> dict[str, Any]:
    """The doctor's reviews, newest first (the storefront shows the first page)."""
    scope = f"reviews:{doctor_id}"
    items, last_key = read_page(
        lambda **page: Review.by_doctor.query(f"REVIEWS#{doctor_id}", scan_index_forward=False, **page),
        Review,
        limit=limit,
        start=decode_cursor(cursor, scope),
    )
    return {"items": [review_view(item, public=True) for item in items], "next_cursor": encode_cursor(last_key, scope)}
