"""Reputation's acceptance test, over HTTP against the running stack, its event pump and its sandbox provider.

A doctor does one anesthesia, is rated 5 stars and reaches 3 stars (one completed invitation
caps the level at 3). A second accepted invitation is never delivered: the patient complains,
the back office confirms it with a refund. The patient gets the whole fee back by the
original path, the doctor drops a star, and ``make check-ledger`` and ``make recompute-stars``
both pass.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import requests

from chalicelib.clock import SHANGHAI, utc_now
from tests.e2e.conftest import ADMIN_PASSWORD, PROJECT_DIR, Caller, make_admin, phone_number
from tests.e2e.test_invitation_flow import (
    CREDENTIALS,
    FEE,
    PLATFORM_FEE,
    SUMMARY,
    eventually,
    invite_and_pay,
    sign_up,
    status_of,
)

if TYPE_CHECKING:
    from tests.e2e.conftest import Stack

SHARE = FEE - PLATFORM_FEE


def _operator(stack: Stack, command: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "devstack.stack", "--ddb-port", str(stack.ddb_port), command]
    return subprocess.run(argv, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120, check=False)


def _stars(caller: Caller, doctor_id: str) -> float:
    return caller.call("GET", f"/v1/anesthesiologists/{doctor_id}", 200)["star_level"]


def test_a_confirmed_complaint_refunds_in_full_and_lowers_the_stars(flow_stack: Stack) -> None:
    api = flow_stack.base_url
    admin_phone = phone_number()
    make_admin(flow_stack, admin_phone)
    login = Caller(api).call("POST", "/v1/auth/login", 200, {"phone": admin_phone, "password": ADMIN_PASSWORD})
    admin = Caller(api, login["access_token"])
    hospital_id = Caller(api).call("GET", "/v1/hospitals", 200, params={"q": "xh"})["items"][0]["hospital_id"]

    # GIVEN a verified doctor working in two minutes, and a patient who invites and pays twice
    doctor, doctor_id = sign_up(api, "doctor")
    doctor.call(
        "PATCH",
        "/v1/me",
        200,
        {
            "name": "Dr Sun",
            "hospital_id": hospital_id,
            "title": "attending",
            "invitation_fee": FEE,
            "consultation_fee": 20_000,
        },
    )
    doctor.call("POST", "/v1/me/verification", 202, CREDENTIALS)
    admin.call("POST", f"/v1/admin/verifications/{doctor_id}/approve", 200)
    start = (utc_now() + timedelta(minutes=2)).astimezone(SHANGHAI).replace(second=0, microsecond=0)
    day = {"date": start.date().isoformat(), "working": True, "invitation_capacity": 2, "consultation_capacity": 0}
    doctor.call("PUT", "/v1/me/calendar", 200, {"days": [day]})
    patient, patient_id = sign_up(api, "patient")
    patient.call("PATCH", "/v1/me", 200, {"name": "\u674e\u56db"})
    body = {
        "kind": "invitation",
        "doctor_id": doctor_id,
        "hospital_id": hospital_id,
        "date": start.date().isoformat(),
        "time": start.strftime("%H:%M"),
        "operation": {"procedure": "Total knee replacement", "expected_minutes": 120},
        "summary": SUMMARY,
    }
    done, lost = invite_and_pay(patient, body), invite_and_pay(patient, body)
    scheduled = datetime.fromisoformat(doctor.call("POST", f"/v1/invitations/{done}/accept", 200)["scheduled_at"])
    doctor.call("POST", f"/v1/invitations/{lost}/accept", 200)
    assert _stars(patient, doctor_id) == 0.0  # no completed invitation yet: no level

    # WHEN the first is done, confirmed and rated 5 stars
    time.sleep(max(0.0, (scheduled - utc_now()).total_seconds()) + 1)
    doctor.call("POST", f"/v1/invitations/{done}/complete", 200)
    patient.call("POST", f"/v1/invitations/{done}/confirm", 200)
    review = patient.call("POST", f"/v1/invitations/{done}/review", 201, {"rating": 5, "comment": "Excellent care"})
    assert review["reviewer"] == "\u674e**" and patient_id not in str(review)

    # THEN the stream consumer counts the review; the doctor has 3 stars (one completed invitation
    # caps it there; the confirmation alone already gives 3, so wait for the review to be counted)
    front = eventually(
        lambda: (seen := patient.call("GET", f"/v1/anesthesiologists/{doctor_id}", 200))["rating_count"] == 1 and seen,
        "the review counted in the storefront",
    )
    assert (front["star_level"], front["rating_average"], front["anesthesia_count"]) == (3.0, 5.0, 1)
    assert front["reviews"]["items"][0]["comment"] == "Excellent care"

    # WHEN the patient complains that the second service was never delivered
    complaint = patient.call(
        "POST",
        f"/v1/invitations/{lost}/complaints",
        201,
        {"category": "not_delivered", "details": "Nobody came to the theatre"},
    )
    assert complaint["status"] == "open"
    queue = admin.call("GET", "/v1/admin/complaints", 200, params={"limit": 100})["items"]
    assert complaint["complaint_id"] in [item["complaint_id"] for item in queue]

    # AND the back office confirms it with a refund (an Idempotency-Key retry gets the same answer)
    headers = {"Authorization": f"Bearer {admin.token}", "Idempotency-Key": f"e2e-{uuid.uuid4().hex}"}
    decision = {"reason": "The ward confirms nobody came", "refund": True}
    url = f"{api}/v1/admin/complaints/{complaint['complaint_id']}/confirm"
    first = requests.post(url, json=decision, headers=headers, timeout=30)
    again = requests.post(url, json=decision, headers=headers, timeout=30)
    assert (first.status_code, again.status_code) == (200, 200), first.text
    assert first.json() == again.json()
    assert (first.json()["status"], first.json()["refund_fen"]) == ("confirmed", FEE)

    # THEN the patient is refunded in full by the original path
    eventually(lambda: status_of(patient, lost) == "refunded", "the refund of the service not delivered")
    rows = patient.call("GET", "/v1/me/transactions", 200, params={"limit": 100})["items"]
    assert ("refund", "in", FEE) in [(row["type"], row["direction"], row["amount_fen"]) for row in rows]
    seen = patient.call("GET", f"/v1/invitations/{lost}", 200)
    assert seen["complaint"]["status"] == "confirmed" and seen["complaint"]["penalty_until"]
    # AND the doctor keeps only the delivered service's share, owing nothing
    wallet = doctor.call("GET", "/v1/me/wallet", 200)
    assert (wallet["pending_fen"], wallet["available_fen"], wallet["owed_fen"]) == (0, SHARE, 0)
    # AND loses a star
    eventually(lambda: _stars(patient, doctor_id) == 2.0, "the star level after the confirmed complaint")

    # AND the ledger holds, and the stored reputation of every doctor equals the rebuilt one
    assert admin.call("GET", "/v1/admin/ledger/check", 200)["ok"] is True
    ledger = _operator(flow_stack, "check-ledger")
    assert ledger.returncode == 0, ledger.stdout + ledger.stderr
    stars = eventually(
        lambda: (result := _operator(flow_stack, "recompute-stars")).returncode == 0 and result,
        "make recompute-stars to find no difference",
    )
    assert "0 differ" in stars.stdout
