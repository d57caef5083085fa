"""Accounts: sign-up and sign-in, the personal centre, the calendar and verification (C1, M-a–M-c).

Each view imports its domain module when first called: every Lambda function (jobs and
stream consumers too) imports this module with ``app.py``, and only the API needs them.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

import msgspec
from chalice import Blueprint, Response

from chalicelib.accounts.roles import ANON, DOCTOR, HOSPITAL, SIGNED_IN
from chalicelib.clock import utc_now
from chalicelib.handlers.access import current_principal, route
from chalicelib.validation import parse, parse_query

bp = Blueprint(__name__)

SelfServiceRole = Literal["patient", "doctor", "hospital"]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=128)]
PhoneText = Annotated[str, msgspec.Meta(min_length=5, max_length=20)]


class PhoneRegistration(msgspec.Struct, forbid_unknown_fields=True):
    phone: PhoneText
    password: Password
    role: SelfServiceRole
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=40)] | None = None


class PhoneLogin(msgspec.Struct, forbid_unknown_fields=True):
    phone: PhoneText
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class WeChatLogin(msgspec.Struct, forbid_unknown_fields=True):
    app: Literal["oa", "mp"]
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    signup_ticket: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None
    role: SelfServiceRole | None = None


class RefreshRequest(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Annotated[str, msgspec.Meta(min_length=16, max_length=128)]


class CalendarQuery(msgspec.Struct, forbid_unknown_fields=True, rename={"start": "from", "end": "to"}):
    start: date | None = None
    end: date | None = None


def _body() -> Any:
    return bp.current_request.json_body


@route(bp, "/v1/auth/register", methods=["POST"], roles=[ANON])
def register() -> Response:
    """Sign up with a mainland mobile number and a password."""
    from chalicelib.accounts import signin
    from chalicelib.accounts.identifiers import mainland_mobile

    request = parse(_body(), PhoneRegistration)
    phone = mainland_mobile(request.phone)
    session = signin.register_with_phone(phone, request.password, request.role, request.name, utc_now())
    return Response({**session.as_response(), "created": True}, status_code=201)


@route(bp, "/v1/auth/login", methods=["POST"], roles=[ANON])
def login() -> dict[str, Any]:
    """Sign in with phone and password (failed attempts are limited per phone)."""
    from chalicelib.accounts import signin
    from chalicelib.accounts.identifiers import mainland_mobile

    request = parse(_body(), PhoneLogin)
    return signin.login_with_phone(mainland_mobile(request.phone), request.password, utc_now()).as_response()


@route(bp, "/v1/auth/wechat", methods=["POST"], roles=[ANON])
def wechat_login() -> Response:
    """Sign in or up with a WeChat code; a new user without a role gets a ticket to choose one."""
    from chalicelib.accounts import signin

    request = parse(_body(), WeChatLogin)
    status, body = signin.login_with_wechat(request.app, request.code, request.signup_ticket, request.role, utc_now())
    return Response(body, status_code=status)


@route(bp, "/v1/auth/refresh", methods=["POST"], roles=[ANON])
def refresh() -> dict[str, Any]:
    """New tokens for a refresh token; the old refresh token stops working."""
    from chalicelib.accounts import tokens

    request = parse(_body(), RefreshRequest)
    return tokens.refresh_session(request.refresh_token, utc_now()).as_response()


@route(bp, "/v1/me", methods=["GET"], roles=SIGNED_IN)
def get_me() -> dict[str, Any]:
    """The caller's own profile."""
    from chalicelib.accounts import profiles

    return profiles.own_view(profiles.load_account(current_principal().user_id))


@route(bp, "/v1/me", methods=["PATCH"], roles=SIGNED_IN)
def patch_me() -> dict[str, Any]:
    """Change the caller's own profile fields."""
    from chalicelib.accounts import profiles

    return profiles.update_profile(current_principal(), parse(_body(), profiles.ProfilePatch), utc_now())


@route(bp, "/v1/me/calendar", methods=["GET"], roles=[DOCTOR])
def get_calendar() -> dict[str, Any]:
    """The doctor's days from ``from`` to ``to`` (default: today and the next 90 days)."""
    from chalicelib.doctors import calendar

    query = parse_query(bp.current_request.query_params, CalendarQuery)
    return calendar.view(current_principal().user_id, query.start, query.end, utc_now())


@route(bp, "/v1/me/calendar", methods=["PUT"], roles=[DOCTOR])
def put_calendar() -> dict[str, Any]:
    """Set working days and capacities, by day or by range."""
    from chalicelib.doctors import calendar

    return calendar.set_days(current_principal().user_id, parse(_body(), calendar.CalendarUpdate), utc_now())


@route(bp, "/v1/me/verification", methods=["POST"], roles=[DOCTOR, HOSPITAL])
def submit_verification() -> Response:
    """Submit credentials for the back office's review."""
    from chalicelib.accounts import verification

    result = verification.submit(current_principal(), parse(_body(), verification.Credentials), utc_now())
    return Response(result, status_code=202)


@route(bp, "/v1/me/membership", methods=["GET"], roles=[HOSPITAL])
def get_membership() -> dict[str, Any]:
    """The hospital's VIP status and end date."""
    from chalicelib.accounts import memberships

    return memberships.view(current_principal().user_id, utc_now())
