"""Send the outbox: one Invitations stream record of a new notice → one notification.

The stream consumer ``send_notices`` calls ``send_notice_record`` for every record; only
the INSERT of a notice item does anything. The notice is read again (strongly
consistent), sent through the stage's ``Notifier``, then marked with ``sent_at`` and the
``outcome`` by an update conditional on ``sent_at`` not existing yet.

Delivery is **at least once**: a redelivered record whose notice is already marked is
skipped, but a crash (or a lost DynamoDB answer) between the send and the mark sends the
notification again on redelivery. A duplicate "your invitation was accepted" is
harmless; a lost one is not.

Example
-------
>>> send_notice_record(record)  # doctest: +SKIP
'sent'
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pynamodb.exceptions import DoesNotExist, UpdateError

from chalicelib.clock import iso, utc_now
from chalicelib.models.invitations import Notice
from chalicelib.models.users import Account
from chalicelib.notifications.notifier import OutgoingNotice, get_notifier, notice_link
from chalicelib.observability import logger

if TYPE_CHECKING:
    from collections.abc import Mapping

    from chalicelib.notifications.notifier import Notifier

NOTICE_TYPE = "notice"


def _string(image: Mapping[str, Any], name: str) -> str | None:
    value = image.get(name)
    return value.get("S") if isinstance(value, dict) else None


def _notice_keys(record: Mapping[str, Any]) -> tuple[str, str] | None:
    """The notice's keys when ``record`` is the INSERT of a notice item, else None."""
    if record.get("eventName") != "INSERT":
        return None
    image = (record.get("dynamodb") or {}).get("NewImage") or {}
    if _string(image, "type") != NOTICE_TYPE:
        return None
    pk, sk = _string(image, "pk"), _string(image, "sk")
    if not pk or not sk:
        raise ValueError("a notice record without its keys")
    return pk, sk


def _recipient(user_id: str) -> Account | None:
    try:
        return Account.get(f"USER#{user_id}", "PROFILE", consistent_read=True)
    except DoesNotExist:
        return None


def _occurred_at(notice: Notice) -> datetime | None:
    try:
        return datetime.fromisoformat(notice.created_at) if notice.created_at else None
    except ValueError:
        return None


def _mark(notice: Notice, outcome: str, now: datetime) -> bool:
    """Record the outcome once; False when another delivery marked it first (or the notice is gone)."""
    try:
        notice.update(
            actions=[Notice.sent_at.set(iso(now)), Notice.outcome.set(outcome)],
            condition=Notice.pk.exists() & Notice.sent_at.does_not_exist(),
        )
    except UpdateError as error:
        if error.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    return True


def send_notice_record(
    record: Mapping[str, Any], now: datetime | None = None, notifier: Notifier | None = None
) -> str | None:
    """Send the notice a raw DynamoDB stream record inserted; the outcome, or None when nothing was to send.

    None: the record is not a notice INSERT, or its notice is gone or already marked sent.
    A recipient that no longer exists is the outcome ``no_recipient`` (marked, not an
    error). ``NoticeNotSentError`` (WeChat busy or unreachable) and DynamoDB errors propagate,
    so the batch processor reports the record and it is delivered again.
    """
    keys = _notice_keys(record)
    if keys is None:
        return None
    try:
        notice = Notice.get(*keys, consistent_read=True)
    except DoesNotExist:
        return None
    if notice.sent_at:
        return None
    recipient = _recipient(notice.recipient_id)
    if recipient is None:
        outcome = "no_recipient"
    else:
        outgoing = OutgoingNotice(
            event=notice.event,
            invitation_id=notice.invitation_id,
            recipient_id=notice.recipient_id,
            link=notice_link(notice.invitation_id),
            occurred_at=_occurred_at(notice),
        )
        outcome = (notifier or get_notifier()).send(outgoing, recipient)
    marked = _mark(notice, outcome, now or utc_now())
    logger.info(
        "notice dispatched",
        extra={
            "notice_event": notice.event,
            "invitation_id": notice.invitation_id,
            "recipient_id": notice.recipient_id,
            "outcome": outcome,
            "marked": marked,
        },
    )
    return outcome
