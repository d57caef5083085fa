"""Complaints over HTTP against moto (C8, C7): filing, the back office's queue and decisions, refunds, penalties.

Invitations go through the real flow; the payment provider is the in-memory fake installed
as the sandbox channel (``flow_actors.FakeProvider``), which settles a refund at once. The
handlers' clock is frozen after the service's time. Money is checked on the ledger's
balances and transactions, and with ``check_ledger`` after every flow that moves it.
"""

from __future__ import annotations

import doctest
import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.accounts.roles import DOCTOR, Principal
from chalicelib.invitations import deadlines
from chalicelib.ledger import accounts
from chalicelib.ledger.audit import check_ledger
from chalicelib.ledger.journal import transaction
from chalicelib.models.invitations import Complaint
from chalicelib.payouts import accounts as payout_accounts
from chalicelib.payouts import withdrawals
from chalicelib.payouts.accounts import BankCardPayee
from chalicelib.payouts.withdrawals import WithdrawalRequest
from chalicelib.reputation import complaints
from tests.unit.actors import account, call, expect, freeze_clock, register
from tests.unit.flow_actors import (
    FEE,
    accepted,
    act,
    balance,
    clearing,
    every_page,
    fake_provider_fixture,  # noqa: F401  (the ``fake`` fixture)
    fees,
    flow_fixture,  # noqa: F401  (the ``flow`` fixture)
    notices,
    paid_invitation,
    pay,
    read,
    scheduled_at,
)

if TYPE_CHECKING:
    from chalice.test import Client, HTTPResponse

    from tests.unit.actors import Actor
    from tests.unit.flow_actors import FakeProvider, Flow

DOCTOR_SHARE, PLATFORM_FEE = 270_000, 30_000
"""``FEE`` split at the default 1 000 bps."""
COMPLAINT = {"category": "not_delivered", "details": "Nobody came to the theatre"}
CARD = "6222 0212 3456 7890 128"
"""A Luhn-valid card number for the doctor's withdrawal."""


def file(client: Client, actor: Actor, invitation_id: str, body: Any = None) -> HTTPResponse:
    return call(client, "POST", f"/v1/invitations/{invitation_id}/complaints", actor, body or COMPLAINT)


def decide(
    client: Client, admin: Actor, complaint_id: str, action: str, body: dict[str, Any], key: str | None = None
) -> HTTPResponse:
    """``POST /v1/admin/complaints/{id}/{confirm|reject}``, with an ``Idempotency-Key`` when given."""
    headers = {"Content-Type": "application/json", **admin.headers}
    if key is not None:
        headers["Idempotency-Key"] = key
    path = f"/v1/admin/complaints/{complaint_id}/{action}"
    return client.http.request("POST", path, headers=headers, body=json.dumps(body).encode())


def queue(client: Client, admin: Actor, query: str = "") -> dict[str, Any]:
    return expect(call(client, "GET", f"/v1/admin/complaints{query}", admin), 200)


def after_its_time(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch, count: int = 1, after: timedelta = timedelta(hours=1)
) -> tuple[list[str], datetime]:
    """``count`` accepted invitations, the handlers' clock frozen ``after`` their scheduled time; ids and instant."""
    ids = [accepted(client, flow)["invitation_id"] for _ in range(count)]
    at = scheduled_at(read(client, flow.patient, ids[0])) + after
    freeze_clock(monkeypatch, at)
    return ids, at


def filed(client: Client, flow: Flow, invitation_id: str, body: Any = None) -> dict[str, Any]:
    return expect(file(client, flow.patient, invitation_id, body), 201)


def stored(complaint_id: str) -> Complaint:
    return complaints.load(complaint_id)


def assert_ledger_ok() -> None:
    report = check_ledger()
    assert report.ok, report.violations


# --- filing ----------------------------------------------------------------------------------------


def test_an_accepted_service_is_complained_about_only_once_its_time_came(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an accepted invitation whose time has not come
    invitation = accepted(client, flow)
    invitation_id = invitation["invitation_id"]
    # THEN a complaint is too early (the requester may cancel instead)
    early = expect(file(client, flow.patient, invitation_id), 409, "complaint_too_early")
    assert early["error"]["details"] == {"scheduled_at": invitation["scheduled_at"]}

    # WHEN its time has come and the requester complains
    freeze_clock(monkeypatch, scheduled_at(invitation) + timedelta(minutes=30))
    created = filed(client, flow, invitation_id)

    # THEN the complaint is open, the doctor is told, and both sides see it on the invitation
    assert created["complaint_id"] == f"CP{invitation_id}"
    assert {key: created[key] for key in ("invitation_id", "doctor_id", "requester_id", "category", "status")} == {
        "invitation_id": invitation_id,
        "doctor_id": flow.doctor.user_id,
        "requester_id": flow.patient.user_id,
        "category": "not_delivered",
        "status": "open",
    }
    assert created["details"] == COMPLAINT["details"] and created["decided_at"] is None
    assert ("complaint_filed", flow.doctor.user_id) in notices(invitation_id)
    for actor in (flow.patient, flow.doctor):
        seen = read(client, actor, invitation_id)
        assert seen["complaint"] == created and seen["status"] == "accepted"


def test_a_paid_invitation_not_yet_accepted_cannot_be_complained_about(client: Client, flow: Flow) -> None:
    invitation_id = paid_invitation(client, flow)["invitation_id"]
    refused = expect(file(client, flow.patient, invitation_id), 409, "not_complainable")
    assert refused["error"]["details"] == {"status": "pending_response"}


def test_a_completed_service_may_be_complained_about(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    (invitation_id,), _ = after_its_time(client, flow, monkeypatch, after=timedelta(hours=2))
    expect(act(client, flow.doctor, invitation_id, "complete"), 200)
    assert filed(client, flow, invitation_id, {"category": "late", "details": "Two hours late"})["status"] == "open"


def test_a_confirmed_service_may_be_complained_about_within_the_window(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN two services confirmed at the same instant (the window is 30 days)
    (on_time, late), done_at = after_its_time(client, flow, monkeypatch, 2, after=timedelta(hours=2))
    for invitation_id in (on_time, late):
        expect(act(client, flow.doctor, invitation_id, "complete"), 200)
        expect(act(client, flow.patient, invitation_id, "confirm"), 200)
    closes = done_at + timedelta(days=30)
    # WHEN one is complained about at the window's last instant THEN it is filed
    freeze_clock(monkeypatch, closes)
    filed(client, flow, on_time)
    # WHEN the other a second later THEN the window has closed
    freeze_clock(monkeypatch, closes + timedelta(seconds=1))
    refused = expect(file(client, flow.patient, late), 409, "complaint_window_closed")
    assert refused["error"]["details"] == {"closed_at": closes.isoformat()}
    assert read(client, flow.patient, late)["complaint"] is None


def test_a_complaint_is_filed_once(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    (invitation_id,), _ = after_its_time(client, flow, monkeypatch)
    first = filed(client, flow, invitation_id)
    # the same complaint again (a retry): 200 with the stored one
    assert expect(file(client, flow.patient, invitation_id), 200) == first
    # a different one: refused, naming the complaint that stands
    for changed in ({**COMPLAINT, "details": "Someone else came"}, {**COMPLAINT, "category": "conduct"}):
        refused = expect(file(client, flow.patient, invitation_id, changed), 409, "complaint_exists")
        assert refused["error"]["details"] == {"complaint_id": first["complaint_id"], "status": "open"}
    assert [event for event, _ in notices(invitation_id)].count("complaint_filed") == 1


def test_a_complaint_body_is_checked(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    (invitation_id,), _ = after_its_time(client, flow, monkeypatch)
    for body in (
        {"category": "rude", "details": "x"},
        {"category": "late"},
        {"details": "x"},
        {"category": "late", "details": ""},
        {"category": "late", "details": "x" * 1001},
        {**COMPLAINT, "status": "confirmed"},
        {**COMPLAINT, "refund": True},
    ):
        refused = file(client, flow.patient, invitation_id, body)
        assert (refused.status_code, refused.json_body["error"]["code"]) == (422, "validation_failed"), body
    assert read(client, flow.patient, invitation_id)["complaint"] is None
    assert filed(client, flow, invitation_id, {"category": "other", "details": "x" * 1000})["status"] == "open"


def test_only_the_requester_complains(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    stranger = register(client, "patient")  # signed in before the clock is frozen
    (invitation_id,), _ = after_its_time(client, flow, monkeypatch)
    expect(file(client, stranger, invitation_id), 404, "invitation_not_found")
    expect(file(client, flow.doctor, invitation_id), 403, "forbidden")
    expect(file(client, flow.admin, invitation_id), 403, "forbidden")
    assert read(client, flow.patient, invitation_id)["complaint"] is None


# --- the back office's queue ---------------------------------------------------------------------


def test_the_queue_lists_open_complaints_oldest_first_and_decided_ones_by_status(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN three complaints filed an hour apart
    ids, at = after_its_time(client, flow, monkeypatch, 3)
    complaint_ids = []
    for hour, invitation_id in enumerate(ids):
        freeze_clock(monkeypatch, at + timedelta(hours=hour))
        complaint_ids.append(filed(client, flow, invitation_id)["complaint_id"])
    first, second, third = complaint_ids

    # THEN the open queue lists them oldest first, page by page
    def fetch(status: str) -> Any:
        return lambda query: queue(client, flow.admin, f"{query}&status={status}")

    assert every_page(fetch("open"), 1, "complaint_id") == complaint_ids
    assert [item["complaint_id"] for item in queue(client, flow.admin)["items"]] == complaint_ids

    # WHEN one is rejected and one confirmed
    freeze_clock(monkeypatch, at + timedelta(hours=5))
    expect(decide(client, flow.admin, second, "reject", {"reason": "The doctor was there"}), 200)
    expect(decide(client, flow.admin, third, "confirm", {"reason": "Confirmed with the ward"}), 200)

    # THEN each list holds its own
    assert every_page(fetch("open"), 1, "complaint_id") == [first]
    assert every_page(fetch("rejected"), 1, "complaint_id") == [second]
    assert every_page(fetch("confirmed"), 1, "complaint_id") == [third]


def test_the_queue_is_for_the_back_office_only(client: Client, flow: Flow) -> None:
    for actor in (flow.patient, flow.doctor):
        expect(call(client, "GET", "/v1/admin/complaints", actor), 403, "forbidden")
    expect(call(client, "GET", "/v1/admin/complaints?status=pending", flow.admin), 422, "validation_failed")
    expect(call(client, "GET", "/v1/admin/complaints?limit=0", flow.admin), 422, "validation_failed")
    body = {"reason": "x"}
    expect(decide(client, flow.patient, "CPi1", "confirm", body), 403, "forbidden")
    expect(decide(client, flow.doctor, "CPi1", "reject", body), 403, "forbidden")


def test_an_unknown_complaint_is_not_found(client: Client, flow: Flow) -> None:
    for complaint_id in ("CP" + "0" * 32, "X" + "0" * 32):
        expect(decide(client, flow.admin, complaint_id, "confirm", {"reason": "x"}), 404, "complaint_not_found")
        expect(decide(client, flow.admin, complaint_id, "reject", {"reason": "x"}), 404, "complaint_not_found")


# --- decisions -------------------------------------------------------------------------------------


def test_a_rejection_records_the_reason_and_tells_both_sides(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an open complaint
    (invitation_id,), at = after_its_time(client, flow, monkeypatch)
    complaint_id = filed(client, flow, invitation_id)["complaint_id"]
    # a decision needs a reason
    expect(decide(client, flow.admin, complaint_id, "reject", {}), 422, "validation_failed")
    expect(decide(client, flow.admin, complaint_id, "reject", {"reason": ""}), 422, "validation_failed")

    # WHEN the back office rejects it
    decided_at = at + timedelta(hours=3)
    freeze_clock(monkeypatch, decided_at)
    rejected = expect(decide(client, flow.admin, complaint_id, "reject", {"reason": "The ward saw the doctor"}), 200)

    # THEN the reason and the time are recorded, no penalty starts, and both sides are told
    assert (rejected["status"], rejected["decision_reason"]) == ("rejected", "The ward saw the doctor")
    assert rejected["decided_at"] == decided_at.isoformat()
    assert rejected["penalty_until"] is None and rejected["refund_fen"] is None
    item = stored(complaint_id)
    assert item.decided_by == flow.admin.user_id and item.due_queue is None
    told = [recipient for event, recipient in notices(invitation_id) if event == "complaint_rejected"]
    assert sorted(told) == sorted([flow.patient.user_id, flow.doctor.user_id])
    assert read(client, flow.patient, invitation_id)["status"] == "accepted"

    # AND it cannot be decided again, either way
    expect(decide(client, flow.admin, complaint_id, "reject", {"reason": "again"}), 409, "complaint_decided")
    expect(decide(client, flow.admin, complaint_id, "confirm", {"reason": "after all"}), 409, "complaint_decided")
    assert stored(complaint_id).status == "rejected"


def test_a_confirmation_without_refund_starts_the_penalty(
    client: Client, flow: Flow, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an open complaint about a service that happened, late
    (invitation_id,), at = after_its_time(client, flow, monkeypatch)
    complaint_id = filed(client, flow, invitation_id, {"category": "late", "details": "Two hours late"})["complaint_id"]
    pending = balance(accounts.doctor_pending(flow.doctor.user_id))

    # WHEN the back office confirms it without a refund
    confirmed = expect(decide(client, flow.admin, complaint_id, "confirm", {"reason": "The ward confirms"}), 200)

    # THEN the penalty runs 90 days, in the due queue of the lift job; both sides are told; no money moves
    until = (at + timedelta(days=90)).isoformat()
    assert (confirmed["status"], confirmed["penalty_until"], confirmed["refund_fen"]) == ("confirmed", until, None)
    assert confirmed["decision_reason"] == "The ward confirms" and confirmed["penalty_lifted_at"] is None
    item = stored(complaint_id)
    assert (item.due_queue, item.due_at) == (complaints.PENALTY_QUEUE, until)
    told = {pair for pair in notices(invitation_id) if pair[0] == "complaint_confirmed"}
    assert told == {("complaint_confirmed", flow.patient.user_id), ("complaint_confirmed", flow.doctor.user_id)}
    assert read(client, flow.patient, invitation_id)["status"] == "accepted"
    assert balance(accounts.doctor_pending(flow.doctor.user_id)) == pending and fake.refunds == []

    # AND confirming again is refused
    expect(decide(client, flow.admin, complaint_id, "confirm", {"reason": "again"}), 409, "complaint_decided")


def test_a_confirmation_is_replayed_for_the_same_idempotency_key(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    (invitation_id,), _ = after_its_time(client, flow, monkeypatch)
    complaint_id = filed(client, flow, invitation_id)["complaint_id"]
    body = {"reason": "Confirmed with the ward"}
    first = decide(client, flow.admin, complaint_id, "confirm", body, key="confirm-0001")
    replay = decide(client, flow.admin, complaint_id, "confirm", body, key="confirm-0001")
    assert (first.status_code, replay.status_code) == (200, 200)
    assert replay.json_body == first.json_body
    # without the key, the same request is a second decision
    expect(decide(client, flow.admin, complaint_id, "confirm", body), 409, "complaint_decided")
    assert [event for event, _ in notices(invitation_id)].count("complaint_confirmed") == 2  # one per side, once


def test_a_service_not_delivered_is_refunded_from_the_pending_share_and_the_fee(
    client: Client, flow: Flow, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an accepted invitation whose time passed: the doctor's share pending, the fee taken
    (invitation_id,), at = after_its_time(client, flow, monkeypatch)
    doctor = flow.doctor.user_id
    assert balance(accounts.doctor_pending(doctor)) == DOCTOR_SHARE
    assert balance(fees(invitation_id)) == PLATFORM_FEE
    complaint_id = filed(client, flow, invitation_id)["complaint_id"]

    # WHEN the back office confirms the complaint with a refund
    body = {"reason": "Nobody came", "refund": True}
    confirmed = expect(decide(client, flow.admin, complaint_id, "confirm", body), 200)

    # THEN the complaint records the refund, and the invitation was not delivered, then refunded by the provider
    assert (confirmed["status"], confirmed["refund_fen"]) == ("confirmed", FEE)
    seen = read(client, flow.patient, invitation_id)
    assert seen["status"] == "refunded" and seen["refund_order_id"] == f"RF{invitation_id}"
    assert [(step["transition"], step["status"], step["by"]) for step in seen["history"][-2:]] == [
        ("refund_not_delivered", "not_delivered", "admin"),
        ("refund", "refunded", "system"),
    ]
    assert seen["history"][-2]["reason"] == "Nobody came"
    assert [request.amount_fen for request in fake.refunds] == [FEE]

    # AND the money went back by the claim: the pending share and the fee, then out to the provider
    claim = accounts.claim(invitation_id)
    assert transaction(f"claim:{invitation_id}") == {
        "tx_id": f"claim:{invitation_id}",
        "kind": "claim",
        "reference": f"invitation:{invitation_id}",
        "entries": {accounts.doctor_pending(doctor): -DOCTOR_SHARE, fees(invitation_id): -PLATFORM_FEE, claim: FEE},
    }
    refund = transaction(f"refund:RF{invitation_id}")
    assert refund is not None and refund["entries"] == {claim: -FEE, clearing(invitation_id): FEE}
    assert balance(accounts.doctor_pending(doctor)) == 0 and balance(fees(invitation_id)) == 0
    assert balance(claim) == 0 and balance(accounts.escrow(invitation_id)) == 0
    assert expect(call(client, "GET", "/v1/me/wallet", flow.doctor), 200)["owed_fen"] == 0
    assert_ledger_ok()

    # AND both sides were told of the decision, the requester of the refund; the penalty runs
    events = notices(invitation_id)
    assert {("complaint_confirmed", flow.patient.user_id), ("complaint_confirmed", doctor)} <= set(events)
    assert ("refunded", flow.patient.user_id) in events
    assert confirmed["penalty_until"] == (at + timedelta(days=90)).isoformat()
    # ... and a second decision is refused without moving money again
    expect(decide(client, flow.admin, complaint_id, "confirm", body), 409, "complaint_decided")
    assert [request.amount_fen for request in fake.refunds] == [FEE]


def withdraw(doctor: Actor, amount: int, now: datetime) -> None:
    """The doctor moves ``amount`` of their available balance out (to a bank card in their name)."""
    principal = Principal(doctor.user_id, DOCTOR)
    name = account(doctor.user_id).name
    status, added = payout_accounts.register(principal, BankCardPayee(name, "ICBC", CARD), now)
    assert status in (200, 201), added
    status, _ = withdrawals.request(principal, WithdrawalRequest(amount, added["account_id"]), now)
    assert status == 201


def wallet(client: Client, doctor: Actor) -> dict[str, Any]:
    return expect(call(client, "GET", "/v1/me/wallet", doctor), 200)


def test_a_refund_after_release_takes_what_is_available_and_records_the_rest_as_owed(
    client: Client, flow: Flow, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN three services done: two confirmed (their shares released), one completed (its share pending)
    (refunded, tipped, later), done_at = after_its_time(client, flow, monkeypatch, 3, after=timedelta(hours=2))
    for invitation_id in (refunded, tipped, later):
        expect(act(client, flow.doctor, invitation_id, "complete"), 200)
    for invitation_id in (refunded, tipped):
        expect(act(client, flow.patient, invitation_id, "confirm"), 200)
    doctor = flow.doctor.user_id
    assert account(doctor).anesthesia_count == 2
    # ... and the doctor withdrew most of what was released
    withdraw(flow.doctor, 2 * DOCTOR_SHARE - 40_000, done_at)
    assert wallet(client, flow.doctor) == {
        "currency": "CNY",
        "pending_fen": DOCTOR_SHARE,
        "available_fen": 40_000,
        "payout_fen": 2 * DOCTOR_SHARE - 40_000,
        "owed_fen": 0,
    }

    # WHEN a complaint about the first is confirmed with a refund
    complaint_id = filed(client, flow, refunded)["complaint_id"]
    body = {"reason": "Nobody came", "refund": True}
    assert expect(decide(client, flow.admin, complaint_id, "confirm", body), 200)["refund_fen"] == FEE

    # THEN the requester got everything back: the available 400 yuan, the rest recorded as owed, and the fee
    assert read(client, flow.patient, refunded)["status"] == "refunded"
    assert [request.amount_fen for request in fake.refunds] == [FEE]
    assert transaction(f"claim:{refunded}")["entries"] == {  # type: ignore[index]
        accounts.doctor_available(doctor): -40_000,
        accounts.doctor_receivable(doctor): -(DOCTOR_SHARE - 40_000),
        fees(refunded): -PLATFORM_FEE,
        accounts.claim(refunded): FEE,
    }
    assert balance(accounts.doctor_receivable(doctor)) == -(DOCTOR_SHARE - 40_000)
    seen = wallet(client, flow.doctor)
    assert (seen["available_fen"], seen["owed_fen"]) == (0, DOCTOR_SHARE - 40_000)
    # ... and the service no longer counts as an anesthesia done
    assert account(doctor).anesthesia_count == 1
    assert_ledger_ok()

    # WHEN the patient tips the doctor for another service
    order = expect(
        call(
            client,
            "POST",
            "/v1/payments",
            flow.patient,
            {"purpose": "tip", "reference": tipped, "channel": "sandbox", "amount_fen": 5_000},
        ),
        201,
    )
    assert pay(order["order_id"], 5_000, now=done_at) == "applied"
    # THEN the tip pays back part of the debt first
    seen = wallet(client, flow.doctor)
    assert (seen["available_fen"], seen["owed_fen"]) == (0, DOCTOR_SHARE - 45_000)

    # WHEN the next service is confirmed
    expect(act(client, flow.patient, later, "confirm"), 200)
    # THEN its release pays back the rest, and only what remains becomes available
    release = transaction(f"release:{later}")
    assert release is not None and release["entries"] == {
        accounts.doctor_pending(doctor): -DOCTOR_SHARE,
        accounts.doctor_receivable(doctor): DOCTOR_SHARE - 45_000,
        accounts.doctor_available(doctor): 45_000,
    }
    seen = wallet(client, flow.doctor)
    assert (seen["pending_fen"], seen["available_fen"], seen["owed_fen"]) == (0, 45_000, 0)
    assert balance(accounts.doctor_receivable(doctor)) == 0
    assert_ledger_ok()


def test_a_refund_is_refused_when_the_money_is_gone_already(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an invitation refunded through a confirmed complaint
    (invitation_id,), _ = after_its_time(client, flow, monkeypatch)
    complaint_id = filed(client, flow, invitation_id)["complaint_id"]
    expect(decide(client, flow.admin, complaint_id, "confirm", {"reason": "Nobody came", "refund": True}), 200)
    # WHEN its complaint were open again (a defect, an operator's edit) and confirmed with a refund again
    stored(complaint_id).update(actions=[Complaint.status.set("open")])
    refused = expect(
        decide(client, flow.admin, complaint_id, "confirm", {"reason": "again", "refund": True}), 409, "not_refundable"
    )
    # THEN nothing moves twice
    assert refused["error"]["details"] == {"status": "refunded"}
    assert balance(accounts.claim(invitation_id)) == 0
    assert_ledger_ok()


# --- the end of a penalty --------------------------------------------------------------------------


def test_the_lift_job_ends_only_the_penalties_that_ran_out(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN two complaints confirmed ten days apart
    (first_invitation, second_invitation), at = after_its_time(client, flow, monkeypatch, 2)
    first = filed(client, flow, first_invitation)["complaint_id"]
    second = filed(client, flow, second_invitation)["complaint_id"]
    expect(decide(client, flow.admin, first, "confirm", {"reason": "late"}), 200)
    freeze_clock(monkeypatch, at + timedelta(days=10))
    expect(decide(client, flow.admin, second, "confirm", {"reason": "late"}), 200)
    first_ends = at + timedelta(days=90)

    # WHEN the job runs just before the first penalty ends THEN nothing is due
    assert deadlines.lift_penalties(first_ends - timedelta(seconds=1)) == {
        "due": 0,
        "done": 0,
        "skipped": 0,
        "failed": 0,
    }

    # WHEN it runs once the first has ended THEN only that one is lifted, and leaves the queue
    lifted_at = first_ends + timedelta(minutes=30)
    assert deadlines.lift_penalties(lifted_at) == {"due": 1, "done": 1, "skipped": 0, "failed": 0}
    assert stored(first).penalty_lifted_at == lifted_at.isoformat()
    assert (stored(first).due_queue, stored(first).due_at) == (None, None)
    assert stored(second).penalty_lifted_at is None
    assert read(client, flow.patient, first_invitation)["complaint"]["penalty_lifted_at"] == lifted_at.isoformat()
    # ... and a second run finds nothing more
    assert deadlines.lift_penalties(lifted_at)["due"] == 0

    # WHEN the second has ended too THEN it is lifted
    assert deadlines.lift_penalties(at + timedelta(days=100, minutes=1))["done"] == 1
    assert stored(second).penalty_lifted_at is not None


def test_a_penalty_is_lifted_once_and_never_early(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib.errors import ApiError

    (invitation_id,), at = after_its_time(client, flow, monkeypatch)
    complaint_id = filed(client, flow, invitation_id)["complaint_id"]
    expect(decide(client, flow.admin, complaint_id, "confirm", {"reason": "late"}), 200)
    with pytest.raises(ApiError) as early:
        complaints.lift(stored(complaint_id), at + timedelta(days=89))
    assert early.value.code == "not_due"
    stale = stored(complaint_id)
    complaints.lift(stale, at + timedelta(days=91))
    with pytest.raises(ApiError) as again:
        complaints.lift(stale, at + timedelta(days=92))
    assert again.value.code == "already_lifted"
    assert stored(complaint_id).penalty_lifted_at == (at + timedelta(days=91)).isoformat()


def test_the_claim_doctest_holds() -> None:
    result = doctest.testmod(complaints, verbose=False)
    assert result.attempted >= 2 and result.failed == 0
