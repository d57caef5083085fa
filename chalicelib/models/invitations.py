"""The Invitations table: invitations and consultations with everything that hangs off them.

Keys (``pk``/``sk``): ``INVITATION#<id>`` holds the invitation (``META``), its chat
messages (``MESSAGE#<time>#<id>``), its outbox of notices (``NOTICE#<time>#<event>#<user>#<nonce>``),
review and complaints; ``CALENDAR#<doctor>`` /
``<date>`` is a doctor's day: working or not, the capacity offered for invitations and
consultations, and how much of it is booked. The requester's review is
``FEEDBACK#REVIEW`` and their complaint ``FEEDBACK#COMPLAINT`` (one each per invitation),
so one Query reads both.

Indexes:

- ``by_requester`` / ``by_doctor``: each side's own invitations, newest first. Reviews are
  listed under ``REVIEWS#<doctor>`` and complaints under ``COMPLAINTS#<doctor>`` in
  ``by_doctor``; complaints are also listed for the back office by status under
  ``COMPLAINTS#<status>`` in ``by_requester``.
- ``due``: *sparse*; an invitation is in it only while a job must act on it (answer
  deadline, payment window, hold period, a complaint's penalty period), ordered by
  ``due_at``, so a job reads only what is due, never the table.

The table streams new and old images to its consumers: the reputation aggregates and
the outbox of notices.
"""

from __future__ import annotations

from pynamodb.attributes import (
    BooleanAttribute,
    DiscriminatorAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model

from chalicelib.config import get_settings


class ByRequesterIndex(GlobalSecondaryIndex):
    """A patient's or hospital's own invitations."""

    class Meta:
        index_name = "by_requester"
        projection = AllProjection()

    requester_key = UnicodeAttribute(hash_key=True)
    created_at = UnicodeAttribute(range_key=True)


class ByDoctorIndex(GlobalSecondaryIndex):
    """The invitations a doctor received."""

    class Meta:
        index_name = "by_doctor"
        projection = AllProjection()

    doctor_key = UnicodeAttribute(hash_key=True)
    created_at = UnicodeAttribute(range_key=True)


class DueIndex(GlobalSecondaryIndex):
    """Work a scheduled job must do, by kind of deadline and time due."""

    class Meta:
        index_name = "due"
        projection = AllProjection()

    due_queue = UnicodeAttribute(hash_key=True)
    due_at = UnicodeAttribute(range_key=True)


class InvitationsTable(Model):
    """Base of every item in the Invitations table."""

    class Meta:
        table_name = get_settings().invitations_table
        billing_mode = "PAY_PER_REQUEST"
        stream_view_type = "NEW_AND_OLD_IMAGES"

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    item_type = DiscriminatorAttribute(attr_name="type")

    requester_key = UnicodeAttribute(null=True)
    doctor_key = UnicodeAttribute(null=True)
    created_at = UnicodeAttribute(null=True)
    due_queue = UnicodeAttribute(null=True)
    due_at = UnicodeAttribute(null=True)

    by_requester = ByRequesterIndex()
    by_doctor = ByDoctorIndex()
    by_due = DueIndex()


class CalendarDay(InvitationsTable, discriminator="calendar_day"):
    """A doctor's day (Asia/Shanghai date): ``CALENDAR#<doctor id>`` / ``<YYYY-MM-DD>``.

    The capacities are the doctor's; the booked counts belong to the invitation flow,
    which books with a conditional ``booked < capacity`` update, so a day can never be
    overbooked and the doctor can never lower a capacity below what is booked.
    """

    working = BooleanAttribute(default=False)
    invitation_capacity = NumberAttribute(default=0)
    consultation_capacity = NumberAttribute(default=0)
    invitations_booked = NumberAttribute(default=0)
    consultations_booked = NumberAttribute(default=0)
    updated_at = UnicodeAttribute()


class StatusChange(MapAttribute):
    """One step of an invitation's history: which transition, by whom, when and why."""

    at = UnicodeAttribute()
    transition = UnicodeAttribute()
    status = UnicodeAttribute()
    actor = UnicodeAttribute()
    actor_id = UnicodeAttribute(null=True)
    reason = UnicodeAttribute(null=True)


class Invitation(InvitationsTable, discriminator="invitation"):
    """An invitation or a consultation: ``INVITATION#<id>`` / ``META``.

    ``status`` moves only through ``invitations.machine`` transitions, each a conditional
    write on the status it leaves. ``fee_fen`` is the doctor's published fee when the
    invitation was made. ``clinical_cipher`` holds the pre-anesthesia summary and the
    requester's note, encrypted. ``doctor_key`` is set when the invitation is paid: a
    doctor never sees unpaid requests.
    """

    invitation_id = UnicodeAttribute()
    kind = UnicodeAttribute()
    status = UnicodeAttribute()
    requester_id = UnicodeAttribute()
    requester_role = UnicodeAttribute()
    doctor_id = UnicodeAttribute()
    hospital_id = UnicodeAttribute()
    hospital_name = UnicodeAttribute()
    scheduled_date = UnicodeAttribute()
    scheduled_time = UnicodeAttribute()
    scheduled_at = UnicodeAttribute()
    operation = MapAttribute(null=True)
    clinical_cipher = UnicodeAttribute(null=True)
    fee_fen = NumberAttribute()
    currency = UnicodeAttribute(default="CNY")
    platform_fee_fen = NumberAttribute(null=True)
    doctor_share_fen = NumberAttribute(null=True)
    payment_order_id = UnicodeAttribute(null=True)
    channel = UnicodeAttribute(null=True)
    refund_order_id = UnicodeAttribute(null=True)
    booked = BooleanAttribute(default=False)
    response_deadline = UnicodeAttribute(null=True)
    accepted_at = UnicodeAttribute(null=True)
    completed_at = UnicodeAttribute(null=True)
    hold_until = UnicodeAttribute(null=True)
    ended_at = UnicodeAttribute(null=True)
    rating = NumberAttribute(null=True)
    history = ListAttribute(of=StatusChange, default=list)
    revision = NumberAttribute(default=0)
    updated_at = UnicodeAttribute()


class Message(InvitationsTable, discriminator="message"):
    """A chat message: ``INVITATION#<id>`` / ``MESSAGE#<time>#<message id>``. Never changes money or status."""

    message_id = UnicodeAttribute()
    invitation_id = UnicodeAttribute()
    sender_id = UnicodeAttribute()
    sender_side = UnicodeAttribute()
    text = UnicodeAttribute()


class Notice(InvitationsTable, discriminator="notice"):
    """An outbox entry: ``INVITATION#<id>`` / ``NOTICE#<time>#<event>#<user>#<nonce>``.

    Written in the same transaction as the change it announces; the Invitations stream
    consumer sends it through the ``Notifier`` and records ``sent_at``. It names the event
    and the invitation only: no health details ever leave in a notification.
    """

    event = UnicodeAttribute()
    invitation_id = UnicodeAttribute()
    recipient_id = UnicodeAttribute()
    sent_at = UnicodeAttribute(null=True)
    outcome = UnicodeAttribute(null=True)


class Review(InvitationsTable, discriminator="review"):
    """The requester's rating of a confirmed invitation: ``INVITATION#<id>`` / ``FEEDBACK#REVIEW``.

    Written once (``attribute_not_exists``) and never changed; the stream adds it to the
    doctor's reputation. ``reviewer_masked`` is the name others see (``张*``).
    """

    invitation_id = UnicodeAttribute()
    doctor_id = UnicodeAttribute()
    requester_id = UnicodeAttribute()
    kind = UnicodeAttribute()
    rating = NumberAttribute()
    comment = UnicodeAttribute(null=True)
    reviewer_masked = UnicodeAttribute()


class Complaint(InvitationsTable, discriminator="complaint"):
    """A complaint about an invitation (C8): ``INVITATION#<id>`` / ``FEEDBACK#COMPLAINT``.

    ``status``: ``open`` → ``confirmed`` or ``rejected``, each a conditional write. A
    confirmed complaint lowers the doctor's level until ``penalty_until``; the
    ``lift_penalties`` job then sets ``penalty_lifted_at``, and the stream gives the
    level back. ``refund_fen`` is what a refund for a service not delivered returned.
    """

    complaint_id = UnicodeAttribute()
    invitation_id = UnicodeAttribute()
    doctor_id = UnicodeAttribute()
    requester_id = UnicodeAttribute()
    category = UnicodeAttribute()
    details = UnicodeAttribute()
    status = UnicodeAttribute()
    filed_at = UnicodeAttribute()
    decided_at = UnicodeAttribute(null=True)
    decided_by = UnicodeAttribute(null=True)
    decision_reason = UnicodeAttribute(null=True)
    refund_fen = NumberAttribute(null=True)
    penalty_until = UnicodeAttribute(null=True)
    penalty_lifted_at = UnicodeAttribute(null=True)
