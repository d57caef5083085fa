"""Access tokens and refresh tokens, attacked through the HTTP API.

Every forged, stale or misdirected token must be answered 401 in the error shape on a
protected route (``GET /v1/me``). Tokens are crafted by hand (base64url header and
payload, HMAC signature) so no JWT library can quietly "fix" them.

One moto account serves the whole module (the tests only read the shared patient; each
refresh test starts a session family of its own), which keeps ~60 tests fast.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.accounts import tokens
from chalicelib.accounts.roles import Principal
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.models.users import RefreshToken, SessionFamily
from chalicelib.security.keys import get_keys

if TYPE_CHECKING:
    from chalice.test import Client

ERROR_KEYS = {"code", "message", "message_zh", "details", "request_id"}
ME = "/v1/me"


# --- helpers ---------------------------------------------------------------------------------


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unb64url_json(part: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def hs256(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    """A JWT signed by hand with HMAC-SHA256 over whatever header and claims are given."""
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def good_claims(user_id: str, role: str = "patient", **overrides: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    claims: dict[str, Any] = {
        "iss": f"anes:{get_settings().stage}",
        "aud": "anes-api",
        "sub": user_id,
        "role": role,
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return claims


def post_json(client: Client, path: str, body: dict[str, Any]) -> Any:
    return client.http.post(path, headers={"Content-Type": "application/json"}, body=json.dumps(body))


def register(client: Client, phone: str = "13812345678", role: str = "patient") -> dict[str, Any]:
    response = post_json(client, "/v1/auth/register", {"phone": phone, "password": "correct horse 1", "role": role})
    assert response.status_code == 201, response.json_body
    return response.json_body


def get_me(client: Client, authorization: str | None) -> Any:
    headers = {} if authorization is None else {"Authorization": authorization}
    return client.http.get(ME, headers=headers)


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.json_body
    body = response.json_body
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["code"] == code
    return body["error"]


@pytest.fixture(scope="module")
def client(module_client: Client) -> Client:
    """One moto account for the whole module: each test uses its own phones and codes."""
    return module_client


@pytest.fixture(scope="module")
def patient(client: Client) -> dict[str, Any]:
    """A registered patient: the sign-up response (user_id, tokens). Shared: never refresh its token."""
    return register(client)


@pytest.fixture
def session(patient: dict[str, Any]) -> tokens.Session:
    """A fresh sign-in of the shared patient: a refresh-token family of this test's own."""
    return tokens.start_session(Principal(patient["user_id"], "patient"), datetime.now(UTC))


# --- access tokens ---------------------------------------------------------------------------


def test_a_valid_token_is_accepted(client: Client, patient: dict[str, Any]) -> None:
    response = get_me(client, f"Bearer {patient['access_token']}")

    assert response.status_code == 200
    assert response.json_body["user_id"] == patient["user_id"]
    assert response.json_body["role"] == "patient"


def test_a_hand_made_token_with_the_real_key_is_accepted(client: Client, patient: dict[str, Any]) -> None:
    # the crafting helper itself must produce tokens the server accepts, or the attacks below prove nothing
    token = hs256({"alg": "HS256", "typ": "JWT"}, good_claims(patient["user_id"]), get_keys().jwt_signing_key)

    assert get_me(client, f"Bearer {token}").status_code == 200


def test_no_authorization_header_is_unauthorized(client: Client) -> None:
    assert_error(get_me(client, None), 401, "unauthorized")


@pytest.mark.parametrize("header", ["Token x", "Bearer ", "Bearer", "Basic dXNlcjpwYXNz", "   "])
def test_a_malformed_authorization_header_is_refused(client: Client, header: str) -> None:
    assert_error(get_me(client, header), 401, "invalid_token")


@pytest.mark.parametrize("token", ["x", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30."])
def test_garbage_tokens_are_refused(client: Client, token: str) -> None:
    assert_error(get_me(client, f"Bearer {token}"), 401, "invalid_token")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_an_unsigned_alg_none_token_is_refused(client: Client, patient: dict[str, Any], alg: str) -> None:
    # GIVEN a token that claims to need no signature, for a real user, as admin
    claims = good_claims(patient["user_id"], role="admin")
    unsigned = f"{b64url_json({'alg': alg, 'typ': 'JWT'})}.{b64url_json(claims)}."

    # THEN it is refused, with or without a trailing signature part
    assert_error(get_me(client, f"Bearer {unsigned}"), 401, "invalid_token")
    assert_error(get_me(client, f"Bearer {unsigned[:-1]}"), 401, "invalid_token")


def test_a_token_signed_with_another_key_is_refused(client: Client, patient: dict[str, Any]) -> None:
    token = hs256({"alg": "HS256", "typ": "JWT"}, good_claims(patient["user_id"]), b"k" * 32)

    assert_error(get_me(client, f"Bearer {token}"), 401, "invalid_token")


def _rsa_public_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize(
    "public_key",
    [b"", b"secret", b"anes", b"anes-api", b"anes:local", _rsa_public_pem()],
    ids=["empty", "secret", "app-name", "audience", "issuer", "rsa-public-key"],
)
def test_an_hs256_token_keyed_with_something_public_is_refused(
    client: Client, patient: dict[str, Any], public_key: bytes
) -> None:
    token = hs256({"alg": "HS256", "typ": "JWT"}, good_claims(patient["user_id"]), public_key)

    assert_error(get_me(client, f"Bearer {token}"), 401, "invalid_token")


def test_another_hmac_algorithm_with_the_real_key_is_refused(client: Client, patient: dict[str, Any]) -> None:
    # the algorithm is pinned to HS256: HS512 signed with the very key must still fail
    header, claims = b64url_json({"alg": "HS512", "typ": "JWT"}), b64url_json(good_claims(patient["user_id"]))
    signature = hmac.new(get_keys().jwt_signing_key, f"{header}.{claims}".encode(), hashlib.sha512).digest()

    assert_error(get_me(client, f"Bearer {header}.{claims}.{b64url(signature)}"), 401, "invalid_token")


def test_an_expired_token_is_refused(client: Client, patient: dict[str, Any]) -> None:
    # GIVEN a token issued well over its lifetime ago
    long_ago = datetime.now(UTC) - timedelta(seconds=get_settings().access_token_seconds + 120)
    token, _ = tokens.issue_access_token(Principal(patient["user_id"], "patient"), long_ago)

    # THEN it is refused as expired
    assert_error(get_me(client, f"Bearer {token}"), 401, "token_expired")


@pytest.mark.parametrize(
    "override",
    [
        {"aud": "another-api"},
        {"aud": "anes-wechat-signup"},
        {"iss": "anes:prod"},
        {"iss": "someone-else"},
    ],
    ids=["aud-other", "aud-signup", "iss-other-stage", "iss-foreign"],
)
def test_a_token_for_another_audience_or_issuer_is_refused(
    client: Client, patient: dict[str, Any], override: dict[str, str]
) -> None:
    token = hs256(
        {"alg": "HS256", "typ": "JWT"}, good_claims(patient["user_id"], **override), get_keys().jwt_signing_key
    )

    assert_error(get_me(client, f"Bearer {token}"), 401, "invalid_token")


@pytest.mark.parametrize("missing", ["sub", "exp", "iss", "aud", "iat"])
def test_a_token_missing_a_required_claim_is_refused(client: Client, patient: dict[str, Any], missing: str) -> None:
    claims = good_claims(patient["user_id"])
    del claims[missing]
    token = hs256({"alg": "HS256", "typ": "JWT"}, claims, get_keys().jwt_signing_key)

    assert_error(get_me(client, f"Bearer {token}"), 401, "invalid_token")


@pytest.mark.parametrize("subject", ["", 42, None])
def test_a_token_with_an_unusable_subject_is_refused(client: Client, subject: object) -> None:
    token = hs256({"alg": "HS256", "typ": "JWT"}, good_claims("x", sub=subject), get_keys().jwt_signing_key)

    assert_error(get_me(client, f"Bearer {token}"), 401, "invalid_token")


@pytest.mark.parametrize("role", ["superuser", "vip_hospital", "anon", "ADMIN", "", None])
def test_a_token_with_an_unknown_role_is_refused(client: Client, patient: dict[str, Any], role: object) -> None:
    claims = good_claims(patient["user_id"])
    claims["role"] = role
    token = hs256({"alg": "HS256", "typ": "JWT"}, claims, get_keys().jwt_signing_key)

    assert_error(get_me(client, f"Bearer {token}"), 401, "invalid_token")


def test_a_token_without_a_role_is_refused(client: Client, patient: dict[str, Any]) -> None:
    claims = good_claims(patient["user_id"])
    del claims["role"]
    token = hs256({"alg": "HS256", "typ": "JWT"}, claims, get_keys().jwt_signing_key)

    assert_error(get_me(client, f"Bearer {token}"), 401, "invalid_token")


def test_a_tampered_role_claim_is_refused(client: Client, patient: dict[str, Any]) -> None:
    # GIVEN a real patient token whose payload is rewritten to say admin, signature kept
    header, payload, signature = patient["access_token"].split(".")
    claims = unb64url_json(payload)
    assert claims["role"] == "patient"
    claims["role"] = "admin"
    forged = f"{header}.{b64url_json(claims)}.{signature}"

    # THEN the forged token is refused, and the original still works
    assert_error(get_me(client, f"Bearer {forged}"), 401, "invalid_token")
    assert get_me(client, f"Bearer {patient['access_token']}").status_code == 200


def test_a_tampered_token_cannot_reach_an_admin_route(client: Client, patient: dict[str, Any]) -> None:
    header, payload, signature = patient["access_token"].split(".")
    claims = {**unb64url_json(payload), "role": "admin"}
    forged = f"{header}.{b64url_json(claims)}.{signature}"

    response = client.http.get("/v1/admin/verifications", headers={"Authorization": f"Bearer {forged}"})

    assert_error(response, 401, "invalid_token")


def test_a_wechat_signup_ticket_is_not_an_access_token(client: Client) -> None:
    # GIVEN a valid sign-up ticket (same key, same issuer, another audience)
    identity = {"app": "mp", "app_id": "wx-sandbox-mp", "openid": "o-someone"}
    ticket = tokens.issue_signup_ticket(identity, datetime.now(UTC))

    # THEN it does not authenticate
    assert_error(get_me(client, f"Bearer {ticket}"), 401, "invalid_token")


def test_an_access_token_is_not_a_wechat_signup_ticket(client: Client, patient: dict[str, Any]) -> None:
    response = post_json(
        client, "/v1/auth/wechat", {"app": "mp", "signup_ticket": patient["access_token"], "role": "doctor"}
    )

    assert_error(response, 401, "invalid_token")


def test_a_refresh_token_is_not_an_access_token(client: Client, patient: dict[str, Any]) -> None:
    assert_error(get_me(client, f"Bearer {patient['refresh_token']}"), 401, "invalid_token")


# --- refresh tokens --------------------------------------------------------------------------


def refresh(client: Client, token: str) -> Any:
    return post_json(client, "/v1/auth/refresh", {"refresh_token": token})


def test_a_refresh_token_gives_new_working_tokens(client: Client, session: tokens.Session) -> None:
    response = refresh(client, session.refresh_token)

    assert response.status_code == 200
    body = response.json_body
    assert body["user_id"] == session.principal.user_id
    assert body["role"] == "patient"
    assert body["token_type"] == "Bearer"
    assert body["refresh_token"] != session.refresh_token
    assert get_me(client, f"Bearer {body['access_token']}").status_code == 200


def test_the_refresh_token_of_a_sign_up_works(client: Client) -> None:
    signed_up = register(client, phone="13812340001")

    assert refresh(client, signed_up["refresh_token"]).status_code == 200


def test_a_refresh_token_works_once_and_reuse_revokes_the_family(client: Client, session: tokens.Session) -> None:
    # GIVEN the first refresh succeeded
    first = refresh(client, session.refresh_token)
    assert first.status_code == 200
    replacement = first.json_body["refresh_token"]

    # WHEN the used token is presented again (a thief or a replay)
    again = refresh(client, session.refresh_token)

    # THEN it is refused as reused, and the replacement of the family is dead too
    assert_error(again, 401, "refresh_token_reused")
    family = SessionFamily.get(f"USER#{session.principal.user_id}", f"SESSION#{family_of(session)}")
    assert family.revoked is True
    assert_error(refresh(client, replacement), 401, "session_revoked")


def family_of(session: tokens.Session) -> str:
    key = "REFRESH#" + hashlib.sha256(session.refresh_token.encode()).hexdigest()
    return RefreshToken.get(key, "TOKEN", consistent_read=True).family


def test_two_refreshes_racing_with_one_token_cannot_both_succeed(
    session: tokens.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN two requests that both read the token before either marked it used
    key = "REFRESH#" + hashlib.sha256(session.refresh_token.encode()).hexdigest()
    stale = RefreshToken.get(key, "TOKEN", consistent_read=True)
    now = datetime.now(UTC)
    tokens.refresh_session(session.refresh_token, now)  # the first one wins
    monkeypatch.setattr(RefreshToken, "get", lambda *args, **kwargs: stale)

    # WHEN the second one commits
    with pytest.raises(ApiError) as raised:
        tokens.refresh_session(session.refresh_token, now)

    # THEN it is refused as a reuse, and the family is revoked
    assert (raised.value.status, raised.value.code) == (401, "refresh_token_reused")
    monkeypatch.undo()
    family = SessionFamily.get(f"USER#{session.principal.user_id}", f"SESSION#{stale.family}", consistent_read=True)
    assert family.revoked is True


def test_revoking_one_family_leaves_other_sessions_alone(client: Client, patient: dict[str, Any]) -> None:
    # GIVEN two sign-ins of one person (two families)
    now = datetime.now(UTC)
    principal = Principal(patient["user_id"], "patient")
    stolen, other = tokens.start_session(principal, now), tokens.start_session(principal, now)

    # WHEN the first family is revoked by reuse
    assert refresh(client, stolen.refresh_token).status_code == 200
    assert_error(refresh(client, stolen.refresh_token), 401, "refresh_token_reused")

    # THEN the other session still refreshes
    assert refresh(client, other.refresh_token).status_code == 200


def test_a_rotated_chain_keeps_working(client: Client, session: tokens.Session) -> None:
    token = session.refresh_token
    for _ in range(3):
        response = refresh(client, token)
        assert response.status_code == 200
        token = response.json_body["refresh_token"]


def test_an_unknown_refresh_token_is_refused(client: Client) -> None:
    assert_error(refresh(client, "A" * 43), 401, "invalid_refresh_token")


def test_an_expired_refresh_token_is_refused(client: Client, patient: dict[str, Any]) -> None:
    # GIVEN a session started longer ago than a refresh token lives
    long_ago = datetime.now(UTC) - timedelta(seconds=get_settings().refresh_token_seconds + 60)
    old = tokens.start_session(Principal(patient["user_id"], "patient"), long_ago)

    # THEN its refresh token is refused
    assert_error(refresh(client, old.refresh_token), 401, "invalid_refresh_token")


def test_a_refresh_token_just_inside_its_lifetime_still_works(client: Client, patient: dict[str, Any]) -> None:
    # the expiry check must not refuse every old token (guards the test above against a trivial pass)
    recently = datetime.now(UTC) - timedelta(seconds=get_settings().refresh_token_seconds - 300)
    old = tokens.start_session(Principal(patient["user_id"], "patient"), recently)

    assert refresh(client, old.refresh_token).status_code == 200
