"""Every route × every role × own / other's object: who gets past the role check, and what they see.

``EXPECTED`` is the table: for each (method, path) the roles that may call it, a minimal
body, and the status an admitted caller gets (``ok``, with per-cell exceptions in
``cells``). A route of the app missing from the table, or registered without roles
(plain ``bp.route``), fails ``test_every_route_declares_roles_and_is_in_the_table``.

Callers: ``anon`` (no token), ``patient``, ``doctor`` (verified), ``hospital`` (verified,
no membership), ``vip_hospital`` (verified, active membership) and ``admin``. A caller who
may not call a route gets 401 ``unauthorized`` (anon) or 403 ``forbidden`` (a hospital
without membership on a VIP route: 403 ``membership_required``).

The world (accounts, hospitals) is built once for the module; every cell's request is
chosen so that it does not change what another cell sees. Invitations, payment orders and
complaints are not part of it: their routes get ids that name nothing (``FIXED_PARAMS``), so an
admitted caller gets the 404 their ownership check gives any id that is not theirs. The
table checks the role gate; who sees which invitation is the flows' to test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from chalice import Blueprint, Chalice
from chalice.test import Client
from moto import mock_aws

from chalicelib.accounts.roles import ADMIN, ANON, DOCTOR, HOSPITAL, PATIENT, VIP_HOSPITAL
from chalicelib.clock import shanghai_date
from chalicelib.directory.hospitals import add_hospital
from chalicelib.handlers.access import ALLOWED_ROLES_ATTRIBUTE, route
from tests.unit import actors
from tests.unit.actors import DOCTOR_CREDENTIALS, HOSPITAL_CREDENTIALS, PASSWORD, call
from tests.unit.conftest import PROJECT_DIR

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ACTORS = ("anon", "patient", "doctor", "hospital", "vip_hospital", "admin")
ANYONE = frozenset({ANON})
SIGNED_IN = frozenset({PATIENT, DOCTOR, HOSPITAL, ADMIN})
REQUESTERS = frozenset({PATIENT, VIP_HOSPITAL})
"""Who may invite: patients, and hospitals with an active membership."""
OWN_REQUESTERS = frozenset({PATIENT, HOSPITAL})
"""Who may act on invitations they made (a hospital whose membership ended still may)."""
PARTIES = frozenset({PATIENT, DOCTOR, HOSPITAL})
"""Who takes part in invitations: their requesters and their doctors."""
NO_INVITATION = "matrix-no-such-invitation"
OBJECT_PARAMS = ("hospital_id", "doctor_id", "user_id", "hospital_user_id")
"""Path parameters that name an object someone may own, tried with the caller's own and another's;
the others (``{kind}``, and ids of objects the world has none of) take a value of ``FIXED_PARAMS``."""


@dataclass
class World:
    """The accounts every cell acts as or on."""

    client: Client
    callers: dict[str, actors.Actor]
    hospital_of: dict[str, str]
    other_hospital: str
    other_doctor: actors.Actor
    spare_hospital: actors.Actor


Body = Any  # a JSON value, or a function of (world, caller name) giving one


@dataclass(frozen=True)
class Row:
    """What the table says of one route."""

    roles: frozenset[str]
    ok: int | None = None
    """The status of an admitted caller (None: anything but 401/403)."""
    body: Body = None
    cells: dict[str, int] = field(default_factory=dict)
    """Exceptions to ``ok``: ``"<caller>"`` or ``"<caller>/<own|other>"`` → status."""
    owner: str | None = None
    """A field of the answer that must be the caller's own user id."""


def _tomorrow() -> str:
    return (shanghai_date(datetime.now(UTC)) + timedelta(days=1)).isoformat()


def _credentials(world: World, caller: str) -> dict[str, str]:
    return DOCTOR_CREDENTIALS if caller == "doctor" else HOSPITAL_CREDENTIALS


def _own_fields(world: World, caller: str) -> dict[str, str]:
    return {"contact_name": "Matrix"} if caller in ("hospital", "vip_hospital") else {"name": "Matrix"}


def _invitation_request(world: World, caller: str) -> dict[str, str]:
    """A valid request to a doctor who does not exist: 404 ``doctor_not_found``, nothing is created."""
    return {
        "kind": "consultation",
        "doctor_id": "matrix-no-such-doctor",
        "hospital_id": world.other_hospital,
        "date": _tomorrow(),
        "time": "10:00",
    }


EXPECTED: dict[tuple[str, str], Row] = {
    # service
    ("GET", "/health"): Row(ANYONE, ok=200),
    ("GET", "/openapi.json"): Row(ANYONE, ok=200),
    # sign-up and sign-in: anyone, with or without a token
    ("POST", "/v1/auth/register"): Row(
        ANYONE,
        ok=201,
        body=lambda w, c: {"phone": actors.fresh_phone(), "password": PASSWORD, "role": "patient"},
    ),
    ("POST", "/v1/auth/login"): Row(
        ANYONE, ok=200, body=lambda w, c: {"phone": w.callers["patient"].phone, "password": PASSWORD}
    ),
    ("POST", "/v1/auth/wechat"): Row(ANYONE, ok=202, body={"app": "mp", "code": "matrix-newcomer"}),
    ("POST", "/v1/auth/refresh"): Row(
        ANYONE,
        ok=200,
        body=lambda w, c: {"refresh_token": actors.login(w.client, w.callers["patient"].phone).refresh_token},
    ),
    # the personal centre
    ("GET", "/v1/me"): Row(SIGNED_IN, ok=200, owner="user_id"),
    ("PATCH", "/v1/me"): Row(SIGNED_IN, ok=200, body=_own_fields, owner="user_id"),
    ("GET", "/v1/me/calendar"): Row(frozenset({DOCTOR}), ok=200),
    ("PUT", "/v1/me/calendar"): Row(
        frozenset({DOCTOR}),
        ok=200,
        body=lambda w, c: {"days": [{"date": _tomorrow(), "working": True, "invitation_capacity": 1}]},
    ),
    # every doctor and hospital of the world is verified already
    ("POST", "/v1/me/verification"): Row(frozenset({DOCTOR, HOSPITAL}), ok=409, body=_credentials),
    ("GET", "/v1/me/membership"): Row(frozenset({HOSPITAL}), ok=200, owner="hospital_user_id"),
    # directory and discovery
    ("GET", "/v1/hospitals"): Row(ANYONE, ok=200),
    ("GET", "/v1/hospitals/{hospital_id}/anesthesiologists"): Row(SIGNED_IN, ok=200),
    ("GET", "/v1/anesthesiologists"): Row(frozenset({VIP_HOSPITAL, ADMIN}), ok=200),
    # own: the caller's own id (only the doctor's is a storefront); other: an unverified doctor
    ("GET", "/v1/anesthesiologists/{doctor_id}"): Row(SIGNED_IN, ok=404, cells={"doctor/own": 200, "admin/other": 200}),
    ("GET", "/v1/qrcodes/{kind}"): Row(ANYONE, ok=200),
    # back office: nobody in the world is pending, so a decision is 409 not_pending
    ("GET", "/v1/admin/verifications"): Row(frozenset({ADMIN}), ok=200),
    ("POST", "/v1/admin/verifications/{user_id}/approve"): Row(frozenset({ADMIN}), ok=409),
    ("POST", "/v1/admin/verifications/{user_id}/reject"): Row(frozenset({ADMIN}), ok=409, body={"reason": "matrix"}),
    ("POST", "/v1/admin/hospitals"): Row(
        frozenset({ADMIN}),
        ok=201,
        body=lambda w, c: {"name": actors.unique("Matrix Hospital "), "city": "Matrix", "province": "Matrix"},
    ),
    # own: the admin's own id (not a hospital); other: a hospital account nobody else uses
    ("PUT", "/v1/admin/memberships/{hospital_user_id}"): Row(
        frozenset({ADMIN}),
        body=lambda w, c: {
            "active": True,
            "reference": "matrix",
            "ends_on": (shanghai_date(datetime.now(UTC)) + timedelta(days=30)).isoformat(),
        },
        cells={"admin/own": 404, "admin/other": 200},
    ),
    ("GET", "/v1/admin/ledger/check"): Row(frozenset({ADMIN}), ok=200),
    # complaints: the world has none, so a decision on an id that names nothing is 404 complaint_not_found
    ("GET", "/v1/admin/complaints"): Row(frozenset({ADMIN}), ok=200),
    ("POST", "/v1/admin/complaints/{complaint_id}/confirm"): Row(
        frozenset({ADMIN}), ok=404, body={"reason": "matrix", "refund": True}
    ),
    ("POST", "/v1/admin/complaints/{complaint_id}/reject"): Row(frozenset({ADMIN}), ok=404, body={"reason": "matrix"}),
    # invitations: the ids name nothing, so whoever passes the role gate gets 404 invitation_not_found
    ("POST", "/v1/invitations"): Row(REQUESTERS, ok=404, body=_invitation_request),
    ("GET", "/v1/invitations"): Row(PARTIES, ok=200),
    ("GET", "/v1/invitations/{invitation_id}"): Row(SIGNED_IN, ok=404),
    ("POST", "/v1/invitations/{invitation_id}/accept"): Row(frozenset({DOCTOR}), ok=404),
    ("POST", "/v1/invitations/{invitation_id}/decline"): Row(frozenset({DOCTOR}), ok=404, body={"reason": "matrix"}),
    ("POST", "/v1/invitations/{invitation_id}/cancel"): Row(OWN_REQUESTERS, ok=404, body={"reason": "matrix"}),
    ("GET", "/v1/invitations/{invitation_id}/refund-preview"): Row(OWN_REQUESTERS, ok=404),
    ("POST", "/v1/invitations/{invitation_id}/complete"): Row(frozenset({DOCTOR}), ok=404),
    ("POST", "/v1/invitations/{invitation_id}/confirm"): Row(OWN_REQUESTERS, ok=404),
    ("GET", "/v1/invitations/{invitation_id}/messages"): Row(PARTIES | {ADMIN}, ok=404),
    ("POST", "/v1/invitations/{invitation_id}/messages"): Row(PARTIES, ok=404, body={"text": "matrix"}),
    ("POST", "/v1/invitations/{invitation_id}/review"): Row(OWN_REQUESTERS, ok=404, body={"rating": 5}),
    ("POST", "/v1/invitations/{invitation_id}/complaints"): Row(
        OWN_REQUESTERS, ok=404, body={"category": "other", "details": "matrix"}
    ),
    # money: an order for an invitation that does not exist is 404 invitation_not_found
    ("POST", "/v1/payments"): Row(
        OWN_REQUESTERS, ok=404, body={"purpose": "invitation", "reference": NO_INVITATION, "channel": "sandbox"}
    ),
    ("GET", "/v1/payments/{order_id}"): Row(SIGNED_IN, ok=404),
    ("GET", "/v1/me/wallet"): Row(frozenset({DOCTOR}), ok=200),
    ("GET", "/v1/me/transactions"): Row(SIGNED_IN, ok=200),
    ("GET", "/v1/me/payout-accounts"): Row(frozenset({DOCTOR}), ok=200),
    # a WeChat payee needs a linked WeChat account: 422 leaves the doctor's account untouched
    ("POST", "/v1/me/payout-accounts"): Row(frozenset({DOCTOR}), ok=422, body={"kind": "wechat", "app": "oa"}),
    ("GET", "/v1/withdrawals"): Row(frozenset({DOCTOR}), ok=200),
    ("POST", "/v1/withdrawals"): Row(
        frozenset({DOCTOR}), ok=404, body={"amount_fen": 1000, "payout_account_id": "matrix-no-such-account"}
    ),
    # anonymous: a provider this stage takes no callbacks from (404 provider_not_found: the sandbox's own
    # answer to an unsigned request is a 401 of WeChat's format); the sandbox has no such order
    ("POST", "/v1/payments/callbacks/{provider}"): Row(ANYONE, ok=404),
    ("POST", "/v1/sandbox/orders/{order_id}/pay"): Row(ANYONE, ok=404, body={}),
}

FIXED_PARAMS = {
    "kind": "patient-entry",
    "invitation_id": NO_INVITATION,
    "complaint_id": f"CP{NO_INVITATION}",
    "order_id": "PImatrix-no-such-order",
    "provider": "matrix",
}


def _object_param(path: str) -> str | None:
    names = re.findall(r"\{(\w+)\}", path)
    objects = [name for name in names if name in OBJECT_PARAMS]
    return objects[0] if objects else None


def _owns(caller: str, param: str) -> bool:
    """Whether ``caller`` has an object of this kind of their own."""
    if caller == "anon":
        return False
    return caller in ("doctor", "hospital", "vip_hospital") if param == "hospital_id" else True


def _cells() -> list[Any]:
    cells = []
    for (method, path), _row in EXPECTED.items():
        param = _object_param(path)
        for caller in ACTORS:
            objects = [None] if param is None else [*(["own"] if _owns(caller, param) else []), "other"]
            for obj in objects:
                label = f"{method} {path} | {caller}" + (f" | {obj}" if obj else "")
                cells.append(pytest.param(method, path, caller, obj, id=label))
    return cells


def gate(roles: frozenset[str], caller: str) -> tuple[int, str] | None:
    """The role check's refusal of ``caller`` (status, code), or None when admitted."""
    if ANON in roles:
        return None
    if caller == "anon":
        return 401, "unauthorized"
    role = HOSPITAL if caller == "vip_hospital" else caller
    if role in roles or (caller == "vip_hospital" and VIP_HOSPITAL in roles):
        return None
    if caller == "hospital" and VIP_HOSPITAL in roles:
        return 403, "membership_required"
    return 403, "forbidden"


def _object_id(world: World, param: str, caller: str, obj: str) -> str:
    if param == "hospital_id":
        return world.hospital_of[caller] if obj == "own" else world.other_hospital
    if obj == "own":
        return world.callers[caller].user_id
    return {"doctor_id": world.other_doctor, "hospital_user_id": world.spare_hospital}.get(
        param, world.other_doctor
    ).user_id


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """One moto account and one app for the whole matrix, with every caller signed in."""
    from app import app
    from chalicelib.models import TABLE_MODELS
    from chalicelib.models.tables import ensure_tables

    with mock_aws():
        for model in TABLE_MODELS:
            model._connection = None
        ensure_tables(TABLE_MODELS)
        with Client(app, stage_name="local", project_dir=str(PROJECT_DIR)) as client:
            hospitals = actors.seed_hospitals()
            other_hospital = add_hospital(
                "Matrix General Hospital", [], "Matrix", "Matrix", None, "seed", datetime.now(UTC)
            )
            admin = actors.make_admin(client)
            callers = {
                "patient": actors.register(client, "patient"),
                "doctor": actors.make_verified_doctor(client, admin, hospitals.pumch),
                "hospital": actors.make_hospital(client, hospitals.chaoyang, admin=admin),
                "vip_hospital": actors.make_vip_hospital(client, admin, hospitals.huashan),
                "admin": admin,
            }
            yield World(
                client=client,
                callers=callers,
                hospital_of={
                    "doctor": hospitals.pumch,
                    "hospital": hospitals.chaoyang,
                    "vip_hospital": hospitals.huashan,
                },
                other_hospital=other_hospital["hospital_id"],
                other_doctor=actors.make_doctor(client, hospitals.pumch),
                spare_hospital=actors.make_hospital(client, hospitals.pumch),
            )


def route_problems(app: Chalice) -> list[str]:
    """Routes of ``app`` without declared roles, missing from ``EXPECTED``, or with other roles than it says."""
    problems = []
    for path, methods in app.routes.items():
        for method, entry in methods.items():
            declared = getattr(entry.view_function, ALLOWED_ROLES_ATTRIBUTE, None)
            row = EXPECTED.get((method, path))
            if not declared:
                problems.append(f"{method} {path}: no roles declared (use access.route)")
            elif row is None:
                problems.append(f"{method} {path}: not in EXPECTED")
            elif declared != row.roles:
                problems.append(f"{method} {path}: declares {sorted(declared)}, EXPECTED says {sorted(row.roles)}")
    return problems


def test_every_route_declares_roles_and_is_in_the_table() -> None:
    from app import app

    assert route_problems(app) == []


def test_the_table_check_catches_undeclared_and_unlisted_routes() -> None:
    # GIVEN an app with a route registered without roles, and one with roles the table lacks
    bp = Blueprint(__name__)
    bp.route("/v1/me/secret", methods=["GET"])(lambda: {})

    @route(bp, "/v1/me/unlisted", methods=["POST"], roles=[PATIENT])
    def unlisted() -> dict[str, Any]:
        return {}

    @route(bp, "/v1/me", methods=["GET"], roles=[ADMIN])
    def narrowed() -> dict[str, Any]:
        return {}

    app = Chalice(app_name="matrix")
    app.register_blueprint(bp)

    # THEN the check names all three
    assert route_problems(app) == [
        "GET /v1/me/secret: no roles declared (use access.route)",
        "POST /v1/me/unlisted: not in EXPECTED",
        "GET /v1/me: declares ['admin'], EXPECTED says ['admin', 'doctor', 'hospital', 'patient']",
    ]


@pytest.mark.parametrize(("method", "path", "caller", "obj"), _cells())
def test_route_role_matrix(world: World, method: str, path: str, caller: str, obj: str | None) -> None:
    from app import app

    if method not in app.routes.get(path, {}):
        pytest.skip(f"{method} {path} is not registered in app.py yet")
    row = EXPECTED[(method, path)]
    param = _object_param(path)
    url = path
    for name, value in FIXED_PARAMS.items():
        url = url.replace(f"{{{name}}}", value)
    if param is not None and obj is not None:
        url = url.replace(f"{{{param}}}", _object_id(world, param, caller, obj))
    body: Callable[[World, str], Any] | Any = row.body
    payload = body(world, caller) if callable(body) else body
    actor = world.callers.get(caller)

    response = call(world.client, method, url, actor, payload)

    refusal = gate(row.roles, caller)
    if refusal is not None:
        status, code = refusal
        assert response.status_code == status, response.json_body
        assert response.json_body["error"]["code"] == code
        return
    assert response.status_code not in (401, 403), response.body
    expected = row.cells.get(f"{caller}/{obj}", row.cells.get(caller, row.ok))
    if expected is not None:
        assert response.status_code == expected, response.body
    if row.owner is not None:
        assert actor is not None
        assert response.json_body[row.owner] == actor.user_id
