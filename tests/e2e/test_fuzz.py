"""Schemathesis against the running stack's ``GET /openapi.json``: no 5xx, no answer that breaks its schema.

Why: the OpenAPI document is the contract the clients are built on; a generated request (valid
or not) must get a documented status in the documented shape, never a 5xx, and a route that
declares bearer auth must refuse a request without a token or with a forged one (reliability.md
R4).

How: the stack runs on its own (``--in-memory``, like ``make run``) so the fuzzer's writes do not
touch the shared stack's counts. A patient, a verified doctor, a verified hospital with a
membership and an admin sign in once; every generated case is sent with the token of a role the
route admits (the roles each route declares with ``access.route``, read from the app), rotating
through the admitted roles, and anonymous routes are sent without one. Every check Schemathesis
has is on (``not_a_server_error``, the conformance checks, ``negative_data_rejection``,
``positive_data_acceptance``, ``missing_required_header``, ``unsupported_method``,
``ignored_auth``, ...), in positive and negative modes, in the examples, coverage and fuzzing
phases.

Bounded: ``FUZZ_EXAMPLES`` examples per operation in the fuzzing phase (default 25, what
``make test`` runs); the seed (``FUZZ_SEED``) is fixed and generation derandomized, so a CI
failure reproduces locally. A failure prints the check, the response and a curl command; the
number of cases per operation and their statuses are printed and written to
``<basetemp>/fuzz*/fuzz-report.json``.

Run: .venv/bin/python -m pytest tests/e2e/test_fuzz.py -q -p no:cacheprovider --basetemp=/tmp/fuzz-tmp
Deep run: FUZZ_EXAMPLES=200 .venv/bin/python -m pytest tests/e2e/test_fuzz.py -q -p no:cacheprovider -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import pytest
import requests
import schemathesis
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.openapi.checks import RejectedPositiveData

from chalicelib.openapi import document
from devstack.stack import stage_environment
from tests.e2e.conftest import (
    ADMIN_PASSWORD,
    PROJECT_DIR,
    Caller,
    make_admin,
    phone_number,
    start_stack,
    stop_stack,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from schemathesis import Case, Response
    from schemathesis.specs.openapi.schemas import OpenApiSchema

    from tests.e2e.conftest import Stack

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "20240901"))
ANON = "anon"
VIP_HOSPITAL = "vip_hospital"
CALLERS = ("patient", "doctor", "hospital", "admin")
"""The signed-in callers; the hospital has an active membership, so it also stands for ``vip_hospital``."""
DOCTOR_CREDENTIALS = {
    "practising_certificate_no": "110101199001",
    "qualification_certificate_no": "220202199002",
    "id_number": "11010519491231002X",
}
HOSPITAL_LICENCE = {
    "institution_licence_no": "PDY00001X11010517A1001",
    "unified_social_credit_code": "91440300708461136T",
}
UNEXPECTED_METHODS = {"get", "put", "post", "delete", "options", "patch"}


@dataclass(frozen=True)
class Rule:
    """A refusal of a schema-valid request by a rule the schema cannot state: its status, code and details."""

    status: int
    code: str
    details: dict[str, frozenset[str | None]] = field(default_factory=dict)
    """Each named detail must match one of these ``fnmatch`` patterns (``{"field": {"ranges[*]"}}``; None: absent)."""

    def matches(self, status: int, error: dict[str, Any]) -> bool:
        details = error.get("details") or {}
        return (status, error.get("code")) == (self.status, self.code) and all(
            _matches(details.get(name), allowed) for name, allowed in self.details.items()
        )


def _matches(value: Any, patterns: frozenset[str | None]) -> bool:
    if value is None:
        return None in patterns
    return any(pattern is not None and fnmatchcase(str(value), pattern) for pattern in patterns)


def _fields(*names: str | None) -> dict[str, frozenset[str | None]]:
    return {"field": frozenset(names)}


CREDENTIAL_FIELDS = (
    "practising_certificate_no",
    "qualification_certificate_no",
    "id_number",
    "institution_licence_no",
    "unified_social_credit_code",
)
ANY_OPERATION = (Rule(400, "invalid_cursor"),)
"""A cursor is opaque: only one the server issued is valid, any other string is 400 invalid_cursor."""
BUSINESS_RULES: dict[str, tuple[Rule, ...]] = {
    # a phone number the numbering plan allocates to a mainland mobile (libphonenumber), not just digits
    "POST /v1/auth/login": (Rule(422, "validation_failed", _fields("phone")),),
    "POST /v1/auth/register": (Rule(422, "validation_failed", _fields("phone")),),
    # a code or a signup ticket: one of two optional fields must be present
    "POST /v1/auth/wechat": (Rule(422, "validation_failed", _fields("code")),),
    # which fields a caller may set depends on the caller's role; phones as above
    "PATCH /v1/me": (
        Rule(422, "field_not_allowed"),
        Rule(422, "validation_failed", _fields("phone", "contact_phone")),
    ),
    # dates are checked against today (Asia/Shanghai), and ``to`` against ``from``
    "GET /v1/me/calendar": (Rule(422, "validation_failed", _fields("from", "to")),),
    # ... and at least one day or range must be sent, each range's ``to`` not before its ``from``
    "PUT /v1/me/calendar": (
        Rule(422, "validation_failed", {"reason": frozenset({"past"})}),
        Rule(422, "validation_failed", _fields(None, "ranges[[]*[]]")),
    ),
    # a card number with a valid check digit (Luhn), a wallet account that is a mobile number or
    # an e-mail address, in the caller's own name
    "POST /v1/me/payout-accounts": (
        Rule(422, "validation_failed", _fields("card_number", "account")),
        Rule(422, "payee_name_mismatch"),
        # a WeChat payout account is the WeChat user the caller signed in as, in that app
        Rule(422, "wechat_not_linked"),
    ),
    # a doctor sends certificates, a hospital its licence; identifiers carry check digits
    "POST /v1/me/verification": (
        Rule(422, "validation_failed", _fields(*CREDENTIAL_FIELDS)),
        Rule(422, "field_not_allowed"),
    ),
    # a name with letters or digits once normalised (NFKC, control characters dropped)
    "POST /v1/admin/hospitals": (Rule(422, "validation_failed", _fields("name", "city", "province")),),
    # the channels this stage offers (the local stage: sandbox only), and the plans it sells
    "POST /v1/payments": (Rule(422, "channel_unavailable"), Rule(422, "unknown_plan")),
    # the minimum is the stage's WITHDRAWAL_MIN_FEN
    "POST /v1/withdrawals": (Rule(422, "amount_below_minimum"),),
    # format=png needs ``Accept: image/png`` (OpenAPI ignores a declared Accept parameter)
    "GET /v1/qrcodes/{kind}": (Rule(406, "not_acceptable"),),
}
"""Per operation, the refusals of schema-valid requests that are rules the schema cannot state:
``positive_data_acceptance`` is excused for those and only those."""
ROLES_SCRIPT = """
import json
from app import app
from chalicelib.handlers.access import ALLOWED_ROLES_ATTRIBUTE
print(json.dumps([
    [method, path, sorted(getattr(entry.view_function, ALLOWED_ROLES_ATTRIBUTE))]
    for path, methods in app.routes.items() for method, entry in methods.items()
]))
"""


@dataclass
class FuzzRun:
    """What the run sent: cases and statuses per operation, and which role each used."""

    tokens: dict[str, str]
    roles: dict[tuple[str, str], tuple[str, ...]]
    cases: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    used_roles: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def caller_for(self, method: str, path: str) -> str:
        """A role the route admits, in turn (anonymous only for open routes)."""
        admitted = self.roles[(method, path)]
        if ANON in admitted:
            return ANON
        label = f"{method} {path}"
        return admitted[self.cases[label] % len(admitted)]


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Access tokens outlive a deep run (FUZZ_EXAMPLES=200 takes longer than the default 15 minutes).
    running = start_stack(
        tmp_path_factory.mktemp("fuzz-stack"), "--in-memory", settings={"ACCESS_TOKEN_MINUTES": "600"}
    )
    yield running
    stop_stack(running)


def _route_roles() -> dict[tuple[str, str], tuple[str, ...]]:
    """Each route's declared roles, read from the app in a process of its own (importing it needs the stage)."""
    env = {**os.environ, **stage_environment("local")}
    result = subprocess.run(
        [sys.executable, "-c", ROLES_SCRIPT], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, check=True
    )
    roles: dict[tuple[str, str], tuple[str, ...]] = {}
    for method, path, declared in json.loads(result.stdout):
        # A hospital with a membership is a vip_hospital: its token serves both.
        callers = {"hospital" if role == VIP_HOSPITAL else role for role in declared}
        roles[(method, path)] = tuple(sorted(callers))
    return roles


def _sign_up(api: str, role: str) -> tuple[Caller, str]:
    session = Caller(api).call(
        "POST", "/v1/auth/register", 201, {"phone": phone_number(), "password": "fuzz-pass-1", "role": role}
    )
    return Caller(api, session["access_token"]), session["user_id"]


def _tokens(stack: Stack) -> dict[str, str]:
    """A token for each role: a patient, a verified doctor, a verified member hospital, an admin."""
    api = stack.base_url
    admin_phone = phone_number()
    make_admin(stack, admin_phone)
    login = Caller(api).call("POST", "/v1/auth/login", 200, {"phone": admin_phone, "password": ADMIN_PASSWORD})
    admin = Caller(api, login["access_token"])
    hospital_id = Caller(api).call("GET", "/v1/hospitals", 200, params={"q": "xh"})["items"][0]["hospital_id"]
    patient, _ = _sign_up(api, "patient")
    doctor, doctor_id = _sign_up(api, "doctor")
    doctor.call(
        "PATCH",
        "/v1/me",
        200,
        {
            "name": "Dr Fuzz",
            "hospital_id": hospital_id,
            "title": "attending",
            "invitation_fee": 300_000,
            "consultation_fee": 20_000,
        },
    )
    doctor.call("POST", "/v1/me/verification", 202, DOCTOR_CREDENTIALS)
    admin.call("POST", f"/v1/admin/verifications/{doctor_id}/approve", 200)
    hospital, hospital_user = _sign_up(api, "hospital")
    hospital.call(
        "PATCH", "/v1/me", 200, {"hospital_id": hospital_id, "contact_name": "Fuzz", "contact_phone": phone_number()}
    )
    hospital.call("POST", "/v1/me/verification", 202, HOSPITAL_LICENCE)
    admin.call("POST", f"/v1/admin/verifications/{hospital_user}/approve", 200)
    admin.call(
        "PUT",
        f"/v1/admin/memberships/{hospital_user}",
        200,
        {"active": True, "ends_on": (date.today() + timedelta(days=365 * 5)).isoformat(), "reference": "fuzz contract"},
    )
    tokens = {"patient": patient.token, "doctor": doctor.token, "hospital": hospital.token, "admin": admin.token}
    return {role: token for role, token in tokens.items() if token is not None}


@pytest.fixture(scope="module")
def fuzz_run(fuzz_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzRun]:
    run = FuzzRun(tokens=_tokens(fuzz_stack), roles=_route_roles())
    yield run
    report = {
        "seed": FUZZ_SEED,
        "examples_per_operation": FUZZ_EXAMPLES,
        "total_cases": sum(run.cases.values()),
        "operations": {
            label: {
                "cases": run.cases[label],
                "roles": sorted(run.used_roles[label]),
                "statuses": dict(sorted(run.statuses[label].items())),
            }
            for label in sorted(run.cases)
        },
    }
    path: Path = tmp_path_factory.mktemp("fuzz") / "fuzz-report.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nfuzz: {report['total_cases']} cases over {len(run.cases)} operations (seed {FUZZ_SEED}); {path}")
    for label, entry in report["operations"].items():
        print(f"  {entry['cases']:5d}  {label}  {entry['statuses']}")


def _schema() -> OpenApiSchema:
    """The document the stack serves at ``GET /openapi.json``, loaded at collection (one test per operation).

    ``test_the_stack_serves_the_fuzzed_document`` holds the two equal; requests go to the running stack.
    """
    config = schemathesis.Config.from_dict(
        {
            "seed": FUZZ_SEED,
            "generation": {"max-examples": FUZZ_EXAMPLES, "deterministic": True, "database": "none"},
            # chalice local (http.server) answers 501 to a method it has no handler for; API Gateway
            # never hands TRACE or QUERY to the app. Every other undeclared method must be 405.
            "phases": {"coverage": {"unexpected-methods": sorted(UNEXPECTED_METHODS)}},
        }
    )
    return schemathesis.openapi.from_dict(document(), config=config)


schema = _schema()


def test_the_stack_serves_the_fuzzed_document(fuzz_stack: Stack) -> None:
    served = requests.get(f"{fuzz_stack.base_url}/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.json() == document()


@pytest.mark.timeout(max(300, FUZZ_EXAMPLES * 6))
@schema.parametrize()
def test_openapi_contract_holds_under_fuzzing(case: Case, fuzz_run: FuzzRun, fuzz_stack: Stack) -> None:
    method, path = case.operation.method.upper(), case.operation.path
    label = f"{method} {path}"
    # GIVEN a role the route admits (none for an open route)
    role = fuzz_run.caller_for(method, path)
    headers: dict[str, Any] | None = None
    if role != ANON:
        headers = {"Authorization": f"Bearer {fuzz_run.tokens[role]}"}
    fuzz_run.cases[label] += 1
    fuzz_run.used_roles[label].add(role)
    # WHEN the generated request is sent THEN every check holds (ignored_auth retries without/with a bad token)
    response = case.call(base_url=fuzz_stack.base_url, headers=headers)
    fuzz_run.statuses[label][response.status_code] += 1
    try:
        case.validate_response(
            response, headers=headers, transport_kwargs={"base_url": fuzz_stack.base_url, "headers": headers}
        )
    except FailureGroup as group:
        if any(not _excused(label, failure, response) for failure in group.exceptions):
            raise


def _excused(label: str, failure: Failure, response: Response) -> bool:
    """A schema-valid request refused by a rule the schema cannot state (``BUSINESS_RULES``)."""
    if not isinstance(failure, RejectedPositiveData):
        return False
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    rules = (*ANY_OPERATION, *BUSINESS_RULES.get(label, ()))
    return isinstance(error, dict) and any(rule.matches(response.status_code, error) for rule in rules)
