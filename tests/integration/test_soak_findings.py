"""Regression tests for what ``make soak`` found under injected DynamoDB faults (DynamoDB Local).

Found: a transaction conflict on the write of a new session (sign-up, sign-in) answered 500,
after the account of a sign-up was already created, so the client's retry met "phone taken".
Now ``tokens.start_session`` sends that write again (its keys are fresh and random, so a
condition that fails means an earlier send of the same write committed), and only a conflict
on every send becomes 409 ``conflict``.

Found: a payment order whose first write (the order and the invitation's link to it, one
transaction) met a conflict answered 409 ``invitation_not_payable``, which a client takes as
final. An invitation still waiting for payment now answers 409 ``conflict`` (retry), and the
retry opens the order.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from chalicelib.accounts import tokens
from chalicelib.accounts.roles import PATIENT, Principal
from chalicelib.clock import utc_now
from chalicelib.errors import ApiError
from chalicelib.invitations.machine import AWAITING_PAYMENT
from chalicelib.models.users import SessionFamily
from tests.integration.flow_helpers import (
    Budget,
    People,
    cancelled_reply,
    invitation,
    invite,
    open_order,
    order,
    transact_write_hook,
)

pytestmark = pytest.mark.usefixtures("tables")


def _conflicts(times: int) -> tuple[Any, Budget]:
    budget = Budget(times)

    def hook(**kwargs: Any) -> Any:
        return cancelled_reply(kwargs["params"]) if budget.take() else None

    return hook, budget


def _families(user_id: str) -> list[SessionFamily]:
    return list(SessionFamily.query(f"USER#{user_id}", SessionFamily.sk.startswith("SESSION#"), consistent_read=True))


def test_a_session_write_that_meets_a_conflict_is_sent_again() -> None:
    # GIVEN the first transaction of a new session is cancelled for a conflict
    principal = Principal(f"u{uuid.uuid4().hex[:20]}", PATIENT)
    hook, budget = _conflicts(1)
    # WHEN the user signs in
    with transact_write_hook("before-call", hook):
        session = tokens.start_session(principal, utc_now())
    # THEN the session exists once, and its refresh token works
    assert budget.spent == 1
    assert len(_families(principal.user_id)) == 1
    assert tokens.refresh_session(session.refresh_token, utc_now()).principal == principal


def test_a_conflict_on_every_send_is_a_409_to_retry() -> None:
    principal = Principal(f"u{uuid.uuid4().hex[:20]}", PATIENT)
    hook, _ = _conflicts(10)
    with transact_write_hook("before-call", hook), pytest.raises(ApiError) as raised:
        tokens.start_session(principal, utc_now())
    assert (raised.value.status, raised.value.code) == (409, "conflict")
    assert _families(principal.user_id) == []


def test_a_payment_order_that_meets_a_conflict_is_a_409_to_retry(people: People) -> None:
    # GIVEN an invitation waiting for payment, and the order's transaction cancelled for a conflict
    invitation_id = invite(people)
    hook, budget = _conflicts(1)
    # WHEN the patient opens the payment order
    with transact_write_hook("before-call", hook), pytest.raises(ApiError) as raised:
        open_order(people, invitation_id)
    # THEN the answer says retry, and nothing was stored
    assert budget.spent == 1
    assert (raised.value.status, raised.value.code) == (409, "conflict")
    assert invitation(invitation_id).payment_order_id is None
    # AND the retry opens the order
    order_id = open_order(people, invitation_id)
    assert order(order_id).status == "pending"
    assert invitation(invitation_id).payment_order_id == order_id
    assert invitation(invitation_id).status == AWAITING_PAYMENT
