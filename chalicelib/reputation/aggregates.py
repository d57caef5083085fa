"""A doctor's reputation aggregates, kept by the Invitations stream (M-m, C3, C8).

Each stream record is read for the *facts* its new image holds:

- a review → ``review#<invitation>``: one more rating, and its stars added to the sum;
- a confirmed complaint → ``penalty#<complaint>``: one more active penalty;
- a complaint whose penalty was lifted → ``lift#<complaint>`` (and its ``penalty#`` too,
  should that record come late): one active penalty fewer;
- an invitation that became confirmed or not delivered → no fact, but the level is
  derived again (``anesthesia_count`` moves in the confirmation's own transaction).

A fact is applied with O(1) work: one read of the doctor's account, then one transaction
that puts the fact's mark (``REPUTATION#<fact>``, ``attribute_not_exists``) and writes
the new counts, the level and the discovery sort keys, conditioned on the account's
``revision``. A record delivered twice finds its mark; records out of order add up to the
same counts. ``rebuild`` derives the same counts from the source items, for
``make recompute-stars``.

Example
-------
>>> apply_record(record, utc_now())  # doctest: +SKIP
['review#i1']
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pynamodb.exceptions import DoesNotExist, UpdateError

from chalicelib.clock import iso
from chalicelib.config import get_settings
from chalicelib.doctors.ranking import rank_key
from chalicelib.invitations.machine import CONFIRMED, NOT_DELIVERED
from chalicelib.models.invitations import Complaint, Invitation, Review
from chalicelib.models.transactions import Batch, TransactionCancelledError
from chalicelib.models.users import Account, ReputationMark
from chalicelib.observability import logger
from chalicelib.reputation.formula import star_level

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

ATTEMPTS = 5
"""Tries when the account changes between the read and the write (another fact, a profile edit)."""
REFRESH_STATUSES = (CONFIRMED, NOT_DELIVERED)


class ReputationBusyError(RuntimeError):
    """The doctor's account kept changing: the stream delivers the record again."""


@dataclass(frozen=True)
class Counts:
    """What the level is derived from."""

    completed: int = 0
    rating_count: int = 0
    rating_sum: int = 0
    penalties: int = 0

    @classmethod
    def of(cls, account: Account) -> Counts:
        return cls(
            completed=int(account.anesthesia_count or 0),
            rating_count=int(account.rating_count or 0),
            rating_sum=int(account.rating_sum or 0),
            penalties=int(account.penalty_count or 0),
        )


@dataclass(frozen=True)
class Fact:
    """One change of the counts, applied once per doctor (``key`` names its mark)."""

    key: str
    ratings: int = 0
    stars: int = 0
    penalties: int = 0

    def added_to(self, counts: Counts) -> Counts:
        return replace(
            counts,
            rating_count=counts.rating_count + self.ratings,
            rating_sum=counts.rating_sum + self.stars,
            penalties=counts.penalties + self.penalties,
        )


def stored(account: Account) -> dict[str, Any]:
    """The reputation as the account holds it (what the storefront shows)."""
    return {
        "anesthesia_count": int(account.anesthesia_count or 0),
        "rating_count": int(account.rating_count or 0),
        "rating_sum": int(account.rating_sum or 0),
        "penalty_count": int(account.penalty_count or 0),
        "star_level": float(account.star_level or 0),
        "rank_key": account.rank_key,
    }


def expected(account: Account, counts: Counts) -> dict[str, Any]:
    """The reputation ``counts`` give, in the shape of ``stored``."""
    derived = star_level(
        completed=counts.completed,
        rating_count=counts.rating_count,
        rating_sum=counts.rating_sum,
        penalties=max(0, counts.penalties),
        rules=get_settings().star_rules,
    )
    listed = account.rank_key is not None
    return {
        "anesthesia_count": counts.completed,
        "rating_count": counts.rating_count,
        "rating_sum": counts.rating_sum,
        "penalty_count": counts.penalties,
        "star_level": derived.star_level,
        "rank_key": rank_key(derived.star_level, derived.rating_score, account.user_id) if listed else None,
    }


OWNED_ELSEWHERE = ("anesthesia_count", "rank_key")
"""Written by the confirmation's own transaction (an ``ADD``), and below with the catalogue key."""


def update_actions(values: dict[str, Any], now: datetime) -> list[Any]:
    actions = [getattr(Account, name).set(value) for name, value in values.items() if name not in OWNED_ELSEWHERE]
    if values["rank_key"] is not None:  # listed in discovery: both lists follow the new order
        actions += [Account.rank_key.set(values["rank_key"]), Account.catalogue_sort.set(values["rank_key"])]
    return [*actions, Account.revision.add(1), Account.updated_at.set(iso(now))]


def _account(doctor_id: str) -> Account | None:
    try:
        return Account.get(f"USER#{doctor_id}", "PROFILE", consistent_read=True)
    except DoesNotExist:
        return None


def apply_fact(doctor_id: str, fact: Fact, now: datetime) -> bool:
    """Add ``fact`` to the doctor's counts once; False when it had been applied already."""
    for _ in range(ATTEMPTS):
        account = _account(doctor_id)
        if account is None:
            logger.warning("reputation fact for an unknown doctor", extra={"doctor_id": doctor_id, "fact": fact.key})
            return False
        mark = ReputationMark(f"USER#{doctor_id}", f"REPUTATION#{fact.key}")
        mark.applied_at = iso(now)
        batch = Batch()
        batch.put("mark", mark, condition=ReputationMark.sk.does_not_exist())
        batch.update(
            "doctor",
            account,
            actions=update_actions(expected(account, fact.added_to(Counts.of(account))), now),
            condition=Account.revision == account.revision,
        )
        try:
            batch.commit(Account._get_connection().connection)
        except TransactionCancelledError as cancelled:
            if "mark" in cancelled.failed:
                return False
            continue  # the account changed since it was read: read it again
        return True
    raise ReputationBusyError(f"doctor {doctor_id} kept changing while applying {fact.key}")


def refresh(doctor_id: str, now: datetime) -> bool:
    """Derive the level again from the stored counts; True when it changed."""
    for _ in range(ATTEMPTS):
        account = _account(doctor_id)
        if account is None:
            return False
        values = expected(account, Counts.of(account))
        if values == stored(account):
            return False
        try:
            account.update(actions=update_actions(values, now), condition=Account.revision == account.revision)
        except UpdateError as error:
            if error.cause_response_code != "ConditionalCheckFailedException":
                raise
            continue  # a concurrent change: read again
        return True
    raise ReputationBusyError(f"doctor {doctor_id} kept changing while deriving the level")


# --- reading stream records ---------------------------------------------------------------


def facts_of(item: Any) -> list[Fact]:
    """The facts an item of the Invitations table holds."""
    if isinstance(item, Review):
        return [Fact(f"review#{item.invitation_id}", ratings=1, stars=int(item.rating))]
    if isinstance(item, Complaint) and item.status == "confirmed":
        facts = [Fact(f"penalty#{item.complaint_id}", penalties=1)]
        if item.penalty_lifted_at:
            facts.append(Fact(f"lift#{item.complaint_id}", penalties=-1))
        return facts
    return []


def _image_type(image: Mapping[str, Any]) -> str | None:
    value = image.get("type")
    return value.get("S") if isinstance(value, dict) else None


def apply_record(record: Mapping[str, Any], now: datetime) -> list[str]:
    """Apply what one stream record means for a doctor's reputation; return the facts applied."""
    from chalicelib.models.invitations import InvitationsTable

    change = record.get("dynamodb") or {}
    image = change.get("NewImage")
    if not image or _image_type(image) not in ("review", "complaint", "invitation"):
        return []
    item = InvitationsTable.from_raw_data(image)
    if isinstance(item, Invitation):
        old = change.get("OldImage") or {}
        was = (old.get("status") or {}).get("S")
        if item.status in REFRESH_STATUSES and was != item.status:
            refresh(item.doctor_id, now)
        return []
    return [fact.key for fact in facts_of(item) if apply_fact(item.doctor_id, fact, now)]


# --- rebuilding from the source items -----------------------------------------------------


def rebuild(doctor_id: str) -> Counts:
    """The counts as the source items give them: confirmed invitations, reviews, complaints."""
    completed = Invitation.by_doctor.count(
        f"DOCTOR#{doctor_id}", filter_condition=(Invitation.status == CONFIRMED) & (Invitation.kind == "invitation")
    )
    ratings = [int(review.rating) for review in Review.by_doctor.query(f"REVIEWS#{doctor_id}")]
    penalties = sum(
        1
        for complaint in Complaint.by_doctor.query(f"COMPLAINTS#{doctor_id}")
        if complaint.status == "confirmed" and not complaint.penalty_lifted_at
    )
    return Counts(completed=completed, rating_count=len(ratings), rating_sum=sum(ratings), penalties=penalties)


def source_facts(doctor_id: str) -> list[str]:
    """The keys of every fact the source items hold for the doctor (the marks there should be)."""
    keys = [f"review#{review.invitation_id}" for review in Review.by_doctor.query(f"REVIEWS#{doctor_id}")]
    for complaint in Complaint.by_doctor.query(f"COMPLAINTS#{doctor_id}"):
        keys += [fact.key for fact in facts_of(complaint)]
    return keys
