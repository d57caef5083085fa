"""A doctor's calendar (``GET/PUT /v1/me/calendar``): days, ranges, the 90-day horizon, Asia/Shanghai dates.

The handlers' clock is frozen at 00:30 in Shanghai on Monday 1 April 2030, when it is
still 31 March in UTC: "today" must be the Shanghai date.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.models.invitations import CalendarDay
from tests.unit import actors
from tests.unit.actors import call, expect

if TYPE_CHECKING:
    from collections.abc import Iterator

    from chalice.test import Client

FROZEN = datetime(2030, 3, 31, 16, 30, tzinfo=UTC)  # 2030-04-01 00:30 in Shanghai
TODAY = date(2030, 4, 1)  # a Monday
UTC_DATE = date(2030, 3, 31)


def day(offset: int) -> str:
    return (TODAY + timedelta(days=offset)).isoformat()


def setting(offset: int, invitations: int = 2, consultations: int = 3, *, working: bool = True) -> dict[str, Any]:
    return {
        "date": day(offset),
        "working": working,
        "invitation_capacity": invitations,
        "consultation_capacity": consultations,
    }


def put(client: Client, doctor: actors.Actor, body: dict[str, Any]) -> Any:
    return call(client, "PUT", "/v1/me/calendar", doctor, body)


def dates_of(body: dict[str, Any]) -> list[str]:
    return [entry["date"] for entry in body["days"]]


# --- the accounts of the tests ---------------------------------------------------------------------
#
# Each test gets a verified doctor of its own; the hospitals and the other people are made once,
# in an AWS account of the module. A test that reads a whole list gets an account of its own.


@pytest.fixture(scope="module")
def session() -> Iterator[Client]:
    with actors.moto_session() as client:
        yield client


def _people(client: Client) -> dict[str, Any]:
    """The hospitals, an admin, a patient and a hospital account, signed in: read by the tests, changed by none."""
    hospitals = actors.seed_hospitals()
    return {
        "hospitals": hospitals,
        "admin": actors.make_admin(client),
        "patient": actors.register(client, "patient"),
        "hospital": actors.register(client, "hospital"),
    }


@pytest.fixture(scope="module")
def shared(session: Client) -> tuple[str, dict[str, Any]]:
    """The AWS account of the module and its people, made once."""
    with pytest.MonkeyPatch.context() as patch:
        return actors.open_account(patch), _people(session)


@pytest.fixture
def own_account() -> None:
    """Asked for by a test that reads a whole list (a hospital's doctors, the catalogue): an account of its own."""


@pytest.fixture
def people(
    request: pytest.FixtureRequest, session: Client, shared: tuple[str, dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """The people of the test's account: the module's, or a new one's (``own_account``)."""
    with pytest.MonkeyPatch.context() as patch:
        if "own_account" in request.fixturenames:
            actors.open_account(patch)
            yield _people(session)
        else:
            actors.open_account(patch, shared[0])
            yield shared[1]


@pytest.fixture
def client(session: Client, people: dict[str, Any]) -> Client:
    return session


@pytest.fixture
def world(client: Client, people: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A verified doctor of the test's own, a patient, a hospital and an admin, signed in; then the clock is frozen."""
    world = {**people, "doctor": actors.make_verified_doctor(client, people["admin"], people["hospitals"].pumch)}
    actors.freeze_clock(monkeypatch, FROZEN)
    return world


@pytest.fixture
def doctor(world: dict[str, Any]) -> actors.Actor:
    return world["doctor"]


def test_put_days_then_read_them_back(client: Client, doctor: actors.Actor) -> None:
    # WHEN the doctor sets today and the day after tomorrow
    body = expect(put(client, doctor, {"days": [setting(2, 1, 0), setting(0, 2, 3)]}), 200)

    # THEN the answer covers the days written, in date order
    assert (body["from"], body["to"]) == (day(0), day(2))
    assert body["days"] == [
        {
            "date": day(0),
            "working": True,
            "invitation_capacity": 2,
            "consultation_capacity": 3,
            "invitations_booked": 0,
            "consultations_booked": 0,
        },
        {
            "date": day(2),
            "working": True,
            "invitation_capacity": 1,
            "consultation_capacity": 0,
            "invitations_booked": 0,
            "consultations_booked": 0,
        },
    ]
    # AND the default window is today to 90 days ahead
    calendar = expect(call(client, "GET", "/v1/me/calendar", doctor), 200)
    assert (calendar["from"], calendar["to"]) == (day(0), day(90))
    assert calendar["days"] == body["days"]


def test_today_is_the_shanghai_date(client: Client, doctor: actors.Actor) -> None:
    # GIVEN it is 00:30 in Shanghai, 16:30 the day before in UTC
    # WHEN the doctor sets the UTC date
    response = put(client, doctor, {"days": [{**setting(0), "date": UTC_DATE.isoformat()}]})

    # THEN it is in the past
    body = expect(response, 422, "validation_failed")
    assert body["error"]["details"] == {"field": "days[0].date", "reason": "past"}
    # AND the Shanghai date is today, and may be set
    assert dates_of(expect(put(client, doctor, {"days": [setting(0)]}), 200)) == [day(0)]


def test_ranges_with_a_weekday_filter(client: Client, doctor: actors.Actor) -> None:
    # WHEN the doctor works Mondays, Wednesdays and Fridays for two weeks (today is a Monday)
    body = {
        "ranges": [{"from": day(0), "to": day(13), "working": True, "invitation_capacity": 1, "weekdays": [1, 3, 5]}]
    }

    written = expect(put(client, doctor, body), 200)

    # THEN exactly those six days are set
    expected = [day(offset) for offset in (0, 2, 4, 7, 9, 11)]
    assert dates_of(written) == expected
    assert all(entry["invitation_capacity"] == 1 and entry["consultation_capacity"] == 0 for entry in written["days"])
    assert dates_of(expect(call(client, "GET", "/v1/me/calendar", doctor), 200)) == expected


def test_a_range_without_weekdays_covers_every_day_and_a_day_overrides_it(client: Client, doctor: actors.Actor) -> None:
    body = {
        "ranges": [
            {"from": day(1), "to": day(5), "working": True, "invitation_capacity": 2, "consultation_capacity": 2}
        ],
        "days": [setting(3, 0, 0, working=False)],
    }

    written = expect(put(client, doctor, body), 200)["days"]

    assert [entry["date"] for entry in written] == [day(offset) for offset in range(1, 6)]
    overridden = next(entry for entry in written if entry["date"] == day(3))
    assert (overridden["working"], overridden["invitation_capacity"]) == (False, 0)


def test_a_later_put_changes_only_its_days(client: Client, doctor: actors.Actor) -> None:
    expect(put(client, doctor, {"days": [setting(1, 1, 1), setting(2, 1, 1)]}), 200)

    expect(put(client, doctor, {"days": [setting(2, 5, 0)]}), 200)

    days = expect(call(client, "GET", "/v1/me/calendar", doctor), 200)["days"]
    assert [(d["date"], d["invitation_capacity"], d["consultation_capacity"]) for d in days] == [
        (day(1), 1, 1),
        (day(2), 5, 0),
    ]


def test_get_with_from_and_to(client: Client, doctor: actors.Actor) -> None:
    expect(put(client, doctor, {"days": [setting(offset) for offset in (1, 5, 10, 30)]}), 200)

    body = expect(call(client, "GET", f"/v1/me/calendar?from={day(5)}&to={day(10)}", doctor), 200)

    assert (body["from"], body["to"]) == (day(5), day(10))
    assert dates_of(body) == [day(5), day(10)]
    only_from = expect(call(client, "GET", f"/v1/me/calendar?from={day(6)}", doctor), 200)
    assert (only_from["to"], dates_of(only_from)) == (day(90), [day(10), day(30)])


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (f"from={day(10)}&to={day(5)}", "to"),
        (f"from={day(0)}&to={day(367)}", "to"),
        ("from=2030-02-30", "from"),
        ("from=tomorrow", "from"),
        ("until=2030-05-01", "until"),
        ("to=null", "to"),
        ("from=null", "from"),
    ],
)
def test_bad_calendar_queries_are_422(client: Client, doctor: actors.Actor, query: str, field: str) -> None:
    body = expect(call(client, "GET", f"/v1/me/calendar?{query}", doctor), 422, "validation_failed")

    assert body["error"]["details"]["field"] == field


@pytest.mark.parametrize(
    ("update", "details"),
    [
        ({"days": [setting(-1)]}, {"field": "days[0].date", "reason": "past"}),
        (
            {"days": [setting(0), setting(91)]},
            {"field": "days[1].date", "reason": "beyond_horizon", "last_date": day(90)},
        ),
        (
            {"ranges": [{"from": day(-1), "to": day(3), "working": True}]},
            {"field": "ranges[0].from", "reason": "past"},
        ),
        (
            {"ranges": [{"from": day(80), "to": day(91), "working": True}]},
            {"field": "ranges[0].to", "reason": "beyond_horizon", "last_date": day(90)},
        ),
        ({"ranges": [{"from": day(5), "to": day(4), "working": True}]}, {"field": "ranges[0]"}),
        ({"days": [setting(1, 21, 0)]}, {"field": "days[0].invitation_capacity"}),
        ({"days": [setting(1, 0, 21)]}, {"field": "days[0].consultation_capacity"}),
        ({"days": [setting(1, -1, 0)]}, {"field": "days[0].invitation_capacity"}),
        (
            {"ranges": [{"from": day(1), "to": day(2), "working": True, "invitation_capacity": 25}]},
            {"field": "ranges[0].invitation_capacity"},
        ),
        (
            {"ranges": [{"from": day(1), "to": day(2), "working": True, "weekdays": [0]}]},
            {"field": "ranges[0].weekdays[0]"},
        ),
        ({"days": [{**setting(1), "date": "2030-04-31"}]}, {"field": "days[0].date"}),
        ({"days": [{**setting(1), "booked": 3}]}, {"field": "days[0].booked"}),
        ({"days": []}, {}),
        ({}, {}),
    ],
)
def test_bad_updates_are_422_and_write_nothing(
    client: Client, doctor: actors.Actor, update: dict[str, Any], details: dict[str, Any]
) -> None:
    body = expect(put(client, doctor, update), 422, "validation_failed")

    assert body["error"]["details"] == details
    assert expect(call(client, "GET", "/v1/me/calendar", doctor), 200)["days"] == []


def test_the_last_day_of_the_horizon_may_be_set(client: Client, doctor: actors.Actor) -> None:
    assert dates_of(expect(put(client, doctor, {"days": [setting(90)]}), 200)) == [day(90)]


# --- accepting days in discovery ----------------------------------------------------------------


def _storefront(client: Client, viewer: actors.Actor, doctor: actors.Actor) -> dict[str, Any]:
    return expect(call(client, "GET", f"/v1/anesthesiologists/{doctor.user_id}", viewer), 200)


def _card(client: Client, viewer: actors.Actor, hospital_id: str) -> dict[str, Any]:
    items = expect(call(client, "GET", f"/v1/hospitals/{hospital_id}/anesthesiologists", viewer), 200)["items"]
    assert len(items) == 1
    return items[0]


@pytest.mark.usefixtures("own_account")
def test_accepting_days_show_on_the_storefront_and_the_card(client: Client, world: dict[str, Any]) -> None:
    doctor, patient, pumch = world["doctor"], world["patient"], world["hospitals"].pumch
    # GIVEN a day for invitations, a working day with no capacity, a day for consultations
    update = {"days": [setting(1, 2, 0), setting(2, 0, 0), setting(3, 0, 1)]}

    # WHEN the doctor saves them
    expect(put(client, doctor, update), 200)

    # THEN the storefront shows the open days with their free slots, and the card their dates
    assert _storefront(client, patient, doctor)["accepting_days"] == [
        {"date": day(1), "invitation_slots": 2, "consultation_slots": 0},
        {"date": day(3), "invitation_slots": 0, "consultation_slots": 1},
    ]
    assert _card(client, patient, pumch)["next_accepting_dates"] == [day(1), day(3)]


@pytest.mark.usefixtures("own_account")
def test_closing_a_day_removes_it_from_discovery(client: Client, world: dict[str, Any]) -> None:
    doctor, patient, pumch = world["doctor"], world["patient"], world["hospitals"].pumch
    expect(put(client, doctor, {"days": [setting(1), setting(2)]}), 200)

    expect(put(client, doctor, {"days": [setting(1, 0, 0)]}), 200)

    assert [entry["date"] for entry in _storefront(client, patient, doctor)["accepting_days"]] == [day(2)]
    assert _card(client, patient, pumch)["next_accepting_dates"] == [day(2)]


@pytest.mark.usefixtures("own_account")
def test_the_card_shows_the_next_five_upcoming_dates(
    client: Client, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    doctor, patient, pumch = world["doctor"], world["patient"], world["hospitals"].pumch
    expect(put(client, doctor, {"days": [setting(offset) for offset in range(8)]}), 200)
    assert _card(client, patient, pumch)["next_accepting_dates"] == [day(offset) for offset in range(5)]

    # WHEN two days pass
    actors.freeze_clock(monkeypatch, FROZEN + timedelta(days=2))

    # THEN the past days are gone from the card and the storefront
    assert _card(client, patient, pumch)["next_accepting_dates"] == [day(offset) for offset in range(2, 7)]
    assert [entry["date"] for entry in _storefront(client, patient, doctor)["accepting_days"]] == [
        day(offset) for offset in range(2, 8)
    ]


def test_the_storefront_shows_sixty_days(client: Client, world: dict[str, Any]) -> None:
    doctor, patient = world["doctor"], world["patient"]
    expect(put(client, doctor, {"days": [setting(59), setting(60)]}), 200)

    assert [entry["date"] for entry in _storefront(client, patient, doctor)["accepting_days"]] == [day(59)]


@pytest.mark.usefixtures("own_account")
def test_the_catalogue_filters_by_accepting_date(client: Client, world: dict[str, Any]) -> None:
    doctor, admin = world["doctor"], world["admin"]
    expect(put(client, doctor, {"days": [setting(1), setting(2, 0, 0)]}), 200)

    def listed(on: str) -> list[str]:
        body = expect(call(client, "GET", f"/v1/anesthesiologists?date={on}", admin), 200)
        return [item["doctor_id"] for item in body["items"]]

    assert listed(day(1)) == [doctor.user_id]
    assert listed(day(2)) == []
    assert listed(day(3)) == []


@pytest.mark.usefixtures("own_account")
def test_a_day_off_is_not_accepting_even_with_capacity(client: Client, world: dict[str, Any]) -> None:
    doctor, patient, pumch = world["doctor"], world["patient"], world["hospitals"].pumch

    expect(put(client, doctor, {"days": [setting(1, 2, 2, working=False), setting(2)]}), 200)

    assert [entry["date"] for entry in _storefront(client, patient, doctor)["accepting_days"]] == [day(2)]
    assert _card(client, patient, pumch)["next_accepting_dates"] == [day(2)]


# --- bookings ------------------------------------------------------------------------------------


def _book(doctor: actors.Actor, offset: int, invitations: int = 0, consultations: int = 0) -> None:
    """What the invitation flow does when it books: raise the booked counts of the day."""
    stored = CalendarDay.get(f"CALENDAR#{doctor.user_id}", day(offset))
    stored.update(
        actions=[
            CalendarDay.invitations_booked.set(invitations),
            CalendarDay.consultations_booked.set(consultations),
        ]
    )


def test_capacity_cannot_go_below_what_is_booked(client: Client, world: dict[str, Any]) -> None:
    doctor, patient = world["doctor"], world["patient"]
    # GIVEN two days with 2 invitations each, one of them booked
    expect(put(client, doctor, {"days": [setting(1, 2, 0), setting(4, 2, 0)]}), 200)
    _book(doctor, 4, invitations=2)

    # WHEN the doctor lowers both to one
    response = put(client, doctor, {"days": [setting(1, 1, 0), setting(4, 1, 0)]})

    # THEN nothing is written, and the booked date is named
    body = expect(response, 409, "capacity_below_booked")
    assert body["error"]["details"] == {"dates": [day(4)]}
    days = expect(call(client, "GET", "/v1/me/calendar", doctor), 200)["days"]
    assert [(d["date"], d["invitation_capacity"], d["invitations_booked"]) for d in days] == [
        (day(1), 2, 0),
        (day(4), 2, 2),
    ]
    # AND a fully booked day offers no slot on the storefront
    assert [entry["date"] for entry in _storefront(client, patient, doctor)["accepting_days"]] == [day(1)]


def test_consultation_capacity_cannot_go_below_what_is_booked(client: Client, doctor: actors.Actor) -> None:
    expect(put(client, doctor, {"days": [setting(1, 0, 3)]}), 200)
    _book(doctor, 1, consultations=2)

    expect(put(client, doctor, {"days": [setting(1, 0, 1)]}), 409, "capacity_below_booked")
    # a capacity equal to what is booked is fine
    written = expect(put(client, doctor, {"days": [setting(1, 0, 2)]}), 200)["days"]
    assert (written[0]["consultation_capacity"], written[0]["consultations_booked"]) == (2, 2)


def test_a_range_over_a_booked_day_is_refused(client: Client, doctor: actors.Actor) -> None:
    expect(put(client, doctor, {"days": [setting(3, 1, 0)]}), 200)
    _book(doctor, 3, invitations=1)

    response = put(client, doctor, {"ranges": [{"from": day(1), "to": day(5), "working": False}]})

    assert expect(response, 409, "capacity_below_booked")["error"]["details"] == {"dates": [day(3)]}
    assert dates_of(expect(call(client, "GET", "/v1/me/calendar", doctor), 200)) == [day(3)]


# --- who may ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["patient", "hospital", "admin"])
@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_only_doctors_have_a_calendar(client: Client, world: dict[str, Any], role: str, method: str) -> None:
    actor = world[role]

    response = call(client, method, "/v1/me/calendar", actor, {"days": [setting(1)]} if method == "PUT" else None)

    assert expect(response, 403, "forbidden")["error"]["details"] == {"role": role}


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_anonymous_callers_have_no_calendar(client: Client, method: str) -> None:
    expect(call(client, method, "/v1/me/calendar", None, {"days": [setting(1)]}), 401, "unauthorized")


def test_an_unverified_doctor_may_set_a_calendar(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    doctor = actors.register(client, "doctor")
    actors.freeze_clock(monkeypatch, FROZEN)

    assert dates_of(expect(put(client, doctor, {"days": [setting(1)]}), 200)) == [day(1)]
