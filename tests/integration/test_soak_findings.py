"""Regression tests for what ``make soak`` found under injected DynamoDB faults (DynamoDB Local).

Found: a transaction conflict on the write of a new session (sign-up, sign-in) answered 500,
after the account of a sign-up was already created, so the client's retry met "phone taken".
Now ``tokens.start_session`` sends that write again (its keys are fresh and random, so a
condition that fails means an earlier send of the same write committed), and only a conflict
on every send becomes 409 ``conflict``.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from chalicelib.accounts import tokens
from chalicelib.accounts.roles import PATIENT, Principal
from chalicelib.clock import utc_now
from chalicelib.errors import ApiError
from chalicelib.models.users import SessionFamily
from tests.integration.flow_helpers import Budget, cancelled_reply, transact_write_hook

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
