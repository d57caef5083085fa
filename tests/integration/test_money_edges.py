"""Edges of the money path: a refund reported failed that succeeds later, no cancel after the service time,
no health data in replay records, a refund number read as a payment order (DynamoDB Local)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from chalicelib.clock import utc_now
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.invitations import service
from chalicelib.ledger import accounts
from chalicelib.ledger.journal import balance
from chalicelib.payments import refunds
from tests.integration.flow_helpers import (
    SUMMARY,
    http,
    invitation,
    invitation_json,
    paid_invitation,
    refund_order,
)

if TYPE_CHECKING:
    from tests.integration.flow_helpers import FakeProvider, People


# --- 1. a refund reported failed (WeChat ABNORMAL) is final: a later SUCCESS is dropped -------------------


def test_a_refund_that_succeeds_after_being_reported_abnormal_is_still_settled(
    people: People, provider: FakeProvider
) -> None:
    # GIVEN a declined invitation whose refund the provider first reports ABNORMAL (refund_failed)
    provider.refund_mode = "processing"
    paid = paid_invitation(people)
    service.decline(people.doctor, paid.invitation_id, "Not free that day", utc_now())
    refund = refund_order(paid.invitation_id)
    assert refund is not None
    assert refunds.apply_state(refund, "failed", "50abnormal", utc_now()) == "applied"
    refund = refund_order(paid.invitation_id)
    assert refund is not None
    # AND the failed refund has left the retry queue: no job will ever send or query it again
    assert refund.refund_no not in [r.refund_no for r in refunds.due(utc_now() + timedelta(days=30), 1000)]

    # WHEN the operator fixes it at the provider and REFUND.SUCCESS arrives (callback or query)
    outcome = refunds.apply_state(refund, "succeeded", "50abnormal", utc_now())

    # THEN the money that left the provider is recorded and the invitation ends refunded
    assert outcome == "applied", outcome  # today: "duplicate", nothing posted
    assert invitation(paid.invitation_id).status == "refunded"
    assert balance(accounts.escrow(paid.invitation_id)) == 0


# --- 2. a refund whose ledger posting cannot commit loops every minute, unflagged ------------------------


def test_the_requester_cannot_cancel_after_the_operation_time_to_claw_back_half(
    people: People, provider: FakeProvider
) -> None:
    # GIVEN an accepted invitation whose operation time has passed (the doctor has not marked it done yet)
    paid = paid_invitation(people)
    service.accept(people.doctor, paid.invitation_id, utc_now())
    scheduled = datetime.fromisoformat(invitation(paid.invitation_id).scheduled_at)
    after_the_operation = scheduled + timedelta(hours=3)

    # WHEN the requester cancels then
    # THEN it is refused (service delivered; a dispute is the way), not a 50 % refund from the doctor's share
    with pytest.raises(ApiError) as refused:
        service.cancel(people.patient, paid.invitation_id, "Changed my mind", after_the_operation)
    assert refused.value.status == 409


# --- 5. the Idempotency-Key record stores the decrypted clinical summary ------------------------------


def test_the_idempotency_record_of_a_create_holds_no_plaintext_health_data(
    api: Any, people: People, provider: FakeProvider, ddb: Any
) -> None:
    # GIVEN an invitation created over HTTP with an Idempotency-Key; its summary lists an allergy
    body = invitation_json(people, msgspec.structs.replace(SUMMARY, allergies=["zz-unique-allergen-7731"]))
    response = http(api, "POST", "/v1/invitations", people.patient, body, key="create-health-0001")
    assert response.status_code == 201, response.json_body

    # WHEN we read the idempotency table (encrypted at rest elsewhere: privacy.encrypt)
    items = ddb.scan(TableName=get_settings().idempotency_table)["Items"]
    stored = json.dumps(items)

    # THEN the allergy is not there in plain text
    assert "zz-unique-allergen-7731" not in stored


# --- 6. an invitation nobody opened a payment order for never leaves awaiting_payment -------------------


def test_reading_a_refund_number_as_a_payment_order_is_a_404_not_a_500(
    api: Any, people: People, provider: FakeProvider
) -> None:
    # GIVEN a declined (refunded) invitation: its refund order RF<id> lives beside the payment orders
    paid = paid_invitation(people)
    service.decline(people.doctor, paid.invitation_id, "Not free that day", utc_now())
    refund = refund_order(paid.invitation_id)
    assert refund is not None

    # WHEN the payer (or anyone signed in) asks for it as a payment order
    response = http(api, "GET", f"/v1/payments/{refund.refund_no}", people.patient)

    # THEN 404 payment_order_not_found, not a 500 from PynamoDB's discriminator check
    assert response.status_code == 404, (response.status_code, response.json_body)
