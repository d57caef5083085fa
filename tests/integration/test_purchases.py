"""Tips and membership purchases against DynamoDB Local, under concurrency.

A client that sends the same tip or membership request from several threads at once gets
one order; a payment callback delivered many times at once moves the money once and
extends a membership once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from chalicelib.accounts import memberships, profiles, signin, verification
from chalicelib.accounts.profiles import ProfilePatch
from chalicelib.accounts.roles import HOSPITAL
from chalicelib.accounts.verification import Credentials
from chalicelib.clock import utc_now
from chalicelib.invitations import service
from chalicelib.ledger import accounts
from chalicelib.ledger.journal import balance, transaction
from chalicelib.models.ledger import MoneyRecord, PaymentOrder
from chalicelib.payments import orders, settlement
from chalicelib.payments.orders import OrderRequest
from tests.integration.flow_helpers import (
    PASSWORD,
    api_errors,
    assert_ledger_ok,
    later,
    new_transaction_id,
    paid_invitation,
    phone,
    race,
)

if TYPE_CHECKING:
    from chalicelib.accounts.roles import Principal
    from tests.integration.flow_helpers import FakeProvider, People

PRICE = 1_980_000


def _confirmed(people: People) -> tuple[str, datetime]:
    """A paid, accepted, completed and confirmed invitation of ``people``; its id and the time it was confirmed."""
    now = utc_now()
    paid = paid_invitation(people, now)
    service.accept(people.doctor, paid.invitation_id, now)
    done = later(now, days=4)
    service.complete(people.doctor, paid.invitation_id, done)
    confirmed_at = later(done, hours=1)
    service.confirm(people.patient, paid.invitation_id, confirmed_at)
    return paid.invitation_id, confirmed_at


def _verified_hospital(people: People) -> Principal:
    now = utc_now()
    hospital = signin.register_with_phone(phone(), PASSWORD, HOSPITAL, None, now).principal
    patch = ProfilePatch(hospital_id=people.hospital_id, contact_name="Wang", contact_phone=phone())
    profiles.update_profile(hospital, patch, now)
    credentials = Credentials(institution_licence_no="PDY00001-1101", unified_social_credit_code="91440300708461136T")
    verification.submit(hospital, credentials, now)
    verification.decide(people.admin, hospital.user_id, True, None, now)
    return hospital


def _deliver_many(order_id: str, amount: int, now: datetime, copies: int = 8) -> list[str]:
    """The provider's success for ``order_id`` delivered ``copies`` times at once (one transaction, many events)."""
    transaction_id = new_transaction_id()
    outcome = settlement.Outcome(order_id, "succeeded", transaction_id, amount, "CNY")
    outcomes = race(copies, lambda index: settlement.apply_payment(outcome, now, event_id=f"EV-{order_id}-{index}"))
    api_errors(outcomes)  # a lost race is a 409 the provider retries, never another exception
    return [outcome for outcome in outcomes if isinstance(outcome, str)]


def test_the_same_tip_sent_at_once_opens_one_order_and_pays_once(people: People, provider: FakeProvider) -> None:
    # GIVEN a confirmed invitation
    invitation_id, confirmed_at = _confirmed(people)
    request = OrderRequest("tip", invitation_id, "sandbox", amount_fen=3_000)
    before = balance(accounts.doctor_available(people.doctor.user_id))

    # WHEN the patient's app sends the same tip from 8 threads at once
    outcomes = race(8, lambda _: orders.open_order(people.patient, request, confirmed_at))

    # THEN every answer that is not a retryable conflict names the same order; there is one order
    answers = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
    assert {error.code for error in api_errors(outcomes)} <= {"conflict"}
    assert answers and len({body["order_id"] for _, body in answers}) == 1
    order_id = answers[0][1]["order_id"]
    assert sorted(status for status, _ in answers).count(201) == 1
    owned = PaymentOrder.by_owner.query(f"OWNER#{people.patient.user_id}")
    assert [order.order_id for order in owned if order.purpose == "tip"] == [order_id]

    # WHEN its success is delivered 8 times at once THEN the doctor receives it once
    results = _deliver_many(order_id, 3_000, later(confirmed_at, minutes=1))
    assert results.count("applied") == 1 and set(results) <= {"applied", "duplicate"}
    assert balance(accounts.doctor_available(people.doctor.user_id)) == before + 3_000
    assert transaction(f"tip:{order_id}") is not None
    rows = [row.kind for row in MoneyRecord.query(f"RECORD#{people.patient.user_id}") if row.kind == "tip"]
    assert rows == ["tip"]
    assert_ledger_ok()


def test_a_membership_paid_many_times_at_once_is_extended_once(people: People, provider: FakeProvider) -> None:
    # GIVEN a verified hospital with a membership order
    hospital = _verified_hospital(people)
    now = utc_now()
    _, order = orders.open_order(hospital, OrderRequest("membership", "year", "sandbox"), now)
    before = balance(accounts.PLATFORM_MEMBERSHIP)

    # WHEN the provider's success arrives 8 times at once
    paid_at = later(now, minutes=1)
    results = _deliver_many(order["order_id"], PRICE, paid_at)

    # THEN the platform has the price once and the membership runs one year from the payment
    assert results.count("applied") == 1
    assert balance(accounts.PLATFORM_MEMBERSHIP) == before + PRICE
    view = memberships.view(hospital.user_id, paid_at)
    assert view["active"] is True and view["source"] == "purchase"
    assert datetime.fromisoformat(view["ends_at"]) == paid_at.replace(microsecond=0) + timedelta(days=365)
    assert_ledger_ok()


def test_a_renewal_paid_many_times_at_once_adds_one_year_to_the_end(people: People, provider: FakeProvider) -> None:
    # GIVEN a hospital that bought a year, then opened a renewal
    hospital = _verified_hospital(people)
    now = utc_now()
    _, first = orders.open_order(hospital, OrderRequest("membership", "year", "sandbox"), now)
    _deliver_many(first["order_id"], PRICE, later(now, minutes=1), copies=1)
    _, second = orders.open_order(hospital, OrderRequest("membership", "year", "sandbox"), later(now, minutes=2))
    assert second["order_id"] != first["order_id"]
    ends = datetime.fromisoformat(memberships.view(hospital.user_id, now)["ends_at"])

    # WHEN the second's success is delivered concurrently
    _deliver_many(second["order_id"], PRICE, later(now, minutes=3))

    # THEN the year is added to the first's end exactly once
    renewed = datetime.fromisoformat(memberships.view(hospital.user_id, now)["ends_at"])
    assert renewed == ends + timedelta(days=365)
    assert_ledger_ok()
