"""The chat between a requester and the invited doctor (M-h): messages never change money or status.

Only the two of them post, from payment until ``chat_days_after_end`` days after the
invitation ended (completed, declined, expired, cancelled); admins may read, to settle
complaints. Each message tells the other side through the outbox.

Example
-------
>>> post(patient, "3f…", "Fasting since 22:00", utc_now())  # doctest: +SKIP
(201, {'message_id': '…', 'from': 'requester', 'text': 'Fasting since 22:00', 'sent_at': '…'})
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from chalicelib.clock import iso, iso_precise
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.invitations import engine
from chalicelib.invitations.machine import ADMIN, DOCTOR, REQUESTER
from chalicelib.invitations.service import side_of
from chalicelib.models.invitations import Invitation, Message
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy
from chalicelib.notifications.outbox import add_notice
from chalicelib.pagination import decode_cursor, encode_cursor, read_page

if TYPE_CHECKING:
    from chalicelib.accounts.roles import Principal


def _closes_at(invitation: Invitation) -> datetime | None:
    """When the chat closes: some days after the invitation ended (None while it runs)."""
    ended = invitation.completed_at or invitation.ended_at
    if ended is None:
        return None
    return datetime.fromisoformat(ended) + timedelta(days=get_settings().chat_days_after_end)


def _view(message: Message) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "from": message.sender_side,
        "text": message.text,
        "sent_at": message.created_at,
    }


def post(principal: Principal, invitation_id: str, text: str, now: datetime) -> tuple[int, dict[str, Any]]:
    """Post a message as the requester or the doctor of a paid invitation whose chat is open."""
    invitation = engine.load(invitation_id)
    side = side_of(invitation, principal)
    if side == ADMIN:
        raise ApiError(403, "forbidden", "Only the requester and the doctor write in this chat", "仅邀请双方可发送消息")
    closes_at = _closes_at(invitation)
    if not invitation.doctor_key:  # unpaid, or paid only after it closed (refunded at once)
        raise ApiError(409, "chat_not_open", "The chat opens when the invitation is paid", "支付后才能发送消息")
    if closes_at is not None and now > closes_at:
        raise ApiError(409, "chat_closed", "This chat has closed", "该会话已关闭", {"closed_at": iso(closes_at)})
    message_id = secrets.token_hex(8)
    message = Message(f"INVITATION#{invitation_id}", f"MESSAGE#{iso_precise(now)}#{message_id}")
    message.message_id, message.invitation_id, message.text = message_id, invitation_id, text
    message.sender_id, message.sender_side, message.created_at = principal.user_id, side, iso(now)
    other = invitation.doctor_id if side == REQUESTER else invitation.requester_id
    batch = Batch()
    batch.put("message", message, condition=Message.pk.does_not_exist())
    add_notice(batch, invitation_id=invitation_id, event="new_message", recipient_id=other, now=now)
    try:
        batch.commit(Message._get_connection().connection)
    except TransactionCancelledError:
        raise busy() from None
    return 201, _view(message)


def history(principal: Principal, invitation_id: str, limit: int, cursor: str | None) -> dict[str, Any]:
    """The messages, newest first, a page at a time."""
    invitation = engine.load(invitation_id)
    side = side_of(invitation, principal)
    if side not in (REQUESTER, DOCTOR, ADMIN):
        raise engine.NOT_FOUND
    scope = f"chat:{invitation_id}"

    def page(**kwargs: Any) -> Any:
        return Message.query(
            f"INVITATION#{invitation_id}", Message.sk.startswith("MESSAGE#"), scan_index_forward=False, **kwargs
        )

    items, last = read_page(page, Message, limit=limit, start=decode_cursor(cursor, scope))
    closes_at = _closes_at(invitation)
    return {
        "items": [_view(item) for item in items],
        "next_cursor": encode_cursor(last, scope),
        "closes_at": iso(closes_at) if closes_at else None,
    }
