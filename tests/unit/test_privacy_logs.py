"""Personal numbers never reach the logs, are never stored in plaintext, and are never shown to others.

A full flow — a doctor and a hospital sign up, fill their profiles, submit credentials
(once with a bad ID number), someone fails a login, an admin approves, a patient looks
the doctor up — runs with every log line captured; then no phone, ID, certificate,
licence or credit-code number, and no password, may appear in the logs or the Users table.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3

from chalicelib.accounts import signin
from chalicelib.config import get_settings
from chalicelib.directory import hospitals
from chalicelib.observability import logger

if TYPE_CHECKING:
    import pytest
    from chalice.test import Client

DOCTOR_PHONE = "13912345678"
DOCTOR_PHONE_SPELLED = "+86 139-1234-5678"
DOCTOR_PASSWORD = "Doctor-Secret-Pass-1"
ID_NUMBER = "11010519491231002X"
BAD_ID_NUMBER = "110105194902310026"  # 31 February: refused with 422
PRACTISING_CERTIFICATE = "110110000012345"
QUALIFICATION_CERTIFICATE = "199911110000123"
HOSPITAL_PHONE = "13600001111"
HOSPITAL_PASSWORD = "Hospital-Secret-Pass-2"
CONTACT_PHONE = "13512345678"
LICENCE = "PDY00057-111010117A1001"
USCC = "91440300708461136T"
ADMIN_PHONE = "13800000009"
ADMIN_PASSWORD = "Admin-Secret-Pass-3"
PATIENT_PHONE = "13700001234"
PATIENT_PASSWORD = "Patient-Secret-Pass-4"
PATIENT_ID_NUMBER = "440304198506123455"
WRONG_PASSWORD = "Wrong-Guess-Pass-9"

PHONES = (DOCTOR_PHONE, HOSPITAL_PHONE, CONTACT_PHONE, ADMIN_PHONE, PATIENT_PHONE)
SECRETS = (
    *PHONES,
    DOCTOR_PHONE_SPELLED,
    "139-1234-5678",
    ID_NUMBER,
    ID_NUMBER.lower(),
    BAD_ID_NUMBER,
    PATIENT_ID_NUMBER,
    PRACTISING_CERTIFICATE,
    QUALIFICATION_CERTIFICATE,
    LICENCE,
    USCC,
    DOCTOR_PASSWORD,
    HOSPITAL_PASSWORD,
    ADMIN_PASSWORD,
    PATIENT_PASSWORD,
    WRONG_PASSWORD,
)
"""Every personal number and password the flow sends."""


def leaked(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


@dataclass
class Flow:
    """What the flow made: ids, the patient's token, and every response status in order."""

    hospital_id: str = ""
    doctor_id: str = ""
    hospital_user_id: str = ""
    patient_token: str = ""
    statuses: list[tuple[str, int]] = field(default_factory=list)


class Api:
    """The test client with JSON bodies and bearer tokens, recording each response's status."""

    def __init__(self, client: Client, flow: Flow) -> None:
        self.client, self.flow = client, flow

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["body"] = json.dumps(body)
        response = getattr(self.client.http, method)(path, **kwargs)
        self.flow.statuses.append((f"{method.upper()} {path}", response.status_code))
        return response


def run_flow(client: Client) -> Flow:
    flow = Flow()
    api = Api(client, flow)
    now = datetime.now(UTC)
    flow.hospital_id = hospitals.add_hospital(
        "Privacy Test General Hospital", [], "Beijing", "Beijing", None, "seed", now
    )["hospital_id"]

    # a doctor signs up by phone, fills the profile, submits credentials (a bad ID first)
    doctor = api.call(
        "post", "/v1/auth/register", {"phone": DOCTOR_PHONE, "password": DOCTOR_PASSWORD, "role": "doctor"}
    )
    flow.doctor_id, doctor_token = doctor.json_body["user_id"], doctor.json_body["access_token"]
    profile = {
        "name": "Dr Wang",
        "phone": DOCTOR_PHONE_SPELLED,
        "hospital_id": flow.hospital_id,
        "title": "attending",
        "introduction": "Cardiac anaesthesia",
        "invitation_fee": 50_000,
        "consultation_fee": 5_000,
    }
    api.call("patch", "/v1/me", profile, doctor_token)
    credentials = {
        "practising_certificate_no": PRACTISING_CERTIFICATE,
        "qualification_certificate_no": QUALIFICATION_CERTIFICATE,
        "id_number": BAD_ID_NUMBER,
    }
    api.call("post", "/v1/me/verification", credentials, doctor_token)
    api.call("post", "/v1/me/verification", {**credentials, "id_number": ID_NUMBER}, doctor_token)
    api.call("get", "/v1/me", token=doctor_token)

    # someone guesses the doctor's password
    api.call("post", "/v1/auth/login", {"phone": DOCTOR_PHONE, "password": WRONG_PASSWORD})
    api.call("post", "/v1/auth/login", {"phone": DOCTOR_PHONE_SPELLED, "password": WRONG_PASSWORD})

    # a hospital account signs up, names its contact, submits its licence and credit code
    hospital = api.call(
        "post", "/v1/auth/register", {"phone": HOSPITAL_PHONE, "password": HOSPITAL_PASSWORD, "role": "hospital"}
    )
    flow.hospital_user_id, hospital_token = hospital.json_body["user_id"], hospital.json_body["access_token"]
    api.call(
        "patch",
        "/v1/me",
        {"hospital_id": flow.hospital_id, "contact_name": "Ms Zhao", "contact_phone": CONTACT_PHONE},
        hospital_token,
    )
    api.call(
        "post",
        "/v1/me/verification",
        {"institution_licence_no": LICENCE, "unified_social_credit_code": USCC},
        hospital_token,
    )

    # an admin reviews and approves both
    signin.create_admin(ADMIN_PHONE, ADMIN_PASSWORD, "Ops", now)
    admin_token = api.call("post", "/v1/auth/login", {"phone": ADMIN_PHONE, "password": ADMIN_PASSWORD}).json_body[
        "access_token"
    ]
    api.call("get", "/v1/admin/verifications", token=admin_token)
    api.call("post", f"/v1/admin/verifications/{flow.doctor_id}/approve", token=admin_token)
    api.call("post", f"/v1/admin/verifications/{flow.hospital_user_id}/approve", token=admin_token)

    # a patient signs up, sets an ID number, and looks the doctor up
    patient = api.call(
        "post", "/v1/auth/register", {"phone": PATIENT_PHONE, "password": PATIENT_PASSWORD, "role": "patient"}
    )
    flow.patient_token = patient.json_body["access_token"]
    api.call("patch", "/v1/me", {"id_number": PATIENT_ID_NUMBER}, flow.patient_token)
    api.call("get", f"/v1/hospitals/{flow.hospital_id}/anesthesiologists", token=flow.patient_token)
    api.call("get", f"/v1/anesthesiologists/{flow.doctor_id}", token=flow.patient_token)
    return flow


EXPECTED_STATUSES = [
    ("POST /v1/auth/register", 201),
    ("PATCH /v1/me", 200),
    ("POST /v1/me/verification", 422),
    ("POST /v1/me/verification", 202),
    ("GET /v1/me", 200),
    ("POST /v1/auth/login", 401),
    ("POST /v1/auth/login", 401),
    ("POST /v1/auth/register", 201),
    ("PATCH /v1/me", 200),
    ("POST /v1/me/verification", 202),
    ("POST /v1/auth/login", 200),
    ("GET /v1/admin/verifications", 200),
    ("POST /v1/admin/verifications/{doctor}/approve", 200),
    ("POST /v1/admin/verifications/{hospital}/approve", 200),
    ("POST /v1/auth/register", 201),
    ("PATCH /v1/me", 200),
    ("GET /v1/hospitals/{hospital_id}/anesthesiologists", 200),
    ("GET /v1/anesthesiologists/{doctor}", 200),
]


def assert_flow_ran(flow: Flow) -> None:
    """Every step did what it should, so the checks below look at a real flow."""
    shown = [
        (
            step.replace(flow.doctor_id, "{doctor}")
            .replace(flow.hospital_user_id, "{hospital}")
            .replace(flow.hospital_id, "{hospital_id}"),
            status,
        )
        for step, status in flow.statuses
    ]
    assert shown == EXPECTED_STATUSES


def test_a_full_flow_logs_no_personal_number(
    client: Client,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN every log line captured: the Powertools handler writes to this test's stdout, and every
    # logger, down to DEBUG, reaches caplog
    monkeypatch.setattr(logger.registered_handler, "stream", sys.stdout)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger=logger.name)

    # WHEN the whole flow runs
    flow = run_flow(client)
    assert_flow_ran(flow)

    # THEN the logs saw every request ...
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{") and '"level"' in line]
    requests = [line for line in lines if line.get("message") == "request"]
    assert [(line["method"], line["status"]) for line in requests] == [
        (step.split()[0], status) for step, status in EXPECTED_STATUSES
    ]
    records = "\n".join(
        f"{record.name} {record.getMessage()} {json.dumps(record.__dict__, default=str)}" for record in caplog.records
    )
    assert any(record.name == logger.name for record in caplog.records)

    # ... and none of the personal numbers or passwords
    assert leaked(captured.out) == []
    assert leaked(captured.err) == []
    assert leaked(records) == []


def test_personal_numbers_are_stored_encrypted_and_shown_to_nobody_else(client: Client) -> None:
    # GIVEN the whole flow ran
    flow = run_flow(client)
    assert_flow_ran(flow)

    # WHEN the Users table is read raw
    items = boto3.client("dynamodb").scan(TableName=get_settings().users_table, ConsistentRead=True)["Items"]
    accounts = {item["user_id"]["S"]: item for item in items if item["sk"]["S"] == "PROFILE" and "user_id" in item}
    doctor, hospital = accounts[flow.doctor_id], accounts[flow.hospital_user_id]

    # THEN the numbers are there, but encrypted or masked ...
    assert doctor["phone_cipher"]["S"].startswith("v1:")
    assert doctor["phone_masked"]["S"] == "139****5678"
    assert doctor["credentials_cipher"]["S"].startswith("v1:")
    assert hospital["contact_phone_cipher"]["S"].startswith("v1:")
    assert hospital["contact_phone_masked"]["S"] == "135****5678"
    assert hospital["credentials_cipher"]["S"].startswith("v1:")
    assert doctor["password_hash"]["S"].startswith("scrypt$")
    # ... and no plaintext of any of them, nor a password, is stored anywhere
    assert leaked(json.dumps(items)) == []

    # WHEN a patient looks at the doctor's storefront and the hospital's list
    auth = {"Authorization": f"Bearer {flow.patient_token}"}
    views = {
        "storefront": client.http.get(f"/v1/anesthesiologists/{flow.doctor_id}", headers=auth),
        "hospital list": client.http.get(f"/v1/hospitals/{flow.hospital_id}/anesthesiologists", headers=auth),
    }

    # THEN the doctor is there, the phone is not (not even masked), nor any credential
    for name, response in views.items():
        assert response.status_code == 200, name
        text = response.body.decode()
        assert flow.doctor_id in text, name
        assert leaked(text) == [], name
        assert "139****5678" not in text, name
        assert '"phone"' not in text, name
        assert "credentials" not in text, name

    # AND the hospital directory carries no phone either
    listing = json.dumps(hospitals.search(None, None, 100, None))
    assert flow.hospital_id in listing
    assert leaked(listing) == []
    assert "5678" not in listing
