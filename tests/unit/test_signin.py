"""Phone + password sign-up and sign-in, the per-phone attempt limit, and operator-made admins.

One moto account serves the module; every test signs up phone numbers of its own.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.accounts import signin, tokens
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.handlers import accounts as accounts_handlers

if TYPE_CHECKING:
    from collections.abc import Callable

    from chalice.test import Client

PASSWORD = "correct horse 1"
ERROR_KEYS = {"code", "message", "message_zh", "details", "request_id"}
SESSION_KEYS = {"user_id", "role", "access_token", "token_type", "expires_in", "refresh_token"}
_numbers = itertools.count(1)


def fresh_phone() -> str:
    """A mainland mobile number no other test of this module uses."""
    return f"1370000{next(_numbers):04d}"


def spelled(phone: str) -> list[str]:
    """Other ways people write ``phone``."""
    return [
        f"+86{phone}",
        f"+86 {phone[:3]} {phone[3:7]} {phone[7:]}",
        f"{phone[:3]}-{phone[3:7]}-{phone[7:]}",
        f"{phone[:3]} {phone[3:7]} {phone[7:]}",
    ]


@pytest.fixture(scope="module")
def client(module_client: Client) -> Client:
    """One moto account for the whole module: each test uses its own phones and codes."""
    return module_client


def post_json(client: Client, path: str, body: Any) -> Any:
    return client.http.post(path, headers={"Content-Type": "application/json"}, body=json.dumps(body))


def register(client: Client, phone: str, password: str = PASSWORD, role: str = "patient", **extra: Any) -> Any:
    return post_json(client, "/v1/auth/register", {"phone": phone, "password": password, "role": role, **extra})


def login(client: Client, phone: str, password: str = PASSWORD) -> Any:
    return post_json(client, "/v1/auth/login", {"phone": phone, "password": password})


def me(client: Client, access_token: str) -> Any:
    return client.http.get("/v1/me", headers={"Authorization": f"Bearer {access_token}"})


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.json_body
    body = response.json_body
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["code"] == code
    return body["error"]


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[timedelta], None]:
    """Stop the sign-in routes' clock now (so no attempt-window boundary passes mid-test); returns a way to move it."""
    instant = [datetime.now(UTC)]
    monkeypatch.setattr(accounts_handlers, "utc_now", lambda: instant[0])

    def advance(by: timedelta) -> None:
        instant[0] += by

    return advance


# --- registration ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["patient", "doctor", "hospital"])
def test_register_creates_an_account_and_signs_in(client: Client, role: str) -> None:
    phone = fresh_phone()

    response = register(client, phone, role=role, name="Li")

    assert response.status_code == 201
    body = response.json_body
    assert set(body) == {*SESSION_KEYS, "created"}
    assert body["created"] is True
    assert body["role"] == role
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == get_settings().access_token_seconds
    assert tokens.verify_access_token(body["access_token"]).user_id == body["user_id"]
    own = me(client, body["access_token"]).json_body
    assert (own["user_id"], own["role"], own["phone"]) == (body["user_id"], role, phone)


def test_register_without_a_name(client: Client) -> None:
    response = register(client, fresh_phone())

    assert response.status_code == 201
    assert me(client, response.json_body["access_token"]).json_body["name"] is None


def test_register_accepts_a_phone_written_with_country_code_and_spaces(client: Client) -> None:
    phone = fresh_phone()

    response = register(client, spelled(phone)[1])

    assert response.status_code == 201
    assert me(client, response.json_body["access_token"]).json_body["phone"] == phone


def test_a_phone_number_has_one_account(client: Client) -> None:
    phone = fresh_phone()
    assert register(client, phone).status_code == 201

    assert_error(register(client, phone), 409, "phone_taken")
    assert_error(register(client, phone, role="doctor", password="another password"), 409, "phone_taken")


@pytest.mark.parametrize("variant", range(4), ids=["plus86", "plus86-spaces", "dashes", "spaces"])
def test_a_phone_written_differently_is_still_taken(client: Client, variant: int) -> None:
    # GIVEN an account on 1370000xxxx
    phone = fresh_phone()
    assert register(client, phone).status_code == 201

    # WHEN someone signs up with the same number written another way, e.g. "+86 137 0000 xxxx"
    response = register(client, spelled(phone)[variant])

    # THEN it is the same number
    assert_error(response, 409, "phone_taken")


@pytest.mark.parametrize(
    "phone",
    ["01012345678", "+86 10 1234 5678", "+14155552671", "+85291234567", "12345678901", "not a phone", "1381234567"],
)
def test_an_invalid_phone_is_refused(client: Client, phone: str) -> None:
    error = assert_error(register(client, phone), 422, "validation_failed")

    assert error["details"]["field"] == "phone"


@pytest.mark.parametrize(("password", "why"), [("1234567", "short"), ("", "empty"), ("x" * 129, "long")])
def test_a_password_outside_8_to_128_characters_is_refused(client: Client, password: str, why: str) -> None:
    error = assert_error(register(client, fresh_phone(), password=password), 422, "validation_failed")

    assert error["details"]["field"] == "password"


def test_a_password_of_exactly_8_characters_is_enough(client: Client) -> None:
    assert register(client, fresh_phone(), password="12345678").status_code == 201


@pytest.mark.parametrize("role", ["admin", "ADMIN", "vip_hospital", "anon", "superuser", ""])
def test_register_never_creates_an_admin_or_another_unknown_role(client: Client, role: str) -> None:
    # GIVEN a sign-up that asks for a role nobody may sign up for
    phone = fresh_phone()

    response = register(client, phone, role=role)

    # THEN it is refused, naming the role, and no account was made
    error = assert_error(response, 422, "validation_failed")
    assert error["details"]["field"] == "role"
    assert_error(login(client, phone), 401, "invalid_credentials")


@pytest.mark.parametrize("field", [{"is_admin": True}, {"verified": True}, {"user_id": "u-1"}, {"star_level": 5}])
def test_register_refuses_fields_a_client_may_not_set(client: Client, field: dict[str, Any]) -> None:
    phone = fresh_phone()

    error = assert_error(register(client, phone, **field), 422, "validation_failed")

    assert error["details"]["field"] == next(iter(field))
    assert_error(login(client, phone), 401, "invalid_credentials")


@pytest.mark.parametrize(
    "body",
    [{"phone": "13700009999", "password": PASSWORD}, {"phone": 13700009999, "password": PASSWORD, "role": "patient"}],
    ids=["no-role", "phone-as-number"],
)
def test_register_refuses_a_malformed_body(client: Client, body: dict[str, Any]) -> None:
    assert_error(post_json(client, "/v1/auth/register", body), 422, "validation_failed")


def test_register_with_a_null_body(client: Client) -> None:
    response = client.http.post("/v1/auth/register", headers={"Content-Type": "application/json"}, body="null")

    assert_error(response, 400, "body_required")


@pytest.mark.parametrize("body", ["", "{", "phone=13700009999"], ids=["empty", "truncated", "form"])
def test_register_with_a_body_that_is_not_json(client: Client, body: str) -> None:
    response = client.http.post("/v1/auth/register", headers={"Content-Type": "application/json"}, body=body)

    assert_error(response, 400, "invalid_json")


# --- login -----------------------------------------------------------------------------------


@pytest.fixture
def account(client: Client) -> dict[str, Any]:
    """A fresh patient signed up with ``PASSWORD``: its phone and user id."""
    phone = fresh_phone()
    response = register(client, phone)
    assert response.status_code == 201
    return {"phone": phone, "user_id": response.json_body["user_id"]}


def test_login_with_the_right_password(client: Client, account: dict[str, Any]) -> None:
    response = login(client, account["phone"])

    assert response.status_code == 200
    body = response.json_body
    assert set(body) == SESSION_KEYS
    assert (body["user_id"], body["role"]) == (account["user_id"], "patient")
    assert me(client, body["access_token"]).status_code == 200


def test_login_with_the_phone_written_differently(client: Client, account: dict[str, Any]) -> None:
    for variant in spelled(account["phone"]):
        response = login(client, variant)
        assert response.status_code == 200, variant
        assert response.json_body["user_id"] == account["user_id"]


def test_a_wrong_password_is_invalid_credentials(client: Client, account: dict[str, Any]) -> None:
    assert_error(login(client, account["phone"], "wrong password"), 401, "invalid_credentials")


def test_an_unknown_phone_looks_exactly_like_a_wrong_password(client: Client, account: dict[str, Any]) -> None:
    wrong_password = assert_error(login(client, account["phone"], "wrong password"), 401, "invalid_credentials")
    unknown_phone = assert_error(login(client, fresh_phone()), 401, "invalid_credentials")

    # nothing tells an attacker which phones have accounts
    for part in ("message", "message_zh", "details"):
        assert unknown_phone[part] == wrong_password[part]


def test_an_invalid_phone_at_login_is_refused(client: Client) -> None:
    error = assert_error(login(client, "01012345678"), 422, "validation_failed")

    assert error["details"]["field"] == "phone"


# --- attempt limit ---------------------------------------------------------------------------


def test_too_many_failures_lock_the_phone_even_for_the_right_password(
    client: Client, account: dict[str, Any], frozen_clock: Callable[[timedelta], None]
) -> None:
    limit = get_settings().login_max_failures
    assert limit == 5

    # GIVEN as many wrong passwords as allowed
    for _ in range(limit):
        assert_error(login(client, account["phone"], "wrong password"), 401, "invalid_credentials")

    # WHEN the right password comes next
    response = login(client, account["phone"])

    # THEN it is refused too, with a time to wait
    error = assert_error(response, 429, "too_many_attempts")
    retry_after = error["details"]["retry_after_seconds"]
    assert isinstance(retry_after, int)
    assert 1 <= retry_after <= get_settings().login_window_seconds


def test_the_lock_is_per_phone(
    client: Client, account: dict[str, Any], frozen_clock: Callable[[timedelta], None]
) -> None:
    other = fresh_phone()
    assert register(client, other).status_code == 201
    for _ in range(get_settings().login_max_failures):
        login(client, account["phone"], "wrong password")
    assert_error(login(client, account["phone"]), 429, "too_many_attempts")

    assert login(client, other).status_code == 200


def test_failures_count_whatever_way_the_phone_is_written(
    client: Client, account: dict[str, Any], frozen_clock: Callable[[timedelta], None]
) -> None:
    variants = [account["phone"], *spelled(account["phone"])]
    for variant in variants[: get_settings().login_max_failures]:
        assert_error(login(client, variant, "wrong password"), 401, "invalid_credentials")

    assert_error(login(client, account["phone"]), 429, "too_many_attempts")


def test_an_unknown_phone_is_locked_as_well(client: Client, frozen_clock: Callable[[timedelta], None]) -> None:
    phone = fresh_phone()
    for _ in range(get_settings().login_max_failures):
        assert_error(login(client, phone), 401, "invalid_credentials")

    assert_error(login(client, phone), 429, "too_many_attempts")


def test_the_lock_ends_with_its_window(
    client: Client, account: dict[str, Any], frozen_clock: Callable[[timedelta], None]
) -> None:
    for _ in range(get_settings().login_max_failures):
        login(client, account["phone"], "wrong password")
    error = assert_error(login(client, account["phone"]), 429, "too_many_attempts")

    frozen_clock(timedelta(seconds=error["details"]["retry_after_seconds"]))

    assert login(client, account["phone"]).status_code == 200


def test_successful_logins_do_not_use_up_the_allowance(
    client: Client, account: dict[str, Any], frozen_clock: Callable[[timedelta], None]
) -> None:
    limit = get_settings().login_max_failures
    # GIVEN twice as many successful sign-ins as failures are allowed
    for _ in range(2 * limit):
        assert login(client, account["phone"]).status_code == 200

    # THEN all failures are still allowed, and the right password still works after them
    for _ in range(limit - 1):
        assert_error(login(client, account["phone"], "wrong password"), 401, "invalid_credentials")
    assert login(client, account["phone"]).status_code == 200


# --- admins ----------------------------------------------------------------------------------


@pytest.fixture
def admin(client: Client) -> dict[str, str]:
    phone = fresh_phone()
    user_id = signin.create_admin(phone, PASSWORD, "Ops", datetime.now(UTC))
    return {"phone": phone, "user_id": user_id}


def test_create_admin_makes_an_admin_who_can_sign_in(client: Client, admin: dict[str, str]) -> None:
    response = login(client, admin["phone"])

    assert response.status_code == 200
    body = response.json_body
    assert (body["user_id"], body["role"]) == (admin["user_id"], "admin")
    assert tokens.verify_access_token(body["access_token"]).role == "admin"
    own = me(client, body["access_token"]).json_body
    assert (own["role"], own["name"], own["phone"]) == ("admin", "Ops", admin["phone"])
    queue = client.http.get("/v1/admin/verifications", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert queue.status_code == 200


def test_create_admin_refuses_a_taken_phone(client: Client, account: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as raised:
        signin.create_admin(account["phone"], PASSWORD, "Ops", datetime.now(UTC))

    assert (raised.value.status, raised.value.code) == (409, "phone_taken")
    assert login(client, account["phone"]).json_body["role"] == "patient"


def test_an_admin_phone_cannot_be_signed_up_again(client: Client, admin: dict[str, str]) -> None:
    assert_error(register(client, admin["phone"]), 409, "phone_taken")


def test_a_patient_token_does_not_open_admin_routes(client: Client, account: dict[str, Any]) -> None:
    token = login(client, account["phone"]).json_body["access_token"]

    response = client.http.get("/v1/admin/verifications", headers={"Authorization": f"Bearer {token}"})

    assert_error(response, 403, "forbidden")
