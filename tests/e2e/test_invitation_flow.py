"""The core flow's acceptance test, over HTTP against the running stack and its sandbox provider.

A patient invites a doctor, pays through the sandbox (a real WeChat Pay v3 callback to our
own endpoint), the doctor accepts, completes, the patient confirms: the doctor's balances
and the platform fee are exact. A second invitation is declined: the payer is refunded in
full. A third is left unanswered: the expiry job refunds it. ``make check-ledger`` passes.

The stack (``flow_stack``, shared with the money flow's test) runs with no answer margin and
a one-minute payment window, so an invitation can be made for two minutes from now: its
answer deadline and its scheduled time then come within the test (the deadline is never
later than the scheduled time). Platform balances are compared with their values at the
start, so the tests sharing the stack may run in any order.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from chalicelib.clock import SHANGHAI, utc_now
from tests.e2e.conftest import ADMIN_PASSWORD, PROJECT_DIR, Caller, make_admin, phone_number

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.e2e.conftest import Stack

FEE = 300_000
PLATFORM_FEE = 30_000  # the default 10 %
SUMMARY = {
    "asa_class": "II",
    "emergency": False,
    "airway": {"mallampati": 2},
    "fasting": "fasted",
    "fasting_hours": 8,
    "anticoagulants": [],
    "allergies": ["penicillin"],
    "latex_allergy": False,
    "malignant_hyperthermia_family_history": "no",
    "age_years": 64,
    "weight_kg": 71.5,
}
CREDENTIALS = {
    "practising_certificate_no": "110101199001",
    "qualification_certificate_no": "220202199002",
    "id_number": "11010519491231002X",
}


def eventually(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def sign_up(api: str, role: str) -> tuple[Caller, str]:
    session = Caller(api).call(
        "POST", "/v1/auth/register", 201, {"phone": phone_number(), "password": "pass-word-1", "role": role}
    )
    return Caller(api, session["access_token"]), session["user_id"]


def status_of(caller: Caller, invitation_id: str) -> str:
    return caller.call("GET", f"/v1/invitations/{invitation_id}", 200)["status"]


def invite_and_pay(patient: Caller, body: dict[str, Any]) -> str:
    invitation = patient.call("POST", "/v1/invitations", 201, body)
    assert (invitation["status"], invitation["fee_fen"]) == ("awaiting_payment", FEE)
    order = patient.call(
        "POST",
        "/v1/payments",
        201,
        {"purpose": "invitation", "reference": invitation["invitation_id"], "channel": "sandbox"},
    )
    assert order["amount_fen"] == FEE and order["client_params"]["package"].startswith("prepay_id=")
    paid = Caller(patient.api).call("POST", f"/v1/sandbox/orders/{order['order_id']}/pay", 200, {})
    assert [delivery["status"] for delivery in paid["deliveries"]] == [204]
    assert status_of(patient, invitation["invitation_id"]) == "pending_response"
    return invitation["invitation_id"]


def balances(stack: Stack, prefix: str) -> int:
    """The sum of the balances whose account starts with ``prefix`` (sharded accounts), read from DynamoDB Local."""
    client = stack.dynamodb()
    total = 0
    for page in client.get_paginator("query").paginate(
        TableName="anes-local-ledger",
        IndexName="by_owner",
        KeyConditionExpression="owner_key = :list",
        ExpressionAttributeValues={":list": {"S": "LEDGER#ACCOUNTS"}},
    ):
        total += sum(int(item["balance"]["N"]) for item in page["Items"] if item["account"]["S"].startswith(prefix))
    return total


def test_invite_pay_accept_complete_confirm_then_decline_and_expiry_refund(flow_stack: Stack) -> None:
    api = flow_stack.base_url
    fees_before, sandbox_before = balances(flow_stack, "platform:fees"), balances(flow_stack, "provider:sandbox")
    # GIVEN an admin, a verified doctor who works today and tomorrow, and a patient
    admin_phone = phone_number()
    make_admin(flow_stack, admin_phone)
    admin = Caller(
        api,
        Caller(api).call("POST", "/v1/auth/login", 200, {"phone": admin_phone, "password": ADMIN_PASSWORD})[
            "access_token"
        ],
    )
    hospital_id = Caller(api).call("GET", "/v1/hospitals", 200, params={"q": "xh"})["items"][0]["hospital_id"]
    doctor, doctor_id = sign_up(api, "doctor")
    doctor.call(
        "PATCH",
        "/v1/me",
        200,
        {
            "name": "Dr Wang",
            "hospital_id": hospital_id,
            "title": "attending",
            "invitation_fee": FEE,
            "consultation_fee": 20_000,
        },
    )
    doctor.call("POST", "/v1/me/verification", 202, CREDENTIALS)
    admin.call("POST", f"/v1/admin/verifications/{doctor_id}/approve", 200)
    start = (utc_now() + timedelta(minutes=2)).astimezone(SHANGHAI).replace(second=0, microsecond=0)
    day = {"working": True, "invitation_capacity": 3, "consultation_capacity": 1}
    doctor.call("PUT", "/v1/me/calendar", 200, {"days": [{"date": start.date().isoformat(), **day}]})
    patient, _ = sign_up(api, "patient")
    body = {
        "kind": "invitation",
        "doctor_id": doctor_id,
        "hospital_id": hospital_id,
        "date": start.date().isoformat(),
        "time": start.strftime("%H:%M"),
        "operation": {"procedure": "Total hip replacement", "expected_minutes": 150},
        "summary": SUMMARY,
        "note": "Previous spinal anesthesia went well",
    }

    # WHEN the patient invites and pays three times through the sandbox
    first, second, third = (invite_and_pay(patient, body) for _ in range(3))

    # THEN the doctor sees the summary, but not who asked, before accepting
    seen = doctor.call("GET", f"/v1/invitations/{first}", 200)
    assert seen["summary"]["asa_class"] == "II" and seen["requester"] is None

    # WHEN the doctor accepts the first: the fee minus the platform fee is pending
    accepted = doctor.call("POST", f"/v1/invitations/{first}/accept", 200)
    assert accepted["requester"]["phone"] and accepted["doctor_share_fen"] == FEE - PLATFORM_FEE
    assert doctor.call("GET", "/v1/me/wallet", 200)["pending_fen"] == FEE - PLATFORM_FEE

    # WHEN the doctor declines the second: refunded in full by the sandbox (callback)
    doctor.call("POST", f"/v1/invitations/{second}/decline", 200, {"reason": "In theatre all day"})
    eventually(lambda: status_of(patient, second) == "refunded", "the declined invitation's refund")

    # WHEN the scheduled time passes: the third expires (the job) and is refunded; the first is completed
    scheduled = datetime.fromisoformat(accepted["scheduled_at"])
    time.sleep(max(0.0, (scheduled - utc_now()).total_seconds()) + 1)
    eventually(lambda: status_of(patient, third) == "refunded", "the expired invitation's refund", timeout=90)
    assert [step["status"] for step in patient.call("GET", f"/v1/invitations/{third}", 200)["history"]][-3:] == [
        "expired",
        "refunding",
        "refunded",
    ]
    doctor.call("POST", f"/v1/invitations/{first}/complete", 200)
    confirmed = patient.call("POST", f"/v1/invitations/{first}/confirm", 200)
    assert confirmed["status"] == "confirmed"

    # THEN the balances are exact and the ledger holds
    assert doctor.call("GET", "/v1/me/wallet", 200) == {
        "currency": "CNY",
        "pending_fen": 0,
        "available_fen": FEE - PLATFORM_FEE,
        "payout_fen": 0,
        "owed_fen": 0,
    }
    assert balances(flow_stack, "platform:fees") - fees_before == PLATFORM_FEE
    assert balances(flow_stack, "escrow:") == 0
    assert balances(flow_stack, "provider:sandbox") - sandbox_before == -FEE  # three paid in, two refunded
    assert admin.call("GET", "/v1/admin/ledger/check", 200)["ok"] is True
    command = [sys.executable, "-m", "devstack.stack", "--ddb-port", str(flow_stack.ddb_port), "check-ledger"]
    result = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ledger: ok" in result.stdout
