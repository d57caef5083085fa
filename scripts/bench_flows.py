"""The benchmark's flows: what a patient, a doctor and an operator do, over HTTP, step by step.

One *complete flow* is the product's main path: a patient searches by hospital, opens a
doctor's storefront, invites, pays (the sandbox calls back), the doctor accepts and, once
the scheduled time has come (the request's clock moves forward; see ``bench_stack``),
completes; the patient confirms, reviews and tips. ``withdraw`` adds the doctor's
withdrawal. Every call checks its status, so a figure is never measured on failures.

Example
-------
>>> people = Population.create(stack.url, doctors=2)  # doctest: +SKIP
>>> complete_flow(stack.url, people.patients[0], people.doctors[0], people.hospital_id)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import urllib3

from devstack.soak import CREDENTIALS, SUMMARY
from scripts.bench_stack import OFFSET_HEADER, PROJECT_DIR, new_key

if TYPE_CHECKING:
    from collections.abc import Callable

    Step = Callable[[str], contextlib.AbstractContextManager[None]]

FEE = 300_000
TIP = 5_000
PASSWORD = "bench-pass-word-1"
ADMIN_PASSWORD = "bench-admin-pass-1"
LEAD_MINUTES = 2
"""How far ahead an invitation is scheduled (the bench stack runs with no answer margin)."""
SETTINGS = {"PAYMENT_WINDOW_MINUTES": "1", "RESPONSE_MARGIN_HOURS": "0", "ACCESS_TOKEN_MINUTES": "240"}
"""What the bench stack runs with: invitations minutes ahead (as the e2e flow stack), tokens that outlast the run."""

_http = urllib3.PoolManager(maxsize=8, retries=False, timeout=60)
"""The flows' HTTP: urllib3 without requests' layers, so the load generator (in the API's own
process, sharing its interpreter) takes as little of the measured time as it can."""


class FlowError(RuntimeError):
    """A step answered something other than what the flow expects."""


@dataclass
class Caller:
    """One user of the API (anonymous without a token)."""

    api: str
    token: str | None = None
    user_id: str = ""
    offset_s: float = 0.0

    def call(self, method: str, path: str, status: int, body: Any = None, *, key: bool = False, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if key:
            headers["Idempotency-Key"] = new_key()
        if self.offset_s:
            headers[OFFSET_HEADER] = f"{self.offset_s:.3f}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        url = f"{self.api}{path}" + (f"?{urlencode(params)}" if params else "")
        response = _http.request(method, url, body=data, headers=headers)
        if response.status != status:
            raise FlowError(f"{method} {path}: {response.status} {response.data[:300].decode(errors='replace')}")
        return json.loads(response.data) if response.data else {}


def phone() -> str:
    return f"139{uuid.uuid4().int % 10**8:08d}"


def register(api: str, role: str) -> Caller:
    session = Caller(api).call("POST", "/v1/auth/register", 201, {"phone": phone(), "password": PASSWORD, "role": role})
    return Caller(api, session["access_token"], session["user_id"])


def make_admin(api: str, ddb_port: int) -> Caller:
    """The operator command, as ``make admin`` runs it, then a sign-in."""
    number = phone()
    command = [sys.executable, "-m", "devstack.stack", "--ddb-port", str(ddb_port), "admin"]
    command += ["--phone", number, "--name", "Bench"]
    env = {**os.environ, "ADMIN_PASSWORD": ADMIN_PASSWORD}
    subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120, check=True)
    session = Caller(api).call("POST", "/v1/auth/login", 200, {"phone": number, "password": ADMIN_PASSWORD})
    return Caller(api, session["access_token"], session["user_id"])


def shanghai_start(minutes: int = LEAD_MINUTES) -> Any:
    from chalicelib.clock import SHANGHAI, utc_now

    return (utc_now() + timedelta(minutes=minutes)).astimezone(SHANGHAI).replace(second=0, microsecond=0)


def verified_doctor(api: str, admin: Caller, hospital_id: str, capacity: int = 10) -> Caller:
    """A verified doctor of ``hospital_id`` who works today and tomorrow (Shanghai dates)."""
    doctor = register(api, "doctor")
    profile = {"name": "Dr Bench", "hospital_id": hospital_id, "title": "attending", "invitation_fee": FEE}
    doctor.call("PATCH", "/v1/me", 200, {**profile, "consultation_fee": 20_000})
    doctor.call("POST", "/v1/me/verification", 202, CREDENTIALS)
    admin.call("POST", f"/v1/admin/verifications/{doctor.user_id}/approve", 200)
    today = shanghai_start(0).date()
    day = {"working": True, "invitation_capacity": capacity, "consultation_capacity": 1}
    days = [{"date": (today + timedelta(days=n)).isoformat(), **day} for n in (0, 1)]
    doctor.call("PUT", "/v1/me/calendar", 200, {"days": days})
    return doctor


@dataclass
class Population:
    """An operator, a hospital from the seeded directory, verified doctors and patients."""

    api: str
    admin: Caller
    hospital_id: str
    doctors: list[Caller] = field(default_factory=list)
    patients: list[Caller] = field(default_factory=list)

    @classmethod
    def create(cls, api: str, ddb_port: int, doctors: int, patients: int = 1, capacity: int = 10) -> Population:
        admin = make_admin(api, ddb_port)
        hospital_id = Caller(api).call("GET", "/v1/hospitals", 200, q="xh")["items"][0]["hospital_id"]
        people = cls(api, admin, hospital_id)
        people.doctors = [verified_doctor(api, admin, hospital_id, capacity) for _ in range(doctors)]
        people.patients = [register(api, "patient") for _ in range(patients)]
        return people


def sandbox_pay(api: str, order_id: str) -> None:
    paid = Caller(api).call("POST", f"/v1/sandbox/orders/{order_id}/pay", 200, {})
    if [delivery["status"] for delivery in paid["deliveries"]] != [204]:
        raise FlowError(f"the sandbox callback for {order_id} was not acknowledged: {paid['deliveries']}")


def _no_step(_name: str) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def invite_and_pay(patient: Caller, doctor: Caller, hospital_id: str, step: Step = _no_step) -> tuple[str, Any]:
    """A paid invitation for ``LEAD_MINUTES`` ahead: its id and its scheduled start."""
    start = shanghai_start()
    body = {
        "kind": "invitation",
        "doctor_id": doctor.user_id,
        "hospital_id": hospital_id,
        "date": start.date().isoformat(),
        "time": start.strftime("%H:%M"),
        "operation": {"procedure": "Laparoscopic cholecystectomy", "expected_minutes": 90},
        "summary": SUMMARY,
    }
    with step("invite"):
        invitation_id = patient.call("POST", "/v1/invitations", 201, body, key=True)["invitation_id"]
    pay = {"purpose": "invitation", "reference": invitation_id, "channel": "sandbox"}
    with step("payment order"):
        order = patient.call("POST", "/v1/payments", 201, pay, key=True)
    with step("pay callback"):
        sandbox_pay(patient.api, order["order_id"])
    return invitation_id, start


def complete_flow(
    patient: Caller, doctor: Caller, hospital_id: str, *, withdraw: bool = False, step: Step = _no_step
) -> None:
    """Search → storefront → invite → pay → accept → complete → confirm → review → tip (→ withdraw).

    ``step(name)`` wraps each step (the bench counts what each one costs).
    """
    from chalicelib.clock import utc_now

    with step("search: a hospital's anesthesiologists"):
        patient.call("GET", f"/v1/hospitals/{hospital_id}/anesthesiologists", 200)
    with step("storefront"):
        patient.call("GET", f"/v1/anesthesiologists/{doctor.user_id}", 200)
    invitation_id, start = invite_and_pay(patient, doctor, hospital_id, step)
    with step("accept"):
        accepted = doctor.call("POST", f"/v1/invitations/{invitation_id}/accept", 200, key=True)
    # the operation has taken place: the doctor's and the patient's clocks are past the scheduled time
    offset = max(0.0, (start - utc_now()).total_seconds()) + 60
    later_doctor = Caller(doctor.api, doctor.token, doctor.user_id, offset)
    later_patient = Caller(patient.api, patient.token, patient.user_id, offset)
    with step("complete"):
        later_doctor.call("POST", f"/v1/invitations/{invitation_id}/complete", 200, key=True)
    with step("confirm"):
        later_patient.call("POST", f"/v1/invitations/{invitation_id}/confirm", 200, key=True)
    with step("review"):
        later_patient.call("POST", f"/v1/invitations/{invitation_id}/review", 201, {"rating": 5, "comment": "Calm"})
    tip = {"purpose": "tip", "reference": invitation_id, "channel": "sandbox", "amount_fen": TIP}
    with step("tip order"):
        order_id = later_patient.call("POST", "/v1/payments", 201, tip, key=True)["order_id"]
    with step("tip callback"):
        sandbox_pay(patient.api, order_id)
    if withdraw:
        accounts = doctor.call("GET", "/v1/me/payout-accounts", 200)["items"]
        if not accounts:
            payee = {"kind": "alipay", "account": "13912345678", "real_name": "Dr Bench"}
            accounts = [doctor.call("POST", "/v1/me/payout-accounts", 201, payee)]
        request = {"amount_fen": accepted["doctor_share_fen"], "payout_account_id": accounts[0]["account_id"]}
        with step("withdraw"):
            doctor.call("POST", "/v1/withdrawals", 201, request, key=True)
