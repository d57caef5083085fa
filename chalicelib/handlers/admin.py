"""Back office: the verification queue and decisions, VIP memberships by contract, complaints (M-b, M-g, C8).

Views import their domain modules when first called (see ``handlers.accounts``).
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import msgspec
from chalice import Blueprint, Response

from chalicelib.accounts.roles import ADMIN
from chalicelib.clock import utc_now
from chalicelib.errors import ApiError
from chalicelib.handlers.access import current_principal, route
from chalicelib.handlers.replay import once
from chalicelib.validation import PageQuery, parse, parse_query, path_id

bp = Blueprint(__name__)

ACCOUNT_NOT_FOUND = ApiError(404, "account_not_found", "The account does not exist", "账号不存在")
HOSPITAL_ACCOUNT_NOT_FOUND = ApiError(
    404, "hospital_account_not_found", "No hospital account has this id", "找不到该医院账号"
)
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class Rejection(msgspec.Struct, forbid_unknown_fields=True):
    reason: Text


class MembershipContract(msgspec.Struct, forbid_unknown_fields=True):
    active: bool
    reference: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    ends_on: date | None = None


@route(bp, "/v1/admin/verifications", methods=["GET"], roles=[ADMIN])
def review_queue() -> dict[str, Any]:
    """Doctors and hospitals waiting for review, oldest first."""
    from chalicelib.accounts import verification

    query = parse_query(bp.current_request.query_params, PageQuery)
    return verification.queue(query.limit, query.cursor)


@route(bp, "/v1/admin/verifications/{user_id}/approve", methods=["POST"], roles=[ADMIN])
def approve(user_id: str) -> dict[str, Any]:
    """Approve a submission; an approved doctor appears in discovery."""
    from chalicelib.accounts import verification

    return verification.decide(current_principal(), path_id(user_id, ACCOUNT_NOT_FOUND), True, None, utc_now())


@route(bp, "/v1/admin/verifications/{user_id}/reject", methods=["POST"], roles=[ADMIN])
def reject(user_id: str) -> dict[str, Any]:
    """Reject a submission with a reason the applicant sees."""
    from chalicelib.accounts import verification

    request = parse(bp.current_request.json_body, Rejection)
    return verification.decide(
        current_principal(), path_id(user_id, ACCOUNT_NOT_FOUND), False, request.reason, utc_now()
    )


@route(bp, "/v1/admin/memberships/{hospital_user_id}", methods=["PUT"], roles=[ADMIN])
def set_membership(hospital_user_id: str) -> dict[str, Any]:
    """Grant a VIP membership until a date, or end it now, by contract."""
    from chalicelib.accounts import memberships

    request = parse(bp.current_request.json_body, MembershipContract)
    return memberships.set_by_contract(
        current_principal(),
        path_id(hospital_user_id, HOSPITAL_ACCOUNT_NOT_FOUND),
        active=request.active,
        ends_on=request.ends_on,
        reference=request.reference,
        now=utc_now(),
    )


def _complaint_id(complaint_id: str) -> str:
    from chalicelib.reputation.complaints import NOT_FOUND

    return path_id(complaint_id, NOT_FOUND)


@route(bp, "/v1/admin/complaints", methods=["GET"], roles=[ADMIN])
def complaints_queue() -> dict[str, Any]:
    """Complaints by status: ``open`` (default) oldest first, ``confirmed`` or ``rejected`` newest first."""
    from chalicelib.reputation import complaints

    return complaints.queue(parse_query(bp.current_request.query_params, complaints.ComplaintQuery))


@route(bp, "/v1/admin/complaints/{complaint_id}/confirm", methods=["POST"], roles=[ADMIN])
def confirm_complaint(complaint_id: str) -> Response:
    """Confirm a complaint: the doctor's level drops for the penalty period; ``refund: true`` (the
    service was not delivered) refunds the requester in full. Takes an ``Idempotency-Key``."""
    from chalicelib.reputation import complaints

    key = _complaint_id(complaint_id)
    decision = parse(bp.current_request.json_body, complaints.Decision)
    return once(
        bp,
        f"POST /v1/admin/complaints/{key}/confirm",
        lambda: (200, complaints.confirm(current_principal(), key, decision, utc_now())),
    )


@route(bp, "/v1/admin/complaints/{complaint_id}/reject", methods=["POST"], roles=[ADMIN])
def reject_complaint(complaint_id: str) -> dict[str, Any]:
    """Reject a complaint with a reason both sides see."""
    from chalicelib.reputation import complaints

    request = parse(bp.current_request.json_body, Rejection)
    return complaints.reject(current_principal(), _complaint_id(complaint_id), request.reason, utc_now())


@route(bp, "/v1/admin/ledger/check", methods=["GET"], roles=[ADMIN])
def ledger_check() -> dict[str, Any]:
    """Run the ledger's invariants (L1, L2, L3, L6) and report what they found."""
    from chalicelib.ledger.audit import check_ledger

    return check_ledger().as_dict()
