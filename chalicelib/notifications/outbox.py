"""The transactional outbox: a notice is written in the same transaction as the change it announces.

So a user hears of an acceptance exactly when it happened, and of nothing that was rolled
back. The Invitations stream consumer sends each new notice (``notifications.dispatch``).

Example
-------
>>> batch = Batch()
>>> add_notice(batch, invitation_id="i1", event="accepted", recipient_id="u1", now=utc_now())  # doctest: +SKIP
"""

from __future__ import annotations

from secrets import token_hex
from typing import TYPE_CHECKING

from chalicelib.clock import iso, iso_precise
from chalicelib.models.invitations import Notice

if TYPE_CHECKING:
    from datetime import datetime

    from chalicelib.models.transactions import Batch

EVENTS = frozenset(
    {
        "new_invitation",
        "accepted",
        "declined",
        "expired",
        "cancelled",
        "refunded",
        "completed",
        "confirmed",
        "new_message",
        "tipped",
        "reviewed",
        "complaint_filed",
        "complaint_confirmed",
        "complaint_rejected",
    }
)


def add_notice(batch: Batch, *, invitation_id: str, event: str, recipient_id: str, now: datetime) -> None:
    """Add to ``batch`` a notice of ``event`` on the invitation for ``recipient_id``."""
    if event not in EVENTS:
        raise ValueError(f"unknown notice event {event!r}")
    at = iso(now)
    notice = Notice(f"INVITATION#{invitation_id}", f"NOTICE#{iso_precise(now)}#{event}#{recipient_id}#{token_hex(4)}")
    notice.event, notice.invitation_id, notice.recipient_id, notice.created_at = event, invitation_id, recipient_id, at
    batch.put(f"notice:{event}:{recipient_id}", notice, condition=Notice.pk.does_not_exist())
