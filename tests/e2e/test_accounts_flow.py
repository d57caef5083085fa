"""The accounts issue's acceptance test, over HTTP against the running stack.

A doctor signs up by WeChat (sandbox), fills the profile and calendar and asks for review;
an admin (made by the operator command) approves; a patient signs up by phone, finds the
hospital by "xh", lists its anesthesiologists and opens the storefront; a hospital without
a membership is refused the catalogue until an admin grants one. Every answer carries
``X-Request-Id``, and every error has the one error shape.

The flow runs on a stack of its own: its calendar writes go to the Invitations table,
whose stream counts ``test_service`` checks on the shared stack.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.clock import shanghai_date, utc_now
from tests.e2e.conftest import ADMIN_PASSWORD, Caller, make_admin, phone_number, start_stack, stop_stack

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.e2e.conftest import Stack

XIEHE = "\u5317\u4eac\u534f\u548c\u533b\u9662"  # 北京协和医院


def _find(items: list[dict[str, Any]], key: str, value: str) -> dict[str, Any] | None:
    return next((item for item in items if item[key] == value), None)


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("accounts-stack"), "--in-memory")
    yield running
    stop_stack(running)


def test_doctor_patient_hospital_and_admin_flow(own_stack: Stack) -> None:
    stack, api = own_stack, own_stack.base_url
    anonymous = Caller(api)
    today = shanghai_date(utc_now())

    # --- a doctor signs up with the sandbox WeChat: first a ticket, then the role -----------------
    code = f"e2e-dr-{uuid.uuid4().hex[:12]}"
    ticket = anonymous.call("POST", "/v1/auth/wechat", 202, {"app": "mp", "code": code})
    assert ticket["role_required"] is True
    assert "session_key" not in json.dumps(ticket)
    signed_up = anonymous.call(
        "POST", "/v1/auth/wechat", 201, {"app": "mp", "signup_ticket": ticket["signup_ticket"], "role": "doctor"}
    )
    assert (signed_up["role"], signed_up["created"]) == ("doctor", True)
    doctor = Caller(api, signed_up["access_token"])
    doctor_id = signed_up["user_id"]

    # the review refuses an empty profile
    credentials = {
        "practising_certificate_no": "110110000012345",
        "qualification_certificate_no": "199911110000123",
        "id_number": "11010519491231002X",
    }
    doctor.call("POST", "/v1/me/verification", 422, credentials, code="profile_incomplete")

    # --- the doctor fills the profile, with the hospital found by full pinyin --------------------
    found = anonymous.call("GET", "/v1/hospitals", 200, params={"q": "xiehe"})
    xiehe = _find(found["items"], "name", XIEHE)
    assert xiehe is not None, found
    hospital_id = xiehe["hospital_id"]
    doctor_phone = phone_number()
    profile = {
        "name": "Wang Lei",
        "phone": doctor_phone,
        "hospital_id": hospital_id,
        "title": "attending",
        "specialties": ["cardiac", "regional"],
        "invitation_fee": 80000,
        "consultation_fee": 5000,
        "introduction": "Cardiac anaesthesia",
    }
    me = doctor.call("PATCH", "/v1/me", 200, profile)
    assert me["hospital"] == {"hospital_id": hospital_id, "name": XIEHE}
    assert me["phone"] == doctor_phone  # the owner sees it in full

    # --- ... and the calendar for the next 14 days -----------------------------------------------
    first, last = today + timedelta(days=1), today + timedelta(days=14)
    span = {"from": first.isoformat(), "to": last.isoformat(), "working": True}
    days = doctor.call(
        "PUT", "/v1/me/calendar", 200, {"ranges": [{**span, "invitation_capacity": 2, "consultation_capacity": 3}]}
    )["days"]
    assert [day["date"] for day in days] == [(first + timedelta(days=n)).isoformat() for n in range(14)]
    doctor.call(
        "PUT",
        "/v1/me/calendar",
        422,
        {"days": [{"date": (today - timedelta(days=1)).isoformat(), "working": True}]},
        code="validation_failed",
    )

    # --- ... and asks for review -------------------------------------------------------------------
    submitted = doctor.call("POST", "/v1/me/verification", 202, credentials)
    assert submitted["status"] == "pending"

    # --- an operator makes an admin, who signs in --------------------------------------------------
    admin_phone = phone_number()
    make_admin(stack, admin_phone)
    admin_session = anonymous.call("POST", "/v1/auth/login", 200, {"phone": admin_phone, "password": ADMIN_PASSWORD})
    assert admin_session["role"] == "admin"
    admin = Caller(api, admin_session["access_token"])

    # a patient signs up by phone; before approval the doctor is nowhere to be seen
    patient_phone = phone_number()
    patient_session = anonymous.call(
        "POST", "/v1/auth/register", 201, {"phone": patient_phone, "password": "patient-pass-1", "role": "patient"}
    )
    patient = Caller(api, patient_session["access_token"])
    listed = patient.call("GET", f"/v1/hospitals/{hospital_id}/anesthesiologists", 200)
    assert _find(listed["items"], "doctor_id", doctor_id) is None
    patient.call("GET", f"/v1/anesthesiologists/{doctor_id}", 404, code="doctor_not_found")

    # --- the admin approves the doctor from the queue ---------------------------------------------
    waiting = admin.call("GET", "/v1/admin/verifications", 200, params={"limit": 100})
    entry = _find(waiting["items"], "user_id", doctor_id)
    assert entry is not None, waiting
    assert entry["credentials"]["id_number"] == credentials["id_number"]
    decision = admin.call("POST", f"/v1/admin/verifications/{doctor_id}/approve", 200)
    assert (decision["decision"], decision["decided_by"]) == ("approved", admin_session["user_id"])
    admin.call("POST", f"/v1/admin/verifications/{doctor_id}/approve", 409)
    assert _find(admin.call("GET", "/v1/admin/verifications", 200)["items"], "user_id", doctor_id) is None

    # --- the patient finds the hospital by its initials and lists its anesthesiologists -----------
    searched = patient.call("GET", "/v1/hospitals", 200, params={"q": "xh"})
    assert _find(searched["items"], "hospital_id", hospital_id) is not None, searched
    listed = patient.call("GET", f"/v1/hospitals/{hospital_id}/anesthesiologists", 200)
    card = _find(listed["items"], "doctor_id", doctor_id)
    assert card is not None, listed
    assert card["next_accepting_dates"] == [(first + timedelta(days=n)).isoformat() for n in range(5)]
    assert (card["name"], card["title"], card["invitation_fee"]) == ("Wang Lei", "attending", 80000)

    # --- ... and opens the storefront: accepting days, no phone ------------------------------------
    storefront = patient.call("GET", f"/v1/anesthesiologists/{doctor_id}", 200)
    assert storefront["verified"] is True
    assert [day["date"] for day in storefront["accepting_days"]] == [day["date"] for day in days]
    assert storefront["accepting_days"][0] == {
        "date": first.isoformat(),
        "invitation_slots": 2,
        "consultation_slots": 3,
    }
    assert storefront["hospital"] == {"hospital_id": hospital_id, "name": XIEHE}
    text = json.dumps(storefront)
    assert "phone" not in text
    assert doctor_phone not in text
    assert f"{doctor_phone[:3]}****{doctor_phone[-4:]}" not in text  # not even masked
    # a patient may not browse the whole catalogue
    patient.call("GET", "/v1/anesthesiologists", 403, code="forbidden")

    # --- a hospital account signs up and sets its profile ------------------------------------------
    hospital_session = anonymous.call(
        "POST", "/v1/auth/register", 201, {"phone": phone_number(), "password": "hospital-pass-1", "role": "hospital"}
    )
    hospital = Caller(api, hospital_session["access_token"])
    hospital_user_id = hospital_session["user_id"]
    hospital_profile = {"hospital_id": hospital_id, "contact_name": "Zhang Min", "contact_phone": phone_number()}
    assert hospital.call("PATCH", "/v1/me", 200, hospital_profile)["hospital"]["hospital_id"] == hospital_id

    # without a membership it is refused the catalogue
    hospital.call("GET", "/v1/anesthesiologists", 403, code="membership_required")
    assert hospital.call("GET", "/v1/me/membership", 200)["active"] is False

    # --- the admin grants a membership for a year, by contract ------------------------------------
    ends_on = (today + timedelta(days=365)).isoformat()
    granted = admin.call(
        "PUT",
        f"/v1/admin/memberships/{hospital_user_id}",
        200,
        {"active": True, "ends_on": ends_on, "reference": "contract e2e-001"},
    )
    assert granted["active"] is True
    assert hospital.call("GET", "/v1/me/membership", 200)["active"] is True

    # --- now the hospital sees the whole catalogue, the doctor in it -------------------------------
    catalogue = hospital.call("GET", "/v1/anesthesiologists", 200, params={"limit": 100})
    assert _find(catalogue["items"], "doctor_id", doctor_id) is not None, catalogue
    on_a_day = hospital.call(
        "GET", "/v1/anesthesiologists", 200, params={"date": first.isoformat(), "specialty": "cardiac"}
    )
    assert _find(on_a_day["items"], "doctor_id", doctor_id) is not None, on_a_day
    beyond = hospital.call("GET", "/v1/anesthesiologists", 200, params={"date": (last + timedelta(days=1)).isoformat()})
    assert _find(beyond["items"], "doctor_id", doctor_id) is None, beyond

    # --- signed-out callers and bad tokens get 401 in the error shape ------------------------------
    anonymous.call("GET", "/v1/me", 401)
    Caller(api, "not-a-token").call("GET", "/v1/me", 401, code="invalid_token")
