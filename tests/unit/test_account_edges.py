"""Edges found in review: reviews that cannot be gamed, phones and WeChat ids that stay one person's,
tickets that cannot be replayed, text that cannot be stored, and transactions that lose a race."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from pynamodb.exceptions import CancellationReason, TransactWriteError, VerboseClientError

from chalicelib.accounts import signin, tokens, wechat
from chalicelib.accounts.roles import PATIENT, Principal
from chalicelib.clock import shanghai_date
from chalicelib.errors import ApiError
from chalicelib.models.invitations import CalendarDay
from chalicelib.models.users import LoginAlias, SessionFamily
from tests.unit import actors

if TYPE_CHECKING:
    from chalice.test import Client


@pytest.fixture
def hospitals(client: Client) -> actors.Hospitals:
    return actors.seed_hospitals()


# --- a review approves what the admin saw -------------------------------------------------------


@pytest.mark.parametrize("change", ["hospital_id", "title", "name"])
def test_reviewed_fields_cannot_change_while_the_review_is_pending(
    client: Client, hospitals: actors.Hospitals, change: str
) -> None:
    # GIVEN a doctor whose submission waits in the queue
    doctor = actors.make_doctor(client, hospitals.pumch)
    actors.expect(actors.submit(client, doctor), 202)
    before = actors.me(client, doctor)

    # WHEN they change what the admin is checking
    new_value = {"hospital_id": hospitals.chaoyang, "title": "chief", "name": "Someone Else"}[change]
    response = actors.call(client, "PATCH", "/v1/me", doctor, {change: new_value})

    # THEN it is refused, and the queue still shows what was submitted
    error = actors.expect(response, 409, "verification_pending")["error"]
    assert error["details"]["fields"] == [change]
    assert actors.me(client, doctor) == before


def test_other_fields_can_change_while_the_review_is_pending(client: Client, hospitals: actors.Hospitals) -> None:
    doctor = actors.make_doctor(client, hospitals.pumch)
    actors.expect(actors.submit(client, doctor), 202)

    changed = actors.patch_me(client, doctor, {"consultation_fee": 6000, "introduction": "Paediatric cases"})

    assert (changed["consultation_fee"], changed["verification"]["status"]) == (6000, "pending")


# --- a phone is one person's ----------------------------------------------------------------------


def test_a_wechat_account_keeps_its_phone_as_a_contact_and_claims_no_login(client: Client) -> None:
    # GIVEN a patient who signed up by WeChat and typed someone's number into the profile
    code = actors.unique("wx-")
    ticket = actors.call(client, "POST", "/v1/auth/wechat", body={"app": "mp", "code": code}).json_body
    body = {"app": "mp", "signup_ticket": ticket["signup_ticket"], "role": "patient"}
    session = actors.expect(actors.call(client, "POST", "/v1/auth/wechat", body=body), 201)
    wechat_user = actors.Actor(session["user_id"], PATIENT, "", session["access_token"], session["refresh_token"])
    phone = actors.fresh_phone()
    assert actors.patch_me(client, wechat_user, {"phone": phone})["phone"] == phone

    # WHEN the number's owner signs up with it
    owner = actors.register(client, "patient", phone=phone)

    # THEN they can: the WeChat account's phone is a contact number, not a login
    assert owner.user_id != wechat_user.user_id
    assert LoginAlias.get(signin.phone_alias_key(phone), "LOGIN").user_id == owner.user_id


# --- one WeChat person, one account -------------------------------------------------------------


def test_a_unionid_learned_later_links_the_other_apps(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a first mini-program login that carried no unionid (the app was not yet bound)
    identities = iter(
        [
            wechat.WeChatIdentity("mp", "wx-sandbox-mp", "o-mp-1", None),
            wechat.WeChatIdentity("mp", "wx-sandbox-mp", "o-mp-1", "u-person-1"),
            wechat.WeChatIdentity("oa", "wx-sandbox-oa", "o-oa-1", "u-person-1"),
        ]
    )
    monkeypatch.setattr(wechat, "exchange_code", lambda app, code: next(identities))
    now = datetime.now(UTC)
    status, first = signin.login_with_wechat("mp", "c1", None, "patient", now)
    assert status == 201

    # WHEN a later mini-program login carries the unionid, then the official account is used
    status, second = signin.login_with_wechat("mp", "c2", None, None, now)
    status_oa, third = signin.login_with_wechat("oa", "c3", None, None, now)

    # THEN all three are the same account, which now knows both openids
    assert (status, status_oa) == (200, 200)
    assert first["user_id"] == second["user_id"] == third["user_id"]
    assert actors.account(first["user_id"]).wechat_openids.as_dict() == {
        "wx-sandbox-mp": "o-mp-1",
        "wx-sandbox-oa": "o-oa-1",
    }


# --- text that cannot be stored ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/auth/register", '{"phone": "13812345678", "password": "\\ud800abcdefgh", "role": "patient"}'),
        (
            "/v1/auth/register",
            '{"phone": "13812345678", "password": "abcdefgh1", "role": "patient", "name": "\\udc00"}',
        ),
    ],
)
def test_a_lone_surrogate_is_a_422_not_a_500(client: Client, path: str, body: str) -> None:
    response = actors.call(client, "POST", path, raw=body)

    actors.expect(response, 422, "validation_failed")


def test_a_lone_surrogate_in_a_profile_is_a_422(client: Client) -> None:
    patient = actors.register(client, "patient")

    response = actors.call(client, "PATCH", "/v1/me", patient, raw='{"name": "\\ud83d"}')

    actors.expect(response, 422, "validation_failed")


def test_a_hospital_search_longer_than_a_key_finds_nothing(client: Client) -> None:
    response = actors.call(client, "GET", "/v1/hospitals?q=" + "%EF%B7%BA" * 35)

    assert actors.expect(response, 200) == {"items": [], "next_cursor": None}


# --- memberships and calendars ---------------------------------------------------------------------


def test_a_membership_contract_runs_at_most_ten_years(client: Client, hospitals: actors.Hospitals) -> None:
    admin = actors.make_admin(client)
    hospital = actors.make_hospital(client, hospitals.pumch)

    for ends_on in ("9999-12-31", (shanghai_date(datetime.now(UTC)) + timedelta(days=3700)).isoformat()):
        body = {"active": True, "ends_on": ends_on, "reference": "contract"}
        response = actors.call(client, "PUT", f"/v1/admin/memberships/{hospital.user_id}", admin, body)
        assert actors.expect(response, 422, "validation_failed")["error"]["details"]["field"] == "ends_on"


def test_a_booked_day_cannot_become_a_day_off(client: Client, hospitals: actors.Hospitals) -> None:
    # GIVEN a day with one invitation booked
    doctor = actors.make_doctor(client, hospitals.pumch)
    day = (shanghai_date(datetime.now(UTC)) + timedelta(days=3)).isoformat()
    setting = {"date": day, "working": True, "invitation_capacity": 2, "consultation_capacity": 0}
    actors.expect(actors.call(client, "PUT", "/v1/me/calendar", doctor, {"days": [setting]}), 200)
    CalendarDay(f"CALENDAR#{doctor.user_id}", day).update(actions=[CalendarDay.invitations_booked.set(1)])

    # WHEN the doctor marks it a day off, keeping the capacity
    day_off = {**setting, "working": False}
    response = actors.call(client, "PUT", "/v1/me/calendar", doctor, {"days": [day_off]})

    # THEN it is refused: the booking stands
    assert actors.expect(response, 409, "capacity_below_booked")["error"]["details"]["dates"] == [day]


def test_the_catalogue_city_filter_takes_the_directory_spellings(client: Client, hospitals: actors.Hospitals) -> None:
    admin = actors.make_admin(client)
    doctor = actors.make_verified_doctor(client, admin, hospitals.pumch)

    for city in (actors.BEIJING, f"{actors.BEIJING}\u5e02", f" {actors.BEIJING} "):  # 北京, 北京市
        response = actors.call(client, "GET", f"/v1/anesthesiologists?city={city}", admin)
        assert [item["doctor_id"] for item in actors.expect(response, 200)["items"]] == [doctor.user_id], city


# --- sessions expire, races answer 409 -------------------------------------------------------------


def test_a_session_family_expires_with_its_newest_token(client: Client) -> None:
    now = datetime.now(UTC)
    session = tokens.start_session(Principal("u-ttl", PATIENT), now)
    family = next(SessionFamily.query("USER#u-ttl", SessionFamily.sk.startswith("SESSION#")))
    assert family.expires_at is not None
    first_expiry = family.expires_at

    tokens.refresh_session(session.refresh_token, now + timedelta(days=1))

    family.refresh()
    assert family.expires_at == first_expiry + timedelta(days=1)


def _conflict(*codes: str | None) -> TransactWriteError:
    cause = VerboseClientError(
        {"Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"}},
        "TransactWriteItems",
        cancellation_reasons=[CancellationReason(code=code) if code else None for code in codes],
    )
    return TransactWriteError("Failed to write transaction items", cause=cause)


@pytest.mark.parametrize("operation", ["register", "refresh"])
def test_a_transaction_that_loses_a_race_is_a_409_not_a_500(
    client: Client, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    # GIVEN DynamoDB cancels the next transaction because another one held an item at that moment
    now = datetime.now(UTC)
    session = tokens.start_session(Principal("u-race", PATIENT), now)

    def conflicted(self: Any) -> None:
        raise _conflict(None, "TransactionConflict", None)

    monkeypatch.setattr("pynamodb.transactions.TransactWrite._commit", conflicted)

    run = {
        "register": lambda: signin.register_with_phone(actors.fresh_phone(), "password-1", "patient", None, now),
        "refresh": lambda: tokens.refresh_session(session.refresh_token, now),
    }[operation]

    # WHEN the operation runs
    with pytest.raises(ApiError) as raised:
        run()

    # THEN the caller is told to retry
    assert (raised.value.status, raised.value.code) == (409, "conflict")


def test_the_conflict_body_is_the_error_shape(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "pynamodb.transactions.TransactWrite._commit",
        lambda self: (_ for _ in ()).throw(_conflict("TransactionConflict")),
    )
    body = {"phone": actors.fresh_phone(), "password": "password-1", "role": "patient"}

    response = actors.call(client, "POST", "/v1/auth/register", body=body)

    assert json.loads(response.body)["error"]["code"] == "conflict"
    assert response.status_code == 409
