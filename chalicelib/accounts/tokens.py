"""Access tokens (JWT), WeChat sign-up tickets and rotating refresh tokens.

Access tokens are HS256 JWTs with ``iss``, ``aud``, ``sub``, ``role``, ``iat`` and ``exp``;
the algorithm is pinned on decode, so ``alg: none`` and key-confusion tokens fail.
Refresh tokens are random strings stored by hash; each works once and is replaced by a
new one of the same family. Presenting a used one revokes the family.

Example
-------
>>> token, seconds = issue_access_token(Principal("u1", "doctor"), now)  # doctest: +SKIP
>>> verify_access_token(token)  # doctest: +SKIP
Principal(user_id='u1', role='doctor')
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pynamodb.exceptions import DoesNotExist

from chalicelib.accounts.roles import ACCOUNT_ROLES, Principal
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy
from chalicelib.models.users import RefreshToken, SessionFamily, UsersTable
from chalicelib.security.keys import get_keys

ALGORITHM = "HS256"
AUDIENCE = "anes-api"
SIGNUP_AUDIENCE = "anes-wechat-signup"
SIGNUP_TICKET_SECONDS = 10 * 60


def issuer() -> str:
    return f"anes:{get_settings().stage}"


def _invalid(code: str = "invalid_token", message: str = "The access token is not valid") -> ApiError:
    return ApiError(401, code, message, "登录凭证无效，请重新登录")


def issue_access_token(principal: Principal, now: datetime) -> tuple[str, int]:
    """A signed access token for ``principal`` and its lifetime in seconds."""
    import jwt

    lifetime = get_settings().access_token_seconds
    claims = {
        "iss": issuer(),
        "aud": AUDIENCE,
        "sub": principal.user_id,
        "role": principal.role,
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + lifetime,
    }
    return jwt.encode(claims, get_keys().jwt_signing_key, algorithm=ALGORITHM), lifetime


def _decode(token: str, audience: str) -> dict[str, Any]:
    import jwt

    try:
        return jwt.decode(
            token,
            get_keys().jwt_signing_key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer(),
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise _invalid("token_expired", "The token has expired") from None
    except jwt.PyJWTError:
        raise _invalid() from None


def verify_access_token(token: str) -> Principal:
    """The caller named by a valid access token; 401 ``ApiError`` otherwise."""
    claims = _decode(token, AUDIENCE)
    role, subject = claims.get("role"), claims.get("sub")
    if role not in ACCOUNT_ROLES or not isinstance(subject, str) or not subject:
        raise _invalid()
    return Principal(subject, role)


def issue_signup_ticket(identity: dict[str, str], now: datetime) -> str:
    """A short-lived ticket that lets a new WeChat user choose a role without a second code.

    WeChat codes work once, so the identity the first exchange returned travels in the
    signed ticket; ``session_key`` is never part of it.
    """
    import jwt

    claims = {
        "iss": issuer(),
        "aud": SIGNUP_AUDIENCE,
        "sub": identity["openid"],
        "wx": identity,
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + SIGNUP_TICKET_SECONDS,
    }
    return jwt.encode(claims, get_keys().jwt_signing_key, algorithm=ALGORITHM)


def read_signup_ticket(ticket: str) -> dict[str, str]:
    """The WeChat identity carried by a valid sign-up ticket."""
    identity = _decode(ticket, SIGNUP_AUDIENCE).get("wx")
    if not isinstance(identity, dict) or not identity.get("openid") or not identity.get("app"):
        raise _invalid()
    return {str(key): str(value) for key, value in identity.items()}


# --- refresh tokens -------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """What a successful sign-in or refresh returns to the client."""

    principal: Principal
    access_token: str
    expires_in: int
    refresh_token: str

    def as_response(self) -> dict[str, Any]:
        return {
            "user_id": self.principal.user_id,
            "role": self.principal.role,
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
        }


def _token_key(token: str) -> str:
    return "REFRESH#" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def _new_refresh_item(principal: Principal, family: str, now: datetime) -> tuple[str, RefreshToken]:
    token = secrets.token_urlsafe(32)
    item = RefreshToken(_token_key(token), "TOKEN")
    item.user_id, item.role, item.family = principal.user_id, principal.role, family
    item.issued_at = now.isoformat()
    item.expires_at = now + timedelta(seconds=get_settings().refresh_token_seconds)
    return token, item


def _connection() -> Any:
    # the models' own connection: one botocore client per container
    return UsersTable._get_connection().connection


SESSION_ATTEMPTS = 3
"""Sends of a new session's write before a conflict becomes 409 (a sign-up must not fail after the account exists)."""


def start_session(principal: Principal, now: datetime) -> Session:
    """Sign ``principal`` in: a new refresh-token family and the first tokens."""
    family = uuid.uuid4().hex
    refresh, item = _new_refresh_item(principal, family, now)
    session_family = SessionFamily(f"USER#{principal.user_id}", f"SESSION#{family}")
    session_family.created_at = now.isoformat()
    session_family.expires_at = item.expires_at  # a family lives as long as its newest token
    for attempt in range(SESSION_ATTEMPTS):
        batch = Batch()
        batch.put("family", session_family, condition=SessionFamily.pk.does_not_exist())
        batch.put("token", item, condition=RefreshToken.pk.does_not_exist())
        try:
            batch.commit(_connection())
            break
        except TransactionCancelledError as cancelled:
            if cancelled.failed:
                # fresh random keys exist only if an earlier send of this very write committed
                # (its answer lost): the session is there
                break
            if attempt == SESSION_ATTEMPTS - 1:
                raise busy() from None  # a concurrent transaction or throttling, every time: 409, retry
    access, lifetime = issue_access_token(principal, now)
    return Session(principal, access, lifetime, refresh)


def _revoke_family(user_id: str, family: str) -> None:
    SessionFamily(f"USER#{user_id}", f"SESSION#{family}").update(
        actions=[SessionFamily.revoked.set(True)], condition=SessionFamily.pk.exists()
    )


TOKEN_REUSED = ("refresh_token_reused", "The refresh token was already used; sign in again")


def _refresh_refused(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, "刷新凭证无效，请重新登录")


def refresh_session(token: str, now: datetime) -> Session:
    """Exchange a refresh token for new tokens; the old one stops working.

    The used-mark, the family check and the new token are one transaction, so two
    concurrent refreshes with one token can never both succeed.
    """
    try:
        current = RefreshToken.get(_token_key(token), "TOKEN", consistent_read=True)
    except DoesNotExist:
        raise _refresh_refused("invalid_refresh_token", "The refresh token is not valid") from None
    if current.expires_at is None or current.expires_at <= now:
        raise _refresh_refused("invalid_refresh_token", "The refresh token has expired")
    if current.used_at is not None:
        _revoke_family(current.user_id, current.family)
        raise _refresh_refused(*TOKEN_REUSED)
    principal = Principal(current.user_id, current.role)
    replacement, item = _new_refresh_item(principal, current.family, now)
    family = SessionFamily(f"USER#{principal.user_id}", f"SESSION#{current.family}")
    batch = Batch()
    batch.put("replacement", item, condition=RefreshToken.pk.does_not_exist())
    batch.update(
        "used_mark",
        current,
        actions=[RefreshToken.used_at.set(now.isoformat())],
        condition=RefreshToken.used_at.does_not_exist(),
    )
    batch.update(
        "family",
        family,
        actions=[SessionFamily.expires_at.set(item.expires_at)],
        condition=SessionFamily.revoked == False,  # noqa: E712
    )
    try:
        batch.commit(_connection())
    except TransactionCancelledError as cancelled:
        if "used_mark" in cancelled.failed:
            _revoke_family(current.user_id, current.family)
            raise _refresh_refused(*TOKEN_REUSED) from None
        if "family" in cancelled.failed:
            raise _refresh_refused("session_revoked", "This session was signed out; sign in again") from None
        raise busy() from None
    access, lifetime = issue_access_token(principal, now)
    return Session(principal, access, lifetime, replacement)
