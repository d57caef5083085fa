"""The invitation flow on the real engine: races between people and jobs, capacity, retried POSTs.

Every race releases its threads at a barrier. Money is checked twice: the balances each
step must have moved (exact, in fen), and ``check_ledger`` over the whole ledger.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.clock import iso, utc_now
from chalicelib.errors import ApiError
from chalicelib.invitations import deadlines, engine, service
from chalicelib.models.invitations import Invitation
from chalicelib.models.users import Account
from tests.integration.flow_helpers import (
    DOCTOR_SHARE_FEN,
    FEE_FEN,
    PLATFORM_FEE_FEN,
    FakeProvider,
    api_errors,
    assert_accepted_once,
    assert_ledger_ok,
    assert_refunded_once,
    booked,
    drain_jobs,
    error_code,
    expect_moved,
    http,
    invitation,
    invitation_json,
    invite,
    later,
    make_people,
    paid_invitation,
    postings_of,
    race,
    refund_order,
    the_refund,
    transitions,
    until_settled,
)

if TYPE_CHECKING:
    from chalicelib.accounts.roles import Principal
    from tests.integration.flow_helpers import Ordered, People

THREADS = 20
ACTIONS = ("accept", "decline", "cancel", "expire")


# --- the whole way, once ------------------------------------------------------------------------


def test_paid_accepted_completed_confirmed_moves_exact_amounts(people: People, provider: FakeProvider) -> None:
    # GIVEN a paid invitation
    paid = paid_invitation(people)
    expect_moved(paid.balances, escrow=FEE_FEN, clearing=-FEE_FEN)
    count_before = int(Account.get(f"USER#{people.doctor.user_id}", "PROFILE", consistent_read=True).anesthesia_count)

    # WHEN the doctor accepts, does the work after its time, and the patient confirms
    now = utc_now()
    service.accept(people.doctor, paid.invitation_id, now)
    expect_moved(paid.balances, pending=DOCTOR_SHARE_FEN, fee=PLATFORM_FEE_FEN, clearing=-FEE_FEN)
    after = later(now, days=4)
    service.complete(people.doctor, paid.invitation_id, after)
    service.confirm(people.patient, paid.invitation_id, later(after, hours=1))

    # THEN the doctor's share is available, the fee is the platform's, the escrow is empty
    expect_moved(paid.balances, available=DOCTOR_SHARE_FEN, fee=PLATFORM_FEE_FEN, clearing=-FEE_FEN)
    assert set(postings_of(paid.invitation_id)) == {
        f"pay:{paid.order_id}",
        f"accept:{paid.invitation_id}",
        f"release:{paid.invitation_id}",
    }
    assert transitions(paid.invitation_id) == ["create", "pay", "accept", "complete", "confirm"]
    doctor = Account.get(f"USER#{people.doctor.user_id}", "PROFILE", consistent_read=True)
    assert int(doctor.anesthesia_count) == count_before + 1
    assert_ledger_ok()


# --- twenty threads at one invitation -----------------------------------------------------------


def _fire(people: People, invitation_id: str, index: int, now: datetime, late: datetime) -> str:
    """Thread ``index`` fires its action; the status it answers with."""
    action = ACTIONS[index % len(ACTIONS)]
    if action == "accept":
        return service.accept(people.doctor, invitation_id, now)["status"]
    if action == "decline":
        return service.decline(people.doctor, invitation_id, "Not available that day", now)["status"]
    if action == "cancel":
        return service.cancel(people.patient, invitation_id, "Found a doctor nearer home", now)["status"]
    return service.expire(engine.load(invitation_id), late).status


def _assert_one_outcome(people: People, paid: Ordered, winner: str, provider: FakeProvider) -> None:
    invitation_id = paid.invitation_id
    if winner == "accept":
        assert invitation(invitation_id).status == "accepted"
        assert_accepted_once(people, paid)
        assert refund_order(invitation_id) is None
    else:
        assert transitions(invitation_id) == ["create", "pay", winner, "refund"]
        assert_refunded_once(paid, provider)  # everything went back the way it came
        assert booked(people) == 0
        refund = the_refund(invitation_id)
        assert (refund.status, int(refund.amount_fen)) == ("succeeded", FEE_FEN)


@pytest.mark.parametrize("round_", range(3))
def test_twenty_threads_that_all_saw_pending_response_leave_exactly_one_outcome(
    people: People, provider: FakeProvider, monkeypatch: pytest.MonkeyPatch, round_: int
) -> None:
    # GIVEN a paid invitation, and 20 threads (accept, decline, cancel, expire past the
    # deadline) that each read it as pending_response before any of them writes
    paid = paid_invitation(people)
    invitation_id = paid.invitation_id
    now, late = utc_now(), later(utc_now(), days=2)
    all_read = threading.Barrier(THREADS)
    seen = threading.local()
    load = engine.load

    def load_then_wait(wanted: str) -> Invitation:
        item = load(wanted)
        if wanted == invitation_id and not getattr(seen, "read", False):
            seen.read = True
            assert item.status == "pending_response"
            all_read.wait(timeout=30)
        return item

    monkeypatch.setattr(engine, "load", load_then_wait)

    # WHEN they all fire
    outcomes = race(THREADS, lambda index: _fire(people, invitation_id, index, now, late))
    monkeypatch.undo()

    # THEN exactly one succeeded; every other was refused with a 409
    errors = api_errors(outcomes)
    winners = [ACTIONS[index % len(ACTIONS)] for index, outcome in enumerate(outcomes) if isinstance(outcome, str)]
    assert len(winners) == 1, outcomes
    assert {(error.status, error.code) for error in errors} <= {(409, "invalid_transition"), (409, "conflict")}
    assert len(errors) == THREADS - 1
    # AND the money moved once, by the winner's path only
    _assert_one_outcome(people, paid, winners[0], provider)
    assert len(provider.refunds_of(f"RF{invitation_id}")) == (0 if winners[0] == "accept" else 1)
    assert_ledger_ok()


def test_twenty_threads_and_the_expiry_job_racing_freely_end_in_a_consistent_state(
    people: People, provider: FakeProvider
) -> None:
    # GIVEN a paid invitation; threads fire accept, decline, cancel and the expiry job
    # (a run past the deadline), released together, each as soon as it can
    drain_jobs()
    paid = paid_invitation(people)
    invitation_id = paid.invitation_id
    now, late = utc_now(), later(utc_now(), days=2)

    def fire(index: int) -> Any:
        if ACTIONS[index % len(ACTIONS)] == "expire":
            return deadlines.expire_due(late)
        return _fire(people, invitation_id, index, now, late)

    # WHEN they all run
    outcomes = race(THREADS, fire)

    # THEN every refusal is a 409, never anything else
    errors = api_errors(outcomes)
    assert {(error.status, error.code) for error in errors} <= {(409, "invalid_transition"), (409, "conflict")}
    assert all(report["failed"] == 0 for report in outcomes if isinstance(report, dict)), outcomes
    # AND the invitation left pending_response once; a cancel may follow an acceptance
    steps = transitions(invitation_id)
    assert steps[:2] == ["create", "pay"]
    assert steps[2:] in (
        ["accept"],
        ["accept", "cancel", "refund"],
        ["decline", "refund"],
        ["cancel", "refund"],
        ["expire", "refund"],
    ), steps
    accepted, refunded = "accept" in steps, "refund" in steps
    expected = {f"pay:{paid.order_id}"}
    expected |= {f"accept:{invitation_id}"} if accepted else set()
    expected |= {f"refund:RF{invitation_id}"} if refunded else set()
    assert set(postings_of(invitation_id)) == expected
    # AND the balances are those of that path, exactly
    if refunded:
        expect_moved(paid.balances)
        assert invitation(invitation_id).status == "refunded"
        assert len(provider.refunds_of(f"RF{invitation_id}")) == 1
    else:
        expect_moved(paid.balances, pending=DOCTOR_SHARE_FEN, fee=PLATFORM_FEE_FEN, clearing=-FEE_FEN)
    assert booked(people) == (1 if steps[2:] == ["accept"] else 0)
    assert_ledger_ok()


# --- capacity -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("invitations", "capacity"), [(2, 1), (6, 2)])
def test_acceptances_racing_for_a_date_never_overbook_it(
    admin: Principal, provider: FakeProvider, invitations: int, capacity: int
) -> None:
    # GIVEN a doctor with room for ``capacity`` invitations on a date, and more paid invitations for it
    people = make_people(admin, capacity=capacity)
    paid = [paid_invitation(people) for _ in range(invitations)]
    now = utc_now()

    # WHEN the doctor accepts them all at once (retrying a 409 conflict, as the app would)
    outcomes = race(
        invitations, lambda index: until_settled(lambda: service.accept(people.doctor, paid[index].invitation_id, now))
    )

    # THEN exactly ``capacity`` are accepted; the others are refused as date_full and stay pending
    errors = api_errors(outcomes)
    accepted = [paid[index].invitation_id for index, outcome in enumerate(outcomes) if isinstance(outcome, dict)]
    assert len(accepted) == capacity
    assert [(error.status, error.code) for error in errors] == [(409, "date_full")] * (invitations - capacity)
    assert booked(people) == capacity
    for each in paid:
        postings = set(postings_of(each.invitation_id))
        if each.invitation_id in accepted:
            assert invitation(each.invitation_id).status == "accepted"
            assert postings == {f"pay:{each.order_id}", f"accept:{each.invitation_id}"}
        else:
            assert invitation(each.invitation_id).status == "pending_response"
            assert postings == {f"pay:{each.order_id}"}
    assert_ledger_ok()


# --- Idempotency-Key on the money POSTs ---------------------------------------------------------


def test_opening_a_payment_twice_with_one_key_replays_the_first_answer(
    api: Any, people: People, provider: FakeProvider
) -> None:
    # GIVEN an invitation waiting for payment
    invitation_id = invite(people)
    body = {"purpose": "invitation", "reference": invitation_id, "channel": "sandbox"}
    key = f"pay-{uuid.uuid4().hex}"

    # WHEN the patient's app sends the same POST /v1/payments twice with one key
    first = http(api, "POST", "/v1/payments", people.patient, body, key=key)
    second = http(api, "POST", "/v1/payments", people.patient, body, key=key)

    # THEN both get the first answer, status and body
    assert first.status_code == 201, first.json_body
    assert (second.status_code, second.json_body) == (201, first.json_body)
    assert invitation(invitation_id).payment_order_id == first.json_body["order_id"]
    assert first.json_body["amount_fen"] == FEE_FEN
    # AND the same key with another body is refused
    other = http(api, "POST", "/v1/payments", people.patient, {**body, "scene": "jsapi_oa"}, key=key)
    assert (other.status_code, error_code(other)) == (409, "idempotency_key_reused")


def test_inviting_twice_with_one_key_answers_the_same_invitation_with_the_doctors_name(
    api: Any, people: People, provider: FakeProvider
) -> None:
    # GIVEN an invitation request for the doctor's working day
    body = invitation_json(people)
    key = f"inv-{uuid.uuid4().hex}"

    # WHEN the patient's app sends it twice with one key
    first = http(api, "POST", "/v1/invitations", people.patient, body, key=key)
    second = http(api, "POST", "/v1/invitations", people.patient, body, key=key)

    # THEN the first answer is the new invitation with its doctor's name, and the retry gets the same answer
    assert first.status_code == 201, first.json_body
    assert first.json_body["status"] == "awaiting_payment"
    assert first.json_body["doctor_name"] == "Dr Zhou"
    assert (second.status_code, second.json_body) == (201, first.json_body)
    # AND one invitation was made
    assert Invitation.by_requester.count(f"REQUESTER#{people.patient.user_id}") == 1


def test_accepting_twice_with_one_key_replays_the_answer_and_posts_once(
    api: Any, people: People, provider: FakeProvider
) -> None:
    # GIVEN a paid invitation
    paid = paid_invitation(people)
    invitation_id = paid.invitation_id
    path, key = f"/v1/invitations/{invitation_id}/accept", f"acc-{uuid.uuid4().hex}"

    # WHEN the doctor's app sends the acceptance twice with one key
    first = http(api, "POST", path, people.doctor, key=key)
    second = http(api, "POST", path, people.doctor, key=key)

    # THEN both answers are the first one; the money moved once
    assert first.status_code == 200, first.json_body
    assert first.json_body["status"] == "accepted"
    assert (second.status_code, second.json_body) == (200, first.json_body)
    assert_accepted_once(people, paid)
    # AND the same key with a body is another request: refused
    other = http(api, "POST", path, people.doctor, {"note": "again"}, key=key)
    assert (other.status_code, error_code(other)) == (409, "idempotency_key_reused")
    # AND without the key a repeat is just a second acceptance: refused by the state machine
    again = http(api, "POST", path, people.doctor)
    assert (again.status_code, error_code(again)) == (409, "invalid_transition")
    assert transitions(invitation_id).count("accept") == 1
    assert_ledger_ok()


def test_clients_cannot_choose_the_amount(api: Any, people: People, provider: FakeProvider) -> None:
    invitation_id = invite(people)
    body = {"purpose": "invitation", "reference": invitation_id, "channel": "sandbox", "amount_fen": 1}

    response = http(api, "POST", "/v1/payments", people.patient, body)

    assert response.status_code == 422, response.json_body
    assert invitation(invitation_id).payment_order_id is None


@pytest.mark.parametrize(
    "extra", [{"fee_fen": 100}, {"status": "accepted"}, {"doctor_share_fen": 1}, {"platform_fee_fen": 0}]
)
def test_clients_cannot_choose_fees_statuses_or_shares(
    api: Any, people: People, provider: FakeProvider, extra: dict[str, Any]
) -> None:
    body = {
        "kind": "consultation",
        "doctor_id": people.doctor.user_id,
        "hospital_id": people.hospital_id,
        "date": people.day.isoformat(),
        "time": "10:00",
        "note": "Questions about my father's anaesthesia",
    }

    refused = http(api, "POST", "/v1/invitations", people.patient, {**body, **extra})
    created = http(api, "POST", "/v1/invitations", people.patient, body)

    assert refused.status_code == 422, refused.json_body
    assert created.status_code == 201, created.json_body
    assert (created.json_body["status"], created.json_body["fee_fen"]) == ("awaiting_payment", 10_000)


def test_an_unpaid_invitation_is_not_expired_by_the_job(people: People, provider: FakeProvider) -> None:
    # GIVEN an invitation nobody paid
    invitation_id = invite(people)
    # WHEN the expiry job runs long after any deadline
    deadlines.expire_due(later(utc_now(), days=3))
    # THEN it is untouched (only paid invitations wait for an answer)
    assert invitation(invitation_id).status == "awaiting_payment"
    with pytest.raises(ApiError) as refused:
        service.expire(invitation(invitation_id), later(utc_now(), days=3))
    assert (refused.value.status, refused.value.code) == (409, "invalid_transition")


# --- cancellation policy and the expiry job, exactly --------------------------------------------


def test_a_late_cancellation_after_acceptance_refunds_half_and_frees_the_date(
    admin: Principal, provider: FakeProvider
) -> None:
    # GIVEN an accepted invitation for a date with one place
    people = make_people(admin, capacity=1)
    paid = paid_invitation(people)
    service.accept(people.doctor, paid.invitation_id, utc_now())
    scheduled = datetime.fromisoformat(invitation(paid.invitation_id).scheduled_at)
    two_hours_before = later(scheduled, hours=-2)

    # WHEN the requester cancels two hours before the operation (inside the late window)
    preview = service.refund_preview(people.patient, paid.invitation_id, two_hours_before)
    cancelled = service.cancel(people.patient, paid.invitation_id, "Operation postponed", two_hours_before)

    # THEN half the fee (rounded half up) goes back by the original path; the doctor keeps the rest, less its fee
    refund_fen = (FEE_FEN * 5000 + 5000) // 10_000  # 25,003
    kept = FEE_FEN - refund_fen  # 25,002
    kept_fee = (kept * 1000 + 5000) // 10_000  # 2,500
    assert (preview["rule"], preview["refund_fen"], preview["kept_fen"]) == ("late_cancellation", refund_fen, kept)
    assert cancelled["status"] == "refunded"
    refund = the_refund(paid.invitation_id)
    assert int(refund.amount_fen) == refund_fen
    assert [request.amount_fen for request in provider.refunds_of(refund.refund_no)] == [refund_fen]
    expect_moved(paid.balances, available=kept - kept_fee, fee=kept_fee, clearing=-kept)
    assert transitions(paid.invitation_id) == ["create", "pay", "accept", "cancel", "refund"]
    # AND the place on that date is free again: another invitation can be accepted
    assert booked(people) == 0
    other = paid_invitation(people)
    assert service.accept(people.doctor, other.invitation_id, utc_now())["status"] == "accepted"
    assert booked(people) == 1
    assert_ledger_ok()


def _due_for_an_answer(now: datetime) -> list[str]:
    """The invitations the expiry job would take at ``now`` (a Query of the sparse ``due`` index)."""
    return [item.invitation_id for item in Invitation.by_due.query(engine.DUE_RESPONSE, Invitation.due_at <= iso(now))]


def test_the_expiry_job_expires_only_what_is_due_and_refunds_it_in_full(people: People, provider: FakeProvider) -> None:
    # GIVEN a paid invitation nobody answers
    drain_jobs()
    paid = paid_invitation(people)
    deadline = datetime.fromisoformat(invitation(paid.invitation_id).response_deadline or "")

    # WHEN the job runs before the deadline, then after it
    early, due = later(deadline, seconds=-1), later(deadline, seconds=1)
    assert paid.invitation_id not in _due_for_an_answer(early)
    deadlines.expire_due(early)
    assert invitation(paid.invitation_id).status == "pending_response"
    assert paid.invitation_id in _due_for_an_answer(due)
    report = deadlines.expire_due(due)

    # THEN only the second run expired it, and the payer got everything back once
    assert report["done"] >= 1, report
    assert paid.invitation_id not in _due_for_an_answer(later(deadline, days=1))
    assert transitions(paid.invitation_id) == ["create", "pay", "expire", "refund"]
    assert set(postings_of(paid.invitation_id)) == {f"pay:{paid.order_id}", f"refund:RF{paid.invitation_id}"}
    expect_moved(paid.balances)
    # AND the doctor can no longer accept it
    with pytest.raises(ApiError) as refused:
        service.accept(people.doctor, paid.invitation_id, utc_now())
    assert (refused.value.status, refused.value.code) == (409, "invalid_transition")
    assert_ledger_ok()
