"""The rest of the money's acceptance test, over HTTP against the running stack and its sandbox provider.

A verified hospital buys a VIP membership in the sandbox and lists every doctor; it invites
one, pays, the doctor accepts and completes, the hospital confirms and tips. The doctor
registers an Alipay payout account and withdraws twice: the first payout fails (the money
comes back to ``available``, with the reason shown), the second is sent by the settlement
job and paid. The flow stack pays Alipay accounts through Alipay (its double on loopback,
told each transfer's outcome beforehand), as a stage with Alipay configured does. Each
party's ``GET /v1/me/transactions`` shows every movement, and ``make check-ledger`` passes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from chalicelib.clock import SHANGHAI, utc_now
from tests.e2e.conftest import ADMIN_PASSWORD, PROJECT_DIR, Caller, make_admin, phone_number
from tests.e2e.test_channels_flow import Buttons
from tests.e2e.test_invitation_flow import CREDENTIALS, FEE, PLATFORM_FEE, SUMMARY, eventually, sign_up, status_of

if TYPE_CHECKING:
    from devstack.doubles.loopback import Doubles
    from tests.e2e.conftest import Stack

TIP = 2_000
PRICE = 1_980_000  # the default yearly plan
SHARE = FEE - PLATFORM_FEE
FIRST_WITHDRAWAL = 10_000


def _sandbox_pay(api: str, order_id: str, **instruction: str) -> dict:
    paid = Caller(api).call("POST", f"/v1/sandbox/orders/{order_id}/pay", 200, dict(instruction))
    assert [delivery["status"] for delivery in paid["deliveries"]] == [204], paid
    return paid


def _withdrawal(doctor: Caller, withdrawal_id: str) -> dict:
    items = doctor.call("GET", "/v1/withdrawals", 200)["items"]
    return next(item for item in items if item["withdrawal_id"] == withdrawal_id)


def _payout_ends(doctor: Caller, withdrawal_id: str, status: str) -> dict:
    """The withdrawal once the settlement job (every second here) has sent it and its outcome is known."""
    return eventually(
        lambda: (item := _withdrawal(doctor, withdrawal_id))["status"] == status and item,
        f"the payout to be {status}",
        timeout=150,
    )


def test_membership_invite_tip_withdraw_and_payout(flow_stack: Stack, channel_doubles: Doubles) -> None:
    api = flow_stack.base_url
    admin_phone = phone_number()
    make_admin(flow_stack, admin_phone)
    login = Caller(api).call("POST", "/v1/auth/login", 200, {"phone": admin_phone, "password": ADMIN_PASSWORD})
    admin = Caller(api, login["access_token"])
    hospital_id = Caller(api).call("GET", "/v1/hospitals", 200, params={"q": "xh"})["items"][0]["hospital_id"]

    # GIVEN a verified doctor working today, and a verified hospital account without a membership
    doctor, doctor_id = sign_up(api, "doctor")
    profile = {"name": "Dr Li", "hospital_id": hospital_id, "title": "attending", "invitation_fee": FEE}
    doctor.call("PATCH", "/v1/me", 200, {**profile, "consultation_fee": 20_000})
    doctor.call("POST", "/v1/me/verification", 202, CREDENTIALS)
    admin.call("POST", f"/v1/admin/verifications/{doctor_id}/approve", 200)
    start = (utc_now() + timedelta(minutes=2)).astimezone(SHANGHAI).replace(second=0, microsecond=0)
    day = {"date": start.date().isoformat(), "working": True, "invitation_capacity": 3, "consultation_capacity": 1}
    doctor.call("PUT", "/v1/me/calendar", 200, {"days": [day]})
    hospital, hospital_user = sign_up(api, "hospital")
    hospital.call(
        "PATCH", "/v1/me", 200, {"hospital_id": hospital_id, "contact_name": "Wang", "contact_phone": phone_number()}
    )
    licence = {"institution_licence_no": "PDY00001X11010517A1001", "unified_social_credit_code": "91440300708461136T"}
    hospital.call("POST", "/v1/me/verification", 202, licence)
    admin.call("POST", f"/v1/admin/verifications/{hospital_user}/approve", 200)
    hospital.call("GET", "/v1/anesthesiologists", 403, code="membership_required")

    # WHEN it buys the yearly plan in the sandbox THEN it is a member and lists every doctor
    plans = hospital.call("GET", "/v1/me/membership", 200)["plans"]
    assert {"plan_id": "year", "price_fen": PRICE, "days": 365} in plans
    order = hospital.call(
        "POST", "/v1/payments", 201, {"purpose": "membership", "reference": "year", "channel": "sandbox"}
    )
    assert (order["purpose"], order["amount_fen"]) == ("membership", PRICE)
    _sandbox_pay(api, order["order_id"])
    membership = hospital.call("GET", "/v1/me/membership", 200)
    assert membership["active"] is True and membership["source"] == "purchase"
    listed = hospital.call("GET", "/v1/anesthesiologists", 200, params={"limit": 100})
    assert doctor_id in [item["doctor_id"] for item in listed["items"]]

    # WHEN it invites the doctor, pays, and the doctor accepts, completes; the hospital confirms and tips
    body = {
        "kind": "invitation",
        "doctor_id": doctor_id,
        "hospital_id": hospital_id,
        "date": start.date().isoformat(),
        "time": start.strftime("%H:%M"),
        "operation": {"procedure": "Laparoscopic cholecystectomy", "expected_minutes": 90},
        "summary": SUMMARY,
    }
    invitation = hospital.call("POST", "/v1/invitations", 201, body)
    invitation_id = invitation["invitation_id"]
    pay = {"purpose": "invitation", "reference": invitation_id, "channel": "sandbox"}
    _sandbox_pay(api, hospital.call("POST", "/v1/payments", 201, pay)["order_id"])
    assert status_of(hospital, invitation_id) == "pending_response"
    accepted = doctor.call("POST", f"/v1/invitations/{invitation_id}/accept", 200)
    scheduled = datetime.fromisoformat(accepted["scheduled_at"])
    time.sleep(max(0.0, (scheduled - utc_now()).total_seconds()) + 1)
    doctor.call("POST", f"/v1/invitations/{invitation_id}/complete", 200)
    hospital.call("POST", f"/v1/invitations/{invitation_id}/confirm", 200)
    tip = {"purpose": "tip", "reference": invitation_id, "channel": "sandbox", "amount_fen": TIP}
    _sandbox_pay(api, hospital.call("POST", "/v1/payments", 201, tip)["order_id"])
    wallet = doctor.call("GET", "/v1/me/wallet", 200)
    assert (wallet["pending_fen"], wallet["available_fen"], wallet["payout_fen"]) == (0, SHARE + TIP, 0)

    # WHEN the doctor registers an Alipay account and withdraws; the provider fails the payout
    account = doctor.call(
        "POST", "/v1/me/payout-accounts", 201, {"kind": "alipay", "account": "13912345678", "real_name": "Dr Li"}
    )
    assert "13912345678" not in account["label"]
    request = {"amount_fen": FIRST_WITHDRAWAL, "payout_account_id": account["account_id"]}
    alipay = Buttons(channel_doubles.urls())
    alipay.control("alipay", "plan-payout", {"outcome": "fail"})
    first = doctor.call("POST", "/v1/withdrawals", 201, request)
    assert (first["status"], first["amount_fen"]) == ("requested", FIRST_WITHDRAWAL)  # the job sends it within a second

    # THEN the money is back in available, and the withdrawal says why
    failed = _payout_ends(doctor, first["withdrawal_id"], "failed")
    assert failed["fail_reason"]
    wallet = doctor.call("GET", "/v1/me/wallet", 200)
    assert (wallet["available_fen"], wallet["payout_fen"]) == (SHARE + TIP, 0)

    # WHEN the doctor withdraws everything and the payout succeeds
    alipay.control("alipay", "plan-payout", {"outcome": "success"})
    second = doctor.call("POST", "/v1/withdrawals", 201, {**request, "amount_fen": SHARE + TIP})
    _payout_ends(doctor, second["withdrawal_id"], "succeeded")
    assert doctor.call("GET", "/v1/me/wallet", 200) == {
        "currency": "CNY",
        "pending_fen": 0,
        "available_fen": 0,
        "payout_fen": 0,
        "owed_fen": 0,
    }

    # THEN each party's statement shows every movement
    hospital_rows = hospital.call("GET", "/v1/me/transactions", 200)["items"]
    assert sorted((row["type"], row["direction"], row["amount_fen"]) for row in hospital_rows) == [
        ("membership", "out", PRICE),
        ("payment", "out", FEE),
        ("tip", "out", TIP),
    ]
    doctor_rows = doctor.call("GET", "/v1/me/transactions", 200)["items"]
    assert sorted((row["type"], row["amount_fen"]) for row in doctor_rows) == sorted(
        [
            ("acceptance", SHARE),
            ("release", SHARE),
            ("tip", TIP),
            ("withdrawal", FIRST_WITHDRAWAL),
            ("payout_return", FIRST_WITHDRAWAL),
            ("withdrawal", SHARE + TIP),
            ("payout", SHARE + TIP),
        ]
    )

    # AND the ledger holds
    assert admin.call("GET", "/v1/admin/ledger/check", 200)["ok"] is True
    command = [sys.executable, "-m", "devstack.stack", "--ddb-port", str(flow_stack.ddb_port), "check-ledger"]
    result = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
