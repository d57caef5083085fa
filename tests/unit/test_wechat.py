"""WeChat sign-in: the sandbox through the HTTP API, and the live exchange against a mocked api.weixin.qq.com.

One moto account serves the module; every test uses WeChat codes of its own (one code is
one person in the sandbox).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import requests
import responses
from responses import matchers

from chalicelib.accounts import tokens, wechat
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.models.users import Account
from chalicelib.security.keys import get_keys

if TYPE_CHECKING:
    from collections.abc import Iterator

    from chalice.test import Client

ERROR_KEYS = {"code", "message", "message_zh", "details", "request_id"}
SESSION_KEYS = {"user_id", "role", "access_token", "token_type", "expires_in", "refresh_token", "created"}
API = "https://api.weixin.qq.com/"
LIVE_APP_IDS = {"oa": "wx-live-oa-0001", "mp": "wx-live-mp-0002"}
LIVE_SECRETS = {"oa": "oa-app-secret", "mp": "mp-app-secret"}
SESSION_KEY = "SessionKeyThatMustNeverLeave=="


def new_code() -> str:
    """A WeChat code of a person nobody else in this module is."""
    return f"code-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="module")
def client(module_client: Client) -> Client:
    """One moto account for the whole module: each test uses its own phones and codes."""
    return module_client


def wechat_login(client: Client, **body: Any) -> Any:
    return client.http.post("/v1/auth/wechat", headers={"Content-Type": "application/json"}, body=json.dumps(body))


def me(client: Client, access_token: str) -> Any:
    return client.http.get("/v1/me", headers={"Authorization": f"Bearer {access_token}"})


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.json_body
    body = response.json_body
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["code"] == code
    return body["error"]


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def sign_up(client: Client, app: str, code: str, role: str = "patient") -> dict[str, Any]:
    """A new WeChat user: the 202 ticket, then the ticket with a role; returns the 201 body."""
    first = wechat_login(client, app=app, code=code)
    assert first.status_code == 202, first.json_body
    second = wechat_login(client, app=app, signup_ticket=first.json_body["signup_ticket"], role=role)
    assert second.status_code == 201, second.json_body
    return second.json_body


# --- sandbox ---------------------------------------------------------------------------------


def test_a_new_user_without_a_role_gets_a_signup_ticket(client: Client) -> None:
    response = wechat_login(client, app="mp", code=new_code())

    assert response.status_code == 202
    body = response.json_body
    assert set(body) == {"role_required", "signup_ticket", "expires_in"}
    assert body["role_required"] is True
    assert body["expires_in"] == tokens.SIGNUP_TICKET_SECONDS
    assert claims_of(body["signup_ticket"])["aud"] == "anes-wechat-signup"


def test_the_ticket_and_a_role_create_the_account(client: Client) -> None:
    # GIVEN a new mini-program user holding a sign-up ticket
    ticket = wechat_login(client, app="mp", code=new_code()).json_body["signup_ticket"]

    # WHEN they choose a role with it
    response = wechat_login(client, app="mp", signup_ticket=ticket, role="doctor")

    # THEN the account is created and signed in
    assert response.status_code == 201
    body = response.json_body
    assert set(body) == SESSION_KEYS
    assert (body["created"], body["role"]) == (True, "doctor")
    own = me(client, body["access_token"]).json_body
    assert (own["user_id"], own["role"], own["wechat_linked"], own["phone"]) == (body["user_id"], "doctor", True, None)


def test_a_code_with_a_role_signs_up_at_once(client: Client) -> None:
    response = wechat_login(client, app="oa", code=new_code(), role="hospital")

    assert response.status_code == 201
    assert (response.json_body["created"], response.json_body["role"]) == (True, "hospital")


def test_the_same_person_signs_in_again(client: Client) -> None:
    code = new_code()
    created = sign_up(client, "mp", code)

    response = wechat_login(client, app="mp", code=code)

    assert response.status_code == 200
    body = response.json_body
    assert set(body) == SESSION_KEYS
    assert (body["created"], body["user_id"], body["role"]) == (False, created["user_id"], "patient")


def test_a_role_sent_at_sign_in_changes_nothing(client: Client) -> None:
    code = new_code()
    created = sign_up(client, "mp", code, role="patient")

    response = wechat_login(client, app="mp", code=code, role="doctor")

    assert response.status_code == 200
    assert (response.json_body["user_id"], response.json_body["role"]) == (created["user_id"], "patient")


def test_the_other_app_finds_the_same_account_by_unionid(client: Client) -> None:
    # GIVEN a person who signed up in the mini program
    code = new_code()
    created = sign_up(client, "mp", code)

    # WHEN the same person signs in through the official account
    response = wechat_login(client, app="oa", code=code)

    # THEN it is the same account, which now knows the openid of both apps
    assert response.status_code == 200
    assert (response.json_body["created"], response.json_body["user_id"]) == (False, created["user_id"])
    assert me(client, response.json_body["access_token"]).json_body["wechat_linked"] is True
    account = Account.get(f"USER#{created['user_id']}", "PROFILE", consistent_read=True)
    openids = account.wechat_openids.as_dict()
    assert set(openids) == {"wx-sandbox-mp", "wx-sandbox-oa"}
    assert openids["wx-sandbox-mp"] != openids["wx-sandbox-oa"]
    assert account.wechat_unionid


def test_two_people_get_two_accounts(client: Client) -> None:
    first, second = sign_up(client, "mp", new_code()), sign_up(client, "mp", new_code())

    assert first["user_id"] != second["user_id"]


def test_a_ticket_cannot_make_a_second_account(client: Client) -> None:
    code = new_code()
    ticket = wechat_login(client, app="mp", code=code).json_body["signup_ticket"]
    created = wechat_login(client, app="mp", signup_ticket=ticket, role="patient").json_body

    # WHEN the ticket is sent again (a replay), even with another role
    again = wechat_login(client, app="mp", signup_ticket=ticket, role="doctor")

    # THEN it neither signs in nor makes a second account: only a fresh code signs in
    assert_error(again, 409, "already_signed_up")
    assert "access_token" not in again.json_body
    signed_in = wechat_login(client, app="mp", code=code).json_body
    assert (signed_in["user_id"], signed_in["role"]) == (created["user_id"], "patient")


@pytest.mark.parametrize("code", ["invalid-x", "invalid", "has space", "semi;colon", "x" * 65])
def test_a_refused_code_is_wechat_code_invalid(client: Client, code: str) -> None:
    error = assert_error(wechat_login(client, app="mp", code=code), 401, "wechat_code_invalid")

    assert error["details"]["reason"] == "40029"


def test_a_ticket_of_one_app_is_refused_by_the_other(client: Client) -> None:
    ticket = wechat_login(client, app="mp", code=new_code()).json_body["signup_ticket"]

    error = assert_error(wechat_login(client, app="oa", signup_ticket=ticket, role="patient"), 422, "validation_failed")

    assert error["details"]["field"] == "app"


def test_a_tampered_ticket_is_refused(client: Client) -> None:
    # GIVEN a real ticket whose identity is rewritten to another person's, signature kept
    ticket = wechat_login(client, app="mp", code=new_code()).json_body["signup_ticket"]
    header, _, signature = ticket.split(".")
    claims = claims_of(ticket)
    claims["wx"]["openid"] = claims["sub"] = "o-somebody-else"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")

    response = wechat_login(client, app="mp", signup_ticket=f"{header}.{forged_payload}.{signature}", role="patient")

    assert_error(response, 401, "invalid_token")


def test_an_expired_ticket_is_refused(client: Client) -> None:
    identity = {"app": "mp", "app_id": "wx-sandbox-mp", "openid": "o-late", "unionid": "u-late"}
    late = tokens.issue_signup_ticket(identity, datetime.now(UTC) - timedelta(seconds=tokens.SIGNUP_TICKET_SECONDS + 5))

    assert_error(wechat_login(client, app="mp", signup_ticket=late, role="patient"), 401, "token_expired")


@pytest.mark.parametrize("role", ["admin", "vip_hospital", "anon"])
def test_wechat_never_creates_an_admin(client: Client, role: str) -> None:
    error = assert_error(wechat_login(client, app="mp", code=new_code(), role=role), 422, "validation_failed")

    assert error["details"]["field"] == "role"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"app": "mp"}, "code"), ({"app": "web", "code": "abc"}, "app"), ({"code": "abc"}, None)],
    ids=["nothing-to-exchange", "unknown-app", "no-app"],
)
def test_a_malformed_wechat_request_is_refused(client: Client, body: dict[str, Any], field: str | None) -> None:
    error = assert_error(wechat_login(client, **body), 422, "validation_failed")

    if field is not None:
        assert error["details"]["field"] == field


def test_the_sandbox_never_answers_with_a_session_key(client: Client) -> None:
    code = new_code()
    texts = [
        json.dumps(wechat_login(client, app="mp", code=code).json_body),
        json.dumps(sign_up(client, "mp", new_code())),
        json.dumps(wechat_login(client, app="mp", code="invalid-1").json_body),
    ]

    assert all("session_key" not in text for text in texts)


# --- live mode (api.weixin.qq.com mocked) ----------------------------------------------------


@pytest.fixture
def live(monkeypatch: pytest.MonkeyPatch) -> Iterator[responses.RequestsMock]:
    """WeChat in live mode with real-looking app ids and secrets; every HTTP call must be mocked."""
    settings = dataclasses.replace(get_settings(), wechat_mode="live", wechat_app_ids=dict(LIVE_APP_IDS))
    keys = dataclasses.replace(get_keys(), wechat_secrets=dict(LIVE_SECRETS))
    monkeypatch.setattr(wechat, "get_settings", lambda: settings)
    monkeypatch.setattr(wechat, "get_keys", lambda: keys)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def oa_answer(mock: responses.RequestsMock, code: str, openid: str, unionid: str | None = None, **reply: Any) -> None:
    body = reply or {
        "access_token": "web-access-token",
        "expires_in": 7200,
        "refresh_token": "web-refresh-token",
        "openid": openid,
        "scope": "snsapi_base",
        **({"unionid": unionid} if unionid else {}),
    }
    mock.get(
        API + "sns/oauth2/access_token",
        json=body,
        match=[
            matchers.query_param_matcher(
                {
                    "appid": LIVE_APP_IDS["oa"],
                    "secret": LIVE_SECRETS["oa"],
                    "code": code,
                    "grant_type": "authorization_code",
                }
            )
        ],
    )


def mp_answer(mock: responses.RequestsMock, code: str, openid: str, unionid: str | None = None) -> None:
    mock.get(
        API + "sns/jscode2session",
        json={"openid": openid, "session_key": SESSION_KEY, **({"unionid": unionid} if unionid else {})},
        match=[
            matchers.query_param_matcher(
                {
                    "appid": LIVE_APP_IDS["mp"],
                    "secret": LIVE_SECRETS["mp"],
                    "js_code": code,
                    "grant_type": "authorization_code",
                }
            )
        ],
    )


def test_live_oa_exchanges_the_code_at_sns_oauth2(live: responses.RequestsMock) -> None:
    oa_answer(live, "OA-CODE-1", "o-oa-openid-1", "u-union-1")

    identity = wechat.exchange_code("oa", "OA-CODE-1")

    assert identity == wechat.WeChatIdentity("oa", LIVE_APP_IDS["oa"], "o-oa-openid-1", "u-union-1")
    assert len(live.calls) == 1
    assert live.calls[0].request.url.startswith(API + "sns/oauth2/access_token?")
    assert live.calls[0].request.req_kwargs["timeout"] == wechat.TIMEOUT_SECONDS


def test_live_mp_exchanges_the_code_at_jscode2session_and_drops_the_session_key(
    live: responses.RequestsMock,
) -> None:
    mp_answer(live, "MP-CODE-1", "o-mp-openid-1", "u-union-1")

    identity = wechat.exchange_code("mp", "MP-CODE-1")

    assert identity == wechat.WeChatIdentity("mp", LIVE_APP_IDS["mp"], "o-mp-openid-1", "u-union-1")
    assert SESSION_KEY not in repr(identity)
    assert "session_key" not in identity.as_claims()
    assert len(live.calls) == 1
    assert live.calls[0].request.url.startswith(API + "sns/jscode2session?")
    assert live.calls[0].request.req_kwargs["timeout"] == wechat.TIMEOUT_SECONDS


def test_live_without_unionid_keeps_the_openid(live: responses.RequestsMock) -> None:
    mp_answer(live, "MP-CODE-2", "o-mp-openid-2")

    assert wechat.exchange_code("mp", "MP-CODE-2").unionid is None


@pytest.mark.parametrize("app", ["oa", "mp"])
def test_live_refusal_is_wechat_code_invalid_with_the_errcode(live: responses.RequestsMock, app: str) -> None:
    endpoint = "sns/oauth2/access_token" if app == "oa" else "sns/jscode2session"
    live.get(API + endpoint, json={"errcode": 40029, "errmsg": "invalid code, rid: 1"})

    with pytest.raises(ApiError) as raised:
        wechat.exchange_code(app, "USED-CODE")

    assert (raised.value.status, raised.value.code) == (401, "wechat_code_invalid")
    assert raised.value.details == {"reason": "40029"}
    assert len(live.calls) == 1


def test_live_answer_without_openid_is_refused(live: responses.RequestsMock) -> None:
    live.get(API + "sns/jscode2session", json={"session_key": SESSION_KEY})

    with pytest.raises(ApiError) as raised:
        wechat.exchange_code("mp", "NO-OPENID")

    assert (raised.value.status, raised.value.code, raised.value.details) == (
        401,
        "wechat_code_invalid",
        {"reason": "no_openid"},
    )


@pytest.mark.parametrize("status", [500, 502, 503])
def test_live_http_failure_is_dependency_unavailable(live: responses.RequestsMock, status: int) -> None:
    live.get(API + "sns/oauth2/access_token", status=status, body="upstream failure")

    with pytest.raises(ApiError) as raised:
        wechat.exchange_code("oa", "ANY-CODE")

    assert (raised.value.status, raised.value.code) == (503, "dependency_unavailable")
    assert raised.value.details == {"dependency": "wechat"}
    assert len(live.calls) == 1


@pytest.mark.parametrize(
    "failure",
    [requests.exceptions.ConnectTimeout("timed out"), requests.exceptions.ConnectionError("refused"), None],
    ids=["timeout", "connection-refused", "html-body"],
)
def test_live_unreachable_wechat_is_dependency_unavailable(
    live: responses.RequestsMock, failure: Exception | None
) -> None:
    if failure is None:
        live.get(API + "sns/oauth2/access_token", body="<html>gateway error</html>", content_type="text/html")
    else:
        live.get(API + "sns/oauth2/access_token", body=failure)

    with pytest.raises(ApiError) as raised:
        wechat.exchange_code("oa", "ANY-CODE")

    assert (raised.value.status, raised.value.code) == (503, "dependency_unavailable")


def test_live_without_the_app_secret_fails_loudly(
    monkeypatch: pytest.MonkeyPatch, live: responses.RequestsMock
) -> None:
    keys = dataclasses.replace(get_keys(), wechat_secrets={"oa": "oa-app-secret"})
    monkeypatch.setattr(wechat, "get_keys", lambda: keys)

    with pytest.raises(RuntimeError, match="wechat_mp_secret"):
        wechat.exchange_code("mp", "ANY-CODE")
    assert len(live.calls) == 0


# --- live mode through the HTTP API ----------------------------------------------------------


def test_live_sign_up_and_sign_in_over_http_never_reveal_the_session_key(
    client: Client, live: responses.RequestsMock
) -> None:
    openid, unionid = f"o-{uuid.uuid4().hex[:20]}", f"u-{uuid.uuid4().hex[:20]}"
    mp_answer(live, "LIVE-MP-1", openid, unionid)
    mp_answer(live, "LIVE-MP-2", openid, unionid)
    oa_answer(live, "LIVE-OA-1", "o-oa-" + openid, unionid)

    # WHEN a new person signs up in the mini program, then signs in again in both apps
    first = wechat_login(client, app="mp", code="LIVE-MP-1")
    assert first.status_code == 202
    created = wechat_login(client, app="mp", signup_ticket=first.json_body["signup_ticket"], role="patient")
    assert created.status_code == 201
    again = wechat_login(client, app="mp", code="LIVE-MP-2")
    other_app = wechat_login(client, app="oa", code="LIVE-OA-1")

    # THEN one account, one HTTP call per code (no cgi-bin/token call) ...
    assert again.status_code == other_app.status_code == 200
    assert again.json_body["user_id"] == other_app.json_body["user_id"] == created.json_body["user_id"]
    assert [call.request.url.split("?")[0] for call in live.calls] == [
        API + "sns/jscode2session",
        API + "sns/jscode2session",
        API + "sns/oauth2/access_token",
    ]
    # ... and the session key in no response, not in the ticket, not in the table
    bodies = [first, created, again, other_app]
    for response in bodies:
        assert "session_key" not in response.body.decode()
        assert SESSION_KEY not in response.body.decode()
    assert "session_key" not in json.dumps(claims_of(first.json_body["signup_ticket"]))
    items = boto3.client("dynamodb").scan(TableName=get_settings().users_table)["Items"]
    assert SESSION_KEY not in json.dumps(items)


def test_live_refusal_over_http(client: Client, live: responses.RequestsMock) -> None:
    live.get(API + "sns/jscode2session", json={"errcode": 40029, "errmsg": "invalid code"})

    error = assert_error(wechat_login(client, app="mp", code="EXPIRED"), 401, "wechat_code_invalid")

    assert error["details"] == {"reason": "40029"}


def test_live_http_failure_over_http(client: Client, live: responses.RequestsMock) -> None:
    live.get(API + "sns/oauth2/access_token", status=500)

    error = assert_error(wechat_login(client, app="oa", code="ANY"), 503, "dependency_unavailable")

    assert error["details"] == {"dependency": "wechat"}
    assert len(live.calls) == 1
