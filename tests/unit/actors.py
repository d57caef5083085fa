"""Actors for the unit tests: sign people up and in over HTTP, seed hospitals, verify doctors.

Plain functions (no fixtures): each takes the ``chalice.test.Client`` of the test and
returns what the test needs to act as that person.

Example
-------
>>> admin = make_admin(client)  # doctest: +SKIP
>>> doctor = make_verified_doctor(client, admin, hospitals.pumch)  # doctest: +SKIP
>>> call(client, "GET", "/v1/me", doctor).json_body["verification"]["status"]  # doctest: +SKIP
'verified'

A module that builds its world once uses ``moto_session`` (one ``mock_aws`` and one
client for the module) and ``open_account``: every AWS account of a moto session has
tables of its own, so a test that must see only its own data (a whole list, the admin
queue) gets an account to itself, while the others share a seeded one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from chalicelib.accounts.signin import create_admin
from chalicelib.clock import shanghai_date
from chalicelib.directory.hospitals import add_hospital
from chalicelib.doctors.ranking import discovery_keys
from chalicelib.models.users import Account

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pytest
    from chalice.test import Client, HTTPResponse

PASSWORD = "correct-horse-42"

# Chinese as escapes, so the text cannot be altered in transit.
PUMCH = "\u5317\u4eac\u534f\u548c\u533b\u9662"  # 北京协和医院
# 首都医科大学附属北京朝阳医院
CHAOYANG = "\u9996\u90fd\u533b\u79d1\u5927\u5b66\u9644\u5c5e\u5317\u4eac\u671d\u9633\u533b\u9662"
HUASHAN = "\u590d\u65e6\u5927\u5b66\u9644\u5c5e\u534e\u5c71\u533b\u9662"  # 复旦大学附属华山医院
BEIJING, SHANGHAI = "\u5317\u4eac", "\u4e0a\u6d77"  # 北京, 上海
TOP_GRADE = "\u4e09\u7ea7\u7532\u7b49"  # 三级甲等

DOCTOR_CREDENTIALS: dict[str, str] = {
    "practising_certificate_no": "110110000012345",
    "qualification_certificate_no": "QC20100012345",
    "id_number": "11010519491231002X",
}
HOSPITAL_CREDENTIALS: dict[str, str] = {
    "institution_licence_no": "PDY-40000011010519",
    "unified_social_credit_code": "91440300708461136T",
}
DOCTOR_PROFILE: dict[str, Any] = {
    "name": "Dr Li",
    "title": "attending",
    "specialties": ["cardiac", "regional"],
    "invitation_fee": 300_000,
    "consultation_fee": 20_000,
    "introduction": "Cardiac and regional anesthesia",
}
"""A complete doctor profile, less ``hospital_id`` (each test picks the hospital)."""

_phones = itertools.count(1)
_codes = itertools.count(1)
_accounts = itertools.count(200_000_000_001)


@dataclass(frozen=True)
class Actor:
    """A signed-in account: who it is and the tokens it holds."""

    user_id: str
    role: str
    phone: str
    token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class Hospitals:
    """The seeded directory: two hospitals in Beijing, one in Shanghai (ids)."""

    pumch: str
    chaoyang: str
    huashan: str


def fresh_phone() -> str:
    """A valid mainland mobile number no other actor of the run holds."""
    return f"139{next(_phones):08d}"


def unique(prefix: str) -> str:
    """A short text no other call of the run returns."""
    return f"{prefix}{next(_codes)}"


def call(
    client: Client,
    method: str,
    path: str,
    actor: Actor | None = None,
    body: Any = None,
    *,
    raw: str | None = None,
) -> HTTPResponse:
    """One HTTP request as ``actor`` (anonymous when None), with ``body`` as JSON or ``raw`` text."""
    headers = {"Content-Type": "application/json"}
    if actor is not None:
        headers.update(actor.headers)
    payload = raw if raw is not None else (json.dumps(body) if body is not None else None)
    return client.http.request(method, path, headers=headers, body=payload.encode() if payload is not None else b"")


def expect(response: HTTPResponse, status: int, code: str | None = None) -> Any:
    """The JSON body of ``response`` after checking its status (and error code)."""
    body = response.json_body
    assert response.status_code == status, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def _session(body: dict[str, Any], phone: str) -> Actor:
    return Actor(body["user_id"], body["role"], phone, body["access_token"], body["refresh_token"])


def register(client: Client, role: str, *, phone: str | None = None, name: str | None = None) -> Actor:
    """Sign up with phone and password as ``role`` (patient, doctor or hospital)."""
    phone = phone or fresh_phone()
    body: dict[str, Any] = {"phone": phone, "password": PASSWORD, "role": role}
    if name is not None:
        body["name"] = name
    return _session(expect(call(client, "POST", "/v1/auth/register", body=body), 201), phone)


def login(client: Client, phone: str, password: str = PASSWORD) -> Actor:
    """Sign in with phone and password: a new access and refresh token."""
    response = call(client, "POST", "/v1/auth/login", body={"phone": phone, "password": password})
    return _session(expect(response, 200), phone)


def make_admin(client: Client, name: str = "Ops") -> Actor:
    """An admin, made as the operator command makes one, then signed in over HTTP."""
    phone = fresh_phone()
    create_admin(phone, PASSWORD, name, datetime.now(UTC))
    return login(client, phone)


def seed_hospitals(now: datetime | None = None) -> Hospitals:
    """Three hospitals in the directory (the module's own ``add_hospital``)."""
    now = now or datetime.now(UTC)
    ids = [
        add_hospital(name, [], city, city, TOP_GRADE, "seed", now)["hospital_id"]
        for name, city in ((PUMCH, BEIJING), (CHAOYANG, BEIJING), (HUASHAN, SHANGHAI))
    ]
    return Hospitals(*ids)


def patch_me(client: Client, actor: Actor, changes: dict[str, Any]) -> dict[str, Any]:
    """PATCH /v1/me, expecting success."""
    return expect(call(client, "PATCH", "/v1/me", actor, changes), 200)


def me(client: Client, actor: Actor) -> dict[str, Any]:
    return expect(call(client, "GET", "/v1/me", actor), 200)


def make_doctor(client: Client, hospital_id: str | None = None, **profile: Any) -> Actor:
    """A doctor; with ``hospital_id``, their profile is complete (``DOCTOR_PROFILE`` overridden by ``profile``)."""
    doctor = register(client, "doctor")
    if hospital_id is not None:
        patch_me(client, doctor, {**DOCTOR_PROFILE, "hospital_id": hospital_id, **profile})
    return doctor


def submit(client: Client, actor: Actor) -> HTTPResponse:
    """POST /v1/me/verification with the credentials of the actor's role."""
    credentials = DOCTOR_CREDENTIALS if actor.role == "doctor" else HOSPITAL_CREDENTIALS
    return call(client, "POST", "/v1/me/verification", actor, credentials)


def approve(client: Client, admin: Actor, user_id: str) -> HTTPResponse:
    return call(client, "POST", f"/v1/admin/verifications/{user_id}/approve", admin)


def reject(client: Client, admin: Actor, user_id: str, reason: str) -> HTTPResponse:
    return call(client, "POST", f"/v1/admin/verifications/{user_id}/reject", admin, {"reason": reason})


def make_verified_doctor(client: Client, admin: Actor, hospital_id: str, **profile: Any) -> Actor:
    """A doctor with a complete profile, submitted and approved: listed in discovery."""
    doctor = make_doctor(client, hospital_id, **profile)
    expect(submit(client, doctor), 202)
    expect(approve(client, admin, doctor.user_id), 200)
    return doctor


def make_hospital(client: Client, hospital_id: str, *, admin: Actor | None = None) -> Actor:
    """A hospital account with its profile set; verified when ``admin`` is given."""
    hospital = register(client, "hospital")
    patch_me(client, hospital, {"hospital_id": hospital_id, "contact_name": "Wang", "contact_phone": fresh_phone()})
    if admin is not None:
        expect(submit(client, hospital), 202)
        expect(approve(client, admin, hospital.user_id), 200)
    return hospital


def set_membership(
    client: Client, admin: Actor, hospital_user_id: str, *, active: bool, ends_on: date | None = None
) -> HTTPResponse:
    body: dict[str, Any] = {"active": active, "reference": "contract-2026-001"}
    if ends_on is not None:
        body["ends_on"] = ends_on.isoformat()
    return call(client, "PUT", f"/v1/admin/memberships/{hospital_user_id}", admin, body)


def make_vip_hospital(client: Client, admin: Actor, hospital_id: str) -> Actor:
    """A verified hospital account with a membership that ends in 30 days."""
    hospital = make_hospital(client, hospital_id, admin=admin)
    ends_on = shanghai_date(datetime.now(UTC)) + timedelta(days=30)
    expect(set_membership(client, admin, hospital.user_id, active=True, ends_on=ends_on), 200)
    return hospital


def set_reputation(user_id: str, star_level: float, rating_count: int, rating_sum: int) -> None:
    """Give a verified doctor a reputation, and move their rank keys to match (as reputation updates do)."""
    account = Account.get(f"USER#{user_id}", "PROFILE", consistent_read=True)
    account.update(
        actions=[
            Account.star_level.set(star_level),
            Account.rating_count.set(rating_count),
            Account.rating_sum.set(rating_sum),
        ]
    )
    keys = discovery_keys(account)
    account.update(actions=[getattr(Account, name).set(value) for name, value in keys.items()])


def account(user_id: str) -> Account:
    """The stored account, read consistently."""
    return Account.get(f"USER#{user_id}", "PROFILE", consistent_read=True)


CLOCK_MODULES = (
    "chalicelib.handlers.accounts",
    "chalicelib.handlers.admin",
    "chalicelib.handlers.discovery",
    "chalicelib.handlers.directory",
    "chalicelib.handlers.invitations",
    "chalicelib.handlers.payments",
)
"""The handler modules that read the business clock (``utc_now``)."""


def freeze_clock(monkeypatch: pytest.MonkeyPatch, instant: datetime) -> None:
    """Make the handlers see ``instant`` as now.

    Tokens are checked against the real clock, so sign people in before freezing it.
    """
    import importlib

    for name in CLOCK_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "utc_now"):
            monkeypatch.setattr(module, "utc_now", lambda: instant)


# --- one moto session per module -----------------------------------------------------------------


@contextlib.contextmanager
def moto_session() -> Iterator[Client]:
    """One ``mock_aws`` and the app's ``chalice.test.Client`` for a whole test module.

    Inside, scrypt runs at the tiny cost of the unit tests (the ``cheap_password_hashing``
    fixture starts only with each test, after a module's world is built). Pair it
    with ``open_account``: outside any account, requests go to moto's default one.
    """
    import pytest
    from chalice.test import Client
    from moto import mock_aws

    from app import app
    from chalicelib.models import TABLE_MODELS
    from tests.unit.conftest import PROJECT_DIR

    with mock_aws(), pytest.MonkeyPatch.context() as patch:
        patch.setattr("chalicelib.security.passwords.N", 2**4)
        for model in TABLE_MODELS:
            model._connection = None  # a connection made outside this mock must not leak in
        with Client(app, stage_name="local", project_dir=str(PROJECT_DIR)) as client:
            yield client


def open_account(patch: pytest.MonkeyPatch, account_id: str | None = None) -> str:
    """Send moto's requests to AWS account ``account_id`` until ``patch`` is undone; return its id.

    Without an id, a new account with every table (created from the models): nothing
    another test wrote is in it. moto picks the account of each request from
    ``MOTO_ACCOUNT_ID``.
    """
    from chalicelib.models import TABLE_MODELS
    from chalicelib.models.tables import ensure_tables

    new = account_id is None
    account_id = account_id or str(next(_accounts))
    patch.setenv("MOTO_ACCOUNT_ID", account_id)
    if new:
        ensure_tables(TABLE_MODELS)
    return account_id
