"""VIP memberships by contract, and discovery: a hospital's doctors, the catalogue, the storefront."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from chalicelib.clock import shanghai_date, start_of_shanghai_day
from chalicelib.models.users import MembershipChange, UsersTable
from tests.unit import actors
from tests.unit.actors import call, expect, set_membership

if TYPE_CHECKING:
    from collections.abc import Iterator

    from chalice.test import Client


BEIJING_CITY = "\u5317\u4eac\u5e02"  # 北京市


def today() -> Any:
    return shanghai_date(datetime.now(UTC))


# --- the accounts of the tests ---------------------------------------------------------------------
#
# Most tests make the people they change and share one AWS account, seeded once. A test of a
# whole list (every doctor of the catalogue, of a hospital) gets an account of its own, or
# the module's account of the ``ranked`` doctors when it only reads them.


@dataclass(frozen=True)
class World:
    """An AWS account of the module and what is in it."""

    account_id: str
    hospitals: actors.Hospitals
    admin: actors.Actor
    ranked: dict[str, actors.Actor] | None = None


@pytest.fixture(scope="module")
def session() -> Iterator[Client]:
    with actors.moto_session() as client:
        yield client


def _world(client: Client, patch: pytest.MonkeyPatch, *, ranked: bool = False) -> World:
    """A new account with the hospitals and an admin (and the ``ranked`` doctors), left open in ``patch``."""
    account_id = actors.open_account(patch)
    hospitals = actors.seed_hospitals()
    admin = actors.make_admin(client)
    return World(account_id, hospitals, admin, _ranked(client, hospitals, admin) if ranked else None)


@pytest.fixture(scope="module")
def shared(session: Client) -> World:
    with pytest.MonkeyPatch.context() as patch:
        return _world(session, patch)


@pytest.fixture(scope="module")
def shared_ranked(session: Client) -> World:
    with pytest.MonkeyPatch.context() as patch:
        return _world(session, patch, ranked=True)


@pytest.fixture
def own_account() -> None:
    """Asked for by a test that reads a whole list or changes what others read: it gets a world of its own."""


@pytest.fixture
def world(request: pytest.FixtureRequest, session: Client) -> Iterator[World]:
    """The world of the test: its own (``own_account``), the ranked doctors' (``ranked``), or the module's."""
    wants_ranked = "ranked" in request.fixturenames
    with pytest.MonkeyPatch.context() as patch:
        if "own_account" in request.fixturenames:
            yield _world(session, patch, ranked=wants_ranked)
            return
        world: World = request.getfixturevalue("shared_ranked" if wants_ranked else "shared")
        actors.open_account(patch, world.account_id)
        yield world


@pytest.fixture
def client(session: Client, world: World) -> Client:
    return session


@pytest.fixture
def hospitals(world: World) -> actors.Hospitals:
    return world.hospitals


@pytest.fixture
def admin(world: World) -> actors.Actor:
    return world.admin


def catalogue(client: Client, viewer: actors.Actor, query: str = "") -> Any:
    return call(client, "GET", f"/v1/anesthesiologists{query}", viewer)


def ids(body: dict[str, Any]) -> list[str]:
    return [item["doctor_id"] for item in body["items"]]


def walk(client: Client, viewer: actors.Actor, path: str, query: str = "") -> list[str]:
    """Every doctor of a list, one per page, following the cursors."""
    seen: list[str] = []
    separator = "&" if query else ""
    cursor_query = ""
    for _ in range(50):
        body = expect(call(client, "GET", f"{path}?limit=1{separator}{query}{cursor_query}", viewer), 200)
        assert len(body["items"]) <= 1
        seen += ids(body)
        if body["next_cursor"] is None:
            return seen
        cursor_query = f"&cursor={body['next_cursor']}"
    raise AssertionError("the cursors never ended")


# --- memberships ---------------------------------------------------------------------------------


def test_a_membership_opens_the_catalogue_until_it_is_ended(
    client: Client, hospitals: actors.Hospitals, admin: actors.Actor
) -> None:
    # GIVEN a hospital without membership
    hospital = actors.make_hospital(client, hospitals.pumch, admin=admin)
    body = expect(catalogue(client, hospital), 403, "membership_required")
    assert body["error"]["message_zh"]
    assert expect(call(client, "GET", "/v1/me/membership", hospital), 200) == {
        "hospital_user_id": hospital.user_id,
        "active": False,
        "starts_at": None,
        "ends_at": None,
        "source": None,
        "plans": [{"plan_id": "year", "price_fen": 1_980_000, "days": 365}],
    }

    # WHEN an admin grants one until a date 30 days ahead
    ends_on = today() + timedelta(days=30)
    granted = expect(set_membership(client, admin, hospital.user_id, active=True, ends_on=ends_on), 200)

    # THEN it is active until the end of that day in Shanghai, and the hospital sees every doctor
    assert granted["active"] is True
    assert granted["source"] == "contract"
    assert granted["ends_at"] == start_of_shanghai_day(ends_on + timedelta(days=1)).isoformat()
    assert expect(call(client, "GET", "/v1/me/membership", hospital), 200) == granted
    expect(catalogue(client, hospital), 200)

    # WHEN the admin ends it
    ended = expect(set_membership(client, admin, hospital.user_id, active=False), 200)

    # THEN the catalogue is closed again
    assert ended["active"] is False
    assert expect(call(client, "GET", "/v1/me/membership", hospital), 200)["active"] is False
    expect(catalogue(client, hospital), 403, "membership_required")
    # AND both changes are kept
    history = [
        item
        for item in UsersTable.query(f"USER#{hospital.user_id}", UsersTable.sk.startswith("MEMBERSHIP#"))
        if isinstance(item, MembershipChange)
    ]
    assert [(change.changed_by, change.reference) for change in history] == [(admin.user_id, "contract-2026-001")] * 2


def test_a_membership_until_today_is_active(client: Client, hospitals: actors.Hospitals, admin: actors.Actor) -> None:
    hospital = actors.make_hospital(client, hospitals.pumch)

    assert expect(set_membership(client, admin, hospital.user_id, active=True, ends_on=today()), 200)["active"]
    expect(catalogue(client, hospital), 200)


def test_extending_a_membership_keeps_its_start(
    client: Client, hospitals: actors.Hospitals, admin: actors.Actor
) -> None:
    hospital = actors.make_hospital(client, hospitals.pumch)
    first = expect(
        set_membership(client, admin, hospital.user_id, active=True, ends_on=today() + timedelta(days=5)), 200
    )

    later = expect(
        set_membership(client, admin, hospital.user_id, active=True, ends_on=today() + timedelta(days=60)), 200
    )

    assert later["starts_at"] == first["starts_at"]
    assert later["ends_at"] > first["ends_at"]


@pytest.mark.parametrize(
    "body",
    [
        {"active": True, "reference": "c-1", "ends_on": "YESTERDAY"},
        {"active": True, "reference": "c-1"},
        {"active": True, "reference": "c-1", "ends_on": "2026-02-30"},
        {"active": "yes", "reference": "c-1", "ends_on": "TOMORROW"},
        {"active": True, "reference": "", "ends_on": "TOMORROW"},
        {"active": True, "reference": "c-1", "ends_on": "TOMORROW", "source": "payment"},
    ],
    ids=["past", "no-end", "no-such-date", "active-not-bool", "empty-reference", "unknown-field"],
)
def test_bad_membership_contracts_are_422(
    client: Client, hospitals: actors.Hospitals, admin: actors.Actor, body: dict[str, Any]
) -> None:
    hospital = actors.make_hospital(client, hospitals.pumch)
    dates = {"YESTERDAY": today() - timedelta(days=1), "TOMORROW": today() + timedelta(days=1)}
    if body.get("ends_on") in dates:
        body = {**body, "ends_on": dates[body["ends_on"]].isoformat()}

    response = call(client, "PUT", f"/v1/admin/memberships/{hospital.user_id}", admin, body)

    expect(response, 422, "validation_failed")
    assert expect(call(client, "GET", "/v1/me/membership", hospital), 200)["active"] is False


def test_a_past_end_names_the_field(client: Client, hospitals: actors.Hospitals, admin: actors.Actor) -> None:
    hospital = actors.make_hospital(client, hospitals.pumch)

    response = set_membership(client, admin, hospital.user_id, active=True, ends_on=today() - timedelta(days=1))

    assert expect(response, 422, "validation_failed")["error"]["details"] == {"field": "ends_on"}


@pytest.mark.parametrize("target", ["patient", "doctor", "admin", "nobody"])
def test_only_hospital_accounts_have_memberships(client: Client, admin: actors.Actor, target: str) -> None:
    user_id = {
        "patient": lambda: actors.register(client, "patient").user_id,
        "doctor": lambda: actors.register(client, "doctor").user_id,
        "admin": lambda: admin.user_id,
        "nobody": lambda: "no-such-user",
    }[target]()

    response = set_membership(client, admin, user_id, active=True, ends_on=today() + timedelta(days=3))

    expect(response, 404, "hospital_account_not_found")


# --- discovery order and pages -------------------------------------------------------------------


def _ranked(client: Client, hospitals: actors.Hospitals, admin: actors.Actor) -> dict[str, actors.Actor]:
    """Four verified doctors at PUMCH with reputations, one at Chaoyang, one at Huashan, one unverified."""
    doctors = {
        "good": actors.make_verified_doctor(client, admin, hospitals.pumch, title="attending"),
        "better": actors.make_verified_doctor(client, admin, hospitals.pumch, title="chief", specialties=["pain"]),
        "best": actors.make_verified_doctor(client, admin, hospitals.pumch, title="attending", specialties=["neuro"]),
        "new": actors.make_verified_doctor(client, admin, hospitals.pumch, title="resident"),
        "chaoyang": actors.make_verified_doctor(client, admin, hospitals.chaoyang, title="chief"),
        "huashan": actors.make_verified_doctor(client, admin, hospitals.huashan, specialties=["paediatric", "pain"]),
        "unverified": actors.make_doctor(client, hospitals.pumch),
    }
    actors.set_reputation(doctors["good"].user_id, 4.5, 10, 42)
    actors.set_reputation(doctors["better"].user_id, 4.5, 10, 49)
    actors.set_reputation(doctors["best"].user_id, 5.0, 10, 30)
    actors.set_reputation(doctors["chaoyang"].user_id, 3.0, 10, 50)
    actors.set_reputation(doctors["huashan"].user_id, 4.0, 10, 40)
    return doctors


@pytest.fixture
def ranked(world: World) -> dict[str, actors.Actor]:
    """The ranked doctors of ``_ranked``: built once for the tests that only read them."""
    assert world.ranked is not None
    return world.ranked


def _ids(doctors: dict[str, actors.Actor], *names: str) -> list[str]:
    return [doctors[name].user_id for name in names]


def test_a_hospitals_doctors_by_star_level_then_rating(
    client: Client, hospitals: actors.Hospitals, ranked: dict[str, actors.Actor]
) -> None:
    patient = actors.register(client, "patient")

    body = expect(call(client, "GET", f"/v1/hospitals/{hospitals.pumch}/anesthesiologists", patient), 200)

    assert ids(body) == _ids(ranked, "best", "better", "good", "new")
    assert body["hospital"]["hospital_id"] == hospitals.pumch
    assert body["next_cursor"] is None
    first = body["items"][0]
    assert (first["star_level"], first["rating_average"], first["city"]) == (5.0, 3.0, actors.BEIJING)


def test_the_catalogue_by_star_level_then_rating(
    client: Client, admin: actors.Actor, ranked: dict[str, actors.Actor]
) -> None:
    body = expect(catalogue(client, admin), 200)

    assert ids(body) == _ids(ranked, "best", "better", "good", "huashan", "chaoyang", "new")


def test_pages_of_one_walk_every_doctor_once(
    client: Client, hospitals: actors.Hospitals, admin: actors.Actor, ranked: dict[str, actors.Actor]
) -> None:
    vip = actors.make_vip_hospital(client, admin, hospitals.huashan)

    by_hospital = walk(client, vip, f"/v1/hospitals/{hospitals.pumch}/anesthesiologists")
    everyone = walk(client, vip, "/v1/anesthesiologists")

    assert by_hospital == _ids(ranked, "best", "better", "good", "new")
    assert everyone == _ids(ranked, "best", "better", "good", "huashan", "chaoyang", "new")


FILTERS: list[tuple[str, list[str]]] = [
    (f"city={quote(actors.BEIJING)}", ["best", "better", "good", "chaoyang", "new"]),
    (f"city={quote(BEIJING_CITY)}", ["best", "better", "good", "chaoyang", "new"]),
    (f"city={quote(actors.SHANGHAI)}", ["huashan"]),
    ("title=chief", ["better", "chaoyang"]),
    ("specialty=pain", ["better", "huashan"]),
    (f"specialty=pain&city={quote(actors.SHANGHAI)}", ["huashan"]),
    (f"title=resident&city={quote(actors.SHANGHAI)}", []),
]
"""Catalogue queries and the doctors of ``ranked`` they list, best first (one world for all: it is slow to build)."""


def test_catalogue_filters(client: Client, admin: actors.Actor, ranked: dict[str, actors.Actor]) -> None:
    for query, expected in FILTERS:
        listed = ids(expect(catalogue(client, admin, f"?{query}"), 200))
        assert listed == _ids(ranked, *expected), query
        # the same list, one page at a time
        assert walk(client, admin, "/v1/anesthesiologists", query) == _ids(ranked, *expected), query


@pytest.mark.usefixtures("own_account")
def test_catalogue_filter_by_accepting_date(
    client: Client, admin: actors.Actor, ranked: dict[str, actors.Actor]
) -> None:
    tomorrow = (today() + timedelta(days=1)).isoformat()
    later = (today() + timedelta(days=2)).isoformat()
    for name, open_on in (("good", [tomorrow]), ("huashan", [tomorrow, later]), ("new", [later])):
        days = [{"date": d, "working": True, "invitation_capacity": 1} for d in open_on]
        expect(call(client, "PUT", "/v1/me/calendar", ranked[name], {"days": days}), 200)

    assert ids(expect(catalogue(client, admin, f"?date={tomorrow}"), 200)) == _ids(ranked, "good", "huashan")
    assert ids(expect(catalogue(client, admin, f"?date={later}&specialty=pain"), 200)) == _ids(ranked, "huashan")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("title=professor", "title"),
        ("specialty=dentistry", "specialty"),
        ("date=tomorrow", "date"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("city=" + "x" * 21, "city"),
    ],
)
def test_bad_catalogue_queries_are_422(client: Client, admin: actors.Actor, query: str, field: str) -> None:
    body = expect(catalogue(client, admin, f"?{query}"), 422, "validation_failed")

    assert body["error"]["details"]["field"] == field


def test_a_cursor_works_only_for_its_own_list(
    client: Client, hospitals: actors.Hospitals, admin: actors.Actor, ranked: dict[str, actors.Actor]
) -> None:
    patient = actors.register(client, "patient")
    pumch_page = expect(call(client, "GET", f"/v1/hospitals/{hospitals.pumch}/anesthesiologists?limit=1", patient), 200)
    cursor = pumch_page["next_cursor"]
    assert cursor is not None

    # another hospital's list refuses it
    other = call(client, "GET", f"/v1/hospitals/{hospitals.chaoyang}/anesthesiologists?cursor={cursor}", patient)
    expect(other, 400, "invalid_cursor")
    # so do the catalogue, and the catalogue with other filters than the cursor's
    expect(catalogue(client, admin, f"?cursor={cursor}"), 400, "invalid_cursor")
    city_cursor = expect(catalogue(client, admin, f"?limit=1&city={quote(actors.BEIJING)}"), 200)["next_cursor"]
    expect(catalogue(client, admin, f"?title=chief&cursor={city_cursor}"), 400, "invalid_cursor")
    # an edited cursor is refused
    tampered = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    expect(
        call(client, "GET", f"/v1/hospitals/{hospitals.pumch}/anesthesiologists?cursor={tampered}", patient),
        400,
        "invalid_cursor",
    )
    # and the cursor goes on where it was issued
    rest = call(client, "GET", f"/v1/hospitals/{hospitals.pumch}/anesthesiologists?cursor={cursor}", patient)
    assert ids(expect(rest, 200)) == _ids(ranked, "better", "good", "new")


def test_an_unknown_hospital_is_404(client: Client) -> None:
    patient = actors.register(client, "patient")

    response = call(client, "GET", "/v1/hospitals/h-000000000000/anesthesiologists", patient)

    expect(response, 404, "hospital_not_found")


@pytest.mark.usefixtures("own_account")
def test_a_hospital_without_doctors_lists_none(client: Client, hospitals: actors.Hospitals) -> None:
    patient = actors.register(client, "patient")

    body = expect(call(client, "GET", f"/v1/hospitals/{hospitals.huashan}/anesthesiologists", patient), 200)

    assert (body["items"], body["next_cursor"]) == ([], None)


# --- the storefront ------------------------------------------------------------------------------


def storefront(client: Client, viewer: actors.Actor, doctor_id: str) -> Any:
    return call(client, "GET", f"/v1/anesthesiologists/{doctor_id}", viewer)


def test_the_storefront_of_a_verified_doctor(client: Client, hospitals: actors.Hospitals, admin: actors.Actor) -> None:
    doctor = actors.make_verified_doctor(client, admin, hospitals.pumch)
    actors.set_reputation(doctor.user_id, 4.5, 10, 48)
    patient = actors.register(client, "patient")

    body = expect(storefront(client, patient, doctor.user_id), 200)

    assert body["doctor_id"] == doctor.user_id
    assert (body["star_level"], body["rating_average"], body["rating_count"], body["anesthesia_count"]) == (
        4.5,
        4.8,
        10,
        0,
    )
    assert (body["invitation_fee"], body["consultation_fee"]) == (300_000, 20_000)
    assert (body["title"], body["title_label"]) == ("attending", "\u4e3b\u6cbb\u533b\u5e08")
    assert body["hospital"] == {"hospital_id": hospitals.pumch, "name": actors.PUMCH}
    assert body["introduction"] == actors.DOCTOR_PROFILE["introduction"]
    assert (body["verified"], body["accepting_days"]) == (True, [])


def test_an_unverified_storefront_is_seen_only_by_its_doctor_and_admins(
    client: Client, hospitals: actors.Hospitals, admin: actors.Actor
) -> None:
    doctor = actors.make_doctor(client, hospitals.pumch)
    others = [
        actors.register(client, "patient"),
        actors.register(client, "doctor"),
        actors.make_vip_hospital(client, admin, hospitals.chaoyang),
    ]

    for viewer in others:
        expect(storefront(client, viewer, doctor.user_id), 404, "doctor_not_found")
    assert expect(storefront(client, doctor, doctor.user_id), 200)["verified"] is False
    assert expect(storefront(client, admin, doctor.user_id), 200)["verified"] is False


@pytest.mark.parametrize("target", ["patient", "hospital", "admin", "nobody"])
def test_only_doctors_have_a_storefront(client: Client, admin: actors.Actor, target: str) -> None:
    user_id = {
        "patient": lambda: actors.register(client, "patient").user_id,
        "hospital": lambda: actors.register(client, "hospital").user_id,
        "admin": lambda: admin.user_id,
        "nobody": lambda: "no-such-doctor",
    }[target]()

    expect(storefront(client, admin, user_id), 404, "doctor_not_found")


@pytest.mark.usefixtures("own_account")
def test_no_list_or_storefront_shows_a_phone(client: Client, hospitals: actors.Hospitals, admin: actors.Actor) -> None:
    # GIVEN a verified doctor, with a calendar
    doctor = actors.make_verified_doctor(client, admin, hospitals.pumch)
    tomorrow = (today() + timedelta(days=1)).isoformat()
    days = {"days": [{"date": tomorrow, "working": True, "invitation_capacity": 1}]}
    expect(call(client, "PUT", "/v1/me/calendar", doctor, days), 200)
    patient = actors.register(client, "patient")
    vip = actors.make_vip_hospital(client, admin, hospitals.chaoyang)
    masked = f"{doctor.phone[:3]}****{doctor.phone[-4:]}"

    # WHEN others read the storefront and the lists
    responses = [
        storefront(client, patient, doctor.user_id),
        storefront(client, vip, doctor.user_id),
        storefront(client, admin, doctor.user_id),
        call(client, "GET", f"/v1/hospitals/{hospitals.pumch}/anesthesiologists", patient),
        catalogue(client, vip),
        catalogue(client, admin),
    ]

    # THEN none of them holds the phone, in full or masked, nor a phone field
    for response in responses:
        assert response.status_code == 200
        text = response.body.decode()
        assert doctor.user_id in text
        assert doctor.phone not in text
        assert doctor.phone[-8:] not in text
        assert masked not in text
        assert "phone" not in text
