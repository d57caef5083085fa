"""Tips and VIP memberships (M-j, M-g): opening their orders, paying them, and what the ledger and statements say."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.ledger import accounts
from chalicelib.ledger.audit import check_ledger
from chalicelib.ledger.journal import Posting, balance
from chalicelib.ledger.records import order_of, records_of
from tests.unit.actors import call, expect, make_hospital, register
from tests.unit.flow_actors import (
    FEE,
    Flow,
    act,
    completed,
    fake_provider_fixture,  # noqa: F401 - the fixture ``fake``
    flow_fixture,  # noqa: F401 - the fixture ``flow``
    notices,
    pay,
)

if TYPE_CHECKING:
    from chalice.test import Client

    from tests.unit.actors import Actor
    from tests.unit.flow_actors import FakeProvider


def tip_body(invitation_id: str, amount_fen: int = 2_000, **changes: Any) -> dict[str, Any]:
    return {"purpose": "tip", "reference": invitation_id, "channel": "sandbox", "amount_fen": amount_fen, **changes}


def confirmed(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    done, _ = completed(client, flow, monkeypatch, timedelta(hours=2))
    return expect(act(client, flow.patient, done["invitation_id"], "confirm"), 200)


def statement(client: Client, actor: Actor, query: str = "") -> list[dict[str, Any]]:
    return expect(call(client, "GET", f"/v1/me/transactions{query}", actor), 200)["items"]


# --- records (pure) --------------------------------------------------------------------------------


def test_records_follow_the_parties_of_a_posting() -> None:
    # GIVEN an acceptance, a release, a tip and a payout
    acceptance = Posting(
        "accept:i1",
        "acceptance",
        {"escrow:i1": -1000, "doctor:d1:pending": 900, "platform:fees:0": 100},
        "invitation:i1",
    )
    release = Posting("release:i1", "release", {"doctor:d1:pending": -900, "doctor:d1:available": 900}, "invitation:i1")
    tip = Posting(
        "tip:PTab", "tip", {"provider:sandbox:1": -500, "doctor:d1:available": 500}, "invitation:i1", payer="p1"
    )
    payout = Posting("payout:WDab", "payout", {"doctor:d1:payout": -700, "provider:sandbox:2": 700}, "withdrawal:WDab")
    # THEN each names the doctor (and the payer) with the direction and size seen from them
    assert [(r.user_id, r.direction, r.amount_fen, r.status) for r in records_of(acceptance)] == [
        ("d1", "in", 900, "held")
    ]
    assert [(r.direction, r.amount_fen, r.balances) for r in records_of(release)] == [
        ("internal", 900, {"available": 900, "pending": -900})
    ]
    assert [(r.user_id, r.direction, r.amount_fen) for r in records_of(tip)] == [("d1", "in", 500), ("p1", "out", 500)]
    assert [(r.direction, r.amount_fen, r.status) for r in records_of(payout)] == [("out", 700, "paid_out")]
    assert order_of("tip:PTab") == "PTab" and order_of("accept:i1") is None


# --- tips ------------------------------------------------------------------------------------------


def test_a_tip_waits_for_confirmation(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    done, _ = completed(client, flow, monkeypatch, timedelta(hours=2))
    expect(
        call(client, "POST", "/v1/payments", flow.patient, tip_body(done["invitation_id"])),
        409,
        "invitation_not_tippable",
    )


@pytest.mark.parametrize("amount", [99, 50_001, None])
def test_a_tip_stays_within_bounds(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch, amount: int | None
) -> None:
    invitation = confirmed(client, flow, monkeypatch)
    body = (
        tip_body(invitation["invitation_id"], amount) if amount is not None else tip_body(invitation["invitation_id"])
    )
    if amount is None:
        del body["amount_fen"]
    expect(call(client, "POST", "/v1/payments", flow.patient, body), 422, "tip_out_of_bounds")


def test_only_the_requester_tips(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    stranger = register(client, "patient")
    invitation = confirmed(client, flow, monkeypatch)
    expect(
        call(client, "POST", "/v1/payments", stranger, tip_body(invitation["invitation_id"])),
        404,
        "invitation_not_found",
    )


def test_an_invitation_payment_carries_no_amount(client: Client, flow: Flow) -> None:
    from tests.unit.flow_actors import create_invitation, request_body

    created = create_invitation(client, flow.patient, request_body(flow))
    body = {"purpose": "invitation", "reference": created["invitation_id"], "channel": "sandbox", "amount_fen": 1}
    expect(call(client, "POST", "/v1/payments", flow.patient, body), 422, "validation_failed")


def test_a_tip_reaches_the_doctor_at_once_and_both_statements(
    client: Client, flow: Flow, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a confirmed invitation (the doctor's share is available)
    invitation = confirmed(client, flow, monkeypatch)
    invitation_id = invitation["invitation_id"]
    before = balance(accounts.doctor_available(flow.doctor.user_id))
    # WHEN the patient opens a tip (twice: a retry) and pays it
    order = expect(call(client, "POST", "/v1/payments", flow.patient, tip_body(invitation_id, 3_000)), 201)
    again = expect(call(client, "POST", "/v1/payments", flow.patient, tip_body(invitation_id, 3_000)), 200)
    assert order["order_id"].startswith("PT") and again["order_id"] == order["order_id"]
    assert (order["purpose"], order["amount_fen"], order["status"]) == ("tip", 3_000, "pending")
    assert len(fake.created) == 2  # the invitation's order and this one
    assert pay(order["order_id"], 3_000) == "applied"
    assert pay(order["order_id"], 3_000) == "duplicate"
    # THEN the doctor has it, is told, and both statements show it; the ledger holds
    assert balance(accounts.doctor_available(flow.doctor.user_id)) == before + 3_000
    assert ("tipped", flow.doctor.user_id) in notices(invitation_id)
    patient_rows = statement(client, flow.patient)
    assert [(r["type"], r["direction"], r["amount_fen"]) for r in patient_rows[:1]] == [("tip", "out", 3_000)]
    assert {r["type"] for r in patient_rows} == {"tip", "payment"}
    doctor_rows = {row["type"]: row for row in statement(client, flow.doctor)}
    assert sorted(doctor_rows) == ["acceptance", "release", "tip"]
    tip_row = doctor_rows["tip"]
    assert (tip_row["direction"], tip_row["amount_fen"], tip_row["order_id"]) == ("in", 3_000, order["order_id"])
    assert tip_row["invitation_id"] == invitation_id and tip_row["balances"] == {"available": 3_000}
    share = doctor_rows["acceptance"]["amount_fen"]
    assert doctor_rows["release"]["direction"] == "internal" and doctor_rows["release"]["amount_fen"] == share < FEE
    assert check_ledger().violations == []
    # AND another tip is a new order
    second = expect(call(client, "POST", "/v1/payments", flow.patient, tip_body(invitation_id, 1_000)), 201)
    assert second["order_id"] != order["order_id"]


def test_a_changed_tip_closes_the_open_order_first(
    client: Client, flow: Flow, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    invitation = confirmed(client, flow, monkeypatch)
    first = expect(
        call(client, "POST", "/v1/payments", flow.patient, tip_body(invitation["invitation_id"], 2_000)), 201
    )
    second = expect(
        call(client, "POST", "/v1/payments", flow.patient, tip_body(invitation["invitation_id"], 5_000)), 201
    )
    assert second["order_id"] != first["order_id"] and fake.closed == [first["order_id"]]
    assert expect(call(client, "GET", f"/v1/payments/{first['order_id']}", flow.patient), 200)["status"] == "closed"


def test_a_tip_fee_goes_to_the_platform(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from chalicelib import config

    invitation = confirmed(client, flow, monkeypatch)
    order = expect(
        call(client, "POST", "/v1/payments", flow.patient, tip_body(invitation["invitation_id"], 1_000)), 201
    )
    before = balance(accounts.doctor_available(flow.doctor.user_id)), balance(accounts.PLATFORM_TIPS)
    settings = replace(config.get_settings(), tip_fee_bps=1000)
    monkeypatch.setattr("chalicelib.payments.settlement.get_settings", lambda: settings)
    assert pay(order["order_id"], 1_000) == "applied"
    assert balance(accounts.doctor_available(flow.doctor.user_id)) == before[0] + 900
    assert balance(accounts.PLATFORM_TIPS) == before[1] + 100


# --- memberships -----------------------------------------------------------------------------------


def membership_body(plan: str = "year", **changes: Any) -> dict[str, Any]:
    return {"purpose": "membership", "reference": plan, "channel": "sandbox", **changes}


def test_only_verified_hospitals_buy_memberships(client: Client, flow: Flow) -> None:
    expect(call(client, "POST", "/v1/payments", flow.patient, membership_body()), 403, "forbidden")
    unverified = make_hospital(client, flow.hospitals.pumch)
    expect(call(client, "POST", "/v1/payments", unverified, membership_body()), 403, "verification_required")
    verified = make_hospital(client, flow.hospitals.pumch, admin=flow.admin)
    expect(call(client, "POST", "/v1/payments", verified, membership_body("decade")), 422, "unknown_plan")
    expect(call(client, "POST", "/v1/payments", verified, membership_body(amount_fen=1)), 422, "validation_failed")


def test_a_bought_membership_opens_the_catalogue_and_renewal_extends_it(client: Client, flow: Flow) -> None:
    # GIVEN a verified hospital without a membership
    hospital = make_hospital(client, flow.hospitals.pumch, admin=flow.admin)
    expect(call(client, "GET", "/v1/anesthesiologists", hospital), 403, "membership_required")
    view = expect(call(client, "GET", "/v1/me/membership", hospital), 200)
    assert view["active"] is False and view["plans"] == [{"plan_id": "year", "price_fen": 1_980_000, "days": 365}]
    # WHEN it buys the yearly plan and the payment arrives
    order = expect(call(client, "POST", "/v1/payments", hospital, membership_body()), 201)
    assert order["order_id"].startswith("PM") and order["amount_fen"] == 1_980_000
    paid_at = datetime.now(UTC)
    assert pay(order["order_id"], 1_980_000, now=paid_at) == "applied"
    # THEN it is a member for a year and sees every doctor
    view = expect(call(client, "GET", "/v1/me/membership", hospital), 200)
    ends = datetime.fromisoformat(view["ends_at"])
    assert view["active"] is True and view["source"] == "purchase"
    assert abs(ends - (paid_at + timedelta(days=365))) < timedelta(seconds=2)
    expect(call(client, "GET", "/v1/anesthesiologists", hospital), 200)
    assert balance(accounts.PLATFORM_MEMBERSHIP) >= 1_980_000
    # WHEN it renews before the end THEN the year is added to the old end
    renewal = expect(call(client, "POST", "/v1/payments", hospital, membership_body()), 201)
    assert pay(renewal["order_id"], 1_980_000) == "applied"
    renewed = datetime.fromisoformat(expect(call(client, "GET", "/v1/me/membership", hospital), 200)["ends_at"])
    assert renewed == ends + timedelta(days=365)
    rows = statement(client, hospital)
    assert [(r["type"], r["direction"], r["amount_fen"]) for r in rows] == [("membership", "out", 1_980_000)] * 2
    assert check_ledger().violations == []


def test_a_statement_pages_with_a_cursor(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.flow_actors import every_page

    invitation = confirmed(client, flow, monkeypatch)
    for amount in (1_000, 2_000, 3_000):
        order = expect(
            call(client, "POST", "/v1/payments", flow.patient, tip_body(invitation["invitation_id"], amount)), 201
        )
        assert pay(order["order_id"], amount) == "applied"
    ids = every_page(
        lambda query: expect(call(client, "GET", f"/v1/me/transactions{query}", flow.patient), 200), 2, "transaction_id"
    )
    assert len(ids) == len(set(ids)) == 4
    expect(call(client, "GET", "/v1/me/transactions?cursor=nope", flow.patient), 400, "invalid_cursor")


def test_a_tip_paid_after_its_order_closed_is_honoured(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chalicelib.payments import orders

    # GIVEN a tip order that closed (its window ended) and a new tip opened since
    invitation = confirmed(client, flow, monkeypatch)
    invitation_id = invitation["invitation_id"]
    first = expect(call(client, "POST", "/v1/payments", flow.patient, tip_body(invitation_id, 1_000)), 201)
    stored = orders.get(first["order_id"])
    assert stored is not None and orders.close(stored, datetime.now(UTC)) == "applied"
    second = expect(call(client, "POST", "/v1/payments", flow.patient, tip_body(invitation_id, 1_000)), 201)
    assert second["order_id"] != first["order_id"]
    before = balance(accounts.doctor_available(flow.doctor.user_id))
    # WHEN the payer's money for the closed one arrives after all
    assert pay(first["order_id"], 1_000) == "applied"
    # THEN the doctor has it, and the open tip is still the one a retry gets
    assert balance(accounts.doctor_available(flow.doctor.user_id)) == before + 1_000
    again = expect(call(client, "POST", "/v1/payments", flow.patient, tip_body(invitation_id, 1_000)), 200)
    assert again["order_id"] == second["order_id"]
    assert check_ledger().violations == []


def test_a_contract_written_over_a_purchase_it_did_not_see_is_refused(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chalicelib.accounts import memberships
    from tests.unit.actors import set_membership

    # GIVEN a hospital whose purchase is paid while an admin's contract change read "no membership"
    hospital = make_hospital(client, flow.hospitals.pumch, admin=flow.admin)
    order = expect(call(client, "POST", "/v1/payments", hospital, membership_body()), 201)
    assert pay(order["order_id"], 1_980_000) == "applied"
    bought = expect(call(client, "GET", "/v1/me/membership", hospital), 200)
    monkeypatch.setattr(memberships, "_membership", lambda user_id: None)
    # WHEN the admin's change is written THEN it is refused (retry), and the purchase stands
    ends_on = datetime.now(UTC).date() + timedelta(days=30)
    expect(set_membership(client, flow.admin, hospital.user_id, active=True, ends_on=ends_on), 409, "conflict")
    monkeypatch.undo()
    assert expect(call(client, "GET", "/v1/me/membership", hospital), 200) == bought
