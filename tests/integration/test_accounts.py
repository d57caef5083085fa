"""Accounts, calendar, verification and discovery under concurrency, on the real engine.

Every race starts its threads at a barrier, so the calls really overlap; the checks
afterwards read items by key (never a Scan).
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from pynamodb.exceptions import DoesNotExist

from chalicelib.accounts import profiles, signin, tokens, verification, wechat
from chalicelib.accounts.profiles import ProfilePatch
from chalicelib.accounts.roles import ADMIN, DOCTOR, PATIENT, Principal
from chalicelib.accounts.verification import Credentials
from chalicelib.clock import shanghai_date, utc_now
from chalicelib.config import get_settings
from chalicelib.directory.hospitals import hospital_id_for, seed_directory
from chalicelib.doctors import calendar, discovery
from chalicelib.doctors.calendar import CalendarUpdate, DaySetting, RangeSetting
from chalicelib.doctors.ranking import discovery_keys
from chalicelib.errors import ApiError
from chalicelib.models.invitations import CalendarDay
from chalicelib.models.users import Account, LoginAlias, RefreshToken, VerificationDecision

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

T = TypeVar("T")
PASSWORD = "correct-horse-9"
XIEHE = "\u5317\u4eac\u534f\u548c\u533b\u9662"  # 北京协和医院
PKU_FIRST = "\u5317\u4eac\u5927\u5b66\u7b2c\u4e00\u533b\u9662"  # 北京大学第一医院
BEIJING_CITY = "\u5317\u4eac"  # 北京
DOCTOR_CREDENTIALS = Credentials(
    practising_certificate_no="110110000012345",
    qualification_certificate_no="QC20260001",
    id_number="11010519491231002X",
)


def _race(count: int, call: Callable[[int], T]) -> list[T | Exception]:
    """Run ``call(0..count-1)`` on ``count`` threads released together; each result or exception."""
    barrier = threading.Barrier(count)

    def run(index: int) -> T | Exception:
        barrier.wait(timeout=30)
        try:
            return call(index)
        except Exception as error:  # the outcome under test
            return error

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def _api_errors(outcomes: list[Any]) -> list[ApiError]:
    """The ``ApiError`` outcomes; any other exception fails the test with its own traceback."""
    for outcome in outcomes:
        if isinstance(outcome, Exception) and not isinstance(outcome, ApiError):
            raise outcome
    return [outcome for outcome in outcomes if isinstance(outcome, ApiError)]


def _phone() -> str:
    return f"139{uuid.uuid4().int % 10**8:08d}"


def _account(user_id: str) -> Account | None:
    try:
        return Account.get(f"USER#{user_id}", "PROFILE", consistent_read=True)
    except DoesNotExist:
        return None


@pytest.fixture
def created_accounts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The user id of every account a sign-up tried to create (written or not)."""
    created: list[str] = []
    original = signin._new_account

    def recording(role: str, now: datetime) -> Account:
        account = original(role, now)
        created.append(account.user_id)
        return account

    monkeypatch.setattr(signin, "_new_account", recording)
    return created


@pytest.fixture(scope="module")
def directory(tables: list[str]) -> int:
    """The seeded hospital directory; how many hospitals this run added."""
    return seed_directory(utc_now())


def _doctor_with_profile(hospital_name: str, now: datetime, name: str = "Dr Wang") -> Principal:
    principal = signin.register_with_phone(_phone(), PASSWORD, DOCTOR, None, now).principal
    patch = ProfilePatch(
        name=name,
        hospital_id=hospital_id_for(hospital_name, BEIJING_CITY),
        title="attending",
        invitation_fee=50000,
        consultation_fee=10000,
        specialties=["cardiac"],
    )
    profiles.update_profile(principal, patch, now)
    return principal


def _pending_doctor(hospital_name: str, now: datetime, name: str = "Dr Wang") -> Principal:
    principal = _doctor_with_profile(hospital_name, now, name)
    assert verification.submit(principal, DOCTOR_CREDENTIALS, now)["status"] == "pending"
    return principal


def _admin(now: datetime) -> Principal:
    return Principal(signin.create_admin(_phone(), PASSWORD, "Ops", now), ADMIN)


# --- sign-up and sign-in races ------------------------------------------------------------------


def test_concurrent_phone_registrations_make_one_account(tables: list[str], created_accounts: list[str]) -> None:
    # GIVEN ten sign-ups with one phone, released together
    phone, now = _phone(), utc_now()
    outcomes = _race(10, lambda i: signin.register_with_phone(phone, PASSWORD, PATIENT, f"p{i}", now))
    # THEN exactly one succeeds and the others are told the phone is taken
    sessions = [outcome for outcome in outcomes if isinstance(outcome, tokens.Session)]
    errors = _api_errors(outcomes)
    assert len(sessions) == 1
    assert [(error.status, error.code) for error in errors] == [(409, "phone_taken")] * 9
    winner = sessions[0].principal.user_id
    # AND the phone's one login alias names the winner, whose account is the only one written
    alias = LoginAlias.get(signin.phone_alias_key(phone), "LOGIN", consistent_read=True)
    assert alias.user_id == winner
    assert len(created_accounts) == 10
    assert [user_id for user_id in created_accounts if _account(user_id) is not None] == [winner]
    # AND the winner signs in with the phone
    assert signin.login_with_phone(phone, PASSWORD, now).principal.user_id == winner


def test_concurrent_first_wechat_sign_ups_make_one_account(tables: list[str], created_accounts: list[str]) -> None:
    # GIVEN ten first sign-ins of one WeChat user, each choosing a role, released together
    code, now = f"race-{uuid.uuid4().hex[:12]}", utc_now()
    outcomes = _race(10, lambda _: signin.login_with_wechat("mp", code, None, DOCTOR, now))
    _api_errors(outcomes)
    results: list[tuple[int, dict[str, Any]]] = [outcome for outcome in outcomes if isinstance(outcome, tuple)]
    assert len(results) == 10, outcomes
    # THEN one created the account and the others signed in to it
    assert sorted(status for status, _ in results) == [200] * 9 + [201]
    user_ids = {body["user_id"] for _, body in results}
    assert len(user_ids) == 1
    (winner,) = user_ids
    assert {body["created"] for status, body in results if status == 201} == {True}
    assert {body["created"] for status, body in results if status == 200} == {False}
    assert all(body["role"] == DOCTOR for _, body in results)
    # AND only the winner's account exists, and both WeChat aliases name it
    assert [user_id for user_id in created_accounts if _account(user_id) is not None] == [winner]
    identity = wechat.exchange_code("mp", code)
    for key in (f"LOGIN#unionid#{identity.unionid}", f"LOGIN#openid#{identity.app_id}#{identity.openid}"):
        assert LoginAlias.get(key, "LOGIN", consistent_read=True).user_id == winner
    account = _account(winner)
    assert account is not None
    assert account.wechat_openids.as_dict() == {identity.app_id: identity.openid}


def test_concurrent_refreshes_with_one_token_let_one_through_and_revoke_the_family(
    tables: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a session and eight refreshes of its refresh token, released together, that all
    # read the token before any of them writes (the interleaving the transaction guards)
    now = utc_now()
    session = signin.register_with_phone(_phone(), PASSWORD, PATIENT, None, now)
    read_all = threading.Barrier(8)
    read = RefreshToken.get

    def read_then_wait(cls: type[RefreshToken], *args: Any, **kwargs: Any) -> RefreshToken:
        item = read(*args, **kwargs)
        read_all.wait(timeout=30)
        return item

    with monkeypatch.context() as patch:
        patch.setattr(RefreshToken, "get", classmethod(read_then_wait))
        outcomes = _race(8, lambda _: tokens.refresh_session(session.refresh_token, now))
    # THEN exactly one gets new tokens; the others are refused as a reuse
    winners = [outcome for outcome in outcomes if isinstance(outcome, tokens.Session)]
    errors = _api_errors(outcomes)
    assert len(winners) == 1
    assert [(error.status, error.code) for error in errors] == [(401, "refresh_token_reused")] * 7
    assert winners[0].principal == session.principal
    assert winners[0].refresh_token != session.refresh_token
    # AND the reuse revoked the family: the winner's new refresh token is refused too
    with pytest.raises(ApiError) as refused:
        tokens.refresh_session(winners[0].refresh_token, now)
    assert refused.value.status == 401
    # AND so is the original, again
    with pytest.raises(ApiError) as again:
        tokens.refresh_session(session.refresh_token, now)
    assert again.value.status == 401


def test_a_reused_refresh_token_revokes_its_family(tables: list[str]) -> None:
    # GIVEN a session refreshed once
    now = utc_now()
    session = signin.register_with_phone(_phone(), PASSWORD, PATIENT, None, now)
    rotated = tokens.refresh_session(session.refresh_token, now)
    # WHEN the old refresh token is presented again
    with pytest.raises(ApiError) as reused:
        tokens.refresh_session(session.refresh_token, now)
    # THEN it is refused as a reuse
    assert (reused.value.status, reused.value.code) == (401, "refresh_token_reused")
    # AND the rotated, never-used token of the same family is refused too
    with pytest.raises(ApiError) as revoked:
        tokens.refresh_session(rotated.refresh_token, now)
    assert revoked.value.status == 401
    # AND a new sign-in starts a family that works
    fresh = tokens.start_session(session.principal, now)
    assert tokens.refresh_session(fresh.refresh_token, now).principal == session.principal


def test_a_token_of_a_revoked_family_is_refused_as_session_revoked(tables: list[str]) -> None:
    # GIVEN a family revoked by the reuse of its first token
    now = utc_now()
    session = signin.register_with_phone(_phone(), PASSWORD, PATIENT, None, now)
    rotated = tokens.refresh_session(session.refresh_token, now)
    with pytest.raises(ApiError):
        tokens.refresh_session(session.refresh_token, now)
    # WHEN its unused rotated token is presented
    with pytest.raises(ApiError) as revoked:
        tokens.refresh_session(rotated.refresh_token, now)
    # THEN the answer says the session was signed out
    assert (revoked.value.status, revoked.value.code) == (401, "session_revoked")


def test_concurrent_wrong_passwords_cannot_pass_the_login_limit(tables: list[str]) -> None:
    # GIVEN an account and twenty wrong-password logins for its phone, released together
    phone, now = _phone(), utc_now()
    signin.register_with_phone(phone, PASSWORD, PATIENT, None, now)
    limit = get_settings().login_max_failures
    outcomes = _race(20, lambda i: signin.login_with_phone(phone, f"wrong-password-{i}", now))
    errors = _api_errors(outcomes)
    assert len(errors) == 20
    statuses = [error.status for error in errors]
    # THEN no more than the limit were checked (401); the rest were throttled (429)
    assert set(statuses) <= {401, 429}
    assert statuses.count(401) <= limit
    assert statuses.count(401) == limit  # the counter is atomic: exactly the first ``limit`` get through
    assert {error.code for error in errors if error.status == 429} == {"too_many_attempts"}
    # AND within the window even the right password is throttled
    with pytest.raises(ApiError) as throttled:
        signin.login_with_phone(phone, PASSWORD, now)
    assert (throttled.value.status, throttled.value.code) == (429, "too_many_attempts")
    assert throttled.value.details["retry_after_seconds"] >= 1


# --- calendar -----------------------------------------------------------------------------------


def _stored_days(doctor_id: str, now: datetime) -> dict[str, CalendarDay]:
    today = shanghai_date(now)
    return {day.sk: day for day in calendar.read_days(doctor_id, today, today + timedelta(days=calendar.HORIZON_DAYS))}


def _accepting_as_stored(doctor_id: str, now: datetime) -> list[str]:
    return sorted(
        date
        for date, day in _stored_days(doctor_id, now).items()
        if day.invitation_capacity > 0 or day.consultation_capacity > 0
    )


def test_capacity_cannot_go_below_booked_and_the_whole_update_is_refused(tables: list[str], directory: int) -> None:
    # GIVEN a doctor with capacity 2 on two days, and one of them fully booked
    now = utc_now()
    doctor = _doctor_with_profile(XIEHE, now).user_id
    today = shanghai_date(now)
    booked_day, other_day, new_day = (today + timedelta(days=n) for n in (3, 4, 5))
    calendar.set_days(
        doctor,
        CalendarUpdate(days=[DaySetting(booked_day, True, 2, 0), DaySetting(other_day, True, 2, 0)]),
        now,
    )
    CalendarDay(f"CALENDAR#{doctor}", booked_day.isoformat()).update(actions=[CalendarDay.invitations_booked.set(2)])
    before = _account(doctor)
    assert before is not None
    assert before.accepting_dates == [booked_day.isoformat(), other_day.isoformat()]
    # WHEN one request lowers the booked day to 1 and changes two other days
    update = CalendarUpdate(
        days=[DaySetting(booked_day, True, 1, 0), DaySetting(other_day, True, 5, 0), DaySetting(new_day, True, 1, 0)]
    )
    with pytest.raises(ApiError) as refused:
        calendar.set_days(doctor, update, now)
    # THEN it is refused, naming the day
    assert (refused.value.status, refused.value.code) == (409, "capacity_below_booked")
    assert refused.value.details == {"dates": [booked_day.isoformat()]}
    # AND nothing of it was written: days and profile as before
    days = _stored_days(doctor, now)
    assert set(days) == {booked_day.isoformat(), other_day.isoformat()}
    assert (days[booked_day.isoformat()].invitation_capacity, days[booked_day.isoformat()].invitations_booked) == (2, 2)
    assert days[other_day.isoformat()].invitation_capacity == 2
    after = _account(doctor)
    assert after is not None
    assert (after.revision, after.accepting_dates) == (before.revision, before.accepting_dates)
    # AND keeping the capacity at what is booked is allowed
    calendar.set_days(doctor, CalendarUpdate(days=[DaySetting(booked_day, True, 2, 1)]), now)
    assert _stored_days(doctor, now)[booked_day.isoformat()].consultation_capacity == 1


def test_concurrent_calendar_writes_keep_the_accepting_dates_consistent(tables: list[str], directory: int) -> None:
    # GIVEN a doctor and, round after round, two overlapping calendar writes released together
    now = utc_now()
    doctor = _doctor_with_profile(XIEHE, now).user_id
    today = shanghai_date(now)
    for round_ in range(6):
        first = CalendarUpdate(
            ranges=[RangeSetting(today + timedelta(days=1), today + timedelta(days=10), True, round_ % 2, 0)]
        )
        second = CalendarUpdate(
            ranges=[RangeSetting(today + timedelta(days=5), today + timedelta(days=15), True, 0, (round_ + 1) % 2)],
            days=[DaySetting(today + timedelta(days=20 + round_), True, 1, 0)],
        )
        updates = [first, second]
        outcomes = _race(2, lambda i, updates=updates: calendar.set_days(doctor, updates[i], now))
        errors = _api_errors(outcomes)
        # THEN each either landed or was refused as a conflict, and at least one landed
        assert all((error.status, error.code) == (409, "conflict") for error in errors), errors
        assert len(errors) < 2
        # AND the profile's accepting dates are exactly the stored days with capacity
        account = _account(doctor)
        assert account is not None
        assert list(account.accepting_dates or []) == _accepting_as_stored(doctor, now)


# --- verification -------------------------------------------------------------------------------


def test_two_admins_approving_at_once_record_one_decision(tables: list[str], directory: int) -> None:
    # GIVEN a pending doctor and two admins approving at the same moment
    now = utc_now()
    doctor = _pending_doctor(XIEHE, now).user_id
    admins = [_admin(now), _admin(now)]
    outcomes = _race(2, lambda i: verification.decide(admins[i], doctor, True, None, now))
    # THEN one decision wins and the other is refused with 409
    decisions = [outcome for outcome in outcomes if isinstance(outcome, dict)]
    errors = _api_errors(outcomes)
    assert len(decisions) == 1
    assert len(errors) == 1
    assert errors[0].status == 409
    assert errors[0].code in {"not_pending", "conflict"}
    # AND exactly one decision is recorded, by the winner
    recorded = list(
        VerificationDecision.query(
            f"USER#{doctor}", VerificationDecision.sk.startswith("DECISION#"), consistent_read=True
        )
    )
    assert len(recorded) == 1
    assert (recorded[0].decision, recorded[0].decided_by) == ("approved", decisions[0]["decided_by"])
    # AND the doctor is verified, out of the queue, in discovery
    account = _account(doctor)
    assert account is not None
    assert account.verification_status == "verified"
    assert account.review_queue is None
    assert account.hospital_key == f"HOSPITAL#{hospital_id_for(XIEHE, BEIJING_CITY)}"


# --- discovery ----------------------------------------------------------------------------------


def _verified_doctor(hospital_name: str, star_level: float, rating: float, admin: Principal, now: datetime) -> str:
    doctor = _pending_doctor(hospital_name, now, name=f"Dr {star_level}").user_id
    verification.decide(admin, doctor, True, None, now)
    account = _account(doctor)
    assert account is not None
    ratings = 10
    account.star_level, account.rating_count, account.rating_sum = star_level, ratings, round(rating * ratings)
    keys = discovery_keys(account)
    account.update(
        actions=[
            Account.star_level.set(star_level),
            Account.rating_count.set(ratings),
            Account.rating_sum.set(round(rating * ratings)),
            *(getattr(Account, name).set(value) for name, value in keys.items()),
        ]
    )
    return doctor


def test_hospital_listing_pages_best_first_without_repeats(tables: list[str], directory: int) -> None:
    # GIVEN three verified doctors of one hospital (star level decides, whatever the rating)
    now = utc_now()
    admin = _admin(now)
    middle = _verified_doctor(PKU_FIRST, 4.0, 4.9, admin, now)
    worst = _verified_doctor(PKU_FIRST, 3.0, 5.0, admin, now)
    best = _verified_doctor(PKU_FIRST, 4.5, 4.1, admin, now)
    # AND one doctor of the same hospital still waiting for review
    _pending_doctor(PKU_FIRST, now, name="Dr Pending")
    # WHEN the hospital's list is read two at a time, following the cursor
    hospital_id = hospital_id_for(PKU_FIRST, BEIJING_CITY)
    pages = [discovery.doctors_of_hospital(hospital_id, 2, None, now)]
    while pages[-1]["next_cursor"] is not None:
        assert len(pages) < 5, "the cursor does not end"
        pages.append(discovery.doctors_of_hospital(hospital_id, 2, pages[-1]["next_cursor"], now))
    # THEN the pages hold at most two each, best first, every verified doctor once
    assert all(len(page["items"]) <= 2 for page in pages)
    assert len(pages[0]["items"]) == 2
    listed = [item["doctor_id"] for page in pages for item in page["items"]]
    assert listed == [best, middle, worst]
    assert [item["star_level"] for page in pages for item in page["items"]] == [4.5, 4.0, 3.0]
    assert pages[0]["hospital"]["hospital_id"] == hospital_id
    assert pages[0]["hospital"]["name"] == PKU_FIRST
