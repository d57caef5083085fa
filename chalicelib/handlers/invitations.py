"""Invitations and consultations: create, list, read, answer, cancel, complete, confirm, chat, review and
complain (M-d–M-l, C8).

The POSTs that move money take an ``Idempotency-Key``: a retry gets the first answer.
Views import their domain modules when first called (see ``handlers.accounts``).
"""

from __future__ import annotations

from typing import Any

from chalice import Blueprint, Response

from chalicelib.accounts.roles import ADMIN, DOCTOR, HOSPITAL, PATIENT, SIGNED_IN, VIP_HOSPITAL
from chalicelib.clock import utc_now
from chalicelib.handlers.access import current_principal, route
from chalicelib.handlers.replay import once
from chalicelib.invitations.requests import ChatMessage, InvitationQuery, InvitationRequest, Reason
from chalicelib.validation import PageQuery, parse, parse_query, path_id

bp = Blueprint(__name__)

REQUESTERS = [PATIENT, VIP_HOSPITAL]
"""Who may invite: patients, and hospitals with an active VIP membership."""
OWN_REQUESTERS = [PATIENT, HOSPITAL]
"""Who may act on their own invitations (a hospital whose membership ended still may)."""
PARTIES = [PATIENT, DOCTOR, HOSPITAL]


def _id(invitation_id: str) -> str:
    from chalicelib.invitations.engine import NOT_FOUND

    return path_id(invitation_id, NOT_FOUND)


@route(bp, "/v1/invitations", methods=["POST"], roles=REQUESTERS)
def create_invitation() -> Response:
    """Invite a doctor (or ask for a consultation) on a date; pay next with ``POST /v1/payments``."""
    from chalicelib.invitations import service

    request = parse(bp.current_request.json_body, InvitationRequest)
    return _once_then_view("POST /v1/invitations", lambda: service.create(current_principal(), request, utc_now()))


@route(bp, "/v1/invitations", methods=["GET"], roles=PARTIES)
def list_invitations() -> dict[str, Any]:
    """The caller's own invitations, newest first."""
    from chalicelib.invitations import service

    query = parse_query(bp.current_request.query_params, InvitationQuery)
    return service.list_own(current_principal(), query)


@route(bp, "/v1/invitations/{invitation_id}", methods=["GET"], roles=SIGNED_IN)
def read_invitation(invitation_id: str) -> dict[str, Any]:
    """One invitation with its history and deadlines (its requester, its doctor, or an admin)."""
    from chalicelib.invitations import service

    return service.read(_id(invitation_id), current_principal())


def _once_then_view(scope: str, run: Any) -> Response:
    """``once``, storing only the invitation's id, status and doctor's name for replays (never its health
    data or the requester's phone), and answering with the invitation as it is now: the view the work
    just made, or, for a replay, the invitation read afresh."""
    from chalicelib.invitations import service

    made: dict[str, Any] = {}

    def remembered() -> tuple[int, dict[str, Any]]:
        status, body = run()
        made.update(body)
        return status, {name: body[name] for name in ("invitation_id", "status", "doctor_name") if name in body}

    answer = once(bp, scope, remembered)
    if made:
        return Response(body=made, status_code=answer.status_code)
    current = service.read(answer.body["invitation_id"], current_principal())
    if "doctor_name" in answer.body:
        current["doctor_name"] = answer.body["doctor_name"]
    return Response(body=current, status_code=answer.status_code)


def _transition(invitation_id: str, action: str, run: Any) -> Response:
    return _once_then_view(f"POST /v1/invitations/{invitation_id}/{action}", lambda: (200, run()))


@route(bp, "/v1/invitations/{invitation_id}/accept", methods=["POST"], roles=[DOCTOR])
def accept(invitation_id: str) -> Response:
    """The invited doctor accepts; one unit of the date's capacity is taken."""
    from chalicelib.invitations import service

    key = _id(invitation_id)
    return _transition(key, "accept", lambda: service.accept(current_principal(), key, utc_now()))


@route(bp, "/v1/invitations/{invitation_id}/decline", methods=["POST"], roles=[DOCTOR])
def decline(invitation_id: str) -> Response:
    """The invited doctor declines, with a reason; the payer is refunded in full."""
    from chalicelib.invitations import service

    key = _id(invitation_id)
    request = parse(bp.current_request.json_body, Reason)
    return _transition(key, "decline", lambda: service.decline(current_principal(), key, request.reason, utc_now()))


@route(bp, "/v1/invitations/{invitation_id}/cancel", methods=["POST"], roles=OWN_REQUESTERS)
def cancel(invitation_id: str) -> Response:
    """The requester cancels, with a reason; see ``refund-preview`` for what comes back."""
    from chalicelib.invitations import service

    key = _id(invitation_id)
    request = parse(bp.current_request.json_body, Reason)
    return _transition(key, "cancel", lambda: service.cancel(current_principal(), key, request.reason, utc_now()))


@route(bp, "/v1/invitations/{invitation_id}/refund-preview", methods=["GET"], roles=OWN_REQUESTERS)
def refund_preview(invitation_id: str) -> dict[str, Any]:
    """What cancelling now would refund, under the configured policy, and why."""
    from chalicelib.invitations import service

    return service.refund_preview(current_principal(), _id(invitation_id), utc_now())


@route(bp, "/v1/invitations/{invitation_id}/complete", methods=["POST"], roles=[DOCTOR])
def complete(invitation_id: str) -> Response:
    """The doctor reports the service done (after its scheduled time)."""
    from chalicelib.invitations import service

    key = _id(invitation_id)
    return _transition(key, "complete", lambda: service.complete(current_principal(), key, utc_now()))


@route(bp, "/v1/invitations/{invitation_id}/confirm", methods=["POST"], roles=OWN_REQUESTERS)
def confirm(invitation_id: str) -> Response:
    """The requester confirms the service: the doctor's share becomes available."""
    from chalicelib.invitations import service

    key = _id(invitation_id)
    return _transition(key, "confirm", lambda: service.confirm(current_principal(), key, utc_now()))


@route(bp, "/v1/invitations/{invitation_id}/messages", methods=["GET"], roles=[*PARTIES, ADMIN])
def read_messages(invitation_id: str) -> dict[str, Any]:
    """The chat, newest first (its two sides, or an admin)."""
    from chalicelib.invitations import chat

    query = parse_query(bp.current_request.query_params, PageQuery)
    return chat.history(current_principal(), _id(invitation_id), query.limit, query.cursor)


@route(bp, "/v1/invitations/{invitation_id}/messages", methods=["POST"], roles=PARTIES)
def post_message(invitation_id: str) -> Response:
    """Write to the other side (text, up to 1,000 characters)."""
    from chalicelib.invitations import chat

    key = _id(invitation_id)
    message = parse(bp.current_request.json_body, ChatMessage)
    status, body = chat.post(current_principal(), key, message.text, utc_now())
    return Response(body=body, status_code=status)


@route(bp, "/v1/invitations/{invitation_id}/review", methods=["POST"], roles=OWN_REQUESTERS)
def review(invitation_id: str) -> Response:
    """Rate a confirmed service (1-5) with an optional comment, once; the same review again answers 200."""
    from chalicelib.reputation import reviews

    request = parse(bp.current_request.json_body, reviews.ReviewRequest)
    status, body = reviews.submit(current_principal(), _id(invitation_id), request, utc_now())
    return Response(body=body, status_code=status)


@route(bp, "/v1/invitations/{invitation_id}/complaints", methods=["POST"], roles=OWN_REQUESTERS)
def complain(invitation_id: str) -> Response:
    """Complain about the service (C8): a category and details; the back office decides."""
    from chalicelib.reputation import complaints

    request = parse(bp.current_request.json_body, complaints.ComplaintRequest)
    status, body = complaints.file(current_principal(), _id(invitation_id), request, utc_now())
    return Response(body=body, status_code=status)
