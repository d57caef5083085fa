"""``handlers.access``: route declarations and what open routes do with a stale token."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from chalice import Blueprint

from chalicelib.accounts.roles import PATIENT, Principal
from chalicelib.accounts.tokens import issue_access_token
from chalicelib.clock import utc_now
from chalicelib.handlers.access import ALLOWED_ROLES_ATTRIBUTE, route

if TYPE_CHECKING:
    from chalice.test import Client

JSON = {"Content-Type": "application/json"}


def test_a_route_records_its_roles_on_the_view() -> None:
    bp = Blueprint(__name__)

    @route(bp, "/x", methods=["GET"], roles=[PATIENT])
    def view() -> dict[str, bool]:
        return {"ok": True}

    assert getattr(view, ALLOWED_ROLES_ATTRIBUTE) == frozenset({PATIENT})


@pytest.mark.parametrize("roles", [[], ["superuser"], [PATIENT, "root"]])
def test_a_route_needs_known_roles(roles: list[str]) -> None:
    with pytest.raises(ValueError, match="needs known roles"):
        route(Blueprint(__name__), "/x", methods=["GET"], roles=roles)


def test_refresh_works_even_when_the_expired_access_token_is_still_sent(client: Client) -> None:
    # GIVEN a signed-up patient whose access token has expired
    body = {"phone": "13812345678", "password": "s3cret-pass", "role": "patient"}
    session = client.http.post("/v1/auth/register", headers=JSON, body=json.dumps(body)).json_body
    expired, _ = issue_access_token(Principal(session["user_id"], PATIENT), utc_now() - timedelta(hours=2))

    # WHEN the client refreshes, its HTTP layer still attaching the old Authorization header
    response = client.http.post(
        "/v1/auth/refresh",
        headers={**JSON, "Authorization": f"Bearer {expired}"},
        body=json.dumps({"refresh_token": session["refresh_token"]}),
    )

    # THEN it gets new tokens (the refresh token is the credential of this route)
    assert response.status_code == 200, response.json_body


@pytest.mark.parametrize("header", ["Bearer not-a-jwt", "Basic dXNlcjpwYXNz", "Bearer "])
def test_an_open_route_treats_a_bad_authorization_header_as_anonymous(client: Client, header: str) -> None:
    response = client.http.get("/health", headers={"Authorization": header})

    assert response.status_code == 200
