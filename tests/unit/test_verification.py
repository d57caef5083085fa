"""Verification (M-b): submitting credentials, the admin queue, approvals, rejections and their records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.models.users import UsersTable, VerificationDecision
from tests.unit import actors
from tests.unit.actors import DOCTOR_CREDENTIALS, HOSPITAL_CREDENTIALS, approve, call, expect, me, reject, submit

if TYPE_CHECKING:
    from collections.abc import Iterator

    from chalice.test import Client


# --- the accounts of the tests ---------------------------------------------------------------------
#
# The tests make the people they change, with phones no other test holds, and share one AWS
# account whose hospitals are seeded once. A test that reads a whole list (a hospital's
# doctors, the catalogue, the admin's queue) gets an account of its own, seeded alike.


@dataclass(frozen=True)
class World:
    """An AWS account of the module and what is in it."""

    account_id: str
    hospitals: actors.Hospitals
    admin: actors.Actor


@pytest.fixture(scope="module")
def session() -> Iterator[Client]:
    with actors.moto_session() as client:
        yield client


def _world(client: Client, patch: pytest.MonkeyPatch) -> World:
    """A new account with the hospitals and an admin, left open in ``patch``."""
    account_id = actors.open_account(patch)
    return World(account_id, actors.seed_hospitals(), actors.make_admin(client))


@pytest.fixture(scope="module")
def shared(session: Client) -> World:
    with pytest.MonkeyPatch.context() as patch:
        return _world(session, patch)


@pytest.fixture
def own_account() -> None:
    """Asked for by a test that reads a whole list: it gets an account of its own."""


@pytest.fixture
def world(request: pytest.FixtureRequest, session: Client, shared: World) -> Iterator[World]:
    """The world of the test: the module's, or its own (``own_account``)."""
    with pytest.MonkeyPatch.context() as patch:
        if "own_account" in request.fixturenames:
            yield _world(session, patch)
        else:
            actors.open_account(patch, shared.account_id)
            yield shared


@pytest.fixture
def client(session: Client, world: World) -> Client:
    return session


@pytest.fixture
def hospitals(world: World) -> actors.Hospitals:
    return world.hospitals


@pytest.fixture
def admin(world: World) -> actors.Actor:
    return world.admin


def verify(client: Client, actor: actors.Actor, credentials: dict[str, Any]) -> Any:
    return call(client, "POST", "/v1/me/verification", actor, credentials)


def queue(client: Client, admin: actors.Actor, query: str = "") -> dict[str, Any]:
    return expect(call(client, "GET", f"/v1/admin/verifications{query}", admin), 200)


def decisions(user_id: str) -> list[VerificationDecision]:
    items = UsersTable.query(f"USER#{user_id}", UsersTable.sk.startswith("DECISION#"), consistent_read=True)
    return [item for item in items if isinstance(item, VerificationDecision)]


def listed_under(client: Client, viewer: actors.Actor, hospital_id: str) -> list[str]:
    body = expect(call(client, "GET", f"/v1/hospitals/{hospital_id}/anesthesiologists", viewer), 200)
    return [item["doctor_id"] for item in body["items"]]


# --- submitting ----------------------------------------------------------------------------------


def test_a_doctor_must_complete_the_profile_first(client: Client, hospitals: actors.Hospitals) -> None:
    doctor = actors.register(client, "doctor")

    body = expect(verify(client, doctor, DOCTOR_CREDENTIALS), 422, "profile_incomplete")
    assert body["error"]["details"] == {
        "missing": ["name", "hospital_id", "title", "invitation_fee", "consultation_fee"]
    }

    actors.patch_me(client, doctor, {"name": "Dr Li", "hospital_id": hospitals.pumch, "invitation_fee": 100_000})
    body = expect(verify(client, doctor, DOCTOR_CREDENTIALS), 422, "profile_incomplete")
    assert body["error"]["details"] == {"missing": ["title", "consultation_fee"]}
    assert me(client, doctor)["verification"]["status"] == "unverified"


def test_a_hospital_must_complete_the_profile_first(client: Client, hospitals: actors.Hospitals) -> None:
    hospital = actors.register(client, "hospital")

    body = expect(verify(client, hospital, HOSPITAL_CREDENTIALS), 422, "profile_incomplete")
    assert body["error"]["details"] == {"missing": ["hospital_id", "contact_name", "contact_phone"]}

    actors.patch_me(client, hospital, {"hospital_id": hospitals.huashan})
    body = expect(verify(client, hospital, HOSPITAL_CREDENTIALS), 422, "profile_incomplete")
    assert body["error"]["details"] == {"missing": ["contact_name", "contact_phone"]}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id_number": "110105194912310021"}, "id_number"),  # wrong check character
        ({"id_number": "11010519491331002X"}, "id_number"),  # no 31st of the 13th month
        ({"id_number": "1101051949123100"}, "id_number"),
        ({"id_number": None}, "id_number"),
        ({"practising_certificate_no": "1234567"}, "practising_certificate_no"),
        ({"practising_certificate_no": "1101-1000-0012"}, "practising_certificate_no"),
        ({"qualification_certificate_no": "   "}, "qualification_certificate_no"),
        ({"qualification_certificate_no": 12345678}, "qualification_certificate_no"),
        ({"practising_certificate_no": "1" * 41}, "practising_certificate_no"),
        ({"licence": "x"}, "licence"),
    ],
)
def test_bad_doctor_credentials_are_422(
    client: Client, hospitals: actors.Hospitals, changes: dict[str, Any], field: str
) -> None:
    doctor = actors.make_doctor(client, hospitals.pumch)
    credentials = {key: value for key, value in {**DOCTOR_CREDENTIALS, **changes}.items() if value is not None}

    body = expect(verify(client, doctor, credentials), 422, "validation_failed")

    assert body["error"]["details"]["field"] == field
    assert me(client, doctor)["verification"]["status"] == "unverified"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"unified_social_credit_code": "91440300708461136A"}, "unified_social_credit_code"),  # wrong check character
        ({"unified_social_credit_code": "9144030070846113"}, "unified_social_credit_code"),
        ({"unified_social_credit_code": "I1440300708461136T"}, "unified_social_credit_code"),  # I is not in the set
        ({"institution_licence_no": "PDY 4000"}, "institution_licence_no"),
        ({"institution_licence_no": "1234567"}, "institution_licence_no"),
    ],
)
def test_bad_hospital_credentials_are_422(
    client: Client, hospitals: actors.Hospitals, changes: dict[str, str], field: str
) -> None:
    hospital = actors.make_hospital(client, hospitals.huashan)

    body = expect(verify(client, hospital, {**HOSPITAL_CREDENTIALS, **changes}), 422, "validation_failed")

    assert body["error"]["details"]["field"] == field


def test_the_credit_code_is_checked_case_insensitively(client: Client, hospitals: actors.Hospitals) -> None:
    hospital = actors.make_hospital(client, hospitals.huashan)
    credentials = {**HOSPITAL_CREDENTIALS, "unified_social_credit_code": " 91440300708461136t "}

    assert expect(verify(client, hospital, credentials), 202)["status"] == "pending"


@pytest.mark.parametrize(
    ("role", "foreign"),
    [
        ("doctor", {"unified_social_credit_code": HOSPITAL_CREDENTIALS["unified_social_credit_code"]}),
        ("doctor", {"institution_licence_no": HOSPITAL_CREDENTIALS["institution_licence_no"]}),
        ("hospital", {"id_number": DOCTOR_CREDENTIALS["id_number"]}),
    ],
)
def test_credentials_of_the_other_role_are_refused(
    client: Client, hospitals: actors.Hospitals, role: str, foreign: dict[str, str]
) -> None:
    actor = (
        actors.make_doctor(client, hospitals.pumch)
        if role == "doctor"
        else actors.make_hospital(client, hospitals.huashan)
    )
    own = DOCTOR_CREDENTIALS if role == "doctor" else HOSPITAL_CREDENTIALS

    body = expect(verify(client, actor, {**own, **foreign}), 422, "field_not_allowed")

    assert body["error"]["details"] == {"fields": list(foreign)}


def test_submit_is_pending_and_cannot_be_repeated(client: Client, hospitals: actors.Hospitals) -> None:
    doctor = actors.make_doctor(client, hospitals.pumch)

    body = expect(submit(client, doctor), 202)

    assert body["status"] == "pending"
    assert body["submitted_at"] is not None
    assert me(client, doctor)["verification"]["status"] == "pending"
    expect(submit(client, doctor), 409, "verification_pending")


def test_credentials_are_stored_encrypted(client: Client, hospitals: actors.Hospitals) -> None:
    doctor = actors.make_doctor(client, hospitals.pumch)

    expect(submit(client, doctor), 202)

    stored = actors.account(doctor.user_id).credentials_cipher
    assert stored is not None
    assert all(value not in stored for value in DOCTOR_CREDENTIALS.values())


# --- the queue -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("own_account")
def test_the_queue_lists_oldest_first_with_credentials(
    client: Client, hospitals: actors.Hospitals, admin: actors.Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a doctor and a hospital that signed up first, and a doctor who signed up last
    first_doctor = actors.make_doctor(client, hospitals.pumch)
    hospital = actors.make_hospital(client, hospitals.huashan)
    last_doctor = actors.make_doctor(client, hospitals.chaoyang, name="Dr Zhao", title="chief")
    start = datetime.now(UTC) - timedelta(hours=3)

    # WHEN the last doctor submits first, then the hospital, then the first doctor
    for minutes, actor in enumerate((last_doctor, hospital, first_doctor)):
        actors.freeze_clock(monkeypatch, start + timedelta(minutes=minutes))
        expect(submit(client, actor), 202)
    monkeypatch.undo()

    # THEN the queue is in submission order
    items = queue(client, admin)["items"]
    assert [item["user_id"] for item in items] == [last_doctor.user_id, hospital.user_id, first_doctor.user_id]
    # AND the admin sees the credentials in full, the phone masked
    doctor_entry, hospital_entry = items[0], items[1]
    assert doctor_entry["credentials"] == DOCTOR_CREDENTIALS
    assert doctor_entry["role"] == "doctor"
    assert (doctor_entry["name"], doctor_entry["title"]) == ("Dr Zhao", "chief")
    assert doctor_entry["hospital"] == {"hospital_id": hospitals.chaoyang, "name": actors.CHAOYANG}
    assert doctor_entry["phone"] == f"{last_doctor.phone[:3]}****{last_doctor.phone[-4:]}"
    assert hospital_entry["credentials"] == HOSPITAL_CREDENTIALS
    assert hospital_entry["contact_name"] == "Wang"
    assert doctor_entry["submitted_at"] < hospital_entry["submitted_at"] < items[2]["submitted_at"]


@pytest.mark.usefixtures("own_account")
def test_the_queue_pages_with_a_cursor(client: Client, hospitals: actors.Hospitals, admin: actors.Actor) -> None:
    applicants = [actors.make_doctor(client, hospitals.pumch) for _ in range(3)]
    for applicant in applicants:
        expect(submit(client, applicant), 202)
    everyone = [item["user_id"] for item in queue(client, admin)["items"]]

    seen: list[str] = []
    query = "?limit=1"
    for _ in range(10):
        page = queue(client, admin, query)
        seen += [item["user_id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        query = f"?limit=1&cursor={page['next_cursor']}"

    assert seen == everyone
    assert sorted(seen) == sorted(applicant.user_id for applicant in applicants)


def test_a_forged_queue_cursor_is_400(client: Client, admin: actors.Actor) -> None:
    expect(call(client, "GET", "/v1/admin/verifications?cursor=bm90LWEtY3Vyc29y", admin), 400, "invalid_cursor")


# --- decisions -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("own_account")
def test_approve_verifies_and_lists_the_doctor(
    client: Client, hospitals: actors.Hospitals, admin: actors.Actor
) -> None:
    # GIVEN a pending doctor, not listed yet
    doctor = actors.make_doctor(client, hospitals.pumch)
    patient = actors.register(client, "patient")
    expect(submit(client, doctor), 202)
    assert listed_under(client, patient, hospitals.pumch) == []

    # WHEN an admin approves
    body = expect(approve(client, admin, doctor.user_id), 200)

    # THEN the decision is answered, the doctor is verified, listed, and out of the queue
    assert (body["user_id"], body["decision"], body["reason"], body["decided_by"]) == (
        doctor.user_id,
        "approved",
        None,
        admin.user_id,
    )
    verification = me(client, doctor)["verification"]
    assert verification["status"] == "verified"
    assert verification["verified_at"] == body["decided_at"]
    assert listed_under(client, patient, hospitals.pumch) == [doctor.user_id]
    assert listed_under(client, patient, hospitals.chaoyang) == []
    assert expect(call(client, "GET", f"/v1/anesthesiologists/{doctor.user_id}", patient), 200)["verified"] is True
    assert queue(client, admin)["items"] == []
    # AND a second approval is refused
    expect(approve(client, admin, doctor.user_id), 409, "not_pending")
    expect(reject(client, admin, doctor.user_id, "late"), 409, "not_pending")
    expect(submit(client, doctor), 409, "already_verified")


@pytest.mark.usefixtures("own_account")
def test_approving_a_hospital_does_not_list_it_as_a_doctor(
    client: Client, hospitals: actors.Hospitals, admin: actors.Actor
) -> None:
    hospital = actors.make_hospital(client, hospitals.huashan, admin=admin)

    assert me(client, hospital)["verification"]["status"] == "verified"
    stored = actors.account(hospital.user_id)
    assert (stored.hospital_key, stored.catalogue_key) == (None, None)
    assert expect(call(client, "GET", "/v1/anesthesiologists", admin), 200)["items"] == []


@pytest.mark.usefixtures("own_account")
def test_reject_shows_the_reason_and_a_resubmission_is_pending(
    client: Client, hospitals: actors.Hospitals, admin: actors.Actor
) -> None:
    # GIVEN a pending doctor
    doctor = actors.make_doctor(client, hospitals.pumch)
    patient = actors.register(client, "patient")
    expect(submit(client, doctor), 202)
    reason = "\u6267\u4e1a\u8bc1\u4e66\u7f16\u7801\u4e0d\u6e05\u6670"  # 执业证书编码不清晰

    # WHEN an admin rejects with a reason
    body = expect(reject(client, admin, doctor.user_id, reason), 200)

    # THEN the applicant sees the reason, and is neither listed nor queued
    assert (body["decision"], body["reason"]) == ("rejected", reason)
    verification = me(client, doctor)["verification"]
    assert (verification["status"], verification["rejection_reason"]) == ("rejected", reason)
    assert listed_under(client, patient, hospitals.pumch) == []
    assert queue(client, admin)["items"] == []
    expect(call(client, "GET", f"/v1/anesthesiologists/{doctor.user_id}", patient), 404, "doctor_not_found")

    # WHEN the doctor submits again
    expect(submit(client, doctor), 202)

    # THEN they are pending, the old reason gone, and back in the queue
    verification = me(client, doctor)["verification"]
    assert (verification["status"], verification["rejection_reason"]) == ("pending", None)
    assert [item["user_id"] for item in queue(client, admin)["items"]] == [doctor.user_id]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"reason": ""},
        {"reason": "x" * 501},
        {"reason": None},
    ],
)
def test_reject_needs_a_reason(
    client: Client, hospitals: actors.Hospitals, admin: actors.Actor, body: dict[str, Any]
) -> None:
    doctor = actors.make_doctor(client, hospitals.pumch)
    expect(submit(client, doctor), 202)

    response = call(client, "POST", f"/v1/admin/verifications/{doctor.user_id}/reject", admin, body)

    assert expect(response, 422, "validation_failed")["error"]["details"].get("field") == "reason"
    assert me(client, doctor)["verification"]["status"] == "pending"
    assert decisions(doctor.user_id) == []


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_deciding_on_an_unknown_account_is_404(client: Client, admin: actors.Actor, decision: str) -> None:
    response = call(client, "POST", f"/v1/admin/verifications/nobody/{decision}", admin, {"reason": "x"})

    expect(response, 404, "account_not_found")


def test_a_patient_is_never_pending(client: Client, admin: actors.Actor) -> None:
    patient = actors.register(client, "patient")

    expect(approve(client, admin, patient.user_id), 409, "not_pending")


def test_every_decision_is_recorded_with_who_and_when(
    client: Client, hospitals: actors.Hospitals, admin: actors.Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a doctor rejected once, then approved by another admin
    other_admin = actors.make_admin(client, name="Second")
    doctor = actors.make_doctor(client, hospitals.pumch)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    actors.freeze_clock(monkeypatch, start)
    expect(submit(client, doctor), 202)
    expect(reject(client, admin, doctor.user_id, "blurry scan"), 200)
    actors.freeze_clock(monkeypatch, start + timedelta(minutes=5))
    expect(submit(client, doctor), 202)
    expect(approve(client, other_admin, doctor.user_id), 200)

    # THEN both decisions are stored beside the account, oldest first
    recorded = [(d.decision, d.reason, d.decided_by, d.decided_at) for d in decisions(doctor.user_id)]
    assert recorded == [
        ("rejected", "blurry scan", admin.user_id, start.isoformat()),
        ("approved", None, other_admin.user_id, (start + timedelta(minutes=5)).isoformat()),
    ]


def test_two_decisions_within_one_second_are_both_recorded(
    client: Client, hospitals: actors.Hospitals, admin: actors.Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    doctor = actors.make_doctor(client, hospitals.pumch)
    start = datetime.now(UTC).replace(microsecond=100_000)
    actors.freeze_clock(monkeypatch, start)
    expect(submit(client, doctor), 202)
    expect(reject(client, admin, doctor.user_id, "blurry scan"), 200)
    actors.freeze_clock(monkeypatch, start + timedelta(milliseconds=500))
    expect(submit(client, doctor), 202)

    expect(approve(client, admin, doctor.user_id), 200)

    assert [d.decision for d in decisions(doctor.user_id)] == ["rejected", "approved"]
