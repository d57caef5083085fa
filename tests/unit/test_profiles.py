"""The personal centre (``GET/PATCH /v1/me``): own views, allowed fields per role, mass assignment, bad input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from tests.unit import actors
from tests.unit.actors import DOCTOR_PROFILE, call, expect, me, patch_me

if TYPE_CHECKING:
    from collections.abc import Iterator

    from chalice.test import Client


# --- the accounts of the tests ---------------------------------------------------------------------
#
# The tests make the people they change, with phones no other test holds, and share one AWS
# account whose hospitals are seeded once. A test that reads a whole list (a hospital's
# doctors) gets an account of its own, seeded alike.


@dataclass(frozen=True)
class World:
    """An AWS account of the module and what is in it."""

    account_id: str
    hospitals: actors.Hospitals


@pytest.fixture(scope="module")
def session() -> Iterator[Client]:
    with actors.moto_session() as client:
        yield client


def _world(client: Client, patch: pytest.MonkeyPatch) -> World:
    """A new account with the hospitals, left open in ``patch``."""
    account_id = actors.open_account(patch)
    return World(account_id, actors.seed_hospitals())


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


# --- own views -----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["patient", "doctor", "hospital"])
def test_owner_sees_own_account_with_full_phone(client: Client, role: str) -> None:
    actor = actors.register(client, role, name="Li" if role != "hospital" else None)

    view = me(client, actor)

    assert view["user_id"] == actor.user_id
    assert view["role"] == role
    assert view["phone"] == actor.phone
    assert "password_hash" not in view and "password" not in view
    if role in ("doctor", "hospital"):
        assert view["verification"]["status"] == "unverified"


def test_admin_sees_own_account(client: Client) -> None:
    admin = actors.make_admin(client, name="Ops")

    view = me(client, admin)

    assert (view["user_id"], view["role"], view["name"], view["phone"]) == (admin.user_id, "admin", "Ops", admin.phone)


def test_patient_sets_name_phone_and_id_number(client: Client) -> None:
    patient = actors.register(client, "patient")
    new_phone = actors.fresh_phone()

    view = patch_me(client, patient, {"name": "Zhang", "phone": f"+86 {new_phone}", "id_number": "11010519491231002x"})

    assert (view["name"], view["phone"], view["id_number"]) == ("Zhang", new_phone, "11010519491231002X")
    assert me(client, patient) == view
    # the ID number may be cleared again
    assert patch_me(client, patient, {"id_number": None})["id_number"] is None


def test_doctor_sets_the_whole_profile(client: Client, hospitals: actors.Hospitals) -> None:
    doctor = actors.register(client, "doctor")

    view = patch_me(client, doctor, {**DOCTOR_PROFILE, "hospital_id": hospitals.pumch})

    assert view["hospital"] == {"hospital_id": hospitals.pumch, "name": actors.PUMCH}
    assert view["title"] == "attending"
    assert view["title_label"] == "\u4e3b\u6cbb\u533b\u5e08"  # 主治医师
    assert view["specialties"] == ["cardiac", "regional"]
    assert (view["invitation_fee"], view["consultation_fee"]) == (300_000, 20_000)
    assert view["introduction"] == DOCTOR_PROFILE["introduction"]
    assert actors.account(doctor.user_id).city == actors.BEIJING


def test_hospital_sets_institution_and_contact(client: Client, hospitals: actors.Hospitals) -> None:
    hospital = actors.register(client, "hospital")
    contact_phone = actors.fresh_phone()

    view = patch_me(
        client, hospital, {"hospital_id": hospitals.huashan, "contact_name": "Wang", "contact_phone": contact_phone}
    )

    assert view["hospital"] == {"hospital_id": hospitals.huashan, "name": actors.HUASHAN}
    assert view["name"] == actors.HUASHAN  # a hospital account is named after its institution
    assert (view["contact_name"], view["contact_phone"]) == ("Wang", contact_phone)


def test_admin_may_rename_only(client: Client) -> None:
    admin = actors.make_admin(client)

    assert patch_me(client, admin, {"name": "Back office"})["name"] == "Back office"
    body = expect(call(client, "PATCH", "/v1/me", admin, {"phone": actors.fresh_phone()}), 422, "field_not_allowed")
    assert body["error"]["details"]["fields"] == ["phone"]


@pytest.mark.parametrize(
    ("role", "changes", "refused"),
    [
        ("patient", {"invitation_fee": 50_000}, ["invitation_fee"]),
        ("patient", {"title": "chief", "name": "Li"}, ["title"]),
        ("doctor", {"id_number": "11010519491231002X"}, ["id_number"]),
        ("doctor", {"contact_name": "Wang"}, ["contact_name"]),
        ("hospital", {"name": "Renamed", "specialties": ["pain"]}, ["name", "specialties"]),
    ],
)
def test_a_field_of_another_role_is_refused(
    client: Client, role: str, changes: dict[str, Any], refused: list[str]
) -> None:
    actor = actors.register(client, role)
    before = me(client, actor)

    body = expect(call(client, "PATCH", "/v1/me", actor, changes), 422, "field_not_allowed")

    assert body["error"]["details"]["fields"] == refused
    assert me(client, actor) == before


# --- mass assignment -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("role", "admin"),
        ("verified", True),
        ("verification_status", "verified"),
        ("star_level", 5),
        ("balance", 1_000_000),
        ("user_id", "someone-else"),
        ("rating_average", 5.0),
    ],
)
def test_mass_assignment_is_refused_and_changes_nothing(
    client: Client, hospitals: actors.Hospitals, field: str, value: Any
) -> None:
    # GIVEN a doctor with a complete profile
    doctor = actors.make_doctor(client, hospitals.pumch)
    before = me(client, doctor)
    revision = actors.account(doctor.user_id).revision

    # WHEN they send a field no one may set, alongside one they may
    response = call(client, "PATCH", "/v1/me", doctor, {"name": "Dr Wang", field: value})

    # THEN the whole update is refused, naming the field, and the account is as it was
    body = expect(response, 422, "validation_failed")
    assert body["error"]["details"]["field"] == field
    assert me(client, doctor) == before
    assert actors.account(doctor.user_id).revision == revision


# --- bad values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"invitation_fee": 9_999}, "invitation_fee"),
        ({"invitation_fee": 2_000_001}, "invitation_fee"),
        ({"consultation_fee": 999}, "consultation_fee"),
        ({"consultation_fee": 200_001}, "consultation_fee"),
        ({"consultation_fee": -1}, "consultation_fee"),
        ({"invitation_fee": 10_000.5}, "invitation_fee"),
        ({"invitation_fee": "300000"}, "invitation_fee"),
        ({"title": "professor"}, "title"),
        ({"specialties": ["cardiac", "dentistry"]}, "specialties[1]"),
        ({"specialties": ["pain", "pain"]}, "specialties"),
        ({"introduction": "x" * 1001}, "introduction"),
        ({"name": "n" * 41}, "name"),
        ({"name": ""}, "name"),
        ({"hospital_id": "h-000000000000"}, "hospital_id"),
        ({"phone": "12345"}, "phone"),
        ({"phone": "+1 415 555 2671"}, "phone"),
    ],
)
def test_bad_doctor_values_are_422_naming_the_field(
    client: Client, hospitals: actors.Hospitals, changes: dict[str, Any], field: str
) -> None:
    doctor = actors.make_doctor(client, hospitals.pumch)
    before = me(client, doctor)

    body = expect(call(client, "PATCH", "/v1/me", doctor, changes), 422, "validation_failed")

    assert body["error"]["details"]["field"] == field
    assert me(client, doctor) == before


def test_fee_bounds_are_in_the_details(client: Client) -> None:
    doctor = actors.register(client, "doctor")

    body = expect(call(client, "PATCH", "/v1/me", doctor, {"invitation_fee": 100}), 422, "validation_failed")

    assert body["error"]["details"] == {"field": "invitation_fee", "minimum": 10_000, "maximum": 2_000_000}


def test_fees_at_the_bounds_are_accepted(client: Client) -> None:
    doctor = actors.register(client, "doctor")

    low = patch_me(client, doctor, {"invitation_fee": 10_000, "consultation_fee": 1_000})
    high = patch_me(client, doctor, {"invitation_fee": 2_000_000, "consultation_fee": 200_000})

    assert (low["invitation_fee"], low["consultation_fee"]) == (10_000, 1_000)
    assert (high["invitation_fee"], high["consultation_fee"]) == (2_000_000, 200_000)


def test_introduction_of_1000_characters_is_accepted(client: Client) -> None:
    doctor = actors.register(client, "doctor")

    assert patch_me(client, doctor, {"introduction": "\u9ebb" * 1000})["introduction"] == "\u9ebb" * 1000


def test_invalid_patient_id_number_is_422(client: Client) -> None:
    patient = actors.register(client, "patient")

    body = expect(call(client, "PATCH", "/v1/me", patient, {"id_number": "110105194912310021"}), 422)

    assert body["error"]["details"]["field"] == "id_number"


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        ('{"name": "Li"', 400, "invalid_json"),
        ("not json at all", 400, "invalid_json"),
        ('[{"name": "Li"}]', 422, "validation_failed"),
        ('"Li"', 422, "validation_failed"),
        ("{}", 422, "validation_failed"),
    ],
)
def test_malformed_or_empty_bodies(client: Client, raw: str, status: int, code: str) -> None:
    patient = actors.register(client, "patient", name="Li")
    before = me(client, patient)

    response = call(client, "PATCH", "/v1/me", patient, raw=raw)

    body = expect(response, status, code)
    assert set(body["error"]) == {"code", "message", "message_zh", "details", "request_id"}
    assert me(client, patient) == before


def test_missing_body_is_400(client: Client) -> None:
    patient = actors.register(client, "patient")

    # an empty body announced as JSON is not JSON
    expect(call(client, "PATCH", "/v1/me", patient), 400, "invalid_json")
    # no body and no content type: the body is missing
    expect(client.http.request("PATCH", "/v1/me", headers=patient.headers, body=b""), 400, "body_required")


# --- back to review ------------------------------------------------------------------------------


def _listed(client: Client, viewer: actors.Actor, hospital_id: str) -> list[str]:
    body = expect(call(client, "GET", f"/v1/hospitals/{hospital_id}/anesthesiologists", viewer), 200)
    return [item["doctor_id"] for item in body["items"]]


def _catalogue(client: Client, admin: actors.Actor) -> list[str]:
    return [item["doctor_id"] for item in expect(call(client, "GET", "/v1/anesthesiologists", admin), 200)["items"]]


def _queue(client: Client, admin: actors.Actor) -> list[str]:
    return [item["user_id"] for item in expect(call(client, "GET", "/v1/admin/verifications", admin), 200)["items"]]


@pytest.mark.parametrize("field", ["title", "hospital_id"])
def test_verified_doctor_changing_a_reviewed_field_goes_back_to_review(
    client: Client, hospitals: actors.Hospitals, field: str
) -> None:
    # GIVEN a verified doctor, listed under their hospital and in the catalogue
    admin = actors.make_admin(client)
    doctor = actors.make_verified_doctor(client, admin, hospitals.pumch)
    patient = actors.register(client, "patient")
    assert doctor.user_id in _listed(client, patient, hospitals.pumch)
    assert doctor.user_id in _catalogue(client, admin)
    changes = {"title": "chief"} if field == "title" else {"hospital_id": hospitals.chaoyang}

    # WHEN they change their title (or hospital)
    view = patch_me(client, doctor, changes)

    # THEN they are pending again, unlisted everywhere, and in the admin's queue
    assert view["verification"]["status"] == "pending"
    assert view["verification"]["verified_at"] is None
    assert doctor.user_id not in _listed(client, patient, hospitals.pumch)
    assert doctor.user_id not in _listed(client, patient, hospitals.chaoyang)
    assert doctor.user_id not in _catalogue(client, admin)
    assert doctor.user_id in _queue(client, admin)
    expect(call(client, "GET", f"/v1/anesthesiologists/{doctor.user_id}", patient), 404, "doctor_not_found")


@pytest.mark.usefixtures("own_account")
def test_verified_doctor_keeping_title_and_hospital_stays_verified(client: Client, hospitals: actors.Hospitals) -> None:
    # GIVEN a verified doctor
    admin = actors.make_admin(client)
    doctor = actors.make_verified_doctor(client, admin, hospitals.pumch)
    patient = actors.register(client, "patient")

    # WHEN they change their fee, and send their unchanged title and hospital
    view = patch_me(
        client, doctor, {"invitation_fee": 400_000, "title": DOCTOR_PROFILE["title"], "hospital_id": hospitals.pumch}
    )

    # THEN they stay verified and listed, with the new fee
    assert view["verification"]["status"] == "verified"
    listed = expect(call(client, "GET", f"/v1/hospitals/{hospitals.pumch}/anesthesiologists", patient), 200)["items"]
    assert [(item["doctor_id"], item["invitation_fee"]) for item in listed] == [(doctor.user_id, 400_000)]
    assert doctor.user_id in _catalogue(client, admin)
    assert doctor.user_id not in _queue(client, admin)


def test_verified_hospital_changing_institution_goes_back_to_review(
    client: Client, hospitals: actors.Hospitals
) -> None:
    # GIVEN a verified hospital account
    admin = actors.make_admin(client)
    hospital = actors.make_hospital(client, hospitals.pumch, admin=admin)

    # WHEN it changes its contact, it stays verified
    assert patch_me(client, hospital, {"contact_name": "Zhou"})["verification"]["status"] == "verified"

    # WHEN it changes the institution it represents
    view = patch_me(client, hospital, {"hospital_id": hospitals.huashan})

    # THEN it is pending again and in the queue, named after the new institution
    assert view["verification"]["status"] == "pending"
    assert view["name"] == actors.HUASHAN
    assert hospital.user_id in _queue(client, admin)


# --- the phone is the sign-in identifier -----------------------------------------------------------


def test_a_changed_phone_is_the_one_that_signs_in(client: Client) -> None:
    patient = actors.register(client, "patient")
    new_phone = actors.fresh_phone()

    patch_me(client, patient, {"phone": new_phone})

    assert actors.login(client, new_phone).user_id == patient.user_id
    expect(call(client, "POST", "/v1/auth/login", body={"phone": patient.phone, "password": actors.PASSWORD}), 401)


def test_another_accounts_phone_cannot_be_taken(client: Client) -> None:
    patient = actors.register(client, "patient")
    other = actors.register(client, "doctor")
    before = me(client, patient)

    response = call(client, "PATCH", "/v1/me", patient, {"phone": other.phone})

    expect(response, 409, "phone_taken")
    assert me(client, patient) == before


def test_the_old_phone_is_free_for_someone_else(client: Client) -> None:
    patient = actors.register(client, "patient")
    patch_me(client, patient, {"phone": actors.fresh_phone()})

    newcomer = actors.register(client, "doctor", phone=patient.phone)

    assert actors.login(client, patient.phone).user_id == newcomer.user_id


def test_sending_the_own_phone_again_keeps_the_sign_in(client: Client) -> None:
    patient = actors.register(client, "patient")

    assert patch_me(client, patient, {"phone": f"+86 {patient.phone}"})["phone"] == patient.phone

    assert actors.login(client, patient.phone).user_id == patient.user_id
