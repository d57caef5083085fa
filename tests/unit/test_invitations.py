"""The invitation flow over HTTP against moto: create, see, list, answer, cancel, complete, confirm, pay.

The payment provider is an in-memory fake (``flow_actors.FakeProvider``); a payment lands
through ``settlement.apply_payment`` as a verified callback would. Money is checked on the
ledger balances and with ``check_ledger`` after every flow that moves it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.clock import shanghai_date
from chalicelib.errors import ApiError
from chalicelib.invitations import deadlines, engine, service
from chalicelib.ledger import accounts
from chalicelib.ledger.audit import check_ledger
from chalicelib.models.invitations import CalendarDay, Invitation
from chalicelib.payments import registry
from tests.unit.actors import (
    call,
    expect,
    freeze_clock,
    make_doctor,
    make_hospital,
    make_verified_doctor,
    make_vip_hospital,
    patch_me,
    register,
)
from tests.unit.flow_actors import (
    CONSULTATION_FEE,
    FEE,
    FakeProvider,
    accepted,
    act,
    balance,
    clearing,
    complete_after,
    completed,
    create_invitation,
    day_ahead,
    evening_before,
    every_page,
    fake_provider_fixture,  # noqa: F401  (the ``fake`` fixture)
    fees,
    flow_fixture,  # noqa: F401  (the ``flow`` fixture)
    installed,
    notices,
    open_order,
    paid_invitation,
    pay,
    read,
    request_body,
    scheduled_at,
    set_day,
    summary,
)

if TYPE_CHECKING:
    from chalice.test import Client

    from tests.unit.actors import Actor
    from tests.unit.flow_actors import Flow

DOCTOR_SHARE, PLATFORM_FEE = 270_000, 30_000
"""``FEE`` split at the default 1 000 bps."""


def wallet(client: Client, doctor: Actor) -> dict[str, Any]:
    return expect(call(client, "GET", "/v1/me/wallet", doctor), 200)


def storefront_count(client: Client, viewer: Actor, doctor: Actor) -> int:
    return expect(call(client, "GET", f"/v1/anesthesiologists/{doctor.user_id}", viewer), 200)["anesthesia_count"]


def booked(doctor: Actor, day: str) -> int:
    return int(CalendarDay.get(f"CALENDAR#{doctor.user_id}", day, consistent_read=True).invitations_booked)


def assert_ledger_ok() -> None:
    report = check_ledger()
    assert report.ok, report.violations


def assert_refunded_in_full(fake: FakeProvider, invitation_id: str) -> None:
    """The provider was asked once, for the whole fee; the money left escrow and went back by the provider."""
    assert [request.amount_fen for request in fake.refunds] == [FEE]
    assert balance(accounts.escrow(invitation_id)) == 0 and balance(clearing(invitation_id)) == 0
    assert_ledger_ok()


def refused_field(client: Client, actor: Actor, body: dict[str, Any], status: int = 422, code: str = "") -> str:
    """``POST /v1/invitations`` of ``body`` is refused (``validation_failed`` unless told); the field it names."""
    error = expect(call(client, "POST", "/v1/invitations", actor, body), status, code or "validation_failed")
    return error["error"]["details"]["field"]


# --- creating ----------------------------------------------------------------------------------


def test_create_answers_201_with_the_doctors_fee_of_that_moment(client: Client, flow: Flow, fake: FakeProvider) -> None:
    # GIVEN a doctor whose invitation fee is 3 000 yuan
    # WHEN a patient invites them
    created = create_invitation(client, flow.patient, request_body(flow))
    # THEN the invitation waits for payment at that fee, with its first history entry
    assert created["status"] == "awaiting_payment"
    assert (created["fee_fen"], created["currency"], created["kind"]) == (FEE, "CNY", "invitation")
    assert created["hospital"]["hospital_id"] == flow.hospitals.pumch
    assert [(step["transition"], step["status"], step["by"]) for step in created["history"]] == [
        ("create", "awaiting_payment", "requester")
    ]
    assert created["summary"]["asa_class"] == "II" and created["payment_due_at"] is not None

    # WHEN the doctor raises the fee afterwards
    patch_me(client, flow.doctor, {"invitation_fee": 500_000})
    # THEN the invitation keeps its snapshot, and its payment order asks for it
    assert read(client, flow.patient, created["invitation_id"])["fee_fen"] == FEE
    order = open_order(client, flow.patient, created["invitation_id"])
    assert order["amount_fen"] == FEE and fake.created[0].amount_fen == FEE
    # ... while a new invitation takes the new fee
    assert create_invitation(client, flow.patient, request_body(flow))["fee_fen"] == 500_000


def test_a_consultation_takes_the_consultation_fee(client: Client, flow: Flow) -> None:
    created = create_invitation(client, flow.patient, request_body(flow, kind="consultation"))
    assert (created["kind"], created["fee_fen"], created["operation"]) == ("consultation", CONSULTATION_FEE, None)
    assert created["note"] == "Questions about anesthesia for my father"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("fee_fen", 1),
        ("status", "accepted"),
        ("amount_fen", 1),
        ("doctor_share_fen", 300_000),
        ("platform_fee_fen", 0),
        ("requester_id", "someone"),
    ],
)
def test_a_client_cannot_send_fees_amounts_or_statuses(client: Client, flow: Flow, name: str, value: Any) -> None:
    assert refused_field(client, flow.patient, {**request_body(flow), name: value}) == name
    assert expect(call(client, "GET", "/v1/invitations", flow.patient), 200)["items"] == []


def test_a_patient_may_invite_only_doctors_of_the_hospital_they_name(client: Client, flow: Flow) -> None:
    body = request_body(flow, hospital_id=flow.hospitals.chaoyang)
    assert refused_field(client, flow.patient, body, code="doctor_not_at_hospital") == "doctor_id"


def test_an_unknown_hospital_is_not_found(client: Client, flow: Flow) -> None:
    body = request_body(flow, hospital_id="h-000000000000")
    expect(call(client, "POST", "/v1/invitations", flow.patient, body), 404, "hospital_not_found")


def test_a_vip_hospital_may_invite_any_verified_doctor(client: Client, flow: Flow) -> None:
    # GIVEN a VIP hospital in Shanghai, and the doctor registered at PUMCH in Beijing
    hospital = make_vip_hospital(client, flow.admin, flow.hospitals.huashan)
    # WHEN it invites the doctor to operate at its own hospital
    created = create_invitation(client, hospital, request_body(flow, hospital_id=flow.hospitals.huashan))
    # THEN it may
    assert created["hospital"]["hospital_id"] == flow.hospitals.huashan
    assert Invitation.get(f"INVITATION#{created['invitation_id']}", "META").requester_role == "hospital"


def test_a_vip_hospital_invites_only_for_operations_at_its_own_hospital(client: Client, flow: Flow) -> None:
    hospital = make_vip_hospital(client, flow.admin, flow.hospitals.huashan)
    body = request_body(flow, hospital_id=flow.hospitals.chaoyang)
    expect(call(client, "POST", "/v1/invitations", hospital, body), 422, "not_your_hospital")


def test_a_hospital_without_membership_cannot_invite(client: Client, flow: Flow) -> None:
    hospital = make_hospital(client, flow.hospitals.pumch, admin=flow.admin)
    expect(call(client, "POST", "/v1/invitations", hospital, request_body(flow)), 403, "membership_required")


@pytest.mark.parametrize("who", ["unverified", "unknown", "patient"])
def test_only_a_verified_doctor_can_be_invited(client: Client, flow: Flow, who: str) -> None:
    if who == "unverified":
        doctor_id = make_doctor(client, flow.hospitals.pumch).user_id
    elif who == "patient":
        doctor_id = flow.patient.user_id
    else:
        doctor_id = "0" * 32
    body = request_body(flow, doctor_id=doctor_id)
    expect(call(client, "POST", "/v1/invitations", flow.patient, body), 404, "doctor_not_found")


def test_a_date_the_doctor_does_not_work_is_unavailable(client: Client, flow: Flow) -> None:
    # a day with no calendar entry
    body = request_body(flow, date=day_ahead(5))
    expect(call(client, "POST", "/v1/invitations", flow.patient, body), 409, "date_unavailable")
    # a day set as a day off
    set_day(client, flow.doctor, day_ahead(6), working=False)
    body = request_body(flow, date=day_ahead(6))
    expect(call(client, "POST", "/v1/invitations", flow.patient, body), 409, "date_unavailable")


def test_a_day_without_capacity_for_the_kind_is_full(client: Client, flow: Flow) -> None:
    # GIVEN a day open to consultations only
    set_day(client, flow.doctor, flow.day, invitation_capacity=0, consultation_capacity=1)
    # THEN an invitation finds it full, a consultation does not
    expect(call(client, "POST", "/v1/invitations", flow.patient, request_body(flow)), 409, "date_full")
    create_invitation(client, flow.patient, request_body(flow, kind="consultation"))


def test_a_day_whose_capacity_is_booked_is_full(client: Client, flow: Flow) -> None:
    # GIVEN capacity 1, and two paid invitations for that day
    set_day(client, flow.doctor, flow.day, invitation_capacity=1)
    first = paid_invitation(client, flow)
    second = paid_invitation(client, flow)
    # WHEN the doctor accepts the first
    expect(act(client, flow.doctor, first["invitation_id"], "accept"), 200)
    assert booked(flow.doctor, flow.day) == 1
    # THEN the second cannot be accepted, and nobody can invite for that day any more
    expect(act(client, flow.doctor, second["invitation_id"], "accept"), 409, "date_full")
    assert read(client, flow.patient, second["invitation_id"])["status"] == "pending_response"
    expect(call(client, "POST", "/v1/invitations", flow.patient, request_body(flow)), 409, "date_full")
    assert booked(flow.doctor, flow.day) == 1
    assert_ledger_ok()


def test_a_request_too_close_to_the_operation_is_refused(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN it is 22:00 in Shanghai the evening before the working day
    evening = evening_before(flow.day, 22)
    freeze_clock(monkeypatch, evening)
    # WHEN the patient asks for 09:00 (less than 30 min to pay + 12 h to answer)
    response = call(client, "POST", "/v1/invitations", flow.patient, request_body(flow, time="09:00"))
    # THEN it is too soon; 12:00 is not
    error = expect(response, 422, "too_soon")
    assert error["error"]["details"]["field"] == "time"
    assert (
        error["error"]["details"]["earliest"] == (evening + timedelta(hours=12, minutes=30)).astimezone(UTC).isoformat()
    )
    create_invitation(client, flow.patient, request_body(flow, time="12:00"))


@pytest.mark.parametrize("days", [-1, 91])
def test_a_date_in_the_past_or_beyond_the_horizon_is_refused(client: Client, flow: Flow, days: int) -> None:
    body = request_body(flow, date=(shanghai_date(datetime.now(UTC)) + timedelta(days=days)).isoformat())
    assert refused_field(client, flow.patient, body) == "date"


@pytest.mark.parametrize("missing", ["operation", "summary"])
def test_an_invitation_needs_the_operation_and_the_summary(client: Client, flow: Flow, missing: str) -> None:
    body = request_body(flow)
    del body[missing]
    assert refused_field(client, flow.patient, body) == missing


def test_a_consultation_has_no_operation(client: Client, flow: Flow) -> None:
    body = request_body(flow, kind="consultation", operation={"procedure": "Appendectomy", "expected_minutes": 60})
    assert refused_field(client, flow.patient, body) == "operation"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"asa_class": "VII"}, "summary.asa_class"),
        ({"asa_class": "IIE"}, "summary.asa_class"),  # the E is the separate `emergency` flag
        ({"asa_class": "ii"}, "summary.asa_class"),
        ({"emergency": "E"}, "summary.emergency"),
        ({"fasting": "maybe"}, "summary.fasting"),
        ({"malignant_hyperthermia_family_history": True}, "summary.malignant_hyperthermia_family_history"),
        ({"age_years": 131}, "summary.age_years"),
        ({"weight_kg": 0}, "summary.weight_kg"),
        ({"airway": {"mallampati": 5}}, "summary.airway.mallampati"),
        ({"allergies": ["x" * 101]}, "summary.allergies[0]"),
        ({"blood_type": "A"}, "summary.blood_type"),
    ],
)
def test_the_summary_is_validated_field_by_field(
    client: Client, flow: Flow, changes: dict[str, Any], field: str
) -> None:
    body = request_body(flow, summary=summary(**changes))
    assert refused_field(client, flow.patient, body) == field


@pytest.mark.parametrize("missing", list(summary()))
def test_the_summary_is_required_in_full(client: Client, flow: Flow, missing: str) -> None:
    incomplete = summary()
    del incomplete[missing]
    body = request_body(flow, summary=incomplete)
    assert refused_field(client, flow.patient, body) == f"summary.{missing}"


def test_an_emergency_asa_class_is_kept(client: Client, flow: Flow) -> None:
    body = request_body(flow, summary=summary(asa_class="IV", emergency=True, latex_allergy=True))
    created = create_invitation(client, flow.patient, body)
    assert (created["summary"]["asa_class"], created["summary"]["emergency"]) == ("IV", True)
    assert created["summary"]["latex_allergy"] is True


def test_a_doctor_cannot_create_an_invitation(client: Client, flow: Flow) -> None:
    other = make_verified_doctor(client, flow.admin, flow.hospitals.pumch)
    body = request_body(flow)
    expect(call(client, "POST", "/v1/invitations", other, body), 403, "forbidden")
    expect(call(client, "POST", "/v1/invitations", flow.doctor, body), 403, "forbidden")


# --- who sees what -----------------------------------------------------------------------------


def test_the_doctor_sees_an_invitation_only_once_paid_and_the_requester_only_once_accepted(
    client: Client, flow: Flow
) -> None:
    # GIVEN an unpaid invitation
    created = create_invitation(client, flow.patient, request_body(flow))
    invitation_id = created["invitation_id"]
    # THEN the doctor sees nothing of it
    expect(call(client, "GET", f"/v1/invitations/{invitation_id}", flow.doctor), 404, "invitation_not_found")
    assert expect(call(client, "GET", "/v1/invitations", flow.doctor), 200)["items"] == []

    # WHEN it is paid
    order = open_order(client, flow.patient, invitation_id)
    assert pay(order["order_id"], FEE) == "applied"
    # THEN the doctor sees it with the pre-anesthesia summary, but not who asked
    seen = read(client, flow.doctor, invitation_id)
    assert seen["status"] == "pending_response"
    assert seen["summary"]["asa_class"] == "II" and seen["summary"]["allergies"] == ["penicillin"]
    assert seen["requester"] is None
    listed = expect(call(client, "GET", "/v1/invitations", flow.doctor), 200)["items"]
    assert [item["invitation_id"] for item in listed] == [invitation_id]
    assert "requester" not in listed[0] and "summary" not in listed[0]

    # WHEN the doctor accepts
    answer = expect(act(client, flow.doctor, invitation_id, "accept"), 200)
    # THEN the requester's identity and contact are shown
    assert answer["requester"]["user_id"] == flow.patient.user_id
    assert answer["requester"]["phone"] == flow.patient.phone
    assert read(client, flow.doctor, invitation_id)["requester"]["phone"] == flow.patient.phone


def test_other_people_get_404_and_an_admin_reads_without_the_summary(client: Client, flow: Flow) -> None:
    invitation = paid_invitation(client, flow)
    path = f"/v1/invitations/{invitation['invitation_id']}"
    stranger = register(client, "patient")
    other_doctor = make_verified_doctor(client, flow.admin, flow.hospitals.pumch)
    for outsider in (stranger, other_doctor):
        expect(call(client, "GET", path, outsider), 404, "invitation_not_found")
    expect(call(client, "GET", "/v1/invitations/nope", flow.patient), 404, "invitation_not_found")

    seen = expect(call(client, "GET", path, flow.admin), 200)
    assert seen["invitation_id"] == invitation["invitation_id"] and seen["status"] == "pending_response"
    assert "summary" not in seen and "note" not in seen
    # the requester sees their own summary
    assert invitation["summary"]["weight_kg"] == 72.5


def test_the_list_filters_by_kind_and_status_newest_first_with_a_cursor(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    stranger = register(client, "patient")  # signed in before the clock is frozen
    # GIVEN three requests made a minute apart: an invitation (then paid), a consultation, an invitation
    start = datetime.now(UTC)
    made = []
    for minutes, kind in ((0, "invitation"), (1, "consultation"), (2, "invitation")):
        freeze_clock(monkeypatch, start + timedelta(minutes=minutes))
        made.append(create_invitation(client, flow.patient, request_body(flow, kind=kind))["invitation_id"])
    first, consultation, last = made
    order = open_order(client, flow.patient, first)
    pay(order["order_id"], FEE)

    def listed(query: str = "") -> list[str]:
        body = expect(call(client, "GET", f"/v1/invitations{query}", flow.patient), 200)
        return [item["invitation_id"] for item in body["items"]]

    # THEN newest first, and each filter keeps its own
    assert listed() == [last, consultation, first]
    assert listed("?kind=consultation") == [consultation]
    assert listed("?kind=invitation") == [last, first]
    assert listed("?status=pending_response") == [first]
    assert listed("?status=awaiting_payment&kind=invitation") == [last]
    assert listed("?status=confirmed") == []
    expect(call(client, "GET", "/v1/invitations?status=paid", flow.patient), 422, "validation_failed")

    # a page at a time, following the cursor
    seen = every_page(
        lambda query: expect(call(client, "GET", f"/v1/invitations{query}", flow.patient), 200), 1, "invitation_id"
    )
    assert seen == [last, consultation, first]

    # a tampered cursor, or one of another list, is refused
    page = expect(call(client, "GET", "/v1/invitations?limit=1", flow.patient), 200)
    valid = page["next_cursor"]
    tampered = valid[:-2] + ("AA" if valid[-2:] != "AA" else "BB")
    expect(call(client, "GET", f"/v1/invitations?cursor={tampered}", flow.patient), 400, "invalid_cursor")
    expect(call(client, "GET", f"/v1/invitations?kind=invitation&cursor={valid}", flow.patient), 400, "invalid_cursor")
    expect(call(client, "GET", f"/v1/invitations?cursor={valid}", stranger), 400, "invalid_cursor")


# --- the doctor answers ------------------------------------------------------------------------


def test_accept_after_the_response_deadline_is_refused(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    invitation = paid_invitation(client, flow)
    deadline = datetime.fromisoformat(invitation["response_deadline"])
    freeze_clock(monkeypatch, deadline + timedelta(seconds=1))
    expect(act(client, flow.doctor, invitation["invitation_id"], "accept"), 409, "response_deadline_passed")
    assert read(client, flow.patient, invitation["invitation_id"])["status"] == "pending_response"
    assert balance(accounts.doctor_pending(flow.doctor.user_id)) == 0


def test_accept_splits_the_fee_and_books_the_day_once(client: Client, flow: Flow) -> None:
    invitation = paid_invitation(client, flow)
    invitation_id = invitation["invitation_id"]
    assert balance(accounts.escrow(invitation_id)) == FEE
    # WHEN the doctor accepts
    answer = expect(act(client, flow.doctor, invitation_id, "accept"), 200)
    # THEN the escrow is split between the doctor (pending) and the platform fee
    assert (answer["status"], answer["doctor_share_fen"], answer["platform_fee_fen"]) == (
        "accepted",
        DOCTOR_SHARE,
        PLATFORM_FEE,
    )
    assert balance(accounts.escrow(invitation_id)) == 0
    assert wallet(client, flow.doctor) == {
        "currency": "CNY",
        "pending_fen": DOCTOR_SHARE,
        "available_fen": 0,
        "payout_fen": 0,
        "owed_fen": 0,
    }
    assert balance(fees(invitation_id)) == PLATFORM_FEE
    assert booked(flow.doctor, flow.day) == 1
    assert ("accepted", flow.patient.user_id) in notices(invitation_id)
    # WHEN it accepts again
    error = expect(act(client, flow.doctor, invitation_id, "accept"), 409, "invalid_transition")
    # THEN nothing moves twice
    assert error["error"]["details"]["status"] == "accepted"
    assert wallet(client, flow.doctor)["pending_fen"] == DOCTOR_SHARE
    assert booked(flow.doctor, flow.day) == 1
    assert_ledger_ok()


def test_the_response_deadline_comes_before_the_operation_when_paid_close_to_it(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN it is 19:00 in Shanghai the day before, and the operation is at 09:00 (14 h ahead)
    evening = evening_before(flow.day, 19)
    freeze_clock(monkeypatch, evening)
    created = create_invitation(client, flow.patient, request_body(flow, time="09:00"))
    order = open_order(client, flow.patient, created["invitation_id"])
    # WHEN it is paid at once
    assert pay(order["order_id"], FEE, now=evening) == "applied"
    # THEN the doctor must answer 12 h before the operation, not 24 h after payment
    seen = read(client, flow.doctor, created["invitation_id"])
    assert datetime.fromisoformat(seen["response_deadline"]) == scheduled_at(seen) - timedelta(hours=12)
    assert datetime.fromisoformat(seen["response_deadline"]) == evening + timedelta(hours=2)


def test_only_the_invited_doctor_answers(client: Client, flow: Flow) -> None:
    invitation = paid_invitation(client, flow)
    other = make_verified_doctor(client, flow.admin, flow.hospitals.pumch)
    expect(act(client, other, invitation["invitation_id"], "accept"), 404, "invitation_not_found")
    expect(act(client, other, invitation["invitation_id"], "decline", {"reason": "no"}), 404, "invitation_not_found")
    expect(act(client, flow.patient, invitation["invitation_id"], "accept"), 403, "forbidden")


def test_an_unpaid_invitation_cannot_be_answered(client: Client, flow: Flow) -> None:
    created = create_invitation(client, flow.patient, request_body(flow))
    expect(act(client, flow.doctor, created["invitation_id"], "accept"), 404, "invitation_not_found")


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "x" * 501}])
def test_decline_needs_a_reason(client: Client, flow: Flow, body: dict[str, Any]) -> None:
    invitation = paid_invitation(client, flow)
    error = expect(act(client, flow.doctor, invitation["invitation_id"], "decline", body), 422, "validation_failed")
    assert error["error"]["details"]["field"] == "reason"
    assert read(client, flow.patient, invitation["invitation_id"])["status"] == "pending_response"


def test_decline_refunds_the_payer_in_full(client: Client, flow: Flow, fake: FakeProvider) -> None:
    invitation = paid_invitation(client, flow)
    invitation_id = invitation["invitation_id"]
    answer = expect(act(client, flow.doctor, invitation_id, "decline", {"reason": "Away that day"}), 200)
    assert answer["status"] == "refunded"
    assert [(step["status"], step["reason"]) for step in answer["history"]][-2:] == [
        ("declined", "Away that day"),
        ("refunded", None),
    ]
    assert [(request.out_refund_no, request.amount_fen, request.total_fen) for request in fake.refunds] == [
        (f"RF{invitation_id}", FEE, FEE)
    ]
    assert wallet(client, flow.doctor)["pending_fen"] == 0
    assert {("declined", flow.patient.user_id), ("refunded", flow.patient.user_id)} <= set(notices(invitation_id))
    assert_refunded_in_full(fake, invitation_id)


# --- the requester cancels ---------------------------------------------------------------------


def test_cancel_before_payment_closes_the_order_and_the_invitation(
    client: Client, flow: Flow, fake: FakeProvider
) -> None:
    created = create_invitation(client, flow.patient, request_body(flow))
    order = open_order(client, flow.patient, created["invitation_id"])
    # WHEN the patient cancels before paying
    answer = expect(act(client, flow.patient, created["invitation_id"], "cancel", {"reason": "Changed plans"}), 200)
    # THEN the invitation and its order are closed, at the provider too; no money moved
    assert answer["status"] == "closed"
    assert answer["history"][-1]["reason"] == "Changed plans"
    assert fake.closed == [order["order_id"]]
    assert expect(call(client, "GET", f"/v1/payments/{order['order_id']}", flow.patient), 200)["status"] == "closed"
    assert fake.refunds == []
    assert check_ledger().transactions == 0
    # a closed invitation cannot be paid again
    body = {"purpose": "invitation", "reference": created["invitation_id"], "channel": "sandbox"}
    expect(call(client, "POST", "/v1/payments", flow.patient, body), 409, "invitation_not_payable")


def test_cancel_before_any_order_closes_the_invitation(client: Client, flow: Flow, fake: FakeProvider) -> None:
    created = create_invitation(client, flow.patient, request_body(flow))
    answer = expect(act(client, flow.patient, created["invitation_id"], "cancel", {"reason": "Mistake"}), 200)
    assert answer["status"] == "closed" and fake.closed == []


def test_cancel_needs_a_reason_and_only_the_requester_may(client: Client, flow: Flow) -> None:
    invitation = paid_invitation(client, flow)
    invitation_id = invitation["invitation_id"]
    expect(act(client, flow.patient, invitation_id, "cancel", {}), 422, "validation_failed")
    expect(act(client, flow.doctor, invitation_id, "cancel", {"reason": "x"}), 403, "forbidden")
    expect(act(client, register(client, "patient"), invitation_id, "cancel", {"reason": "x"}), 404)
    assert read(client, flow.patient, invitation_id)["status"] == "pending_response"


def test_a_payment_after_closing_is_refunded_at_once(client: Client, flow: Flow, fake: FakeProvider) -> None:
    created = create_invitation(client, flow.patient, request_body(flow))
    order = open_order(client, flow.patient, created["invitation_id"])
    expect(act(client, flow.patient, created["invitation_id"], "cancel", {"reason": "Changed plans"}), 200)
    # WHEN the provider reports the payment anyway
    assert pay(order["order_id"], FEE) == "applied"
    # THEN it is refunded in full, and the doctor never sees the invitation
    assert read(client, flow.patient, created["invitation_id"])["status"] == "refunded"
    expect(call(client, "GET", f"/v1/invitations/{created['invitation_id']}", flow.doctor), 404)
    assert_refunded_in_full(fake, created["invitation_id"])


def test_cancel_before_acceptance_refunds_everything(client: Client, flow: Flow, fake: FakeProvider) -> None:
    invitation = paid_invitation(client, flow)
    invitation_id = invitation["invitation_id"]
    answer = expect(act(client, flow.patient, invitation_id, "cancel", {"reason": "Found another doctor"}), 200)
    assert answer["status"] == "refunded"
    assert ("cancelled", flow.doctor.user_id) in notices(invitation_id)
    assert_refunded_in_full(fake, invitation_id)


def test_an_early_cancel_after_acceptance_refunds_everything_and_frees_the_day(
    client: Client, flow: Flow, fake: FakeProvider
) -> None:
    invitation = accepted(client, flow)
    invitation_id = invitation["invitation_id"]
    answer = expect(act(client, flow.patient, invitation_id, "cancel", {"reason": "Operation moved"}), 200)
    assert answer["status"] == "refunded"
    assert [(request.amount_fen, request.total_fen) for request in fake.refunds] == [(FEE, FEE)]
    assert wallet(client, flow.doctor)["pending_fen"] == 0 and wallet(client, flow.doctor)["available_fen"] == 0
    assert balance(fees(invitation_id)) == 0 and balance(clearing(invitation_id)) == 0
    assert booked(flow.doctor, flow.day) == 0
    assert_ledger_ok()


def test_a_late_cancel_after_acceptance_refunds_the_configured_share(
    client: Client, flow: Flow, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an accepted invitation (fee 3 000 yuan: 2 700 pending for the doctor, 300 platform fee)
    invitation = accepted(client, flow)
    invitation_id = invitation["invitation_id"]
    # WHEN the patient cancels two hours before the operation (late: 50 % back under the default policy)
    freeze_clock(monkeypatch, scheduled_at(invitation) - timedelta(hours=2))
    preview = expect(call(client, "GET", f"/v1/invitations/{invitation_id}/refund-preview", flow.patient), 200)
    assert (preview["rule"], preview["refund_fen"], preview["kept_fen"]) == ("late_cancellation", 150_000, 150_000)
    answer = expect(act(client, flow.patient, invitation_id, "cancel", {"reason": "Operation postponed"}), 200)
    # THEN the provider refunds half; the doctor keeps 90 % of the other half, the platform 10 %
    assert answer["status"] == "refunded"
    assert [(request.amount_fen, request.total_fen) for request in fake.refunds] == [(150_000, FEE)]
    assert wallet(client, flow.doctor) == {
        "currency": "CNY",
        "pending_fen": 0,
        "available_fen": 135_000,
        "payout_fen": 0,
        "owed_fen": 0,
    }
    assert balance(fees(invitation_id)) == 15_000
    assert balance(clearing(invitation_id)) == -150_000
    assert balance(accounts.escrow(invitation_id)) == 0
    # the day's capacity is given back
    assert booked(flow.doctor, flow.day) == 0
    assert {("cancelled", flow.doctor.user_id), ("refunded", flow.patient.user_id)} <= set(notices(invitation_id))
    assert_ledger_ok()


def test_refund_preview_answers_each_rule(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    def preview(invitation_id: str) -> dict[str, Any]:
        path = f"/v1/invitations/{invitation_id}/refund-preview"
        return expect(call(client, "GET", path, flow.patient), 200)

    stranger = register(client, "patient")  # signed in before the clock is frozen
    # not paid: nothing to refund
    unpaid = create_invitation(client, flow.patient, request_body(flow))
    assert [preview(unpaid["invitation_id"])[key] for key in ("rule", "refund_fen", "kept_fen")] == ["not_paid", 0, 0]
    # paid, not accepted: everything
    waiting = paid_invitation(client, flow)
    got = preview(waiting["invitation_id"])
    assert (got["rule"], got["refund_fen"], got["kept_fen"], got["fee_fen"]) == ("not_accepted", FEE, 0, FEE)
    assert got["explanation"] and got["explanation_zh"]
    # accepted days before the operation: everything
    early = accepted(client, flow)
    got = preview(early["invitation_id"])
    assert (got["rule"], got["refund_fen"], got["kept_fen"]) == ("early_cancellation", FEE, 0)
    # accepted, within late_cancel_hours of the operation: the configured share
    freeze_clock(monkeypatch, scheduled_at(early) - timedelta(hours=23))
    got = preview(early["invitation_id"])
    assert (got["rule"], got["refund_fen"], got["kept_fen"]) == ("late_cancellation", 150_000, 150_000)
    # a preview moves nothing
    assert read(client, flow.patient, early["invitation_id"])["status"] == "accepted"
    assert wallet(client, flow.doctor)["pending_fen"] == DOCTOR_SHARE
    # nobody else may ask
    path = f"/v1/invitations/{early['invitation_id']}/refund-preview"
    expect(call(client, "GET", path, stranger), 404, "invitation_not_found")
    expect(call(client, "GET", path, flow.doctor), 403, "forbidden")


def test_refund_preview_after_completion_is_not_cancellable(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    invitation_id = completed(client, flow, monkeypatch, timedelta(hours=3))[0]["invitation_id"]
    path = f"/v1/invitations/{invitation_id}/refund-preview"
    expect(call(client, "GET", path, flow.patient), 409, "not_cancellable")
    expect(act(client, flow.patient, invitation_id, "cancel", {"reason": "late"}), 409, "invalid_transition")
    expect(act(client, flow.patient, invitation_id, "confirm"), 200)
    expect(call(client, "GET", path, flow.patient), 409, "not_cancellable")


# --- completion and confirmation ---------------------------------------------------------------


def test_complete_before_the_scheduled_time_is_too_early(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    invitation = accepted(client, flow)
    freeze_clock(monkeypatch, scheduled_at(invitation) - timedelta(minutes=1))
    expect(act(client, flow.doctor, invitation["invitation_id"], "complete"), 409, "too_early")
    assert read(client, flow.patient, invitation["invitation_id"])["status"] == "accepted"


def test_complete_needs_an_accepted_invitation(client: Client, flow: Flow) -> None:
    invitation = paid_invitation(client, flow)
    expect(act(client, flow.doctor, invitation["invitation_id"], "complete"), 409, "invalid_transition")


def test_the_doctor_cannot_confirm(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    invitation, _ = completed(client, flow, monkeypatch, timedelta(hours=3))
    expect(act(client, flow.doctor, invitation["invitation_id"], "confirm"), 403, "forbidden")
    assert read(client, flow.patient, invitation["invitation_id"])["status"] == "completed"


def test_confirm_releases_the_doctors_share_and_counts_one_anesthesia(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an accepted invitation, done after its time
    invitation = accepted(client, flow)
    invitation_id = invitation["invitation_id"]
    assert storefront_count(client, flow.patient, flow.doctor) == 0
    completed, done_at = complete_after(client, flow, invitation, monkeypatch, timedelta(hours=3))
    assert completed["status"] == "completed"
    assert completed["confirm_by"] == (done_at + timedelta(hours=72)).isoformat()
    assert wallet(client, flow.doctor)["pending_fen"] == DOCTOR_SHARE
    # WHEN the patient confirms
    confirmed = expect(act(client, flow.patient, invitation_id, "confirm"), 200)
    # THEN the doctor's share (fee - platform fee) becomes available, and the storefront counts it
    assert confirmed["status"] == "confirmed"
    assert wallet(client, flow.doctor) == {
        "currency": "CNY",
        "pending_fen": 0,
        "available_fen": FEE - PLATFORM_FEE,
        "payout_fen": 0,
        "owed_fen": 0,
    }
    assert balance(fees(invitation_id)) == PLATFORM_FEE
    assert storefront_count(client, flow.patient, flow.doctor) == 1
    assert ("confirmed", flow.doctor.user_id) in notices(invitation_id)
    # confirming again moves nothing
    expect(act(client, flow.patient, invitation_id, "confirm"), 409, "invalid_transition")
    assert wallet(client, flow.doctor)["available_fen"] == FEE - PLATFORM_FEE
    assert storefront_count(client, flow.patient, flow.doctor) == 1
    assert_ledger_ok()


def test_a_confirmed_consultation_pays_the_doctor_but_counts_no_anesthesia(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    consultation, _ = completed(client, flow, monkeypatch, timedelta(hours=1), kind="consultation")
    expect(act(client, flow.patient, consultation["invitation_id"], "confirm"), 200)
    assert wallet(client, flow.doctor)["available_fen"] == CONSULTATION_FEE - CONSULTATION_FEE // 10
    assert storefront_count(client, flow.patient, flow.doctor) == 0
    assert_ledger_ok()


# --- the scheduled jobs ------------------------------------------------------------------------


def test_expire_due_refunds_an_unanswered_invitation_and_tells_both_sides(
    client: Client, flow: Flow, fake: FakeProvider
) -> None:
    invitation = paid_invitation(client, flow)
    invitation_id = invitation["invitation_id"]
    deadline = datetime.fromisoformat(invitation["response_deadline"])
    # before the deadline nothing is due
    assert deadlines.expire_due(deadline - timedelta(seconds=1))["due"] == 0
    # WHEN the job runs after it
    report = deadlines.expire_due(deadline + timedelta(minutes=5))
    # THEN the invitation expires and is refunded in full
    assert report == {"due": 1, "done": 1, "skipped": 0, "failed": 0}
    seen = read(client, flow.patient, invitation_id)
    assert seen["status"] == "refunded"
    assert [step["transition"] for step in seen["history"]] == ["create", "pay", "expire", "refund"]
    assert_refunded_in_full(fake, invitation_id)
    written = notices(invitation_id)
    assert ("expired", flow.patient.user_id) in written and ("expired", flow.doctor.user_id) in written
    assert ("refunded", flow.patient.user_id) in written
    # and it left the queue
    assert deadlines.expire_due(deadline + timedelta(hours=1))["due"] == 0
    assert_ledger_ok()


def _unpaid_due(now: datetime) -> list[str]:
    return [
        item.invitation_id for item in Invitation.by_due.query(engine.DUE_PAYMENT, Invitation.due_at <= now.isoformat())
    ]


def test_an_invitation_never_ordered_is_closed_when_the_time_to_pay_ends(client: Client, flow: Flow) -> None:
    # GIVEN an invitation for which no payment order was ever opened
    created = create_invitation(client, flow.patient, request_body(flow))
    window_end = datetime.fromisoformat(created["payment_due_at"])
    # WHEN the payment job runs before the time to pay ends, nothing happens
    assert deadlines.follow_up_payments(window_end - timedelta(seconds=1))["due"] == 0
    # AND when it runs after, the invitation is closed by the system
    report = deadlines.follow_up_payments(window_end + timedelta(seconds=30))
    assert report == {"due": 1, "done": 1, "skipped": 0, "failed": 0}
    seen = read(client, flow.patient, created["invitation_id"])
    assert seen["status"] == "closed"
    assert [(step["transition"], step["by"]) for step in seen["history"]][-1] == ("lapse_unpaid", "system")
    # AND it left the queue: no money moved, and it cannot be paid any more
    assert _unpaid_due(window_end + timedelta(days=1)) == []
    assert check_ledger().transactions == 0
    body = {"purpose": "invitation", "reference": created["invitation_id"], "channel": "sandbox"}
    expect(call(client, "POST", "/v1/payments", flow.patient, body), 409, "invitation_not_payable")


def test_an_invitation_with_an_order_is_left_to_the_orders_follow_up(
    client: Client, flow: Flow, fake: FakeProvider
) -> None:
    # GIVEN two invitations: one with an open payment order, one withdrawn before any order
    ordered = create_invitation(client, flow.patient, request_body(flow))
    withdrawn = create_invitation(client, flow.patient, request_body(flow))
    open_order(client, flow.patient, ordered["invitation_id"])
    expect(act(client, flow.patient, withdrawn["invitation_id"], "cancel", {"reason": "Mistake"}), 200)
    # THEN neither waits in the unpaid queue any more
    later = datetime.fromisoformat(ordered["payment_due_at"]) + timedelta(minutes=5)
    assert _unpaid_due(later) == []
    # AND the order's follow-up closes the unpaid one at the window's end, at the provider too
    deadlines.follow_up_payments(later)
    assert read(client, flow.patient, ordered["invitation_id"])["status"] == "closed"
    assert len(fake.closed) == 1


def test_the_unpaid_lapse_leaves_alone_an_invitation_whose_order_opened_meanwhile(client: Client, flow: Flow) -> None:
    # GIVEN the job read the invitation just before the patient opened its payment order
    created = create_invitation(client, flow.patient, request_body(flow))
    stale = engine.load(created["invitation_id"])
    open_order(client, flow.patient, created["invitation_id"])
    # WHEN it lapses what it read, after the time to pay
    later = datetime.fromisoformat(created["payment_due_at"]) + timedelta(seconds=1)
    with pytest.raises(ApiError) as raised:
        service.lapse_unpaid(stale, later)
    # THEN the conditional write refuses: the invitation keeps waiting for its order's payment
    assert (raised.value.status, raised.value.code) == (409, "conflict")
    assert read(client, flow.patient, created["invitation_id"])["status"] == "awaiting_payment"


def test_confirm_due_releases_after_the_hold(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    invitation, done_at = completed(client, flow, monkeypatch, timedelta(hours=1))
    assert deadlines.confirm_due(done_at + timedelta(hours=71))["due"] == 0
    report = deadlines.confirm_due(done_at + timedelta(hours=72, minutes=1))
    assert report == {"due": 1, "done": 1, "skipped": 0, "failed": 0}
    seen = read(client, flow.patient, invitation["invitation_id"])
    assert seen["status"] == "confirmed" and seen["history"][-1]["by"] == "system"
    assert wallet(client, flow.doctor)["available_fen"] == DOCTOR_SHARE
    assert storefront_count(client, flow.patient, flow.doctor) == 1
    assert deadlines.confirm_due(done_at + timedelta(hours=100))["due"] == 0
    assert_ledger_ok()


def test_expire_due_skips_an_invitation_accepted_meanwhile(
    client: Client, flow: Flow, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the job read the due queue just before the doctor accepted
    invitation = paid_invitation(client, flow)
    later = datetime.fromisoformat(invitation["response_deadline"]) + timedelta(minutes=1)
    stale = list(Invitation.by_due.query(engine.DUE_RESPONSE, Invitation.due_at <= later.isoformat()))
    assert [item.invitation_id for item in stale] == [invitation["invitation_id"]]
    expect(act(client, flow.doctor, invitation["invitation_id"], "accept"), 200)
    monkeypatch.setattr(deadlines, "_due_invitations", lambda queue, now, limit: stale)
    # WHEN it goes on
    report = deadlines.expire_due(later)
    # THEN it skips the invitation: nothing refunded, the doctor keeps the acceptance
    assert report == {"due": 1, "done": 0, "skipped": 1, "failed": 0}
    assert read(client, flow.patient, invitation["invitation_id"])["status"] == "accepted"
    assert fake.refunds == []
    assert wallet(client, flow.doctor)["pending_fen"] == DOCTOR_SHARE
    assert_ledger_ok()


def test_confirm_due_skips_an_invitation_confirmed_meanwhile(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    invitation, done_at = completed(client, flow, monkeypatch, timedelta(hours=1))
    later = done_at + timedelta(hours=73)
    stale = list(Invitation.by_due.query(engine.DUE_HOLD, Invitation.due_at <= later.isoformat()))
    assert len(stale) == 1
    expect(act(client, flow.patient, invitation["invitation_id"], "confirm"), 200)
    monkeypatch.setattr(deadlines, "_due_invitations", lambda queue, now, limit: stale)
    report = deadlines.confirm_due(later)
    assert report == {"due": 1, "done": 0, "skipped": 1, "failed": 0}
    assert wallet(client, flow.doctor)["available_fen"] == DOCTOR_SHARE
    assert storefront_count(client, flow.patient, flow.doctor) == 1
    assert_ledger_ok()


# --- payments ----------------------------------------------------------------------------------


def payment_body(invitation_id: str, **changes: Any) -> dict[str, Any]:
    return {"purpose": "invitation", "reference": invitation_id, "channel": "sandbox", **changes}


def test_paying_someone_elses_invitation_is_not_found(client: Client, flow: Flow) -> None:
    created = create_invitation(client, flow.patient, request_body(flow))
    stranger = register(client, "patient")
    body = payment_body(created["invitation_id"])
    expect(call(client, "POST", "/v1/payments", stranger, body), 404, "invitation_not_found")
    expect(call(client, "POST", "/v1/payments", flow.patient, payment_body("nope")), 404, "invitation_not_found")
    expect(call(client, "POST", "/v1/payments", flow.doctor, body), 403, "forbidden")


def test_opening_twice_returns_the_same_order(client: Client, flow: Flow, fake: FakeProvider) -> None:
    created = create_invitation(client, flow.patient, request_body(flow))
    body = payment_body(created["invitation_id"])
    first = expect(call(client, "POST", "/v1/payments", flow.patient, body), 201)
    second = expect(call(client, "POST", "/v1/payments", flow.patient, body), 200)
    assert first["order_id"] == second["order_id"] == f"PI{created['invitation_id']}"
    assert first["client_params"] == second["client_params"] and first["client_params"]["package"]
    assert (first["status"], first["amount_fen"], first["currency"]) == ("pending", FEE, "CNY")
    assert len(fake.created) == 1
    assert read(client, flow.patient, created["invitation_id"])["payment_order_id"] == first["order_id"]


def test_another_scene_or_channel_finds_the_order_open(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = create_invitation(client, flow.patient, request_body(flow))
    order = open_order(client, flow.patient, created["invitation_id"])
    body = payment_body(created["invitation_id"], scene="jsapi_oa")
    error = expect(call(client, "POST", "/v1/payments", flow.patient, body), 409, "payment_order_open")
    assert error["error"]["details"]["order_id"] == order["order_id"]
    # GIVEN a stage that also offers WeChat Pay
    monkeypatch.setattr(registry, "available_channels", lambda: ["sandbox", "wechat"])
    with installed(FakeProvider(channel="wechat")) as wechat:
        body = payment_body(created["invitation_id"], channel="wechat", scene="h5")
        expect(call(client, "POST", "/v1/payments", flow.patient, body), 409, "payment_order_open")
        assert wechat.created == []


def test_a_channel_this_stage_does_not_offer_is_unavailable(client: Client, flow: Flow) -> None:
    created = create_invitation(client, flow.patient, request_body(flow))
    for channel in ("wechat", "alipay", "unionpay"):
        body = payment_body(created["invitation_id"], channel=channel)
        expect(call(client, "POST", "/v1/payments", flow.patient, body), 422, "channel_unavailable")
    assert read(client, flow.patient, created["invitation_id"])["payment_order_id"] is None


def test_the_payment_window_closes(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    created = create_invitation(client, flow.patient, request_body(flow))
    due = datetime.fromisoformat(created["payment_due_at"])
    assert due == (datetime.fromisoformat(created["created_at"]) + timedelta(minutes=30)).replace(microsecond=0)
    freeze_clock(monkeypatch, due)
    body = payment_body(created["invitation_id"])
    expect(call(client, "POST", "/v1/payments", flow.patient, body), 409, "payment_window_closed")
    freeze_clock(monkeypatch, due - timedelta(seconds=1))
    expect(call(client, "POST", "/v1/payments", flow.patient, body), 201)


def test_a_paid_invitation_cannot_be_paid_again(client: Client, flow: Flow) -> None:
    invitation = paid_invitation(client, flow)
    body = payment_body(invitation["invitation_id"])
    expect(call(client, "POST", "/v1/payments", flow.patient, body), 409, "invitation_not_payable")


def test_an_order_is_read_by_its_payer_and_admins_only(client: Client, flow: Flow) -> None:
    created = create_invitation(client, flow.patient, request_body(flow))
    order = open_order(client, flow.patient, created["invitation_id"])
    path = f"/v1/payments/{order['order_id']}"
    own = expect(call(client, "GET", path, flow.patient), 200)
    assert (own["order_id"], own["amount_fen"], own["status"]) == (order["order_id"], FEE, "pending")
    assert "provider_ref" not in own
    seen = expect(call(client, "GET", path, flow.admin), 200)
    assert seen["provider_ref"].startswith("prepay-")
    for outsider in (register(client, "patient"), flow.doctor):
        expect(call(client, "GET", path, outsider), 404, "payment_order_not_found")
    expect(call(client, "GET", "/v1/payments/PInope", flow.patient), 404, "payment_order_not_found")


@pytest.mark.parametrize(("name", "value"), [("amount_fen", 1), ("amount", 1), ("currency", "USD")])
def test_the_amount_never_comes_from_the_client(
    client: Client, flow: Flow, fake: FakeProvider, name: str, value: Any
) -> None:
    created = create_invitation(client, flow.patient, request_body(flow))
    body = payment_body(created["invitation_id"], **{name: value})
    error = expect(call(client, "POST", "/v1/payments", flow.patient, body), 422, "validation_failed")
    assert error["error"]["details"]["field"] == name
    assert fake.created == []
    order = open_order(client, flow.patient, created["invitation_id"])
    assert order["amount_fen"] == FEE and [request.amount_fen for request in fake.created] == [FEE]


def test_a_payment_of_another_amount_is_never_applied(client: Client, flow: Flow) -> None:
    from chalicelib.payments.settlement import AmountMismatchError

    created = create_invitation(client, flow.patient, request_body(flow))
    order = open_order(client, flow.patient, created["invitation_id"])
    with pytest.raises(AmountMismatchError):
        pay(order["order_id"], FEE - 1)
    assert read(client, flow.patient, created["invitation_id"])["status"] == "awaiting_payment"
    assert check_ledger().transactions == 0
    # a repeated success is applied once
    assert pay(order["order_id"], FEE, txn="tx-1", event_id="ev-1") == "applied"
    assert pay(order["order_id"], FEE, txn="tx-1", event_id="ev-1") == "duplicate"
    assert balance(accounts.escrow(created["invitation_id"])) == FEE
    assert ("new_invitation", flow.doctor.user_id) in notices(created["invitation_id"])
    assert_ledger_ok()
