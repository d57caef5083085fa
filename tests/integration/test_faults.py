"""Injected DynamoDB faults and provider failures on the real engine: money moves once, or not at all.

Faults are botocore event hooks on the PynamoDB clients (``flow_helpers.transact_write_hook``):

- ``before-call`` answers a ``TransactWriteItems`` in DynamoDB's place: a cancellation with a
  ``TransactionConflict`` reason, or a ``ThrottlingException`` as it surfaces once botocore's
  own retries are spent;
- ``before-send`` answers one HTTP attempt with a throttle: botocore retries it itself;
- ``after-call`` lets the real call commit, then loses its answer (``ReadTimeoutError``): an
  ambiguous failure. The retry that follows must find the work done, not do it again.

Refund follow-up: a provider that fails with a retryable error leaves the refund requested,
counted and due later; the job sends it again with the same number until it settles, and
after ``ATTENTION_AFTER`` failures lists it for an operator.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from botocore.exceptions import ReadTimeoutError

from chalicelib.clock import utc_now
from chalicelib.invitations import deadlines, service
from chalicelib.payments import orders, refunds
from tests.integration.flow_helpers import (
    FEE_FEN,
    Budget,
    FakeProvider,
    assert_accepted_once,
    assert_ledger_ok_listing,
    assert_paid_once,
    assert_refunded_once,
    booked,
    cancelled_reply,
    drain_jobs,
    error_code,
    expect_moved,
    http,
    invitation,
    later,
    order,
    ordered_invitation,
    paid_invitation,
    post_callback,
    postings_of,
    refund_order,
    the_refund,
    throttled_reply,
    throttled_wire_response,
    transact_write_hook,
    transitions,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.integration.flow_helpers import Ordered, People

T = TypeVar("T")
REASON = "Away at a conference"


# --- faults -------------------------------------------------------------------------------------


def on_calls(numbers: set[int], fault: Callable[..., Any]) -> tuple[Callable[..., Any], Budget]:
    """A hook that applies ``fault`` to the TransactWriteItems calls numbered ``numbers`` (1-based)."""
    seen = Budget(10**9)

    def hook(**kwargs: Any) -> Any:
        seen.take()
        if seen.spent in numbers:
            return fault(**kwargs)
        return None

    return hook, seen


def under_fault(stage: str, fault: Callable[..., Any], number: int, work: Callable[[], T]) -> tuple[T, Budget]:
    """``work()`` while ``fault`` hits its TransactWriteItems call ``number`` at ``stage``; its result and the count."""
    hook, calls = on_calls({number}, fault)
    with transact_write_hook(stage, hook):
        return work(), calls


def conflict(**kwargs: Any) -> Any:
    return cancelled_reply(kwargs["params"])


def throttle(**_: Any) -> Any:
    return throttled_reply()


def throttle_attempt(request: Any, **_: Any) -> Any:
    return throttled_wire_response(request)


def lose_answer(**_: Any) -> None:
    raise ReadTimeoutError(endpoint_url="http://dynamodb.local")


# --- what the doctor does, and what must hold after -----------------------------------------------


def answer(api: Any, people: People, paid: Ordered, action: str, *, key: str | None = None) -> Any:
    """The doctor's ``accept`` or ``decline`` of ``paid``, over HTTP (the raw response)."""
    body = {"reason": REASON} if action == "decline" else None
    return http(api, "POST", f"/v1/invitations/{paid.invitation_id}/{action}", people.doctor, body, key=key)


def assert_still_pending(people: People, paid: Ordered) -> None:
    assert transitions(paid.invitation_id) == ["create", "pay"]
    assert set(postings_of(paid.invitation_id)) == {f"pay:{paid.order_id}"}
    expect_moved(paid.balances, escrow=FEE_FEN, clearing=-FEE_FEN)
    assert booked(people) == 0


# --- a transaction cancelled by a concurrent one, or throttled ----------------------------------


@pytest.mark.parametrize("fault", [conflict, throttle], ids=["conflicted", "throttled"])
def test_a_conflicted_or_throttled_acceptance_answers_409_conflict_not_500_and_a_retry_accepts_once(
    api: Any, people: People, provider: FakeProvider, fault: Callable[..., Any]
) -> None:
    # GIVEN a paid invitation, and DynamoDB cancelling the next transaction for a conflict, or
    # throttling it even after the SDK's retries
    paid = paid_invitation(people)

    # WHEN the doctor accepts
    first, calls = under_fault("before-call", fault, 1, lambda: answer(api, people, paid, "accept"))

    # THEN nothing changed, and the money is where it was, whatever the answer
    assert calls.spent == 1
    assert_still_pending(people, paid)
    # AND the retry accepts, once
    second = answer(api, people, paid, "accept")
    assert second.status_code == 200, second.json_body
    assert_accepted_once(people, paid)
    # AND the first answer told the client to retry
    assert (first.status_code, error_code(first)) == (409, "conflict"), first.json_body


def test_a_throttled_attempt_is_retried_by_the_sdk_and_the_acceptance_succeeds_once(
    api: Any, people: People, provider: FakeProvider
) -> None:
    # GIVEN DynamoDB throttling the first HTTP attempt of the next transaction
    paid = paid_invitation(people)

    # WHEN the doctor accepts
    response, attempts = under_fault("before-send", throttle_attempt, 1, lambda: answer(api, people, paid, "accept"))

    # THEN botocore retried it and the call succeeded, once
    assert attempts.spent >= 2
    assert response.status_code == 200, response.json_body
    assert_accepted_once(people, paid)


def test_a_conflicted_payment_callback_is_refused_with_409_and_applied_once_on_redelivery(
    api: Any, provider: FakeProvider, unpaid: Ordered
) -> None:
    # GIVEN an opened order and its genuine callback, and a conflict on the next transaction
    callback = provider.payment_callback(unpaid.order_id, FEE_FEN)

    first, calls = under_fault("before-call", conflict, 1, lambda: post_callback(api, callback))

    # THEN the provider is told to retry (409 FAIL), and nothing changed
    assert calls.spent == 1
    assert first.status_code == 409, first.body
    assert first.json_body["code"] == "FAIL"
    assert (order(unpaid.order_id).status, invitation(unpaid.invitation_id).status) == ("pending", "awaiting_payment")
    assert postings_of(unpaid.invitation_id) == {}
    # AND the redelivery is acknowledged and applied once
    assert [post_callback(api, callback).status_code for _ in range(2)] == [204, 204]
    assert_paid_once(unpaid, callback.transaction_id)


def test_a_conflicted_decline_changes_nothing_and_a_retry_refunds_once(
    api: Any, people: People, provider: FakeProvider
) -> None:
    # GIVEN a paid invitation, and a conflict on the decline's transaction
    paid = paid_invitation(people)

    first, calls = under_fault("before-call", conflict, 1, lambda: answer(api, people, paid, "decline"))

    # THEN 409 conflict; no refund order, the provider was not asked
    assert calls.spent == 1
    assert (first.status_code, error_code(first)) == (409, "conflict"), first.json_body
    assert_still_pending(people, paid)
    assert refund_order(paid.invitation_id) is None
    assert provider.refunds_of(paid.refund_no) == []
    # AND the retry declines and refunds, once
    second = answer(api, people, paid, "decline")
    assert second.status_code == 200, second.json_body
    assert transitions(paid.invitation_id) == ["create", "pay", "decline", "refund"]
    assert_refunded_once(paid, provider)


def test_a_conflict_while_settling_the_refund_does_not_fail_the_committed_decline(
    api: Any, people: People, provider: FakeProvider
) -> None:
    # GIVEN a paid invitation; the decline's transaction goes through, the refund settlement's conflicts
    drain_jobs()
    paid = paid_invitation(people)

    first, calls = under_fault("before-call", conflict, 2, lambda: answer(api, people, paid, "decline"))

    # THEN the decline stands and the refund is not lost: the job settles it, once
    assert calls.spent >= 2
    assert transitions(paid.invitation_id) == ["create", "pay", "decline"]
    assert the_refund(paid.invitation_id).status == "requested"
    deadlines.follow_up_refunds(later(utc_now(), minutes=1))
    assert_refunded_once(paid, provider, calls=2)
    # AND the doctor was told the decline happened
    assert first.status_code == 200, first.json_body


# --- ambiguous failures: the write commits, its answer is lost ----------------------------------


def test_an_acceptance_whose_answer_was_lost_is_not_repeated_by_the_retry(
    api: Any, people: People, provider: FakeProvider
) -> None:
    # GIVEN a paid invitation; the acceptance's transaction commits but its answer is lost
    paid = paid_invitation(people)
    key = f"acc-{uuid.uuid4().hex}"

    first, calls = under_fault("after-call", lose_answer, 1, lambda: answer(api, people, paid, "accept", key=key))

    # THEN the first answer is an error (the server cannot know the outcome)
    assert calls.spent == 1
    assert first.status_code >= 500, first.json_body
    # AND the retry (same key) does not accept a second time: one posting, one unit of capacity
    second = answer(api, people, paid, "accept", key=key)
    assert second.status_code in (200, 409), second.json_body
    if second.status_code == 409:
        assert error_code(second) == "invalid_transition"
    assert invitation(paid.invitation_id).status == "accepted"
    assert_accepted_once(people, paid)


def test_a_payment_callback_whose_answer_was_lost_is_applied_once_on_redelivery(
    api: Any, provider: FakeProvider, unpaid: Ordered
) -> None:
    # GIVEN an opened order; the payment's transaction commits but its answer is lost
    callback = provider.payment_callback(unpaid.order_id, FEE_FEN)

    first, calls = under_fault("after-call", lose_answer, 1, lambda: post_callback(api, callback))

    # THEN the provider is not told it succeeded (it will deliver again)
    assert calls.spent == 1
    assert first.status_code >= 500, first.body
    # AND the redeliveries are acknowledged without a second posting
    assert [post_callback(api, callback).status_code for _ in range(2)] == [204, 204]
    assert_paid_once(unpaid, callback.transaction_id)


def test_a_late_payment_whose_answer_was_lost_is_still_refunded_once(
    api: Any, people: People, provider: FakeProvider
) -> None:
    # GIVEN an invitation closed unpaid; its late payment's transaction commits but the answer is lost
    drain_jobs()
    closed = ordered_invitation(people)
    now = utc_now()
    assert orders.follow_up(order(closed.order_id), later(now, minutes=31)) == "applied"
    callback = provider.payment_callback(closed.order_id, FEE_FEN)

    first, calls = under_fault("after-call", lose_answer, 1, lambda: post_callback(api, callback))

    assert calls.spent == 1
    assert first.status_code >= 500, first.body
    # WHEN the provider delivers again and the refund job runs
    assert post_callback(api, callback).status_code == 204
    deadlines.follow_up_refunds(later(now, minutes=1))

    # THEN the payment was taken in once and refunded once: the refund was not lost
    assert_refunded_once(closed, provider)


def test_a_refund_settlement_whose_answer_was_lost_is_not_posted_again(
    api: Any, people: People, provider: FakeProvider
) -> None:
    # GIVEN a declined invitation whose refund the provider was still processing
    drain_jobs()
    paid = paid_invitation(people)
    provider.refund_mode = "processing"
    now = utc_now()
    service.decline(people.doctor, paid.invitation_id, REASON, now)
    assert invitation(paid.invitation_id).status == "refunding"
    provider.finish_refunds()

    # WHEN the job settles it, and the settlement's answer is lost
    report, calls = under_fault(
        "after-call", lose_answer, 1, lambda: deadlines.follow_up_refunds(later(now, minutes=2))
    )

    # THEN the job counts a failure, and the settlement had committed
    assert calls.spent == 1
    assert report["failed"] >= 1, report
    assert invitation(paid.invitation_id).status == "refunded"
    # WHEN the job runs again and the provider's refund callback arrives, twice
    deadlines.follow_up_refunds(later(now, minutes=30))
    callback = provider.refund_callback(paid.refund_no, paid.order_id, FEE_FEN, FEE_FEN)
    assert [post_callback(api, callback).status_code for _ in range(2)] == [204, 204]

    # THEN the refund was posted once
    assert transitions(paid.invitation_id) == ["create", "pay", "decline", "start_refund", "refund"]
    assert_refunded_once(paid, provider)


def test_a_decline_whose_refund_settlement_answer_was_lost_is_not_refunded_twice(
    api: Any, people: People, provider: FakeProvider
) -> None:
    # GIVEN a paid invitation; the decline commits, the refund settlement commits but its answer is lost
    drain_jobs()
    paid = paid_invitation(people)

    first, calls = under_fault("after-call", lose_answer, 2, lambda: answer(api, people, paid, "decline"))

    assert calls.spent >= 2
    # WHEN the doctor retries and the refund job runs
    second = answer(api, people, paid, "decline")
    assert (second.status_code, error_code(second)) == (409, "invalid_transition"), second.json_body
    deadlines.follow_up_refunds(later(utc_now(), hours=1))

    # THEN the payer was refunded once
    assert transitions(paid.invitation_id) == ["create", "pay", "decline", "refund"]
    assert_refunded_once(paid, provider)
    # AND the doctor was told the decline happened (its own transaction had committed)
    assert first.status_code == 200, first.json_body


# --- refund follow-up ---------------------------------------------------------------------------


def _due_at(paid: Ordered) -> datetime:
    return datetime.fromisoformat(the_refund(paid.invitation_id).due_at)


def paid_while_refunds_fail(people: People, provider: FakeProvider) -> Ordered:
    """A paid invitation (the jobs' queues drained first), and a provider that times out on refunds."""
    drain_jobs()
    paid = paid_invitation(people)
    provider.refund_mode = "fail"
    return paid


def test_a_refund_the_provider_failed_stays_requested_and_settles_once_when_it_recovers(
    people: People, provider: FakeProvider
) -> None:
    # GIVEN a paid invitation and a provider that times out on refunds
    paid = paid_while_refunds_fail(people, provider)
    now = utc_now()

    # WHEN the doctor declines
    declined = service.decline(people.doctor, paid.invitation_id, REASON, now)

    # THEN the decline stands; the refund is requested, its failure counted, its next try due later
    assert declined["status"] == "declined"
    refund = the_refund(paid.invitation_id)
    assert (refund.status, int(refund.attempts), bool(refund.needs_attention)) == ("requested", 1, False)
    assert "SYSTEM_ERROR" in (refund.last_error or "")
    assert _due_at(paid) > now
    expect_moved(paid.balances, escrow=FEE_FEN, clearing=-FEE_FEN)
    # AND the job does not send it again before it is due
    deadlines.follow_up_refunds(later(now, seconds=30))
    assert len(provider.refunds_of(refund.refund_no)) == 1
    # WHEN the provider recovers and the job runs once it is due, and again later
    provider.refund_mode = "succeed"
    deadlines.follow_up_refunds(later(_due_at(paid), seconds=1))
    deadlines.follow_up_refunds(later(now, days=1))

    # THEN it settled exactly once, sent each time with the same number
    assert_refunded_once(paid, provider, calls=2)
    assert transitions(paid.invitation_id) == ["create", "pay", "decline", "refund"]
    assert the_refund(paid.invitation_id).attempts == 1


def test_a_refund_that_keeps_failing_is_listed_for_an_operator_and_never_lost(
    people: People, provider: FakeProvider
) -> None:
    # GIVEN a declined invitation whose refund failed once
    paid = paid_while_refunds_fail(people, provider)
    service.decline(people.doctor, paid.invitation_id, REASON, utc_now())

    # WHEN the job retries it each time it is due, and the provider keeps failing
    for attempt in range(2, refunds.ATTENTION_AFTER + 1):
        due = _due_at(paid)
        deadlines.follow_up_refunds(later(due, seconds=1))
        refund = the_refund(paid.invitation_id)
        assert int(refund.attempts) == attempt
        assert datetime.fromisoformat(refund.due_at) > due
        assert bool(refund.needs_attention) == (attempt >= refunds.ATTENTION_AFTER)

    # THEN after five failures it is listed for an operator, still requested, still queued
    assert int(refund.attempts) == refunds.ATTENTION_AFTER
    assert refund.status == "requested"
    assert paid.refund_no in {item.refund_no for item in refunds.needing_attention()}
    assert_ledger_ok_listing(paid.refund_no)
    assert len(provider.refunds_of(paid.refund_no)) == refunds.ATTENTION_AFTER
    expect_moved(paid.balances, escrow=FEE_FEN, clearing=-FEE_FEN)
    # AND when the provider recovers, the job settles it once and the operator's list clears
    provider.refund_mode = "succeed"
    deadlines.follow_up_refunds(later(_due_at(paid), seconds=1))
    assert paid.refund_no not in {item.refund_no for item in refunds.needing_attention()}
    assert_refunded_once(paid, provider, calls=refunds.ATTENTION_AFTER + 1)
